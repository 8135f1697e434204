"""Online hard example mining and per-class weights in the dense-head losses (RetinaNet, GFL,
FCOS): NumPy oracles, a weight of 0 removing a class, jit / vmap over the ratio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detjax.losses.dense import gfl_loss, hard_negative_mask, retinanet_loss

RNG = np.random.default_rng(11)


def _oracle_mask(loss, fg, negatives, ratio):
    """The SSD rule with a plain sort: keep the ratio * #fg negatives of largest loss."""
    cand = [i for i in range(len(loss)) if negatives[i] and not fg[i]]
    cand.sort(key=lambda i: (-loss[i], i))
    k = ratio * fg.sum()
    keep = np.zeros(len(loss), bool)
    for rank, i in enumerate(cand):
        keep[i] = rank < k
    return keep


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ratio", [0.0, 1.0, 3.0, 2.5])
def test_hard_negative_mask_keeps_the_hardest_negatives(seed, ratio):
    rng = np.random.default_rng(seed)
    a = 50
    loss = rng.exponential(size=a).astype(np.float32)
    loss[rng.integers(a, size=5)] = loss[0]  # ties are broken by anchor order
    fg = rng.random(a) < 0.08
    negatives = ~fg & (rng.random(a) < 0.9)
    got = np.asarray(jax.jit(hard_negative_mask)(loss, fg, negatives, neg_pos_ratio=ratio))
    np.testing.assert_array_equal(got, _oracle_mask(loss, fg, negatives, ratio))


def test_hard_negative_mask_with_no_foreground_keeps_nothing():
    loss = jnp.arange(10.0)
    got = hard_negative_mask(loss, jnp.zeros(10, bool), jnp.ones(10, bool))
    assert not got.any()


def _dense_inputs(b=2, a=40, c=3, m=3):
    logits = RNG.normal(size=(b, a, c)).astype(np.float32) * 2
    deltas = RNG.normal(size=(b, a, 4)).astype(np.float32) * 0.3
    xy = RNG.uniform(0, 50, size=(a, 2)).astype(np.float32)
    anchors = np.concatenate([xy, xy + 12], 1)
    boxes = np.concatenate([RNG.uniform(0, 40, (b, m, 2)), RNG.uniform(45, 60, (b, m, 2))], -1)
    labels = RNG.integers(c, size=(b, m)).astype(np.int32)
    matches = RNG.choice([-2, -1, -1, -1, 0, 1, 2], size=(b, a)).astype(np.int32)
    return logits, deltas, anchors, labels, boxes.astype(np.float32), matches


def test_retinanet_ohem_equals_a_numpy_oracle():
    logits, deltas, anchors, labels, boxes, matches = _dense_inputs()
    _, items = jax.jit(lambda *x: retinanet_loss(*x, cls_loss="ohem"))(
        logits, deltas, anchors, labels, boxes, matches)
    want = []
    for i in range(len(logits)):
        fg = matches[i] >= 0
        onehot = np.zeros_like(logits[i])
        onehot[fg, labels[i][matches[i][fg]]] = 1
        x = logits[i].astype(np.float64)
        bce = (np.maximum(x, 0) - x * onehot + np.log1p(np.exp(-np.abs(x)))).sum(-1)
        keep = fg | _oracle_mask(bce, fg, matches[i] == -1, 3.0)
        want.append(bce[keep].sum() / max(fg.sum(), 1))
    np.testing.assert_allclose(float(items["cls"]), np.mean(want), rtol=1e-5)


def test_ohem_ratio_is_jittable_and_vmappable():
    logits, deltas, anchors, labels, boxes, matches = _dense_inputs()
    f = lambda r: retinanet_loss(logits, deltas, anchors, labels, boxes, matches,
                                 cls_loss="ohem", neg_pos_ratio=r)[1]["cls"]
    ratios = jnp.array([0.0, 1.0, 3.0, 100.0])
    got = jax.jit(jax.vmap(f))(ratios)
    np.testing.assert_allclose(got, [float(f(r)) for r in ratios], rtol=1e-6)
    assert np.all(np.diff(np.asarray(got)) >= 0)  # more negatives never lower the loss


def _grad_of_class(loss_fn, logits, c):
    g = jax.grad(lambda x: loss_fn(x)[0])(jnp.asarray(logits))
    return np.asarray(g[..., c])


@pytest.mark.parametrize("cls_loss", ["focal", "ohem"])
def test_retinanet_class_weight_zero_removes_the_class(cls_loss):
    logits, deltas, anchors, labels, boxes, matches = _dense_inputs()
    w = np.array([1.0, 0.0, 1.0], np.float32)
    f = lambda x, cw=w: retinanet_loss(x, deltas, anchors, labels, boxes, matches,
                                       cls_loss=cls_loss, class_weights=cw)
    assert np.all(_grad_of_class(f, logits, 1) == 0)
    assert np.any(_grad_of_class(f, logits, 0) != 0)
    # changing class 1's logits changes nothing; weight 1 everywhere equals no weights
    moved = logits.copy()
    moved[..., 1] += 3.0
    if cls_loss == "focal":  # (OHEM's choice of negatives depends on every class's loss)
        np.testing.assert_allclose(float(f(moved)[1]["cls"]), float(f(logits)[1]["cls"]),
                                   rtol=1e-6)
    np.testing.assert_allclose(float(f(logits, np.ones(3, np.float32))[0]),
                               float(f(logits, None)[0]), rtol=1e-6)


def test_gfl_class_weight_zero_removes_the_class():
    logits, _, anchors, labels, boxes, matches = _dense_inputs()
    dist = RNG.normal(size=logits.shape[:2] + (4 * 17,)).astype(np.float32)
    strides = np.full(anchors.shape[0], 8.0, np.float32)
    w = np.array([0.0, 1.0, 1.0], np.float32)
    f = lambda x: gfl_loss(x, dist, anchors, strides, labels, boxes, matches, class_weights=w)
    g = jax.grad(lambda x: f(x)[1]["cls"])(jnp.asarray(logits))
    assert np.all(np.asarray(g[..., 0]) == 0) and np.any(np.asarray(g[..., 2]) != 0)


def test_class_weights_of_the_wrong_length_are_an_error():
    logits, deltas, anchors, labels, boxes, matches = _dense_inputs()
    with pytest.raises(ValueError, match=r"class_weights must be \[C\] = \[3\]"):
        retinanet_loss(logits, deltas, anchors, labels, boxes, matches,
                       class_weights=np.ones(4))
    with pytest.raises(ValueError, match="cls_loss must be"):
        retinanet_loss(logits, deltas, anchors, labels, boxes, matches, cls_loss="ssd")


@pytest.mark.slow
def test_heads_pass_ohem_and_class_weights_through_their_loss():
    from detjax.models import create_model

    batch = {"boxes": jnp.array([[[4.0, 4.0, 40.0, 40.0]]]), "labels": jnp.array([[1]]),
             "gt_mask": jnp.array([[True]])}
    images = jnp.asarray(RNG.uniform(size=(1, 64, 64, 3)), jnp.float32)
    for head, kw in [("retina", {"cls_loss": "ohem", "neg_pos_ratio": 3.0}),
                     ("fcos", {}), ("atss", {})]:
        model = create_model("yolov8n", num_classes=2, head=head, rngs=nnx.Rngs(0))
        out = model(images)
        w0 = np.array([1.0, 0.0], np.float32)

        def cls_of(scores, w=w0, out=out, model=model, kw=kw):
            preds = {**out.preds, "scores": scores}
            return model.loss(out.replace(preds=preds) if hasattr(out, "replace")
                              else type(out)(preds, out.level_shapes, out.strides),
                              batch, class_weights=w, **kw)[1]["cls"]

        g = jax.grad(cls_of)(out.preds["scores"])
        assert np.all(np.asarray(g[..., 1]) == 0), head
        assert np.isfinite(float(cls_of(out.preds["scores"]))), head
