"""detjax.infer.fusion: ensembles of several models' detections (WBF, NMS, soft-NMS), against
ensemble_boxes when installed and the NumPy soft-NMS of test_nms."""

from __future__ import annotations

import numpy as np
import pytest
from test_nms import np_soft_nms  # soft-NMS from its definition (mmcv semantics)

from detjax.infer.fusion import fuse_detections, fuse_images, weighted_boxes_fusion


def model_outputs(seed: int, n_models: int = 3, n: int = 10, num_classes: int = 2):
    """Per-model boxes xyxy in (0, 1) around a few shared objects, distinct scores, labels."""
    rng = np.random.default_rng(seed)
    objects = rng.uniform(0.05, 0.6, (4, 2))
    size = rng.uniform(0.1, 0.35, (4, 2))
    boxes, scores, labels = [], [], []
    for _ in range(n_models):
        k = rng.integers(0, 4, n)
        xy = objects[k] + rng.normal(0, 0.02, (n, 2))
        wh = size[k] * np.exp(rng.normal(0, 0.1, (n, 2)))
        boxes.append(np.clip(np.concatenate([xy, xy + wh], 1), 0, 1))
        scores.append(rng.uniform(0.05, 1, n))
        labels.append(rng.integers(0, num_classes, n))
    return boxes, scores, labels


@pytest.mark.peers
@pytest.mark.parametrize("conf_type", ["avg", "max", "box_and_model_avg",
                                       "absent_model_aware_avg"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_wbf_equals_ensemble_boxes(conf_type, seed):
    eb = pytest.importorskip("ensemble_boxes")
    boxes, scores, labels = model_outputs(seed)
    kw = dict(weights=[1, 2, 1.5], iou_thr=0.5, skip_box_thr=0.1, conf_type=conf_type)
    got = weighted_boxes_fusion(boxes, scores, labels, **kw)
    want = eb.weighted_boxes_fusion(boxes, scores, labels, **kw)
    assert len(got[0]) == len(want[0])
    for g, w in zip(got, want):  # ensemble_boxes keeps fused boxes in float32
        np.testing.assert_allclose(g, w, atol=1e-6)


@pytest.mark.peers
def test_wbf_allows_overflow_and_zero_area_like_ensemble_boxes():
    eb = pytest.importorskip("ensemble_boxes")
    boxes, scores, labels = model_outputs(5)
    boxes[0][0, 2] = boxes[0][0, 0]  # zero width: dropped by both
    got = weighted_boxes_fusion(boxes, scores, labels, allows_overflow=True, iou_thr=0.4)
    with pytest.warns(UserWarning, match="Zero area"):
        want = eb.weighted_boxes_fusion(boxes, scores, labels, allows_overflow=True,
                                        iou_thr=0.4)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


@pytest.mark.peers
@pytest.mark.parametrize("weights", [None, [1, 3, 2]])
def test_fuse_nms_equals_ensemble_boxes_nms(weights):
    eb = pytest.importorskip("ensemble_boxes")
    boxes, scores, labels = model_outputs(3, n=15)
    b, s, lab = fuse_detections(boxes, scores, labels, method="nms", weights=weights)
    wb, ws, wl = eb.nms([x.copy() for x in boxes], [x.copy() for x in scores],
                        [x.copy() for x in labels], iou_thr=0.5, weights=weights)
    order = np.argsort(-ws, kind="stable")  # ensemble_boxes groups by label
    np.testing.assert_allclose(s, ws[order])
    np.testing.assert_allclose(b, wb[order])
    np.testing.assert_array_equal(lab, wl[order])
    assert np.all(np.diff(s) <= 0)


def test_fuse_soft_equals_numpy_soft_nms_per_label():
    boxes, scores, labels = model_outputs(4, n=12)
    b, s, lab = fuse_detections(boxes, scores, labels, method="soft", soft_sigma=0.3,
                                soft_min_score=0.05, skip_box_thr=0.2)
    pb, ps, pl = (np.concatenate(x) for x in (boxes, scores, labels))
    keep = ps >= 0.2
    pb, ps, pl = pb[keep], ps[keep], pl[keep]
    rows = []
    for c in np.unique(pl):
        sel = np.flatnonzero(pl == c)
        idx, dec = np_soft_nms(pb[sel].astype(np.float32), ps[sel], "gaussian", 0.3, 0.5, 0.05)
        rows += [(dec[i], c, *pb[sel][idx[i]]) for i in range(len(idx))]
    rows.sort(key=lambda r: -r[0])
    want = np.array(rows)
    np.testing.assert_allclose(s, want[:, 0], rtol=1e-5)
    np.testing.assert_array_equal(lab, want[:, 1].astype(int))
    np.testing.assert_allclose(b, want[:, 2:], rtol=1e-6)


def test_fuse_wbf_merges_what_nms_keeps_apart():
    box = np.array([[10.0, 10, 50, 50]])
    boxes = [box, box + 2, box - 2]
    scores = [np.array([0.9]), np.array([0.8]), np.array([0.7])]
    labels = [np.array([1])] * 3
    b, s, _ = fuse_detections(boxes, scores, labels, method="wbf")
    np.testing.assert_allclose(b, [[10 + (0.8 * 2 - 0.7 * 2) / 2.4] * 2
                                   + [50 + (0.8 * 2 - 0.7 * 2) / 2.4] * 2])
    np.testing.assert_allclose(s, [0.8])
    b, s, _ = fuse_detections(boxes, scores, labels, method="nms")
    np.testing.assert_allclose(b, box)
    np.testing.assert_allclose(s, [0.9])
    _, s, _ = fuse_detections(boxes, scores, labels, method="soft")
    assert len(s) == 3 and s[0] == pytest.approx(0.9) and s[1] < 0.8


def test_fuse_images_fuses_image_by_image_and_caps_max_det():
    a, b = model_outputs(6), model_outputs(7)
    per_model = [[(a[0][m], a[1][m], a[2][m]), (b[0][m], b[1][m], b[2][m])] for m in range(3)]
    fused = fuse_images(per_model, method="wbf", max_det=4)
    assert len(fused) == 2
    for got, (boxes, scores, labels) in zip(fused, (a, b)):
        want = weighted_boxes_fusion(boxes, scores, labels)
        assert len(got[0]) == 4
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w[:4])
    assert fuse_images([]) == []


def test_fusion_errors():
    with pytest.raises(ValueError, match="method must be one of"):
        fuse_detections([], [], [], method="vote")
    with pytest.raises(ValueError, match="same images"):
        fuse_images([[(np.zeros((0, 4)), np.zeros(0), np.zeros(0))], []])
    with pytest.raises(ValueError, match="one value per model"):
        fuse_detections([np.zeros((1, 4))], [[0.5]], [[0]], method="nms", weights=[1, 2])
    b, s, lab = fuse_detections([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)], method="soft")
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)
