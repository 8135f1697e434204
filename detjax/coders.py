"""Box coders: boxes <-> regression targets.

* ltrb distances from anchor points (FCOS, YOLOv8): :func:`bbox2dist`, :func:`dist2bbox`;
* the DFL integral (softmax over ``reg_max`` bins times ``arange(reg_max)``):
  :func:`dfl_decode`;
* Faster R-CNN deltas ``(dx, dy, dw, dh)`` with means/stds: :func:`encode_deltas`,
  :func:`decode_deltas`.

Boxes are ``[..., 4]`` xyxy; anchor points ``[..., 2]`` (x, y) in the same units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def _float(x: ArrayLike) -> jax.Array:
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def _check_last(x: jax.Array, n: int, name: str) -> None:
    if x.ndim < 1 or x.shape[-1] != n:
        raise ValueError(f"{name} must have shape [..., {n}], got {x.shape}")


def bbox2dist(anchor_points: ArrayLike, boxes: ArrayLike, *,
              reg_max: float | None = None) -> jax.Array:
    """ltrb distances ``[..., 4]`` from points ``[..., 2]`` to the sides of xyxy boxes ``[..., 4]``.

    ``(x - x1, y - y1, x2 - x, y2 - y)``; with ``reg_max`` the distances are clamped to
    ``[0, reg_max - 0.01]``, as ``ultralytics.utils.tal.bbox2dist`` (which
    ``BboxLoss`` calls with ``reg_max = 16 - 1``).

    >>> bbox2dist(jnp.array([5., 5.]), jnp.array([0., 1., 8., 9.]))
    Array([5., 4., 3., 4.], dtype=float32)
    """
    points, boxes = _float(anchor_points), _float(boxes)
    _check_last(points, 2, "anchor_points")
    _check_last(boxes, 4, "boxes")
    dist = jnp.concatenate([points - boxes[..., :2], boxes[..., 2:] - points], axis=-1)
    if reg_max is not None:
        dist = jnp.clip(dist, 0, reg_max - 0.01)
    return dist


def dist2bbox(distances: ArrayLike, anchor_points: ArrayLike, *,
              out_fmt: str = "xyxy") -> jax.Array:
    """Boxes ``[..., 4]`` from ltrb distances ``[..., 4]`` around points ``[..., 2]``.

    ``out_fmt`` is ``"xyxy"`` or ``"cxcywh"``; same as ``ultralytics.utils.tal.dist2bbox``
    (``xywh=False`` / ``xywh=True``).
    """
    dist, points = _float(distances), _float(anchor_points)
    _check_last(dist, 4, "distances")
    _check_last(points, 2, "anchor_points")
    if out_fmt not in ("xyxy", "cxcywh"):
        raise ValueError(f"out_fmt must be 'xyxy' or 'cxcywh', got {out_fmt!r}")
    x1y1 = points - dist[..., :2]
    x2y2 = points + dist[..., 2:]
    if out_fmt == "cxcywh":
        return jnp.concatenate([(x1y1 + x2y2) / 2, x2y2 - x1y1], axis=-1)
    return jnp.concatenate([x1y1, x2y2], axis=-1)


def dfl_decode(logits: ArrayLike, *, reg_max: int = 16) -> jax.Array:
    """Expected ltrb distance ``[..., 4]`` from DFL logits ``[..., 4 * reg_max]``.

    ``softmax(logits.reshape(..., 4, reg_max)) @ arange(reg_max)`` in float32, as
    ultralytics ``v8DetectionLoss.bbox_decode`` / ``DFL`` (distances in stride units).
    """
    logits = _float(logits)
    if logits.ndim < 1 or logits.shape[-1] != 4 * reg_max:
        raise ValueError(
            f"logits must have shape [..., 4 * reg_max] = [..., {4 * reg_max}], got {logits.shape}")
    probs = jax.nn.softmax(logits.reshape(*logits.shape[:-1], 4, reg_max).astype(jnp.float32), -1)
    return probs @ jnp.arange(reg_max, dtype=jnp.float32)


def _cxcywh(boxes: jax.Array) -> tuple[jax.Array, ...]:
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode_deltas(anchors: ArrayLike, boxes: ArrayLike, *,
                  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0)) -> jax.Array:
    """Faster R-CNN deltas ``[..., 4]`` of xyxy ``boxes`` relative to xyxy ``anchors``.

    ``((gx - px) / pw, (gy - py) / ph, log(gw / pw), log(gh / ph))``, then
    ``(delta - means) / stds``; mmdet ``DeltaXYWHBBoxCoder.encode``. torchvision
    ``BoxCoder(weights)`` is ``stds = 1 / weights`` (e.g. ``(0.1, 0.1, 0.2, 0.2)`` for
    weights ``(10, 10, 5, 5)``). Sizes are clamped at a tiny positive value so degenerate
    boxes give finite (large negative) log-ratios instead of NaN.
    """
    anchors, boxes = _float(anchors), _float(boxes)
    _check_last(anchors, 4, "anchors")
    _check_last(boxes, 4, "boxes")
    tiny = jnp.finfo(jnp.float32).tiny
    px, py, pw, ph = _cxcywh(anchors.astype(jnp.float32))
    gx, gy, gw, gh = _cxcywh(boxes.astype(jnp.float32))
    pw, ph = jnp.maximum(pw, tiny), jnp.maximum(ph, tiny)
    dw = jnp.log(jnp.maximum(gw, tiny) / pw)
    dh = jnp.log(jnp.maximum(gh, tiny) / ph)
    deltas = jnp.stack([(gx - px) / pw, (gy - py) / ph, dw, dh], -1)
    return (deltas - jnp.asarray(means, jnp.float32)) / jnp.asarray(stds, jnp.float32)


def decode_deltas(anchors: ArrayLike, deltas: ArrayLike, *,
                  means: Sequence[float] = (0.0, 0.0, 0.0, 0.0),
                  stds: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
                  wh_ratio_clip: float = 16 / 1000,
                  clamp_both_sides: bool = True) -> jax.Array:
    """xyxy boxes ``[..., 4]`` from Faster R-CNN ``deltas [..., 4]`` on xyxy ``anchors [..., 4]``.

    ``delta * stds + means``; ``dw, dh`` clamped to ``[-r, r]`` with
    ``r = |log(wh_ratio_clip)|`` (mmdet ``DeltaXYWHBBoxCoder.decode``, default
    ``log(1000/16)``); ``clamp_both_sides=False`` clamps only from above, as torchvision
    ``BoxCoder.decode`` (``bbox_xform_clip``). Inverse of :func:`encode_deltas`.
    """
    anchors, deltas = _float(anchors), _float(deltas)
    _check_last(anchors, 4, "anchors")
    _check_last(deltas, 4, "deltas")
    d = (deltas.astype(jnp.float32) * jnp.asarray(stds, jnp.float32)
         + jnp.asarray(means, jnp.float32))
    px, py, pw, ph = _cxcywh(anchors.astype(jnp.float32))
    r = abs(math.log(wh_ratio_clip))
    dwh = jnp.clip(d[..., 2:], -r if clamp_both_sides else None, r)
    cx, cy = px + pw * d[..., 0], py + ph * d[..., 1]
    w, h = pw * jnp.exp(dwh[..., 0]), ph * jnp.exp(dwh[..., 1])
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
