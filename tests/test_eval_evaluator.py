"""Evaluator (fixed-size batches, undo letterbox) and PR/confidence curves."""

from __future__ import annotations

import numpy as np
import pytest

from detjax.eval import (
    Evaluator,
    best_f1,
    best_f1_confidence,
    coco_evaluate,
    confidence_curves,
    f1_curve,
    pr_curve,
)
from detjax.eval.evaluator import scale_boxes


def ragged_case(seed, num_images=5, num_classes=3):
    rng = np.random.default_rng(seed)
    dets, gts, sizes = [], [], []
    for _ in range(num_images):
        h, w = (int(x) for x in rng.integers(80, 400, 2))
        m = int(rng.integers(0, 6))
        xy = rng.uniform(0, [w - 40, h - 40], (m, 2))
        gb = np.concatenate([xy, xy + rng.uniform(4, 40, (m, 2))], 1)
        gl = rng.integers(0, num_classes, m)
        n = int(rng.integers(0, 9))
        src = gb[rng.integers(0, max(m, 1), n)] if m else np.zeros((n, 4)) + 10
        db = np.clip(src + rng.normal(0, 2, (n, 4)), 0, [w, h, w, h])
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 1)
        dets.append((db, np.round(rng.random(n), 2), rng.integers(0, num_classes, n)))
        gts.append((gb, gl))
        sizes.append((h, w))
    return dets, gts, np.array(sizes)


def pad_batch(dets, gts, sizes, net=416, max_det=12, max_boxes=7, seed=0):
    """Letterbox-map into network pixels and pad to fixed shapes with garbage rows."""
    rng = np.random.default_rng(seed)
    b = len(dets)
    r = np.minimum(net / sizes[:, 0], net / sizes[:, 1])
    nh, nw = np.round(sizes[:, 0] * r), np.round(sizes[:, 1] * r)
    scale = np.stack([nw / sizes[:, 1], nh / sizes[:, 0]], 1)
    pad = np.stack([np.round((net - nw) / 2 - 0.1), np.round((net - nh) / 2 - 0.1)], 1)
    out = rng.uniform(0, 500, (b, max_det, 6))  # garbage where invalid
    valid = np.zeros((b, max_det), bool)
    gtb = rng.uniform(0, 500, (b, max_boxes, 4))
    gtl = rng.integers(0, 3, (b, max_boxes))
    gtm = np.zeros((b, max_boxes), bool)
    for i, ((db, ds, dl), (gb, gl)) in enumerate(zip(dets, gts)):
        s4, p4 = np.tile(scale[i], 2), np.tile(pad[i], 2)
        n, m = len(db), len(gb)
        out[i, :n, :4], out[i, :n, 4], out[i, :n, 5] = db * s4 + p4, ds, dl
        valid[i, :n] = True
        gtb[i, :m], gtl[i, :m], gtm[i, :m] = gb * s4 + p4, gl, True
    return out, valid, gtb, gtl, gtm, scale, pad


def test_evaluator_equals_coco_evaluate_on_original_boxes():
    dets, gts, sizes = ragged_case(0)
    out, valid, gtb, gtl, gtm, scale, pad = pad_batch(dets, gts, sizes)
    ev = Evaluator(num_classes=3)
    ev.update(out[:3], valid[:3], gtb[:3], gtl[:3], gtm[:3], scale=scale[:3], pad=pad[:3],
              orig_size=sizes[:3])
    ev.update_batch(out[3:], valid[3:].sum(1),  # count form of ``valid``
                    {"boxes": gtb[3:], "labels": gtl[3:], "gt_mask": gtm[3:],
                     "scale": scale[3:], "pad": pad[3:],
                     "orig_size": sizes[3:]})
    assert len(ev) == 5
    got = ev.compute()
    want = coco_evaluate(dets, gts, num_classes=3)
    np.testing.assert_allclose(got["precision"], want["precision"], atol=1e-6)
    assert got["map"] == pytest.approx(want["map"], abs=1e-6)
    ev.reset()
    assert len(ev) == 0


def test_padding_images_are_skipped():
    dets, gts, sizes = ragged_case(1, num_images=4)
    out, valid, gtb, gtl, gtm, _, _ = pad_batch(dets, gts, sizes)
    ev = Evaluator(num_classes=3)
    ev.update(out, valid, gtb, gtl, gtm, image_mask=np.array([True, True, False, True]))
    assert len(ev) == 3


def test_scale_boxes_inverts_data_letterbox():
    transforms = pytest.importorskip("detjax.data.transforms")
    rng = np.random.default_rng(0)
    for h, w in [(100, 237), (333, 120), (64, 64)]:
        xy = rng.uniform(0, [w - 20, h - 20], (5, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(2, 20, (5, 2))], 1).astype(np.float32)
        sample = transforms.Sample(np.zeros((h, w, 3), np.uint8), boxes, np.zeros(5, np.int32))
        out, s, p = transforms.letterbox(sample, 128)
        back = scale_boxes(out.boxes, s, p, (h, w))
        np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_scale_boxes_clips_and_checks_shapes():
    b = np.array([[[-10.0, -5, 300, 400]]])
    out = scale_boxes(b, [[1.0, 1.0]], [[0.0, 0.0]], [[100, 200]])
    np.testing.assert_allclose(out, [[[0, 0, 200, 100]]])
    with pytest.raises(ValueError, match="xyxy"):
        scale_boxes(np.zeros((1, 3)), [1, 1], [0, 0])


def test_update_rejects_bad_shapes():
    ev = Evaluator()
    with pytest.raises(ValueError, match=r"\[B, max_det, 6\]"):
        ev.update(np.zeros((2, 5, 4)), np.ones((2, 5), bool), np.zeros((2, 1, 4)),
                  np.zeros((2, 1)), np.ones((2, 1), bool))
    with pytest.raises(ValueError, match="valid must be"):
        ev.update(np.zeros((2, 5, 6)), np.ones((2, 4), bool), np.zeros((2, 1, 4)),
                  np.zeros((2, 1)), np.ones((2, 1), bool))


# ----------------------------------------------------------------------------- curves


def _result(seed=2):
    dets, gts, _ = ragged_case(seed, num_images=12, num_classes=4)
    gts = [(g[0][g[1] != 3], g[1][g[1] != 3]) for g in gts]  # class 3 absent
    return coco_evaluate(dets, gts, num_classes=4)


def test_pr_curve_area_is_per_class_ap50():
    res = _result()
    curve = pr_curve(res)
    np.testing.assert_allclose(curve.ap, res["per_class_ap50"], atol=1e-12)
    assert np.isnan(curve.precision[3]).all() and curve.ap[3] == -1
    assert curve.recall.shape == (101,) and curve.mean.shape == (101,)
    # interpolated precision never increases with recall
    present = curve.precision[:3]
    assert (np.diff(present, axis=1) <= 1e-12).all()
    with pytest.raises(ValueError, match="not one of the evaluated"):
        pr_curve(res, iou=0.42)
    with pytest.raises(ValueError, match="area must be"):
        pr_curve(res, area="tiny")


def test_best_f1_matches_loop():
    curve = pr_curve(_result(3), iou=0.75)
    best, at = best_f1(curve)
    for k in range(curve.precision.shape[0]):
        if np.isnan(curve.precision[k]).all():
            assert np.isnan(best[k])
            continue
        f1s = [2 * p * r / (p + r) if p + r > 0 else 0.0
               for p, r in zip(curve.precision[k], curve.recall)]
        assert best[k] == pytest.approx(max(f1s), abs=1e-12)


def test_confidence_falls_as_recall_rises():
    cc = confidence_curves(_result(4))
    for row in cc["confidence"]:
        seen = row[~np.isnan(row)]
        assert (np.diff(seen) <= 1e-12).all()
    assert cc["f1"].shape == cc["precision"].shape


def test_update_batch_with_records_uses_untruncated_original_ground_truth():
    from types import SimpleNamespace

    dets, gts, sizes = ragged_case(5, num_images=4)
    out, valid, gtb, gtl, gtm, scale, pad = pad_batch(dets, gts, sizes)
    records = [SimpleNamespace(boxes=g[0], labels=g[1]) for g in gts][::-1]  # data set order
    batch = {"boxes": gtb[:, :1], "labels": gtl[:, :1], "gt_mask": gtm[:, :1],  # truncated
             "index": np.array([3, 2, 1, 0]), "scale": scale, "pad": pad,
             "orig_size": sizes, "image_mask": np.array([True, True, True, True])}
    ev = Evaluator(num_classes=3)
    ev.update_batch(out, valid, batch, records=records)
    want = coco_evaluate(dets, gts, num_classes=3)
    np.testing.assert_allclose(ev.compute()["precision"], want["precision"], atol=1e-6)
    with pytest.raises(ValueError, match="'index'"):
        ev.update_batch(out, valid, {k: v for k, v in batch.items() if k != "index"},
                        records=records)


def test_f1_curve_best_confidence_is_the_operating_point():
    # one class, 4 objects; detections 0.9, 0.8, 0.7 hit three of them, 0.6 hits nothing:
    # thresholds in (0.6, 0.7] give P = 1, R = 3/4, F1 = 6/7, the best
    gt = np.array([[0.0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]])
    det = np.concatenate([gt[:3], [[0.0, 30, 10, 40]]])
    res = coco_evaluate([(det, [0.9, 0.8, 0.7, 0.6], [0, 0, 0, 0])], [(gt, [0, 0, 0, 0]),
                                                                        ],
                        num_classes=2)
    curve = f1_curve(res)
    assert curve.f1.shape == (2, 1001) and np.isnan(curve.f1[1]).all()
    at = lambda t: curve.f1[0, int(round(t * 1000))]
    assert at(0.75) == pytest.approx(2 * 0.5 / 1.5) and at(0.95) == 0.0
    assert at(0.7) == pytest.approx(6 / 7) and at(0.85) == pytest.approx(2 * 0.25 / 1.25)
    conf, f1, conf_all, f1_all = best_f1_confidence(curve)
    assert conf[0] == pytest.approx(0.7) and f1[0] == pytest.approx(6 / 7)
    assert np.isnan(conf[1]) and np.isnan(f1[1])
    assert (conf_all, f1_all) == (pytest.approx(0.7), pytest.approx(6 / 7))
    np.testing.assert_allclose(curve.mean, curve.f1[0])
