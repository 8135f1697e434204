"""Heads on their own (random feature maps): shapes, decode against NumPy oracles, losses wired
to detjax.assign / detjax.losses with finite gradients, and a few optimiser steps that fit."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from detjax.models import HEADS, ATSSHead, DFLHead, FCOSHead, RetinaHead, create_model
from detjax.models.heads import fcos_regress_ranges

NC = 3
SIZE = 64
STRIDES = (8, 16, 32)
CHANNELS = (16, 32, 64)
HEAD_CLASSES = {"dfl": DFLHead, "retina": RetinaHead, "atss": ATSSHead, "fcos": FCOSHead}


def _feats(batch: int = 2):
    return [jax.random.normal(jax.random.key(i), (batch, SIZE // s, SIZE // s, c))
            for i, (s, c) in enumerate(zip(STRIDES, CHANNELS))]


def _batch():
    boxes = jnp.array([[[4.0, 6.0, 30.0, 40.0], [30.0, 28.0, 60.0, 62.0], [0.0, 0.0, 0.0, 0.0]],
                       [[10.0, 10.0, 50.0, 34.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]])
    return {"boxes": boxes, "labels": jnp.array([[0, 2, 0], [1, 0, 0]]),
            "gt_mask": jnp.array([[True, True, False], [True, False, False]])}


@pytest.fixture(scope="module", params=[h for h in HEADS if h != "dfl"])
def fitted(request):
    """(head name, head, [(loss, components)] over 12 Adam steps, first predictions).
    The DFL head's loss is exercised through the whole detector in test_models.py."""
    head = HEAD_CLASSES[request.param](CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(head, nnx.Param, nnx.BatchStat)
    opt = optax.adam(1e-2)
    feats, batch = _feats(), _batch()

    @jax.jit
    def step(params, stats, opt_state):
        def loss_fn(params, stats):
            model = nnx.merge(graphdef, params, stats, copy=True)
            out = model(feats)
            loss, parts = model.loss(out, batch)
            return loss, (parts, model.predict(out), nnx.state(model, nnx.BatchStat))

        (loss, (parts, preds, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats)
        finite = jnp.all(jnp.array([jnp.isfinite(g).all() for g in jax.tree.leaves(grads)]))
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss, parts, preds, finite

    opt_state = opt.init(params)
    history, first_preds = [], None
    for _ in range(12):
        params, stats, opt_state, loss, parts, preds, finite = step(params, stats, opt_state)
        assert bool(finite)
        history.append((float(loss), {k: float(v) for k, v in parts.items()}))
        first_preds = preds if first_preds is None else first_preds
    return request.param, head, history, first_preds


def test_loss_components_finite_and_fall_with_training(fitted):
    name, _, history, _ = fitted
    expected = {"dfl": {"box", "cls", "dfl"}, "retina": {"cls", "box"},
                "atss": {"cls", "box", "dfl"}, "fcos": {"cls", "box", "centerness"}}[name]
    assert set(history[0][1]) == expected
    losses = [h[0] for h in history]
    assert all(math.isfinite(v) and v >= 0 for v in losses)
    # GFL weights its box terms by the detached class confidence (normaliser clamped at 1, as
    # mmdet), so its loss first rises while the scores leave the 0.01 prior; compare the end
    # with the early peak.
    assert losses[-1] < 0.8 * max(losses[:3]), losses
    for total, parts in history:
        assert total == pytest.approx(sum(parts.values()), rel=1e-5)


def test_prediction_shape_and_ranges(fitted):
    name, head, _, preds = fitted
    per_loc = head.num_anchors if name == "retina" else 1
    a = sum((SIZE // s) ** 2 for s in STRIDES) * per_loc
    assert preds.shape == (2, 4 + NC, a)
    probs = np.asarray(preds[:, 4:])
    assert np.all((probs >= 0) & (probs <= 1)) and np.all(np.asarray(preds[:, 2:4]) >= 0)


def _cells(level_shapes, strides, offset):
    """Plain loop over levels and cells: (x, y) pixel position and stride of each location."""
    rows = []
    for (h, w), s in zip(level_shapes, strides):
        for y in range(h):
            for x in range(w):
                rows.append(((x + offset) * s, (y + offset) * s, s))
    return np.array(rows)


def _raw(head, seed=0):
    out = nnx.eval_shape(lambda m, f: m(f), head, _feats(1))  # shapes only, nothing compiled
    rng = np.random.default_rng(seed)
    preds = {k: jnp.asarray(rng.normal(0, 1, v.shape), jnp.float32) for k, v in out.preds.items()}
    return out.replace(preds=preds)


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def test_retina_decode_matches_oracle():
    head = RetinaHead(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = _raw(head)
    got = np.asarray(jax.jit(head.predict)(out))[0]
    d = np.asarray(out.preds["deltas"])[0]
    cells = _cells(out.level_shapes, STRIDES, 0.0)
    k = 0
    expected = np.zeros((4, len(cells) * 9))
    for cx, cy, s in cells:
        for ratio in (0.5, 1.0, 2.0):  # ratio-major, then octave scale
            for octave in range(3):
                size = 4 * s * 2 ** (octave / 3)
                aw, ah = size / math.sqrt(ratio), size * math.sqrt(ratio)
                dw, dh = min(d[k, 2], math.log(1000 / 16)), min(d[k, 3], math.log(1000 / 16))
                expected[:, k] = [cx + aw * d[k, 0], cy + ah * d[k, 1], aw * math.exp(dw),
                                  ah * math.exp(dh)]
                k += 1
    np.testing.assert_allclose(got[:4], expected, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(got[4:], _sigmoid(np.asarray(out.preds["scores"])[0]).T,
                               rtol=1e-5)


def _dfl_mean(logits, bins):
    z = logits.reshape(-1, 4, bins)
    p = np.exp(z - z.max(-1, keepdims=True))
    return (p / p.sum(-1, keepdims=True)) @ np.arange(bins)


@pytest.mark.parametrize("cls,key,bins,offset", [(DFLHead, "boxes", 16, 0.5),
                                                 (ATSSHead, "dist", 17, 0.0)])
def test_distribution_heads_decode_matches_oracle(cls, key, bins, offset):
    head = cls(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = _raw(head, seed=1)
    got = np.asarray(jax.jit(head.predict)(out))[0]
    cells = _cells(out.level_shapes, STRIDES, offset)
    ltrb = _dfl_mean(np.asarray(out.preds[key])[0], bins) * cells[:, 2:]
    x1, y1 = cells[:, 0] - ltrb[:, 0], cells[:, 1] - ltrb[:, 1]
    x2, y2 = cells[:, 0] + ltrb[:, 2], cells[:, 1] + ltrb[:, 3]
    expected = np.stack([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1])
    np.testing.assert_allclose(got[:4], expected, rtol=1e-4, atol=1e-3)


def test_fcos_decode_and_scores_match_oracle():
    head = FCOSHead(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = _raw(head, seed=2)
    got = np.asarray(jax.jit(head.predict)(out))[0]
    cells = _cells(out.level_shapes, STRIDES, 0.5)
    ltrb = np.maximum(np.asarray(out.preds["ltrb"])[0], 0) * cells[:, 2:]
    np.testing.assert_allclose(got[0], cells[:, 0] + (ltrb[:, 2] - ltrb[:, 0]) / 2, atol=1e-4)
    np.testing.assert_allclose(got[3], ltrb[:, 1] + ltrb[:, 3], atol=1e-4)
    probs = (_sigmoid(np.asarray(out.preds["scores"])[0])
             * _sigmoid(np.asarray(out.preds["centerness"])[0]))
    np.testing.assert_allclose(got[4:], probs.T, rtol=1e-5)
    assert fcos_regress_ranges((8, 16, 32)) == ((-1.0, 64.0), (64.0, 128.0), (128.0, math.inf))


def test_initial_class_bias_priors():
    for cls in (RetinaHead, ATSSHead, FCOSHead):
        head = cls(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
        for branch in head.cls_branches:
            np.testing.assert_allclose(branch.layers[-1].bias[...], -math.log(99), rtol=1e-6)


@pytest.mark.parametrize("head", ["retina", "atss", "fcos"])
@pytest.mark.parametrize("p2", [False, True])
def test_detector_with_each_head_shapes(head, p2):
    model = nnx.eval_shape(lambda: create_model("yolov8n", num_classes=NC, head=head, p2=p2,
                                                rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(lambda m: m(jnp.zeros((2, SIZE, SIZE, 3))), model)
    strides = (4, 8, 16, 32) if p2 else (8, 16, 32)
    per_loc = 9 if head == "retina" else 1
    a = sum((SIZE // s) ** 2 for s in strides) * per_loc
    assert out.strides == strides and out.preds["scores"].shape == (2, a, NC)
    preds = nnx.eval_shape(lambda m, o: m.predict(o), model, out)
    assert preds.shape == (2, 4 + NC, a)


def test_loss_rejects_bad_batch():
    head = DFLHead(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = nnx.jit(lambda m, f: m(f))(head, _feats(1))
    with pytest.raises(ValueError, match="gt_mask"):
        head.loss(out, {"boxes": jnp.zeros((1, 2, 4)), "labels": jnp.zeros((1, 2))})
    with pytest.raises(ValueError, match=r"\[B, M, 4\]"):
        head.loss(out, {"boxes": jnp.zeros((1, 2, 5)), "labels": jnp.zeros((1, 2)),
                        "gt_mask": jnp.ones((1, 2), bool)})


def test_synchronised_bn_over_mapped_axis_equals_full_batch():
    from detjax.models import C2f, set_bn_axis_name

    block = C2f(8, 8, 1, shortcut=True, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 8)) * jnp.arange(1.0, 5.0)[:, None, None,
                                                                                  None]

    def run(graphdef, state, x):
        m = nnx.merge(graphdef, state)
        return m(x), nnx.state(m, nnx.BatchStat)

    graphdef, state = nnx.split(block)
    full, full_stats = jax.jit(lambda s, x: run(graphdef, s, x))(state, x)
    set_bn_axis_name(block, "devices")
    graphdef_sync, state = nnx.split(block)
    sharded = jax.jit(jax.vmap(lambda s, x: run(graphdef_sync, s, x), in_axes=(None, 0),
                               axis_name="devices"))
    ys, stats = sharded(state, x.reshape(2, 2, 8, 8, 8))
    np.testing.assert_allclose(ys.reshape(full.shape), full, rtol=2e-5, atol=2e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a[0], b, rtol=1e-5, atol=1e-6),
                 stats, full_stats)
    set_bn_axis_name(block, None)
    graphdef_local, state = nnx.split(block)
    local = jax.jit(jax.vmap(lambda s, x: run(graphdef_local, s, x)[0], in_axes=(None, 0)))(
        state, x.reshape(2, 2, 8, 8, 8))
    assert not np.allclose(local.reshape(full.shape), full, atol=1e-3)  # per-shard BN differs
    model = nnx.eval_shape(lambda: create_model("yolov8n", num_classes=NC, bn_axis_name="d",
                                                rngs=nnx.Rngs(0)))
    axes = {m.axis_name for _, m in nnx.iter_graph(model) if isinstance(m, nnx.BatchNorm)}
    assert axes == {"d"}


def test_bfloat16_compute_close_to_float32():
    feats = _feats(1)

    def predict(dtype):
        head = DFLHead(CHANNELS, NC, STRIDES, dtype=dtype, rngs=nnx.Rngs(0))
        head.eval()
        graphdef, state = nnx.split(head)
        return jax.jit(lambda s, f: nnx.merge(graphdef, s).predict(nnx.merge(graphdef, s)(f)))(
            state, [f.astype(dtype) for f in feats])

    ref, low = predict(jnp.float32), predict(jnp.bfloat16)
    assert low.dtype == jnp.float32 and bool(jnp.isfinite(low).all())
    np.testing.assert_allclose(low[:, 4:], ref[:, 4:], atol=0.02)
    np.testing.assert_allclose(low[:, :4], ref[:, :4], rtol=0.05, atol=1.0)


def test_dfl_predict_feeds_non_max_suppression():
    from detjax import non_max_suppression

    head = DFLHead(CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = nnx.eval_shape(lambda m, f: m(f), head, _feats(1))
    a = out.preds["scores"].shape[1]
    k = 3 * 8 + 3  # P3 cell (x=3, y=3): anchor point (28, 28) px
    bins = np.full((a, 4, 16), -50.0, np.float32)
    bins[:, :, 0] = 50.0  # zero-size boxes elsewhere
    bins[k] = -50.0
    for side, dist in enumerate((2, 1, 2, 1)):  # ltrb in stride-8 units
        bins[k, side, dist] = 50.0
    scores = np.full((a, NC), -10.0, np.float32)
    scores[k, 2] = 5.0
    out = out.replace(preds={"boxes": jnp.asarray(bins.reshape(1, a, 64)),
                             "scores": jnp.asarray(scores[None])})
    dets = jax.jit(lambda o: non_max_suppression(head.predict(o), max_det=5))(out)
    assert int(dets.count[0]) == 1
    np.testing.assert_allclose(dets.detections[0, 0], [12, 20, 44, 36, 1 / (1 + math.exp(-5)), 2],
                               rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------- fitted anchors

FITTED = [[[10.0, 13.0], [16.0, 30.0], [33.0, 23.0]],  # YOLOv5's P3-P5 anchors, a list per level
          [[30.0, 61.0], [62.0, 45.0], [59.0, 119.0]],
          [[116.0, 90.0], [156.0, 198.0], [373.0, 326.0]]]


def _anchor_oracle(level_shapes, sizes):
    """xyxy anchors from the definition: per level, per cell (row-major), per (w, h) pair,
    centred on the cell corner (col, row) * stride."""
    rows = []
    for (h, w), stride, level in zip(level_shapes, STRIDES, sizes):
        for row in range(h):
            for col in range(w):
                for aw, ah in level:
                    cx, cy = col * stride, row * stride
                    rows.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return np.array(rows, np.float32)


def test_retina_head_uses_exactly_the_given_anchors():
    head = RetinaHead(CHANNELS, NC, STRIDES, anchors=FITTED, rngs=nnx.Rngs(0))
    out = _raw(head)
    anchors = np.asarray(head.anchors(out.level_shapes))
    np.testing.assert_array_equal(anchors, _anchor_oracle(out.level_shapes, FITTED))
    wh = anchors[:, 2:] - anchors[:, :2]
    start = 0
    for (h, w), level in zip(out.level_shapes, FITTED):  # every cell: exactly these sizes
        n = h * w * len(level)
        np.testing.assert_array_equal(wh[start:start + n].reshape(h * w, -1, 2),
                                      np.broadcast_to(np.array(level, np.float32),
                                                      (h * w, len(level), 2)))
        start += n
    assert out.preds["scores"].shape[1] == len(anchors) and head.num_anchors == 3
    # zero deltas decode to the anchors themselves
    zero = out.replace(preds={**out.preds, "deltas": jnp.zeros_like(out.preds["deltas"])})
    pred = np.asarray(head.predict(zero))[0]
    np.testing.assert_allclose(pred[2:4].T, wh, rtol=1e-6)
    one_image = {k: v[:1] for k, v in _batch().items()}
    assert np.isfinite(float(head.loss(out, one_image)[0]))


def test_atss_head_uses_exactly_the_given_anchor_per_level():
    sizes = [[[12.0, 20.0]], [[40.0, 28.0]], [[90.0, 150.0]]]
    head = ATSSHead(CHANNELS, NC, STRIDES, anchors=sizes, rngs=nnx.Rngs(0))
    out = _raw(head)
    anchors, strides = head.anchors(out.level_shapes)
    np.testing.assert_array_equal(np.asarray(anchors), _anchor_oracle(out.level_shapes, sizes))
    assert anchors.shape[0] == strides.shape[0] == out.preds["scores"].shape[1]
    one_image = {k: v[:1] for k, v in _batch().items()}
    assert np.isfinite(float(head.loss(out, one_image)[0]))
    with pytest.raises(ValueError, match="1 anchor"):
        ATSSHead(CHANNELS, NC, STRIDES, anchors=FITTED, rngs=nnx.Rngs(0))


def test_detector_takes_anchors_from_head_kwargs():
    model = create_model("yolov8n", num_classes=NC, head="retina",
                         head_kwargs={"anchors": FITTED}, rngs=nnx.Rngs(0))
    pred = nnx.eval_shape(lambda m, x: m.predict(m(x)), model, jnp.zeros((1, 64, 64, 3)))
    assert pred.shape == (1, 4 + NC, (8 * 8 + 4 * 4 + 2 * 2) * 3)  # shapes only: no compile
    assert model.head.anchor_sizes == tuple(tuple(map(tuple, level)) for level in FITTED)


@pytest.mark.parametrize("anchors,match", [
    (FITTED[:2], "3 levels"),
    ([FITTED[0], FITTED[1][:2], FITTED[2]], "same number"),
    ([[[10.0, -1.0]]] * 3, "positive"),
    ([[10.0, 13.0]] * 3, "list per level"),
])
def test_bad_anchors_are_rejected(anchors, match):
    with pytest.raises(ValueError, match=match):
        RetinaHead(CHANNELS, NC, STRIDES, anchors=anchors, rngs=nnx.Rngs(0))


def test_anchors_cli_output_feeds_the_head(tmp_path, capsys):
    from detjax.anchors import main as anchors_main
    from detjax.config import load_config

    rng = np.random.default_rng(0)
    wh = np.exp(rng.normal(np.log(40), 0.6, (300, 2))).astype(np.float32)
    np.save(tmp_path / "wh.npy", wh)
    saved = tmp_path / "anchors.yaml"
    assert anchors_main([str(tmp_path / "wh.npy"), "-n", "6", "--levels", "3",
                         "--generations", "30", "--save", str(saved)]) == 0
    out = capsys.readouterr().out
    cfg = load_config(saved)
    anchors = cfg.model.head_kwargs.to_dict()["anchors"]
    assert f"model.head_kwargs.anchors: {anchors}" in out
    assert [len(level) for level in anchors] == [2, 2, 2]
    areas = [w * h for level in anchors for w, h in level]
    assert areas == sorted(areas)
    head = RetinaHead(CHANNELS, NC, STRIDES, anchors=anchors, rngs=nnx.Rngs(0))
    boxes = np.asarray(head.anchors(((8, 8), (4, 4), (2, 2))))
    np.testing.assert_array_equal(boxes, _anchor_oracle(((8, 8), (4, 4), (2, 2)), anchors))
    assert anchors_main([str(tmp_path / "wh.npy"), "-n", "4", "--generations", "5",
                         "--save", str(tmp_path / "x.yaml")]) == 2


@pytest.mark.parametrize("name", HEADS)
def test_loss_defaults_are_what_the_loss_uses(name):
    from detjax.models import loss_defaults

    defaults = loss_defaults(name)
    head = HEAD_CLASSES[name](CHANNELS, NC, STRIDES, rngs=nnx.Rngs(0))
    out = head(_feats())
    loss, parts = head.loss(out, _batch())
    explicit, explicit_parts = head.loss(out, _batch(), **defaults)  # every key is accepted
    assert float(explicit) == float(loss)
    assert {k: float(v) for k, v in explicit_parts.items()} == {k: float(v)
                                                                 for k, v in parts.items()}
    if name == "dfl":
        assert {k: defaults[k] for k in ("box_gain", "cls_gain", "dfl_gain")} == {
            "box_gain": 7.5, "cls_gain": 0.5, "dfl_gain": 1.5}
    assert "reg_max" not in defaults and "box_coder_stds" not in defaults  # the head sets them
    with pytest.raises(ValueError, match="head must be one of"):
        loss_defaults("yolo")
