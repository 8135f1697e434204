"""Structured channel pruning of a detjax detector: a physically smaller network.

A *channel group* is the output channels of one ``ConvBNAct`` (the producer) together with the
input channels of every convolution that reads them (the consumers). Removing channel ``k`` of a
group slices the producer's kernel ``[kh, kw, in, out]`` and BatchNorm vectors at ``out = k`` and
each consumer's kernel at the input positions that carried ``k``. The groups of a YOLOv8-style
:class:`~detjax.models.Detector` (every head):

- backbone: the stem and each stride-2 convolution (read by the next convolution / the next
  ``C2f``'s ``cv1``);
- every ``Bottleneck``'s hidden width (``cv1`` -> ``cv2``);
- ``SPPF``'s hidden width (``cv1`` -> three max-pools -> concatenation of four copies -> ``cv2``,
  so each removed channel is removed at four input positions);
- the neck's bottom-up stride-2 convolutions (read by the concatenation that feeds the next
  ``C2f``, at its first positions);
- each head branch's two 3x3 convolutions (read by the next layer of the branch).

Outputs that feed several layers or residual additions (the ``C2f`` outputs, ``Bottleneck`` outputs
with a shortcut) keep their width, so every pruned network computes exactly what the original
computes with the removed channels' outputs set to zero (tested). Channels are ranked by the L1 or
L2 norm of the producer's kernel per output channel, or by ``|BatchNorm scale|`` (network slimming,
Liu et al. 2017; train with :func:`detjax.compress.bn_scale_l1` first to drive scales to zero).

A pruned model is described by ``widths``, ``{group name: kept channels}``; ``set_widths`` applies
them to a freshly built model (the template that restores a pruned run's checkpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal

import jax.numpy as jnp
import numpy as np
from flax import nnx

from detjax.models.blocks import SPPF, Bottleneck, C2f, ConvBNAct

Method = Literal["l1", "l2", "bn"]
METHODS = ("l1", "l2", "bn")


@dataclasses.dataclass(frozen=True)
class Consumer:
    """A convolution reading a group: input positions ``offset + k + j * period`` for
    ``j < copies`` carry the group's channel ``k`` (``period`` = the group's width)."""

    conv: nnx.Conv
    offset: int = 0
    copies: int = 1


@dataclasses.dataclass(frozen=True)
class ChannelGroup:
    name: str
    producer: ConvBNAct
    consumers: tuple[Consumer, ...]

    @property
    def width(self) -> int:
        return int(self.producer.conv.kernel[...].shape[-1])


def _conv_of(module) -> nnx.Conv:
    return module.conv if isinstance(module, ConvBNAct) else module


def channel_groups(model: nnx.Module) -> list[ChannelGroup]:
    """Every prunable group of a detjax ``Detector`` (see the module docstring), in a fixed
    order, named by dotted paths (``backbone.c2f2.m.0.cv1``, ``head.cls_branches.0.layers.1``)."""
    for attr in ("backbone", "neck", "head"):
        if not hasattr(model, attr):
            raise TypeError(f"channel pruning needs a detjax Detector (backbone, neck, head); "
                            f"got {type(model).__name__}")
    groups: list[ChannelGroup] = []
    add = lambda name, producer, *consumers: groups.append(
        ChannelGroup(name, producer, tuple(consumers)))
    bb = model.backbone
    chain = [("stem", bb.stem, bb.down2), ("down2", bb.down2, bb.c2f2.cv1),
             ("down3", bb.down3, bb.c2f3.cv1), ("down4", bb.down4, bb.c2f4.cv1),
             ("down5", bb.down5, bb.c2f5.cv1)]
    for name, producer, consumer in chain:
        add(f"backbone.{name}", producer, Consumer(_conv_of(consumer)))
    for prefix, module in _walk(model, ""):
        if isinstance(module, Bottleneck):
            add(f"{prefix}.cv1", module.cv1, Consumer(module.cv2.conv))
        elif isinstance(module, SPPF):
            add(f"{prefix}.cv1", module.cv1, Consumer(module.cv2.conv, copies=4))
    neck = model.neck
    for i, (conv, c2f) in enumerate(zip(neck.bottom_up_conv, neck.bottom_up_c2f)):
        add(f"neck.bottom_up_conv.{i}", conv, Consumer(c2f.cv1.conv))
    for kind in ("box_branches", "cls_branches"):
        for i, branch in enumerate(getattr(model.head, kind, [])):
            layers = branch.layers
            for j in range(len(layers) - 1):
                if isinstance(layers[j], ConvBNAct):
                    add(f"head.{kind}.{i}.layers.{j}", layers[j], Consumer(_conv_of(layers[j + 1])))
    return groups


def _walk(module, prefix):
    """``(dotted path, module)`` for every sub-module, depth first, in attribute order."""
    for path, node in nnx.iter_graph(module):
        if isinstance(node, (Bottleneck, SPPF, C2f)) and path:
            yield ".".join(str(p) for p in path), node


def channel_scores(group: ChannelGroup, method: Method = "l1") -> np.ndarray:
    """``[width]`` importance of each output channel of ``group``."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "bn":
        return np.abs(np.asarray(group.producer.bn.scale[...]))
    kernel = np.asarray(group.producer.conv.kernel[...], np.float64)
    flat = kernel.reshape(-1, kernel.shape[-1])
    return np.abs(flat).sum(0) if method == "l1" else np.sqrt((flat ** 2).sum(0))


def _slice_last(var, keep) -> None:
    var.set_value(jnp.take(var[...], jnp.asarray(keep), axis=-1))


def remove_channels(group: ChannelGroup, keep: np.ndarray) -> None:
    """Keeps only the output channels ``keep`` (sorted indices) of ``group``, in place."""
    keep = np.sort(np.asarray(keep, np.int64))
    width = group.width
    if len(keep) == 0 or keep[0] < 0 or keep[-1] >= width or len(np.unique(keep)) != len(keep):
        raise ValueError(f"{group.name}: keep must be 1..{width} distinct channel indices in "
                         f"[0, {width}), got {keep.tolist()}")
    conv, bn = group.producer.conv, group.producer.bn
    _slice_last(conv.kernel, keep)
    conv.out_features = len(keep)
    conv.kernel_shape = tuple(conv.kernel[...].shape)
    for name in ("scale", "bias", "mean", "var"):
        _slice_last(getattr(bn, name), keep)
    bn.num_features = len(keep)
    removed = np.setdiff1d(np.arange(width), keep)
    for c in group.consumers:
        cin = c.conv.kernel[...].shape[2]
        drop = (c.offset + removed[None, :] + width * np.arange(c.copies)[:, None]).ravel()
        kept_in = np.setdiff1d(np.arange(cin), drop)
        c.conv.kernel.set_value(jnp.take(c.conv.kernel[...], jnp.asarray(kept_in), axis=2))
        c.conv.in_features = len(kept_in)
        c.conv.kernel_shape = tuple(c.conv.kernel[...].shape)


def kept_count(width: int, ratio: float, *, round_to: int = 1) -> int:
    """Channels kept of ``width`` when a ``ratio`` of them is pruned: ``round(width * (1 -
    ratio))`` rounded to a multiple of ``round_to``, at least ``min(round_to, width)``."""
    keep = round(width * (1.0 - ratio) / round_to) * round_to
    return int(min(max(keep, min(round_to, width), 1), width))


def prune_channels(model: nnx.Module, ratio: float, *, method: Method = "l1",
                   round_to: int = 1) -> dict[str, int]:
    """Removes ``ratio`` of the channels of every group of ``model`` (in place), the least
    important first (:func:`channel_scores`); returns the new ``widths``."""
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"ratio must be in (0, 1), got {ratio}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    widths = {}
    groups = channel_groups(model)
    # every group is ranked on the unpruned network: removing one group's channels slices the
    # input axis of the next group's kernel, which would change that group's norms
    all_scores = [channel_scores(group, method) for group in groups]
    for group, scores in zip(groups, all_scores):
        k = kept_count(group.width, ratio, round_to=round_to)
        keep = np.sort(np.argsort(-scores, kind="stable")[:k])
        remove_channels(group, keep)
        widths[group.name] = k
    return widths


def get_widths(model: nnx.Module) -> dict[str, int]:
    """``{group name: width}`` of ``model``."""
    return {g.name: g.width for g in channel_groups(model)}


def set_widths(model: nnx.Module, widths: Mapping[str, int]) -> nnx.Module:
    """Shrinks ``model`` (in place, keeping the first channels) to ``widths`` from
    :func:`prune_channels`: the template a pruned checkpoint restores into."""
    groups = {g.name: g for g in channel_groups(model)}
    unknown = sorted(set(widths) - set(groups))
    if unknown:
        raise ValueError(f"widths name unknown channel groups {unknown[:3]} (this model has "
                         f"e.g. {list(groups)[:3]}): a different architecture?")
    for name, width in widths.items():
        if not 1 <= int(width) <= groups[name].width:
            raise ValueError(f"{name}: width {width} not in [1, {groups[name].width}]")
        if int(width) < groups[name].width:
            remove_channels(groups[name], np.arange(int(width)))
    return model


def zero_channels(group: ChannelGroup, channels: np.ndarray) -> None:
    """Makes ``channels`` of ``group`` output exactly 0 after BN + SiLU (BN scale and bias 0):
    the network then computes what the pruned one computes."""
    bn = group.producer.bn
    idx = jnp.asarray(np.asarray(channels, np.int64))
    bn.scale.set_value(bn.scale[...].at[idx].set(0.0))
    bn.bias.set_value(bn.bias[...].at[idx].set(0.0))
