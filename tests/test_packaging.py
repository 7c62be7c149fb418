"""The package's promises about itself: light import, CLI, manifest, README == CI."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO


def test_import_is_light():
    code = (
        "import sys, napari_exouptake, napari_exouptake.config, napari_exouptake.io, "
        "napari_exouptake.cli;"
        "heavy = [m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'PySide6', 'cellpose', "
        "'dask.distributed') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_core_dependencies_are_light():
    """torch, Cellpose and napari/Qt are extras: the headless core (a Dask worker, a measuring
    job) installs without them (.ci/core.sh installs it alone and analyses the sample)."""
    import tomllib

    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower() for d in meta["dependencies"]}
    assert not base & {"torch", "cellpose", "napari", "magicgui", "qtpy", "pyqt5", "npe2"}
    extras = meta["optional-dependencies"]
    assert any(d.startswith("cellpose") for d in extras["cellpose"])
    assert any(d.startswith("torch") for d in extras["cellpose"])
    assert any(d.startswith("napari") for d in extras["napari"])


def test_segment_without_cellpose_names_the_extra(monkeypatch):
    import importlib.util

    from napari_exouptake import segmentation

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "cellpose" else real(n, *a)
    )
    with pytest.raises(segmentation.CellposeMissingError, match=r"napari-exouptake\[cellpose\]"):
        segmentation.require_cellpose()


def test_version_command():
    from napari_exouptake import __version__

    out = subprocess.run(
        [sys.executable, "-m", "napari_exouptake.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == f"exouptake {__version__}"


def test_config_template_command_loads_back(tmp_path):
    from napari_exouptake.cli import main
    from napari_exouptake.config import load_config, template_config

    assert main(["config", "--template"]) == 0
    f = tmp_path / "t.yaml"
    f.write_text(template_config())
    assert main(["config", "--check", str(f)]) == 0
    assert load_config(f).channels.exosome == 2


def test_config_error_exit_code(tmp_path, capsys):
    from napari_exouptake.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("spots: {radius_px: big}\n")
    assert main(["config", "--check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "spots.radius_px" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_npe2_manifest_validates():
    npe2 = pytest.importorskip("npe2")
    from npe2 import PluginManifest

    mf = PluginManifest.from_distribution("napari-exouptake")
    assert mf.name == "napari-exouptake"
    out = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-exouptake", "--imports"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    del npe2


def _readme_block(title: str) -> str:
    text = (REPO / "README.md").read_text()
    m = re.search(rf"{re.escape(title)}.*?```bash\n(.*?)```", text, re.S)
    assert m, f"README has no bash block after {title!r}"
    return m.group(1).strip()


def test_ci_runs_the_readme_test_command():
    cmd = _readme_block("### Run the tests")
    ci = (REPO / ".ci" / "run").read_text()
    assert cmd in ci, "the test command in README.md and .ci/run differ"
