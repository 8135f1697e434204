"""The YOLOv8 detection loss (ultralytics ``v8DetectionLoss``) as one jittable function."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign import task_aligned
from detjax.boxes import aligned_complete_box_iou
from detjax.coders import bbox2dist, dfl_decode, dist2bbox
from detjax.losses._common import as_float, bce_with_logits
from detjax.losses.distribution import distribution_focal_loss

__all__ = ["yolo_box_loss", "yolo_detection_loss"]


def _second_smallest_stride(stride_tensor: jax.Array) -> jax.Array:
    """ultralytics ``stride_val``: ``strides[1]`` with several levels, else ``strides[0]``."""
    s = stride_tensor.reshape(-1)
    smallest = s.min()
    nxt = jnp.where(s > smallest, s, jnp.inf).min()
    return jnp.where(jnp.isfinite(nxt), nxt, smallest)


def _check_inputs(pred_distri: jax.Array, pred_scores: jax.Array, anchor_points: jax.Array,
                  stride_tensor: jax.Array, gt_labels: jax.Array, gt_boxes: jax.Array,
                  gt_mask: jax.Array, reg_max: int) -> None:
    if pred_scores.ndim != 3:
        raise ValueError(f"pred_scores must be [B, A, C] logits, got {pred_scores.shape}")
    b, a, _ = pred_scores.shape
    if pred_distri.shape != (b, a, 4 * reg_max):
        raise ValueError(f"pred_distri must be [B, A, 4 * reg_max] = [{b}, {a}, {4 * reg_max}], "
                         f"got {pred_distri.shape}")
    if anchor_points.shape != (a, 2):
        raise ValueError(f"anchor_points must be [A, 2] = [{a}, 2], got {anchor_points.shape}")
    if stride_tensor.shape not in ((a, 1), (a,)):
        raise ValueError(f"stride_tensor must be [A, 1] = [{a}, 1], got {stride_tensor.shape}")
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[2] != 4:
        raise ValueError(f"gt_boxes must be [B, M, 4] = [{b}, M, 4] xyxy, got {gt_boxes.shape}")
    m = gt_boxes.shape[1]
    if gt_labels.shape != (b, m):
        raise ValueError(f"gt_labels must be [B, M] = [{b}, {m}], got {gt_labels.shape}")
    if gt_mask.shape != (b, m):
        raise ValueError(f"gt_mask must be [B, M] = [{b}, {m}], got {gt_mask.shape}")
    if not jnp.issubdtype(gt_labels.dtype, jnp.integer):
        raise TypeError(f"gt_labels must be integer class indices, got {gt_labels.dtype}")


def yolo_box_loss(pred_distri: ArrayLike, pred_boxes: ArrayLike, anchor_points: ArrayLike,
                  target_boxes: ArrayLike, target_scores: ArrayLike, target_scores_sum: ArrayLike,
                  fg_mask: ArrayLike, *, reg_max: int = 16) -> tuple[jax.Array, jax.Array]:
    """YOLOv8 box terms ``(ciou, dfl)`` (before gains), as ultralytics ``BboxLoss``.

    Everything in grid units: ``pred_distri [..., A, 4 * reg_max]`` DFL logits, decoded
    ``pred_boxes [..., A, 4]`` xyxy, ``anchor_points [A, 2]``, assigned ``target_boxes
    [..., A, 4]`` xyxy, ``target_scores [..., A, C]``, the normaliser ``target_scores_sum``
    and ``fg_mask [..., A]``. With ``w`` the anchor's summed target score:
    ``ciou = sum_fg (1 - CIoU_ultralytics(pred, target)) w / target_scores_sum`` and
    ``dfl = sum_fg mean_sides DFL(pred_distri, bbox2dist(target, reg_max - 1)) w /
    target_scores_sum``. Background anchors contribute exactly 0 (and no NaN gradient).
    """
    pred_distri = jnp.asarray(pred_distri)
    fg = jnp.asarray(fg_mask).astype(bool)
    target_scores = as_float(target_scores, "target_scores")
    if pred_distri.shape[-1] != 4 * reg_max or pred_distri.shape[:-1] != fg.shape:
        raise ValueError(f"pred_distri must be {fg.shape + (4 * reg_max,)} for fg_mask "
                         f"{fg.shape} and reg_max={reg_max}, got {pred_distri.shape}")
    weight = jnp.where(fg, target_scores.sum(-1), 0.0)  # [..., A]
    ciou = aligned_complete_box_iou(pred_boxes, target_boxes, eps=1e-7, convention="ultralytics")
    box = jnp.where(fg, (1.0 - ciou) * weight, 0.0).sum() / target_scores_sum
    target_ltrb = bbox2dist(anchor_points, target_boxes, reg_max=reg_max - 1)  # [..., A, 4]
    side_dfl = distribution_focal_loss(
        pred_distri.reshape(*fg.shape, 4, reg_max), target_ltrb)  # [..., A, 4]
    dfl = jnp.where(fg, side_dfl.mean(-1) * weight, 0.0).sum() / target_scores_sum
    return box, dfl


def yolo_detection_loss(
    pred_distri: ArrayLike, pred_scores: ArrayLike, anchor_points: ArrayLike,
    stride_tensor: ArrayLike, gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
    box_gain: ArrayLike = 7.5, cls_gain: ArrayLike = 0.5, dfl_gain: ArrayLike = 1.5,
    reg_max: int = 16, topk: int = 10, alpha: ArrayLike = 0.5, beta: ArrayLike = 6.0,
    min_gt_size: ArrayLike | str | None = "auto", topk2: int | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8 loss of one batch -> ``(total, {"box", "cls", "dfl"})``, scalars.

    Inputs: ``pred_distri [B, A, 4 * reg_max]`` DFL logits (sides ordered l, t, r, b),
    ``pred_scores [B, A, C]`` class logits, ``anchor_points [A, 2]`` cell centres in grid
    units and ``stride_tensor [A, 1]`` (see :func:`detjax.anchors.make_anchor_points`),
    padded ground truth ``gt_labels [B, M]`` int, ``gt_boxes [B, M, 4]`` xyxy pixels and
    ``gt_mask [B, M]`` bool. A single image may be given without the ``B`` axis.

    Reference: ultralytics 8.4 ``v8DetectionLoss``; the three components equal its
    gain-scaled loss items on the same tensors. Boxes are decoded from the DFL integral;
    targets come from :func:`detjax.assign.task_aligned` on the detached sigmoid scores
    and pixel boxes (``topk``, ``alpha``, ``beta``; ground-truth sides shorter than
    ``min_gt_size`` are enlarged to it for the candidate test only: ``"auto"`` is
    ultralytics 8.4's ``strides[1]`` (16 for strides 8/16/32), ``None`` is the behaviour
    before 8.4; ``topk2`` is ``v8DetectionLoss(tal_topk2=...)``). With
    ``S = max(sum(target_scores), 1)`` over the whole batch:

    * ``cls = cls_gain * sum(BCE(pred_scores, target_scores)) / S`` over every anchor and class;
    * ``box = box_gain * sum_fg (1 - CIoU_ultralytics) * w / S`` in grid units, ``w`` the
      anchor's target score;
    * ``dfl = dfl_gain * sum_fg mean_sides DFL * w / S`` with targets
      ``bbox2dist(..., reg_max - 1)`` (16 bins for ``reg_max=16``, the ultralytics
      convention of :func:`distribution_focal_loss`).

    ``total = box + cls + dfl``. ultralytics back-propagates ``total * B`` (its
    ``loss.sum() * batch_size``) and logs the three items; multiply by ``B`` to reproduce
    its gradient scale. Every gain, ``alpha``, ``beta`` and ``min_gt_size`` may be traced;
    ``reg_max``, ``topk`` and ``topk2`` set shapes and are static.

    >>> points, strides = make_anchor_points([(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    >>> total, items = jax.jit(yolo_detection_loss)(
    ...     distri, scores, points, strides, gt_labels, gt_boxes, gt_mask)  # doctest: +SKIP
    """
    pred_distri, pred_scores = jnp.asarray(pred_distri), jnp.asarray(pred_scores)
    gt_labels, gt_boxes, gt_mask = (jnp.asarray(gt_labels), jnp.asarray(gt_boxes),
                                    jnp.asarray(gt_mask))
    if pred_scores.ndim == 2:  # one image
        pred_distri, pred_scores = pred_distri[None], pred_scores[None]
        gt_labels, gt_boxes, gt_mask = gt_labels[None], gt_boxes[None], gt_mask[None]
    anchor_points = as_float(anchor_points, "anchor_points")
    stride_tensor = as_float(stride_tensor, "stride_tensor")
    _check_inputs(pred_distri, pred_scores, anchor_points, stride_tensor, gt_labels, gt_boxes,
                  gt_mask, reg_max)
    stride_tensor = stride_tensor.reshape(-1, 1)
    logits = as_float(pred_scores, "pred_scores")  # [B, A, C]
    gt_boxes = as_float(gt_boxes, "gt_boxes")
    if isinstance(min_gt_size, str):
        if min_gt_size != "auto":
            raise ValueError(f"min_gt_size must be 'auto', None or a number, got {min_gt_size!r}")
        min_gt_size = _second_smallest_stride(stride_tensor)

    pred_boxes = dist2bbox(dfl_decode(pred_distri, reg_max=reg_max), anchor_points)  # [B, A, 4]
    assign = lambda s, b, lab, g, m: task_aligned(
        s, b, anchor_points * stride_tensor, lab, g, m, topk=topk, alpha=alpha, beta=beta,
        min_gt_size=min_gt_size, topk2=topk2)
    targets = jax.vmap(assign)(jax.nn.sigmoid(logits), pred_boxes * stride_tensor, gt_labels,
                               gt_boxes, gt_mask.astype(bool))
    target_scores = targets.scores  # [B, A, C], already free of gradient
    score_sum = jnp.maximum(target_scores.sum(), 1.0)

    cls = bce_with_logits(logits, target_scores).sum() / score_sum

    box, dfl = yolo_box_loss(pred_distri, pred_boxes, anchor_points,
                             targets.boxes / stride_tensor, target_scores, score_sum,
                             targets.fg_mask, reg_max=reg_max)

    items = {"box": box * box_gain, "cls": cls * cls_gain, "dfl": dfl * dfl_gain}
    return items["box"] + items["cls"] + items["dfl"], items
