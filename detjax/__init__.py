"""detjax: the object-detection toolbox for JAX.

Public API re-exports only; importing detjax does no work beyond importing JAX.
Subpackages (``detjax.losses``, ``detjax.assign``, ``detjax.data``, ...) load lazily
on first attribute access.
"""

import importlib as _importlib

from detjax.boxes import (
    aligned_box_iou,
    aligned_complete_box_iou,
    aligned_distance_box_iou,
    aligned_generalized_box_iou,
    box_area,
    box_convert,
    box_iou,
    clip_boxes,
    complete_box_iou,
    distance_box_iou,
    generalized_box_iou,
)

# Bound eagerly: the function `nms` shares its name with the
# submodule `detjax.nms`, and a lazy binding loses to the submodule attribute once
# `from detjax.nms import ...` has run.
from detjax.nms import (
    NMSResult,
    batched_nms,
    diou_nms,
    nms,
    non_max_suppression,
    soft_nms,
)

__version__ = "0.1.0"

_SUBMODULES = frozenset({
    "anchors", "assign", "boxes", "cli", "coders", "compress", "config", "data", "demo", "eval",
    "export", "infer", "losses", "models", "nms", "plots", "run", "train", "tune",
})


def __getattr__(name: str):
    if name in _SUBMODULES:
        return _importlib.import_module(f"detjax.{name}")
    raise AttributeError(f"module 'detjax' has no attribute {name!r}")


__all__ = [
    "aligned_box_iou",
    "aligned_complete_box_iou",
    "aligned_distance_box_iou",
    "aligned_generalized_box_iou",
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes",
    "complete_box_iou",
    "distance_box_iou",
    "generalized_box_iou",
    "NMSResult",
    "batched_nms",
    "diou_nms",
    "nms",
    "non_max_suppression",
    "soft_nms",
]
