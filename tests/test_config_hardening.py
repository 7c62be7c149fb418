"""Hostile or broken YAML configs: one clear ConfigError each (exit code 2 in the CLI)."""

from __future__ import annotations

import pytest

from napari_exouptake.config import MAX_CONFIG_BYTES, ConfigError, load_config


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("spots:\n  radius_px: true\n", r"spots.radius_px'?: true/false is not allowed"),
        ("segmentation:\n  diameter_px: false\n", r"diameter_px'?: true/false"),
        ("segmentation:\n  batch_size: true\n", r"batch_size'?: true/false"),
        ("pixel_size_um: .inf\n", r"pixel_size_um'?: Input should be a finite number"),
        ("spots:\n  fdr: .nan\n", r"spots.fdr'?: Input should be a finite number"),
        ("spots:\n  threshold: -.inf\n", r"finite number"),
        ("spots:\n  radius_px: 1.5\n  radius_px: 2.0\n", r"line 3: key 'radius_px' appears twice"),
        ("spots: {}\nspots: {}\n", r"key 'spots' appears twice"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", r"nested deeper than 32 levels"),
        ("x: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", r"nested deeper than 32 levels"),
        ("spots:\n  radius_px: -1\n", r"greater than 0"),
    ],
)
def test_refused_with_one_clear_message(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(text)
    assert "\n" not in str(info.value)


def test_accepted_values_still_load():
    cfg = load_config("spots:\n  radius_px: 2.5\n  threshold: auto\npixel_size_um: 0.325\n")
    assert cfg.spots.radius_px == 2.5 and cfg.spots.threshold == "auto"
    assert load_config("spots:\n  threshold: 12\n").spots.threshold == 12.0


def test_file_limits_and_encoding(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"spots:\n  radius_px: 2\n# caf\xe9 (latin-1)\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0xe9 at position 27\)"):
        load_config(p)
    p.write_bytes("spots:\n  radius_px: 2\n# café\n".encode())
    assert load_config(p).spots.radius_px == 2.0
    p.write_bytes(b"# padding\n" * (MAX_CONFIG_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="too large for an assay config"):
        load_config(p)


def test_cli_exit_2_without_traceback(tmp_path, capsys):
    from napari_exouptake.cli import main

    p = tmp_path / "deep.yaml"
    p.write_text("spots: " + "[" * 100_000 + "]" * 100_000 + "\n")
    code = main(["analyze", str(tmp_path), "--config", str(p), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines()[-1].startswith("exouptake analyze: error: ")
    assert "Traceback" not in err and "RecursionError" not in err
