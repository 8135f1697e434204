"""Shared input checks and geometry for the assigners."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def check_gt(gt_labels: ArrayLike, gt_boxes: ArrayLike,
             gt_mask: ArrayLike) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validates padded ground truth ``[M]`` labels (``[M, 1]`` accepted), ``[M, 4]`` boxes,
    ``[M]`` mask; returns int32 labels, float boxes, bool mask."""
    gt_labels = jnp.asarray(gt_labels)
    gt_boxes = jnp.asarray(gt_boxes)
    gt_mask = jnp.asarray(gt_mask)
    if gt_boxes.ndim != 2 or gt_boxes.shape[-1] != 4:
        raise ValueError(f"gt_boxes must be [M, 4] xyxy, got {gt_boxes.shape}")
    m = gt_boxes.shape[0]
    if gt_labels.shape == (m, 1):
        gt_labels = gt_labels[:, 0]
    if gt_labels.shape != (m,):
        raise ValueError(f"gt_labels must be [M] = [{m}], got {gt_labels.shape}")
    if gt_mask.shape == (m, 1):
        gt_mask = gt_mask[:, 0]
    if gt_mask.shape != (m,):
        raise ValueError(f"gt_mask must be [M] = [{m}], got {gt_mask.shape}")
    if not jnp.issubdtype(gt_boxes.dtype, jnp.floating):
        gt_boxes = gt_boxes.astype(jnp.float32)
    return gt_labels.astype(jnp.int32), gt_boxes, gt_mask.astype(bool)


def points_in_boxes(points: jax.Array, boxes: jax.Array, *, eps: float = 1e-9) -> jax.Array:
    """``[M, A]`` bool: point ``[A, 2]`` strictly inside box ``[M, 4]`` (all four side
    distances ``> eps``; ultralytics ``select_candidates_in_gts``)."""
    x, y = points[None, :, 0], points[None, :, 1]
    d = jnp.stack([x - boxes[:, None, 0], y - boxes[:, None, 1],
                   boxes[:, None, 2] - x, boxes[:, None, 3] - y], -1)  # [M, A, 4]
    return d.min(-1) > eps
