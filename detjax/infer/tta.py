"""Test-time augmentation (flip + scale) for YOLO-format predictions.

Images are float ``[B, H, W, 3]`` (NHWC, 0..1); predictions are ``[B, 4 + C, A]`` with ``cxcywh``
pixels. Reference: ultralytics ``DetectionModel._predict_augment``: scales ``(1, 0.83, 0.67)``
with flips ``(none, left-right, none)``; each view is resized (bilinear, no antialias,
``align_corners=False``) to ``int(h * s) x int(w * s)``, padded right/bottom with 0.447 to a
multiple of the largest stride, predicted, de-scaled (``cxcywh / s``) and de-flipped
(``x -> W - x``); the first view drops its last (largest-stride) level and the last view its
first (smallest-stride) level (``_clip_augmented``); the views are concatenated on the anchor
axis, ready for ``detjax.non_max_suppression``. Everything is traceable: jit the whole thing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp

FLIPS = (None, "lr", "ud")


def scale_image(images: jax.Array, ratio: float, *, stride: int = 32,
                pad_value: float = 0.447) -> jax.Array:
    """``[B, H, W, 3]`` -> resized by ``ratio`` and padded to a multiple of ``stride``
    (ultralytics ``torch_utils.scale_img``, ``same_shape=False``)."""
    if ratio == 1.0:
        return images
    b, h, w, c = images.shape
    nh, nw = int(h * ratio), int(w * ratio)
    resized = jax.image.resize(images, (b, nh, nw, c), method="bilinear", antialias=False)
    ph, pw = (math.ceil(x * ratio / stride) * stride for x in (h, w))
    return jnp.pad(resized, ((0, 0), (0, ph - nh), (0, pw - nw), (0, 0)),
                   constant_values=pad_value)


def descale_predictions(pred: jax.Array, *, flip: str | None, ratio: float,
                        image_size: tuple[int, int]) -> jax.Array:
    """``[B, 4 + C, A]`` of an augmented view -> the original view's pixels (ultralytics
    ``_descale_pred``): boxes ``/ ratio``, then ``x -> W - x`` (lr) or ``y -> H - y`` (ud)."""
    box = pred[:, :4] / ratio
    if flip == "lr":
        box = box.at[:, 0].set(image_size[1] - box[:, 0])
    elif flip == "ud":
        box = box.at[:, 1].set(image_size[0] - box[:, 1])
    return jnp.concatenate([box, pred[:, 4:]], axis=1)


def _level_split(num_anchors: int, num_levels: int) -> tuple[int, int]:
    """Anchors of the largest-stride and smallest-stride level for a pyramid whose levels
    shrink 4x (ultralytics ``_clip_augmented``)."""
    g = sum(4**x for x in range(num_levels))
    return num_anchors // g, (num_anchors // g) * 4 ** (num_levels - 1)


def tta_predict(forward: Callable[[Any, jax.Array], jax.Array], variables: Any,
                images: jax.Array, *, scales: Sequence[float] = (1.0, 0.83, 0.67),
                flips: Sequence[str | None] = (None, "lr", None), stride: int = 32,
                num_levels: int | None = 3) -> jax.Array:
    """Runs ``forward(variables, view)`` on every (scale, flip) view of ``images`` and returns
    the merged predictions ``[B, 4 + C, A_total]`` in the input's pixels.

    ``num_levels`` (pyramid levels, 3 for P3-P5) enables ultralytics' tail clipping; ``None``
    keeps every anchor of every view.
    """
    if len(scales) != len(flips):
        raise ValueError(f"scales and flips must pair up, got {len(scales)} and {len(flips)}")
    for f in flips:
        if f not in FLIPS:
            raise ValueError(f"flip must be one of {FLIPS}, got {f!r}")
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [B, H, W, 3], got {images.shape}")
    size = images.shape[1:3]
    views = []
    for ratio, flip in zip(scales, flips):
        x = images[:, :, ::-1] if flip == "lr" else images[:, ::-1] if flip == "ud" else images
        pred = forward(variables, scale_image(x, ratio, stride=stride))
        views.append(descale_predictions(pred, flip=flip, ratio=ratio, image_size=size))
    if num_levels and len(views) > 1:
        large, _ = _level_split(views[0].shape[-1], num_levels)
        _, small = _level_split(views[-1].shape[-1], num_levels)
        views[0] = views[0][..., :views[0].shape[-1] - large]
        views[-1] = views[-1][..., small:]
    return jnp.concatenate(views, axis=-1)
