"""detjax.assign.fcos_targets against a NumPy oracle written from mmdet FCOSHead."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detjax.anchors import make_anchor_points
from detjax.assign import centerness_target, fcos_targets

SHAPES, STRIDES = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)], [8, 16, 32, 64, 128]
LEVELS = [h * w for h, w in SHAPES]
RANGES = [(-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8)]


def _points():
    pts, s = make_anchor_points(SHAPES, STRIDES)
    return np.asarray(pts * s), np.asarray(s)[:, 0]


def _oracle(points, strides, labels, gt, num_classes, center_sampling, radius=1.5):
    lo, hi = np.repeat(np.array(RANGES, float), LEVELS, 0).T
    out_lab, out_ltrb = [], []
    for p, s, rl, rh in zip(points.astype(float), strides, lo, hi):
        best, best_area, best_d = None, np.inf, np.zeros(4)
        for j, g in enumerate(gt.astype(float)):
            d = np.array([p[0] - g[0], p[1] - g[1], g[2] - p[0], g[3] - p[1]])
            box = g
            if center_sampling:
                c = (g[:2] + g[2:]) / 2
                box = [max(c[0] - s * radius, g[0]), max(c[1] - s * radius, g[1]),
                       min(c[0] + s * radius, g[2]), min(c[1] + s * radius, g[3])]
            inside = min(p[0] - box[0], p[1] - box[1], box[2] - p[0], box[3] - p[1]) > 0
            area = (g[2] - g[0]) * (g[3] - g[1])
            if inside and rl <= d.max() <= rh and area < best_area:
                best, best_area, best_d = j, area, d
        out_lab.append(num_classes if best is None else labels[best])
        out_ltrb.append(best_d)
    return np.array(out_lab), np.array(out_ltrb)


@settings(max_examples=6)
@given(seed=st.integers(0, 2**16), center_sampling=st.booleans())
def test_matches_oracle(seed, center_sampling):
    rng = np.random.default_rng(seed)
    points, strides = _points()
    c = rng.uniform(0, 128, (6, 2))
    wh = rng.uniform(8, 200, (6, 2))
    gt = np.concatenate([c - wh / 2, c + wh / 2], -1).astype(np.float32)
    labels = rng.integers(0, 3, 6)
    fn = jax.jit(lambda p, lab, g, m: fcos_targets(
        p, lab, g, m, num_classes=3, num_points_per_level=LEVELS, center_sampling=center_sampling))
    got = fn(points, labels, gt, np.ones(6, bool))
    want_lab, want_ltrb = _oracle(points, strides, labels, gt, 3, center_sampling)
    np.testing.assert_array_equal(got.labels, want_lab)
    fg = want_lab < 3
    np.testing.assert_array_equal(got.fg_mask, fg)
    np.testing.assert_allclose(np.asarray(got.ltrb)[fg], want_ltrb[fg], rtol=1e-5, atol=1e-4)
    d = want_ltrb[fg]
    cn = np.sqrt(d[:, [0, 2]].min(1) / d[:, [0, 2]].max(1) * d[:, [1, 3]].min(1)
                 / d[:, [1, 3]].max(1))
    np.testing.assert_allclose(np.asarray(got.centerness)[fg], cn, rtol=1e-5)
    assert (np.asarray(got.centerness)[~fg] == 0).all()


def test_padding_empty_and_centerness_grad():
    points, _ = _points()
    gt = np.array([[10, 10, 60, 50], [0, 0, 0, 0]], np.float32)
    fn = jax.vmap(lambda g, m: fcos_targets(points, [1, 2], g, m, num_classes=3,
                                            num_points_per_level=LEVELS))
    out = jax.jit(fn)(np.stack([gt, gt]), np.array([[True, False], [False, False]]))
    single = fcos_targets(points, [1], gt[:1], [True], num_classes=3, num_points_per_level=LEVELS)
    np.testing.assert_array_equal(out.labels[0], single.labels)
    assert (out.labels[1] == 3).all() and not out.fg_mask[1].any()
    empty = fcos_targets(points, np.zeros(0), np.zeros((0, 4)), np.zeros(0, bool), num_classes=3,
                         num_points_per_level=LEVELS)
    assert (empty.labels == 3).all()
    g = jax.grad(lambda d: centerness_target(d).sum())(np.array([[0., 1., 2., 3.], [0.] * 4]))
    assert np.isfinite(g).all()
    with pytest.raises(ValueError, match="sum"):
        fcos_targets(points, [1], gt[:1], [True], num_classes=3, num_points_per_level=[3])


def test_bf16_and_jit_equals_eager():
    points, _ = _points()
    gt = np.array([[10, 10, 60, 50], [30, 20, 120, 100]], np.float32)
    kw = dict(num_classes=3, num_points_per_level=LEVELS, center_sampling=True)
    eager = fcos_targets(points, [0, 1], gt, [True, True], **kw)
    jitted = jax.jit(lambda g: fcos_targets(points, [0, 1], g, [True, True], **kw))
    for a, b in zip(eager, jitted(gt)):
        np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-6)
    half = jitted(gt.astype(jax.numpy.bfloat16))
    np.testing.assert_array_equal(half.labels, eager.labels)
    assert half.ltrb.dtype == np.float32 and np.isfinite(np.asarray(half.centerness)).all()
