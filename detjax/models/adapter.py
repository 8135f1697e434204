"""Per-level 1x1 convolutions that bring a student's neck features to a teacher's widths.

Feature imitation (FitNets, Romero et al. 2015: a learned "regressor" on the student's hint
layer) compares the student's pyramid level ``l`` ``[B, H_l, W_l, c_l]`` with the teacher's
``[B, H_l, W_l, C_l]``; where ``c_l != C_l`` a 1x1 convolution with bias maps ``c_l -> C_l``,
elsewhere the level passes unchanged. The adapter trains with the student but is no part of
the detector: a run restores and exports the detector alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from detjax.models.blocks import conv2d

ADAPTER_ATTR = "feature_adapter"  # the student's attribute holding its adapter


class FeatureAdapter(nnx.Module):
    """``[B, H_l, W_l, student_l]`` per level -> ``[B, H_l, W_l, teacher_l]`` per level."""

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], *,
                 rngs: nnx.Rngs):
        if len(student_channels) != len(teacher_channels):
            raise ValueError(f"student and teacher must have the same pyramid levels, got "
                             f"widths {list(student_channels)} and {list(teacher_channels)}")
        pairs = list(zip(student_channels, teacher_channels))
        self.adapted = tuple(s != t for s, t in pairs)  # levels with a convolution
        self.convs = nnx.List([conv2d(s, t, 1, use_bias=True, rngs=rngs)
                               for s, t in pairs if s != t])

    def __call__(self, feats: Sequence[jax.Array]) -> list[jax.Array]:
        if len(feats) != len(self.adapted):
            raise ValueError(f"expected {len(self.adapted)} feature maps, got {len(feats)}")
        convs = iter(self.convs)
        return [next(convs)(f) if adapt else f for adapt, f in zip(self.adapted, feats)]
