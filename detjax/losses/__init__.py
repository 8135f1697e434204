"""Losses: classification, box regression, distribution, and composite detector losses.

Every elementwise loss returns per-element values (callers reduce with an explicit
normaliser); composite losses return ``(total, {component: value})``. Hyperparameters
are keyword-only, default to the reference named in each docstring, and may be traced
JAX values, so a loss can be ``jax.vmap``-ed over a hyperparameter grid.
"""

from detjax.losses.classification import (
    binary_cross_entropy,
    class_weights_from_counts,
    quality_focal_loss,
    sigmoid_focal_loss,
    softmax_cross_entropy,
    softmax_focal_loss,
    varifocal_loss,
)
from detjax.losses.dense import gfl_loss, retinanet_loss
from detjax.losses.detr import detr_set_loss
from detjax.losses.distill import (
    dense_distillation_loss,
    dfl_distillation_loss,
    feature_imitation_loss,
    kd_loss,
    kd_mixed_loss,
    score_distillation_loss,
)
from detjax.losses.distribution import DFLConvention, dfl_bins, distribution_focal_loss
from detjax.losses.regression import (
    complete_box_iou_loss,
    distance_box_iou_loss,
    generalized_box_iou_loss,
    iou_loss,
    l1_loss,
    smooth_l1_loss,
)
from detjax.losses.yolo import yolo_box_loss, yolo_detection_loss

focal_loss = sigmoid_focal_loss  # the name DESIGN.md and most users reach for

__all__ = [
    "DFLConvention",
    "binary_cross_entropy",
    "class_weights_from_counts",
    "complete_box_iou_loss",
    "detr_set_loss",
    "dfl_bins",
    "dense_distillation_loss",
    "dfl_distillation_loss",
    "feature_imitation_loss",
    "distance_box_iou_loss",
    "distribution_focal_loss",
    "focal_loss",
    "generalized_box_iou_loss",
    "gfl_loss",
    "iou_loss",
    "kd_loss",
    "kd_mixed_loss",
    "l1_loss",
    "quality_focal_loss",
    "retinanet_loss",
    "score_distillation_loss",
    "sigmoid_focal_loss",
    "smooth_l1_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "varifocal_loss",
    "yolo_box_loss",
    "yolo_detection_loss",
]
