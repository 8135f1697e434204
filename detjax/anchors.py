"""Anchor points, anchor boxes and anchor fitting.

* :func:`make_anchor_points`: cell centres of every feature map with a stride per point
  (ultralytics ``make_anchors``), for anchor-free heads (YOLOv8, FCOS).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _check_levels(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float]) -> None:
    if len(feature_shapes) != len(strides):
        raise ValueError(
            f"need one stride per feature map, got {len(feature_shapes)} shapes and "
            f"{len(strides)} strides")
    for shape in feature_shapes:
        if len(shape) != 2:
            raise ValueError(f"feature shapes must be (height, width), got {shape}")


def make_anchor_points(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float], *,
                       offset: float = 0.5,
                       dtype: jnp.dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Anchor points ``[A, 2]`` (x, y) in grid units and strides ``[A, 1]``.

    For each level of ``(height, width)`` in ``feature_shapes``, the points are
    ``(col + offset, row + offset)`` in row-major order, levels concatenated;
    multiply by the strides for pixels. Same as ``ultralytics.utils.tal.make_anchors``.
    The shapes are static Python ints, so this is free under ``jax.jit``.

    >>> pts, s = make_anchor_points([(2, 2)], [8])
    >>> (pts * s).tolist()
    [[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]
    """
    _check_levels(feature_shapes, strides)
    points, point_strides = [], []
    for (h, w), stride in zip(feature_shapes, strides):
        ys, xs = np.meshgrid(np.arange(int(h)), np.arange(int(w)), indexing="ij")
        points.append(np.stack([xs, ys], -1).reshape(-1, 2) + offset)
        point_strides.append(np.full((int(h) * int(w), 1), stride))
    return (jnp.asarray(np.concatenate(points), dtype),
            jnp.asarray(np.concatenate(point_strides), dtype))
