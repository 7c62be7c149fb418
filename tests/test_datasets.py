"""Dataset bundles: pack -> verify -> validate, tamper detection, zip safety, fetch."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import socket
import stat
import threading
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from napari_exouptake import datasets
from napari_exouptake.cli import main
from napari_exouptake.datasets import DatasetError


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim_dir(tmp_path_factory) -> Path:
    from napari_exouptake.simulate import write_dataset

    out = tmp_path_factory.mktemp("sim") / "sim"
    write_dataset(out, n_images=2, seed=11, shape=(128, 128))
    return out


@pytest.fixture(scope="module")
def bundle_dir(sim_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "small-bundle"
    return datasets.pack_bundle(
        sim_dir,
        sim_dir / "config.yaml",
        out,
        with_results=True,
        labels="ground_truth",
        description="two simulated images",
        authors=["Test Author"],
    )


@pytest.fixture(scope="module")
def bundle_zip(bundle_dir, tmp_path_factory) -> Path:
    """The same bundle as a zip, zipped exactly as pack writes zips."""
    out = tmp_path_factory.mktemp("zip") / "small-bundle.zip"
    return datasets._write_zip(bundle_dir, out)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / bundle.name
    shutil.copytree(bundle, dst)
    return dst


def _listing(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


# -- round trip -------------------------------------------------------------------------------
def test_pack_layout_and_metadata(bundle_dir):
    names = _listing(bundle_dir)
    for required in (
        "dataset.yaml",
        "checksums.sha256",
        "config.yaml",
        "images/dye_only_001.ome.tif",
        "images/untreated_000.ome.tif",
        "labels/untreated_000_cells.tif",
        "truth_spots.csv",
        "truth_cells.csv",
        "reference/cells.csv",
        "reference/images.csv",
        "reference/spots.csv",
        "reference/run.json",
    ):
        assert required in names, required
    b = datasets.read_bundle(bundle_dir)
    assert b.image_names == ["dye_only_001", "untreated_000"]
    assert b.channel_names == ["DAPI", "CellMask", "PKH26", "CD31", "COL1"]
    assert b.channel_roles["PKH26"] == "exosome" and b.channel_roles["CD31"] == "cd31"
    assert b.pixel_size_um == pytest.approx(0.325)
    assert b.analysis_labels_mode == "ground_truth"
    assert b.meta["authors"] == ["Test Author"]
    assert b.meta["reference"]["software"]["napari-exouptake"]
    img = b.read_image("untreated_000")
    assert img.data.shape == (5, 1, 128, 128)
    lab = b.truth_cell_labels("untreated_000")
    assert lab.shape == (128, 128) and lab.max() > 0
    assert len(b.truth_spots("untreated_000")) == int(
        (pd.read_csv(bundle_dir / "truth_spots.csv")["image"] == "untreated_000").sum()
    )
    # no local absolute path leaks into the shared reference provenance
    assert str(bundle_dir.parent) not in (bundle_dir / "reference" / "run.json").read_text()
    # every file but the checksum file is listed, in sha256sum format
    lines = (bundle_dir / "checksums.sha256").read_text().splitlines()
    assert len(lines) == len([n for n in names if (bundle_dir / n).is_file()]) - 1
    assert all(len(line.split("  ", 1)[0]) == 64 for line in lines)


def test_round_trip_verify_and_validate_cli(bundle_dir, capsys):
    assert datasets.verify_bundle(bundle_dir) == []
    assert main(["dataset", "verify", str(bundle_dir)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["dataset", "validate", str(bundle_dir)]) == 0
    out = capsys.readouterr().out
    assert "accuracy against ground truth" in out
    assert "puncta (match <= 2 px): F1" in out
    assert "metrics agree with the reference" in out
    assert "DISAGREES" not in out


def test_zip_round_trip(bundle_zip, capsys):
    assert datasets.verify_bundle(bundle_zip) == []
    assert main(["dataset", "verify", str(bundle_zip)]) == 0
    with datasets.open_bundle(bundle_zip) as b:
        root = b.root
        assert b.read_image("dye_only_001").n_channels == 5
    assert not root.exists()  # temporary extraction removed on close
    report = datasets.validate_bundle(bundle_zip)
    assert report.ok and report.has_reference and len(report.comparisons) > 10
    del capsys


def test_pack_zip_directly(sim_dir, tmp_path):
    out = datasets.pack_bundle(sim_dir, sim_dir / "config.yaml", tmp_path / "b.zip")
    assert out.is_file() and zipfile.is_zipfile(out)
    assert datasets.verify_bundle(out) == []
    with datasets.open_bundle(out) as b:
        assert b.reference_dir is None and b.analysis_labels_mode == "segmentation"
    # deterministic members: fixed timestamps, no execute bits
    with zipfile.ZipFile(out) as zf:
        infos = zf.infolist()
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    assert {(i.external_attr >> 16) & 0o777 for i in infos} == {0o644}


def test_read_bundle_zip_is_cached(bundle_zip, tmp_path, monkeypatch):
    monkeypatch.setenv("EXOUPTAKE_CACHE_DIR", str(tmp_path / "cache"))
    b1 = datasets.read_bundle(bundle_zip)
    assert (tmp_path / "cache") in b1.root.parents
    assert b1.truth_nucleus_labels("dye_only_001").max() > 0
    b2 = datasets.read_bundle(bundle_zip)  # reuses the verified extraction
    assert b2.root == b1.root


# -- tamper detection -------------------------------------------------------------------------
def test_flipped_byte_fails_verify_and_names_file(bundle_dir, tmp_path, capsys):
    b = _copy(bundle_dir, tmp_path)
    img = b / "images" / "untreated_000.ome.tif"
    data = bytearray(img.read_bytes())
    data[len(data) // 2] ^= 0xFF
    img.write_bytes(bytes(data))
    problems = datasets.verify_bundle(b)
    assert len(problems) == 1
    assert "images/untreated_000.ome.tif" in problems[0] and "SHA-256 mismatch" in problems[0]
    assert main(["dataset", "verify", str(b)]) == 1
    err = capsys.readouterr().err
    assert "images/untreated_000.ome.tif" in err and "FAILED" in err
    # validate refuses a tampered bundle before analysing it
    assert main(["dataset", "validate", str(b)]) == 1
    assert "images/untreated_000.ome.tif" in capsys.readouterr().err


def test_unlisted_missing_and_symlinked_files_fail_verify(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    (b / "extra.txt").write_text("not listed")
    (b / "truth_cells.csv").unlink()
    os.symlink("/etc/hostname", b / "link.txt")
    problems = "\n".join(datasets.verify_bundle(b))
    assert "extra.txt: not listed in checksums.sha256" in problems
    assert "truth_cells.csv: listed in checksums.sha256 but missing" in problems
    assert "link.txt: links and special files are not allowed" in problems


def test_schema_problems_name_the_key(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    meta = (b / "dataset.yaml").read_text()
    meta = meta.replace("format_version: 1", "format_version: 99")
    meta = meta.replace("licence: CC-BY-4.0", "licence: ''")
    (b / "dataset.yaml").write_text(meta)
    datasets.write_checksums(b)  # hashes fine, schema not
    problems = "\n".join(datasets.verify_bundle(b))
    assert "format_version 99 is newer" in problems
    assert "licence must be a non-empty text" in problems


def test_unsafe_yaml_is_not_executed(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    marker = tmp_path / "pwned"
    (b / "dataset.yaml").write_text(f"!!python/object/apply:os.system ['touch {marker}']\n")
    datasets.write_checksums(b)
    problems = datasets.verify_bundle(b)
    assert any("dataset.yaml: not valid YAML" in p for p in problems)
    assert not marker.exists()


def test_changed_reference_numbers_fail_validate_and_name_metric(bundle_dir, tmp_path, capsys):
    b = _copy(bundle_dir, tmp_path)
    images = pd.read_csv(b / "reference" / "images.csv")
    images.loc[0, "n_spots"] += 5
    images.to_csv(b / "reference" / "images.csv", index=False)
    cells = pd.read_csv(b / "reference" / "cells.csv")
    cells["exo_integrated_intensity"] *= 1.10
    cells.to_csv(b / "reference" / "cells.csv", index=False)
    datasets.write_checksums(b)  # a re-signed bundle: verify passes, the numbers do not
    assert datasets.verify_bundle(b) == []
    assert main(["dataset", "validate", str(b)]) == 1
    captured = capsys.readouterr()
    assert "images.n_spots" in captured.err
    assert "cells.exo_integrated_intensity" in captured.err
    assert "cells.exo_spot_count" not in captured.err  # unchanged metrics still agree
    assert "DISAGREES" in captured.out


def test_bundle_tolerances_are_honoured(bundle_dir, tmp_path):
    b = _copy(bundle_dir, tmp_path)
    cells = pd.read_csv(b / "reference" / "cells.csv")
    cells["exo_mean_intensity"] *= 1.02
    cells.to_csv(b / "reference" / "cells.csv", index=False)
    datasets.write_checksums(b)
    report = datasets.validate_bundle(b)
    assert report.failed_metrics == ["cells.exo_mean_intensity"]
    # a bundle that allows 5 % on that metric accepts the same numbers
    meta = (
        (b / "dataset.yaml")
        .read_text()
        .replace("tolerances:\n", "tolerances:\n  cells.exo_mean_intensity:\n    rtol: 0.05\n", 1)
    )
    (b / "dataset.yaml").write_text(meta)
    datasets.write_checksums(b)
    assert datasets.validate_bundle(b).ok


# -- pack variants ----------------------------------------------------------------------------
def test_pack_plain_folder_with_given_labels(sim_dir, tmp_path, capsys):
    import tifffile

    src = tmp_path / "plain"
    src.mkdir()
    for p in sorted((sim_dir / "images").glob("*.ome.tif")):  # plain TIFFs, no OME metadata
        data = tifffile.imread(p)
        tifffile.imwrite(src / p.name.replace(".ome.tif", ".tif"), data, metadata={"axes": "CYX"})
    # plain TIFFs carry no channel names: a config with channel indices
    from napari_exouptake.config import load_config, save_config

    cfg = load_config(sim_dir / "config.yaml").with_updates(
        channels={
            "nucleus": 0,
            "cell": 1,
            "exosome": 2,
            "markers": {
                "cd31": {"channel": 3, "kind": "angiogenesis"},
                "col1": {"channel": 4, "kind": "collagen"},
            },
        },
        collagen={"channel": 4},
    )
    cfg_path = save_config(cfg, tmp_path / "config_idx.yaml")
    out = tmp_path / "given"
    rc = main(["dataset", "pack", str(src), "--config", str(cfg_path), "--out", str(out)])
    assert rc == 0
    b = datasets.read_bundle(out)
    assert b.image_names == ["dye_only_001", "untreated_000"]
    assert not b.has_ground_truth and b.reference_dir is None
    assert b.read_image("dye_only_001").n_channels == 5
    # labels given from a folder: stored in analysis_labels/ and used by validate
    assert b.channel_roles == {
        "C0": "nucleus",
        "C1": "cell",
        "C2": "exosome",
        "C3": "cd31",
        "C4": "col1",
    }
    out2 = datasets.pack_bundle(
        src, cfg_path, tmp_path / "given2", with_results=True, labels=sim_dir / "labels"
    )
    b2 = datasets.read_bundle(out2)
    assert b2.analysis_labels_mode == "analysis_labels"
    assert (out2 / "analysis_labels" / "untreated_000_cells.tif").is_file()
    assert datasets.validate_bundle(out2).ok
    del capsys


def test_pack_refuses_existing_output_and_missing_labels(sim_dir, bundle_dir, tmp_path):
    with pytest.raises(DatasetError, match="already exists"):
        datasets.pack_bundle(sim_dir, sim_dir / "config.yaml", bundle_dir)
    empty = tmp_path / "nolabels"
    shutil.copytree(sim_dir / "images", empty / "images")
    with pytest.raises(DatasetError, match="labels/<image>_cells.tif is missing"):
        datasets.pack_bundle(empty, sim_dir / "config.yaml", tmp_path / "x", labels="ground_truth")
    assert not (tmp_path / "x").exists()
    assert not [p for p in tmp_path.iterdir() if ".partial-" in p.name]


# -- zip safety -------------------------------------------------------------------------------
def _zip_with(path: Path, members: list[tuple[str, bytes, int | None]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data, mode in members:
            info = zipfile.ZipInfo(name)
            if mode is not None:
                info.external_attr = mode << 16
            zf.writestr(info, data)
    return path


@pytest.mark.parametrize(
    ("member", "mode", "message"),
    [
        ("../x.txt", None, "must not contain '..'"),
        ("images/../../x.txt", None, "must not contain '..'"),
        ("ABSOLUTE", None, "absolute path"),
        ("C:/x.txt", None, "absolute path"),
        ("..\\x.txt", None, "backslash"),
        ("link", 0o120777, "symbolic link"),
        ("fifo", 0o010644, "special file"),
    ],
)
def test_unsafe_zip_members_are_refused(tmp_path, member, mode, message):
    work = tmp_path / "work"
    work.mkdir()
    outside = tmp_path / "outside_target.txt"
    if member == "ABSOLUTE":
        member = str(outside)
    payload = b"/etc/passwd" if mode == 0o120777 else b"evil"
    evil = _zip_with(
        tmp_path / "evil.zip", [("dataset.yaml", b"name: x\n", None), (member, payload, mode)]
    )
    before = _listing(tmp_path)
    dest = work / "bundle"
    with pytest.raises(DatasetError, match=message):
        datasets.safe_extract(evil, dest)
    assert not dest.exists()
    assert _listing(tmp_path) == before  # nothing written anywhere (no staging left either)
    assert not outside.exists() and not (tmp_path / "x.txt").exists()
    # the command line refuses it too, with a one-line message and exit 2
    assert main(["dataset", "verify", str(evil)]) == 2
    assert _listing(tmp_path) == before


def test_zip_size_and_count_limits(tmp_path):
    z = _zip_with(tmp_path / "big.zip", [("a.bin", b"0" * 5000, None), ("b.bin", b"1" * 10, None)])
    with pytest.raises(DatasetError, match="per-file limit"):
        datasets.safe_extract(z, tmp_path / "d1", max_member_bytes=4096)
    with pytest.raises(DatasetError, match="total limit"):
        datasets.safe_extract(z, tmp_path / "d2", max_total_bytes=5005)
    with pytest.raises(DatasetError, match="more than the limit"):
        datasets.safe_extract(z, tmp_path / "d3", max_members=1)
    assert {p.name for p in tmp_path.iterdir()} == {"big.zip"}
    dup = _zip_with(tmp_path / "dup.zip", [("A.txt", b"1", None), ("a.txt", b"2", None)])
    with pytest.raises(DatasetError, match="appears twice"):
        datasets.safe_extract(dup, tmp_path / "d4")
    ok = datasets.safe_extract(z, tmp_path / "d5")
    assert (ok / "a.bin").stat().st_size == 5000
    assert stat.S_IMODE((ok / "a.bin").stat().st_mode) & 0o111 == 0


def test_extract_refuses_non_empty_target(bundle_zip, tmp_path):
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "keep.txt").write_text("mine")
    with pytest.raises(DatasetError, match="empty folder"):
        datasets.safe_extract(bundle_zip, dest)
    assert _listing(dest) == {"keep.txt"}


# -- fetch ------------------------------------------------------------------------------------
def _sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_file_url_right_and_wrong_hash(bundle_zip, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("EXOUPTAKE_CACHE_DIR", str(tmp_path / "envcache"))  # not the user's cache
    url = bundle_zip.resolve().as_uri()
    root = datasets.fetch_bundle(url, _sha(bundle_zip), cache_dir=tmp_path / "cache")
    assert (root / "dataset.yaml").is_file() and datasets.verify_bundle(root) == []
    # a second fetch reuses the cache
    assert datasets.fetch_bundle(url, _sha(bundle_zip), cache_dir=tmp_path / "cache") == root
    with pytest.raises(DatasetError, match="does not match"):
        datasets.fetch_bundle(url, "0" * 64, cache_dir=tmp_path / "cache2")
    assert not list((tmp_path / "cache2").rglob("*.zip"))  # nothing kept
    with pytest.raises(DatasetError, match="64 hexadecimal"):
        datasets.fetch_bundle(url, "abc", cache_dir=tmp_path / "cache2")
    # command line with --out
    out = tmp_path / "fetched"
    assert main(["dataset", "fetch", url, "--sha256", _sha(bundle_zip), "--out", str(out)]) == 0
    assert (out / "dataset.yaml").is_file()
    assert list((tmp_path / "envcache" / "downloads").glob("*.zip"))
    assert main(["dataset", "fetch", url, "--sha256", "1" * 64, "--out", str(tmp_path / "f2")]) == 1
    assert "does not match" in capsys.readouterr().err


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


def test_fetch_over_http(bundle_zip, tmp_path):
    handler = functools.partial(_QuietHandler, directory=str(bundle_zip.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        root = datasets.fetch_bundle(
            f"{base}/{bundle_zip.name}", _sha(bundle_zip), cache_dir=tmp_path / "c", timeout_s=10
        )
        assert datasets.verify_bundle(root) == []
        with pytest.raises(DatasetError, match="HTTP 404"):
            datasets.fetch_bundle(
                f"{base}/missing.zip", _sha(bundle_zip), cache_dir=tmp_path / "c2", timeout_s=10
            )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_fetch_offline_error_is_explained(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DatasetError, match="no network connection"):
        datasets.fetch_bundle(
            f"http://127.0.0.1:{port}/b.zip", "a" * 64, cache_dir=tmp_path / "c", timeout_s=5
        )


# -- the bundled sample dataset ---------------------------------------------------------------
def _sample_bundle() -> Path:
    from napari_exouptake.pipeline import sample_data_dir

    d = sample_data_dir()
    if not (d / "dataset.yaml").is_file():
        pytest.fail("the sample dataset is not a bundle: run scripts/make_sample_bundle.py")
    return d


def test_sample_dataset_is_a_verified_bundle():
    d = _sample_bundle()
    assert datasets.verify_bundle(d) == []
    b = datasets.read_bundle(d)
    assert len(b.image_names) == 8 and b.reference_dir is not None
    from napari_exouptake.config import config_hash, load_config

    # the demo's config.yaml and the bundle's assay_config are one config
    assert config_hash(b.config) == config_hash(load_config(d / "config.yaml"))


@pytest.mark.slow
def test_sample_dataset_validates(capsys):
    d = _sample_bundle()
    assert main(["dataset", "validate", str(d)]) == 0
    out = capsys.readouterr().out
    assert "metrics agree with the reference" in out


def test_labels_match_truth_arrays(bundle_dir):
    b = datasets.read_bundle(bundle_dir)
    from napari_exouptake.io import read_labels

    for name in b.image_names:
        np.testing.assert_array_equal(
            b.truth_cell_labels(name), read_labels(bundle_dir / "labels" / f"{name}_cells.tif")
        )


# -- a bundle whose analysis segments (segmentation replaced by a deterministic fake) ---------
def _fake_segmenter(drop: int = 0):
    """segment() stand-in: the true labels of the image, minus ``drop`` cells."""
    from types import SimpleNamespace

    from napari_exouptake.io import read_labels

    def segment(image, config, *, progress=None, cancel=None):
        lab = read_labels(image.source.parents[1] / "labels" / f"{image.name}_cells.tif")
        lab = lab.astype(np.int32)
        if drop:
            lab[np.isin(lab, np.unique(lab[lab > 0])[:drop])] = 0
        return SimpleNamespace(
            cells=lab[np.newaxis],
            nuclei=None,
            device="cpu",
            model_id="fake",
            model_sha256="0" * 64,
            cellpose_version="none",
            timings={},
        )

    return segment


def test_segmentation_bundle_compares_labels(sim_dir, tmp_path, monkeypatch):
    from napari_exouptake import segmentation

    monkeypatch.setattr(segmentation, "segment", _fake_segmenter())
    out = datasets.pack_bundle(
        sim_dir, sim_dir / "config.yaml", tmp_path / "seg", with_results=True
    )
    b = datasets.read_bundle(out)
    assert b.analysis_labels_mode == "segmentation"
    assert (out / "reference" / "labels" / "untreated_000_cells.tif").is_file()
    assert b.meta["reference"]["models"] == ["fake"]
    assert b.tolerances["segmentation.ap50"] == {"min": 0.9}
    report = datasets.validate_bundle(out)
    res = {c.metric: c for c in report.comparisons}
    assert report.ok and res["segmentation.ap50"].score == pytest.approx(1.0)
    assert report.accuracy["segmentation_ap50"] == pytest.approx(1.0)
    # a re-run that loses 3 of n cells per image: AP (n - 3) / n < 0.9, cells unmatched
    monkeypatch.setattr(segmentation, "segment", _fake_segmenter(drop=3))
    report = datasets.validate_bundle(out)
    res = {c.metric: c for c in report.comparisons}
    assert not res["segmentation.ap50"].ok
    assert res["segmentation.ap50"].score < 0.9
    assert "images.n_cells" in report.failed_metrics


# -- hostile bundles and fetches (issue 19) ---------------------------------------------------
def _bundle_zip_plus(bundle_dir: Path, out: Path, extra: dict[str, bytes], *, level=6) -> Path:
    """The bundle zipped, plus members not in its checksums (deflated at ``level``)."""
    datasets._write_zip(bundle_dir, out)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=level) as zf:
        for name, data in extra.items():
            zf.writestr(name, data)
    return out


def test_zip_bomb_member_refused_before_writing(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("images/a.tif", b"\0" * (64 * 1024**2))  # 64 MiB -> about 64 kB
    assert bomb.stat().st_size < 200_000
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DatasetError, match=r"ratio 10\d\d, limit 100\); refusing a possible"):
        datasets.safe_extract(bomb, work / "b")
    assert _listing(work) == set()  # nothing written, no staging folder
    # many small members that add up: the whole archive's ratio counts too
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"m{i}.bin", b"\0" * (4 * 1024**2))
    with pytest.raises(DatasetError, match="would unpack 20971520 bytes"):
        datasets.safe_extract(many, work / "m")
    assert _listing(work) == set()


def test_unlisted_member_refused_before_extracting(bundle_dir, tmp_path):
    z = _bundle_zip_plus(bundle_dir, tmp_path / "b.zip", {"images/extra.bin": os.urandom(4096)})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(DatasetError, match="'images/extra.bin' is not listed in checksums"):
        datasets.open_bundle(z, extract_to=work / "x")
    assert _listing(work) == set()
    assert main(["dataset", "verify", str(z)]) == 2
    # a zip without checksums.sha256 is not a bundle
    plain = _zip_with(tmp_path / "plain.zip", [("dataset.yaml", b"name: x\n", None)])
    with pytest.raises(DatasetError, match="no checksums.sha256"):
        datasets.verify_bundle(plain)


def test_extracted_folders_have_ordinary_modes(bundle_zip, tmp_path):
    umask = os.umask(0o022)
    try:
        dest = datasets.safe_extract(bundle_zip, tmp_path / "b", listed_only=True)
    finally:
        os.umask(umask)
    modes = {stat.S_IMODE(p.stat().st_mode) for p in [dest, *dest.rglob("*")] if p.is_dir()}
    assert modes == {0o755}


def _serve(folder: Path):
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}"


def test_fetch_limits_dead_urls_and_rejected_bundles(bundle_dir, bundle_zip, tmp_path, capsys):
    site = tmp_path / "site"
    site.mkdir()
    shutil.copy(bundle_zip, site / "good.zip")
    # listed, so it extracts, but one file's bytes differ from its checksum
    tampered = _copy(bundle_dir, tmp_path)
    (tampered / "truth_cells.csv").write_text("image,cell_id,n_spots\nx,1,2\n")
    datasets._write_zip(tampered, site / "tampered.zip")
    _bundle_zip_plus(bundle_dir, site / "unlisted.zip", {"junk.bin": b"x" * 100})
    server, thread, base = _serve(site)
    cache = tmp_path / "cache"
    try:
        size = bundle_zip.stat().st_size
        with pytest.raises(DatasetError, match="more than the download limit"):
            datasets.fetch_bundle(
                f"{base}/good.zip", _sha(bundle_zip), cache_dir=cache, max_bytes=size - 1
            )
        assert not list(cache.rglob("*.zip")) and not list(cache.rglob("*.part"))
        root = datasets.fetch_bundle(f"{base}/good.zip", _sha(bundle_zip), cache_dir=cache)
        assert datasets.verify_bundle(root) == []
        # the hash is cached, the URL is dead: an error that names the cached copy
        with pytest.raises(DatasetError, match="HTTP 404.*in the cache"):
            datasets.fetch_bundle(f"{base}/gone.zip", _sha(bundle_zip), cache_dir=cache)
        code = main(
            [
                "dataset",
                "fetch",
                f"{base}/gone.zip",
                "--sha256",
                _sha(bundle_zip),
                "--out",
                str(tmp_path / "o0"),
            ]
        )
        assert code == 1 and "fetched" not in capsys.readouterr().out
        # a zip refused on extraction leaves the cache; a bundle failing verification --out
        for name, message in (("unlisted", "not listed"), ("tampered", "failed verification")):
            out = tmp_path / f"o_{name}"
            with pytest.raises(DatasetError, match=message):
                datasets.fetch_bundle(
                    f"{base}/{name}.zip", _sha(site / f"{name}.zip"), out, cache_dir=cache
                )
            assert not out.exists(), name
            assert not (cache / "downloads" / f"{_sha(site / f'{name}.zip')[:16]}.zip").exists()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    # file:// URLs: the cap and the dead-URL rule too
    url = (site / "good.zip").resolve().as_uri()
    with pytest.raises(DatasetError, match="download limit"):
        datasets.fetch_bundle(url, _sha(bundle_zip), cache_dir=tmp_path / "c2", max_bytes=10)
    (site / "good.zip").unlink()
    with pytest.raises(DatasetError, match="no such file.*in the cache"):
        datasets.fetch_bundle(url, _sha(bundle_zip), cache_dir=cache)
