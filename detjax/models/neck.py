"""The YOLOv8 PAN neck (ultralytics ``yolov8.yaml`` / ``yolov8-p2.yaml`` head layers before
``Detect``), NHWC, in flax.nnx.

Top-down: from P5, repeatedly upsample 2x (nearest), concatenate ``[upsampled, backbone P_l]``
and fuse with a ``C2f`` (no shortcut) of the level's width. Bottom-up: from the lowest output
level, a 3x3/2 ``ConvBNAct`` of the same width, concatenate ``[downsampled, top-down P_l]`` and a
``C2f`` of the next level's width. ``levels=(3, 4, 5)`` is YOLOv8, ``(2, 3, 4, 5)`` the P2 model.
Output: a list of ``[B, H/2**l, W/2**l, channels[l]]`` maps, lowest level first.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from detjax.models.blocks import C2f, ConvBNAct, upsample2x


class PAN(nnx.Module):
    """Path-aggregation neck over ``levels`` (consecutive, ending at 5)."""

    def __init__(self, channels: dict[int, int], *, levels: tuple[int, ...], depth_n: int,
                 dtype=None, rngs: nnx.Rngs):
        if tuple(levels) not in ((3, 4, 5), (2, 3, 4, 5)):
            raise ValueError(f"levels must be (3, 4, 5) or (2, 3, 4, 5), got {levels}")
        self.levels = tuple(levels)
        kw = {"dtype": dtype, "rngs": rngs}
        top_down = []  # one C2f per level below 5, from level 4 downwards
        for lvl in reversed(self.levels[:-1]):
            top_down.append(C2f(channels[lvl + 1] + channels[lvl], channels[lvl], depth_n, **kw))
        bottom_up_conv, bottom_up_c2f = [], []
        for lvl in self.levels[1:]:  # output level lvl made from output level lvl - 1
            c_low = channels[lvl - 1]
            bottom_up_conv.append(ConvBNAct(c_low, c_low, 3, 2, **kw))
            bottom_up_c2f.append(C2f(c_low + channels[lvl], channels[lvl], depth_n, **kw))
        self.top_down = nnx.List(top_down)
        self.bottom_up_conv = nnx.List(bottom_up_conv)
        self.bottom_up_c2f = nnx.List(bottom_up_c2f)
        self.out_channels = tuple(channels[lvl] for lvl in self.levels)

    def __call__(self, feats: dict[int, jax.Array]) -> list[jax.Array]:
        x = feats[5]
        inner = {5: x}
        for block, lvl in zip(self.top_down, reversed(self.levels[:-1])):
            x = block(jnp.concatenate([upsample2x(x), feats[lvl]], axis=-1))
            inner[lvl] = x
        outs = [x]
        for conv, block, lvl in zip(self.bottom_up_conv, self.bottom_up_c2f, self.levels[1:]):
            x = block(jnp.concatenate([conv(x), inner[lvl]], axis=-1))
            outs.append(x)
        return outs
