"""detjax.assign.max_iou / match_quality: torchvision Matcher parity (ties), mmdet oracle."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detjax.assign import match_quality, max_iou

_match_mmdet = jax.jit(lambda q, m, t: match_quality(q, m, low_quality="mmdet", min_pos_iou=t))
_max_iou = jax.jit(max_iou, static_argnames=("allow_low_quality_matches", "low_quality"))


def _grid_boxes(rng, n, step=4):
    """Integer boxes on a coarse grid: many exactly equal IoUs (ties)."""
    xy = rng.integers(0, 8, (n, 2)) * step
    wh = rng.integers(1, 5, (n, 2)) * step
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


def _iou_np(a, b):
    iw = max(min(a[2], b[2]) - max(a[0], b[0]), 0)
    ih = max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def _mmdet_oracle(q, pos=0.7, neg=0.3, min_pos_iou=0.0):
    """mmdet MaxIoUAssigner.assign_wrt_overlaps (gt_max_assign_all=True), loops."""
    m, a = q.shape
    out = []
    for i in range(a):
        best = max(range(m), key=lambda j: (q[j, i], -j))
        out.append(best if q[best, i] >= pos else (-1 if q[best, i] < neg else -2))
    for j in range(m):
        if q[j].max() < min_pos_iou:
            continue
        for i in range(a):
            if q[j, i] == q[j].max():
                out[i] = j
    return np.array(out)


@pytest.mark.peers
@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), low_quality=st.booleans())
def test_parity_torchvision_matcher_with_ties(seed, low_quality):
    torch = pytest.importorskip("torch")
    det_utils = pytest.importorskip("torchvision.models.detection._utils")
    rng = np.random.default_rng(seed)
    gt, anchors = _grid_boxes(rng, 5), _grid_boxes(rng, 40)
    matcher = det_utils.Matcher(0.7, 0.3, allow_low_quality_matches=low_quality)
    q = np.array([[_iou_np(g, a) for a in anchors] for g in gt], np.float32)
    want = matcher(torch.from_numpy(q)).numpy()
    got = _max_iou(anchors, gt, np.ones(5, bool), allow_low_quality_matches=low_quality)
    np.testing.assert_array_equal(got.matches, want)
    np.testing.assert_allclose(got.iou, q.max(0), rtol=1e-6)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), min_pos_iou=st.sampled_from([0.0, 0.3]))
def test_mmdet_low_quality_oracle(seed, min_pos_iou):
    rng = np.random.default_rng(seed)
    gt, anchors = _grid_boxes(rng, 4), _grid_boxes(rng, 30)
    q = np.array([[_iou_np(g, a) for a in anchors] for g in gt], np.float32)
    got = _match_mmdet(q, np.ones(4, bool), min_pos_iou)
    np.testing.assert_array_equal(got.matches, _mmdet_oracle(q, min_pos_iou=min_pos_iou))


@settings(max_examples=8)
@given(seed=st.integers(0, 2**16), extra=st.integers(1, 3))
def test_padding_inert_vmap_and_empty(seed, extra):
    rng = np.random.default_rng(seed)
    gt, anchors = _grid_boxes(rng, 4), _grid_boxes(rng, 30)
    fn = _max_iou
    base = fn(anchors, gt, np.ones(4, bool))
    padded_gt = np.concatenate([gt, _grid_boxes(rng, extra)])
    padded = fn(anchors, padded_gt, np.arange(4 + extra) < 4)
    np.testing.assert_array_equal(base.matches, padded.matches)
    batched = jax.vmap(max_iou, (None, 0, 0))(anchors, np.stack([padded_gt] * 2),
                                              np.stack([np.arange(4 + extra) < 4,
                                                        np.zeros(4 + extra, bool)]))
    np.testing.assert_array_equal(batched.matches[0], base.matches)
    assert (batched.matches[1] == -1).all() and (batched.iou[1] == 0).all()
    empty = fn(anchors, np.zeros((0, 4), np.float32), np.zeros(0, bool))
    assert (empty.matches == -1).all()


def test_thresholds_and_errors():
    anchors = np.array([[0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 2.5], [50, 50, 60, 60]],
                       np.float32)
    gt = np.array([[0, 0, 10, 10]], np.float32)
    got = max_iou(anchors, gt, [True], allow_low_quality_matches=False)
    np.testing.assert_array_equal(got.matches, [0, -2, -1, -1])
    got = max_iou(anchors, gt, [True], pos_threshold=0.5, neg_threshold=0.5)
    np.testing.assert_array_equal(got.matches, [0, 0, -1, -1])
    with pytest.raises(ValueError, match="low_quality"):
        match_quality(np.zeros((1, 2)), [True], low_quality="x")
    with pytest.raises(ValueError, match="anchors"):
        max_iou(anchors[:, :3], gt, [True])


def test_bf16_and_jit_equals_eager():
    rng = np.random.default_rng(3)
    gt, anchors = _grid_boxes(rng, 4), _grid_boxes(rng, 30)
    eager = max_iou(anchors, gt, np.ones(4, bool))
    np.testing.assert_array_equal(_max_iou(anchors, gt, np.ones(4, bool)).matches, eager.matches)
    half = _max_iou(anchors.astype(jax.numpy.bfloat16), gt.astype(jax.numpy.bfloat16),
                    np.ones(4, bool))
    np.testing.assert_array_equal(half.matches, eager.matches)  # grid boxes are exact in bf16
