from __future__ import annotations

import pytest

from napari_exouptake.config import (
    AssayConfig,
    ConfigError,
    dump_config,
    load_config,
    save_config,
    template_config,
)

NAMES = ["DAPI", "CellMask", "PKH26", "CD31", "COL1"]


def test_template_loads_and_round_trips(tmp_path):
    cfg = load_config(template_config())
    assert cfg.channels.nucleus == 0 and cfg.channels.exosome == 2
    assert set(cfg.channels.markers) == {"cd31", "col1"}
    assert cfg.channels.markers["cd31"].kind == "angiogenesis"
    path = save_config(cfg, tmp_path / "c.yaml")
    again = load_config(path)
    assert again == cfg
    assert dump_config(again) == path.read_text()


def test_every_contract_key_is_accepted():
    text = """
channels:
  nucleus: 0
  cell: 1
  exosome: 2
  markers:
    cd31: {channel: 3, kind: angiogenesis}
    col1: {channel: 4, kind: collagen}
pixel_size_um: 0.325
segmentation:
  mode: cells
  model: demo-cells
  diameter_px: 30
  device: auto
spots:
  radius_px: 1.8
  threshold: auto
tubes: {channel: 0}
collagen: {channel: 4}
"""
    cfg = load_config(text)
    assert cfg.pixel_size_um == 0.325
    assert cfg.tubes.channel == 0 and cfg.collagen.channel == 4
    assert cfg.spots.threshold == "auto"
    assert load_config(dump_config(cfg)) == cfg


def test_channels_by_name_and_index():
    cfg = AssayConfig.from_dict(
        {
            "channels": {
                "nucleus": "dapi",
                "cell": 1,
                "exosome": "PKH26",
                "markers": {"cd31": {"channel": "CD31"}},
            }
        }
    )
    r = cfg.channels.resolve(NAMES)
    assert (r.nucleus, r.cell, r.exosome, r.markers) == (0, 1, 2, {"cd31": 3})


def test_missing_channel_names_the_channels():
    cfg = AssayConfig.from_dict({"channels": {"nucleus": 0, "exosome": "PKH67"}})
    with pytest.raises(ConfigError, match=r"channels.exosome.*PKH67.*0: DAPI"):
        cfg.channels.resolve(NAMES)
    cfg = AssayConfig.from_dict({"channels": {"nucleus": 7}})
    with pytest.raises(ConfigError, match=r"channel 7 does not exist.*5 channel"):
        cfg.channels.resolve(NAMES)


@pytest.mark.parametrize(
    ("data", "pattern"),
    [
        ({"foo": 1}, r"unknown config key 'foo'; allowed here: channels, pixel_size_um"),
        ({"segmentation": {"bogus": 1}}, r"'segmentation.bogus'; allowed here: mode, model"),
        (
            {"channels": {"markers": {"cd31": {"channel": 3, "kindd": "x"}}}},
            r"'channels.markers.cd31.kindd'; allowed here: channel, kind, positivity",
        ),
        (
            {"segmentation": {"mode": "bad"}},
            r"'segmentation.mode'.*'cells', 'nuclei', 'expand' or 'none'",
        ),
        ({"spots": {"threshold": "high"}}, r"'spots.threshold': threshold must be 'auto' or a num"),
        ({"channels": {"exosome": True}}, r"'channels.exosome'.*not true/false"),
        ({"channels": {"exosome": -1}}, r"'channels.exosome'.*>= 0"),
        ({"segmentation": {"device": "gpu"}}, r"'segmentation.device'.*auto, cpu, cuda, cuda:N"),
        ({"pixel_size_um": "abc"}, r"'pixel_size_um'.*valid number"),
        ({"pixel_size_um": -1}, r"'pixel_size_um'.*greater than 0"),
        ({"axes": "CXYQ"}, r"'axes'"),
        ({"channels": {"markers": {"1bad": {"channel": 3}}}}, r"marker name '1bad'"),
        ({"positivity": {"exosome": {"method": "fixed"}}}, r"'fixed' needs a number"),
        ({"tubes": {}}, r"'tubes.channel' is required"),
        ([1, 2], r"mapping"),
    ],
)
def test_errors_name_the_key(data, pattern):
    with pytest.raises(ConfigError, match=pattern):
        AssayConfig.from_dict(data)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_missing_roles():
    cfg = AssayConfig.from_dict({"segmentation": {"mode": "nuclei"}, "channels": {"cell": 1}})
    with pytest.raises(ConfigError, match="needs channels.nucleus"):
        cfg.check_roles("segment")
    cfg = AssayConfig.from_dict({"channels": {"nucleus": 0}})
    cfg.check_roles("segment")
    with pytest.raises(ConfigError, match="channels.exosome"):
        cfg.check_roles("analyze")
    with pytest.raises(ConfigError, match="needs channels.cell"):
        AssayConfig().check_roles("segment")


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("channels: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    wrong = tmp_path / "w.yaml"
    wrong.write_text("spots:\n  radius_px: big\n")
    with pytest.raises(ConfigError, match=r"w.yaml: config key 'spots.radius_px'"):
        load_config(wrong)


def test_frozen_and_with_updates():
    cfg = load_config(template_config())
    with pytest.raises(Exception, match="frozen"):
        cfg.pixel_size_um = 1.0
    new = cfg.with_updates(spots={"threshold": 120.0})
    assert new.spots.threshold == 120.0 and new.spots.radius_px == cfg.spots.radius_px
    assert cfg.spots.threshold == "auto"
