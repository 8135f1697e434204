"""Run a detector on images: letterbox, one jitted forward + postprocess, boxes back to the
original image, drawn and saved.

Boxes returned are ``xyxy`` absolute pixels of each *original* image. The forward function
is ``forward(variables, images)``: ``images`` float ``[B, S, S, 3]`` in 0..1 -> ultralytics
format predictions ``[B, 4 + C, A]`` (``cxcywh`` pixels + class probabilities), e.g.
``detjax.eval.inference_fn(model)`` of a restored run's EMA model
(``detjax.run.restore_run``). Postprocess is ``detjax.non_max_suppression`` (fixed-size
``[B, max_det, 6]`` + ``valid``). Defaults equal ultralytics ``predict`` (conf 0.25, IoU 0.7,
max_det 300, one label per box); ``detjax val`` uses the validator's (conf 0.001,
multi_label). Every call runs at one static shape ``[batch_size, S, S, 3]`` (a short last batch
is padded), so it compiles once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class Prediction(NamedTuple):
    """One image's detections: ``boxes [n, 4]`` xyxy original pixels, ``scores [n]``,
    ``labels [n]`` int, in descending score order."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def letterbox_image(image: np.ndarray, size: int | tuple[int, int], *, scaleup: bool = True
                    ) -> tuple[np.ndarray, tuple[float, float], tuple[int, int]]:
    """uint8 ``[H, W, 3]`` -> ``(image [S, S, 3] uint8, (sx, sy), (left, top))`` with
    ``box_net = box_orig * s + pad`` (``detjax.data.transforms.letterbox``, ultralytics
    ``LetterBox`` with grey 114 padding)."""
    from detjax.data.transforms import Sample, letterbox

    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    sample = Sample(img, np.zeros((0, 4), np.float32), np.zeros(0, np.int32))
    out, scale, pad = letterbox(sample, size, scaleup=scaleup)
    return out.image, scale, pad


def make_postprocess(*, conf_thres: float = 0.25, iou_thres: float = 0.7, max_det: int = 300,
                     multi_label: bool = False, agnostic: bool = False, nms: str = "greedy",
                     soft_sigma: float = 0.5, soft_min_score: float = 0.001
                     ) -> Callable[[jax.Array], tuple[jax.Array, jax.Array]]:
    """``[B, 4 + C, A]`` -> ``(detections [B, max_det, 6], valid [B, max_det])`` through
    ``detjax.non_max_suppression`` with ``method=nms`` (traceable; jit it together with the
    forward)."""
    from detjax.nms import non_max_suppression

    def postprocess(predictions: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = non_max_suppression(predictions, conf_thres=conf_thres, iou_thres=iou_thres,
                                  max_det=max_det, multi_label=multi_label, agnostic=agnostic,
                                  method=nms, soft_sigma=soft_sigma,
                                  soft_min_score=soft_min_score)
        return out.detections, out.valid

    return postprocess


def _to_predictions(detections: np.ndarray, valid: np.ndarray, scales: Sequence[Any],
                    pads: Sequence[Any], sizes: Sequence[tuple[int, int]]) -> list[Prediction]:
    from detjax.eval.evaluator import scale_boxes

    out = []
    for det, ok, s, p, hw in zip(detections, valid, scales, pads, sizes):
        rows = np.asarray(det[np.asarray(ok, bool)], np.float64)
        boxes = scale_boxes(rows[:, :4], s, p, hw)
        out.append(Prediction(boxes, rows[:, 4], rows[:, 5].round().astype(np.int64)))
    return out


class Predictor:
    """Batched, jitted inference on uint8 images of any size.

    Example::

        forward, variables = detjax.eval.inference_fn(restore_run("runs/train").model)
        predictor = Predictor(forward, variables, imgsz=320)
        [pred] = predictor([image])          # Prediction(boxes, scores, labels)
    """

    def __init__(self, forward: Callable[[Any, jax.Array], jax.Array], variables: Any = None,
                 *, imgsz: int = 640, conf_thres: float = 0.25, iou_thres: float = 0.7,
                 max_det: int = 300, multi_label: bool = False, agnostic: bool = False,
                 nms: str = "greedy", soft_sigma: float = 0.5, soft_min_score: float = 0.001,
                 batch_size: int = 8) -> None:
        if imgsz % 32:
            raise ValueError(f"imgsz must be a multiple of 32 (the largest stride), got {imgsz}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.imgsz, self.batch_size, self.variables = imgsz, batch_size, variables
        post = make_postprocess(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                                multi_label=multi_label, agnostic=agnostic, nms=nms,
                                soft_sigma=soft_sigma, soft_min_score=soft_min_score)

        def run(variables: Any, images: jax.Array) -> tuple[jax.Array, jax.Array]:
            x = images.astype(jnp.float32) / 255.0
            return post(forward(variables, x))

        self._run = jax.jit(run)

    def raw(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Letterboxed uint8 ``[B, S, S, 3]`` -> fixed-size ``(detections, valid)`` (NumPy)."""
        det, valid = self._run(self.variables, jnp.asarray(images))
        return np.asarray(det), np.asarray(valid)

    def __call__(self, images: Sequence[np.ndarray]) -> list[Prediction]:
        out: list[Prediction] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            boxed = [letterbox_image(im, self.imgsz) for im in chunk]
            batch = np.zeros((self.batch_size, self.imgsz, self.imgsz, 3), np.uint8)
            batch[:len(boxed)] = np.stack([b[0] for b in boxed])
            det, valid = self.raw(batch)
            sizes = [np.asarray(im).shape[:2] for im in chunk]
            out += _to_predictions(det[:len(chunk)], valid[:len(chunk)], [b[1] for b in boxed],
                                   [b[2] for b in boxed], sizes)
        return out


def list_images(source: str) -> list[str]:
    """An image file, or the image files of a folder (sorted, by suffix)."""
    if os.path.isdir(source):
        names = sorted(n for n in os.listdir(source) if n.lower().endswith(IMAGE_SUFFIXES))
        return [os.path.join(source, n) for n in names]
    if os.path.isfile(source):
        return [source]
    raise FileNotFoundError(f"{source}: no such image file or folder")


def _chunks(items: Sequence[str], n: int) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def predict_source(predictor: Predictor, source: str, out_dir: str | None = None, *,
                   class_names: Sequence[str] | None = None, save_txt: bool = False
                   ) -> list[tuple[str, Prediction]]:
    """Predicts every image of ``source`` (file or folder); with ``out_dir``, saves each image
    with its boxes drawn under the same file name (and ``<stem>.txt`` rows
    ``class score x1 y1 x2 y2`` with ``save_txt``)."""
    from detjax.data.records import read_image
    from detjax.plots import draw_boxes

    paths = list_images(source)
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
    results = []
    for chunk in _chunks(paths, predictor.batch_size):
        images = [read_image(p) for p in chunk]
        for path, image, pred in zip(chunk, images, predictor(images)):
            results.append((path, pred))
            if not out_dir:
                continue
            name = os.path.basename(path)
            draw_boxes(image, pred.boxes, pred.labels, pred.scores,
                       class_names=class_names).save(os.path.join(out_dir, name))
            if save_txt:
                rows = np.concatenate([pred.labels[:, None], pred.scores[:, None], pred.boxes], 1)
                np.savetxt(os.path.join(out_dir, os.path.splitext(name)[0] + ".txt"), rows,
                           fmt=["%d", "%.5f", "%.2f", "%.2f", "%.2f", "%.2f"])
    return results
