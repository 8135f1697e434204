"""ultralytics YOLOv8 checkpoints -> detjax: name map, architecture inference, freeze masks, and
(peers) the converted model computing what ultralytics computes."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx

from detjax.models import (
    SCALES,
    create_model,
    freeze_mask,
    from_ultralytics,
    ultralytics_architecture,
)
from detjax.models.ultralytics import abstract_model, module_index, ultralytics_key
from detjax.models.variables import variable_shapes

SIZE_HW = (64, 96)
NC = 3


def _fake_state_dict(model) -> dict[str, np.ndarray]:
    """An ultralytics-named state dict of zeros for an abstract detjax model (no memory:
    broadcast views), kernels back in OIHW."""
    top_down = len(model.neck.top_down)
    out = {}
    for key, shape in variable_shapes(model).items():
        if len(shape) == 4:
            shape = (shape[3], shape[2], shape[0], shape[1])
        out[ultralytics_key(key, top_down=top_down)] = np.broadcast_to(np.float32(0), shape)
    head = 10 + 6 * top_down
    out[f"model.{head}.dfl.conv.weight"] = np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1)
    return out


# ------------------------------------------------------------------ name map (yolov8.yaml)


@pytest.mark.parametrize("key,expected", [
    ("backbone.stem.conv.kernel", "model.0.conv.weight"),
    ("backbone.c2f2.m.0.cv2.bn.scale", "model.2.m.0.cv2.bn.weight"),
    ("backbone.sppf.cv1.bn.mean", "model.9.cv1.bn.running_mean"),
    ("neck.top_down.0.cv1.bn.var", "model.12.cv1.bn.running_var"),
    ("neck.top_down.1.cv2.conv.kernel", "model.15.cv2.conv.weight"),
    ("neck.bottom_up_conv.0.bn.bias", "model.16.bn.bias"),
    ("neck.bottom_up_c2f.0.m.0.cv1.conv.kernel", "model.18.m.0.cv1.conv.weight"),
    ("neck.bottom_up_conv.1.conv.kernel", "model.19.conv.weight"),
    ("neck.bottom_up_c2f.1.cv2.bn.bias", "model.21.cv2.bn.bias"),
    ("head.box_branches.2.layers.0.conv.kernel", "model.22.cv2.2.0.conv.weight"),
    ("head.cls_branches.1.layers.2.kernel", "model.22.cv3.1.2.weight"),
    ("head.cls_branches.0.layers.2.bias", "model.22.cv3.0.2.bias"),
])
def test_ultralytics_key_follows_yolov8_yaml(key, expected):
    assert ultralytics_key(key, top_down=2) == expected


def test_module_index_follows_yolov8_p2_yaml():
    # yolov8-p2.yaml: C2f at 12, 15, 18; Conv 19, 22, 25; C2f 21, 24, 27; Detect 28
    got = [module_index(f"neck.{name}.{j}.x", top_down=3)
           for name in ("top_down", "bottom_up_conv", "bottom_up_c2f") for j in range(3)]
    assert got == [12, 15, 18, 19, 22, 25, 21, 24, 27]
    assert module_index("head.box_branches.0", top_down=3) == 28
    with pytest.raises(ValueError, match="not a weight"):
        module_index("neck.unknown.0.x", top_down=2)


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.slow] if n in ("yolov8l", "yolov8x") else [])
    for n in SCALES])
def test_architecture_is_read_back_from_every_scale(name):
    sd = _fake_state_dict(abstract_model(name, num_classes=7))
    assert ultralytics_architecture(sd) == {"name": name, "num_classes": 7, "p2": False,
                                            "reg_max": 16}


@pytest.mark.slow
def test_architecture_of_p2_and_param_counts_of_large_scales():
    sd = _fake_state_dict(abstract_model("yolov8s", num_classes=2, p2=True))
    assert ultralytics_architecture(sd)["p2"] is True
    # ultralytics yolov8.yaml summaries (80 classes) count the 16 fixed DFL weights too
    for name, expected in (("yolov8l", 43691520), ("yolov8x", 68229648)):
        shapes = variable_shapes(abstract_model(name, num_classes=80))
        n = sum(int(np.prod(s)) for k, s in shapes.items()
                if not k.endswith((".mean", ".var")))
        assert n == expected - 16


def test_conversion_errors_name_the_problem():
    model = abstract_model("yolov8n", num_classes=NC)
    sd = _fake_state_dict(model)
    with pytest.raises(TypeError, match="mapping"):
        ultralytics_architecture([1, 2])
    with pytest.raises(ValueError, match="no 'model"):
        from_ultralytics({"foo": np.zeros(1)})
    with pytest.raises(ValueError, match="YOLO11"):
        from_ultralytics({**sd, "model.23.cv2.0.2.weight": np.zeros((64, 16, 1, 1))})
    with pytest.raises(ValueError, match="end-to-end"):
        from_ultralytics({**sd, "model.22.one2one_cv2.0.2.weight": np.zeros((64, 16, 1, 1))})
    with pytest.raises(ValueError, match="model='yolov8s' but the checkpoint is a yolov8n"):
        from_ultralytics(sd, model="yolov8s")
    with pytest.raises(ValueError, match=r"'model.4.cv1.bn.running_mean'"):
        from_ultralytics({k: v for k, v in sd.items() if k != "model.4.cv1.bn.running_mean"})
    bad = dict(sd, **{"model.12.cv1.conv.weight": np.zeros((64, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match=r"model.12.cv1.conv.weight.*neck.top_down.0"):
        from_ultralytics(bad)
    with pytest.raises(ValueError, match="no place"):
        from_ultralytics({**sd, "model.9.extra.weight": np.zeros(3)})
    with pytest.raises(ValueError, match="arange"):
        from_ultralytics({**sd, "model.22.dfl.conv.weight": np.ones((1, 16, 1, 1))})
    retina = nnx.eval_shape(lambda: create_model("yolov8n", num_classes=NC, head="retina",
                                                 rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="head='dfl'"):
        from_ultralytics(sd, model=retina)
    with pytest.raises(TypeError, match="Detector"):
        from_ultralytics(sd, model=3)


# ------------------------------------------------------------------ freeze (ultralytics freeze: N)


@pytest.fixture(scope="module")
def nano_params():
    model = abstract_model("yolov8n", num_classes=NC)
    return nnx.state(model, nnx.Param)


def _frozen(mask) -> list[str]:
    return sorted(".".join(str(getattr(k, "key", getattr(k, "idx", ""))) for k in p[:-1])
                  for p, v in _flat(mask) if v)


def _flat(tree):
    import jax

    return jax.tree_util.tree_flatten_with_path(tree)[0]


def test_freeze_mask_counts(nano_params):
    n_leaves = len(_flat(nano_params))
    counts = {n: sum(bool(v) for _, v in _flat(freeze_mask(nano_params, n)))
              for n in (0, 1, 2, 3, 10, 22, 23)}
    # Conv = kernel + BN scale + BN bias; C2f(n=1) = cv1 + cv2 + one Bottleneck of 2 Convs
    assert counts[0] == 0 and counts[1] == 3 and counts[2] == 6 and counts[3] == 6 + 12
    backbone = sum(1 for p, _ in _flat(nano_params) if p[0].key == "backbone")
    head = sum(1 for p, _ in _flat(nano_params) if p[0].key == "head")
    assert counts[10] == backbone and counts[22] == n_leaves - head and counts[23] == n_leaves
    assert _frozen(freeze_mask(nano_params, 1)) == ["backbone.stem.bn.bias",
                                                    "backbone.stem.bn.scale",
                                                    "backbone.stem.conv.kernel"]
    pure = freeze_mask(nnx.to_pure_dict(nano_params), 10)
    assert pure["backbone"]["sppf"]["cv2"]["conv"]["kernel"] is True
    assert pure["neck"]["top_down"][0]["cv1"]["conv"]["kernel"] is False


def test_freeze_mask_rejects_bad_input(nano_params):
    for n in (-1, 1.5, True, "3", 24):
        with pytest.raises(ValueError, match="freeze"):
            freeze_mask(nano_params, n)
    with pytest.raises(ValueError, match="YOLOv8 Detector"):
        freeze_mask({"a": np.zeros(2)}, 1)


# ------------------------------------------------------------------ parity with ultralytics


def _torch_net(cfg: str):
    """An ultralytics DetectionModel in eval mode with random weights and random BatchNorm
    statistics: random affine parameters, running statistics measured on random images (so the
    signal neither dies nor explodes through the 20+ layers, and outputs depend on the input)
    then perturbed, and random Detect output biases."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    net = DetectionModel(cfg, nc=NC, verbose=False)
    gen = torch.Generator().manual_seed(1)
    bns = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
            m.bias.copy_(0.2 * torch.randn(m.num_features, generator=gen))
            m.momentum = 1.0  # running statistics := those of the next batch
        for branch in net.model[-1].cv3:  # class logits of a few units: no sigmoid ties at 1
            branch[-1].weight.mul_(0.1)
        for m in net.modules():
            if isinstance(m, torch.nn.Conv2d) and m.bias is not None:  # Detect outputs
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
        net.train()
        net(torch.rand((4, 3, *SIZE_HW), generator=gen))
        for m in bns:
            c = m.num_features
            m.momentum = 0.03
            m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(c, generator=gen))
            m.running_var.mul_(0.8 + 0.4 * torch.rand(c, generator=gen))
    return net.eval()


@pytest.mark.peers
@pytest.mark.parametrize("cfg,name", [
    ("yolov8n.yaml", "yolov8n"), pytest.param("yolov8s.yaml", "yolov8s", marks=pytest.mark.slow)])
def test_converted_model_matches_ultralytics(cfg, name):
    import jax
    import jax.numpy as jnp
    import torch
    from ultralytics.utils.nms import non_max_suppression as torch_nms

    from detjax import non_max_suppression

    net = _torch_net(cfg)
    sd = {k: v.numpy() for k, v in net.state_dict().items()}
    assert ultralytics_architecture(sd)["name"] == name
    images = np.random.default_rng(0).random((2, *SIZE_HW, 3))

    def run(model, x):
        model.eval()
        graphdef, state = nnx.split(model)

        @jax.jit
        def forward(state, x):
            m = nnx.merge(graphdef, state)
            out = m(x)
            return out.preds, m.predict(out)

        return forward(state, x)

    def torch_run(x):
        with torch.no_grad():
            return net(torch.from_numpy(x.transpose(0, 3, 1, 2)))

    # float64 on both sides: the same function up to the float32 rounding of the head outputs
    with jax.enable_x64():
        model64 = create_model(name, num_classes=NC, dtype=jnp.float64, rngs=nnx.Rngs(0))
        preds64, _ = run(from_ultralytics(sd, model=model64), images)
    net.double()
    _, raw64 = torch_run(images)
    for key in ("boxes", "scores"):  # [B, A, k] here, [B, k, A] in ultralytics
        np.testing.assert_allclose(np.asarray(preds64[key]),
                                   raw64[key].numpy().transpose(0, 2, 1), rtol=0, atol=1e-4)
    # float32: the same within float32 accumulation error over ~60 layers, 1e-5 of the
    # outputs' scale (logits reach ~100 with these random weights; measured 4e-6)
    net.float()
    images = images.astype(np.float32)
    model = from_ultralytics(sd)
    assert (model.num_classes, len(model.neck.top_down)) == (NC, 2)
    preds, decoded = run(model, images)
    y, raw = torch_run(images)
    err = {}
    for key in ("boxes", "scores"):
        expected = raw[key].numpy().transpose(0, 2, 1)
        err[key] = np.abs(np.asarray(preds[key]) - expected).max()
        assert err[key] <= 1e-5 * np.abs(expected).max()
    # DFL: d E[bin] / d logit_j = p_j (j - E), so a distance moves by <= 15 bins (of <= 32 px)
    # times the logit error; a width sums two distances
    box_tol = 2 * 32 * 15 * err["boxes"]
    np.testing.assert_allclose(np.asarray(decoded[:, :4]), y[:, :4].numpy(), rtol=0,
                               atol=box_tol)
    np.testing.assert_allclose(np.asarray(decoded[:, 4:]), y[:, 4:].numpy(), rtol=0, atol=1e-4)
    prob_err = np.abs(np.asarray(decoded[:, 4:]) - y[:, 4:].numpy()).max()
    ours = non_max_suppression(decoded, conf_thres=0.25, iou_thres=0.7)
    theirs = torch_nms(y, conf_thres=0.25, iou_thres=0.7)
    for b in range(len(images)):
        _assert_no_near_tie(y[b].numpy(), conf=0.25, iou=0.7, tol=2 * prob_err)
        expected = theirs[b].numpy()
        assert 0 < len(expected) == int(ours.count[b])
        got = np.asarray(ours.detections[b, : len(expected)])
        # same set of rows; rows of (nearly) equal score may come in either order
        dist = np.abs(got[None, :, :4] - expected[:, None, :4]).max(-1)  # [n_expected, n_got]
        match = dist.argmin(1)
        assert sorted(match) == list(range(len(expected)))
        np.testing.assert_allclose(got[match, :4], expected[:, :4], rtol=0, atol=box_tol)
        np.testing.assert_allclose(got[match, 4], expected[:, 4], rtol=0, atol=1e-4)
        np.testing.assert_array_equal(got[match, 5], expected[:, 5])


def _assert_no_near_tie(pred: np.ndarray, *, conf: float, iou: float, tol: float) -> None:
    """Two score arrays that differ by at most ``tol / 2`` per entry order two candidates
    alike unless their scores are within ``tol``; greedy NMS then keeps the same boxes unless
    such a pair, of one class, overlaps by more than ``iou``. Check that ``pred [4 + C, A]``
    (cxcywh + probabilities) has no such pair."""
    score, cls = pred[4:].max(0), pred[4:].argmax(0)
    keep = score > conf
    cxcy, wh, score, cls = pred[:2, keep].T, pred[2:4, keep].T, score[keep], cls[keep]
    lo, hi = cxcy - wh / 2, cxcy + wh / 2
    inter = np.clip(np.minimum(hi[:, None], hi[None]) - np.maximum(lo[:, None], lo[None]), 0,
                    None).prod(-1)
    area = wh.prod(-1)
    overlap = inter / (area[:, None] + area[None] - inter) > iou
    close = np.abs(score[:, None] - score[None]) <= tol
    same = cls[:, None] == cls[None]
    np.fill_diagonal(close, False)
    assert not (overlap & close & same).any()


@pytest.mark.peers
def test_freeze_mask_freezes_what_ultralytics_freezes():
    net = _torch_net("yolov8n.yaml")
    params = nnx.state(abstract_model("yolov8n", num_classes=NC), nnx.Param)
    sizes = [int(np.prod(v.shape)) for _, v in _flat(params)]
    for n in (3, 10, 15, 22):
        mask = [bool(v) for _, v in _flat(freeze_mask(params, n))]
        expected = sum(p.numel() for k, p in net.named_parameters()
                       if int(k.split(".")[1]) < n and ".dfl" not in k)
        assert sum(s for s, m in zip(sizes, mask) if m) == expected


@pytest.mark.peers
def test_convert_cli_writes_names_and_pt_loads_the_same(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from detjax.convert import main
    from detjax.models import load_pretrained, read_weights
    from detjax.models.variables import variable_arrays

    net = _torch_net("yolov8n.yaml")
    net.names = {0: "cat", 1: "dog", 2: "fox"}
    torch.save({"model": net, "train_args": {}}, tmp_path / "w.pt")
    assert main([str(tmp_path / "w.pt"), str(tmp_path / "w.safetensors")]) == 0
    assert "yolov8n, 3 classes: cat, dog, fox" in capsys.readouterr().out
    arrays, meta = read_weights(tmp_path / "w.safetensors")
    assert meta["class_names"] == ["cat", "dog", "fox"] and meta["model"] == "yolov8n"
    assert meta["p2"] is False and "AGPL-3.0" in meta["license"]
    from_pt = create_model("yolov8n", num_classes=NC, rngs=nnx.Rngs(5))
    load_pretrained(from_pt, tmp_path / "w.pt", log=lambda _: None)
    got = variable_arrays(from_pt)
    for key, value in arrays.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    assert main([str(tmp_path / "absent.pt"), str(tmp_path / "x.safetensors")]) == 2
    assert "no checkpoint file" in capsys.readouterr().err
