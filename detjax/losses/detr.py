"""DETR set loss (Carion et al. 2020): Hungarian matching, then CE + L1 + GIoU."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.assign import hungarian
from detjax.boxes import aligned_generalized_box_iou, box_convert
from detjax.losses._common import as_float
from detjax.losses.classification import softmax_cross_entropy

__all__ = ["detr_set_loss"]


def _check(logits: jax.Array, boxes: jax.Array, gt_labels: jax.Array, gt_boxes: jax.Array,
           gt_mask: jax.Array) -> None:
    if logits.ndim != 3:
        raise ValueError(f"pred_logits must be [B, Q, C + 1], got {logits.shape}")
    b, q, _ = logits.shape
    if boxes.shape != (b, q, 4):
        raise ValueError(f"pred_boxes must be [B, Q, 4] = [{b}, {q}, 4] cxcywh, got {boxes.shape}")
    if gt_boxes.ndim != 3 or gt_boxes.shape[0] != b or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [B, M, 4] with B = {b}, got {gt_boxes.shape}")
    if gt_labels.shape != gt_boxes.shape[:2] or gt_mask.shape != gt_boxes.shape[:2]:
        raise ValueError(f"gt_labels and gt_mask must be [B, M] = {gt_boxes.shape[:2]}, got "
                         f"{gt_labels.shape} and {gt_mask.shape}")
    if gt_boxes.shape[1] > q:
        raise ValueError(f"need at least as many queries as target slots, got Q={q} < "
                         f"M={gt_boxes.shape[1]}")


def detr_set_loss(
    pred_logits: ArrayLike, pred_boxes: ArrayLike, gt_labels: ArrayLike, gt_boxes: ArrayLike,
    gt_mask: ArrayLike, *, eos_coef: ArrayLike = 0.1, ce_weight: ArrayLike = 1.0,
    bbox_weight: ArrayLike = 5.0, giou_weight: ArrayLike = 2.0, cost_class: float = 1.0,
    cost_bbox: float = 5.0, cost_giou: float = 2.0, query_index: ArrayLike | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """DETR loss of one decoder layer -> ``(total, {"ce", "bbox", "giou"})``.

    Inputs: ``pred_logits [B, Q, C + 1]`` (the last class is "no object"),
    ``pred_boxes [B, Q, 4]`` normalised cxcywh, padded ``gt_labels [B, M]`` in ``[0, C)``,
    ``gt_boxes [B, M, 4]`` normalised cxcywh, ``gt_mask [B, M]``.

    Reference: DETR ``SetCriterion`` with ``HungarianMatcher`` (costs 1 / 5 / 2, loss
    weights ``loss_ce`` 1, ``loss_bbox`` 5, ``loss_giou`` 2, ``eos_coef`` 0.1). Each image
    is matched by :func:`detjax.assign.hungarian` on the detached softmax probabilities
    and boxes (or pass ``query_index [B, M]``, the query of each target slot, -1 for
    padding). Then, with ``K = max(number of valid targets in the batch, 1)``:

    * ``ce``: cross entropy of every query against its matched label or "no object",
      weighted by 1 (``eos_coef`` for "no object"), divided by the sum of the weights
      (``F.cross_entropy(weight=...)``'s weighted mean);
    * ``bbox``: L1 on cxcywh of matched pairs, summed, ``/ K``;
    * ``giou``: ``1 - GIoU`` of matched pairs (xyxy, no eps), summed, ``/ K``.

    The dict holds the weighted terms and ``total`` is their sum. Auxiliary decoder
    layers: call once per layer and add.
    """
    logits = as_float(pred_logits, "pred_logits")
    boxes = as_float(pred_boxes, "pred_boxes")
    gt_labels, gt_mask = jnp.asarray(gt_labels), jnp.asarray(gt_mask).astype(bool)
    gt_boxes = as_float(gt_boxes, "gt_boxes")
    _check(logits, boxes, gt_labels, gt_boxes, gt_mask)
    no_object = logits.shape[-1] - 1
    if query_index is None:
        match = jax.vmap(lambda p, b, lab, g, m: hungarian(
            p, b, lab, g, m, cost_class=cost_class, cost_bbox=cost_bbox, cost_giou=cost_giou))(
                jax.lax.stop_gradient(jax.nn.softmax(logits, -1)),
                jax.lax.stop_gradient(boxes), gt_labels, gt_boxes, gt_mask)
        query_index = match.query_index
    query_index = jnp.where(gt_mask, jnp.asarray(query_index), -1)  # [B, M]
    matched = query_index >= 0
    safe_q = jnp.maximum(query_index, 0)

    # Class target of every query: its matched label, else "no object".
    b, q = logits.shape[:2]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None], query_index.shape)
    # Unmatched target slot m writes to its own spare column q + m (cut off below): every
    # index in range and distinct. Scatters that drop out-of-range indices wrote wrong rows
    # under vmap on an H100 with --xla_gpu_deterministic_ops (jax 0.11.2).
    m = query_index.shape[1]
    spare = q + jnp.broadcast_to(jnp.arange(m), query_index.shape)
    target = jnp.full((b, q + m), no_object, jnp.int32)
    target = target.at[rows, jnp.where(matched, safe_q, spare)].set(
        gt_labels.astype(jnp.int32))[:, :q]
    class_weight = jnp.where(target == no_object, eos_coef, 1.0)
    ce = (softmax_cross_entropy(logits, target) * class_weight).sum() / class_weight.sum()

    num_boxes = jnp.maximum(matched.sum(), 1)
    src = jnp.take_along_axis(boxes, safe_q[..., None], axis=1)  # [B, M, 4]
    l1 = jnp.where(matched[..., None], jnp.abs(src - gt_boxes), 0.0).sum() / num_boxes
    giou = 1.0 - aligned_generalized_box_iou(box_convert(src, "cxcywh", "xyxy"),
                                             box_convert(gt_boxes, "cxcywh", "xyxy"))
    giou = jnp.where(matched, giou, 0.0).sum() / num_boxes
    items = {"ce": ce_weight * ce, "bbox": bbox_weight * l1, "giou": giou_weight * giou}
    return items["ce"] + items["bbox"] + items["giou"], items
