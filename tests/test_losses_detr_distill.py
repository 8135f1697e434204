"""DETR set loss (NumPy + scipy oracle of DETR's SetCriterion) and distillation losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from detjax.losses import (
    detr_set_loss,
    dfl_distillation_loss,
    kd_loss,
    kd_mixed_loss,
    score_distillation_loss,
)

RNG = np.random.default_rng(5)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _xyxy(b):
    return np.concatenate([b[..., :2] - b[..., 2:] / 2, b[..., :2] + b[..., 2:] / 2], -1)


def _giou(p, t):
    lt, rb = np.maximum(p[:2], t[:2]), np.minimum(p[2:], t[2:])
    inter = np.prod(np.clip(rb - lt, 0, None))
    union = np.prod(p[2:] - p[:2]) + np.prod(t[2:] - t[:2]) - inter
    enclose = np.prod(np.maximum(p[2:], t[2:]) - np.minimum(p[:2], t[:2]))
    return inter / union - (enclose - union) / enclose


def detr_oracle(logits, boxes, labels, gt, mask, eos_coef=0.1):
    """DETR HungarianMatcher + SetCriterion written with scipy and loops."""
    scipy_opt = pytest.importorskip("scipy.optimize")
    b, q, c1 = logits.shape
    target = np.full((b, q), c1 - 1)
    l1 = giou = 0.0
    for i in range(b):
        valid = np.flatnonzero(mask[i])
        prob = _softmax(logits[i].astype(np.float64))
        cost = np.zeros((q, len(valid)))
        for n in range(q):
            for k, j in enumerate(valid):
                cost[n, k] = (5 * np.abs(boxes[i, n] - gt[i, j]).sum() - prob[n, labels[i, j]]
                              - 2 * _giou(_xyxy(boxes[i, n]), _xyxy(gt[i, j])))
        rows, cols = scipy_opt.linear_sum_assignment(cost)
        for n, k in zip(rows, cols):
            j = valid[k]
            target[i, n] = labels[i, j]
            l1 += np.abs(boxes[i, n] - gt[i, j]).sum()
            giou += 1 - _giou(_xyxy(boxes[i, n]), _xyxy(gt[i, j]))
    logp = np.log(_softmax(logits.astype(np.float64)))
    ce = -np.take_along_axis(logp, target[..., None], -1)[..., 0]
    w = np.where(target == c1 - 1, eos_coef, 1.0)
    k = max(mask.sum(), 1)
    return {"ce": (ce * w).sum() / w.sum(), "bbox": 5 * l1 / k, "giou": 2 * giou / k}


def detr_case(seed, b=2, q=6, c=4, m=3):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(b, q, c + 1)).astype(np.float32) * 2
    boxes = np.concatenate([rng.uniform(0.2, 0.8, (b, q, 2)), rng.uniform(0.05, 0.4, (b, q, 2))],
                           -1).astype(np.float32)
    gt = np.concatenate([rng.uniform(0.2, 0.8, (b, m, 2)), rng.uniform(0.05, 0.4, (b, m, 2))],
                        -1).astype(np.float32)
    labels = rng.integers(0, c, (b, m)).astype(np.int32)
    mask = np.array([[True, True, False], [True, False, False]])[:b, :m]
    return logits, boxes, labels, gt, mask


def test_detr_matches_scipy_oracle():
    for seed in (0, 1):
        args = detr_case(seed)
        total, items = jax.jit(detr_set_loss)(*args)
        want = detr_oracle(*args)
        for k in ("ce", "bbox", "giou"):
            np.testing.assert_allclose(float(items[k]), want[k], rtol=1e-5, err_msg=k)
        np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-5)


def test_detr_empty_targets_given_matching_and_grads():
    logits, boxes, labels, gt, mask = detr_case(2)
    none = np.zeros_like(mask)
    _, items = jax.jit(detr_set_loss)(logits, boxes, labels, gt, none)
    logp = np.log(_softmax(logits.astype(np.float64)))
    np.testing.assert_allclose(float(items["ce"]), -logp[..., -1].mean(), rtol=1e-5)
    assert float(items["bbox"]) == 0.0 and float(items["giou"]) == 0.0
    # an explicit matching is used as given (padding slots ignored)
    qi = np.array([[4, 0, 3], [2, -1, -1]], np.int32)
    _, given = jax.jit(lambda *a: detr_set_loss(*a[:5], query_index=a[5]))(
        logits, boxes, labels, gt, mask, qi)
    l1 = (np.abs(boxes[0, 4] - gt[0, 0]).sum() + np.abs(boxes[0, 0] - gt[0, 1]).sum()
          + np.abs(boxes[1, 2] - gt[1, 0]).sum())
    np.testing.assert_allclose(float(given["bbox"]), 5 * l1 / 3, rtol=1e-5)
    grads = jax.jit(jax.grad(lambda x, b: detr_set_loss(x, b, labels, gt, mask)[0],
                             argnums=(0, 1)))(logits * 50, boxes)
    assert all(np.all(np.isfinite(g)) for g in grads)


# ---------------------------------------------------------------- distillation
def test_kd_matches_formula_and_torch():
    s = RNG.normal(size=(5, 7)).astype(np.float32) * 3
    t = RNG.normal(size=(5, 7)).astype(np.float32) * 3
    for temp in (1.0, 4.0):
        p, q = _softmax(t / temp), _softmax(s / temp)
        want = (p * (np.log(p) - np.log(q))).sum(-1) * temp**2
        got = jax.jit(lambda a, b, temp=temp: kd_loss(a, b, temperature=temp))(s, t)
        np.testing.assert_allclose(got, want, rtol=1e-4)
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    ref = F.kl_div(F.log_softmax(torch.tensor(s) / 4, -1), F.softmax(torch.tensor(t) / 4, -1),
                   reduction="none").sum(-1) * 16
    np.testing.assert_allclose(kd_loss(s, t), ref.numpy(), rtol=1e-4)
    labels = RNG.integers(0, 7, 5)
    ce = F.cross_entropy(torch.tensor(s), torch.tensor(labels), reduction="none").numpy()
    mixed = jax.jit(lambda a, b, y: kd_mixed_loss(a, b, y, alpha=0.3))(s, t, labels)
    np.testing.assert_allclose(mixed, 0.3 * ref.numpy() + 0.7 * ce, rtol=1e-4)


def test_kd_is_zero_on_agreement_and_teacher_gets_no_gradient():
    x = jnp.asarray(RNG.normal(size=(4, 6)), jnp.float32)
    np.testing.assert_allclose(jax.jit(kd_loss)(x, x), 0.0, atol=1e-6)
    np.testing.assert_allclose(jax.jit(score_distillation_loss)(x, x), 0.0, atol=1e-6)
    g_teacher = jax.jit(jax.grad(lambda t: kd_loss(x * 2, t).sum()))(x)
    assert np.all(g_teacher == 0)


def test_score_distillation_is_binary_kl():
    s = RNG.normal(size=(3, 4)).astype(np.float64) * 2
    t = RNG.normal(size=(3, 4)).astype(np.float64) * 2
    for temp in (1.0, 2.0):
        p, q = 1 / (1 + np.exp(-t / temp)), 1 / (1 + np.exp(-s / temp))
        want = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))) * temp**2
        got = jax.jit(lambda a, b, temp=temp: score_distillation_loss(a, b, temperature=temp))(
            s.astype(np.float32), t.astype(np.float32))
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_dfl_distillation_masks_background_and_averages_sides():
    # Own generator: the module RNG's draws depend on test order (xdist), and float32 KL
    # at T=10 differs jit vs eager by ~1e-5 relative on some draws.
    rng = np.random.default_rng(11)
    s = rng.normal(size=(2, 5, 4, 16)).astype(np.float32)
    t = rng.normal(size=(2, 5, 4, 16)).astype(np.float32)
    fg = rng.uniform(size=(2, 5)) < 0.5
    got = jax.jit(dfl_distillation_loss)(s, t, fg)
    per_side = np.asarray(kd_loss(s, t, temperature=10.0))
    np.testing.assert_allclose(got, np.where(fg, per_side.mean(-1), 0.0), rtol=5e-5)
    with pytest.raises(ValueError, match="fg_mask"):
        dfl_distillation_loss(s, t, fg[:, :4])


def test_distillation_extremes_grads_vmap_and_bf16():
    s = jnp.array([[100.0, -100.0, 0.0]])
    t = jnp.array([[-100.0, 100.0, 0.0]])
    for fn in (lambda a: kd_loss(a, t, temperature=0.5).sum(),
               lambda a: score_distillation_loss(a, t).sum()):
        val, g = jax.jit(jax.value_and_grad(fn))(s)
        assert np.isfinite(val) and np.all(np.isfinite(g))
    x = jnp.asarray(RNG.normal(size=(3, 5)), jnp.float32)
    y = jnp.asarray(RNG.normal(size=(3, 5)), jnp.float32)
    check_grads(jax.jit(lambda a: kd_loss(a, y).sum()), (x,), order=1, modes=("rev",),
                atol=5e-2, rtol=5e-2)
    temps = jnp.array([1.0, 2.0, 4.0, 8.0])
    sweep = jax.jit(jax.vmap(lambda tt: kd_loss(x, y, temperature=tt).sum()))(temps)
    loop = [float(jax.jit(lambda tt: kd_loss(x, y, temperature=tt).sum())(tt)) for tt in temps]
    np.testing.assert_allclose(sweep, loop, rtol=1e-5)
    low = jax.jit(kd_loss)(x.astype(jnp.bfloat16), y.astype(jnp.bfloat16))
    assert low.dtype == jnp.float32
    np.testing.assert_allclose(low, kd_loss(x, y), rtol=0.1, atol=0.05)
