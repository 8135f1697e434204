"""The YOLOv8 CSP backbone (ultralytics ``yolov8.yaml`` layers 0-9), NHWC, in flax.nnx.

``[B, H, W, 3] -> {2: P2 [B, H/4, W/4, c2], 3: P3 [.., H/8], 4: P4 [.., H/16], 5: P5 [.., H/32]}``
with channels ``(128, 256, 512, 1024)`` scaled by the width multiplier (see ``scale_width``).
Layers: Conv 3x3/2 (64) -> Conv 3x3/2 (128) -> C2f x3 -> Conv/2 (256) -> C2f x6 -> Conv/2 (512)
-> C2f x6 -> Conv/2 (1024) -> C2f x3 -> SPPF; C2f blocks with residual shortcuts; repeats scaled
by the depth multiplier (``scale_depth``).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from detjax.models.blocks import SPPF, C2f, ConvBNAct


def scale_width(channels: int, width: float, max_channels: int) -> int:
    """ultralytics ``make_divisible(min(c, max_channels) * width, 8)`` (rounds up to 8)."""
    return int(math.ceil(min(channels, max_channels) * width / 8) * 8)


def scale_depth(repeats: int, depth: float) -> int:
    """ultralytics ``max(round(n * depth), 1) if n > 1 else n``."""
    return max(round(repeats * depth), 1) if repeats > 1 else repeats


class Backbone(nnx.Module):
    """YOLOv8 backbone; ``__call__`` returns the P2..P5 feature maps keyed by level."""

    def __init__(self, *, width: float, depth: float, max_channels: int, dtype=None,
                 rngs: nnx.Rngs):
        ch = [scale_width(c, width, max_channels) for c in (64, 128, 256, 512, 1024)]
        n3, n6 = scale_depth(3, depth), scale_depth(6, depth)
        self.channels = {2: ch[1], 3: ch[2], 4: ch[3], 5: ch[4]}
        kw = {"dtype": dtype, "rngs": rngs}
        self.stem = ConvBNAct(3, ch[0], 3, 2, **kw)
        self.down2 = ConvBNAct(ch[0], ch[1], 3, 2, **kw)
        self.c2f2 = C2f(ch[1], ch[1], n3, shortcut=True, **kw)
        self.down3 = ConvBNAct(ch[1], ch[2], 3, 2, **kw)
        self.c2f3 = C2f(ch[2], ch[2], n6, shortcut=True, **kw)
        self.down4 = ConvBNAct(ch[2], ch[3], 3, 2, **kw)
        self.c2f4 = C2f(ch[3], ch[3], n6, shortcut=True, **kw)
        self.down5 = ConvBNAct(ch[3], ch[4], 3, 2, **kw)
        self.c2f5 = C2f(ch[4], ch[4], n3, shortcut=True, **kw)
        self.sppf = SPPF(ch[4], ch[4], 5, **kw)

    def __call__(self, x: jax.Array) -> dict[int, jax.Array]:
        p2 = self.c2f2(self.down2(self.stem(x)))
        p3 = self.c2f3(self.down3(p2))
        p4 = self.c2f4(self.down4(p3))
        p5 = self.sppf(self.c2f5(self.down5(p4)))
        return {2: p2, 3: p3, 4: p4, 5: p5}
