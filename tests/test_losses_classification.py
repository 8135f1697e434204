"""Classification losses: NumPy oracles, torchvision/torch parity, vmap sweeps, extremes, bf16."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from jax.test_util import check_grads

from detjax.losses import (
    binary_cross_entropy,
    quality_focal_loss,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    varifocal_loss,
)

RNG = np.random.default_rng(0)
LOGITS = (RNG.normal(size=(6, 5)) * 3).astype(np.float32)
HARD = (RNG.uniform(size=(6, 5)) < 0.3).astype(np.float32)
SOFT = np.where(HARD > 0, RNG.uniform(0.05, 1.0, (6, 5)), 0.0).astype(np.float32)
LABELS = RNG.integers(0, 5, 6).astype(np.int32)


# ---------------------------------------------------------------- NumPy oracles (from papers)
def _sig(x):
    return 1.0 / (1.0 + math.exp(-x))


def np_bce(x, t):
    # -(t log p + (1 - t) log(1 - p)) with log p = -log(1 + e^-x), log(1 - p) = -log(1 + e^x)
    return t * np.logaddexp(0.0, -x) + (1 - t) * np.logaddexp(0.0, x)


def np_focal(x, t, alpha, gamma):
    p = _sig(x)
    pt = p * t + (1 - p) * (1 - t)
    loss = np_bce(x, t) * (1 - pt) ** gamma
    if alpha >= 0:
        loss *= alpha * t + (1 - alpha) * (1 - t)
    return loss


def np_qfl(x, y, beta):
    return np_bce(x, y) * abs(y - _sig(x)) ** beta


def np_vfl(x, q, alpha, gamma, iou_weighted):
    w = (q if iou_weighted else 1.0) if q > 0 else alpha * abs(_sig(x) - q) ** gamma
    return np_bce(x, q) * w


def elementwise(fn, *arrays, **kw):
    out = np.zeros(arrays[0].shape)
    for idx in np.ndindex(arrays[0].shape):
        out[idx] = fn(*(float(a[idx]) for a in arrays), **kw)
    return out


def np_softmax_rows(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- oracles
def test_bce_matches_oracle():
    got = jax.jit(binary_cross_entropy)(LOGITS, SOFT)
    np.testing.assert_allclose(got, elementwise(np_bce, LOGITS, SOFT), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_sigmoid_focal_matches_oracle(alpha, gamma):
    fn = jax.jit(lambda x, t: sigmoid_focal_loss(x, t, alpha=alpha, gamma=gamma))
    for t in (HARD, SOFT):
        want = elementwise(np_focal, LOGITS, t, alpha=alpha, gamma=gamma)
        np.testing.assert_allclose(fn(LOGITS, t), want, rtol=1e-5, atol=1e-7)


def test_softmax_ce_int_soft_and_smoothing():
    fn = jax.jit(softmax_cross_entropy, static_argnames=())
    logp = np.log(np_softmax_rows(LOGITS.astype(np.float64)))
    np.testing.assert_allclose(fn(LOGITS, LABELS), -logp[np.arange(6), LABELS], rtol=1e-5)
    soft = np_softmax_rows(RNG.normal(size=(6, 5)))
    np.testing.assert_allclose(fn(LOGITS, soft.astype(np.float32)), -(soft * logp).sum(-1),
                               rtol=1e-5)
    smooth = jax.jit(lambda x, y: softmax_cross_entropy(x, y, label_smoothing=0.1))(LOGITS, LABELS)
    onehot = np.eye(5)[LABELS] * 0.9 + 0.1 / 5
    np.testing.assert_allclose(smooth, -(onehot * logp).sum(-1), rtol=1e-5)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 0.0), (1.0, 1.0)])
def test_softmax_focal_matches_oracle(alpha, gamma):
    p = np_softmax_rows(LOGITS.astype(np.float64))
    py = p[np.arange(6), LABELS]
    want = -(1 - py) ** gamma * np.log(py) * (alpha if alpha >= 0 else 1.0)
    got = jax.jit(lambda x, y: softmax_focal_loss(x, y, alpha=alpha, gamma=gamma))(LOGITS, LABELS)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # gamma = 0 and no alpha is plain cross entropy
    ce = jax.jit(lambda x, y: softmax_focal_loss(x, y, alpha=-1.0, gamma=0.0))(LOGITS, LABELS)
    np.testing.assert_allclose(ce, softmax_cross_entropy(LOGITS, LABELS), rtol=1e-6)


@pytest.mark.parametrize("beta", [2.0, 1.0, 0.5])
def test_quality_focal_matches_oracle(beta):
    got = jax.jit(lambda x, y: quality_focal_loss(x, y, beta=beta))(LOGITS, SOFT)
    np.testing.assert_allclose(got, elementwise(np_qfl, LOGITS, SOFT, beta=beta),
                               rtol=1e-5, atol=1e-7)


def test_quality_focal_equals_mmdet_label_score_form():
    """mmdet's (label, score) QFL summed over classes == ours on one_hot(label) * score."""
    score = RNG.uniform(0.1, 1.0, 6).astype(np.float32)
    labels = LABELS.copy()
    labels[:2] = 5  # background (bg_class_ind = C) -> all-zero target row
    soft = np.eye(6, dtype=np.float32)[labels][:, :5] * score[:, None]
    got = jax.jit(quality_focal_loss)(LOGITS, soft).sum(-1)
    want = np.zeros(6)
    for n in range(6):  # mmdet: negatives supervised by 0, the positive class by its score
        for c in range(5):
            y = score[n] if (labels[n] < 5 and c == labels[n]) else 0.0
            want[n] += np_qfl(float(LOGITS[n, c]), float(y), beta=2.0)
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("iou_weighted", [True, False])
@pytest.mark.parametrize("alpha,gamma", [(0.75, 2.0), (0.5, 1.0)])
def test_varifocal_matches_oracle(iou_weighted, alpha, gamma):
    fn = jax.jit(lambda x, q: varifocal_loss(x, q, alpha=alpha, gamma=gamma,
                                             iou_weighted=iou_weighted))
    want = elementwise(np_vfl, LOGITS, SOFT, alpha=alpha, gamma=gamma, iou_weighted=iou_weighted)
    np.testing.assert_allclose(fn(LOGITS, SOFT), want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------- peers
@pytest.mark.peers
@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.6, 0.5), (0.0, 3.0)])
def test_sigmoid_focal_equals_torchvision(alpha, gamma):
    torch = pytest.importorskip("torch")
    tv_ops = pytest.importorskip("torchvision.ops")
    x = (RNG.normal(size=(40, 7)) * 4).astype(np.float32)
    for t in ((RNG.uniform(size=x.shape) < 0.4).astype(np.float32),
              RNG.uniform(size=x.shape).astype(np.float32)):
        want = tv_ops.sigmoid_focal_loss(torch.tensor(x), torch.tensor(t), alpha=alpha,
                                         gamma=gamma).numpy()
        got = jax.jit(lambda a, b: sigmoid_focal_loss(a, b, alpha=alpha, gamma=gamma))(x, t)
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)


@pytest.mark.peers
def test_bce_and_ce_equal_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = (RNG.normal(size=(30, 6)) * 5).astype(np.float32)
    t = RNG.uniform(size=x.shape).astype(np.float32)
    want = F.binary_cross_entropy_with_logits(torch.tensor(x), torch.tensor(t), reduction="none")
    np.testing.assert_allclose(jax.jit(binary_cross_entropy)(x, t), want.numpy(), rtol=1e-5,
                               atol=1e-6)
    y = RNG.integers(0, 6, 30)
    want = F.cross_entropy(torch.tensor(x), torch.tensor(y), reduction="none",
                           label_smoothing=0.2).numpy()
    got = jax.jit(lambda a, b: softmax_cross_entropy(a, b, label_smoothing=0.2))(x, y)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- vmap sweeps
def test_vmap_focal_over_alpha_gamma_grid_equals_loop():
    alphas, gammas = np.meshgrid(np.array([-1.0, 0.25, 0.5]), np.array([0.0, 1.0, 2.0, 3.0]))
    alphas, gammas = alphas.ravel().astype(np.float32), gammas.ravel().astype(np.float32)

    @jax.jit
    def sweep(a, g):  # one compiled call for the whole grid
        return jax.vmap(lambda ai, gi: sigmoid_focal_loss(LOGITS, HARD, alpha=ai, gamma=gi).sum())(
            a, g)

    got = sweep(alphas, gammas)
    want = [float(sigmoid_focal_loss(LOGITS, HARD, alpha=float(a), gamma=float(g)).sum())
            for a, g in zip(alphas, gammas)]
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_vmap_qfl_and_vfl_over_hyperparameters():
    betas = jnp.array([0.5, 1.0, 2.0, 4.0])
    got = jax.jit(jax.vmap(lambda b: quality_focal_loss(LOGITS, SOFT, beta=b).sum()))(betas)
    want = [float(quality_focal_loss(LOGITS, SOFT, beta=float(b)).sum()) for b in betas]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    grid = jnp.array([[0.75, 2.0], [0.25, 1.0]])
    got = jax.jit(jax.vmap(lambda h: varifocal_loss(LOGITS, SOFT, alpha=h[0], gamma=h[1]).sum()))(
        grid)
    want = [float(varifocal_loss(LOGITS, SOFT, alpha=float(a), gamma=float(g)).sum())
            for a, g in grid]
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- extremes, grads, bf16
EXTREME_X = np.array([-100.0, -30.0, 0.0, 30.0, 100.0] * 2, np.float32)
EXTREME_T = np.array([0.0] * 5 + [1.0] * 5, np.float32)

ELEMENTWISE = {
    "bce": lambda x, t: binary_cross_entropy(x, t),
    "focal": lambda x, t: sigmoid_focal_loss(x, t),
    "focal_gamma0": lambda x, t: sigmoid_focal_loss(x, t, gamma=0.0),
    "focal_gamma_half": lambda x, t: sigmoid_focal_loss(x, t, gamma=0.5),
    "qfl": lambda x, t: quality_focal_loss(x, t),
    "qfl_beta_half": lambda x, t: quality_focal_loss(x, t, beta=0.5),
    "vfl": lambda x, t: varifocal_loss(x, t),
}


@pytest.mark.parametrize("name", sorted(ELEMENTWISE))
def test_finite_values_and_grads_at_extremes(name):
    fn = ELEMENTWISE[name]
    val, grad = jax.jit(jax.value_and_grad(lambda x: fn(x, EXTREME_T).sum()))(EXTREME_X)
    assert np.isfinite(val) and np.all(np.isfinite(grad)), (val, grad)
    # a saturated correct prediction costs (almost) nothing
    per = jax.jit(fn)(EXTREME_X, EXTREME_T)
    assert float(per[0]) < 1e-12 and float(per[-1]) < 1e-12


def test_softmax_losses_finite_at_extremes():
    x = jnp.array([[100.0, -100.0, 0.0], [-100.0, -100.0, 100.0]])
    y = jnp.array([1, 2])
    for fn in (softmax_cross_entropy, lambda a, b: softmax_focal_loss(a, b, gamma=0.5)):
        val, grad = jax.jit(jax.value_and_grad(lambda a, f=fn: f(a, y).sum()))(x)
        assert np.isfinite(val) and np.all(np.isfinite(grad))


def test_check_grads_on_smooth_losses():
    x = jnp.asarray(LOGITS[:3] * 0.5, jnp.float64 if jax.config.x64_enabled else jnp.float32)
    t, y = jnp.asarray(SOFT[:3]), jnp.asarray(LABELS[:3])
    for fn in (lambda a: binary_cross_entropy(a, t), lambda a: sigmoid_focal_loss(a, t),
               lambda a: softmax_cross_entropy(a, y), lambda a: softmax_focal_loss(a, y),
               lambda a: varifocal_loss(a, t)):
        check_grads(jax.jit(fn), (x,), order=1, modes=("rev",), atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("name", ["bce", "focal", "qfl", "vfl"])
def test_bf16_inputs_within_tolerance(name):
    fn = jax.jit(ELEMENTWISE[name])
    x16, t16 = jnp.asarray(LOGITS, jnp.bfloat16), jnp.asarray(SOFT, jnp.bfloat16)
    got = fn(x16, t16)
    assert got.dtype == jnp.float32
    want = fn(x16.astype(jnp.float32), t16.astype(jnp.float32))  # same rounded inputs
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(got, fn(LOGITS, SOFT), rtol=0.1, atol=0.02)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="same shape"):
        sigmoid_focal_loss(jnp.zeros((2, 3)), jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"matching logits \(2, 5\)"):
        softmax_cross_entropy(jnp.zeros((2, 5)), jnp.zeros((2, 4)))


@given(st.floats(-50, 50), st.floats(0, 1), st.floats(0, 1), st.floats(0, 4))
def test_focal_jit_equals_eager_and_oracle(x, t, alpha, gamma):
    jitted = _FOCAL_JIT(np.float32(x), np.float32(t), np.float32(alpha), np.float32(gamma))
    # the same float32 alpha on both sides: near alpha = 1, (1 - alpha) cancels, and a float64
    # alpha differs from the float32 one by up to 1e-3 relative in the weight (alpha 0.99999)
    eager = sigmoid_focal_loss(np.float32(x), np.float32(t), alpha=np.float32(alpha),
                               gamma=np.float32(gamma))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(jitted, np_focal(float(np.float32(x)), float(np.float32(t)),
                                                float(np.float32(alpha)),
                                                float(np.float32(gamma))), rtol=1e-3, atol=1e-6)


_FOCAL_JIT = jax.jit(lambda x, t, a, g: sigmoid_focal_loss(x, t, alpha=a, gamma=g))


def test_class_weights_from_counts_follow_the_formulas():
    from detjax.losses import class_weights_from_counts

    counts = np.array([1.0, 10.0, 100.0, 1000.0])
    inverse = 1.0 / counts
    np.testing.assert_allclose(class_weights_from_counts(counts), inverse / inverse.mean(),
                               rtol=1e-6)
    for beta in (0.9, 0.999, 0.9999):  # Cui et al. 2019: (1 - beta) / (1 - beta^n)
        effective = (1 - beta) / (1 - np.power(beta, counts))
        got = jax.jit(lambda c, b: class_weights_from_counts(c, method="effective", beta=b))(
            counts, beta)
        np.testing.assert_allclose(got, effective / effective.mean(), rtol=1e-4)
        np.testing.assert_allclose(float(got.mean()), 1.0, rtol=1e-6)
    # beta -> 0 makes every class equal; a class never seen counts as seen once
    np.testing.assert_allclose(class_weights_from_counts(counts, method="effective", beta=1e-6),
                               np.ones(4), rtol=1e-4)
    np.testing.assert_allclose(class_weights_from_counts(np.array([0.0, 1.0])), [1.0, 1.0])
    with pytest.raises(ValueError, match="method"):
        class_weights_from_counts(counts, method="sqrt")
    with pytest.raises(ValueError, match="counts"):
        class_weights_from_counts(np.ones((2, 2)))
