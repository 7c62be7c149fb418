"""The progress-and-cancel protocol shared by every long call."""

import threading

import pytest

from napari_exouptake.progress import Cancelled, check, report, within


def test_within_maps_a_substep_onto_its_slice_and_clamps():
    seen = []
    outer = lambda f, m: seen.append((round(f, 3), m))  # noqa: E731
    sub = within(outer, 0.2, 0.6)
    sub(0.0, "a")
    sub(0.5, "b")
    sub(1.5, "c")  # past the end: clamped to the slice's end
    assert seen == [(0.2, "a"), (0.4, "b"), (0.6, "c")]
    assert within(None, 0.0, 1.0) is None
    report(None, 0.5, "nothing listens")  # no error without a listener


def test_check_raises_only_once_cancel_is_set():
    event = threading.Event()
    check(event.is_set, "segmentation")
    check(None)
    event.set()
    with pytest.raises(Cancelled, match="segmentation cancelled"):
        check(event.is_set, "segmentation")
