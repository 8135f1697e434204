"""Detection heads on the PAN neck, NHWC, in flax.nnx: ``'dfl'`` (YOLOv8), ``'retina'``
(anchor-based RetinaNet), ``'atss'`` (GFL head trained with the ATSS assigner), ``'fcos'``.

Every head maps the neck's feature maps (lowest level first) to a :class:`HeadOutput` whose
``preds`` are per-anchor raw outputs ``[B, A, k]`` (float32; anchors ordered level by level,
row-major over ``(y, x)`` within a level, then anchor shape), and offers

- ``predict(output) -> [B, 4 + C, A]``: ultralytics inference format (``cxcywh`` boxes in
  input pixels, class probabilities), the input of :func:`detjax.non_max_suppression`;
- ``loss(output, batch, **hyp) -> (scalar, {name: scalar})`` with ``batch['boxes']``
  ``[B, M, 4]`` ``xyxy`` pixels, ``batch['labels']`` ``[B, M]`` int, ``batch['gt_mask']``
  ``[B, M]`` bool. The glue to :mod:`detjax.assign` and :mod:`detjax.losses` lives here.

All heads use per-level (unshared) branches of two 3x3 ``ConvBNAct`` and a 1x1 convolution,
as ultralytics ``Detect``. (The reference RetinaNet/GFL/FCOS heads share one GroupNorm tower
across levels; with BatchNorm, per-level branches keep per-level statistics.)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from detjax.anchors import make_anchor_boxes, make_anchor_points
from detjax.boxes import box_convert
from detjax.coders import decode_deltas, dfl_decode, dist2bbox
from detjax.models.blocks import ConvBNAct, conv2d


@struct.dataclass
class HeadOutput:
    """Raw head outputs: ``preds`` maps names to ``[B, A, k]`` float32 arrays; the static
    ``level_shapes`` ``((h, w), ...)`` and ``strides`` describe the anchor grid."""

    preds: dict[str, jax.Array]
    level_shapes: tuple[tuple[int, int], ...] = struct.field(pytree_node=False)
    strides: tuple[int, ...] = struct.field(pytree_node=False)


def to_inference_format(boxes_xyxy: jax.Array, probs: jax.Array) -> jax.Array:
    """``[B, A, 4]`` xyxy boxes and ``[B, A, C]`` probabilities -> ``[B, 4 + C, A]`` with
    ``cxcywh`` boxes (ultralytics ``Detect`` inference output)."""
    cxcywh = box_convert(boxes_xyxy, "xyxy", "cxcywh")
    return jnp.concatenate([cxcywh, probs], axis=-1).transpose(0, 2, 1)


def class_prior_bias(num_classes: int, stride: int) -> float:
    """ultralytics class-bias prior ``log(5 / nc / (640 / stride)**2)`` (0.01 objects per
    class per 640-pixel image)."""
    return math.log(5 / num_classes / (640 / stride) ** 2)


def prior_prob_bias(prior_prob: float = 0.01) -> float:
    """RetinaNet/FCOS class-bias prior ``-log((1 - p) / p)`` (Lin et al. 2017)."""
    return -math.log((1 - prior_prob) / prior_prob)


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


def _flatten_levels(maps: list[jax.Array], per_anchor: int) -> jax.Array:
    """``[B, h_l, w_l, n * k]`` per level -> ``[B, sum_l h_l w_l n, k]`` float32 (location
    major, then the ``n`` anchor shapes of a location)."""
    return jnp.concatenate([m.reshape(m.shape[0], -1, per_anchor) for m in maps],
                           axis=1).astype(jnp.float32)


def _set_bias(conv: nnx.Conv, value: float) -> None:
    conv.bias[...] = jnp.full_like(conv.bias[...], value)


def _branch(in_ch: int, mid_ch: int, out_ch: int, *, dtype, rngs: nnx.Rngs) -> nnx.Sequential:
    """Two 3x3 ``ConvBNAct`` then a 1x1 convolution with bias (ultralytics ``Detect`` branch)."""
    return nnx.Sequential(ConvBNAct(in_ch, mid_ch, 3, dtype=dtype, rngs=rngs),
                          ConvBNAct(mid_ch, mid_ch, 3, dtype=dtype, rngs=rngs),
                          conv2d(mid_ch, out_ch, 1, use_bias=True, dtype=dtype, rngs=rngs))


class _TwoBranchHead(nnx.Module):
    """Per level a box branch (``box_out`` channels) and a class branch (``cls_out``)."""

    # the detjax.losses function that ``loss``'s ``**hyp`` reaches, and the keywords ``loss``
    # sets itself (not hyperparameters a config can set)
    _LOSS_FN: str | None = None
    _LOSS_SETS: tuple[str, ...] = ()

    @classmethod
    def loss_defaults(cls) -> dict[str, Any]:
        """The default of every keyword hyperparameter ``loss`` accepts (``train.loss.*``):
        its own keyword defaults, then those of the loss function its ``**hyp`` reaches."""
        import inspect

        import detjax.losses

        fns = [cls.loss] + ([getattr(detjax.losses, cls._LOSS_FN)] if cls._LOSS_FN else [])
        out: dict[str, Any] = {}
        for fn in fns:
            for name, p in inspect.signature(fn).parameters.items():
                if p.default is not p.empty and name not in cls._LOSS_SETS:
                    out.setdefault(name, p.default)
        return out

    def __init__(self, in_channels: tuple[int, ...], box_mid: int, box_out: int, cls_mid: int,
                 cls_out: int, *, dtype, rngs: nnx.Rngs):
        self.box_branches = nnx.List([_branch(c, box_mid, box_out, dtype=dtype, rngs=rngs)
                                      for c in in_channels])
        self.cls_branches = nnx.List([_branch(c, cls_mid, cls_out, dtype=dtype, rngs=rngs)
                                      for c in in_channels])

    def _run(self, feats: list[jax.Array]) -> tuple[list[jax.Array], list[jax.Array],
                                                    tuple[tuple[int, int], ...]]:
        if len(feats) != len(self.box_branches):
            raise ValueError(f"expected {len(self.box_branches)} feature maps, got {len(feats)}")
        box = [b(f) for b, f in zip(self.box_branches, feats)]
        cls = [c(f) for c, f in zip(self.cls_branches, feats)]
        return box, cls, tuple((int(f.shape[1]), int(f.shape[2])) for f in feats)

    def _init_biases(self, box_bias: float, cls_bias: list[float]) -> None:
        for box, cls, value in zip(self.box_branches, self.cls_branches, cls_bias):
            _set_bias(box.layers[-1], box_bias)
            _set_bias(cls.layers[-1], value)


# ------------------------------------------------------------------------------ YOLOv8 DFL


class DFLHead(_TwoBranchHead):
    """YOLOv8 decoupled head (ultralytics ``Detect`` as built for v8, ``legacy=True``).

    Per level: box branch -> ``4 * reg_max`` DFL bin logits (ltrb distances in stride units,
    ultralytics convention: bins ``0 .. reg_max - 1``), class branch -> ``num_classes`` logits.
    Widths ``c2 = max(16, ch[0] // 4, 4 * reg_max)``, ``c3 = max(ch[0], min(num_classes, 100))``.
    Final biases: box ``box_bias`` (1.0 as the YOLOv8 release; ultralytics 8.4 sets 2.0), class
    :func:`class_prior_bias`. ``preds``: ``'boxes'`` ``[B, A, 4 * reg_max]``, ``'scores'``
    ``[B, A, C]`` logits, anchors at cell centres (:func:`detjax.anchors.make_anchor_points`).
    """

    _LOSS_FN, _LOSS_SETS = "yolo_detection_loss", ("reg_max",)

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...],
                 *, reg_max: int = 16, box_bias: float = 1.0, dtype=None, rngs: nnx.Rngs):
        self.num_classes, self.reg_max, self.strides = num_classes, reg_max, tuple(strides)
        c2 = max(16, in_channels[0] // 4, reg_max * 4)
        c3 = max(in_channels[0], min(num_classes, 100))
        super().__init__(in_channels, c2, 4 * reg_max, c3, num_classes, dtype=dtype, rngs=rngs)
        self._init_biases(box_bias, [class_prior_bias(num_classes, s) for s in self.strides])

    def __call__(self, feats: list[jax.Array]) -> HeadOutput:
        box, cls, shapes = self._run(feats)
        preds = {"boxes": _flatten_levels(box, 4 * self.reg_max),
                 "scores": _flatten_levels(cls, self.num_classes)}
        return HeadOutput(preds, shapes, self.strides)

    def predict(self, out: HeadOutput) -> jax.Array:
        points, strides = make_anchor_points(out.level_shapes, out.strides)
        ltrb = dfl_decode(out.preds["boxes"], reg_max=self.reg_max)  # [B, A, 4] stride units
        boxes = dist2bbox(ltrb, points) * strides
        return to_inference_format(boxes, jax.nn.sigmoid(out.preds["scores"]))

    def loss(self, out: HeadOutput, batch: dict[str, Any], **hyp: Any
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """ultralytics ``v8DetectionLoss`` through :func:`detjax.losses.yolo_detection_loss`
        (TAL assigner, CIoU + DFL + BCE); ``hyp``: its keyword hyperparameters (box_gain, ...)."""
        from detjax.losses import yolo_detection_loss

        boxes, labels, gt_mask = check_batch(batch)
        points, strides = make_anchor_points(out.level_shapes, out.strides)
        return yolo_detection_loss(out.preds["boxes"], out.preds["scores"], points, strides,
                                   labels, boxes, gt_mask, reg_max=self.reg_max, **hyp)


# ------------------------------------------------------------------------------ anchor-based


def _feat_width(in_channels: tuple[int, ...], num_classes: int) -> int:
    return max(in_channels[0], min(num_classes, 100))


AnchorSizes = tuple[tuple[tuple[float, float], ...], ...]  # per level, per anchor: (w, h)


def check_anchor_sizes(anchors: Any, num_levels: int, per_level: int | None = None
                       ) -> AnchorSizes:
    """Anchor sizes as ``detjax anchors`` writes them (a list per level, strides ascending,
    of ``[w, h]`` pixel pairs, the same count on every level) -> nested tuples."""
    try:
        levels = tuple(tuple((float(w), float(h)) for w, h in level) for level in anchors)
    except (TypeError, ValueError):
        raise ValueError(f"anchors must be a list per level of [w, h] pairs, got {anchors!r}"
                         ) from None
    counts = {len(level) for level in levels}
    if len(levels) != num_levels or len(counts) != 1 or 0 in counts:
        raise ValueError(f"anchors must give {num_levels} levels (one per stride) with the "
                         f"same number of [w, h] pairs each, got {[len(x) for x in levels]}")
    if per_level is not None and counts != {per_level}:
        raise ValueError(f"this head takes {per_level} anchor(s) per level, got "
                         f"{counts.pop()}")
    if not all(w > 0 and h > 0 for level in levels for w, h in level):
        raise ValueError(f"anchor sizes must be positive, got {levels}")
    return levels


def anchor_boxes_from_sizes(feature_shapes: tuple[tuple[int, int], ...],
                            strides: tuple[int, ...], sizes: AnchorSizes) -> jax.Array:
    """xyxy anchor boxes ``[A, 4]`` pixels with the given ``(w, h)`` per level, centred on
    cell corners ``(col, row) * stride`` (the offset of :func:`make_anchor_boxes`),
    location-major then anchor, like :func:`detjax.anchors.make_anchor_boxes`."""
    out = []
    for (h, w), stride, wh in zip(feature_shapes, strides, sizes):
        half = np.asarray(wh, np.float64) / 2  # [k, 2]
        base = np.concatenate([-half, half], axis=1)  # [k, 4]
        ys, xs = np.meshgrid(np.arange(int(h)), np.arange(int(w)), indexing="ij")
        shifts = np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) * stride
        out.append((shifts + base[None]).reshape(-1, 4))
    return jnp.asarray(np.concatenate(out), jnp.float32)


class RetinaHead(_TwoBranchHead):
    """Anchor-based RetinaNet head (Lin et al. 2017) on the YOLOv8 neck.

    ``ratios x octave_scales`` anchors per location (default 3 x 3 = 9, mmdet/torchvision
    RetinaNet: size ``stride * base_scale * 2**(i/3)``, ratios 0.5/1/2, corners of cells),
    or exactly the ``anchors`` given: a list per level of ``[w, h]`` pixel pairs, the format
    ``detjax anchors`` writes (``model.head_kwargs.anchors``; ratios and scales then unused).
    ``preds``: ``'scores'`` ``[B, A, C]`` logits (bias prior 0.01), ``'deltas'`` ``[B, A, 4]``
    Faster R-CNN deltas (``box_coder_stds``). ``loss``: ``assigner='max_iou'`` (IoU 0.5 / 0.4
    with low-quality matches, torchvision) or ``'atss'`` (topk 9), then
    :func:`detjax.losses.retinanet_loss` (focal + ``box_loss`` 'l1' as torchvision, or
    'smooth_l1' / 'giou' / 'diou' / 'ciou').
    """

    _LOSS_FN, _LOSS_SETS = "retinanet_loss", ("box_coder_stds",)

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...],
                 *, ratios: tuple[float, ...] = (0.5, 1.0, 2.0), base_scale: float = 4.0,
                 octave_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
                 box_coder_stds: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0),
                 anchors: Any = None, prior_prob: float = 0.01, dtype=None,
                 rngs: nnx.Rngs):
        self.num_classes, self.strides = num_classes, tuple(strides)
        self.ratios, self.base_scale = tuple(ratios), base_scale
        self.octave_scales = tuple(octave_scales)
        self.box_coder_stds = tuple(box_coder_stds)
        self.anchor_sizes = (None if anchors is None
                             else check_anchor_sizes(anchors, len(self.strides)))
        self.num_anchors = (len(self.ratios) * len(self.octave_scales) if anchors is None
                            else len(self.anchor_sizes[0]))
        width = _feat_width(in_channels, num_classes)
        super().__init__(in_channels, width, 4 * self.num_anchors, width,
                         num_classes * self.num_anchors, dtype=dtype, rngs=rngs)
        self._init_biases(0.0, [prior_prob_bias(prior_prob)] * len(self.strides))

    def anchors(self, level_shapes: tuple[tuple[int, int], ...]) -> jax.Array:
        """xyxy anchor boxes ``[A, 4]`` in pixels (:func:`detjax.anchors.make_anchor_boxes`, or
        :func:`anchor_boxes_from_sizes` of the given ``anchors``)."""
        if self.anchor_sizes is not None:
            return anchor_boxes_from_sizes(level_shapes, self.strides, self.anchor_sizes)
        return make_anchor_boxes(level_shapes, self.strides, ratios=self.ratios,
                                 base_scale=self.base_scale, octave_scales=self.octave_scales)

    def __call__(self, feats: list[jax.Array]) -> HeadOutput:
        box, cls, shapes = self._run(feats)
        preds = {"deltas": _flatten_levels(box, 4),
                 "scores": _flatten_levels(cls, self.num_classes)}
        return HeadOutput(preds, shapes, self.strides)

    def predict(self, out: HeadOutput) -> jax.Array:
        boxes = decode_deltas(self.anchors(out.level_shapes), out.preds["deltas"],
                              stds=self.box_coder_stds, clamp_both_sides=False)
        return to_inference_format(boxes, jax.nn.sigmoid(out.preds["scores"]))

    def loss(self, out: HeadOutput, batch: dict[str, Any], *, assigner: str = "max_iou",
             pos_threshold: float = 0.5, neg_threshold: float = 0.4, topk: int = 9,
             **hyp: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(total, {'cls', 'box'})``; ``hyp`` goes to :func:`detjax.losses.retinanet_loss`."""
        from detjax.losses import retinanet_loss

        boxes, labels, gt_mask = check_batch(batch)
        anchors = self.anchors(out.level_shapes)
        matches = _assign(assigner, anchors, boxes, gt_mask, out, self.num_anchors,
                          pos_threshold=pos_threshold, neg_threshold=neg_threshold, topk=topk)
        return retinanet_loss(out.preds["scores"], out.preds["deltas"], anchors, labels, boxes,
                              matches, box_coder_stds=self.box_coder_stds, **hyp)


def _assign(assigner: str, anchors: jax.Array, boxes: jax.Array, gt_mask: jax.Array,
            out: HeadOutput, anchors_per_location: int, *, pos_threshold: float,
            neg_threshold: float, topk: int) -> jax.Array:
    """Per-anchor matches ``[B, A]`` (gt index, -1 background, -2 ignored) by ``assigner``."""
    from detjax.assign import atss, max_iou

    if assigner == "max_iou":
        def one(b, m):
            return max_iou(anchors, b, m, pos_threshold=pos_threshold,
                           neg_threshold=neg_threshold).matches
    elif assigner == "atss":
        per_level = [h * w * anchors_per_location for h, w in out.level_shapes]

        def one(b, m):
            return atss(anchors, b, m, num_anchors_per_level=per_level, topk=topk).matches
    else:
        raise ValueError(f"assigner must be 'max_iou' or 'atss', got {assigner!r}")
    return jax.vmap(one)(boxes, gt_mask)


class ATSSHead(_TwoBranchHead):
    """GFL head trained with the ATSS assigner (Zhang et al. 2020; Li et al. 2020, mmdet
    ``GFLHead``): one square anchor per location (side ``base_scale * stride``, cell corners)
    for assignment, or the one ``[w, h]`` per level of ``anchors`` (``detjax anchors -n``
    = number of levels); box branch -> ltrb distributions over ``reg_max + 1`` bins (mmdet
    convention, stride units around the anchor centre); class branch -> joint
    class-quality logits (QFL). ``preds``: ``'scores'`` ``[B, A, C]``, ``'dist'``
    ``[B, A, 4 * (reg_max + 1)]``. ``loss``: :func:`detjax.assign.atss` (topk 9) then
    :func:`detjax.losses.gfl_loss` (QFL 1.0 + GIoU 2.0 + DFL 0.25).
    """

    _LOSS_FN, _LOSS_SETS = "gfl_loss", ("reg_max",)

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...],
                 *, reg_max: int = 16, base_scale: float = 8.0, anchors: Any = None,
                 prior_prob: float = 0.01, dtype=None, rngs: nnx.Rngs):
        self.num_classes, self.strides, self.reg_max = num_classes, tuple(strides), reg_max
        self.base_scale = base_scale
        self.anchor_sizes = (None if anchors is None
                             else check_anchor_sizes(anchors, len(self.strides), per_level=1))
        width = _feat_width(in_channels, num_classes)
        super().__init__(in_channels, width, 4 * (reg_max + 1), width, num_classes,
                         dtype=dtype, rngs=rngs)
        self._init_biases(0.0, [prior_prob_bias(prior_prob)] * len(self.strides))

    def anchors(self, level_shapes: tuple[tuple[int, int], ...]) -> tuple[jax.Array, jax.Array]:
        """xyxy anchors ``[A, 4]`` pixels and their strides ``[A, 1]``."""
        if self.anchor_sizes is not None:
            anchors = anchor_boxes_from_sizes(level_shapes, self.strides, self.anchor_sizes)
        else:
            anchors = make_anchor_boxes(level_shapes, self.strides, ratios=(1.0,),
                                        base_scale=self.base_scale)
        return anchors, make_anchor_points(level_shapes, self.strides)[1]

    def __call__(self, feats: list[jax.Array]) -> HeadOutput:
        box, cls, shapes = self._run(feats)
        preds = {"dist": _flatten_levels(box, 4 * (self.reg_max + 1)),
                 "scores": _flatten_levels(cls, self.num_classes)}
        return HeadOutput(preds, shapes, self.strides)

    def predict(self, out: HeadOutput) -> jax.Array:
        anchors, strides = self.anchors(out.level_shapes)
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2 / strides  # stride units
        ltrb = dfl_decode(out.preds["dist"], reg_max=self.reg_max + 1)
        boxes = dist2bbox(ltrb, centres) * strides
        return to_inference_format(boxes, jax.nn.sigmoid(out.preds["scores"]))

    def loss(self, out: HeadOutput, batch: dict[str, Any], *, topk: int = 9, **hyp: Any
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(total, {'cls', 'box', 'dfl'})``; ``hyp`` goes to :func:`detjax.losses.gfl_loss`."""
        from detjax.losses import gfl_loss

        boxes, labels, gt_mask = check_batch(batch)
        anchors, strides = self.anchors(out.level_shapes)
        matches = _assign("atss", anchors, boxes, gt_mask, out, 1, pos_threshold=0.0,
                          neg_threshold=0.0, topk=topk)
        return gfl_loss(out.preds["scores"], out.preds["dist"], anchors, strides, labels, boxes,
                        matches, reg_max=self.reg_max, **hyp)


# ------------------------------------------------------------------------------ FCOS


def fcos_regress_ranges(strides: tuple[int, ...]) -> tuple[tuple[float, float], ...]:
    """FCOS size ranges per level: upper bound ``8 * stride`` (64, 128, ... for strides 8, 16,
    as the paper's P3-P7), the first level from -1 and the last to infinity."""
    uppers = [8.0 * s for s in strides[:-1]] + [float("inf")]
    lowers = [-1.0] + uppers[:-1]
    return tuple(zip(lowers, uppers))


class FCOSHead(_TwoBranchHead):
    """FCOS head (Tian et al. 2019; mmdet ``FCOSHead`` with ``norm_on_bbox`` and
    ``centerness_on_reg``): per location, class logits and, from the box branch, ltrb distances
    ``relu(x) * stride`` plus a centerness logit. ``preds``: ``'scores'`` ``[B, A, C]``,
    ``'ltrb'`` ``[B, A, 4]`` (stride units, before relu), ``'centerness'`` ``[B, A, 1]``.
    Points at cell centres. ``predict`` scores ``sigmoid(cls) * sigmoid(centerness)`` (mmdet
    score factors). ``loss``: :func:`detjax.assign.fcos_targets` then focal (sum / #fg) +
    centerness-weighted GIoU (sum / sum of centerness targets) + centerness BCE (sum / #fg).
    """

    def __init__(self, in_channels: tuple[int, ...], num_classes: int, strides: tuple[int, ...],
                 *, prior_prob: float = 0.01, box_bias: float = 1.0, dtype=None,
                 rngs: nnx.Rngs):
        self.num_classes, self.strides = num_classes, tuple(strides)
        width = _feat_width(in_channels, num_classes)
        super().__init__(in_channels, width, 5, width, num_classes, dtype=dtype, rngs=rngs)
        self._init_biases(box_bias, [prior_prob_bias(prior_prob)] * len(self.strides))

    def __call__(self, feats: list[jax.Array]) -> HeadOutput:
        box, cls, shapes = self._run(feats)
        reg = _flatten_levels(box, 5)
        preds = {"ltrb": reg[..., :4], "centerness": reg[..., 4:],
                 "scores": _flatten_levels(cls, self.num_classes)}
        return HeadOutput(preds, shapes, self.strides)

    def _boxes(self, out: HeadOutput) -> tuple[jax.Array, jax.Array]:
        points, strides = make_anchor_points(out.level_shapes, out.strides)
        ltrb = jax.nn.relu(out.preds["ltrb"]) * strides  # [B, A, 4] pixels
        return dist2bbox(ltrb, points * strides), points * strides

    def predict(self, out: HeadOutput) -> jax.Array:
        boxes, _ = self._boxes(out)
        probs = jax.nn.sigmoid(out.preds["scores"]) * jax.nn.sigmoid(out.preds["centerness"])
        return to_inference_format(boxes, probs)

    def loss(self, out: HeadOutput, batch: dict[str, Any], *, alpha: float = 0.25,
             gamma: float = 2.0, center_sampling: bool = False,
             center_sample_radius: float = 1.5,
             regress_ranges: tuple[tuple[float, float], ...] | None = None,
             cls_weight: float = 1.0, box_weight: float = 1.0, centerness_weight: float = 1.0,
             class_weights=None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """``(total, {'cls', 'box', 'centerness'})`` (weighted terms); reductions over the
        batch as mmdet (``num_pos`` and the centerness sum are batch totals). ``class_weights
        [C]`` multiplies each class's focal term (see :mod:`detjax.losses.dense`)."""
        from detjax.assign import fcos_targets
        from detjax.losses import (
            binary_cross_entropy,
            generalized_box_iou_loss,
            sigmoid_focal_loss,
        )

        boxes, labels, gt_mask = check_batch(batch)
        pred_boxes, points = self._boxes(out)
        ranges = regress_ranges or fcos_regress_ranges(out.strides)
        counts = [h * w for h, w in out.level_shapes]
        t = jax.vmap(lambda lab, b, m: fcos_targets(
            points, lab, b, m, num_classes=self.num_classes, num_points_per_level=counts,
            strides=out.strides, regress_ranges=ranges, center_sampling=center_sampling,
            center_sample_radius=center_sample_radius))(labels, boxes, gt_mask)
        num_fg = jnp.maximum(t.fg_mask.sum(), 1).astype(jnp.float32)
        onehot = jax.nn.one_hot(t.labels, self.num_classes)  # background row all zeros
        focal = sigmoid_focal_loss(out.preds["scores"], onehot, alpha=alpha, gamma=gamma)
        if class_weights is not None:
            focal = focal * jnp.asarray(class_weights, jnp.float32)
        cls = focal.sum()
        target_boxes = dist2bbox(t.ltrb, points)  # [B, A, 4] pixels
        giou = generalized_box_iou_loss(pred_boxes, target_boxes)
        ctr_sum = jnp.maximum(jnp.where(t.fg_mask, t.centerness, 0.0).sum(), 1e-6)
        box = jnp.where(t.fg_mask, giou * t.centerness, 0.0).sum() / ctr_sum
        bce = binary_cross_entropy(out.preds["centerness"][..., 0], t.centerness)
        ctr = jnp.where(t.fg_mask, bce, 0.0).sum() / num_fg
        items = {"cls": cls_weight * cls / num_fg, "box": box_weight * box,
                 "centerness": centerness_weight * ctr}
        return items["cls"] + items["box"] + items["centerness"], items
