"""detjax.assign.task_aligned: NumPy oracle, ultralytics parity, jit/vmap/padding properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detjax.anchors import make_anchor_points
from detjax.assign import batched_task_aligned, task_aligned

SHAPES, STRIDES = [(8, 8), (4, 4), (2, 2)], [8, 16, 32]
_task_aligned = jax.jit(task_aligned, static_argnames=("topk2",))


def _points():
    pts, s = make_anchor_points(SHAPES, STRIDES)
    return np.asarray(pts * s)


def _problem(seed, batch=3, max_boxes=6, num_classes=4, empty_first=True, tie_free=False):
    """Random predictions near the anchors and padded ground truth (image 0 empty).

    ``tie_free``: near-square boxes and large square predictions, so every (box, anchor
    inside it) pair has CIoU > 0 and alignment > 0: top-k never has to choose among equal
    zeros, where torch's CPU topk order is unspecified (it varies with the row length).
    """
    rng = np.random.default_rng(seed)
    pts = _points()
    a = len(pts)
    c = rng.uniform(0, 64, (batch, max_boxes, 2))
    wh = rng.uniform(3, 48, (batch, max_boxes, 2))
    if tie_free:
        wh = (rng.uniform(12, 48, (batch, max_boxes, 1))
              * rng.uniform(0.85, 1.15, (batch, max_boxes, 2)))
    n = rng.integers(1, max_boxes + 1, batch)
    if empty_first:
        n[0] = 0
    mask = np.arange(max_boxes)[None] < n[:, None]
    gt = (np.concatenate([c - wh / 2, c + wh / 2], -1) * mask[..., None]).astype(np.float32)
    labels = (rng.integers(0, num_classes, (batch, max_boxes)) * mask).astype(np.int32)
    pc = pts[None] + rng.normal(0, 0 if tie_free else 3, (batch, a, 2))
    pwh = rng.uniform(3, 40, (batch, a, 2))
    if tie_free:
        pwh = rng.uniform(115, 130, (batch, a, 1)) + rng.uniform(0, 1, (batch, a, 2))
    pd = np.concatenate([pc - pwh / 2, pc + pwh / 2], -1).astype(np.float32)
    scores = rng.uniform(0.01, 1, (batch, a, num_classes)).astype(np.float32)
    return scores, pd, pts.astype(np.float32), labels, gt, mask


def _ciou_np(b1, b2, eps=1e-7):
    """ultralytics bbox_iou(..., CIoU=True) for one pair, float64."""
    w1, h1 = b1[2] - b1[0], b1[3] - b1[1] + eps
    w2, h2 = b2[2] - b2[0], b2[3] - b2[1] + eps
    inter = (max(min(b1[2], b2[2]) - max(b1[0], b2[0]), 0)
             * max(min(b1[3], b2[3]) - max(b1[1], b2[1]), 0))
    iou = inter / (w1 * h1 + w2 * h2 - inter + eps)
    cw = max(b1[2], b2[2]) - min(b1[0], b2[0])
    ch = max(b1[3], b2[3]) - min(b1[1], b2[1])
    rho2 = ((b2[0] + b2[2] - b1[0] - b1[2]) ** 2 + (b2[1] + b2[3] - b1[1] - b1[3]) ** 2) / 4
    v = 4 / math.pi**2 * (math.atan(w2 / h2) - math.atan(w1 / h1)) ** 2
    alpha = v / (1 - iou + v + eps)
    return iou - (rho2 / (cw**2 + ch**2 + eps) + v * alpha)


def _oracle(scores, pd, pts, labels, gt, mask, topk=10, alpha=0.5, beta=6.0, eps=1e-9):
    """TOOD assignment written from the definition with loops (one image)."""
    a, c = scores.shape
    m = len(gt)
    align = np.zeros((m, a))
    ov = np.zeros((m, a))
    pos = np.zeros((m, a), bool)
    for j in range(m):
        if not mask[j]:
            continue
        inside = [min(p[0] - gt[j, 0], p[1] - gt[j, 1], gt[j, 2] - p[0], gt[j, 3] - p[1]) > 1e-9
                  for p in pts]
        for i in range(a):
            if inside[i]:
                ov[j, i] = max(_ciou_np(gt[j].astype(float), pd[i].astype(float)), 0)
                align[j, i] = scores[i, labels[j]] ** alpha * ov[j, i] ** beta
        order = sorted(range(a), key=lambda i: -align[j, i])[:topk]  # stable: lowest index
        for i in order:
            pos[j, i] = inside[i]
    for i in range(a):
        if pos[:, i].sum() > 1:
            best = int(np.argmax(ov[:, i]))
            pos[:, i] = False
            pos[best, i] = True
    fg = pos.any(0)
    idx = pos.argmax(0)
    lab = np.maximum(labels[idx], 0)
    align, ov = align * pos, ov * pos
    norm = (align * ov.max(1, keepdims=True) / (align.max(1, keepdims=True) + eps)).max(0)
    sc = np.eye(c)[lab] * (fg * norm)[:, None]
    return lab, gt[idx], sc, fg, idx


def test_matches_numpy_oracle():
    args = _problem(1)
    out = jax.jit(batched_task_aligned)(*args)
    for b in range(args[0].shape[0]):
        ref = _oracle(*(x[b] if x.ndim and x.shape[0] == 3 and k != 2 else x
                        for k, x in enumerate(args)))
        for got, want in zip(out, ref):
            np.testing.assert_allclose(np.asarray(got[b], float), want, rtol=1e-4, atol=1e-5)
    assert out.fg_mask[1:].any(), "test problem should have positives"
    assert not out.fg_mask[0].any(), "empty image has no positives"


@pytest.mark.peers
@pytest.mark.parametrize("min_gt_size", [None, 16])
@pytest.mark.parametrize("seed", [0, 1])
def test_parity_ultralytics(seed, min_gt_size):
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    scores, pd, pts, labels, gt, mask = _problem(seed, batch=4, max_boxes=8, num_classes=5,
                                                 tie_free=True)
    for b, j, i in zip(*np.nonzero(mask[..., None] & (np.abs(pts[None, None] - (
            gt[..., None, :2] + gt[..., None, 2:]) / 2) < 8).all(-1))):
        assert _ciou_np(gt[b, j].astype(float), pd[b, i].astype(float)) > 1e-6  # no 0-ties
    # stride=[0.] disables the >= 8.4 small-box enlargement (no side is < 0).
    stride = [0.0] if min_gt_size is None else [8, min_gt_size, 32]
    ref = tal.TaskAlignedAssigner(topk=10, num_classes=5, alpha=0.5, beta=6.0, stride=stride)
    t = lambda x: torch.from_numpy(np.array(x))
    want = ref(t(scores), t(pd), t(pts), t(labels[..., None].astype(np.float32)), t(gt),
               t(mask[..., None].astype(np.float32)))
    got = jax.jit(lambda *x: batched_task_aligned(*x, min_gt_size=min_gt_size))(
        scores, pd, pts, labels, gt, mask)
    for name, g, w in zip(got._fields, got, want):
        g, w = np.asarray(g), w.numpy()
        assert g.shape == w.shape, name
        if name == "scores":
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)
    assert got.fg_mask.sum() > 10


@pytest.mark.peers
def test_parity_ultralytics_no_gt_slots():
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    scores, pd, pts, *_ = _problem(0)
    ref = tal.TaskAlignedAssigner(topk=10, num_classes=4, alpha=0.5, beta=6.0)
    t = lambda x: torch.from_numpy(np.array(x))
    want = ref(t(scores), t(pd), t(pts), torch.zeros(3, 0, 1), torch.zeros(3, 0, 4),
               torch.zeros(3, 0, 1))
    got = jax.jit(batched_task_aligned)(scores, pd, pts, np.zeros((3, 0), np.int32),
                                        np.zeros((3, 0, 4), np.float32), np.zeros((3, 0), bool))
    for g, w in zip(got, want):
        np.testing.assert_array_equal(np.asarray(g), w.numpy())


def test_vmap_equals_loop_and_jit_equals_eager():
    args = _problem(2)
    batched = jax.jit(batched_task_aligned)(*args)
    single = jax.jit(task_aligned)
    for b in range(3):
        one = single(args[0][b], args[1][b], args[2], args[3][b], args[4][b], args[5][b])
        eager = task_aligned(args[0][b], args[1][b], args[2], args[3][b], args[4][b], args[5][b])
        for x, y, z in zip(batched, one, eager):
            np.testing.assert_array_equal(np.asarray(x[b]), np.asarray(y))
            np.testing.assert_allclose(np.asarray(y, float), np.asarray(z, float), atol=1e-6)


@given(seed=st.integers(0, 10_000), extra=st.integers(1, 4))
def test_padding_is_inert(seed, extra):
    scores, pd, pts, labels, gt, mask = (x[1] if x.ndim > 1 and x.shape[0] == 3 else x
                                         for x in _problem(seed))
    rng = np.random.default_rng(seed)
    junk = rng.uniform(0, 64, (extra, 4)).astype(np.float32)  # garbage in padded slots
    fn = _task_aligned
    base = fn(scores, pd, pts, labels, gt, mask)
    pad = fn(scores, pd, pts, np.concatenate([labels, np.full(extra, 3, np.int32)]),
             np.concatenate([gt, junk]), np.concatenate([mask, np.zeros(extra, bool)]))
    fg = np.asarray(base.fg_mask)
    np.testing.assert_array_equal(fg, pad.fg_mask)
    for x, y in zip(base, pad):
        np.testing.assert_array_equal(np.asarray(x)[fg], np.asarray(y)[fg])


def test_topk2_and_bf16_and_grad_free():
    scores, pd, pts, labels, gt, mask = (x[2] if x.ndim > 1 and x.shape[0] == 3 else x
                                         for x in _problem(3))
    fn = _task_aligned
    full = fn(scores, pd, pts, labels, gt, mask)
    one = fn(scores, pd, pts, labels, gt, mask, topk2=1)
    assert one.fg_mask.sum() <= mask.sum() < full.fg_mask.sum()
    assert (np.asarray(one.fg_mask) <= np.asarray(full.fg_mask)).all()
    half = fn(scores.astype(jnp.bfloat16), pd.astype(jnp.bfloat16), pts, labels, gt, mask)
    assert np.isfinite(np.asarray(half.scores)).all() and half.fg_mask.sum() > 0
    # Targets are constants for the loss: the gradient through them is exactly zero.
    g = jax.grad(lambda s: fn(s, pd, pts, labels, gt, mask).scores.sum())(scores)
    assert np.isfinite(np.asarray(g)).all() and not np.asarray(g).any()


def test_bad_shapes_raise():
    scores, pd, pts, labels, gt, mask = (x[1] if x.ndim > 1 and x.shape[0] == 3 else x
                                         for x in _problem(0))
    with pytest.raises(ValueError, match="pd_boxes"):
        task_aligned(scores, pd[:-1], pts, labels, gt, mask)
    with pytest.raises(ValueError, match="gt_mask"):
        task_aligned(scores, pd, pts, labels, gt, mask[:-1])
    with pytest.raises(ValueError, match="topk"):
        task_aligned(scores, pd, pts, labels, gt, mask, topk=0)


@pytest.mark.slow
@pytest.mark.peers
@pytest.mark.parametrize("min_gt_size", [None, 16])
def test_parity_ultralytics_full_scale(min_gt_size):
    """640 px, 8400 anchors, 80 classes, 32 slots: realistic scale, exact agreement."""
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    rng = np.random.default_rng(7)
    pts, s = make_anchor_points([(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    pts = np.asarray(pts * s)
    b, m, c = 2, 32, 80
    mask = np.arange(m)[None] < np.array([[5], [32]])
    ctr, wh = rng.uniform(0, 640, (b, m, 2)), rng.uniform(8, 300, (b, m, 2))
    gt = (np.concatenate([ctr - wh / 2, ctr + wh / 2], -1) * mask[..., None]).astype(np.float32)
    labels = (rng.integers(0, c, (b, m)) * mask).astype(np.int32)
    pc, pwh = pts[None] + rng.normal(0, 4, (b, len(pts), 2)), rng.uniform(8, 200, (b, len(pts), 2))
    pd = np.concatenate([pc - pwh / 2, pc + pwh / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (b, len(pts), c)).astype(np.float32)
    ref = tal.TaskAlignedAssigner(topk=10, num_classes=c, alpha=0.5, beta=6.0,
                                  stride=[0.0] if min_gt_size is None else [8, 16, 32])
    t = lambda x: torch.from_numpy(np.array(x))
    want = ref(t(scores), t(pd), t(pts.astype(np.float32)),
               t(labels[..., None].astype(np.float32)), t(gt), t(mask[..., None].astype(float)))
    got = jax.jit(lambda *x: batched_task_aligned(*x, min_gt_size=min_gt_size))(
        scores, pd, pts, labels, gt, mask)
    for name, g, w in zip(got._fields, got, want):
        if name == "scores":
            np.testing.assert_allclose(np.asarray(g), w.numpy(), rtol=1e-5, atol=1e-6)
        else:
            np.testing.assert_array_equal(np.asarray(g), w.numpy(), err_msg=name)


def test_compact_targets_equal_dense_and_logits_equal_probabilities():
    from detjax.assign import task_aligned_compact

    scores, pd, pts, labels, gt, mask = (x[1] if x.ndim > 1 and x.shape[0] == 3 else x
                                         for x in _problem(4))
    dense = _task_aligned(scores, pd, pts, labels, gt, mask)
    compact = jax.jit(task_aligned_compact)(scores, pd, pts, labels, gt, mask)
    one_hot = (np.eye(scores.shape[1], dtype=np.float32)[np.asarray(compact.labels)]
               * np.asarray(compact.score)[:, None])
    np.testing.assert_array_equal(one_hot, dense.scores)
    for name in ("labels", "boxes", "fg_mask", "gt_index"):
        np.testing.assert_array_equal(getattr(compact, name), getattr(dense, name), err_msg=name)
    logits = np.log(scores) - np.log1p(-scores)  # sigmoid(logits) == scores
    from_logits = jax.jit(lambda *a: task_aligned_compact(*a, logits=True))(
        logits, pd, pts, labels, gt, mask)
    np.testing.assert_array_equal(from_logits.fg_mask, compact.fg_mask)
    np.testing.assert_allclose(from_logits.score, compact.score, rtol=1e-5, atol=1e-7)
