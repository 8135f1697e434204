"""Inference: predict on images, sliced (SAHI-style) inference, flip/scale TTA, box fusion and
ensembles (WBF, NMS, soft-NMS).

Names resolve lazily so ``import detjax.infer`` does no work.
"""

from detjax._lazy import lazy_getattr

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
    "fuse_detections": "detjax.infer.fusion",
    "fuse_images": "detjax.infer.fusion",
    "EnsemblePredictor": "detjax.infer.ensemble",
    "evaluate_ensemble": "detjax.infer.ensemble",
    "check_class_names": "detjax.infer.ensemble",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = list(_LAZY)
