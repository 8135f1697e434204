"""FCOS point targets (Tian et al. 2019; mmdet ``FCOSHead.get_targets``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from detjax.assign._common import check_gt
from detjax.coders import bbox2dist

FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0),
                       (512.0, float("inf")))
FCOS_STRIDES = (8, 16, 32, 64, 128)


class FcosTargets(NamedTuple):
    """Per-point FCOS targets: ``labels [P]`` int32 (``num_classes`` = background),
    ``ltrb [P, 4]`` distances in pixels to the assigned box, ``centerness [P]`` (0 for
    background), ``fg_mask [P]`` bool, ``gt_index [P]`` int32 (0 for background)."""

    labels: jax.Array
    ltrb: jax.Array
    centerness: jax.Array
    fg_mask: jax.Array
    gt_index: jax.Array


def centerness_target(ltrb: ArrayLike) -> jax.Array:
    """FCOS centerness ``sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b))`` of ``[..., 4]`` ltrb
    distances -> ``[...]``; 0 where a denominator is 0 (mmdet ``centerness_target``)."""
    d = jnp.asarray(ltrb, jnp.float32)
    lr, tb = d[..., 0::2], d[..., 1::2]
    num = lr.min(-1) * tb.min(-1)
    den = lr.max(-1) * tb.max(-1)
    ok = (den > 0) & (num > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, num, 1.0) / jnp.where(ok, den, 1.0)), 0.0)


def _per_point(values: Sequence, counts: Sequence[int]) -> jax.Array:
    """Repeats each level's static value for its points: ``[P, ...]``."""
    return jnp.asarray(np.repeat(np.asarray(values, np.float32), counts, axis=0))


def fcos_targets(points: ArrayLike, gt_labels: ArrayLike, gt_boxes: ArrayLike,
                 gt_mask: ArrayLike, *, num_classes: int, num_points_per_level: Sequence[int],
                 strides: Sequence[float] = FCOS_STRIDES,
                 regress_ranges: Sequence[tuple[float, float]] = FCOS_REGRESS_RANGES,
                 center_sampling: bool = False,
                 center_sample_radius: float = 1.5) -> FcosTargets:
    """FCOS targets for ``points [P, 2]`` pixels (levels concatenated) and padded ground
    truth ``gt_labels [M]``, ``gt_boxes [M, 4]`` xyxy, ``gt_mask [M]`` -> :class:`FcosTargets`.

    mmdet ``FCOSHead._get_targets_single``: a point is a candidate of a box when it lies
    strictly inside it (with ``center_sampling``: inside the box clipped to the square of
    half-side ``stride * center_sample_radius`` about its centre) and the largest of its
    ltrb distances lies in the level's ``regress_ranges`` (both ends inclusive); among
    candidates the box of smallest area wins (first on ties). Distances are in pixels
    (divide by the stride for ``norm_on_bbox``).
    """
    points = jnp.asarray(points, jnp.float32)
    if points.ndim != 2 or points.shape[-1] != 2:
        raise ValueError(f"points must be [P, 2], got {points.shape}")
    counts = [int(n) for n in num_points_per_level]
    if sum(counts) != points.shape[0]:
        raise ValueError(f"num_points_per_level {counts} must sum to P = {points.shape[0]}")
    if not len(counts) <= min(len(strides), len(regress_ranges)):
        raise ValueError(f"need a stride and a regress range per level ({len(counts)} levels), "
                         f"got {len(strides)} strides and {len(regress_ranges)} ranges")
    gt_labels, gt_boxes, gt_mask = check_gt(gt_labels, gt_boxes, gt_mask)
    p, m = points.shape[0], gt_boxes.shape[0]
    if m == 0:
        return FcosTargets(jnp.full((p,), num_classes, jnp.int32), jnp.zeros((p, 4)),
                           jnp.zeros((p,)), jnp.zeros((p,), bool), jnp.zeros((p,), jnp.int32))
    gt_boxes = gt_boxes.astype(jnp.float32)
    ltrb = bbox2dist(points[:, None, :], gt_boxes[None])  # [P, M, 4]
    if center_sampling:
        radius = _per_point([s * center_sample_radius for s in strides[:len(counts)]], counts)
        centre = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2  # [M, 2]
        lo = jnp.maximum(centre[None] - radius[:, None, None], gt_boxes[None, :, :2])
        hi = jnp.minimum(centre[None] + radius[:, None, None], gt_boxes[None, :, 2:])
        inside = bbox2dist(points[:, None, :], jnp.concatenate([lo, hi], -1)).min(-1) > 0
    else:
        inside = ltrb.min(-1) > 0  # [P, M]
    ranges = _per_point(list(regress_ranges[:len(counts)]), counts)  # [P, 2]
    reach = ltrb.max(-1)
    in_range = (reach >= ranges[:, :1]) & (reach <= ranges[:, 1:])
    area = (gt_boxes[:, 2] - gt_boxes[:, 0]) * (gt_boxes[:, 3] - gt_boxes[:, 1])  # [M]
    area = jnp.where(inside & in_range & gt_mask[None], area[None], jnp.inf)  # [P, M]
    gt_index = jnp.argmin(area, 1).astype(jnp.int32)
    fg = jnp.isfinite(area.min(1))
    gt_index = jnp.where(fg, gt_index, 0)
    ltrb = jnp.take_along_axis(ltrb, gt_index[:, None, None], 1)[:, 0]  # [P, 4]
    labels = jnp.where(fg, gt_labels[gt_index], num_classes).astype(jnp.int32)
    return FcosTargets(labels, ltrb, jnp.where(fg, centerness_target(ltrb), 0.0), fg, gt_index)
