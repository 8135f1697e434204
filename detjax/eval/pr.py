"""Precision-recall and confidence curves from a ``coco_evaluate`` result.

The COCO arrays hold, per IoU threshold ``T``, recall point ``R`` (0:0.01:1), class ``K``, area
range ``A`` and ``maxDets`` ``M``: the interpolated precision ``precision [T, R, K, A, M]`` and
the score of the detection where that recall is reached ``scores [T, R, K, A, M]``; ``-1``
marks classes without ground truth. The curves here slice those arrays (pycocotools' layout,
the curves ultralytics plots as ``PR_curve.png`` / ``F1_curve.png``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from detjax.eval.coco import AREA_RANGES


class PRCurve(NamedTuple):
    """``recall [R]``; ``precision [K, R]`` (NaN rows for absent classes); ``mean [R]`` over the
    present classes; ``ap [K]`` (area under each row, -1 if absent); ``iou`` of the slice."""

    recall: np.ndarray
    precision: np.ndarray
    mean: np.ndarray
    ap: np.ndarray
    iou: float


def _slice(result: dict[str, Any], key: str, iou: float, area: str, max_det: int | None
           ) -> np.ndarray:
    thresholds = np.asarray(result["iou_thresholds"])
    t = np.flatnonzero(np.isclose(thresholds, iou))
    if not len(t):
        raise ValueError(f"iou={iou} is not one of the evaluated thresholds {thresholds}")
    names = [name for name, _ in AREA_RANGES]
    if area not in names:
        raise ValueError(f"area must be one of {names}, got {area!r}")
    max_dets = list(result["max_dets"])
    m = len(max_dets) - 1 if max_det is None else max_dets.index(max_det)
    return np.asarray(result[key])[t[0], :, :, names.index(area), m].T  # [K, R]


def pr_curve(result: dict[str, Any], *, iou: float = 0.5, area: str = "all",
             max_det: int | None = None) -> PRCurve:
    """Per-class interpolated PR curve at one IoU threshold (default 0.5, area all, the
    largest ``maxDets``) from ``coco_evaluate``'s ``precision`` array."""
    p = _slice(result, "precision", iou, area, max_det)
    absent = (p < 0).all(axis=1)
    p = np.where(absent[:, None], np.nan, p)
    mean = np.nanmean(p[~absent], axis=0) if (~absent).any() else np.zeros(p.shape[1])
    ap = np.where(absent, -1.0, np.nan_to_num(p).mean(axis=1))
    return PRCurve(np.asarray(result["recall_thresholds"]), p, mean, ap, float(iou))


def best_f1(curve: PRCurve) -> tuple[np.ndarray, np.ndarray]:
    """Best F1 = 2PR/(P+R) over the recall points of ``curve`` (COCO's interpolated
    precision at its 101 recall thresholds, as pycocotools' ``eval['precision']``).

    Returns (best F1 per class ``[K]``, NaN for classes absent from the ground truth; the
    recall where it is reached ``[K]``).
    """
    r = curve.recall[None, :]
    f1 = 2 * curve.precision * r / np.maximum(curve.precision + r, 1e-16)
    absent = np.isnan(f1).all(axis=1)
    idx = np.argmax(np.nan_to_num(f1, nan=-1.0), axis=1)
    best = np.where(absent, np.nan, np.nan_to_num(f1)[np.arange(len(f1)), idx])
    return best, curve.recall[idx]


def confidence_curves(result: dict[str, Any], *, iou: float = 0.5, area: str = "all",
                      max_det: int | None = None) -> dict[str, np.ndarray]:
    """Precision, recall and F1 as functions of the score threshold, per class.

    Each recall point ``r`` reached at score ``s`` with interpolated precision ``p`` is a
    sample ``(s, p, r)``; returns ``confidence [K, R]``, ``precision [K, R]``, ``recall [R]``
    and ``f1 [K, R]`` (NaN for absent classes and for recall points never reached).
    """
    p = _slice(result, "precision", iou, area, max_det)
    s = _slice(result, "scores", iou, area, max_det)
    r = np.asarray(result["recall_thresholds"])[None, :]
    reached = (p > 0) & (s > 0)
    p = np.where(reached, p, np.nan)
    f1 = 2 * p * r / np.maximum(p + r, 1e-16)
    return {"confidence": np.where(reached, s, np.nan), "precision": p,
            "recall": np.asarray(result["recall_thresholds"]), "f1": f1}


class F1Curve(NamedTuple):
    """F1 against the score threshold: ``confidence [G]`` (0..1), ``f1 [K, G]`` (NaN rows for
    absent classes), ``mean [G]`` over the present classes, ``iou`` of the slice."""

    confidence: np.ndarray
    f1: np.ndarray
    mean: np.ndarray
    iou: float


def f1_curve(result: dict[str, Any], *, iou: float = 0.5, area: str = "all",
             max_det: int | None = None, points: int = 1001) -> F1Curve:
    """F1 of every class at ``points`` score thresholds ``linspace(0, 1)`` (the x axis of
    ultralytics' ``F1_curve.png``), from :func:`confidence_curves`.

    A threshold ``t`` operates at the highest recall point reached with score ``>= t``; its F1
    is that point's, with COCO's interpolated precision; 0 where no recall point qualifies.
    The COCO arrays record nothing about detections scoring below the point where recall
    stops rising, so each class's curve is a step function that stays flat from there down to
    0: the informative threshold of a step is its upper end, the score where that recall is
    reached (what :func:`best_f1_confidence` reports).
    """
    curves = confidence_curves(result, iou=iou, area=area, max_det=max_det)
    absent = pr_curve(result, iou=iou, area=area, max_det=max_det).ap < 0  # [K]
    conf = np.arange(points) / (points - 1)  # k / n rounds to the nearest double: 0.7 is 0.7
    score = np.nan_to_num(curves["confidence"], nan=-1.0)  # [K, R]; never reached: -1
    ok = score[:, None, :] >= conf[None, :, None]  # [K, G, R]
    last = ok.shape[2] - 1 - np.argmax(ok[..., ::-1], axis=2)  # highest qualifying point
    f1 = np.take_along_axis(np.nan_to_num(curves["f1"]), last, axis=1)  # [K, G]
    f1 = np.where(ok.any(axis=2), f1, 0.0)
    f1[absent] = np.nan
    mean = f1[~absent].mean(axis=0) if (~absent).any() else np.zeros(points)
    return F1Curve(conf, f1, mean, float(iou))


def best_f1_confidence(curve: F1Curve) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(conf [K], f1 [K], conf_all, f1_all)``: per class (NaN if absent) and for the class
    mean, the highest score threshold of the grid where F1 is at its maximum (the upper end of
    the best step of :func:`f1_curve`), and that F1."""
    last = len(curve.confidence) - 1
    f1 = np.nan_to_num(curve.f1, nan=-1.0)
    idx = last - np.argmax(f1[:, ::-1], axis=1)  # the highest threshold among the best
    absent = np.isnan(curve.f1).all(axis=1)
    conf = np.where(absent, np.nan, curve.confidence[idx])
    best = np.where(absent, np.nan, f1[np.arange(len(f1)), idx])
    m = last - int(np.argmax(curve.mean[::-1]))
    return conf, best, float(curve.confidence[m]), float(curve.mean[m])
