"""Adaptive training sample selection (ATSS; Zhang et al. 2020, mmdet ``ATSSAssigner``)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign._common import check_gt, points_in_boxes
from detjax.assign.max_iou import NEGATIVE, Match
from detjax.boxes import box_iou


def _level_topk_nearest(dist: jax.Array, num_per_level: Sequence[int], k: int) -> jax.Array:
    """[M, A] bool: the k anchors of each level nearest each box centre (ties: lowest index)."""
    m, a = dist.shape
    chosen = jnp.zeros((m, a), bool)
    start = 0
    for n in num_per_level:
        kk = min(k, n)
        _, idx = jax.lax.top_k(-dist[:, start:start + n], kk)  # [M, kk]
        chosen = chosen.at[jnp.arange(m)[:, None], idx + start].set(True)
        start += n
    return chosen


def atss(anchors: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
         num_anchors_per_level: Sequence[int], topk: int = 9) -> Match:
    """ATSS assignment of xyxy ``anchors [A, 4]`` (levels concatenated) to ``gt_boxes [M, 4]``.

    mmdet ``ATSSAssigner(topk=9)``: per level, the ``topk`` anchors whose centres are
    nearest (L2) the box centre are candidates; the IoU threshold of a box is mean + std
    (unbiased; a single candidate gives torch's NaN, hence no positive) of its
    candidates' IoUs; candidates with IoU >= threshold whose centre is
    inside the box by more than 0.01 are positive; an anchor positive for several boxes
    takes the one of highest IoU (first on ties). Returns a :class:`Match` (``-1`` for
    background, never ``-2``). Ties in distance go to the lowest anchor index (torch's
    ``topk`` leaves them unspecified).
    """
    anchors = jnp.asarray(anchors)
    if anchors.ndim != 2 or anchors.shape[-1] != 4:
        raise ValueError(f"anchors must be [A, 4] xyxy, got {anchors.shape}")
    num_anchors_per_level = [int(n) for n in num_anchors_per_level]
    if sum(num_anchors_per_level) != anchors.shape[0]:
        raise ValueError(f"num_anchors_per_level {num_anchors_per_level} must sum to "
                         f"A = {anchors.shape[0]}")
    _, gt_boxes, gt_mask = check_gt(jnp.zeros(jnp.shape(gt_boxes)[:1], jnp.int32), gt_boxes,
                                    gt_mask)
    m, a = gt_boxes.shape[0], anchors.shape[0]
    if m == 0:
        return Match(jnp.full((a,), NEGATIVE, jnp.int32), jnp.zeros((a,), jnp.float32))
    iou = box_iou(gt_boxes, anchors)  # [M, A]
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2  # [A, 2]
    gt_centres = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
    dist = jnp.sqrt(((centres[None] - gt_centres[:, None]) ** 2).sum(-1))  # [M, A]
    cand = _level_topk_nearest(dist, num_anchors_per_level, topk)  # [M, A]
    n = cand.sum(1, keepdims=True)
    mean = jnp.where(cand, iou, 0).sum(1, keepdims=True) / n
    var = jnp.where(cand, (iou - mean) ** 2, 0).sum(1, keepdims=True) / jnp.maximum(n - 1, 1)
    thr = mean + jnp.sqrt(var)
    inside = points_in_boxes(centres, gt_boxes, eps=0.01)  # [M, A]
    pos = cand & (n > 1) & (iou >= thr) & inside & gt_mask[:, None]
    q = jnp.where(pos, iou, -jnp.inf)
    best = q.max(0)
    matches = jnp.where(jnp.isfinite(best), jnp.argmax(q, 0), NEGATIVE).astype(jnp.int32)
    return Match(matches, jnp.where(jnp.isfinite(best), best, 0.0))
