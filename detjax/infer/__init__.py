"""Inference: predict on images, sliced (SAHI-style) inference, flip/scale TTA, box fusion.

Names resolve lazily so ``import detjax.infer`` does no work.
"""

import importlib as _importlib

_LAZY = {
    "Prediction": "detjax.infer.predict",
    "Predictor": "detjax.infer.predict",
    "letterbox_image": "detjax.infer.predict",
    "make_postprocess": "detjax.infer.predict",
    "predict_source": "detjax.infer.predict",
    "list_images": "detjax.infer.predict",
    "slice_windows": "detjax.infer.sliced",
    "sliced_predict": "detjax.infer.sliced",
    "merge_nms": "detjax.infer.sliced",
    "tta_predict": "detjax.infer.tta",
    "scale_image": "detjax.infer.tta",
    "descale_predictions": "detjax.infer.tta",
    "weighted_boxes_fusion": "detjax.infer.fusion",
}


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'detjax.infer' has no attribute {name!r}")


__all__ = list(_LAZY)
