"""Set matching for DETR-style heads (Carion et al. 2020) on ``optax.assignment``."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign._common import check_gt
from detjax.boxes import box_convert, generalized_box_iou


class SetMatch(NamedTuple):
    """Bipartite match of ``N`` queries and ``M`` padded targets: ``query_index [M]`` int32
    (the query matched to each target slot, -1 for padding), ``target_index [N]`` int32
    (the target of each query, -1 for unmatched), ``fg_mask [N]`` bool."""

    query_index: jax.Array
    target_index: jax.Array
    fg_mask: jax.Array


def detr_cost(pred_probs: ArrayLike, pred_boxes: ArrayLike, gt_labels: ArrayLike,
              gt_boxes: ArrayLike, *, cost_class: float = 1.0, cost_bbox: float = 5.0,
              cost_giou: float = 2.0) -> jax.Array:
    """DETR matching cost ``[N, M]`` for ``pred_probs [N, C]`` (softmax probabilities),
    ``pred_boxes [N, 4]`` and ``gt_boxes [M, 4]`` both normalised cxcywh, ``gt_labels [M]``.

    ``cost_class * -p[label] + cost_bbox * L1(cxcywh) + cost_giou * -GIoU(xyxy)``, as DETR's
    ``HungarianMatcher`` (weights 1 / 5 / 2).
    """
    probs = jnp.asarray(pred_probs, jnp.float32)
    pred = jnp.asarray(pred_boxes, jnp.float32)
    gt = jnp.asarray(gt_boxes, jnp.float32)
    labels = jnp.clip(jnp.asarray(gt_labels, jnp.int32), 0, probs.shape[-1] - 1)
    l1 = jnp.abs(pred[:, None, :] - gt[None, :, :]).sum(-1)  # [N, M]
    giou = generalized_box_iou(box_convert(pred, "cxcywh", "xyxy"),
                               box_convert(gt, "cxcywh", "xyxy"))
    return cost_bbox * l1 - cost_class * probs[:, labels] - cost_giou * giou


def linear_assignment(cost: ArrayLike, gt_mask: ArrayLike) -> SetMatch:
    """Minimum-cost matching of a ``[N, M]`` cost (queries x padded targets, ``N >= M``).

    Every valid target (``gt_mask [M]``) gets a distinct query; padded columns are set to
    a constant, which cannot change the optimum of the valid ones. Solved by
    ``optax.assignment.hungarian_algorithm`` (jittable); the matching equals
    ``scipy.optimize.linear_sum_assignment`` on the valid columns whenever the optimum is
    unique.
    """
    from optax.assignment import hungarian_algorithm

    cost = jnp.asarray(cost, jnp.float32)
    gt_mask = jnp.asarray(gt_mask, bool)
    if cost.ndim != 2 or gt_mask.shape != cost.shape[1:]:
        raise ValueError(f"cost must be [N, M] with gt_mask [M], got {cost.shape} and "
                         f"{gt_mask.shape}")
    n, m = cost.shape
    if n < m:
        raise ValueError(f"need at least as many queries as target slots, got N={n} < M={m}")
    if m == 0:
        return SetMatch(jnp.zeros((0,), jnp.int32), jnp.full((n,), -1, jnp.int32),
                        jnp.zeros((n,), bool))
    cost = jnp.where(gt_mask[None], jnp.nan_to_num(cost), 0.0)
    rows, cols = hungarian_algorithm(cost)  # min(N, M) = M pairs
    valid = gt_mask[cols]
    query_index = jnp.full((m,), -1, jnp.int32).at[cols].set(
        jnp.where(valid, rows, -1).astype(jnp.int32))
    target_index = jnp.full((n,), -1, jnp.int32).at[rows].set(
        jnp.where(valid, cols, -1).astype(jnp.int32))
    return SetMatch(query_index, target_index, target_index >= 0)


def hungarian(pred_probs: ArrayLike, pred_boxes: ArrayLike, gt_labels: ArrayLike,
              gt_boxes: ArrayLike, gt_mask: ArrayLike, *, cost_class: float = 1.0,
              cost_bbox: float = 5.0, cost_giou: float = 2.0) -> SetMatch:
    """DETR Hungarian matching of ``N`` queries (``pred_probs [N, C]``, ``pred_boxes [N, 4]``
    normalised cxcywh) to padded targets (``gt_labels [M]``, ``gt_boxes [M, 4]`` normalised
    cxcywh, ``gt_mask [M]``): :func:`detr_cost` then :func:`linear_assignment`."""
    gt_labels, gt_boxes, gt_mask = check_gt(gt_labels, gt_boxes, gt_mask)
    cost = detr_cost(pred_probs, pred_boxes, gt_labels, gt_boxes, cost_class=cost_class,
                     cost_bbox=cost_bbox, cost_giou=cost_giou)
    return linear_assignment(cost, gt_mask)
