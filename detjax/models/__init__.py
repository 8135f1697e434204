"""YOLOv8-style detectors in flax.nnx (NHWC): backbone, PAN neck, DFL / anchor-based / FCOS
heads. See :mod:`detjax.models.detector` for the contract with training and evaluation."""

from detjax.models.backbone import Backbone, scale_depth, scale_width
from detjax.models.blocks import SPPF, Bottleneck, C2f, ConvBNAct
from detjax.models.detector import HEADS, SCALES, Detector, create_model
from detjax.models.heads import DFLHead, HeadOutput, anchor_grid, dfl_expectation
from detjax.models.neck import PAN

__all__ = [
    "HEADS", "PAN", "SCALES", "SPPF", "Backbone", "Bottleneck", "C2f", "ConvBNAct", "DFLHead",
    "Detector", "HeadOutput", "anchor_grid", "create_model", "dfl_expectation", "scale_depth",
    "scale_width",
]
