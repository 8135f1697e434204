"""Task-aligned assignment (TOOD; ultralytics ``TaskAlignedAssigner``).

Where the time goes, and how it is kept small (batch 16 x 8400 anchors x 80 classes x 32
ground-truth slots; ``benchmarks/bench_assign.py``):

* Only the ``[M, A]`` work is dense: the candidate test, the pairwise CIoU, the class score
  of each box at each anchor (gathered, never an ``[A, C]`` pass) and the alignment metric,
  written as ``exp(alpha log s + beta log o)`` (one ``exp`` and two ``log`` instead of two
  ``pow``). Then one ``top_k`` per box.
* Everything after ``top_k`` runs on the ``M * topk`` candidate anchors: an anchor can only
  become positive if some box's top-k holds it, so the conflict step (highest overlap over
  all boxes), the per-box maxima and the normalised score are computed on ``[M, M * topk]``
  columns and scattered back to ``[A]``. No ``[M, A]`` mask, argmax or one-hot is built.
* The targets are returned per anchor (label and score, :func:`task_aligned_compact`); the
  ``[A, C]`` one-hot scores of :func:`task_aligned` are built only when asked for.
"""

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


class CompactTaskAlignedTargets(NamedTuple):
    """:class:`TaskAlignedTargets` with the soft one-hot ``[A, C]`` scores kept as one
    ``score [A]`` per anchor: ``scores == one_hot(labels, C) * score[:, None]``.

    labels ``[A]`` int32, boxes ``[A, 4]`` xyxy, score ``[A]`` float (0 on background),
    fg_mask ``[A]`` bool, gt_index ``[A]`` int32 (leading batch axis when batched).
    """

    labels: jax.Array
    boxes: jax.Array
    score: jax.Array
    fg_mask: jax.Array
    gt_index: jax.Array


def _enlarge_small(gt_boxes: jax.Array, gt_mask: jax.Array, min_size: float) -> jax.Array:
    """Sides shorter than ``min_size`` grow to it about the centre (ultralytics >= 8.4)."""
    c = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # the same float ops as xyxy2xywh/xywh2xyxy
    wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    wh = jnp.where((wh < min_size) & gt_mask[:, None], jnp.asarray(min_size, wh.dtype), wh)
    return jnp.concatenate([c - wh / 2, c + wh / 2], -1)


def _scaled_log(log_x: jax.Array, p: ArrayLike) -> jax.Array:
    """``log(x ** p)`` from ``log x``, with ``0 ** 0 = 1`` as ``torch.pow`` (no ``0 * -inf``)."""
    return jnp.where(jnp.asarray(p) == 0, 0.0, p * log_x)


def _log_sigmoid(x: jax.Array) -> jax.Array:
    """``log(sigmoid(x))``; -inf where float32 ``sigmoid`` underflows to 0, as the
    probabilities ultralytics raises to ``alpha``."""
    return -jnp.log1p(jnp.exp(-x))


def _check_inputs(pd_scores: jax.Array, pd_boxes: jax.Array, anchor_points: jax.Array,
                  topk: int) -> None:
    if pd_scores.ndim != 2:
        raise ValueError(f"pd_scores must be [A, C] probabilities, got {pd_scores.shape}")
    num_anchors = pd_scores.shape[0]
    if pd_boxes.shape != (num_anchors, 4):
        raise ValueError(f"pd_boxes must be [A, 4] = [{num_anchors}, 4], got {pd_boxes.shape}")
    if anchor_points.shape != (num_anchors, 2):
        raise ValueError(
            f"anchor_points must be [A, 2] = [{num_anchors}, 2], got {anchor_points.shape}")
    if topk < 1 or topk > num_anchors:
        raise ValueError(f"topk must be in [1, A={num_anchors}], got {topk}")


def _assign(pd_scores: jax.Array, pd_boxes: jax.Array, anchor_points: jax.Array,
            gt_labels: jax.Array, gt_boxes: jax.Array, gt_mask: jax.Array, *, topk: int,
            alpha: ArrayLike, beta: ArrayLike, eps: float, topk2: int | None,
            min_gt_size: ArrayLike | None, logits: bool) -> CompactTaskAlignedTargets:
    """The assignment of ``pd_scores [A, C]`` (float32; logits if ``logits``) and ``pd_boxes
    [A, 4]``; inputs already checked, ``M >= 1``."""
    num_anchors = pd_scores.shape[0]
    num_gt = gt_boxes.shape[0]
    cls = jnp.clip(gt_labels, 0, pd_scores.shape[-1] - 1)
    cand_boxes = gt_boxes if min_gt_size is None else _enlarge_small(gt_boxes, gt_mask, min_gt_size)
    valid = points_in_boxes(anchor_points, cand_boxes, eps=1e-9) & gt_mask[:, None]  # [M, A]
    ciou = aligned_complete_box_iou(gt_boxes[:, None, :], pd_boxes[None, :, :],
                                    eps=1e-7, convention="ultralytics")  # [M, A]
    overlaps = jnp.where(valid, jnp.maximum(ciou, 0), 0).astype(pd_scores.dtype)
    # the class score of each box at every anchor: gathered row-wise ([A, M]), no [A, C] pass
    scores = jnp.take(pd_scores, cls, axis=1).T  # [M, A]
    log_scores = _log_sigmoid(scores) if logits else jnp.log(scores)
    # score^alpha * overlap^beta as exp(alpha log s + beta log o): one exp, not two pow
    log_align = _scaled_log(log_scores, alpha) + _scaled_log(jnp.log(overlaps), beta)
    align = jnp.where(valid, jnp.exp(log_align), 0)  # [M, A]
    _, top = jax.lax.top_k(align, topk)  # [M, k]; ties: lowest anchor index

    # Only anchors in some box's top-k can be positive: the rest runs on those K = M * k
    # columns (repeats allowed) instead of [M, A] masks.
    cols = top.reshape(-1)  # [K]
    top_valid = jnp.take_along_axis(valid, top, axis=1)  # [M, k]
    # pos [M, K]: box m holds column e's anchor in its top-k and the anchor is a candidate of m
    pos = ((cols[None, None, :] == top[:, :, None]) & top_valid[:, :, None]).any(1)
    ov_cols = jnp.take(overlaps, cols, axis=1)  # [M, K]
    al_cols = jnp.take(align, cols, axis=1)  # [M, K]
    # an anchor in several boxes' top-k goes to the box of highest overlap over all boxes
    multi = pos.sum(0) > 1  # [K]
    best = jnp.argmax(ov_cols, 0)  # [K]; first on ties, as ultralytics
    pos = jnp.where(multi[None], jnp.arange(num_gt)[:, None] == best[None], pos)
    if topk2 is not None and topk2 != topk:
        pos = pos & _in_topk2(al_cols * pos, cols, num_anchors, topk2)

    al_pos, ov_pos = al_cols * pos, ov_cols * pos  # [M, K]
    norm = (al_pos * ov_pos.max(1, keepdims=True)
            / (al_pos.max(1, keepdims=True) + eps)).max(0)  # [K]
    fg_cols = pos.any(0)
    gt_cols = jnp.argmax(pos, 0).astype(jnp.int32)
    # repeated columns carry identical values, so the scatter order does not matter
    fg_mask = jnp.zeros(num_anchors, bool).at[cols].set(fg_cols)
    gt_index = jnp.zeros(num_anchors, jnp.int32).at[cols].set(gt_cols)
    score = jnp.zeros(num_anchors, pd_scores.dtype).at[cols].set(jnp.where(fg_cols, norm, 0))
    labels = jnp.maximum(gt_labels[gt_index], 0).astype(jnp.int32)
    return CompactTaskAlignedTargets(labels, gt_boxes[gt_index], score, fg_mask, gt_index)


def _in_topk2(values: jax.Array, cols: jax.Array, num_anchors: int, k: int) -> jax.Array:
    """``[M, K]``: column e's anchor is among the ``k`` largest of its box's row of
    ``values`` spread over all ``A`` anchors (zeros elsewhere; ties: lowest anchor index)."""
    num_gt = values.shape[0]
    rows = jnp.broadcast_to(jnp.arange(num_gt)[:, None], values.shape)
    dense = jnp.zeros((num_gt, num_anchors), values.dtype).at[rows, cols[None]].max(values)
    _, top = jax.lax.top_k(dense, k)  # [M, k]
    return (top[:, :, None] == cols[None, None, :]).any(1)


def _prepare(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
             gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, topk: int):
    pd_scores = jax.lax.stop_gradient(jnp.asarray(pd_scores))  # targets, not a loss term
    pd_boxes = jax.lax.stop_gradient(jnp.asarray(pd_boxes))
    anchor_points = jnp.asarray(anchor_points)
    _check_inputs(pd_scores, pd_boxes, anchor_points, topk)
    gt_labels, gt_boxes, gt_mask = check_gt(gt_labels, gt_boxes, gt_mask)
    return pd_scores, pd_boxes, anchor_points, gt_labels, gt_boxes, gt_mask


def _empty(num_anchors: int, num_classes: int, dtype, box_dtype) -> CompactTaskAlignedTargets:
    return CompactTaskAlignedTargets(
        labels=jnp.full((num_anchors,), num_classes, jnp.int32),
        boxes=jnp.zeros((num_anchors, 4), box_dtype),
        score=jnp.zeros((num_anchors,), dtype),
        fg_mask=jnp.zeros((num_anchors,), bool),
        gt_index=jnp.zeros((num_anchors,), jnp.int32))


def task_aligned_compact(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
                         gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
                         topk: int = 10, alpha: ArrayLike = 0.5, beta: ArrayLike = 6.0,
                         eps: float = 1e-9, topk2: int | None = None,
                         min_gt_size: ArrayLike | None = None,
                         logits: bool = False) -> CompactTaskAlignedTargets:
    """:func:`task_aligned` with the target scores as one ``score [A]`` per anchor.

    Same inputs and assignment as :func:`task_aligned` (``pd_scores [A, C]``, ``pd_boxes
    [A, 4]`` xyxy pixels, ``anchor_points [A, 2]`` pixels, ``gt_labels [M]``, ``gt_boxes
    [M, 4]`` xyxy pixels, ``gt_mask [M]``); returns :class:`CompactTaskAlignedTargets`,
    whose ``one_hot(labels, C) * score[:, None]`` equals ``task_aligned(...).scores``.
    With ``logits=True`` ``pd_scores`` are class logits and the sigmoid is taken only of
    the ``M x A`` gathered values (a detector head's raw output, without an ``[A, C]``
    pass). ``alpha``, ``beta`` (>= 0) and ``min_gt_size`` may be traced.

    >>> pts = jnp.array([[4., 4.], [12., 4.]])
    >>> t = task_aligned_compact(jnp.full((2, 3), .5), jnp.array([[0., 0., 8., 8.]] * 2), pts,
    ...                          jnp.array([1]), jnp.array([[0., 0., 8., 8.]]), jnp.array([True]))
    >>> t.fg_mask.tolist(), t.labels.tolist(), t.score.tolist()
    ([True, False], [1, 1], [1.0, 0.0])
    """
    pd_scores, pd_boxes, anchor_points, gt_labels, gt_boxes, gt_mask = _prepare(
        pd_scores, pd_boxes, anchor_points, gt_labels, gt_boxes, gt_mask, topk)
    num_anchors, num_classes = pd_scores.shape
    f32 = jnp.promote_types(pd_scores.dtype, jnp.float32)
    if gt_boxes.shape[0] == 0:
        return _empty(num_anchors, num_classes, f32, gt_boxes.dtype)
    return _assign(pd_scores.astype(f32), pd_boxes, anchor_points, gt_labels, gt_boxes,
                   gt_mask, topk=topk, alpha=alpha, beta=beta, eps=eps, topk2=topk2,
                   min_gt_size=min_gt_size, logits=logits)


def task_aligned(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
                 gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
                 topk: int = 10, alpha: ArrayLike = 0.5, beta: ArrayLike = 6.0,
                 eps: float = 1e-9, topk2: int | None = None,
                 min_gt_size: ArrayLike | None = None) -> TaskAlignedTargets:
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

    ``align`` is computed as ``exp(alpha log score + beta log overlap)`` in float32, within
    a few ulp of the two powers. Ties in ``top_k`` go to the lowest anchor index; torch's
    CPU ``topk`` leaves the order of equal values unspecified, so the two can differ only
    when a box has fewer than ``topk`` candidates of non-zero alignment. With ``M == 0``
    every anchor is background with label ``C``, as ultralytics.
    :func:`task_aligned_compact` returns the same targets without the ``[A, C]`` scores.

    >>> pts = jnp.array([[4., 4.], [12., 4.]])
    >>> t = task_aligned(jnp.full((2, 3), .5), jnp.array([[0., 0., 8., 8.]] * 2), pts,
    ...                  jnp.array([1]), jnp.array([[0., 0., 8., 8.]]), jnp.array([True]))
    >>> t.fg_mask.tolist(), t.labels.tolist()
    ([True, False], [1, 1])
    """
    out = task_aligned_compact(pd_scores, pd_boxes, anchor_points, gt_labels, gt_boxes, gt_mask,
                               topk=topk, alpha=alpha, beta=beta, eps=eps, topk2=topk2,
                               min_gt_size=min_gt_size)
    num_classes = jnp.shape(pd_scores)[-1]
    scores = jax.nn.one_hot(out.labels, num_classes, dtype=out.score.dtype) * out.score[:, None]
    return TaskAlignedTargets(out.labels, out.boxes, scores, out.fg_mask, out.gt_index)


def batched_task_aligned(pd_scores: ArrayLike, pd_boxes: ArrayLike, anchor_points: ArrayLike,
                         gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike,
                         **kwargs) -> TaskAlignedTargets:
    """:func:`task_aligned` over a batch (ultralytics ``TaskAlignedAssigner.forward``, which
    takes the batch the same way) -> targets with a leading ``B`` axis (``jax.vmap``).

    Args:
      pd_scores: ``[B, A, C]`` predicted class probabilities (after the sigmoid).
      pd_boxes: ``[B, A, 4]`` predicted boxes, xyxy in the same units as ``anchor_points``.
      anchor_points: ``[A, 2]`` anchor centres (x, y), shared by the batch.
      gt_labels: ``[B, M]`` int class ids; ``gt_boxes``: ``[B, M, 4]`` xyxy;
        ``gt_mask``: ``[B, M]`` bool, real (unpadded) ground truths.
      **kwargs: the keyword arguments of :func:`task_aligned` (``topk``, ``alpha``, ``beta``, ...).
    """
    fn = lambda s, b, lab, g, m: task_aligned(s, b, anchor_points, lab, g, m, **kwargs)
    return jax.vmap(fn)(pd_scores, pd_boxes, gt_labels, gt_boxes, gt_mask)
