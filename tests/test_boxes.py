"""Tests for detjax.boxes: NumPy oracles from the definitions, torchvision/ultralytics parity,
jit/vmap/grad properties, degenerate inputs and half precision."""

import math

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings

import detjax
from detjax import boxes as B

# ---------------------------------------------------------------------------------------
# Oracles: one pair at a time, straight from the papers' definitions (float64).
# ---------------------------------------------------------------------------------------


def _pair_terms(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    cw = max(a[2], b[2]) - min(a[0], b[0])
    ch = max(a[3], b[3]) - min(a[1], b[1])
    return inter, union, cw, ch


def oracle(kind, a, b, eps=1e-7, union_eps=0.0):
    inter, union, cw, ch = _pair_terms(a, b)
    iou = inter / (union + union_eps)
    if kind == "iou":
        return iou
    if kind == "giou":
        return iou - (cw * ch - union) / (cw * ch + union_eps)
    rho2 = (((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) ** 2
            + ((a[1] + a[3]) / 2 - (b[1] + b[3]) / 2) ** 2)
    diou = iou - rho2 / (cw**2 + ch**2 + eps)
    if kind == "diou":
        return diou
    v = 4 / math.pi**2 * (math.atan((b[2] - b[0]) / (b[3] - b[1]))
                          - math.atan((a[2] - a[0]) / (a[3] - a[1]))) ** 2
    alpha = v / (1 - iou + v + eps)
    return diou - alpha * v


def random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, (n, 2))
    wh = rng.uniform(1, scale / 2, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


PAIRWISE = {
    "iou": B.box_iou,
    "giou": B.generalized_box_iou,
    "diou": B.distance_box_iou,
    "ciou": B.complete_box_iou,
}
ALIGNED = {
    "iou": B.aligned_box_iou,
    "giou": B.aligned_generalized_box_iou,
    "diou": B.aligned_distance_box_iou,
    "ciou": B.aligned_complete_box_iou,
}


@pytest.mark.parametrize("kind", PAIRWISE)
def test_pairwise_matches_oracle(kind):
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 7), random_boxes(rng, 5)
    got = np.asarray(jax.jit(PAIRWISE[kind])(a, b))
    want = np.array([[oracle(kind, x.astype(np.float64), y.astype(np.float64)) for y in b]
                     for x in a])
    assert got.shape == (7, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ALIGNED)
def test_aligned_is_diagonal_of_pairwise(kind):
    rng = np.random.default_rng(1)
    a, b = random_boxes(rng, 9), random_boxes(rng, 9)
    aligned = np.asarray(jax.jit(ALIGNED[kind])(a, b))
    pair = np.diagonal(np.asarray(PAIRWISE[kind](a, b)))
    # DIoU/CIoU aligned put eps on the union too (torchvision loss semantics): ~1e-9 relative.
    np.testing.assert_allclose(aligned, pair, rtol=1e-5, atol=1e-6)


def test_leading_batch_dims():
    rng = np.random.default_rng(2)
    a = random_boxes(rng, 2 * 3 * 4).reshape(2, 3, 4, 4)
    b = random_boxes(rng, 2 * 3 * 5).reshape(2, 3, 5, 4)
    got = B.box_iou(a, b)
    assert got.shape == (2, 3, 4, 5)
    np.testing.assert_allclose(got[1, 2], B.box_iou(a[1, 2], b[1, 2]), rtol=1e-6)


def test_known_values():
    a = jnp.array([[0.0, 0.0, 2.0, 2.0]])
    b = jnp.array([[1.0, 0.0, 3.0, 2.0]])
    np.testing.assert_allclose(B.box_iou(a, b), [[1 / 3]], rtol=1e-6)
    np.testing.assert_allclose(B.generalized_box_iou(a, b), [[1 / 3]], rtol=1e-6)  # C == U
    far = jnp.array([[4.0, 0.0, 6.0, 2.0]])
    np.testing.assert_allclose(B.generalized_box_iou(a, far), [[-(12 - 8) / 12]], rtol=1e-6)


# ---------------------------------------------------------------------------------------
# Formats, area, clip.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["xywh", "cxcywh", "xyxy"])
def test_convert_round_trip(fmt):
    rng = np.random.default_rng(3)
    boxes = random_boxes(rng, 11)
    there = jax.jit(B.box_convert, static_argnums=(1, 2))(boxes, "xyxy", fmt)
    back = B.box_convert(there, fmt, "xyxy")
    np.testing.assert_allclose(back, boxes, rtol=1e-5, atol=1e-4)


def test_convert_values():
    xyxy = np.array([[10.0, 20.0, 40.0, 60.0]], np.float32)
    np.testing.assert_allclose(B.box_convert(xyxy, "xyxy", "xywh"), [[10, 20, 30, 40]])
    np.testing.assert_allclose(B.box_convert(xyxy, "xyxy", "cxcywh"), [[25, 40, 30, 40]])
    np.testing.assert_allclose(B.box_convert([[25.0, 40, 30, 40]], "cxcywh", "xywh"),
                               [[10, 20, 30, 40]])


def test_area_and_clip():
    boxes = jnp.array([[-5.0, -5.0, 10.0, 20.0], [50.0, 40.0, 120.0, 90.0]])
    np.testing.assert_allclose(B.box_area(boxes), [15 * 25, 70 * 50])
    clipped = jax.jit(B.clip_boxes)(boxes, jnp.array([64.0, 100.0]))  # (h, w)
    np.testing.assert_allclose(clipped, [[0, 0, 10, 20], [50, 40, 100, 64]])
    np.testing.assert_allclose(B.clip_boxes(boxes, (64, 100)), clipped)


# ---------------------------------------------------------------------------------------
# Errors.
# ---------------------------------------------------------------------------------------


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        B.box_iou(jnp.zeros((3, 5)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="leading batch"):
        B.box_iou(jnp.zeros((2, 3, 4)), jnp.zeros((3, 3, 4)))
    with pytest.raises(ValueError, match="in_fmt"):
        B.box_convert(jnp.zeros((1, 4)), "xyzw", "xyxy")
    with pytest.raises(ValueError, match="convention"):
        B.aligned_box_iou(jnp.zeros(4), jnp.zeros(4), convention="mmdet")
    with pytest.raises(ValueError, match="broadcastable"):
        B.aligned_box_iou(jnp.zeros((3, 4)), jnp.zeros((2, 4)))
    with pytest.raises(ValueError, match="height, width"):
        B.clip_boxes(jnp.zeros((1, 4)), (1, 2, 3))


# ---------------------------------------------------------------------------------------
# Degenerate boxes, gradients, half precision.
# ---------------------------------------------------------------------------------------

DEGENERATE = np.array([
    [0, 0, 0, 0],        # all-zero padding
    [5, 5, 5, 5],        # a point
    [0, 0, 10, 0],       # zero height
    [3, 3, 1, 1],        # negative size
    [0, 0, 10, 10],      # normal
    [0, 0, 10, 10],      # identical to the previous
    [28, 28, 1, 2.1e-36],  # inverted, with a tiny enclosing height beside the padding row:
], np.float32)             # (c_area - union) / c_area overflowed to inf (found by hypothesis)


@pytest.mark.parametrize("kind", ALIGNED)
@pytest.mark.parametrize("convention", ["torchvision", "ultralytics"])
def test_degenerate_finite_values_and_grads(kind, convention):
    fn = ALIGNED[kind]
    eps = 1e-7

    def total(a, b):
        return jnp.sum(fn(a[:, None], b[None], eps=eps, convention=convention))

    a = jnp.asarray(DEGENERATE)
    val = fn(a[:, None], a[None], eps=eps, convention=convention)
    ga, gb = jax.jit(jax.grad(total, argnums=(0, 1)))(a, a)
    assert np.isfinite(np.asarray(val)).all()
    assert np.isfinite(np.asarray(ga)).all() and np.isfinite(np.asarray(gb)).all()


@pytest.mark.parametrize("kind", PAIRWISE)
def test_pairwise_degenerate_finite(kind):
    a = jnp.asarray(DEGENERATE)
    val = PAIRWISE[kind](a, a)
    grad = jax.grad(lambda x: PAIRWISE[kind](x, a).sum())(a)
    assert np.isfinite(np.asarray(val)).all() and np.isfinite(np.asarray(grad)).all()
    assert float(val[4, 5]) == pytest.approx(1.0, abs=1e-6)


def test_ciou_alpha_is_stop_gradient():
    # d/dx of CIoU with alpha held constant, by central differences on a frozen-alpha oracle.
    a = np.array([1.0, 2.0, 9.0, 7.0])
    b = np.array([2.0, 1.0, 8.0, 10.0])
    grad_fn = jax.grad(lambda x: B.aligned_complete_box_iou(x, b))
    g = np.asarray(grad_fn(jnp.asarray(a, jnp.float32)))
    iou0 = oracle("iou", a, b)
    v0 = 4 / math.pi**2 * (math.atan(6 / 9) - math.atan(8 / 5)) ** 2
    alpha0 = v0 / (1 - iou0 + v0 + 1e-7)

    def frozen(x):
        diou = oracle("diou", x, b, union_eps=1e-7)
        v = 4 / math.pi**2 * (math.atan(6 / 9) - math.atan((x[2] - x[0]) / (x[3] - x[1]))) ** 2
        return diou - alpha0 * v

    num = np.array([(frozen(a + h) - frozen(a - h)) / 2e-4 for h in np.eye(4) * 1e-4])
    np.testing.assert_allclose(g, num, rtol=2e-3, atol=2e-5)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computed_in_float32(dtype):
    rng = np.random.default_rng(4)
    a, b = random_boxes(rng, 6), random_boxes(rng, 4)
    lo = B.complete_box_iou(jnp.asarray(a, dtype), jnp.asarray(b, dtype))
    assert lo.dtype == jnp.float32
    ref = B.complete_box_iou(jnp.asarray(a, dtype).astype(jnp.float32),
                             jnp.asarray(b, dtype).astype(jnp.float32))
    np.testing.assert_allclose(lo, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(lo, B.complete_box_iou(a, b), atol=2e-2)


# ---------------------------------------------------------------------------------------
# Properties.
# ---------------------------------------------------------------------------------------

coords = st.floats(-50, 150, allow_nan=False, width=32)
box_arrays = hnp.arrays(np.float32, st.tuples(st.integers(1, 6), st.just(4)), elements=coords)


@settings(max_examples=10)  # every new shape pair recompiles four functions
@given(box_arrays, box_arrays)
def test_jit_equals_eager_and_symmetry(a, b):
    for kind, fn in PAIRWISE.items():
        eager = np.asarray(fn(a, b))
        jitted = np.asarray(jax.jit(fn)(a, b))
        np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
        assert np.isfinite(eager).all()
        if kind in ("iou", "giou", "diou"):  # CIoU's v is symmetric too, but check the simple ones
            np.testing.assert_allclose(np.asarray(fn(b, a)).T, eager, rtol=1e-4, atol=1e-5)


@settings(max_examples=10)
@given(st.integers(1, 5), st.floats(0.1, 10))
def test_vmap_equals_loop_and_scale_invariance(n, scale):
    rng = np.random.default_rng(n)
    a = random_boxes(rng, 3 * n).reshape(3, n, 4)
    b = random_boxes(rng, 3 * 2).reshape(3, 2, 4)
    vm = jax.vmap(B.generalized_box_iou)(a, b)
    loop = np.stack([B.generalized_box_iou(a[i], b[i]) for i in range(3)])
    np.testing.assert_allclose(vm, loop, rtol=1e-6)
    np.testing.assert_allclose(B.generalized_box_iou(a * scale, b * scale), vm,
                               rtol=1e-3, atol=1e-4)


def test_public_reexports():
    assert detjax.box_iou is B.box_iou
    assert detjax.aligned_complete_box_iou is B.aligned_complete_box_iou


# ---------------------------------------------------------------------------------------
# Parity with the reference libraries (skipped when absent).
# ---------------------------------------------------------------------------------------


@pytest.mark.peers
@pytest.mark.parametrize("kind", PAIRWISE)
def test_parity_torchvision_pairwise(kind):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    ref = {"iou": ops.box_iou, "giou": ops.generalized_box_iou,
           "diou": ops.distance_box_iou, "ciou": ops.complete_box_iou}[kind]
    rng = np.random.default_rng(5)
    a, b = random_boxes(rng, 30), random_boxes(rng, 20)
    want = ref(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(PAIRWISE[kind](a, b), want, rtol=1e-5, atol=1e-6)


@pytest.mark.peers
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_parity_torchvision_losses(kind):
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(6)
    a, b = random_boxes(rng, 40), random_boxes(rng, 40)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    if kind == "iou":
        want = 1 - ops.box_iou(ta, tb).diagonal().numpy()
        got = 1 - B.aligned_box_iou(a, b)
    else:
        loss = {"giou": ops.generalized_box_iou_loss, "diou": ops.distance_box_iou_loss,
                "ciou": ops.complete_box_iou_loss}[kind]
        want = loss(ta, tb, reduction="none", eps=1e-7).numpy()
        got = 1 - ALIGNED[kind](a, b, eps=1e-7)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.peers
@pytest.mark.parametrize("kind", ["iou", "giou", "diou", "ciou"])
def test_parity_ultralytics_bbox_iou(kind):
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("ultralytics.utils.metrics")
    rng = np.random.default_rng(7)
    a, b = random_boxes(rng, 50), random_boxes(rng, 50)
    a[:3] = DEGENERATE[:3]  # ultralytics' eps makes these finite too
    flags = {"GIoU": kind == "giou", "DIoU": kind == "diou", "CIoU": kind == "ciou"}
    want = metrics.bbox_iou(torch.from_numpy(a), torch.from_numpy(b), xywh=False, **flags)
    got = ALIGNED[kind](a, b, eps=1e-7, convention="ultralytics")
    np.testing.assert_allclose(got, want.numpy()[:, 0], rtol=1e-5, atol=1e-6)


@pytest.mark.peers
def test_parity_torchvision_grad_ciou_loss():
    torch = pytest.importorskip("torch")
    ops = pytest.importorskip("torchvision.ops")
    rng = np.random.default_rng(8)
    a, b = random_boxes(rng, 16), random_boxes(rng, 16)
    ta = torch.from_numpy(a).requires_grad_(True)
    ops.complete_box_iou_loss(ta, torch.from_numpy(b), reduction="sum").backward()
    got = jax.grad(lambda x: jnp.sum(1 - B.aligned_complete_box_iou(x, b)))(jnp.asarray(a))
    np.testing.assert_allclose(got, ta.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_subnormal_denominator_counts_as_zero():
    """A GPU flushes a subnormal to zero in the division but not in the comparison; both
    backends must agree, so the zero branch takes every subnormal denominator."""
    tiny = np.float32(1e-45)
    assert float(jax.jit(B._safe_div)(jnp.float32(1.0), tiny)) == 0.0
    a = np.full((1, 4), -tiny, np.float32)  # area ~1e-90: subnormal enclosing area below
    b = np.array([[1.0, 0.0, 0.0, 1.0]], np.float32)
    for kind, fn in PAIRWISE.items():
        assert np.isfinite(np.asarray(jax.jit(fn)(a, b))).all(), kind
