"""Validation of a detector: forward + postprocess per batch, COCO metrics over a loader.

The one evaluation that ``detjax train`` (every ``eval.every`` epochs), ``detjax val`` and
Python users run. It takes an NNX detector (``model(images) -> outputs``,
``model.predict(outputs) -> [B, 4 + C, A]`` with ``cxcywh`` pixel boxes and class
probabilities), not a train state: training passes its EMA model, ``detjax val`` the restored
one.

The postprocess is ultralytics' ``DetectionValidator``: ``detjax.non_max_suppression`` with
conf 0.001, IoU 0.7, 300 detections and multi-label candidates (one per anchor and class).
Detections are ``[B, max_det, 6]`` rows ``(x1, y1, x2, y2, score, class)`` (``xyxy`` network
pixels) with ``valid [B, max_det]``; :class:`~detjax.eval.Evaluator` maps them back to the
original images.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def _to_float(images: jax.Array) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> float32 in 0..1; float input is only cast."""
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def _apply(graphdef, variables, images: jax.Array) -> jax.Array:
    from flax import nnx

    model = nnx.merge(graphdef, variables)
    outputs = jax.tree.map(lambda x: x.astype(jnp.float32), model(_to_float(images)))
    return model.predict(outputs)


def inference_fn(model) -> tuple[Callable[[Any, jax.Array], jax.Array], Any]:
    """``(forward, variables)`` of an NNX detector, for jitting: ``forward(variables, images)``
    with images uint8 or float 0..1 ``[B, H, W, 3]`` -> ``[B, 4 + C, A]`` (``cxcywh`` pixels
    + class probabilities). Put the model in eval mode first (``model.eval()``)."""
    from flax import nnx

    graphdef, variables = nnx.split(model)
    return functools.partial(_apply, graphdef), variables


# the graph definition is an argument, not a static one: it is a pytree without leaves whose
# structure jit hashes and compares (the GraphDef itself is not hashable)
@functools.partial(jax.jit, static_argnames=("conf_thres", "max_det", "multi_label", "nms"))
def _predict(graphdef, variables, images, iou_thres, soft_sigma, soft_min_score, *,
             conf_thres: float, max_det: int, multi_label: bool, nms: str):
    from detjax.nms import non_max_suppression

    out = non_max_suppression(_apply(graphdef, variables, images), conf_thres=conf_thres,
                              iou_thres=iou_thres, max_det=max_det, multi_label=multi_label,
                              method=nms, soft_sigma=soft_sigma, soft_min_score=soft_min_score)
    return out.detections, out.valid


def predict_batch(model, images: jax.Array, *, conf_thres: float = 0.001,
                  iou_thres: float = 0.7, max_det: int = 300, multi_label: bool = True,
                  nms: str = "greedy", soft_sigma: float = 0.5, soft_min_score: float = 0.001
                  ) -> tuple[jax.Array, jax.Array]:
    """Forward + ultralytics val postprocess of one batch: ``images`` ``[B, S, S, 3]`` (uint8
    or float 0..1) -> ``(detections [B, max_det, 6] xyxy, valid [B, max_det])``. ``model`` is
    an NNX detector in eval mode; defaults are ultralytics ``DetectionValidator``'s; ``nms``
    is :func:`detjax.non_max_suppression`'s ``method``."""
    from flax import nnx

    graphdef, variables = nnx.split(model)
    return _predict(graphdef, variables, images, np.float32(iou_thres), np.float32(soft_sigma),
                    np.float32(soft_min_score), conf_thres=float(conf_thres),
                    max_det=int(max_det), multi_label=bool(multi_label), nms=str(nms))


def eval_settings(cfg) -> dict[str, Any]:
    """The postprocess keyword arguments of :func:`evaluate` from a config's ``eval`` section."""
    e = cfg.eval
    return {"conf_thres": float(e.conf_thres), "iou_thres": float(e.iou_thres),
            "max_det": int(e.max_det), "multi_label": bool(e.multi_label),
            "nms": str(e.nms), "soft_sigma": float(e.soft_sigma),
            "soft_min_score": float(e.soft_min_score)}


def accumulate(model, loader, *, class_names: Sequence[str] | None = None,
               keep_images: int = 0, conf_thres: float = 0.001, iou_thres: float = 0.7,
               max_det: int = 300, multi_label: bool = True, nms: str = "greedy",
               soft_sigma: float = 0.5, soft_min_score: float = 0.001):
    """One pass of ``loader`` through ``model`` (NNX detector, eval mode) and the val
    postprocess -> ``(Evaluator, samples)``: the :class:`~detjax.eval.Evaluator` holds every
    image's detections and ground truth (``xyxy`` original pixels, loader order), not yet
    scored; ``samples`` as in :func:`evaluate`.

    Ground truth comes from the loader's data set (every box, original pixels) when the loader
    does not augment; a batch's copy is capped at ``data.max_boxes``.
    """
    from flax import nnx

    from detjax.eval.evaluator import Evaluator

    graphdef, variables = nnx.split(model)
    ev = Evaluator(num_classes=len(class_names) if class_names else None,
                   class_names=list(class_names) if class_names else None)
    records = loader_records(loader)
    samples: list = []
    for batch in loader.epoch():
        det, valid = jax.device_get(_predict(
            graphdef, variables, batch["images"], np.float32(iou_thres), np.float32(soft_sigma),
            np.float32(soft_min_score), conf_thres=float(conf_thres), max_det=int(max_det),
            multi_label=bool(multi_label), nms=str(nms)))
        ev.update_batch(det, valid, batch,
                        records=records if records is not None and "index" in batch else None)
        samples += _samples(det, valid, batch, keep_images - len(samples))
    return ev, samples


def loader_records(loader) -> Sequence[Any] | None:
    """The data set records (``xyxy`` original-pixel ground truth) behind a loader that does
    not augment, else None (then a batch's own, letterboxed ground truth is used)."""
    records = getattr(getattr(loader, "dataset", None), "records", None)
    if getattr(getattr(loader, "config", None), "augment", True):
        return None
    return records


def evaluate(model, loader, *, class_names: Sequence[str] | None = None,
             keep_images: int = 0, conf_thres: float = 0.001, iou_thres: float = 0.7,
             max_det: int = 300, multi_label: bool = True, nms: str = "greedy",
             soft_sigma: float = 0.5, soft_min_score: float = 0.001
             ) -> tuple[dict[str, Any], list]:
    """COCO metrics of ``model`` (NNX detector, eval mode) on one pass of ``loader``
    (a ``detjax.data.Loader`` yielding letterboxed batches) and up to ``keep_images`` samples
    ``(image, (boxes, scores, labels), (gt_boxes, gt_labels))`` (``xyxy`` network pixels,
    detections scoring above 0.25) for a validation grid. ``nms`` (``eval.nms``): greedy,
    soft_linear, soft_gaussian or diou (:func:`detjax.non_max_suppression`).

    Ground truth comes from the loader's data set (every box, original pixels) when the loader
    does not augment; a batch's copy is capped at ``data.max_boxes``.
    """
    ev, samples = accumulate(model, loader, class_names=class_names, keep_images=keep_images,
                             conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                             multi_label=multi_label, nms=nms, soft_sigma=soft_sigma,
                             soft_min_score=soft_min_score)
    return ev.compute(), samples


def _samples(det: np.ndarray, valid: np.ndarray, batch: dict, n: int) -> list:
    out: list = []
    for i in range(len(det)):
        if len(out) >= n or not batch["image_mask"][i]:
            break
        box = det[i, :, :4]
        k = valid[i] & (det[i, :, 4] > 0.25) & np.all(box[:, 2:] > box[:, :2], axis=-1)
        g = batch["gt_mask"][i]
        out.append((batch["images"][i], (det[i, k, :4], det[i, k, 4], det[i, k, 5]),
                    (batch["boxes"][i][g], batch["labels"][i][g])))
    return out
