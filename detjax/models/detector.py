"""YOLOv8-style detectors in flax.nnx: ``create_model`` and ``Detector``.

The interface that ``detjax.train``, ``detjax.eval`` and ``detjax.infer`` use:

- ``create_model(name, *, num_classes, head='dfl', p2=False, rngs) -> Detector`` with
  ``name`` in ``'yolov8n' | 'yolov8s' | 'yolov8m' | 'yolov8l' | 'yolov8x'`` (ultralytics
  ``yolov8.yaml`` scales ``[depth, width, max_channels]``: n ``[0.33, 0.25, 1024]``,
  s ``[0.33, 0.50, 1024]``, m ``[0.67, 0.75, 768]``, l ``[1.00, 1.00, 512]``,
  x ``[1.00, 1.25, 512]``) and ``head`` in ``'dfl' | 'retina' | 'atss' | 'fcos'``.
  ``p2=True`` adds the stride-4 level (ultralytics ``yolov8-p2.yaml``).
- ``detector(images)``: images float ``[B, H, W, 3]`` in ``[0, 1]`` (NHWC), ``H`` and ``W``
  multiples of 32 (the largest stride, also with ``p2``) -> :class:`HeadOutput` (a pytree of
  ``[B, A, k]`` float32 arrays plus static grid metadata).
- ``detector.loss(outputs, batch, **hyp) -> (loss, {component: scalar})``; ``batch`` holds
  ``boxes`` ``[B, M, 4]`` xyxy pixels of the input images, ``labels`` ``[B, M]``, ``gt_mask``
  ``[B, M]``. The loss is the scalar to differentiate.
- ``detector.predict(outputs) -> [B, 4 + C, A]``: ``cxcywh`` pixels + class probabilities
  (ultralytics inference format) for :func:`detjax.non_max_suppression`.
- BatchNorm (``nnx.BatchNorm``, eps 1e-3, PyTorch momentum 0.03) uses batch statistics after
  ``detector.train()`` (the default) and running averages after ``detector.eval()``. Split
  with ``graphdef, params, stats = nnx.split(detector, nnx.Param, nnx.BatchStat)`` for a
  functional train state; inside ``jax.grad`` rebuild with
  ``nnx.merge(graphdef, params, stats, copy=True)`` (flax 0.12 otherwise reuses the Variables of
  the enclosing jit trace and BatchNorm's running-stat update raises ``TraceContextError``) and
  return ``nnx.state(model, nnx.BatchStat)`` as the new statistics.

Example::

    model = create_model("yolov8n", num_classes=80, rngs=nnx.Rngs(0))
    out = model(jnp.zeros((2, 640, 640, 3)))          # training mode: batch statistics
    preds = model.predict(out)                        # [2, 84, 8400]
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detjax.models.backbone import Backbone, scale_depth
from detjax.models.blocks import set_bn_axis_name
from detjax.models.heads import ATSSHead, DFLHead, FCOSHead, HeadOutput, RetinaHead
from detjax.models.neck import PAN

# ultralytics yolov8.yaml: scale -> (depth, width, max_channels)
SCALES: dict[str, tuple[float, float, int]] = {
    "yolov8n": (0.33, 0.25, 1024),
    "yolov8s": (0.33, 0.50, 1024),
    "yolov8m": (0.67, 0.75, 768),
    "yolov8l": (1.00, 1.00, 512),
    "yolov8x": (1.00, 1.25, 512),
}
HEADS = ("dfl", "retina", "atss", "fcos")
MAX_STRIDE = 32


_HEAD_CLASSES = {"dfl": DFLHead, "retina": RetinaHead, "atss": ATSSHead, "fcos": FCOSHead}


def _head_class(head: str) -> type:
    if head not in _HEAD_CLASSES:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return _HEAD_CLASSES[head]


class Detector(nnx.Module):
    """Backbone -> PAN neck -> head. The module docstring describes the interface."""

    def __init__(self, *, depth: float, width: float, max_channels: int, num_classes: int,
                 head: str = "dfl", p2: bool = False, dtype=None,
                 head_kwargs: dict[str, Any] | None = None, rngs: nnx.Rngs):
        head_class = _head_class(head)
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes, self.head_type = num_classes, head
        levels = (2, 3, 4, 5) if p2 else (3, 4, 5)
        self.strides = tuple(2 ** lvl for lvl in levels)
        self.backbone = Backbone(width=width, depth=depth, max_channels=max_channels,
                                 dtype=dtype, rngs=rngs)
        self.neck = PAN(self.backbone.channels, levels=levels, depth_n=scale_depth(3, depth),
                        dtype=dtype, rngs=rngs)
        self.head = head_class(self.neck.out_channels, num_classes, self.strides,
                               dtype=dtype, rngs=rngs, **dict(head_kwargs or {}))

    def __call__(self, images: jax.Array) -> HeadOutput:
        images = jnp.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3] (NHWC), got shape {images.shape}")
        if images.shape[1] % MAX_STRIDE or images.shape[2] % MAX_STRIDE:
            raise ValueError(f"image height and width must be multiples of {MAX_STRIDE}, "
                             f"got {images.shape[1:3]}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise TypeError(f"images must be floating point in [0, 1], got {images.dtype}")
        return self.head(self.neck(self.backbone(images)))

    def predict(self, outputs: HeadOutput) -> jax.Array:
        """``[B, 4 + C, A]``: ``cxcywh`` pixel boxes and class probabilities."""
        return self.head.predict(outputs)

    def loss(self, outputs: HeadOutput, batch: dict[str, Any], **hyp: Any
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(loss, components)``; see the head's ``loss`` for ``hyp``."""
        return self.head.loss(outputs, batch, **hyp)


def loss_defaults(head: str = "dfl") -> dict[str, Any]:
    """The default of every loss hyperparameter (``train.loss.*``) the ``head`` accepts, e.g.
    ``{'box_gain': 7.5, 'cls_gain': 0.5, 'dfl_gain': 1.5, ...}`` for ``'dfl'``."""
    return _head_class(head).loss_defaults()


def create_model(name: str = "yolov8n", *, num_classes: int, head: str = "dfl",
                 p2: bool = False, dtype=None, head_kwargs: dict[str, Any] | None = None,
                 bn_axis_name: str | None = None, rngs: nnx.Rngs) -> Detector:
    """Build a YOLOv8 ``name`` (a key of ``SCALES``: ``'yolov8n'`` ... ``'yolov8x'``) detector.

    ``dtype`` is the compute dtype (e.g. ``jnp.bfloat16``; parameters stay float32);
    ``head_kwargs`` go to the head (e.g. ``reg_max`` for ``'dfl'``); ``bn_axis_name`` makes
    BatchNorm average batch statistics over that ``pmap``/``shard_map`` axis (synchronised BN).
    """
    if name not in SCALES:
        raise ValueError(f"name must be one of {tuple(SCALES)}, got {name!r}")
    depth, width, max_channels = SCALES[name]
    model = Detector(depth=depth, width=width, max_channels=max_channels,
                     num_classes=num_classes, head=head, p2=p2, dtype=dtype,
                     head_kwargs=head_kwargs, rngs=rngs)
    if bn_axis_name is not None:
        set_bn_axis_name(model, bn_axis_name)
    return model
