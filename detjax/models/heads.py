"""Detection heads on the PAN neck, NHWC, in flax.nnx: the YOLOv8 DFL head (``'dfl'``).

Every head maps the neck's feature maps (lowest level first) to a :class:`HeadOutput` whose
``preds`` are per-anchor raw outputs ``[B, A, k]`` (float32; anchors ordered level by level,
row-major over ``(y, x)`` within a level), and offers

- ``predict(output) -> [B, 4 + C, A]``: ultralytics inference format (``xywh`` boxes in input
  pixels, class probabilities), the input of :func:`detjax.non_max_suppression`;
- ``loss(output, batch, **hyp) -> (scalar, {name: scalar})`` with ``batch['boxes']`` ``[B, M, 4]``
  ``xyxy`` pixels, ``batch['labels']`` ``[B, M]`` int, ``batch['gt_mask']`` ``[B, M]`` bool.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx, struct

from detjax.models.blocks import ConvBNAct, conv2d


@struct.dataclass
class HeadOutput:
    """Raw head outputs: ``preds`` maps names to ``[B, A, k]`` float32 arrays; the static
    ``level_shapes`` ``((h, w), ...)`` and ``strides`` describe the anchor grid."""

    preds: dict[str, jax.Array]
    level_shapes: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)
    strides: tuple[int, ...] = struct.field(pytree_node=False)


def anchor_grid(level_shapes: tuple[tuple[int, int], ...], strides: tuple[int, ...], *,
                offset: float = 0.5) -> tuple[jax.Array, jax.Array]:
    """Anchor points ``[A, 2]`` (x, y) in grid units (cell centres) and strides ``[A, 1]``,
    level by level, row-major; ultralytics ``make_anchors``."""
    points, stride_rows = [], []
    for (h, w), s in zip(level_shapes, strides):
        ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32) + offset,
                              jnp.arange(w, dtype=jnp.float32) + offset, indexing="ij")
        points.append(jnp.stack([xs, ys], axis=-1).reshape(-1, 2))
        stride_rows.append(jnp.full((h * w, 1), float(s), jnp.float32))
    return jnp.concatenate(points, axis=0), jnp.concatenate(stride_rows, axis=0)


def dfl_expectation(logits: jax.Array, reg_max: int) -> jax.Array:
    """``[..., 4 * reg_max]`` bin logits -> ``[..., 4]`` expected distances ``sum_i i p_i``
    (softmax over each side's ``reg_max`` bins; ultralytics ``DFL``)."""
    probs = jax.nn.softmax(logits.reshape(*logits.shape[:-1], 4, reg_max), axis=-1)
    return probs @ jnp.arange(reg_max, dtype=probs.dtype)


def ltrb_to_xywh(points: jax.Array, ltrb: jax.Array) -> jax.Array:
    """Anchor points ``[..., 2]`` and distances ``[..., 4]`` (l, t, r, b) -> ``cxcywh``
    boxes ``[..., 4]`` (ultralytics ``dist2bbox(xywh=True)``)."""
    lt, rb = ltrb[..., :2], ltrb[..., 2:]
    return jnp.concatenate([points + (rb - lt) / 2, lt + rb], axis=-1)


def to_inference_format(boxes_xywh: jax.Array, probs: jax.Array) -> jax.Array:
    """``[B, A, 4]`` boxes and ``[B, A, C]`` probabilities -> ``[B, 4 + C, A]``."""
    return jnp.concatenate([boxes_xywh, probs], axis=-1).transpose(0, 2, 1)


def _flatten_levels(maps: list[jax.Array]) -> jax.Array:
    """``[B, h_l, w_l, k]`` per level -> ``[B, sum_l h_l w_l, k]`` float32."""
    return jnp.concatenate([m.reshape(m.shape[0], -1, m.shape[-1]) for m in maps],
                           axis=1).astype(jnp.float32)


def _set_bias(conv: nnx.Conv, value: float) -> None:
    conv.bias[...] = jnp.full_like(conv.bias[...], value)


def class_prior_bias(num_classes: int, stride: int) -> float:
    """ultralytics class-bias prior ``log(5 / nc / (640 / stride)**2)`` (0.01 objects per
    class per 640-pixel image)."""
    return math.log(5 / num_classes / (640 / stride) ** 2)


def _branch(in_ch: int, mid_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs) -> nnx.Sequential:
    """Two 3x3 ``ConvBNAct`` then a 1x1 convolution with bias (ultralytics ``Detect`` branch)."""
    return nnx.Sequential(ConvBNAct(in_ch, mid_ch, 3, dtype=dtype, rngs=rngs),
                          ConvBNAct(mid_ch, mid_ch, 3, dtype=dtype, rngs=rngs),
                          conv2d(mid_ch, out_ch, 1, use_bias=True, dtype=dtype, rngs=rngs))


def check_batch(batch: dict[str, Any]) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Validate and return ``(boxes [B, M, 4] f32, labels [B, M] i32, gt_mask [B, M] bool)``."""
    missing = {"boxes", "labels", "gt_mask"} - set(batch)
    if missing:
        raise ValueError(f"batch needs 'boxes', 'labels', 'gt_mask'; missing {sorted(missing)}")
    boxes = jnp.asarray(batch["boxes"], jnp.float32)
    labels = jnp.asarray(batch["labels"]).astype(jnp.int32)
    gt_mask = jnp.asarray(batch["gt_mask"]).astype(bool)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2] \
            or gt_mask.shape != boxes.shape[:2]:
        raise ValueError("expected boxes [B, M, 4], labels [B, M], gt_mask [B, M]; got "
                         f"{boxes.shape}, {labels.shape}, {gt_mask.shape}")
    return boxes, labels, gt_mask


class DFLHead(nnx.Module):
    """YOLOv8 decoupled head (ultralytics ``Detect`` as built for v8, ``legacy=True``).

    Per level: box branch -> ``4 * reg_max`` DFL bin logits (distances in grid units),
    class branch -> ``num_classes`` logits. Widths ``c2 = max(16, ch[0] // 4, 4 * reg_max)``,
    ``c3 = max(ch[0], min(num_classes, 100))``. Final biases: box ``box_bias`` (1.0 as in the
    YOLOv8 release; ultralytics 8.4 uses 2.0), class ``class_prior_bias``.
    ``preds``: ``'boxes'`` ``[B, A, 4 * reg_max]`` and ``'scores'`` ``[B, A, C]`` logits.
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...],
                 *, reg_max: int = 16, box_bias: float = 1.0, dtype=None, rngs: nnx.Rngs):
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        c2 = max(16, in_channels[0] // 4, reg_max * 4)
        c3 = max(in_channels[0], min(num_classes, 100))
        self.box_branches = nnx.List([_branch(c, c2, 4 * reg_max, dtype=dtype, rngs=rngs)
                                      for c in in_channels])
        self.cls_branches = nnx.List([_branch(c, c3, num_classes, dtype=dtype, rngs=rngs)
                                      for c in in_channels])
        for box, cls, s in zip(self.box_branches, self.cls_branches, self.strides):
            _set_bias(box.layers[-1], box_bias)
            _set_bias(cls.layers[-1], class_prior_bias(num_classes, s))

    def __call__(self, feats: list[jax.Array]) -> HeadOutput:
        boxes = _flatten_levels([b(f) for b, f in zip(self.box_branches, feats)])
        scores = _flatten_levels([c(f) for c, f in zip(self.cls_branches, feats)])
        shapes = tuple((f.shape[1], f.shape[2]) for f in feats)
        return HeadOutput({"boxes": boxes, "scores": scores}, shapes, self.strides)

    def predict(self, out: HeadOutput) -> jax.Array:
        points, strides = anchor_grid(out.level_shapes, out.strides)
        ltrb = dfl_expectation(out.preds["boxes"], self.reg_max)  # [B, A, 4] grid units
        xywh = ltrb_to_xywh(points, ltrb) * strides
        return to_inference_format(xywh, jax.nn.sigmoid(out.preds["scores"]))

    def loss(self, out: HeadOutput, batch: dict[str, Any], **hyp: Any
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """ultralytics ``v8DetectionLoss`` through :func:`detjax.losses.yolo_detection_loss`
        (TAL assigner, CIoU + DFL + BCE); ``hyp``: its keyword hyperparameters (box_gain, ...)."""
        from detjax.losses import yolo_detection_loss

        boxes, labels, gt_mask = check_batch(batch)
        points, strides = anchor_grid(out.level_shapes, out.strides)
        return yolo_detection_loss(out.preds["boxes"], out.preds["scores"], points, strides,
                                   labels, boxes, gt_mask, reg_max=self.reg_max, **hyp)
