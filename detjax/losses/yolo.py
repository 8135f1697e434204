"""The YOLOv8 detection loss (ultralytics ``v8DetectionLoss``) as one jittable function.

What keeps it fast (batch 16 x 8400 anchors x 80 classes; ``benchmarks/bench_loss.py``):

* classification: the BCE over every anchor and class ``[B, A, C]`` is the one pass that
  must touch all logits, and it is a plain reduction: softplus as ``max(x, 0) +
  log1p(exp(-|x|))`` (one exp, one log1p, not ``logaddexp``) minus the target term, a
  gather of the assigned class's logit times its score. The ``[B, A, C]`` targets are never
  built (on XLA:CPU a reduction fed by a broadcast target stored it, 43 MB per call).
* assignment (:func:`detjax.assign.task_aligned_compact`): only ``[M, A]`` work, on the
  class logits gathered per box (no sigmoid over ``[B, A, C]``), under ``stop_gradient``.
* box terms: one softmax pass over the DFL bins gives both the decoded distance and the
  log-sum-exp that the DFL needs, and the two DFL bin terms are one two-bin gather; their
  backward passes are written out, so each writes its gradient in one elementwise pass.

Those written-out backward passes (``jax.custom_vjp``) make the loss reverse-mode only:
``jax.grad`` and ``jax.value_and_grad`` work, ``jax.jvp`` w.r.t. the predictions does not.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign import task_aligned_compact
from detjax.boxes import aligned_complete_box_iou
from detjax.coders import bbox2dist, dist2bbox
from detjax.losses._common import as_float
from detjax.losses.distribution import _softmax_expectation_and_lse, _two_bin_logit

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
    pred_distri = as_float(pred_distri, "pred_distri")
    fg = jnp.asarray(fg_mask).astype(bool)
    target_scores = as_float(target_scores, "target_scores")
    if pred_distri.shape[-1] != 4 * reg_max or pred_distri.shape[:-1] != fg.shape:
        raise ValueError(f"pred_distri must be {fg.shape + (4 * reg_max,)} for fg_mask "
                         f"{fg.shape} and reg_max={reg_max}, got {pred_distri.shape}")
    bins = pred_distri.reshape(*fg.shape, 4, reg_max)
    return _box_terms(bins, jax.nn.logsumexp(bins, axis=-1), pred_boxes, anchor_points,
                      target_boxes, target_scores.sum(-1), fg, target_scores_sum, reg_max)


def _box_terms(bins: jax.Array, lse: jax.Array, pred_boxes: ArrayLike, anchor_points: jax.Array,
               target_boxes: ArrayLike, weight: jax.Array, fg: jax.Array,
               normaliser: ArrayLike, reg_max: int) -> tuple[jax.Array, jax.Array]:
    """``(ciou, dfl)`` sums of :func:`yolo_box_loss` from the DFL logits ``bins [..., A, 4,
    reg_max]``, their log-sum-exp ``lse [..., A, 4]`` and the per-anchor ``weight [..., A]``."""
    weight = jnp.where(fg, weight, 0.0)  # [..., A]
    ciou = aligned_complete_box_iou(pred_boxes, target_boxes, eps=1e-7, convention="ultralytics")
    box = jnp.where(fg, (1.0 - ciou) * weight, 0.0).sum() / normaliser
    target_ltrb = bbox2dist(anchor_points, target_boxes, reg_max=reg_max - 1)  # [..., A, 4]
    side_dfl = lse - _two_bin_logit(bins, jax.lax.stop_gradient(target_ltrb))  # [..., A, 4]
    dfl = jnp.where(fg, side_dfl.mean(-1) * weight, 0.0).sum() / normaliser
    return box, dfl


@jax.custom_vjp
def _bce_sum(logits: jax.Array, labels: jax.Array, score: jax.Array,
             class_weights: jax.Array) -> jax.Array:
    """``sum_{b,a,c} w_c BCE(logits, one_hot(labels) * score[..., None])`` for logits ``[B, A,
    C]``, labels ``[B, A]`` int in ``[0, C)``, score ``[B, A]`` and class weights ``w [C]``.

    ``sum_c w_c sum softplus(x_c) - sum w_label score x_label``: one reduction over the
    logits plus a gather, so the ``[B, A, C]`` targets are never built; the backward pass
    writes ``w (sigmoid(x) - targets)`` in one elementwise pass and one scatter.
    """
    return _bce_sum_fwd(logits, labels, score, class_weights)[0]


def _bce_terms(logits, labels, class_weights):
    # softplus as max(x, 0) + log1p(exp(-|x|)): one exp and one log1p, unlike logaddexp
    per_class = (jnp.maximum(logits, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(logits)))).sum((0, 1))
    picked = jnp.take_along_axis(logits, labels[..., None], -1,
                                 mode="promise_in_bounds")[..., 0]  # [B, A]
    return per_class, picked, class_weights[labels]


def _bce_sum_fwd(logits, labels, score, class_weights):
    per_class, picked, label_weight = _bce_terms(logits, labels, class_weights)
    total = (per_class * class_weights).sum() - (label_weight * score * picked).sum()
    return total, (logits, labels, score, class_weights, per_class, picked)


def _bce_sum_bwd(res, g):
    logits, labels, score, class_weights, per_class, picked = res
    label_weight = class_weights[labels]
    grad = (g * class_weights) * jax.nn.sigmoid(logits)  # [B, A, C]
    b, a = jnp.meshgrid(jnp.arange(labels.shape[0]), jnp.arange(labels.shape[1]), indexing="ij")
    grad = grad.at[b, a, labels].add(-g * label_weight * score, mode="promise_in_bounds")
    num_classes = logits.shape[-1]
    target_term = jnp.zeros(num_classes, per_class.dtype).at[labels].add(score * picked)
    return grad, None, -g * label_weight * picked, g * (per_class - target_term)


_bce_sum.defvjp(_bce_sum_fwd, _bce_sum_bwd)


def yolo_detection_loss(
    pred_distri: ArrayLike, pred_scores: ArrayLike, anchor_points: ArrayLike,
    stride_tensor: ArrayLike, gt_labels: ArrayLike, gt_boxes: ArrayLike, gt_mask: ArrayLike, *,
    box_gain: ArrayLike = 7.5, cls_gain: ArrayLike = 0.5, dfl_gain: ArrayLike = 1.5,
    reg_max: int = 16, topk: int = 10, alpha: ArrayLike = 0.5, beta: ArrayLike = 6.0,
    min_gt_size: ArrayLike | str | None = "auto", topk2: int | None = None,
    class_weights: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """YOLOv8 loss of one batch -> ``(total, {"box", "cls", "dfl"})``, scalars.

    Inputs: ``pred_distri [B, A, 4 * reg_max]`` DFL logits (sides ordered l, t, r, b),
    ``pred_scores [B, A, C]`` class logits, ``anchor_points [A, 2]`` cell centres in grid
    units and ``stride_tensor [A, 1]`` (see :func:`detjax.anchors.make_anchor_points`),
    padded ground truth ``gt_labels [B, M]`` int, ``gt_boxes [B, M, 4]`` xyxy pixels and
    ``gt_mask [B, M]`` bool. A single image may be given without the ``B`` axis.

    Reference: ultralytics 8.4 ``v8DetectionLoss``; the three components equal its
    gain-scaled loss items on the same tensors. Boxes are decoded from the DFL integral;
    targets come from :func:`detjax.assign.task_aligned_compact` on the detached class
    logits and pixel boxes (``topk``, ``alpha``, ``beta``; ground-truth sides shorter than
    ``min_gt_size`` are enlarged to it for the candidate test only: ``"auto"`` is
    ultralytics 8.4's ``strides[1]`` (16 for strides 8/16/32), ``None`` is the behaviour
    before 8.4; ``topk2`` is ``v8DetectionLoss(tal_topk2=...)``). With
    ``S = max(sum(target_scores), 1)`` over the whole batch:

    * ``cls = cls_gain * sum(w_c BCE(pred_scores, target_scores)) / S`` over every anchor and
      class ``c``, with ``w = class_weights`` (``[C]``, default all ones); ``S`` is not
      weighted, as ultralytics (``bce_loss *= class_weights; bce_loss.sum() /
      target_scores_sum``). A weight of 0 removes a class from the classification loss
      (its targets still come from the assignment);
    * ``box = box_gain * sum_fg (1 - CIoU_ultralytics) * w / S`` in grid units, ``w`` the
      anchor's target score;
    * ``dfl = dfl_gain * sum_fg mean_sides DFL * w / S`` with targets
      ``bbox2dist(..., reg_max - 1)`` (16 bins for ``reg_max=16``, the ultralytics
      convention of :func:`distribution_focal_loss`).

    ``total = box + cls + dfl``. ultralytics back-propagates ``total * B`` (its
    ``loss.sum() * batch_size``) and logs the three items; multiply by ``B`` to reproduce
    its gradient scale. Every gain, ``alpha``, ``beta``, ``min_gt_size`` and ``class_weights``
    may be traced (``jax.vmap`` over them);
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
    if class_weights is not None:
        class_weights = as_float(class_weights, "class_weights")
        if class_weights.shape != (logits.shape[-1],):
            raise ValueError(f"class_weights must be [C] = [{logits.shape[-1]}], got "
                             f"{class_weights.shape}")

    bins = as_float(pred_distri, "pred_distri").reshape(*pred_distri.shape[:2], 4, reg_max)
    dist, lse = _softmax_expectation_and_lse(bins)  # [B, A, 4] each, one softmax pass
    pred_boxes = dist2bbox(dist, anchor_points)  # [B, A, 4] xyxy, grid units
    assign = lambda x, b, lab, g, m: task_aligned_compact(
        x, b, anchor_points * stride_tensor, lab, g, m, topk=topk, alpha=alpha, beta=beta,
        min_gt_size=min_gt_size, topk2=topk2, logits=True)
    targets = jax.vmap(assign)(logits, pred_boxes * stride_tensor, gt_labels, gt_boxes,
                               gt_mask.astype(bool))  # no gradient flows through the targets
    score = targets.score  # [B, A], the target score of the assigned class, 0 on background
    score_sum = jnp.maximum(score.sum(), 1.0)

    weights = jnp.ones(logits.shape[-1], logits.dtype) if class_weights is None else class_weights
    labels = jnp.minimum(targets.labels, logits.shape[-1] - 1)  # C (no ground truth) has score 0
    cls = _bce_sum(logits, labels, score, weights) / score_sum
    box, dfl = _box_terms(bins, lse, pred_boxes, anchor_points, targets.boxes / stride_tensor,
                          score, targets.fg_mask, score_sum, reg_max)

    items = {"box": box * box_gain, "cls": cls * cls_gain, "dfl": dfl * dfl_gain}
    return items["box"] + items["cls"] + items["dfl"], items
