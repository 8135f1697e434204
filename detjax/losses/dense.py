"""Losses of dense anchor-based heads, taking per-anchor matches from the assigners.

* :func:`retinanet_loss`: sigmoid focal classification + L1 / smooth-L1 / IoU-family box
  regression (torchvision ``RetinaNetHead.compute_loss``), matches from
  :func:`detjax.assign.max_iou` (``pos_threshold=0.5, neg_threshold=0.4``).
* :func:`gfl_loss`: quality focal + GIoU + distribution focal loss of a GFL head (mmdet
  ``GFLHead``), matches from :func:`detjax.assign.atss`.
* :func:`hard_negative_mask`: SSD online hard example mining, the alternative to focal loss
  (``retinanet_loss(cls_loss="ohem")``).

``class_weights [C]`` (optional, e.g. from :func:`detjax.losses.class_weights_from_counts`)
multiplies the classification term of each class, element by element over ``[A, C]``, before the
usual normaliser; a weight of 0 removes that class from the classification loss.

Both take ``matches [A]`` as the assigners return them (``>= 0`` index of the matched
ground-truth slot, ``-1`` background, ``-2`` ignored), so a training step is
``matches = assigner(...)``, then ``loss(...)``. Inputs may carry a leading batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.boxes import aligned_box_iou
from detjax.coders import bbox2dist, decode_deltas, dfl_decode, dist2bbox, encode_deltas
from detjax.losses._common import as_float
from detjax.losses.classification import quality_focal_loss, sigmoid_focal_loss
from detjax.losses.distribution import dfl_bins, distribution_focal_loss
from detjax.losses.regression import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    l1_loss,
    smooth_l1_loss,
)

__all__ = ["gfl_loss", "hard_negative_mask", "retinanet_loss"]

BoxLossType = Literal["l1", "smooth_l1", "giou", "diou", "ciou"]
_IOU_LOSSES = {"giou": generalized_box_iou_loss, "diou": distance_box_iou_loss,
               "ciou": complete_box_iou_loss}


def _matched_targets(matches: jax.Array, gt_labels: jax.Array, gt_boxes: jax.Array,
                     num_classes: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """fg mask ``[A]``, one-hot class targets ``[A, C]`` and matched boxes ``[A, 4]``."""
    fg = matches >= 0
    idx = jnp.clip(matches, 0, max(gt_boxes.shape[0] - 1, 0))
    if gt_boxes.shape[0] == 0:  # no ground-truth slots at all
        return fg, jnp.zeros((matches.shape[0], num_classes)), jnp.zeros((matches.shape[0], 4))
    onehot = jax.nn.one_hot(gt_labels[idx], num_classes) * fg[:, None]
    return fg, onehot, gt_boxes[idx]


def _check_dense(cls_logits: jax.Array, box_pred: jax.Array, anchors: jax.Array,
                 gt_labels: jax.Array, gt_boxes: jax.Array, matches: jax.Array,
                 box_width: int) -> None:
    if cls_logits.ndim != 3:
        raise ValueError(f"cls_logits must be [B, A, C] or [A, C], got {cls_logits.shape}")
    b, a, _ = cls_logits.shape
    if box_pred.shape != (b, a, box_width):
        raise ValueError(f"box predictions must be [B, A, {box_width}] = [{b}, {a}, {box_width}]"
                         f", got {box_pred.shape}")
    if anchors.shape != (a, 4):
        raise ValueError(f"anchors must be [A, 4] = [{a}, 4] xyxy, got {anchors.shape}")
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [B, M, 4] with B = {b}, got {gt_boxes.shape}")
    if gt_labels.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels must be [B, M] = {gt_boxes.shape[:2]}, got {gt_labels.shape}")
    if matches.shape != (b, a):
        raise ValueError(f"matches must be [B, A] = [{b}, {a}], got {matches.shape}")


def _class_weighted(loss: jax.Array, class_weights: ArrayLike | None) -> jax.Array:
    """``loss [..., C]`` times ``class_weights [C]`` (unchanged when None)."""
    if class_weights is None:
        return loss
    w = jnp.asarray(class_weights, jnp.float32)
    if w.shape != loss.shape[-1:]:
        raise ValueError(f"class_weights must be [C] = [{loss.shape[-1]}], got {w.shape}")
    return loss * w


def hard_negative_mask(loss: ArrayLike, fg: ArrayLike, negatives: ArrayLike, *,
                       neg_pos_ratio: ArrayLike = 3.0) -> jax.Array:
    """SSD hard negative mining for one image -> ``[A]`` bool: the negatives to keep.

    ``loss [A]`` per-anchor classification loss, ``fg [A]`` foreground mask, ``negatives [A]``
    the anchors that may serve as negatives (background, not ignored). Keeps the
    ``neg_pos_ratio * #fg`` negatives with the largest loss (Liu et al. 2016, 3:1;
    torchvision ``SSD.compute_loss`` ranks them the same way, ties by anchor order). With no
    foreground anchor no negative is kept.
    """
    loss, fg, negatives = jnp.asarray(loss), jnp.asarray(fg, bool), jnp.asarray(negatives, bool)
    k = jnp.asarray(neg_pos_ratio, jnp.float32) * fg.sum()
    ranked = jnp.where(negatives & ~fg, jax.lax.stop_gradient(loss), -jnp.inf)
    order = jnp.argsort(-ranked, stable=True)  # hardest first
    rank = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0]))  # [A]
    return negatives & ~fg & (rank < k)


def _with_batch_axis(cls_logits: ArrayLike, *arrays: ArrayLike) -> list[jax.Array]:
    """Adds a leading batch axis to every array when ``cls_logits`` is one image's ``[A, C]``."""
    arrays = [jnp.asarray(x) for x in (cls_logits, *arrays)]
    return [x[None] for x in arrays] if arrays[0].ndim == 2 else arrays


def retinanet_loss(
    cls_logits: ArrayLike, box_deltas: ArrayLike, anchors: ArrayLike, gt_labels: ArrayLike,
    gt_boxes: ArrayLike, matches: ArrayLike, *, alpha: ArrayLike = 0.25, gamma: ArrayLike = 2.0,
    box_loss: BoxLossType = "l1", beta: ArrayLike = 1.0,
    box_coder_stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0), box_weight: ArrayLike = 1.0,
    cls_loss: Literal["focal", "ohem"] = "focal", neg_pos_ratio: ArrayLike = 3.0,
    class_weights: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """RetinaNet loss -> ``(total, {"cls", "box"})``.

    Inputs: ``cls_logits [B, A, C]``, ``box_deltas [B, A, 4]`` (Faster R-CNN deltas of the
    ``anchors [A, 4]`` xyxy pixels), padded ``gt_labels [B, M]`` and ``gt_boxes [B, M, 4]``
    xyxy pixels, ``matches [B, A]`` from :func:`detjax.assign.max_iou` (0.5 / 0.4 for
    RetinaNet). The ``B`` axis may be omitted for one image.

    Reference: torchvision ``RetinaNetHead.compute_loss`` (defaults: focal alpha 0.25,
    gamma 2, ``bbox_reg_loss_type="l1"``, ``BoxCoder(weights=(1, 1, 1, 1))``). Per image,
    ``cls = sum focal(cls_logits, one_hot)`` over anchors that are not ignored (match
    ``!= -2``) and ``box`` the sum over foreground anchors of the box loss, both divided by
    ``max(1, number of foreground anchors)``; then the mean over images. ``box_loss``
    ``"l1"``/``"smooth_l1"`` (with ``beta``) compare ``box_deltas`` with the encoded matched
    boxes (``box_coder_stds = 1 / torchvision weights``); ``"giou"``/``"diou"``/``"ciou"``
    compare the decoded boxes with the matched boxes (eps 1e-7). The dict holds ``cls`` and
    ``box_weight * box``; ``total`` is their sum.

    ``cls_loss="ohem"`` replaces focal loss by plain sigmoid BCE on the foreground anchors plus
    the ``neg_pos_ratio * #fg`` hardest background anchors of each image
    (:func:`hard_negative_mask`, SSD-style 3:1), with the same normaliser. ``class_weights``:
    see the module docstring.
    """
    logits, deltas, labels, boxes, matches = _with_batch_axis(
        cls_logits, box_deltas, gt_labels, gt_boxes, matches)
    anchors = as_float(anchors, "anchors")
    _check_dense(logits, deltas, anchors, labels, boxes, matches, 4)
    if box_loss not in ("l1", "smooth_l1", *_IOU_LOSSES):
        raise ValueError(f"box_loss must be l1, smooth_l1, giou, diou or ciou, got {box_loss!r}")
    if cls_loss not in ("focal", "ohem"):
        raise ValueError(f"cls_loss must be 'focal' or 'ohem', got {cls_loss!r}")
    num_classes = logits.shape[-1]

    def per_image(x, d, lab, gtb, match):
        fg, onehot, matched = _matched_targets(match, lab, as_float(gtb, "gt_boxes"), num_classes)
        num_fg = jnp.maximum(fg.sum(), 1)
        if cls_loss == "focal":
            per_class = sigmoid_focal_loss(x, onehot, alpha=alpha, gamma=gamma)  # [A, C]
            keep = match != -2
        else:  # plain BCE = focal with gamma 0 and no alpha weight
            per_class = sigmoid_focal_loss(x, onehot, alpha=-1.0, gamma=0.0)
            keep = fg | hard_negative_mask(per_class.sum(-1), fg, match == -1,
                                           neg_pos_ratio=neg_pos_ratio)
        per_anchor = _class_weighted(per_class, class_weights).sum(-1)  # [A]
        cls = jnp.where(keep, per_anchor, 0.0).sum() / num_fg
        if box_loss in _IOU_LOSSES:
            pred = decode_deltas(anchors, d, stds=box_coder_stds, clamp_both_sides=False)
            per_anchor = _IOU_LOSSES[box_loss](pred, matched)
        else:
            target = encode_deltas(anchors, matched, stds=box_coder_stds)
            per_anchor = (l1_loss(d, target) if box_loss == "l1"
                          else smooth_l1_loss(d, target, beta=beta)).sum(-1)
        box = jnp.where(fg, per_anchor, 0.0).sum() / num_fg
        return cls, box

    cls, box = jax.vmap(per_image)(logits, deltas, labels, boxes, matches)
    items = {"cls": cls.mean(), "box": box_weight * box.mean()}
    return items["cls"] + items["box"], items


def gfl_loss(
    cls_logits: ArrayLike, pred_dist: ArrayLike, anchors: ArrayLike, strides: ArrayLike,
    gt_labels: ArrayLike, gt_boxes: ArrayLike, matches: ArrayLike, *, beta: ArrayLike = 2.0,
    reg_max: int = 16, cls_weight: ArrayLike = 1.0, box_weight: ArrayLike = 2.0,
    dfl_weight: ArrayLike = 0.25, class_weights: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Generalized Focal Loss head loss (Li et al. 2020) -> ``(total, {"cls", "box", "dfl"})``.

    Inputs: ``cls_logits [B, A, C]``, ``pred_dist [B, A, 4 * (reg_max + 1)]`` ltrb bin logits
    (the mmdet convention of :func:`distribution_focal_loss`: 17 bins for ``reg_max=16``),
    ``anchors [A, 4]`` xyxy pixels with ``strides [A]`` (or ``[A, 1]``), padded
    ``gt_labels [B, M]``, ``gt_boxes [B, M, 4]`` xyxy pixels, ``matches [B, A]`` from
    :func:`detjax.assign.atss`. The ``B`` axis may be omitted for one image.

    Reference: mmdet ``GFLHead.loss_by_feat`` (loss weights QFL 1.0, GIoU 2.0, DFL 0.25).
    Distances live in stride units around the anchor centres; the predicted box is the DFL
    integral. Over the whole batch, with ``N = max(number of foreground anchors, 1)`` and
    ``W = max(sum of w, 1)`` where ``w = max_c sigmoid(cls_logits)`` (detached) of each
    foreground anchor:

    * ``cls = sum QFL(cls_logits, one_hot * IoU(pred box, target box)) / N`` (IoU detached);
    * ``box = sum_fg w * (1 - GIoU) / W``;
    * ``dfl = sum_fg w * mean_sides DFL / W`` (targets clamped to ``reg_max - 0.01``).

    ``total = cls_weight * cls + box_weight * box + dfl_weight * dfl``; the dict holds the
    weighted terms. GIoU uses eps 1e-7 added to the denominators (torchvision) where mmdet
    clamps them at 1e-6: equal except for boxes smaller than ~1e-3 stride units.
    ``class_weights``: see the module docstring.
    """
    n_bins = dfl_bins(reg_max, "mmdet")
    logits, dist, labels, boxes, matches = _with_batch_axis(
        cls_logits, pred_dist, gt_labels, gt_boxes, matches)
    anchors = as_float(anchors, "anchors")
    _check_dense(logits, dist, anchors, labels, boxes, matches, 4 * n_bins)
    strides = as_float(strides, "strides").reshape(-1, 1)  # [A, 1]
    if strides.shape[0] != anchors.shape[0]:
        raise ValueError(f"strides must be [A] = [{anchors.shape[0]}], got {strides.shape}")
    logits = as_float(logits, "cls_logits")
    b, a, num_classes = logits.shape
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2 / strides  # [A, 2] stride units

    fg, onehot, matched = jax.vmap(
        lambda m, lab, gtb: _matched_targets(m, lab, as_float(gtb, "gt_boxes"), num_classes))(
            matches, labels, boxes)  # [B, A], [B, A, C], [B, A, 4]
    target_boxes = matched / strides  # stride units
    pred_boxes = dist2bbox(dfl_decode(dist, reg_max=n_bins), centres)  # [B, A, 4]
    quality = jax.lax.stop_gradient(aligned_box_iou(pred_boxes, target_boxes))
    qfl = quality_focal_loss(logits, onehot * jnp.where(fg, quality, 0.0)[..., None], beta=beta)
    qfl = _class_weighted(qfl, class_weights)
    valid = (matches != -2)[..., None]
    cls = jnp.where(valid, qfl, 0.0).sum() / jnp.maximum(fg.sum(), 1)

    weight = jnp.where(fg, jax.lax.stop_gradient(jax.nn.sigmoid(logits)).max(-1), 0.0)
    weight_sum = jnp.maximum(weight.sum(), 1.0)
    giou = generalized_box_iou_loss(pred_boxes, target_boxes)
    box = jnp.where(fg, giou * weight, 0.0).sum() / weight_sum
    target_ltrb = bbox2dist(centres, target_boxes, reg_max=reg_max)  # clamp reg_max - 0.01
    side = distribution_focal_loss(dist.reshape(b, a, 4, n_bins), target_ltrb)  # [B, A, 4]
    dfl = jnp.where(fg, side.mean(-1) * weight, 0.0).sum() / weight_sum
    items = {"cls": cls_weight * cls, "box": box_weight * box, "dfl": dfl_weight * dfl}
    return items["cls"] + items["box"] + items["dfl"], items
