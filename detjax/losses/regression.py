"""Box regression losses: L1, smooth L1 and the IoU family on matched box pairs.

Boxes are ``[..., 4]`` xyxy (any unit, the same for both arguments); every loss maps
matched pairs ``[..., 4] x [..., 4] -> [...]`` (or per coordinate for L1 / smooth L1),
computed in float32. The IoU losses are ``1 - aligned_*`` from :mod:`detjax.boxes`, so
there is one IoU implementation in the project. Degenerate boxes give finite values and
gradients.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.boxes import (
    Convention,
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
)
from detjax.losses._common import float_pair

__all__ = [
    "complete_box_iou_loss",
    "distance_box_iou_loss",
    "generalized_box_iou_loss",
    "iou_loss",
    "l1_loss",
    "smooth_l1_loss",
]


def _pair(pred: ArrayLike, target: ArrayLike) -> tuple[jax.Array, jax.Array]:
    return float_pair(pred, target, "pred", "target")


def l1_loss(pred: ArrayLike, target: ArrayLike) -> jax.Array:
    """Elementwise ``|pred - target|`` on ``[...]`` (``torch.nn.functional.l1_loss``, unreduced)."""
    p, t = _pair(pred, target)
    return jnp.abs(p - t)


def smooth_l1_loss(pred: ArrayLike, target: ArrayLike, *, beta: ArrayLike = 1.0) -> jax.Array:
    """Elementwise smooth L1 (Huber / beta) on ``[...]``: ``0.5 d^2 / beta`` if ``|d| < beta``
    else ``|d| - 0.5 beta``, with ``d = pred - target``.

    Equal to ``torch.nn.functional.smooth_l1_loss(reduction="none", beta=beta)``; ``beta=0``
    is exactly L1 (as torch). ``beta`` may be traced (a JAX value), e.g. for a ``vmap`` sweep.

    >>> smooth_l1_loss(jnp.array([0.5, 2.0]), jnp.zeros(2))
    Array([0.125, 1.5  ], dtype=float32)
    """
    p, t = _pair(pred, target)
    d = jnp.abs(p - t)
    beta = jnp.asarray(beta, d.dtype)
    quadratic = d < beta
    safe_beta = jnp.where(quadratic, beta, 1.0)  # no 0/0 when beta == 0
    return jnp.where(quadratic, 0.5 * d * d / safe_beta, d - 0.5 * beta)


def iou_loss(pred_boxes: ArrayLike, target_boxes: ArrayLike, *, eps: float = 1e-7) -> jax.Array:
    """``1 - IoU`` of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    ``IoU = inter / (union + eps)``, as the IoU inside ``torchvision.ops`` box losses.
    """
    return 1.0 - aligned_box_iou(pred_boxes, target_boxes, eps=eps)


def generalized_box_iou_loss(pred_boxes: ArrayLike, target_boxes: ArrayLike, *,
                             eps: float = 1e-7) -> jax.Array:
    """``1 - GIoU`` of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``, range ``[0, 2]``.

    Equal to ``torchvision.ops.generalized_box_iou_loss(reduction="none", eps=1e-7)``
    (Rezatofighi et al. 2019).
    """
    return 1.0 - aligned_generalized_box_iou(pred_boxes, target_boxes, eps=eps)


def distance_box_iou_loss(pred_boxes: ArrayLike, target_boxes: ArrayLike, *,
                          eps: float = 1e-7) -> jax.Array:
    """``1 - DIoU`` of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    Equal to ``torchvision.ops.distance_box_iou_loss(reduction="none", eps=1e-7)``
    (Zheng et al. 2020).
    """
    return 1.0 - aligned_distance_box_iou(pred_boxes, target_boxes, eps=eps)


def complete_box_iou_loss(pred_boxes: ArrayLike, target_boxes: ArrayLike, *, eps: float = 1e-7,
                          convention: Convention = "torchvision") -> jax.Array:
    """``1 - CIoU`` of matched xyxy pairs ``[..., 4] x [..., 4] -> [...]``.

    ``convention="torchvision"`` equals ``torchvision.ops.complete_box_iou_loss(
    reduction="none", eps=1e-7)``; ``convention="ultralytics"`` equals ``1 -
    ultralytics.utils.metrics.bbox_iou(pred, target, xywh=False, CIoU=True)`` (eps added to
    heights and union, ``alpha = v / (v - IoU + 1 + eps)``), the box term of YOLOv8's
    ``BboxLoss``. The aspect-ratio weight alpha is under ``stop_gradient`` in both.
    """
    return 1.0 - aligned_complete_box_iou(pred_boxes, target_boxes, eps=eps,
                                          convention=convention)
