"""Assigners: which prediction learns which ground-truth box.

Every assigner works on one image with ground truth padded to ``M`` slots
(``gt_boxes [M, 4]`` xyxy pixels, ``gt_labels [M]``, ``gt_mask [M]``) and returns
fixed-size per-anchor targets; ``jax.vmap`` batches it.
"""

from detjax.assign.atss import atss
from detjax.assign.fcos import (
    FCOS_REGRESS_RANGES,
    FCOS_STRIDES,
    FcosTargets,
    centerness_target,
    fcos_targets,
)
from detjax.assign.hungarian import SetMatch, detr_cost, hungarian, linear_assignment
from detjax.assign.max_iou import IGNORED, NEGATIVE, Match, match_quality, max_iou
from detjax.assign.tal import (
    CompactTaskAlignedTargets,
    TaskAlignedTargets,
    batched_task_aligned,
    task_aligned,
    task_aligned_compact,
)

__all__ = [
    "FCOS_REGRESS_RANGES", "FCOS_STRIDES", "IGNORED", "NEGATIVE", "CompactTaskAlignedTargets",
    "FcosTargets", "Match", "SetMatch", "TaskAlignedTargets", "atss", "batched_task_aligned",
    "centerness_target", "detr_cost", "fcos_targets", "hungarian", "linear_assignment",
    "match_quality", "max_iou", "task_aligned", "task_aligned_compact",
]
