"""Max-IoU matching (Faster R-CNN, RetinaNet): torchvision ``Matcher``, mmdet ``MaxIoUAssigner``."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign._common import check_gt
from detjax.boxes import box_iou

NEGATIVE = -1  # torchvision Matcher.BELOW_LOW_THRESHOLD
IGNORED = -2  # torchvision Matcher.BETWEEN_THRESHOLDS


class Match(NamedTuple):
    """Per-anchor match: ``matches [A]`` int32, a ground-truth index ``>= 0`` for a
    positive, ``-1`` negative (background), ``-2`` ignored; ``iou [A]`` the IoU with the
    best valid ground truth (:func:`max_iou`; 0 when there is none) or with the matched
    one (:func:`~detjax.assign.atss`; 0 for background)."""

    matches: jax.Array
    iou: jax.Array


def match_quality(quality: ArrayLike, gt_mask: ArrayLike, *, pos_threshold: float = 0.7,
                  neg_threshold: float = 0.3, allow_low_quality_matches: bool = True,
                  low_quality: Literal["torchvision", "mmdet"] = "torchvision",
                  min_pos_iou: float = 0.0) -> Match:
    """Threshold a ``[M, A]`` quality (IoU) matrix of ground truth x anchors into a :class:`Match`.

    torchvision ``Matcher(pos_threshold, neg_threshold, allow_low_quality_matches)``:
    each anchor takes its best ground truth (first on ties); best < neg -> -1,
    neg <= best < pos -> -2. Low-quality matches: for every valid ground truth, each
    anchor whose quality equals that box's maximum (all ties) becomes positive;
    ``low_quality="torchvision"`` gives it the anchor's own best box, ``"mmdet"``
    (``MaxIoUAssigner`` with ``gt_max_assign_all=True, min_pos_iou=0``) the box whose
    maximum it attains, later boxes winning. Only boxes whose maximum is at least
    ``min_pos_iou`` (mmdet; 0 = every box, as torchvision) make low-quality matches.
    Padded boxes (``gt_mask`` False) never match.
    """
    quality = jnp.asarray(quality, jnp.float32)
    gt_mask = jnp.asarray(gt_mask, bool)
    if quality.ndim != 2 or gt_mask.shape != quality.shape[:1]:
        raise ValueError(f"quality must be [M, A] with gt_mask [M], got {quality.shape} and "
                         f"{gt_mask.shape}")
    if low_quality not in ("torchvision", "mmdet"):
        raise ValueError(f"low_quality must be 'torchvision' or 'mmdet', got {low_quality!r}")
    m, a = quality.shape
    if m == 0:
        return Match(jnp.full((a,), NEGATIVE, jnp.int32), jnp.zeros((a,), jnp.float32))
    q = jnp.where(gt_mask[:, None], quality, -jnp.inf)  # [M, A]
    best = q.max(0)  # [A]
    best_gt = jnp.argmax(q, 0).astype(jnp.int32)
    matches = jnp.where(best >= pos_threshold, best_gt,
                        jnp.where(best < neg_threshold, NEGATIVE, IGNORED))
    if allow_low_quality_matches:
        gt_best = q.max(1, keepdims=True)  # [M, 1]
        is_gt_best = (q == gt_best) & (gt_best >= min_pos_iou) & gt_mask[:, None]  # [M, A]
        if low_quality == "torchvision":
            matches = jnp.where(is_gt_best.any(0), best_gt, matches)
        else:
            last = m - 1 - jnp.argmax(is_gt_best[::-1], 0)
            matches = jnp.where(is_gt_best.any(0), last.astype(jnp.int32), matches)
    return Match(matches.astype(jnp.int32), jnp.where(jnp.isfinite(best), best, 0.0))


def max_iou(anchors: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
            pos_threshold: float = 0.7, neg_threshold: float = 0.3,
            allow_low_quality_matches: bool = True,
            low_quality: Literal["torchvision", "mmdet"] = "torchvision",
            min_pos_iou: float = 0.0) -> Match:
    """Max-IoU assignment of xyxy ``anchors [A, 4]`` to ``gt_boxes [M, 4]`` with ``gt_mask [M]``.

    IoU is :func:`detjax.box_iou`; thresholds as torchvision's RPN ``Matcher(0.7, 0.3,
    allow_low_quality_matches=True)``; see :func:`match_quality`. Use ``pos_threshold =
    neg_threshold = 0.5`` for RetinaNet / Fast R-CNN heads.

    >>> a = jnp.array([[0., 0., 10., 10.], [20., 20., 30., 30.], [0., 0., 9., 10.]])
    >>> max_iou(a, jnp.array([[0., 0., 10., 10.]]), jnp.array([True])).matches.tolist()
    [0, -1, 0]
    """
    anchors = jnp.asarray(anchors)
    if anchors.ndim != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchors must be [A, 4] xyxy, got {anchors.shape}")
    _, gt_boxes, gt_mask = check_gt(jnp.zeros(jnp.shape(gt_boxes)[:1], jnp.int32), gt_boxes,
                                    gt_mask)
    return match_quality(box_iou(gt_boxes, anchors), gt_mask, pos_threshold=pos_threshold,
                         neg_threshold=neg_threshold,
                         allow_low_quality_matches=allow_low_quality_matches,
                         low_quality=low_quality, min_pos_iou=min_pos_iou)
