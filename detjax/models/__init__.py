"""YOLOv8-style detectors in flax.nnx (NHWC): backbone, PAN neck, DFL / anchor-based / FCOS
heads; BatchNorm fusion for inference; weights in safetensors files and from ultralytics
checkpoints. See :mod:`detjax.models.detector` for the interface that training and evaluation
use."""

from detjax.models.adapter import FeatureAdapter
from detjax.models.backbone import Backbone, scale_depth, scale_width
from detjax.models.blocks import SPPF, Bottleneck, C2f, ConvBNAct, set_bn_axis_name
from detjax.models.detector import HEADS, SCALES, Detector, create_model, loss_defaults
from detjax.models.fuse import fuse  # binds the function over the submodule of the same name
from detjax.models.heads import ATSSHead, DFLHead, FCOSHead, HeadOutput, RetinaHead
from detjax.models.neck import PAN
from detjax.models.ultralytics import (
    freeze_mask,
    from_ultralytics,
    read_ultralytics_checkpoint,
    ultralytics_architecture,
)
from detjax.models.weights import load_pretrained, load_weights, read_weights, save_weights

__all__ = [
    "HEADS", "PAN", "SCALES", "SPPF", "ATSSHead", "Backbone", "Bottleneck", "C2f", "ConvBNAct",
    "DFLHead", "Detector", "FCOSHead", "FeatureAdapter", "HeadOutput", "RetinaHead", "create_model",
    "freeze_mask", "from_ultralytics", "fuse", "load_pretrained", "load_weights", "loss_defaults",
    "read_ultralytics_checkpoint", "read_weights", "save_weights", "scale_depth", "scale_width",
    "set_bn_axis_name", "ultralytics_architecture",
]
