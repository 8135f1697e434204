"""Batch-by-batch COCO evaluation of fixed-size postprocess outputs.

Detections come from ``detjax.non_max_suppression`` as ``[B, max_det, 6]`` rows
``(x1, y1, x2, y2, score, class)`` in the network input's pixels (``xyxy``) with a ``valid``
mask ``[B, max_det]`` (or a count ``[B]``). Ground truth comes from a loader batch:
``boxes [B, M, 4]`` ``xyxy`` in the same pixels, ``labels [B, M]``, ``gt_mask [B, M]``.
Both are mapped back to each original image with :func:`scale_boxes` (undo letterbox) when
the letterbox parameters are given, so areas (small/medium/large) and IoUs are measured in
original pixels, as ultralytics' validator does before it calls pycocotools.

Letterbox parameters (``detjax.data.loader`` eval batches): a batch may carry
the letterbox parameters under ``scale`` ``[B, 2]`` (``sx, sy``: ``box_net = box_orig * s +
pad``), ``pad`` ``[B, 2]`` (``left, top``), ``orig_size`` ``[B, 2]`` (``h, w``) and
``image_mask`` ``[B]`` (false for padding images of a short last batch), matching
``detjax.data.transforms.letterbox``; missing keys mean "evaluate in network pixels" / "all
images real".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from detjax.eval.coco import coco_evaluate

BATCH_KEYS = ("scale", "pad", "orig_size", "image_mask")


def scale_boxes(boxes: Any, scale: Any, pad: Any, orig_size: Any | None = None) -> np.ndarray:
    """Undo a letterbox: ``xyxy`` ``[..., N, 4]`` network pixels -> original pixels.

    ``box_orig = (box_net - pad) / scale`` per axis with ``scale = (sx, sy)`` and
    ``pad = (left, top)`` shaped ``[..., 2]``; then clipped to ``orig_size = (h, w)`` when given
    (ultralytics ``ops.scale_boxes`` with the exact per-axis scale of
    ``detjax.data.transforms.letterbox``).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.shape[-1] != 4:
        raise ValueError(f"boxes must be [..., N, 4] xyxy, got shape {b.shape}")
    s = np.asarray(scale, dtype=np.float64)[..., None, :]
    p = np.asarray(pad, dtype=np.float64)[..., None, :]
    if s.shape[-1] != 2 or p.shape[-1] != 2:
        raise ValueError(f"scale and pad must be [..., 2] (x, y), got {s.shape[:-2]} / "
                         f"{p.shape[:-2]}")
    out = (b - np.concatenate([p, p], -1)) / np.concatenate([s, s], -1)
    if orig_size is not None:
        hw = np.asarray(orig_size, dtype=np.float64)[..., None, :]
        upper = np.concatenate([hw[..., 1:], hw[..., :1], hw[..., 1:], hw[..., :1]], -1)
        out = np.clip(out, 0.0, upper)
    return out


def _valid_mask(valid: Any, batch: int, max_det: int) -> np.ndarray:
    v = np.asarray(valid)
    if v.shape == (batch,):  # a count per image
        return np.arange(max_det)[None, :] < v[:, None]
    if v.shape != (batch, max_det):
        raise ValueError(f"valid must be a mask [B, max_det] = [{batch}, {max_det}] or a "
                         f"count [B], got shape {v.shape}")
    return v.astype(bool)


class Evaluator:
    """Accumulates detections and ground truth image by image, then runs ``coco_evaluate``.

    Example::

        ev = Evaluator(num_classes=3)
        for batch in loader.epoch():
            dets, valid = detjax.eval.predict_batch(model, batch["images"])
            ev.update_batch(dets, valid, batch)
        metrics = ev.compute()   # dict from detjax.eval.coco_evaluate
    """

    def __init__(self, num_classes: int | None = None, *,
                 class_names: Sequence[str] | None = None,
                 iou_thresholds: Sequence[float] | None = None,
                 max_dets: Sequence[int] = (1, 10, 100)) -> None:
        self.num_classes = num_classes
        self.class_names = class_names
        self.iou_thresholds = iou_thresholds
        self.max_dets = tuple(max_dets)
        self.reset()

    def reset(self) -> None:
        self.detections: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.ground_truths: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def __len__(self) -> int:
        return len(self.detections)

    def add_image(self, det_boxes: Any, det_scores: Any, det_labels: Any, gt_boxes: Any,
                  gt_labels: Any, gt_iscrowd: Any | None = None) -> None:
        """One image, ragged: ``det_boxes [n, 4]``, ``det_scores [n]``, ``det_labels [n]``,
        ``gt_boxes [m, 4]``, ``gt_labels [m]`` (all ``xyxy``, same pixels)."""
        gb = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
        crowd = (np.zeros(len(gb), bool) if gt_iscrowd is None
                 else np.asarray(gt_iscrowd, bool).reshape(-1))
        self.detections.append((np.asarray(det_boxes, np.float64).reshape(-1, 4),
                                np.asarray(det_scores, np.float64).reshape(-1),
                                np.asarray(det_labels, np.int64).reshape(-1)))
        self.ground_truths.append((gb, np.asarray(gt_labels, np.int64).reshape(-1), crowd))

    def update(self, detections: Any, valid: Any, gt_boxes: Any, gt_labels: Any, gt_mask: Any,
               *, scale: Any | None = None, pad: Any | None = None,
               orig_size: Any | None = None, image_mask: Any | None = None,
               gt_iscrowd: Any | None = None) -> None:
        """One batch of fixed-size outputs.

        Args:
          detections: ``[B, max_det, 6]`` ``(x1, y1, x2, y2, score, class)`` network pixels.
          valid: ``[B, max_det]`` bool mask or ``[B]`` count of real rows.
          gt_boxes: ``[B, M, 4]`` ``xyxy`` network pixels; ``gt_labels [B, M]``;
            ``gt_mask [B, M]``; ``gt_iscrowd [B, M]`` optional.
          scale, pad, orig_size: letterbox parameters ``[B, 2]`` (see :func:`scale_boxes`);
            when given, boxes are mapped back to the original images.
          image_mask: ``[B]``; false rows (batch padding) are skipped.
        """
        det = np.asarray(detections, np.float64)
        if det.ndim != 3 or det.shape[-1] != 6:
            raise ValueError(f"detections must be [B, max_det, 6], got shape {det.shape}")
        b, max_det = det.shape[:2]
        keep = _valid_mask(valid, b, max_det)
        gb = np.asarray(gt_boxes, np.float64)
        gm = np.asarray(gt_mask, bool)
        gl = np.asarray(gt_labels)
        if gb.ndim != 3 or gb.shape[0] != b or gb.shape[-1] != 4 or gm.shape != gb.shape[:2]:
            raise ValueError(f"gt_boxes must be [B={b}, M, 4] with gt_mask [B, M], got "
                             f"{gb.shape} and {gm.shape}")
        boxes = det[..., :4]
        if scale is not None or pad is not None:
            scale = np.ones((b, 2)) if scale is None else scale
            pad = np.zeros((b, 2)) if pad is None else pad
            boxes = scale_boxes(boxes, scale, pad, orig_size)
            gb = scale_boxes(gb, scale, pad, orig_size)
        crowd = None if gt_iscrowd is None else np.asarray(gt_iscrowd, bool)
        images = np.ones(b, bool) if image_mask is None else np.asarray(image_mask, bool)
        for i in np.flatnonzero(images):
            k, g = keep[i], gm[i]
            self.add_image(boxes[i][k], det[i, k, 4], det[i, k, 5].round(), gb[i][g], gl[i][g],
                           None if crowd is None else crowd[i][g])

    def update_batch(self, detections: Any, valid: Any, batch: Mapping[str, Any], *,
                     records: Sequence[Any] | None = None) -> None:
        """:meth:`update` with ground truth and letterbox parameters read from a loader batch
        (``boxes``, ``labels``, ``gt_mask`` and the optional keys in the module docstring).

        With ``records`` (the data set: ``records[batch["index"][i]]`` has ``boxes`` ``xyxy``
        original pixels and ``labels``), ground truth is taken from there instead: every box,
        untouched by ``max_boxes`` truncation and the letterbox round trip.
        """
        extra = {key: batch[key] for key in BATCH_KEYS if key in batch}
        if records is None:
            self.update(detections, valid, batch["boxes"], batch["labels"], batch["gt_mask"],
                        gt_iscrowd=batch.get("iscrowd"), **extra)
            return
        if "index" not in batch:
            raise ValueError("update_batch(records=...) needs the batch's 'index' key")
        start = len(self.ground_truths)
        b = np.asarray(detections).shape[0]
        empty = np.zeros((b, 0, 4)), np.zeros((b, 0), np.int64), np.zeros((b, 0), bool)
        self.update(detections, valid, *empty, **extra)
        images = np.ones(b, bool) if "image_mask" not in batch else np.asarray(
            batch["image_mask"], bool)
        for slot, i in enumerate(np.flatnonzero(images)):
            rec = records[int(np.asarray(batch["index"])[i])]
            crowd = getattr(rec, "iscrowd", None)
            self.ground_truths[start + slot] = (
                np.asarray(rec.boxes, np.float64).reshape(-1, 4),
                np.asarray(rec.labels, np.int64).reshape(-1),
                np.zeros(len(rec.labels), bool) if crowd is None else np.asarray(crowd, bool))

    def compute(self) -> dict[str, Any]:
        """``coco_evaluate`` over everything added since the last :meth:`reset`."""
        return coco_evaluate(self.detections, self.ground_truths, num_classes=self.num_classes,
                             class_names=self.class_names, iou_thresholds=self.iou_thresholds,
                             max_dets=self.max_dets)
