"""YOLOv8-style detectors in flax.nnx (NHWC): backbone, PAN neck, DFL / anchor-based / FCOS
heads. See :mod:`detjax.models.detector` for the interface that training and evaluation use."""

from detjax.models.backbone import Backbone, scale_depth, scale_width
from detjax.models.blocks import SPPF, Bottleneck, C2f, ConvBNAct, set_bn_axis_name
from detjax.models.detector import HEADS, SCALES, Detector, create_model
from detjax.models.fuse import fuse  # binds the function over the submodule of the same name
from detjax.models.heads import ATSSHead, DFLHead, FCOSHead, HeadOutput, RetinaHead
from detjax.models.neck import PAN

__all__ = [
    "HEADS", "PAN", "SCALES", "SPPF", "ATSSHead", "Backbone", "Bottleneck", "C2f", "ConvBNAct",
    "DFLHead", "Detector", "FCOSHead", "HeadOutput", "RetinaHead", "create_model", "fuse",
    "scale_depth", "scale_width", "set_bn_axis_name",
]
