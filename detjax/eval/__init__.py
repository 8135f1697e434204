"""Evaluation: COCO mAP identical to pycocotools, PR curves, batch evaluator, and the
validation of a detector over a loader (``evaluate``) that training and ``detjax val`` share.

Names resolve lazily so ``import detjax.eval`` does no work.
"""

from detjax._lazy import lazy_getattr

_LAZY = {
    "coco_evaluate": "detjax.eval.coco",
    "coco_iou_thresholds": "detjax.eval.coco",
    "coco_recall_thresholds": "detjax.eval.coco",
    "evaluate_coco_json": "detjax.eval.coco",
    "coco_json_to_inputs": "detjax.eval.coco",
    "Evaluator": "detjax.eval.evaluator",
    "evaluate": "detjax.eval.validation",
    "accumulate": "detjax.eval.validation",
    "predict_batch": "detjax.eval.validation",
    "eval_settings": "detjax.eval.validation",
    "inference_fn": "detjax.eval.validation",
    "scale_boxes": "detjax.eval.evaluator",
    "pr_curve": "detjax.eval.pr",
    "PRCurve": "detjax.eval.pr",
    "best_f1": "detjax.eval.pr",
    "confidence_curves": "detjax.eval.pr",
    "f1_curve": "detjax.eval.pr",
    "F1Curve": "detjax.eval.pr",
    "best_f1_confidence": "detjax.eval.pr",
    "raw_predictions": "detjax.eval.sweep",
    "RawPredictions": "detjax.eval.sweep",
    "sweep_nms": "detjax.eval.sweep",
    "Sweep": "detjax.eval.sweep",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = list(_LAZY)
