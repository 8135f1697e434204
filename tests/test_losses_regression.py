"""Regression and distribution losses: oracles, torchvision/ultralytics parity, grads, bf16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from detjax.losses import (
    complete_box_iou_loss,
    dfl_bins,
    distance_box_iou_loss,
    distribution_focal_loss,
    generalized_box_iou_loss,
    iou_loss,
    l1_loss,
    smooth_l1_loss,
)

RNG = np.random.default_rng(1)


def random_boxes(n, rng=RNG, degenerate=True):
    xy = rng.uniform(0, 50, (n, 2))
    wh = rng.uniform(0.5, 30, (n, 2))
    boxes = np.concatenate([xy, xy + wh], 1)
    if degenerate:  # zero width, zero size, inverted, all-zero padding
        boxes[0, 2] = boxes[0, 0]
        boxes[1, 2:] = boxes[1, :2]
        boxes[2] = [10, 10, 5, 5]
        boxes[3] = 0
    return boxes.astype(np.float32)


PRED, TARGET = random_boxes(24), random_boxes(24)
TARGET[5] = PRED[5]  # identical pair
TARGET[3] = 0  # both all-zero


# ---------------------------------------------------------------- oracles
def np_iou_terms(b1, b2, eps):
    """Per pair (iou, giou, diou, ciou) in torchvision-loss form, written from the papers."""
    x1, y1, x2, y2 = b1
    u1, v1, u2, v2 = b2
    iw = max(min(x2, u2) - max(x1, u1), 0)
    ih = max(min(y2, v2) - max(y1, v1), 0)
    inter = iw * ih
    union = (x2 - x1) * (y2 - y1) + (u2 - u1) * (v2 - v1) - inter
    iou = inter / (union + eps)
    cw, ch = max(max(x2, u2) - min(x1, u1), 0), max(max(y2, v2) - min(y1, v1), 0)
    giou = iou - (cw * ch - union) / (cw * ch + eps)
    rho2 = ((x1 + x2 - u1 - u2) ** 2 + (y1 + y2 - v1 - v2) ** 2) / 4
    diou = iou - rho2 / (cw**2 + ch**2 + eps)
    v = 4 / math.pi**2 * (math.atan((u2 - u1) / (v2 - v1)) - math.atan((x2 - x1) / (y2 - y1))) ** 2
    ciou = diou - v / (1 - iou + v + eps) * v
    return iou, giou, diou, ciou


def test_l1_and_smooth_l1_match_formula():
    p = RNG.normal(size=(7, 4)).astype(np.float32) * 3
    t = RNG.normal(size=(7, 4)).astype(np.float32)
    d = np.abs(p - t)
    np.testing.assert_allclose(jax.jit(l1_loss)(p, t), d, rtol=1e-6)
    for beta in (1.0, 1 / 9, 0.0, 2.5):
        want = np.where(d < beta, 0.5 * d**2 / max(beta, 1e-30), d - 0.5 * beta)
        got = jax.jit(lambda a, b, beta=beta: smooth_l1_loss(a, b, beta=beta))(p, t)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_iou_losses_match_oracle_on_regular_boxes():
    p, t = random_boxes(16, degenerate=False), random_boxes(16, degenerate=False)
    want = np.array([np_iou_terms(a.astype(np.float64), b.astype(np.float64), 1e-7)
                     for a, b in zip(p, t)])
    fns = (iou_loss, generalized_box_iou_loss, distance_box_iou_loss, complete_box_iou_loss)
    for k, fn in enumerate(fns):
        np.testing.assert_allclose(jax.jit(fn)(p, t), 1 - want[:, k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- peers
@pytest.mark.peers
def test_iou_losses_equal_torchvision_including_degenerate():
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    tp, tt = torch.tensor(PRED), torch.tensor(TARGET)
    pairs = [(iou_loss, None), (generalized_box_iou_loss, tv_ops.generalized_box_iou_loss),
             (distance_box_iou_loss, tv_ops.distance_box_iou_loss),
             (complete_box_iou_loss, tv_ops.complete_box_iou_loss)]
    for ours, theirs in pairs:
        got = np.asarray(jax.jit(ours)(PRED, TARGET))
        assert np.all(np.isfinite(got))
        if theirs is None:
            continue
        want = theirs(tp, tt, reduction="none", eps=1e-7).numpy()
        ok = np.isfinite(want)  # torchvision gives NaN on some degenerate pairs; we give finite
        np.testing.assert_allclose(got[ok], want[ok], rtol=1e-5, atol=1e-5)
        assert ok[4:].all()


@pytest.mark.peers
def test_smooth_l1_equals_torch():
    torch = pytest.importorskip("torch")
    p = RNG.normal(size=(50,)).astype(np.float32) * 2
    t = RNG.normal(size=(50,)).astype(np.float32)
    for beta in (1.0, 1 / 9, 0.0):
        want = torch.nn.functional.smooth_l1_loss(torch.tensor(p), torch.tensor(t),
                                                  reduction="none", beta=beta).numpy()
        got = jax.jit(lambda a, b, beta=beta: smooth_l1_loss(a, b, beta=beta))(p, t)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.peers
def test_ultralytics_ciou_variant():
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    p, t = PRED[4:], TARGET[4:]
    want = 1 - metrics.bbox_iou(torch.tensor(p), torch.tensor(t), xywh=False,
                                CIoU=True).squeeze(-1).numpy()
    got = jax.jit(lambda a, b: complete_box_iou_loss(a, b, convention="ultralytics"))(p, t)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # Sub-pixel boxes, where the eps placement (heights, union) matters most.
    tiny_p, tiny_t = np.array([0, 0, 1e-3, 2e-3], np.float32), np.array([0, 0, 2e-3, 1e-3],
                                                                         np.float32)
    ultra = metrics.bbox_iou(torch.tensor(tiny_p), torch.tensor(tiny_t), xywh=False, CIoU=True)
    got = complete_box_iou_loss(tiny_p, tiny_t, convention="ultralytics")
    np.testing.assert_allclose(got, 1 - float(ultra), rtol=1e-4)


# ---------------------------------------------------------------- grads, extremes, bf16
IOU_LOSSES = {"iou": iou_loss, "giou": generalized_box_iou_loss, "diou": distance_box_iou_loss,
              "ciou": complete_box_iou_loss,
              "ciou_ultra": lambda a, b: complete_box_iou_loss(a, b, convention="ultralytics")}


@pytest.mark.parametrize("name", sorted(IOU_LOSSES))
def test_iou_losses_finite_grads_on_degenerate_boxes(name):
    fn = IOU_LOSSES[name]
    val, grad = jax.jit(jax.value_and_grad(lambda p: fn(p, TARGET).sum()))(PRED)
    assert np.isfinite(val) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(fn(PRED[5], TARGET[5]), 0.0, atol=1e-5)  # identical boxes


def test_check_grads_on_smooth_losses():
    p = jnp.asarray(random_boxes(4, degenerate=False))
    t = jnp.asarray(random_boxes(4, degenerate=False))
    for fn in (generalized_box_iou_loss, distance_box_iou_loss, iou_loss,
               lambda a, b: smooth_l1_loss(a, b, beta=100.0)):  # quadratic branch: smooth
        check_grads(jax.jit(lambda a, fn=fn: fn(a, t).sum()), (p,), order=1, modes=("rev",),
                    atol=5e-2, rtol=5e-2)


def test_bf16_boxes_within_tolerance():
    p, t = random_boxes(10, degenerate=False), random_boxes(10, degenerate=False)
    for fn in IOU_LOSSES.values():
        got = jax.jit(fn)(jnp.asarray(p, jnp.bfloat16), jnp.asarray(t, jnp.bfloat16))
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, fn(p, t), atol=3e-2)


def test_vmap_smooth_l1_over_beta_equals_loop():
    p, t = RNG.normal(size=(9,)).astype(np.float32), np.zeros(9, np.float32)
    betas = jnp.array([0.0, 1 / 9, 0.5, 1.0, 3.0])
    got = jax.jit(jax.vmap(lambda b: smooth_l1_loss(p, t, beta=b).sum()))(betas)
    want = [float(smooth_l1_loss(p, t, beta=float(b)).sum()) for b in betas]
    np.testing.assert_allclose(got, want, rtol=1e-6)


# ---------------------------------------------------------------- distribution focal loss
def np_dfl(logits, target, n_bins):
    """Two-bin cross entropy, written with an explicit floor and gather."""
    logp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
    t = min(max(target, 0.0), n_bins - 1 - 0.01)
    left = int(math.floor(t))
    return -((left + 1 - t) * logp[left] + (t - left) * logp[left + 1])


@pytest.mark.parametrize("convention,reg_max", [("ultralytics", 16), ("mmdet", 16),
                                                ("ultralytics", 8), ("mmdet", 7)])
def test_dfl_matches_oracle_in_both_conventions(convention, reg_max):
    n_bins = dfl_bins(reg_max, convention)
    logits = RNG.normal(size=(12, n_bins)).astype(np.float32) * 2
    target = RNG.uniform(-1, n_bins + 1, 12).astype(np.float32)  # includes clamped values
    target[:3] = [0.0, n_bins - 1.0, 3.0]  # bin edges and an exact integer
    fn = jax.jit(lambda a, b: distribution_focal_loss(a, b, reg_max=reg_max, convention=convention))
    want = [np_dfl(logits[i].astype(np.float64), float(target[i]), n_bins) for i in range(12)]
    np.testing.assert_allclose(fn(logits, target), want, rtol=1e-5, atol=1e-6)


def test_dfl_bins_and_errors():
    assert dfl_bins(16) == 16 and dfl_bins(16, "mmdet") == 17
    with pytest.raises(ValueError, match="needs 17"):
        distribution_focal_loss(jnp.zeros((4, 16)), jnp.zeros(4), reg_max=16, convention="mmdet")
    with pytest.raises(ValueError, match="convention"):
        dfl_bins(16, "gfl")
    with pytest.raises(ValueError, match="broadcast"):
        distribution_focal_loss(jnp.zeros((4, 16)), jnp.zeros(3))


@pytest.mark.peers
def test_dfl_equals_ultralytics_dfloss():
    torch = pytest.importorskip("torch")
    loss_mod = pytest.importorskip("ultralytics.utils.loss")
    logits = RNG.normal(size=(10 * 4, 16)).astype(np.float32) * 2
    target = RNG.uniform(0, 17, (10, 4)).astype(np.float32)
    want = loss_mod.DFLoss(16)(torch.tensor(logits), torch.tensor(target)).numpy()[:, 0]
    got = jax.jit(distribution_focal_loss)(logits.reshape(10, 4, 16), target).mean(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_dfl_grads_finite_and_correct():
    logits = jnp.asarray(RNG.normal(size=(3, 4, 16)), jnp.float32) * 50  # near-saturated
    target = jnp.asarray(RNG.uniform(0, 15, (3, 4)), jnp.float32)
    grad = jax.jit(jax.grad(lambda a: distribution_focal_loss(a, target).sum()))(logits)
    assert np.all(np.isfinite(grad))
    check_grads(jax.jit(lambda a: distribution_focal_loss(a, target[0]).sum()),
                (logits[0] / 50,), order=1, modes=("rev",), atol=5e-2, rtol=5e-2)
    bf = jax.jit(distribution_focal_loss)(logits.astype(jnp.bfloat16) / 50, target)
    np.testing.assert_allclose(bf, distribution_focal_loss(logits / 50, target), rtol=3e-2)


@given(st.floats(-2, 20))
def test_dfl_minimised_by_the_two_bin_distribution(t):
    """The loss is smallest when the softmax puts the linear weights on the two bins."""
    tc = min(max(t, 0.0), 16 - 1.01)
    left = int(math.floor(tc))
    probs = np.full(16, 1e-6)
    probs[left] += left + 1 - tc
    probs[left + 1] += tc - left
    best = _DFL_JIT(jnp.log(jnp.asarray(probs, jnp.float32)), jnp.float32(t))
    other = _DFL_JIT(jnp.zeros(16), jnp.float32(t))
    assert float(best) <= float(other) + 1e-5


_DFL_JIT = jax.jit(distribution_focal_loss)
