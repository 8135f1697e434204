"""Assigners: which prediction learns which ground-truth box.

Every assigner works on one image with ground truth padded to ``M`` slots
(``gt_boxes [M, 4]`` xyxy pixels, ``gt_labels [M]``, ``gt_mask [M]``) and returns
fixed-size per-anchor targets; ``jax.vmap`` batches it.
"""

from detjax.assign.tal import TaskAlignedTargets, batched_task_aligned, task_aligned

__all__ = ["TaskAlignedTargets", "batched_task_aligned", "task_aligned"]
