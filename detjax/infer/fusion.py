"""Weighted boxes fusion (WBF) of several models' (or views') detections of one image.

Boxes are ``[n, 4]`` ``xyxy`` (any consistent unit; ensemble_boxes expects 0..1, this
function does not clip). Reference: Solovyev et al., "Weighted boxes fusion: Ensembling boxes
from different object detection models" (2021) and its implementation
``ensemble_boxes.weighted_boxes_fusion`` (same defaults ``iou_thr=0.55``, ``skip_box_thr=0``,
``conf_type='avg'``):

1. drop boxes with score ``< skip_box_thr``; score ``*= weight`` of its model;
2. per label, in descending score order (stable here), each box joins the fused box with the
   highest IoU if that IoU is ``> iou_thr`` (strict), else starts a new cluster; the fused
   box is the score-weighted mean of its members' coordinates, its score the mean (``avg``)
   or max (``max``) member score;
3. a fused score is rescaled by ``min(n_models, n_members) / sum(weights)`` (``avg``; with
   ``allows_overflow`` by ``n_members / sum(weights)``) or by ``1 / max(weights)`` (``max``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from detjax.boxes import box_iou

CONF_TYPES = ("avg", "max")


def _prefilter(boxes_list: Sequence[Any], scores_list: Sequence[Any],
               labels_list: Sequence[Any], weights: np.ndarray, skip_box_thr: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    boxes, scores, labels, w = [], [], [], []
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list)):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        s = np.asarray(s, np.float64).reshape(-1)
        lab = np.asarray(lab).reshape(-1).astype(np.int64)
        if not len(b) == len(s) == len(lab):
            raise ValueError(f"model {m}: boxes [{len(b)}, 4], scores [{len(s)}] and labels "
                             f"[{len(lab)}] must have the same length")
        keep = s >= skip_box_thr
        boxes.append(b[keep])
        scores.append(s[keep] * weights[m])
        labels.append(lab[keep])
        w.append(np.full(int(keep.sum()), weights[m]))
    return (np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels),
            np.concatenate(w))


def _fuse_label(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, conf_type: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one label sorted by score -> fused boxes, scores (before rescaling), sizes."""
    members: list[list[int]] = []
    fused = np.zeros((0, 4))
    fused_scores: list[float] = []
    for j in range(len(boxes)):
        best = -1
        if len(fused):
            iou = np.asarray(box_iou(fused, boxes[j:j + 1]))[:, 0]
            if iou.max() > iou_thr:
                best = int(np.argmax(iou))
        if best < 0:
            members.append([j])
            fused = np.concatenate([fused, boxes[j:j + 1]])
            fused_scores.append(scores[j])
            continue
        members[best].append(j)
        idx = members[best]
        w = scores[idx]
        fused[best] = (w[:, None] * boxes[idx]).sum(0) / w.sum()
        fused_scores[best] = w.mean() if conf_type == "avg" else w.max()
    return fused, np.asarray(fused_scores), np.asarray([len(m) for m in members])


def weighted_boxes_fusion(boxes_list: Sequence[Any], scores_list: Sequence[Any],
                          labels_list: Sequence[Any], *, weights: Sequence[float] | None = None,
                          iou_thr: float = 0.55, skip_box_thr: float = 0.0,
                          conf_type: str = "avg", allows_overflow: bool = False
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuses per-model detections of one image into ``(boxes [k, 4], scores [k], labels [k])``
    sorted by descending score (see the module docstring for the rules).

    Example::

        >>> b, s, l = weighted_boxes_fusion([[[0, 0, 10, 10]], [[1, 1, 11, 11]]],
        ...                                 [[0.9], [0.6]], [[0], [0]])
        >>> b.round(2).tolist(), s.round(2).tolist()
        ([[0.4, 0.4, 10.4, 10.4]], [0.75])
    """
    n_models = len(boxes_list)
    if not n_models == len(scores_list) == len(labels_list):
        raise ValueError(f"boxes_list, scores_list and labels_list must have one entry per model,"
                         f" got {len(boxes_list)}, {len(scores_list)}, {len(labels_list)}")
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type must be one of {CONF_TYPES}, got {conf_type!r}")
    weights_arr = np.ones(n_models) if weights is None else np.asarray(weights, np.float64)
    if weights_arr.shape != (n_models,):
        raise ValueError(f"weights must have one value per model ({n_models}), got "
                         f"{weights_arr.shape}")
    boxes, scores, labels, _ = _prefilter(boxes_list, scores_list, labels_list, weights_arr,
                                          skip_box_thr) if n_models else (np.zeros((0, 4)),) * 4
    out_b, out_s, out_l = [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)]
    for label in np.unique(labels):
        sel = np.flatnonzero(labels == label)
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        fb, fs, sizes = _fuse_label(boxes[sel], scores[sel], iou_thr, conf_type)
        if conf_type == "max":
            fs = fs / weights_arr.max()
        elif allows_overflow:
            fs = fs * sizes / weights_arr.sum()
        else:
            fs = fs * np.minimum(n_models, sizes) / weights_arr.sum()
        out_b.append(fb)
        out_s.append(fs)
        out_l.append(np.full(len(fb), label, np.int64))
    b, s, lab = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l)
    order = np.argsort(-s, kind="stable")
    return b[order], s[order], lab[order]
