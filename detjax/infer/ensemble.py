"""Ensembles of trained runs: every run predicts each image with its own weights, image size
and postprocess, its boxes go back to the original image (``xyxy`` original pixels), and the
runs' detections of one image are fused by :func:`detjax.infer.fusion.fuse_detections`
(``wbf``, ``nms`` or ``soft``; ensemble_boxes' defaults).

:class:`EnsemblePredictor` has :class:`~detjax.infer.predict.Predictor`'s call, so
``predict_source`` and ``sliced_predict`` take it unchanged; :func:`evaluate_ensemble` scores
the fused detections of the validation split as :func:`detjax.eval.evaluate` scores one run.
With TTA a member's predictor is its TTA forward: each run's views are merged by its own NMS
(ultralytics' TTA), and then the runs are fused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detjax.infer.fusion import FUSION_METHODS, fuse_images
from detjax.infer.predict import Prediction


def check_class_names(names: Sequence[Sequence[str]], runs: Sequence[str]) -> list[str]:
    """The class names every member shares -> that list; a ``ValueError`` naming the first
    run whose list differs from the first run's, and both lists."""
    if len(names) != len(runs) or not names:
        raise ValueError(f"need one class-name list per run, got {len(names)} lists for "
                         f"{len(runs)} runs")
    first = list(names[0])
    for other, run in zip(names[1:], runs[1:]):
        if list(other) != first:
            raise ValueError(f"runs must share their class names to be ensembled: {runs[0]} has "
                             f"{first}, {run} has {list(other)}")
    return first


def _check_method(method: str) -> str:
    if method not in FUSION_METHODS:
        raise ValueError(f"ensemble method must be one of {FUSION_METHODS}, got {method!r}")
    return method


class EnsemblePredictor:
    """Several :class:`~detjax.infer.predict.Predictor` s (one per run, each at its own image
    size) fused image by image.

    ``method``, ``iou_thr`` (None: 0.55 for wbf, 0.5 for nms / soft), ``weights`` (one per
    member) and ``max_det`` go to :func:`~detjax.infer.fusion.fuse_detections`. Calling it on
    uint8 ``[H, W, 3]`` images returns one :class:`Prediction` per image (``xyxy`` original
    pixels, descending score).

    Example::

        members = [Predictor(*inference_fn(run.model), imgsz=run.image_size) for run in runs]
        [pred] = EnsemblePredictor(members, method="wbf")([image])
    """

    def __init__(self, members: Sequence[Any], *, method: str = "wbf",
                 iou_thr: float | None = None, weights: Sequence[float] | None = None,
                 max_det: int | None = 300) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = list(members)
        self.fusion = {"method": _check_method(method), "iou_thr": iou_thr,
                       "weights": weights, "max_det": max_det}
        self.batch_size = min(m.batch_size for m in self.members)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        per_member = [[tuple(p) for p in member(images)] for member in self.members]
        return [Prediction(b, s, lab) for b, s, lab in fuse_images(per_member, **self.fusion)]


def evaluate_ensemble(members: Sequence[tuple[Any, Any, dict[str, Any]]], *,
                      class_names: Sequence[str], method: str = "wbf",
                      iou_thr: float | None = None, weights: Sequence[float] | None = None,
                      max_det: int = 300) -> dict[str, Any]:
    """COCO metrics of fused detections on a validation split.

    ``members``: ``(model, loader, settings)`` per run: an NNX detector in eval mode, its
    validation loader (the same data set, letterboxed to the run's own image size, in the
    same order) and its postprocess keywords (:func:`detjax.eval.eval_settings`). Each run's
    detections (``xyxy`` original pixels) are fused per image as in :class:`EnsemblePredictor`
    and scored against the first member's ground truth.
    """
    from detjax.eval.evaluator import Evaluator
    from detjax.eval.validation import accumulate

    _check_method(method)
    if not members:
        raise ValueError("an ensemble needs at least one member")
    names = list(class_names)
    per_member = []
    for model, loader, settings in members:
        ev, _ = accumulate(model, loader, class_names=names, **settings)
        per_member.append(ev)
    counts = [len(ev) for ev in per_member]
    if len(set(counts)) > 1:
        raise ValueError(f"the members' loaders gave different image counts {counts}")
    fused = fuse_images([ev.detections for ev in per_member], method=method, iou_thr=iou_thr,
                        weights=weights, max_det=max_det)
    scored = Evaluator(num_classes=len(names), class_names=names)
    for (boxes, scores, labels), (gt_boxes, gt_labels, crowd) in zip(
            fused, per_member[0].ground_truths):
        scored.add_image(boxes, scores, labels, gt_boxes, gt_labels, crowd)
    return scored.compute()
