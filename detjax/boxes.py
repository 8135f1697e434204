"""Box formats, areas, clipping and the IoU family (pairwise and aligned).

Boxes are ``[..., 4]`` arrays in ``xyxy`` absolute pixels unless a function says
otherwise. Pairwise functions (``box_iou`` and friends) map ``[..., N, 4] x
[..., M, 4] -> [..., N, M]`` like ``torchvision.ops``; aligned functions
(``aligned_*``) map matched pairs ``[..., 4] x [..., 4] -> [...]``.

All IoU arithmetic runs in float32 (or float64 when x64 is enabled), whatever the
input dtype, and degenerate boxes (zero or negative size, identical boxes,
all-zero padding) give finite values and finite gradients: every division goes
through ``_safe_div``, which yields 0 where torchvision would yield NaN or inf.
"""

from __future__ import annotations

import math
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

BoxFormat = Literal["xyxy", "xywh", "cxcywh"]
Convention = Literal["torchvision", "ultralytics"]
_FORMATS = ("xyxy", "xywh", "cxcywh")
_CONVENTIONS = ("torchvision", "ultralytics")


def _as_boxes(boxes: ArrayLike, name: str = "boxes") -> jax.Array:
    """Checks the trailing dimension and promotes to at least float32."""
    boxes = jnp.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape [..., 4], got {boxes.shape}")
    if not jnp.issubdtype(boxes.dtype, jnp.floating):
        boxes = boxes.astype(jnp.float32)
    return boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32))


def _check_format(fmt: str, name: str) -> None:
    if fmt not in _FORMATS:
        raise ValueError(f"{name} must be one of {_FORMATS}, got {fmt!r}")


def _safe_div(num: jax.Array, den: jax.Array) -> jax.Array:
    """num / den where den is a positive normal number and both the quotient and its
    derivative in den (-num / den**2) are finite, else 0; gradients stay finite on both
    branches.

    A subnormal den counts as 0: GPUs flush it to zero in the division but not in a
    comparison, which gave -inf there (seen on an H100) where the CPU gave 0. The overflow
    guard, |num| <= den**2 * max, never bites on valid boxes (there |num| <= den, so it holds
    whenever den >= tiny); it catches inverted boxes whose enclosing area is tiny but normal,
    where GIoU's (c_area - union) / c_area overflowed to inf.
    """
    fi = jnp.finfo(den.dtype)
    ok = (den >= fi.tiny) & (jnp.abs(num) <= den * fi.max * den)  # den*max first: no underflow
    return jnp.where(ok, num / jnp.where(ok, den, 1.0), 0.0)


def box_convert(boxes: ArrayLike, in_fmt: BoxFormat, out_fmt: BoxFormat) -> jax.Array:
    """Converts ``[..., 4]`` boxes between ``xyxy``, ``xywh`` and ``cxcywh``.

    ``xywh`` is (top-left x, top-left y, width, height) as in COCO; ``cxcywh`` is
    (centre x, centre y, width, height) as in YOLO. The dtype is preserved.

    >>> box_convert(jnp.array([[10., 20., 30., 40.]]), "xywh", "xyxy")
    Array([[10., 20., 40., 60.]], dtype=float32)
    """
    _check_format(in_fmt, "in_fmt")
    _check_format(out_fmt, "out_fmt")
    boxes = jnp.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {boxes.shape}")
    if in_fmt == out_fmt:
        return boxes
    a, b, c, d = jnp.moveaxis(boxes, -1, 0)
    if in_fmt == "xywh":
        x1, y1, x2, y2 = a, b, a + c, b + d
    elif in_fmt == "cxcywh":
        x1, y1, x2, y2 = a - c / 2, b - d / 2, a + c / 2, b + d / 2
    else:
        x1, y1, x2, y2 = a, b, c, d
    if out_fmt == "xyxy":
        out = (x1, y1, x2, y2)
    elif out_fmt == "xywh":
        out = (x1, y1, x2 - x1, y2 - y1)
    else:
        out = ((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1)
    return jnp.stack(out, axis=-1)


def box_area(boxes: ArrayLike) -> jax.Array:
    """Area of ``[..., 4]`` xyxy boxes -> ``[...]`` (negative sizes give negative area,
    as ``torchvision.ops.box_area``)."""
    boxes = _as_boxes(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def clip_boxes(boxes: ArrayLike, size: tuple[int, int] | ArrayLike) -> jax.Array:
    """Clips ``[..., 4]`` xyxy pixel boxes to an image of ``size = (height, width)``
    (torchvision ``ops.clip_boxes_to_image``; x in ``[0, width]``, y in ``[0, height]``).

    ``size`` may be a traced array of shape ``[2]`` (or broadcastable ``[..., 2]``, one size
    per image). Returns the clipped boxes, same shape; jittable and vmappable.
    """
    boxes = jnp.asarray(boxes)
    if boxes.ndim < 1 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must have shape [..., 4], got {boxes.shape}")
    size = jnp.asarray(size, dtype=boxes.dtype if jnp.issubdtype(boxes.dtype, jnp.floating)
                       else jnp.float32)
    if size.shape[-1:] != (2,):
        raise ValueError(f"size must be (height, width), got shape {size.shape}")
    h, w = size[..., 0:1], size[..., 1:2]
    x = jnp.clip(boxes[..., 0::2], 0, w)
    y = jnp.clip(boxes[..., 1::2], 0, h)
    return jnp.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], axis=-1).astype(boxes.dtype)


# ----------------------------------------------------------------------------------------
# The IoU family. One elementwise core serves both the pairwise ([N,1,4] x [1,M,4]) and the
# aligned ([...,4] x [...,4]) forms, so the two can never drift apart.
# ----------------------------------------------------------------------------------------


def _iou_core(b1: jax.Array, b2: jax.Array, kind: str, eps: float, union_eps: float,
              convention: str, clamp_enclosing: bool = False) -> jax.Array:
    """IoU-family value for broadcastable xyxy boxes ``b1 [..., 4]`` and ``b2 [..., 4]``.

    ``kind`` is one of iou, giou, diou, ciou. ``union_eps`` is added to the IoU
    denominator (0 for torchvision.ops pairwise, eps for torchvision losses and
    ultralytics); ``eps`` is the DIoU/CIoU (and, for ultralytics, GIoU) epsilon.
    ``clamp_enclosing`` clamps the enclosing box's sides at 0 as ``torchvision.ops``'
    pairwise functions do (its losses do not; it matters only for inverted boxes).
    """
    x11, y11, x12, y12 = (b1[..., i] for i in range(4))
    x21, y21, x22, y22 = (b2[..., i] for i in range(4))
    w1, h1 = x12 - x11, y12 - y11
    w2, h2 = x22 - x21, y22 - y21
    if convention == "ultralytics":  # ultralytics.utils.metrics.bbox_iou adds eps to heights
        h1, h2 = h1 + eps, h2 + eps
    inter = (jnp.clip(jnp.minimum(x12, x22) - jnp.maximum(x11, x21), 0)
             * jnp.clip(jnp.minimum(y12, y22) - jnp.maximum(y11, y21), 0))
    if convention == "ultralytics":
        union = w1 * h1 + w2 * h2 - inter + eps
    else:
        union = (x12 - x11) * (y12 - y11) + (x22 - x21) * (y22 - y21) - inter + union_eps
    iou = _safe_div(inter, union)
    if kind == "iou":
        return iou
    # Smallest enclosing box.
    cw = jnp.maximum(x12, x22) - jnp.minimum(x11, x21)
    ch = jnp.maximum(y12, y22) - jnp.minimum(y11, y21)
    if clamp_enclosing:
        cw, ch = jnp.clip(cw, 0), jnp.clip(ch, 0)
    if kind == "giou":
        c_area = cw * ch + (eps if convention == "ultralytics" else union_eps)
        return iou - _safe_div(c_area - union, c_area)
    c2 = cw**2 + ch**2 + eps  # squared enclosing diagonal
    rho2 = ((x21 + x22 - x11 - x12) ** 2 + (y21 + y22 - y11 - y12) ** 2) / 4
    diou = iou - _safe_div(rho2, c2)
    if kind == "diou":
        return diou
    # CIoU aspect-ratio term; alpha is a constant for the gradient (both references).
    v = (4 / math.pi**2) * (jnp.arctan(_safe_div(w2, h2)) - jnp.arctan(_safe_div(w1, h1))) ** 2
    if convention == "ultralytics":
        alpha = _safe_div(v, v - iou + (1 + eps))  # = ultralytics' quotient on valid boxes
    else:
        alpha = _safe_div(v, 1 - iou + v + eps)
    return diou - jax.lax.stop_gradient(alpha) * v


def _pairwise(kind: str, boxes1: ArrayLike, boxes2: ArrayLike, eps: float) -> jax.Array:
    b1 = _as_boxes(boxes1, "boxes1")
    b2 = _as_boxes(boxes2, "boxes2")
    if b1.ndim != b2.ndim or b1.shape[:-2] != b2.shape[:-2]:
        raise ValueError(
            "boxes1 [..., N, 4] and boxes2 [..., M, 4] must share leading batch dimensions, "
            f"got {b1.shape} and {b2.shape}")
    if b1.ndim < 2:
        raise ValueError(f"pairwise IoU needs [..., N, 4] boxes, got {b1.shape}")
    dtype = jnp.promote_types(b1.dtype, b2.dtype)
    return _iou_core(b1[..., :, None, :].astype(dtype), b2[..., None, :, :].astype(dtype),
                     kind, eps, 0.0, "torchvision", clamp_enclosing=True)  # [..., N, M]


def box_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> jax.Array:
    """Pairwise IoU of xyxy boxes ``[..., N, 4] x [..., M, 4] -> [..., N, M]``.

    Same as ``torchvision.ops.box_iou`` (no epsilon), except that a pair with zero
    union gives 0 instead of NaN.

    >>> box_iou(jnp.array([[0., 0., 2., 2.]]), jnp.array([[1., 0., 3., 2.]]))
    Array([[0.33333334]], dtype=float32)
    """
    return _pairwise("iou", boxes1, boxes2, 0.0)


def generalized_box_iou(boxes1: ArrayLike, boxes2: ArrayLike) -> jax.Array:
    """Pairwise GIoU ``IoU - (C - U) / C``, xyxy ``[..., N, 4] x [..., M, 4] -> [..., N, M]``.

    Same as ``torchvision.ops.generalized_box_iou`` (no epsilon; C is the smallest
    enclosing box), with 0 in place of NaN for zero-size pairs. Range ``[-1, 1]``.
    """
    return _pairwise("giou", boxes1, boxes2, 0.0)


def distance_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7) -> jax.Array:
    """Pairwise DIoU ``IoU - rho^2 / c^2``, xyxy ``[..., N, 4] x [..., M, 4] -> [..., N, M]``.

    rho is the distance between centres, c the diagonal of the enclosing box
    (``c^2 + eps``). Same as ``torchvision.ops.distance_box_iou``.
    """
    return _pairwise("diou", boxes1, boxes2, eps)


def complete_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7) -> jax.Array:
    """Pairwise CIoU ``DIoU - alpha * v``, xyxy ``[..., N, 4] x [..., M, 4] -> [..., N, M]``.

    ``v = 4/pi^2 (atan(w2/h2) - atan(w1/h1))^2``, ``alpha = v / (1 - IoU + v + eps)``
    under ``stop_gradient``. Same as ``torchvision.ops.complete_box_iou``.
    """
    return _pairwise("ciou", boxes1, boxes2, eps)


def _aligned(kind: str, boxes1: ArrayLike, boxes2: ArrayLike, eps: float,
             convention: str) -> jax.Array:
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    b1 = _as_boxes(boxes1, "boxes1")
    b2 = _as_boxes(boxes2, "boxes2")
    try:
        jnp.broadcast_shapes(b1.shape, b2.shape)
    except ValueError:
        raise ValueError(
            f"aligned IoU needs broadcastable [..., 4] boxes, got {b1.shape} and {b2.shape}"
        ) from None
    dtype = jnp.promote_types(b1.dtype, b2.dtype)
    return _iou_core(b1.astype(dtype), b2.astype(dtype), kind, eps, eps, convention)


def aligned_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 0.0,
                    convention: Convention = "torchvision") -> jax.Array:
    """IoU of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    ``inter / (union + eps)``. With the default ``eps=0`` it equals the diagonal of
    :func:`box_iou`; ``eps=1e-7`` gives ``torchvision.ops`` loss semantics.
    ``convention="ultralytics"`` reproduces ``ultralytics.utils.metrics.bbox_iou``
    (eps added to both heights and to the union; use ``eps=1e-7`` there).
    """
    return _aligned("iou", boxes1, boxes2, eps, convention)


def aligned_generalized_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 0.0,
                                convention: Convention = "torchvision") -> jax.Array:
    """GIoU of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    ``eps`` is added to the union and the enclosing area (``torchvision.ops.
    generalized_box_iou_loss`` uses 1e-7). See :func:`aligned_box_iou` for conventions.
    """
    return _aligned("giou", boxes1, boxes2, eps, convention)


def aligned_distance_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7,
                             convention: Convention = "torchvision") -> jax.Array:
    """DIoU of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    torchvision convention = ``1 - torchvision.ops.distance_box_iou_loss`` (eps on
    union and diagonal); ultralytics convention = ``bbox_iou(..., DIoU=True)``.
    """
    return _aligned("diou", boxes1, boxes2, eps, convention)


def aligned_complete_box_iou(boxes1: ArrayLike, boxes2: ArrayLike, *, eps: float = 1e-7,
                             convention: Convention = "torchvision") -> jax.Array:
    """CIoU of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    torchvision convention = ``1 - torchvision.ops.complete_box_iou_loss``
    (``alpha = v / (1 - IoU + v + eps)``); ultralytics convention =
    ``bbox_iou(..., CIoU=True)`` (``alpha = v / (v - IoU + 1 + eps)``, eps on heights
    and union). alpha is under ``stop_gradient`` in both, as in the references.

    >>> b = jnp.array([0., 0., 10., 10.])
    >>> aligned_complete_box_iou(b, b)
    Array(1., dtype=float32)
    """
    return _aligned("ciou", boxes1, boxes2, eps, convention)
