"""detjax.config: defaults, files, overrides, nearest-key errors, every key documented."""

import re

import pytest
import yaml

from detjax.config import CONFIG_DIR, DEFAULT_CONFIG, Config, load_config, parse_override


def test_default_loads_with_attribute_and_item_access():
    cfg = load_config()
    assert isinstance(cfg.train, Config)
    assert cfg.train.lr0 == cfg["train"]["lr0"]
    assert cfg.model.name == "yolov8n"
    assert cfg.data.format == "synthetic"


def test_every_default_key_has_a_one_line_comment():
    lines = DEFAULT_CONFIG.read_text().splitlines()
    keyed = [ln for ln in lines if re.match(r"^\s*[A-Za-z_]\w*:", ln)]
    leaf_lines = [ln for ln in keyed if ln.split(":", 1)[1].split("#")[0].strip()]
    assert len(leaf_lines) == len(load_config().flat())  # one line per leaf key
    for ln in leaf_lines:
        assert "#" in ln and ln.split("#", 1)[1].strip(), f"no comment: {ln!r}"


@pytest.mark.parametrize("override, nearest", [
    ("train.lr=0.1", "train.lr0"),
    ("train.epoch=3", "train.epochs"),
    ("modle.name=yolov8s", "model.name"),
    ("imgsize=320", "data.imgsz"),
])
def test_unknown_override_names_nearest_key(override, nearest):
    with pytest.raises(ValueError, match=re.escape(repr(nearest))):
        load_config(None, [override])


def test_unknown_key_in_file_names_nearest(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  momentun: 0.9\n")
    with pytest.raises(ValueError, match="'train.momentum'") as e:
        load_config(str(path))
    assert str(path) in str(e.value)


def test_overrides_parse_yaml_values_and_bare_leaves():
    cfg = load_config(None, ["epochs=3", "train.lr0=0.02", "multi_scale=[64,96]",
                             "batch=8", "model.p2=true", "eval.batch=4"])
    assert cfg.train.epochs == 3 and cfg.train.lr0 == 0.02
    assert cfg.data.multi_scale == [64, 96]
    assert cfg.train.batch == 8 and cfg.eval.batch == 4
    assert cfg.model.p2 is True


def test_open_sections_accept_mappings():
    cfg = load_config(None, ["train.loss={box_gain: 5.0}"])
    assert cfg.train.loss.box_gain == 5.0


def test_type_mismatch_is_type_error(tmp_path):
    with pytest.raises(TypeError, match="train.epochs"):
        load_config(None, ["train.epochs=many"])
    (tmp_path / "s.yaml").write_text("train: 3\n")
    with pytest.raises(TypeError, match="section"):
        load_config(str(tmp_path / "s.yaml"))


def test_malformed_override():
    with pytest.raises(ValueError, match="key=value"):
        parse_override("epochs", ["train.epochs"])


def test_base_chain_and_file_order(tmp_path):
    (tmp_path / "a.yaml").write_text("base: yolov8s.yaml\ntrain:\n  epochs: 7\n")
    cfg = load_config(str(tmp_path / "a.yaml"), ["train.lr0=0.5"])
    assert cfg.model.name == "yolov8s" and cfg.train.epochs == 7 and cfg.train.lr0 == 0.5


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="shipped configs"):
        load_config("no_such_config.yaml")


def _run_configs():
    """Every shipped run config (the tuner's search space, a different schema, is tested in
    tests/test_tune.py)."""
    return sorted(p.name for p in CONFIG_DIR.glob("*.yaml")
                  if "space" not in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", _run_configs())
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    raw = yaml.safe_load((CONFIG_DIR / path).read_text()) or {}
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert cfg[section][key] == value


def test_missing_attribute_names_nearest():
    with pytest.raises(AttributeError, match="'epochs'"):
        load_config().train.epoch
