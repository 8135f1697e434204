"""detjax.eval.sweep: every grid point of the threshold sweep equals the val postprocess run at
that point on the full predictions (greedy, DIoU and soft-NMS), with unused anchors dropped."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pytest

from detjax.eval import Evaluator
from detjax.eval.sweep import RawPredictions, _kept_columns, sweep_nms
from detjax.nms import non_max_suppression

RNG = np.random.default_rng(0)
CONFS, IOUS = (0.001, 0.3), (0.45, 0.7)


def _batch(b: int = 3, c: int = 3, a: int = 200) -> tuple[np.ndarray, dict]:
    """Predictions ``[b, 4 + c, a]`` (cxcywh pixels, scores mostly tiny) around a few objects,
    and a loader-style batch of their ground truth (xyxy)."""
    gt_xy = RNG.uniform(5, 50, (b, 4, 2))
    gt = np.concatenate([gt_xy, gt_xy + RNG.uniform(8, 20, (b, 4, 2))], -1)  # [b, 4, 4]
    pick = RNG.integers(0, 4, (b, a))
    src = np.take_along_axis(gt, pick[..., None], 1)  # [b, a, 4]
    cxcy = (src[..., :2] + src[..., 2:]) / 2 + RNG.normal(0, 2, (b, a, 2))
    wh = (src[..., 2:] - src[..., :2]) * RNG.uniform(0.7, 1.3, (b, a, 2))
    scores = RNG.uniform(0, 1, (b, a, c)) ** 6  # most below 0.2
    scores[:, RNG.uniform(size=a) < 0.4] *= 1e-3  # anchors below 0.001 in every image
    pred = np.concatenate([cxcy, wh, scores], -1).transpose(0, 2, 1).astype(np.float32)
    labels = RNG.integers(0, c, (b, 4))
    batch = {"boxes": gt, "labels": labels, "gt_mask": np.ones((b, 4), bool)}
    return pred, batch


@functools.partial(jax.jit, static_argnames=("conf", "method"))
def _postprocess(pred, iou, *, conf, method):
    return non_max_suppression(pred, conf_thres=conf, iou_thres=iou, max_det=50,
                               multi_label=True, method=method)


def _direct_map(preds, batches, conf, iou, method) -> float:
    ev = Evaluator(num_classes=3)
    for pred, batch in zip(preds, batches):
        out = _postprocess(pred, np.float32(iou), conf=conf, method=method)
        ev.update_batch(np.asarray(out.detections), np.asarray(out.valid), batch)
    return ev.compute()["map"]


@pytest.mark.parametrize("nms", ["greedy", "soft_gaussian",
                                 pytest.param("diou", marks=pytest.mark.slow)])
def test_every_grid_point_equals_the_postprocess_at_that_point(nms):
    preds, batches = zip(*(_batch() for _ in range(2)))
    kept = [np.take(p, _kept_columns(p, CONFS[0]), axis=2) for p in preds]
    assert sum(k.shape[2] for k in kept) < sum(p.shape[2] for p in preds)
    raw = RawPredictions(kept, list(batches), None, CONFS[0])
    sweep = sweep_nms(raw, conf_grid=CONFS, iou_grid=IOUS, max_det=50, nms=nms)
    assert sweep.metrics["map"].shape == (2, 2)
    for c, conf in enumerate(CONFS):
        for t, iou in enumerate(IOUS):
            want = _direct_map(preds, batches, conf, iou, nms)
            assert sweep.metrics["map"][c, t] == pytest.approx(want, abs=1e-12), (conf, iou)
    best = int(np.argmax(sweep.metrics["map"][0]))
    assert sweep.best_iou == IOUS[best]
    assert sweep.result["map"] == sweep.metrics["map"][0, best]


def test_grid_below_the_kept_confidence_is_refused():
    pred, batch = _batch()
    raw = RawPredictions([pred], [batch], None, 0.01)
    with pytest.raises(ValueError, match="conf_grid"):
        sweep_nms(raw, conf_grid=(0.001, 0.1))
    with pytest.raises(ValueError, match="iou_grid"):
        sweep_nms(raw, conf_grid=(0.1,), iou_grid=())
