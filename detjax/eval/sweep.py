"""NMS threshold sweep: the validation split's head outputs computed once, then the val
postprocess and COCO scoring at every (confidence, IoU) threshold pair without the network.

:func:`raw_predictions` runs the model over a loader once and keeps, per batch, the decoded
predictions before NMS ``[B, 4 + C, A_b]`` (``cxcywh`` network pixels + class probabilities)
in host memory. Only the anchor columns where some image of the batch has a class score above
``min_conf`` are kept (in anchor order): the others can never become a candidate at a
confidence threshold ``>= min_conf``, so dropping them changes no NMS result, and a trained
model at conf 0.001 keeps a fraction of the ``A`` columns. Letterbox parameters and ground
truth come along; images do not.

:func:`sweep_nms` runs :func:`detjax.non_max_suppression` on those arrays, vmapped over the IoU
thresholds (one compiled call per batch instead of one per threshold: 1.3 s against 2.5 s for
7 thresholds on random ``[4, 84, 2100]`` predictions at conf 0.001, multi-label, on a busy
2-core CPU), and scores each grid
point with :class:`~detjax.eval.Evaluator` exactly as :func:`detjax.eval.evaluate` does (the
same detections up to float rounding of the separately compiled forward). For greedy and
DIoU-NMS the confidence axis costs no NMS at all: a candidate is only ever suppressed by a
higher-scoring one, so the survivors at threshold ``c`` are the survivors at the grid's lowest
threshold that score ``> c`` (and the ``max_det`` / ``max_nms`` cuts keep the best-scoring
rows, so they agree too). Soft-NMS decays scores with lower-scoring boxes present, so there
each confidence runs its own NMS.

ultralytics reports mAP at conf 0.001 (its validator); the mAP50-95 over the IoU grid at the
grid's lowest confidence chooses the IoU threshold here as well.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IOU_GRID = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8)
CONF_GRID = (0.001, 0.01, 0.05, 0.1, 0.25)
SUMMARY_KEYS = ("map", "map50", "map75")
_BATCH_KEYS = ("boxes", "labels", "gt_mask", "iscrowd", "index", "scale", "pad", "orig_size",
               "image_mask")
_ANCHOR_MULTIPLE = 32  # kept columns are padded up to this multiple (and at least this many)


class RawPredictions(NamedTuple):
    """One loader pass before NMS. ``predictions``: per batch ``[B, 4 + C, A_b]`` float32
    (``cxcywh`` network pixels + class probabilities; only columns with a class score
    ``> min_conf`` in some image); ``batches``: per batch the loader's ground truth and
    letterbox keys (``xyxy`` network pixels); ``records``: the data set's records (``xyxy``
    original-pixel ground truth) or None."""

    predictions: list[np.ndarray]
    batches: list[dict[str, np.ndarray]]
    records: Sequence[Any] | None
    min_conf: float


class Sweep(NamedTuple):
    """``conf_grid [Cn]``, ``iou_grid [In]``; ``metrics``: ``map``, ``map50``, ``map75`` each
    ``[Cn, In]``; ``best_iou``: the IoU threshold with the best mAP50-95 at ``conf_grid[0]``;
    ``result``: the full ``coco_evaluate`` result at ``(conf_grid[0], best_iou)``."""

    conf_grid: np.ndarray
    iou_grid: np.ndarray
    metrics: dict[str, np.ndarray]
    best_iou: float
    result: dict[str, Any]


@jax.jit
def _forward(graphdef, variables, images):
    from detjax.eval.validation import _apply

    return _apply(graphdef, variables, images)


def _kept_columns(pred: np.ndarray, min_conf: float) -> np.ndarray:
    """Columns of ``pred [B, 4 + C, A]`` where some image has a class score ``> min_conf``."""
    return np.flatnonzero((pred[:, 4:] > min_conf).any(axis=(0, 1)))


def raw_predictions(model, loader, *, min_conf: float = 0.001) -> RawPredictions:
    """Decoded predictions before NMS of one pass of ``loader`` through ``model`` (NNX
    detector, eval mode; see the module docstring for what is kept)."""
    from flax import nnx

    from detjax.eval.validation import loader_records

    graphdef, variables = nnx.split(model)
    predictions, batches = [], []
    for batch in loader.epoch():
        pred = np.asarray(jax.device_get(_forward(graphdef, variables, batch["images"])),
                          np.float32)  # [B, 4 + C, A]
        predictions.append(np.take(pred, _kept_columns(pred, min_conf), axis=2))
        batches.append({k: np.asarray(batch[k]) for k in _BATCH_KEYS if k in batch})
    return RawPredictions(predictions, batches, loader_records(loader), float(min_conf))


def _pad_columns(pred: np.ndarray, width: int) -> np.ndarray:
    """``[B, 4 + C, a]`` -> ``[B, 4 + C, width]`` with zero columns (score 0, never a
    candidate at a threshold ``>= 0``)."""
    return np.pad(pred, ((0, 0), (0, 0), (0, width - pred.shape[2])))


@functools.partial(jax.jit, static_argnames=("conf_thres", "max_det", "multi_label", "nms"))
def _nms_over_iou(pred, iou_grid, soft_sigma, soft_min_score, *, conf_thres: float,
                  max_det: int, multi_label: bool, nms: str):
    """``pred [B, 4 + C, A]``, ``iou_grid [T]`` -> ``(detections [T, B, max_det, 6],
    valid [T, B, max_det])``."""
    from detjax.nms import non_max_suppression

    def one(iou):
        out = non_max_suppression(pred, conf_thres=conf_thres, iou_thres=iou, max_det=max_det,
                                  multi_label=multi_label, method=nms, soft_sigma=soft_sigma,
                                  soft_min_score=soft_min_score)
        return out.detections, out.valid

    return jax.vmap(one)(iou_grid)


def _check_grid(values: Sequence[float], name: str, low: float) -> np.ndarray:
    grid = np.asarray(sorted(set(float(v) for v in values)), np.float64)
    if grid.ndim != 1 or not len(grid) or grid[0] < low or grid[-1] > 1:
        raise ValueError(f"{name} must be a non-empty list of thresholds in [{low}, 1], got "
                         f"{list(values)}")
    return grid


def sweep_nms(raw: RawPredictions, *, conf_grid: Sequence[float] = CONF_GRID,
              iou_grid: Sequence[float] = IOU_GRID,
              class_names: Sequence[str] | None = None, max_det: int = 300,
              multi_label: bool = True, nms: str = "greedy", soft_sigma: float = 0.5,
              soft_min_score: float = 0.001) -> Sweep:
    """COCO metrics of ``raw`` at every ``(conf, iou)`` of the two grids (sorted, duplicates
    dropped; confidences ``>= raw.min_conf``), postprocessed as :func:`detjax.eval.evaluate`
    with ``conf_thres=conf, iou_thres=iou`` and the other settings given here."""
    from detjax.eval.evaluator import Evaluator

    confs = _check_grid(conf_grid, "conf_grid", raw.min_conf)
    ious = _check_grid(iou_grid, "iou_grid", 0.0)
    names = list(class_names) if class_names else None
    evaluators = [[Evaluator(num_classes=len(names) if names else None, class_names=names)
                   for _ in ious] for _ in confs]
    width = max([p.shape[2] for p in raw.predictions] + [1])
    width = -(-width // _ANCHOR_MULTIPLE) * _ANCHOR_MULTIPLE
    run = functools.partial(_nms_over_iou, iou_grid=jnp.asarray(ious, jnp.float32),
                            soft_sigma=np.float32(soft_sigma),
                            soft_min_score=np.float32(soft_min_score), max_det=int(max_det),
                            multi_label=bool(multi_label), nms=str(nms))
    filter_only = nms in ("greedy", "diou")
    for pred, batch in zip(raw.predictions, raw.batches):
        pred = jnp.asarray(_pad_columns(pred, width))
        records = raw.records if raw.records is not None and "index" in batch else None
        if filter_only:
            det, valid = jax.device_get(run(pred, conf_thres=float(confs[0])))
        for c, conf in enumerate(confs):
            if filter_only:
                keep = valid & (det[..., 4] > conf)  # [T, B, max_det]
            else:
                det, keep = jax.device_get(run(pred, conf_thres=float(conf)))
            for t in range(len(ious)):
                evaluators[c][t].update_batch(det[t], keep[t], batch, records=records)
    return _score(evaluators, confs, ious)


def _score(evaluators: list[list[Any]], confs: np.ndarray, ious: np.ndarray) -> Sweep:
    """Scores every grid point; keeps the full results at the lowest conf only."""
    metrics = {k: np.zeros((len(confs), len(ious))) for k in SUMMARY_KEYS}
    lowest: list[dict[str, Any]] = []
    for c, row in enumerate(evaluators):
        for t, ev in enumerate(row):
            result = ev.compute()
            row[t] = None  # frees the detections of a scored grid point
            for k in SUMMARY_KEYS:
                metrics[k][c, t] = result[k]
            if c == 0:
                lowest.append(result)
    best = int(np.argmax(metrics["map"][0]))  # ties: the lowest IoU threshold
    return Sweep(confs, ious, metrics, float(ious[best]), lowest[best])
