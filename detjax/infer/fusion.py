"""Ensembles: fusing several models' (or TTA views') detections of one image by weighted
boxes fusion (WBF), class-aware NMS or soft-NMS (:func:`fuse_detections`, per image list
:func:`fuse_images`).

Boxes are ``[n, 4]`` ``xyxy`` (any consistent unit; ensemble_boxes expects 0..1, these
functions do not clip). Boxes of zero area are dropped, as ensemble_boxes does.

WBF reference: Solovyev et al., "Weighted boxes fusion: Ensembling boxes from different
object detection models" (2021) and its implementation
``ensemble_boxes.weighted_boxes_fusion`` (same defaults ``iou_thr=0.55``, ``skip_box_thr=0``,
``conf_type='avg'``):

1. drop boxes with score ``< skip_box_thr``; score ``*= weight`` of its model;
2. per label, in descending score order (stable here), each box joins the fused box with the
   highest IoU if that IoU is ``> iou_thr`` (strict), else starts a new cluster; the fused
   box is the score-weighted mean of its members' coordinates, its score the mean (``avg``
   and the two model-aware types) or max (``max``) member score;
3. a fused score is rescaled by ``min(n_models, n_members) / sum(weights)`` (``avg``; with
   ``allows_overflow`` by ``n_members / sum(weights)``), by ``1 / max(weights)`` (``max``),
   by ``n_members / w_members * w_models_present / sum(weights)`` (``box_and_model_avg``) or
   by ``n_members / (w_members + w_models_absent)`` (``absent_model_aware_avg``), where
   ``w_members`` sums the weights of the member boxes and ``w_models_*`` the weights of the
   models with (without) a box in the cluster.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")
FUSION_METHODS = ("wbf", "nms", "soft")


def _prefilter(boxes_list: Sequence[Any], scores_list: Sequence[Any],
               labels_list: Sequence[Any], weights: np.ndarray, skip_box_thr: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated boxes, weighted scores, labels and model index of every kept box."""
    boxes, scores, labels, model = [], [], [], []
    for m, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list)):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        s = np.asarray(s, np.float64).reshape(-1)
        lab = np.asarray(lab).reshape(-1).astype(np.int64)
        if not len(b) == len(s) == len(lab):
            raise ValueError(f"model {m}: boxes [{len(b)}, 4], scores [{len(s)}] and labels "
                             f"[{len(lab)}] must have the same length")
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        keep = (s >= skip_box_thr) & (area != 0)
        boxes.append(b[keep])
        scores.append(s[keep] * weights[m])
        labels.append(lab[keep])
        model.append(np.full(int(keep.sum()), m))
    return (np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels),
            np.concatenate(model))


def _iou_with(boxes: np.ndarray, box: np.ndarray) -> np.ndarray:
    """IoU of ``boxes [F, 4]`` with one ``box [4]`` (``xyxy``, float64, no eps: positive areas
    only). In NumPy because WBF asks once per input box: an eager ``box_iou`` call per box
    cost ~10 ms of dispatch, seconds for an image with 300 detections per model."""
    lt = np.maximum(boxes[:, :2], box[:2])
    rb = np.minimum(boxes[:, 2:], box[2:])
    inter = np.prod(np.clip(rb - lt, 0.0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + np.prod(box[2:] - box[:2]) - inter)


def _fuse_label(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, conf_type: str
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes of one label sorted by score -> fused boxes, scores (before rescaling), sizes."""
    members: list[list[int]] = []
    fused = np.zeros((0, 4))
    fused_scores: list[float] = []
    for j in range(len(boxes)):
        best = -1
        if len(fused):
            iou = _iou_with(fused, boxes[j])
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
        fused_scores[best] = w.max() if conf_type == "max" else w.mean()
    return fused, np.asarray(fused_scores), members


def _rescale(fused_scores: np.ndarray, cluster_models: list[np.ndarray], weights: np.ndarray,
             conf_type: str, allows_overflow: bool) -> np.ndarray:
    """Step 3 of the module docstring; ``cluster_models[k]`` holds the model index of each
    member of cluster ``k``."""
    sizes = np.asarray([len(m) for m in cluster_models])
    if conf_type == "max":
        return fused_scores / weights.max()
    if conf_type == "avg":
        n = sizes if allows_overflow else np.minimum(len(weights), sizes)
        return fused_scores * n / weights.sum()
    w_members = np.asarray([weights[m].sum() for m in cluster_models])
    present = np.asarray([weights[np.unique(m)].sum() for m in cluster_models])
    if conf_type == "box_and_model_avg":
        return fused_scores * sizes / w_members * present / weights.sum()
    return fused_scores * sizes / (w_members + weights.sum() - present)


def weighted_boxes_fusion(boxes_list: Sequence[Any], scores_list: Sequence[Any],
                          labels_list: Sequence[Any], *, weights: Sequence[float] | None = None,
                          iou_thr: float = 0.55, skip_box_thr: float = 0.0,
                          conf_type: str = "avg", allows_overflow: bool = False
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuses per-model detections of one image into ``(boxes [k, 4], scores [k], labels [k])``
    sorted by descending score (see the module docstring for the rules). Inputs: one
    ``boxes [n_m, 4]`` xyxy, ``scores [n_m]``, ``labels [n_m]`` per model.

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
    boxes, scores, labels, model = _prefilter(
        boxes_list, scores_list, labels_list, weights_arr, skip_box_thr
    ) if n_models else (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64),
                        np.zeros(0, np.int64))
    out_b, out_s, out_l = [np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0, np.int64)]
    for label in np.unique(labels):
        sel = np.flatnonzero(labels == label)
        sel = sel[np.argsort(-scores[sel], kind="stable")]
        fb, fs, members = _fuse_label(boxes[sel], scores[sel], iou_thr, conf_type)
        cluster_models = [model[sel][m] for m in members]
        fs = _rescale(fs, cluster_models, weights_arr, conf_type, allows_overflow)
        out_b.append(fb)
        out_s.append(fs)
        out_l.append(np.full(len(fb), label, np.int64))
    b, s, lab = np.concatenate(out_b), np.concatenate(out_s), np.concatenate(out_l)
    order = np.argsort(-s, kind="stable")
    return b[order], s[order], lab[order]


def _soft_keep(boxes: np.ndarray, scores: np.ndarray, *, iou_thr: float, sigma: float,
               min_score: float) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian soft-NMS (:func:`detjax.soft_nms`) of one label's boxes: (kept indices,
    decayed scores), inputs padded to a power of two with inert ``-inf`` scores."""
    n = len(scores)
    size = 1 << int(np.ceil(np.log2(max(n, 2))))
    pb = np.zeros((size, 4), np.float32)
    pb[:n] = boxes
    ps = np.full(size, -np.inf, np.float32)
    ps[:n] = scores
    res = _jitted_soft_nms()(pb, ps, np.float32(iou_thr), np.float32(sigma),
                             np.float32(min_score), size)
    valid = np.asarray(res.valid)
    return np.asarray(res.indices)[valid].astype(np.int64), np.asarray(res.scores)[valid]


@functools.cache
def _jitted_soft_nms():
    import jax

    from detjax.nms import soft_nms

    return jax.jit(lambda b, s, t, sg, ms, m: soft_nms(b, s, method="gaussian", sigma=sg,
                                                       iou_threshold=t, min_score=ms,
                                                       max_output=m), static_argnums=5)


def fuse_detections(boxes_list: Sequence[Any], scores_list: Sequence[Any],
                    labels_list: Sequence[Any], *, method: str = "wbf",
                    weights: Sequence[float] | None = None, iou_thr: float | None = None,
                    skip_box_thr: float = 0.0, conf_type: str = "avg",
                    soft_sigma: float = 0.5, soft_min_score: float = 0.001,
                    max_det: int | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fuses one image's detections from several models or TTA views: one ``boxes [n_m, 4]``
    xyxy, ``scores [n_m]``, ``labels [n_m]`` per model -> ``(boxes [k, 4], scores [k],
    labels [k])`` in descending score order, at most ``max_det`` (all when None).

    ``method`` (the ``ensemble_boxes`` functions of the same purpose and defaults):
    ``wbf``: :func:`weighted_boxes_fusion` (``iou_thr`` 0.55, ``conf_type``);
    ``nms``: every box pooled, class-aware greedy NMS, strict ``IoU > iou_thr`` (0.5;
    ``ensemble_boxes.nms``); ``soft``: pooled, class-aware Gaussian soft-NMS
    (:func:`detjax.soft_nms`, ``sigma=soft_sigma``, ``min_score=soft_min_score``) with its
    decayed scores. For ``nms`` and ``soft``, given ``weights`` scale each model's scores by
    ``w_m / sum(w)`` as in ensemble_boxes, and ``skip_box_thr`` drops low scores first.
    """
    if method not in FUSION_METHODS:
        raise ValueError(f"method must be one of {FUSION_METHODS}, got {method!r}")
    if max_det is not None and max_det < 0:
        raise ValueError(f"max_det must be >= 0 or None, got {max_det}")
    if method == "wbf":
        b, s, lab = weighted_boxes_fusion(
            boxes_list, scores_list, labels_list, weights=weights,
            iou_thr=0.55 if iou_thr is None else iou_thr, skip_box_thr=skip_box_thr,
            conf_type=conf_type)
        return b[:max_det], s[:max_det], lab[:max_det]
    n_models = len(boxes_list)
    if not n_models == len(scores_list) == len(labels_list):
        raise ValueError(f"boxes_list, scores_list and labels_list must have one entry per model,"
                         f" got {len(boxes_list)}, {len(scores_list)}, {len(labels_list)}")
    scale = np.ones(n_models) if weights is None else np.asarray(weights, np.float64)
    if scale.shape != (n_models,):
        raise ValueError(f"weights must have one value per model ({n_models}), got {scale.shape}")
    if weights is not None:
        scale = scale / scale.sum()
    if not n_models:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    boxes, scores, labels, _ = _prefilter(boxes_list, scores_list, labels_list, scale,
                                          skip_box_thr)
    iou_thr = 0.5 if iou_thr is None else iou_thr
    if method == "nms":
        from detjax.infer.sliced import merge_nms

        keep = merge_nms(boxes, scores, labels, iou_thres=iou_thr)
        out_b, out_s, out_l = boxes[keep], scores[keep], labels[keep]
    else:
        parts = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))]
        for label in np.unique(labels):
            sel = np.flatnonzero(labels == label)
            idx, decayed = _soft_keep(boxes[sel], scores[sel], iou_thr=iou_thr,
                                      sigma=soft_sigma, min_score=soft_min_score)
            parts.append((boxes[sel][idx], decayed.astype(np.float64),
                          np.full(len(idx), label, np.int64)))
        out_b, out_s, out_l = (np.concatenate(x) for x in zip(*parts))
        order = np.argsort(-out_s, kind="stable")
        out_b, out_s, out_l = out_b[order], out_s[order], out_l[order]
    return out_b[:max_det], out_s[:max_det], out_l[:max_det]


def fuse_images(per_model: Sequence[Sequence[tuple[Any, Any, Any]]], **kwargs: Any
                ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fuses a list over models (or TTA views) of per-image ``(boxes [n, 4] xyxy, scores [n],
    labels [n])`` lists, all over the same images, image by image with
    :func:`fuse_detections` (``kwargs`` are its options) -> one fused triple per image."""
    counts = {len(images) for images in per_model}
    if len(counts) > 1:
        raise ValueError(f"every model must predict the same images, got image counts "
                         f"{[len(images) for images in per_model]}")
    num_images = counts.pop() if counts else 0
    return [fuse_detections(*(list(x) for x in zip(*(images[i] for images in per_model))),
                            **kwargs) for i in range(num_images)]
