"""Task-aligned assignment (TOOD; ultralytics ``TaskAlignedAssigner``)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign._common import check_gt, points_in_boxes
from detjax.boxes import aligned_complete_box_iou


class TaskAlignedTargets(NamedTuple):
    """Per-anchor targets of :func:`task_aligned` (leading batch axis when batched).

    labels ``[A]`` int32 class of the assigned box (ultralytics fills background anchors
    with the label of box 0, clamped at 0; use ``fg_mask``); boxes ``[A, 4]`` xyxy of
    the assigned box; scores ``[A, C]`` soft one-hot targets (normalised alignment);
    fg_mask ``[A]`` bool; gt_index ``[A]`` int32 index into the padded ground truth.
    """

    labels: jax.Array
    boxes: jax.Array
    scores: jax.Array
    fg_mask: jax.Array
    gt_index: jax.Array


def _enlarge_small(gt_boxes: jax.Array, gt_mask: jax.Array, min_size: float) -> jax.Array:
    """Sides shorter than ``min_size`` grow to it about the centre (ultralytics >= 8.4)."""
    c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # the same float ops as xyxy2xywh/xywh2xyxy
    wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    wh = jnp.where((wh < min_size) & gt_mask[:, None], jnp.asarray(min_size, wh.dtype), wh)
    return jnp.concatenate([c - wh / 2, c + wh / 2], -1)


def _topk_mask(metric: jax.Array, k: int) -> jax.Array:
    """[M, A] bool, True at the k largest entries of each row (ties: lowest index)."""
    m, a = metric.shape
    _, idx = jax.lax.top_k(metric, k)  # [M, k]
    return jnp.zeros((m, a), bool).at[jnp.arange(m)[:, None], idx].set(True)


def _empty_targets(num_anchors: int, num_classes: int, box_dtype) -> TaskAlignedTargets:
    return TaskAlignedTargets(
        labels=jnp.full((num_anchors,), num_classes, jnp.int32),
        boxes=jnp.zeros((num_anchors, 4), box_dtype),
        scores=jnp.zeros((num_anchors, num_classes), jnp.float32),
        fg_mask=jnp.zeros((num_anchors,), bool),
        gt_index=jnp.zeros((num_anchors,), jnp.int32))


def task_aligned(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
                 gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
                 topk: int = 10, alpha: float = 0.5, beta: float = 6.0, eps: float = 1e-9,
                 topk2: int | None = None,
                 min_gt_size: float | None = None) -> TaskAlignedTargets:
    """Task-aligned targets for one image: ``pd_scores [A, C]`` probabilities, ``pd_boxes [A, 4]``
    xyxy pixels, ``anchor_points [A, 2]`` pixels, padded ground truth ``gt_labels [M]`` int,
    ``gt_boxes [M, 4]`` xyxy pixels, ``gt_mask [M]`` bool -> :class:`TaskAlignedTargets`.

    Reference: ultralytics ``TaskAlignedAssigner`` as ``v8DetectionLoss`` configures it
    (``topk=10, alpha=0.5, beta=6.0``), TOOD (Feng et al. 2021). For each valid box:
    candidates are anchors strictly inside it (every side distance > 1e-9); overlap is the
    ultralytics CIoU of box and prediction clamped at 0; ``align = score[label]^alpha *
    overlap^beta``; the ``topk`` candidates of highest ``align`` are positive. An anchor
    positive for several boxes goes to the box of highest overlap over *all* boxes (first
    on ties, as ultralytics). Target scores are the one-hot label times
    ``max_over_boxes(align * max_overlap_of_box / (max_align_of_box + eps))``.

    ``topk2`` (ultralytics ``topk2``) keeps, after the conflict step, only the ``topk2``
    anchors of highest alignment per box. ``min_gt_size`` enlarges valid boxes whose side
    is below it to that size for the candidate test only, as ultralytics >= 8.4
    ``select_candidates_in_gts`` (where ``v8DetectionLoss`` passes ``stride_val =
    strides[1]``, i.e. 16); ``None`` is the classic behaviour.

    Ties in ``top_k`` go to the lowest anchor index; torch's CPU ``topk`` leaves the
    order of equal values unspecified, so the two can differ only when a box has fewer
    than ``topk`` candidates of non-zero alignment. With ``M == 0`` every anchor is
    background with label ``C``, as ultralytics.

    >>> pts = jnp.array([[4., 4.], [12., 4.]])
    >>> t = task_aligned(jnp.full((2, 3), .5), jnp.array([[0., 0., 8., 8.]] * 2), pts,
    ...                  jnp.array([1]), jnp.array([[0., 0., 8., 8.]]), jnp.array([True]))
    >>> t.fg_mask.tolist(), t.labels.tolist()
    ([True, False], [1, 1])
    """
    pd_scores = jax.lax.stop_gradient(jnp.asarray(pd_scores))  # targets, not a loss term
    pd_boxes = jax.lax.stop_gradient(jnp.asarray(pd_boxes))
    anchor_points = jnp.asarray(anchor_points)
    if pd_scores.ndim != 2:
        raise ValueError(f"pd_scores must be [A, C] probabilities, got {pd_scores.shape}")
    num_anchors, num_classes = pd_scores.shape
    if pd_boxes.shape != (num_anchors, 4):
        raise ValueError(f"pd_boxes must be [A, 4] = [{num_anchors}, 4], got {pd_boxes.shape}")
    if anchor_points.shape != (num_anchors, 2):
        raise ValueError(
            f"anchor_points must be [A, 2] = [{num_anchors}, 2], got {anchor_points.shape}")
    gt_labels, gt_boxes, gt_mask = check_gt(gt_labels, gt_boxes, gt_mask)
    if topk < 1 or topk > num_anchors:
        raise ValueError(f"topk must be in [1, A={num_anchors}], got {topk}")
    num_gt = gt_boxes.shape[0]
    if num_gt == 0:
        return _empty_targets(num_anchors, num_classes, gt_boxes.dtype)

    f32 = jnp.promote_types(pd_scores.dtype, jnp.float32)
    cand_boxes = gt_boxes if min_gt_size is None else _enlarge_small(gt_boxes, gt_mask, min_gt_size)
    in_gts = points_in_boxes(anchor_points, cand_boxes, eps=1e-9)  # [M, A]
    valid = in_gts & gt_mask[:, None]  # [M, A]
    ciou = aligned_complete_box_iou(gt_boxes[:, None, :], pd_boxes[None, :, :],
                                    eps=1e-7, convention="ultralytics")  # [M, A]
    overlaps = jnp.where(valid, jnp.maximum(ciou, 0), 0).astype(f32)
    cls = jnp.clip(gt_labels, 0, num_classes - 1)
    box_scores = jnp.take(pd_scores.astype(f32).T, cls, axis=0)  # [M, A]
    align = jnp.where(valid, box_scores**alpha * overlaps**beta, 0)

    mask_pos = _topk_mask(align, topk) & valid  # [M, A]
    multi = mask_pos.sum(0) > 1  # [A]
    best = jax.nn.one_hot(jnp.argmax(overlaps, 0), num_gt, axis=0, dtype=bool)  # [M, A]
    mask_pos = jnp.where(multi[None], best, mask_pos)
    if topk2 is not None and topk2 != topk:
        mask_pos = mask_pos & _topk_mask(align * mask_pos, topk2)

    fg_mask = mask_pos.any(0)
    gt_index = jnp.argmax(mask_pos, 0).astype(jnp.int32)
    labels = jnp.maximum(gt_labels[gt_index], 0).astype(jnp.int32)
    boxes = gt_boxes[gt_index]

    align = align * mask_pos
    overlaps = overlaps * mask_pos
    norm = (align * overlaps.max(1, keepdims=True)
            / (align.max(1, keepdims=True) + eps)).max(0)  # [A]
    scores = jax.nn.one_hot(labels, num_classes, dtype=f32) * (fg_mask * norm)[:, None]
    return TaskAlignedTargets(labels, boxes, scores, fg_mask, gt_index)


def batched_task_aligned(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
                         gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike,
                         **kwargs) -> TaskAlignedTargets:
    """:func:`task_aligned` over a batch: ``pd_scores [B, A, C]``, ``pd_boxes [B, A, 4]``,
    ``anchor_points [A, 2]`` (shared), ``gt_labels [B, M]``, ``gt_boxes [B, M, 4]``,
    ``gt_mask [B, M]`` -> targets with a leading ``B`` axis (``jax.vmap``)."""
    fn = lambda s, b, lab, g, m: task_aligned(s, b, anchor_points, lab, g, m, **kwargs)
    return jax.vmap(fn)(pd_scores, pd_boxes, gt_labels, gt_boxes, gt_mask)
