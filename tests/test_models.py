"""YOLOv8 model: architecture parity with ultralytics, shapes, decode, BN modes, gradients."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detjax.models import create_model, scale_depth, scale_width
from detjax.models.blocks import max_pool_same, upsample2x

NC = 80
SIZE = 64


def _param_count(model: nnx.Module) -> int:
    return sum(int(x.size) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _abstract(name: str, **kw) -> nnx.Module:
    return nnx.eval_shape(lambda: create_model(name, num_classes=NC, rngs=nnx.Rngs(0), **kw))


@pytest.fixture(scope="module")
def nano():
    return create_model("yolov8n", num_classes=NC, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def forward(nano):
    """One jitted train-mode forward + predict: (predictions, outputs, new batch stats)."""
    graphdef, params, stats = nnx.split(nano, nnx.Param, nnx.BatchStat)

    @jax.jit
    def run(params, stats, images):
        model = nnx.merge(graphdef, params, stats)
        out = model(images)
        return model.predict(out), out, nnx.state(model, nnx.BatchStat)

    images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 3))
    return run(params, stats, images)


# ---------------------------------------------------------------- scaling and architecture


def test_scaling_rules_match_ultralytics_formulas():
    for c, w, mc in [(64, 0.25, 1024), (1024, 0.75, 768), (256, 0.5, 1024), (100, 0.33, 1024)]:
        assert scale_width(c, w, mc) == math.ceil(min(c, mc) * w / 8) * 8
    assert [scale_depth(n, 0.33) for n in (1, 3, 6)] == [1, 1, 2]
    assert [scale_depth(n, 0.67) for n in (1, 3, 6)] == [1, 2, 4]


@pytest.mark.parametrize("name,expected", [
    ("yolov8n", 3157200), ("yolov8s", 11166560), ("yolov8m", 25902640)])
def test_param_count_matches_ultralytics_yaml_summary(name, expected):
    # ultralytics' summary counts the 16 fixed DFL integral weights; ours is a constant.
    assert _param_count(_abstract(name)) == expected - 16


def _torch_model(cfg: str):
    pytest.importorskip("torch")
    ultralytics = pytest.importorskip("ultralytics")
    return ultralytics.YOLO(cfg).model


@pytest.mark.peers
@pytest.mark.parametrize("cfg,p2", [("yolov8n.yaml", False), ("yolov8n-p2.yaml", True)])
def test_conv_shapes_and_counts_match_ultralytics(cfg, p2):
    torch = pytest.importorskip("torch")
    tmodel = _torch_model(cfg)
    ours = _abstract("yolov8n", p2=p2)
    trainable = sum(p.numel() for p in tmodel.parameters() if p.requires_grad)
    assert _param_count(ours) == trainable
    torch_kernels = sorted(tuple(m.weight.shape[2:]) + (m.weight.shape[1], m.weight.shape[0])
                           for m in tmodel.modules()
                           if isinstance(m, torch.nn.Conv2d) and m.weight.requires_grad)
    our_kernels = sorted(tuple(m.kernel.shape) for _, m in nnx.iter_graph(ours)
                         if isinstance(m, nnx.Conv))
    assert our_kernels == torch_kernels
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in tmodel.modules())
    assert sum(isinstance(m, nnx.BatchNorm) for _, m in nnx.iter_graph(ours)) == n_bn


# ---------------------------------------------------------------- weight-ported parity


def _our_module(model, index: int, path: list[str]):
    """The nnx module for ultralytics ``model.model[index].<path>`` (yolov8n.yaml layout)."""
    b, n, h = model.backbone, model.neck, model.head
    layer = {0: b.stem, 1: b.down2, 2: b.c2f2, 3: b.down3, 4: b.c2f3, 5: b.down4, 6: b.c2f4,
             7: b.down5, 8: b.c2f5, 9: b.sppf, 12: n.top_down[0], 15: n.top_down[1],
             16: n.bottom_up_conv[0], 18: n.bottom_up_c2f[0], 19: n.bottom_up_conv[1],
             21: n.bottom_up_c2f[1]}
    if index == 22:  # Detect: cv2/cv3.<level>.<layer>
        branches = h.box_branches if path[0] == "cv2" else h.cls_branches
        node, path = branches[int(path[1])].layers[int(path[2])], path[3:]
    else:
        node = layer[index]
    for token in path:
        node = node[int(token)] if token.isdigit() else getattr(node, token)
    return node


def _port_from_torch(tmodel, model) -> None:
    import torch

    for name, mod in tmodel.model.named_modules():
        parts = name.split(".")
        if not parts[0].isdigit() or "dfl" in parts:
            continue
        if isinstance(mod, torch.nn.Conv2d):
            conv = _our_module(model, int(parts[0]), parts[1:])
            conv.kernel[...] = jnp.asarray(mod.weight.detach().numpy().transpose(2, 3, 1, 0))
            if mod.bias is not None:
                conv.bias[...] = jnp.asarray(mod.bias.detach().numpy())
        elif isinstance(mod, torch.nn.BatchNorm2d):
            bn = _our_module(model, int(parts[0]), parts[1:])
            bn.scale[...] = jnp.asarray(mod.weight.detach().numpy())
            bn.bias[...] = jnp.asarray(mod.bias.detach().numpy())
            bn.mean[...] = jnp.asarray(mod.running_mean.numpy())
            bn.var[...] = jnp.asarray(mod.running_var.numpy())


@pytest.fixture(scope="module")
def ported():
    """(torch YOLOv8n with randomised BN, our nano model with its weights, images NHWC)."""
    torch = pytest.importorskip("torch")
    tmodel = _torch_model("yolov8n.yaml")
    gen = torch.Generator().manual_seed(0)
    for m in tmodel.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.weight.data = 0.5 + torch.rand(c, generator=gen)
            m.bias.data = 0.1 * torch.randn(c, generator=gen)
            m.running_mean = 0.1 * torch.randn(c, generator=gen)
            m.running_var = 0.5 + torch.rand(c, generator=gen)
    model = create_model("yolov8n", num_classes=NC, rngs=nnx.Rngs(0))
    _port_from_torch(tmodel, model)
    images = np.random.default_rng(0).random((2, SIZE, SIZE, 3), dtype=np.float32)
    return tmodel, model, images


@pytest.mark.peers
def test_eval_predictions_match_ultralytics_with_same_weights(ported):
    import torch

    tmodel, model, images = ported
    tmodel.eval()
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(images.transpose(0, 3, 1, 2)))[0].numpy()
    model.eval()
    graphdef, state = nnx.split(model)
    got = jax.jit(lambda s, x: nnx.merge(graphdef, s).predict(nnx.merge(graphdef, s)(x)))(
        state, images)
    model.train()
    assert got.shape == expected.shape == (2, 4 + NC, 84)
    np.testing.assert_allclose(np.asarray(got[:, 4:]), expected[:, 4:], atol=2e-5, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(got[:, :4]), expected[:, :4], atol=2e-3, rtol=1e-4)


@pytest.mark.peers
def test_train_mode_raw_outputs_match_ultralytics(ported):
    import torch

    tmodel, model, images = ported
    tmodel.train()
    x = torch.from_numpy(images.transpose(0, 3, 1, 2))
    with torch.no_grad():
        raw = tmodel(x)
    graphdef, state = nnx.split(model)
    out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images)
    np.testing.assert_allclose(np.asarray(out.preds["boxes"]),
                               raw["boxes"].numpy().transpose(0, 2, 1), atol=2e-3, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out.preds["scores"]),
                               raw["scores"].numpy().transpose(0, 2, 1), atol=2e-3, rtol=1e-3)


# ---------------------------------------------------------------- forward, decode, BN


def test_output_shapes_and_initial_biases(nano, forward):
    preds, out, _ = forward
    a = sum((SIZE // s) ** 2 for s in (8, 16, 32))
    assert out.level_shapes == ((8, 8), (4, 4), (2, 2)) and out.strides == (8, 16, 32)
    assert out.preds["boxes"].shape == (2, a, 64) and out.preds["scores"].shape == (2, a, NC)
    assert preds.shape == (2, 4 + NC, a) and preds.dtype == jnp.float32
    for cls, box, s in zip(nano.head.cls_branches, nano.head.box_branches, (8, 16, 32)):
        np.testing.assert_allclose(cls.layers[-1].bias[...], math.log(5 / NC / (640 / s) ** 2),
                                   rtol=1e-6)
        np.testing.assert_allclose(box.layers[-1].bias[...], 1.0)
    assert all(np.isfinite(np.asarray(preds)).ravel())


def _decode_oracle(boxes_logits, scores_logits, level_shapes, strides, reg_max=16):
    """Plain NumPy loop: DFL expectation, ltrb around cell centres, xywh pixels, sigmoid."""
    b, a, _ = boxes_logits.shape
    out = np.zeros((b, 4 + scores_logits.shape[-1], a))
    for i in range(b):
        k = 0
        for (h, w), s in zip(level_shapes, strides):
            for y in range(h):
                for x in range(w):
                    d = []
                    for side in range(4):
                        z = boxes_logits[i, k, side * reg_max:(side + 1) * reg_max]
                        p = np.exp(z - z.max())
                        d.append(float((p / p.sum()) @ np.arange(reg_max)))
                    cx, cy = x + 0.5, y + 0.5
                    x1, y1, x2, y2 = cx - d[0], cy - d[1], cx + d[2], cy + d[3]
                    out[i, :4, k] = [(x1 + x2) / 2 * s, (y1 + y2) / 2 * s, (x2 - x1) * s,
                                     (y2 - y1) * s]
                    out[i, 4:, k] = 1 / (1 + np.exp(-scores_logits[i, k]))
                    k += 1
    return out


def test_predict_matches_numpy_decode_oracle(nano, forward):
    _, out, _ = forward
    rng = np.random.default_rng(3)
    boxes = rng.normal(0, 2, out.preds["boxes"].shape).astype(np.float32)
    scores = rng.normal(0, 2, out.preds["scores"].shape).astype(np.float32)
    synthetic = out.replace(preds={"boxes": jnp.asarray(boxes), "scores": jnp.asarray(scores)})
    got = jax.jit(nano.head.predict)(synthetic)
    expected = _decode_oracle(boxes, scores, out.level_shapes, out.strides)
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-4)


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(nano, forward):
    _, _, new_stats = forward
    old = nnx.state(nano, nnx.BatchStat)
    moved = [float(jnp.abs(a - b).max()) for a, b in
             zip(jax.tree.leaves(old), jax.tree.leaves(new_stats))]
    assert min(moved) > 0  # every running statistic moved with momentum 0.03
    # The first BN's running mean after one step is 0.97 * 0 + 0.03 * batch mean.
    nano.eval()
    try:
        graphdef, state = nnx.split(nano)

        @jax.jit
        def run(state, images):
            model = nnx.merge(graphdef, state)
            return model.predict(model(images)), nnx.state(model, nnx.BatchStat)

        images = jax.random.uniform(jax.random.key(1), (2, SIZE, SIZE, 3))
        p1, stats1 = run(state, images)
        p2, _ = run(state, images[::-1])
    finally:
        nano.train()
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), old, stats1)
    np.testing.assert_allclose(p1[::-1], p2, rtol=1e-5, atol=1e-5)  # per-image independence


def test_stem_batch_stat_update_uses_momentum_0_03(nano):
    stem = nano.backbone.stem
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    graphdef, state = nnx.split(stem)

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        m(x)
        return nnx.state(m, nnx.BatchStat)

    stats = run(state, x)
    y = jax.jit(lambda x: stem.conv(x))(x)
    np.testing.assert_allclose(stats["bn"]["mean"][...], 0.03 * y.mean((0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    assert stem.bn.epsilon == 1e-3


def test_detector_loss_gradients_finite(nano):
    """The contract path: detector(images) -> detector.loss(outputs, batch) (YOLOv8 loss via
    detjax.losses) -> finite grads, non-zero for backbone, neck and class branches, under jit,
    over a few SGD steps. (No descent check: the TAL targets are detached and grow with the
    predicted IoU, and at the -11.5 class-bias prior that raises the BCE term first.)"""
    graphdef, params, stats = nnx.split(nano, nnx.Param, nnx.BatchStat)
    batch = {"boxes": jnp.array([[[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 62.0]],
                                 [[10.0, 10.0, 50.0, 34.0], [0.0, 0.0, 0.0, 0.0]]]),
             "labels": jnp.array([[0, 7], [3, 0]]),
             "gt_mask": jnp.array([[True, True], [True, False]])}
    images = jax.random.uniform(jax.random.key(4), (2, SIZE, SIZE, 3))

    @jax.jit
    def step(params, stats):
        def loss_fn(params, stats):
            model = nnx.merge(graphdef, params, stats, copy=True)  # fresh Variables in grad
            loss, parts = model.loss(model(images), batch)
            return loss, (parts, nnx.state(model, nnx.BatchStat))

        (loss, (parts, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
        params = jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)
        return params, stats, loss, parts, grads

    losses = []
    for i in range(3):
        params, stats, loss, parts, grads = step(params, stats)
        losses.append(float(loss))
        if i == 0:
            assert set(parts) == {"box", "cls", "dfl"}
            assert all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(grads))
            # Box branches of a level without assigned anchors may get no gradient; the rest
            # must all receive one.
            for part in (grads["backbone"], grads["neck"], grads["head"]["cls_branches"]):
                assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(part))
    assert all(math.isfinite(v) and v > 0 for v in losses), losses


# ---------------------------------------------------------------- blocks


def test_upsample_and_max_pool_against_numpy():
    x = np.random.default_rng(0).normal(size=(1, 3, 4, 2)).astype(np.float32)
    np.testing.assert_array_equal(jax.jit(upsample2x)(x), x.repeat(2, 1).repeat(2, 2))
    got = jax.jit(max_pool_same, static_argnums=1)(x, 5)
    expected = np.empty_like(x)
    for i in range(3):
        for j in range(4):
            expected[0, i, j] = x[0, max(i - 2, 0):i + 3, max(j - 2, 0):j + 3].max((0, 1))
    np.testing.assert_array_equal(got, expected)


def test_p2_model_shapes():
    model = _abstract("yolov8n", p2=True)
    out = nnx.eval_shape(lambda m: m(jnp.zeros((1, SIZE, SIZE, 3))), model)
    assert out.strides == (4, 8, 16, 32)
    assert out.preds["scores"].shape == (1, sum((SIZE // s) ** 2 for s in (4, 8, 16, 32)), NC)


def test_input_validation(nano):
    with pytest.raises(ValueError, match="multiples of 32"):
        nano(jnp.zeros((1, 48, 64, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        nano(jnp.zeros((1, 3, 64, 64)))
    with pytest.raises(TypeError, match="floating"):
        nano(jnp.zeros((1, 64, 64, 3), jnp.uint8))
    with pytest.raises(ValueError, match="yolov8n"):
        create_model("yolov9", num_classes=3, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="head"):
        create_model("yolov8n", num_classes=3, head="detr", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("kernel,stride,pad,groups", [(1, 1, 0, 1), (1, 2, 0, 1), (3, 1, 1, 1),
                                                     (3, 2, 1, 1), (1, 1, 0, 2)])
def test_pointwise_as_matmul_equals_lax_convolution(kernel, stride, pad, groups):
    """1x1 stride-1 convolutions run as a channel matmul; every other case is lax's own.
    Values and both gradients agree with lax.conv_general_dilated."""
    from jax import lax

    from detjax.models.blocks import pointwise_as_matmul

    rng = np.random.default_rng(kernel * 10 + stride + groups)
    x = jnp.asarray(rng.normal(size=(2, 9, 7, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 4 // groups, 6)), jnp.float32)
    kw = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=groups)
    padding = ((pad, pad), (pad, pad))

    def loss(f, x, w):
        y = f(x, w, (stride, stride), padding, **kw)
        return jnp.sum(jnp.sin(y)), y

    (_, want), gw = jax.value_and_grad(lambda x, w: loss(lax.conv_general_dilated, x, w),
                                       argnums=(0, 1), has_aux=True)(x, w)
    (_, got), gg = jax.value_and_grad(lambda x, w: loss(pointwise_as_matmul, x, w),
                                      argnums=(0, 1), has_aux=True)(x, w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(gg, gw):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
