"""Sliced inference (SAHI-style) for small objects in large images.

Boxes are ``[n, 4]`` ``xyxy`` absolute pixels of the full image. The image is cut into
overlapping tiles (``slice_windows``: SAHI ``get_slice_bboxes``: tiles of ``slice_size``
stepping by ``slice - int(overlap * slice)``, the last row/column shifted back to end at the
border), every tile goes through a :class:`~detjax.infer.predict.Predictor` (letterboxed to its
``imgsz``, one static shape), tile boxes are shifted by the tile origin, the full-image
prediction is added (SAHI ``perform_standard_pred=True``), and duplicates across tiles are
merged with class-aware greedy NMS (``detjax.batched_nms``, strict ``IoU > iou_thres``).
Reference: Akyon et al., "Slicing Aided Hyper Inference" (SAHI, 2022), ``sahi.slicing``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from detjax.infer.predict import Prediction, Predictor


def _axis_starts(size: int, tile: int, overlap: float) -> list[tuple[int, int]]:
    step_back = int(overlap * tile)
    spans, lo = [], 0
    while True:
        hi = lo + tile
        spans.append((max(0, min(size, hi) - tile), min(size, hi)))
        if hi >= size:
            return spans
        lo = hi - step_back


def slice_windows(height: int, width: int, *, slice_size: int | tuple[int, int] = 512,
                  overlap: float | tuple[float, float] = 0.2) -> np.ndarray:
    """Tile windows ``[N, 4]`` ``xyxy`` (int) covering an ``height x width`` image, rows first.
    ``slice_size`` and ``overlap`` are ``(h, w)`` pairs or one value for both axes."""
    sh, sw = (slice_size, slice_size) if isinstance(slice_size, int) else slice_size
    oh, ow = (overlap, overlap) if isinstance(overlap, (int, float)) else overlap
    if min(sh, sw, height, width) < 1 or not (0 <= oh < 1 and 0 <= ow < 1):
        raise ValueError(f"need positive sizes and overlap in [0, 1), got image {height}x"
                         f"{width}, slice {sh}x{sw}, overlap {oh}/{ow}")
    ys, xs = _axis_starts(height, sh, oh), _axis_starts(width, sw, ow)
    return np.array([[x0, y0, x1, y1] for y0, y1 in ys for x0, x1 in xs], np.int64)


def merge_nms(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, *,
              iou_thres: float = 0.5, agnostic: bool = False) -> np.ndarray:
    """Indices kept by class-aware (or ``agnostic``) greedy NMS (torchvision
    ``batched_nms`` semantics), in descending score order.

    ``boxes [N, 4]`` xyxy pixels, ``scores [N]``, ``labels [N]`` int; returns int64 ``[K]``
    indices into them. Inputs are padded to a power of two with ``-inf`` scores so few shapes
    compile.
    """
    n = len(scores)
    if n == 0:
        return np.zeros(0, np.int64)
    size = 1 << int(np.ceil(np.log2(max(n, 2))))
    pb = np.zeros((size, 4), np.float32)
    pb[:n] = boxes
    ps = np.full(size, -np.inf, np.float32)
    ps[:n] = scores
    pl = np.zeros(size, np.int32)
    pl[:n] = 0 if agnostic else labels
    res = _jitted_batched_nms()(jnp.asarray(pb), jnp.asarray(ps), jnp.asarray(pl),
                                        float(iou_thres), size)
    idx = np.asarray(res.indices)
    return idx[np.asarray(res.valid)].astype(np.int64)


@functools.cache
def _jitted_batched_nms():
    from detjax.nms import batched_nms

    return jax.jit(lambda b, s, c, t, m: batched_nms(b, s, c, iou_threshold=t, max_output=m),
                   static_argnums=4)


def sliced_predict(predictor: Predictor, image: np.ndarray, *,
                   slice_size: int | tuple[int, int] = 512,
                   overlap: float | tuple[float, float] = 0.2, full_image: bool = True,
                   iou_thres: float = 0.5, agnostic: bool = False,
                   max_det: int | None = None) -> Prediction:
    """Detections of ``image`` (uint8 ``[H, W, 3]``) from overlapping tiles (+ the whole image),
    merged by NMS; boxes in full-image pixels, descending score."""
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got {img.shape}")
    windows = slice_windows(img.shape[0], img.shape[1], slice_size=slice_size, overlap=overlap)
    tiles: list[np.ndarray] = [img[y0:y1, x0:x1] for x0, y0, x1, y1 in windows]
    offsets = [np.tile(w[:2], 2).astype(np.float64) for w in windows]
    if full_image:
        tiles.append(img)
        offsets.append(np.zeros(4))
    preds = predictor(tiles)
    boxes = np.concatenate([p.boxes + off for p, off in zip(preds, offsets)])
    scores = np.concatenate([p.scores for p in preds])
    labels = np.concatenate([p.labels for p in preds])
    keep = merge_nms(boxes, scores, labels, iou_thres=iou_thres, agnostic=agnostic)
    if max_det is not None:
        keep = keep[:max_det]
    return Prediction(boxes[keep], scores[keep], labels[keep])

