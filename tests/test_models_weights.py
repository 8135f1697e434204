"""safetensors weights: round trip, pretrained loading with another class count, errors."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from detjax.models import create_model, load_pretrained, load_weights, read_weights, save_weights
from detjax.models.variables import variable_arrays
from detjax.models.weights import save_arrays


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A nano model (3 classes) with non-default BN statistics, saved once."""
    model = create_model("yolov8n", num_classes=3, rngs=nnx.Rngs(1))
    model.backbone.stem.bn.mean[...] = np.linspace(-1, 1, 16, dtype=np.float32)
    path = tmp_path_factory.mktemp("w") / "nano.safetensors"
    save_weights(model, path, metadata={"class_names": ["a", "b", "c"], "model": "yolov8n"})
    return model, path


def test_round_trip_restores_every_weight_and_the_metadata(source):
    model, path = source
    other = create_model("yolov8n", num_classes=3, rngs=nnx.Rngs(2))
    meta = load_weights(other, path)
    assert meta == {"format": "detjax", "class_names": ["a", "b", "c"], "model": "yolov8n",
                    "num_classes": 3}
    want, got = variable_arrays(model), variable_arrays(other)
    assert want.keys() == got.keys() and len(want) == 297  # 225 Params + 72 BN mean/var pairs
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    arrays, _ = read_weights(path)
    assert arrays["backbone.stem.conv.kernel"].shape == (3, 3, 3, 16)  # HWIO


def test_other_class_count_keeps_fresh_class_outputs(source):
    model, path = source
    fresh = create_model("yolov8n", num_classes=5, rngs=nnx.Rngs(3))
    before = variable_arrays(fresh)
    lines = []
    load_pretrained(fresh, path, log=lines.append)
    after, want = variable_arrays(fresh), variable_arrays(model)
    # c3 = max(64, min(nc, 100)) = 64 for 3 and 5 classes: only the 1x1 outputs differ
    kept = sorted(k for k in after if np.shape(after[k]) != np.shape(want[k]))
    assert kept == sorted(f"head.cls_branches.{i}.layers.2.{p}" for i in range(3)
                          for p in ("bias", "kernel"))
    for key in after:
        np.testing.assert_array_equal(after[key], before[key] if key in kept else want[key])
    assert "3 classes in the file, 5 in the model" in lines[-1]
    assert lines[0].startswith("weights: 291/297 tensors")


def test_wider_class_branch_is_all_kept_fresh(tmp_path):
    # yolov8n with 80 classes has c3 = 80: every class-branch tensor differs from c3 = 64
    wide = nnx.eval_shape(lambda: create_model("yolov8n", num_classes=80, rngs=nnx.Rngs(0)))
    arrays = {k: np.zeros(v.shape, np.float32) for k, v in _shapes(wide).items()}
    save_arrays(arrays, tmp_path / "wide.safetensors", metadata={"num_classes": 80})
    model = create_model("yolov8n", num_classes=2, rngs=nnx.Rngs(0))
    lines = []
    load_pretrained(model, tmp_path / "wide.safetensors", log=lines.append)
    after = variable_arrays(model)
    cls = [k for k in after if k.startswith("head.cls_branches.")]
    assert len(cls) == 3 * (5 + 5 + 2) and all(after[k].any() for k in cls if "kernel" in k)
    assert not after["head.box_branches.0.layers.2.kernel"].any()
    assert f"in {len(cls)} tensor(s)" in lines[-1]


def _shapes(model):
    from detjax.models.variables import variable_shapes

    return {k: np.empty(s) for k, s in variable_shapes(model).items()}


def test_bad_files_and_shapes_are_named(source, tmp_path):
    model, path = source
    arrays, meta = read_weights(path)
    with pytest.raises(FileNotFoundError, match="no weights file"):
        load_weights(model, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"\.safetensors file .* or an ultralytics \.pt"):
        load_pretrained(model, tmp_path / "w.npz")
    bad = dict(arrays, **{"neck.top_down.0.cv1.conv.kernel": np.zeros((1, 1, 2, 2), "f4")})
    save_arrays(bad, tmp_path / "bad.safetensors", metadata=meta)
    with pytest.raises(ValueError, match=r"neck.top_down.0.cv1.conv.kernel.*\(1, 1, 2, 2\)"):
        load_pretrained(model, tmp_path / "bad.safetensors", log=lambda _: None)
    with pytest.raises(ValueError, match=r"neck.top_down.0.cv1.conv.kernel.*\(1, 1, 2, 2\)"):
        load_weights(model, tmp_path / "bad.safetensors")
    del arrays["backbone.sppf.cv2.bn.var"]
    save_arrays(arrays, tmp_path / "short.safetensors", metadata=meta)
    with pytest.raises(ValueError, match="backbone.sppf.cv2.bn.var"):
        load_pretrained(model, tmp_path / "short.safetensors", log=lambda _: None)
    with pytest.raises(ValueError, match="not given"):
        load_weights(model, tmp_path / "short.safetensors")
    retina = create_model("yolov8n", num_classes=3, head="retina", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"box_branches.0.layers.2.bias.*\(64,\).*\(36,\)"):
        load_pretrained(retina, path, log=lambda _: None)


@pytest.fixture
def no_peers(monkeypatch):
    """Importing torch or ultralytics fails, as where they are not installed."""
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name.split(".")[0] in ("torch", "ultralytics"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)


def test_pt_without_peers_says_what_is_needed(tmp_path, no_peers):
    (tmp_path / "w.pt").write_bytes(b"not a checkpoint")
    model = nnx.eval_shape(lambda: create_model("yolov8n", num_classes=3, rngs=nnx.Rngs(0)))
    with pytest.raises(ImportError, match="needs torch and ultralytics.*detjax convert"):
        load_pretrained(model, tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        load_pretrained(model, tmp_path / "absent.pt")


def test_convert_without_peers_exits_with_the_reason(tmp_path, no_peers, capsys):
    from detjax.convert import main

    (tmp_path / "w.pt").write_bytes(b"x")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "o.safetensors")]) == 2
    assert "needs torch and ultralytics" in capsys.readouterr().err
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "o.bin")]) == 2
    assert "must end in .safetensors" in capsys.readouterr().err
