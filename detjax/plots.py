"""PNG plots for a run folder: metric curves, PR curve, validation grid, boxes on an image.

Boxes are ``[n, 4]`` ``xyxy`` absolute pixels of the image they are drawn on. Figures are made
with ``matplotlib.figure.Figure`` and the Agg canvas (no pyplot global state, no display);
boxes are drawn with PIL. Mirrors the files ultralytics leaves in a run folder
(``results.png``, ``PR_curve.png``, ``val_batch*_pred.png``).
"""

from __future__ import annotations

import colorsys
import csv
import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

_X_KEYS = ("epoch", "step")


def class_color(label: int) -> tuple[int, int, int]:
    """A stable, distinct RGB colour per class id (golden-ratio hues)."""
    r, g, b = colorsys.hsv_to_rgb((int(label) * 0.618033988749895) % 1.0, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _as_uint8_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3], got shape {img.shape}")
    if img.dtype != np.uint8:  # float images in 0..1
        img = np.clip(np.asarray(img, np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return img


def draw_boxes(image: Any, boxes: Any, labels: Any, scores: Any | None = None, *,
               class_names: Sequence[str] | None = None, color: tuple[int, int, int] | None = None,
               width: int = 2):
    """Draws ``xyxy`` ``boxes [n, 4]`` with ``labels [n]`` (and ``scores [n]``) on ``image``
    (uint8 ``[H, W, 3]`` or float in 0..1). Returns a new ``PIL.Image``; one colour per class
    unless ``color`` is given. Inverted (``x2 < x1`` or ``y2 < y1``) and non-finite boxes
    enclose nothing and are skipped."""
    from PIL import Image, ImageDraw

    pil = Image.fromarray(_as_uint8_image(image))
    draw = ImageDraw.Draw(pil)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    lab = np.asarray(labels).reshape(-1).astype(int)
    if len(lab) != len(b):
        raise ValueError(f"labels [{len(lab)}] must match boxes [{len(b)}, 4]")
    sc = None if scores is None else np.asarray(scores, np.float64).reshape(-1)
    for i, (box, k) in enumerate(zip(b, lab)):
        if not (np.all(np.isfinite(box)) and box[2] >= box[0] and box[3] >= box[1]):
            continue
        c = color or class_color(k)
        draw.rectangle([float(v) for v in box], outline=c, width=width)
        text = class_names[k] if class_names is not None and 0 <= k < len(class_names) else str(k)
        if sc is not None:
            text = f"{text} {sc[i]:.2f}"
        x, y = float(box[0]), max(0.0, float(box[1]) - 11)
        tw = draw.textlength(text)
        draw.rectangle([x, y, x + tw + 2, y + 11], fill=c)
        draw.text((x + 1, y), text, fill=(255, 255, 255))
    return pil


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6.4, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    return path


def read_metrics_csv(path: str) -> dict[str, np.ndarray]:
    """Numeric columns of a metrics CSV (header row, one row per step/epoch); empty or
    non-numeric cells become NaN, columns with no number at all are dropped."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: no rows after the header")
    out = {}
    for key in rows[0]:
        vals = []
        for row in rows:
            try:
                vals.append(float(row.get(key) or "nan"))
            except ValueError:
                vals.append(math.nan)
        col = np.asarray(vals)
        if not np.isnan(col).all():
            out[key] = col
    return out


def plot_metrics(csv_path: str, out_path: str, *, columns: Sequence[str] | None = None) -> str:
    """Loss and mAP curves from a metrics CSV: one panel per numeric column against the
    ``epoch`` (or ``step``) column. Returns ``out_path``."""
    data = read_metrics_csv(csv_path)
    x_key = next((k for k in _X_KEYS if k in data), None)
    x = data[x_key] if x_key else np.arange(len(next(iter(data.values()))))
    keys = [k for k in (columns or data) if k in data and k not in _X_KEYS]
    if not keys:
        raise ValueError(f"{csv_path}: no metric columns to plot (columns: {list(data)})")
    ncols = min(5, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _figure(nrows, ncols, (3.2, 2.6))
    for ax, key in zip(axes.flat, keys):
        y = data[key]
        ok = ~np.isnan(y)
        ax.plot(x[ok], y[ok], marker=".", linewidth=1.5)
        ax.set_title(key, fontsize=9)
        ax.set_xlabel(x_key or "row", fontsize=8)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    return _save(fig, out_path)


def _class_curves(x: np.ndarray, rows: np.ndarray, labels: list[str], mean: np.ndarray,
                  mean_label: str, *, xlabel: str, ylabel: str, title: str,
                  out_path: str) -> str:
    """One line per class ``rows [K, R]`` over ``x [R]`` (classes with no value left out), the
    mean in bold blue; the legend is shown up to 20 classes."""
    fig, axes = _figure(1, 1, (6.4, 5.2))
    ax = axes[0, 0]
    show_legend = len(labels) <= 20
    for k, row in enumerate(rows):
        if not np.isnan(row).all():
            ax.plot(x, row, linewidth=1, color=np.array(class_color(k)) / 255,
                    label=labels[k] if show_legend else None)
    ax.plot(x, mean, linewidth=3, color="blue", label=mean_label)
    ax.set(xlabel=xlabel, ylabel=ylabel, xlim=(0, 1), ylim=(0, 1.01), title=title)
    ax.legend(loc="lower left", fontsize=7)
    return _save(fig, out_path)


def plot_pr_curve(result: dict[str, Any], out_path: str, *, iou: float = 0.5) -> str:
    """Per-class and mean precision-recall curves at one IoU threshold from a
    ``coco_evaluate`` result (``PR_curve.png``). Returns ``out_path``."""
    from detjax.eval.pr import pr_curve

    curve = pr_curve(result, iou=iou)
    names = result.get("class_names") or [str(k) for k in range(len(curve.ap))]
    present = curve.ap[curve.ap > -1]
    mean_ap = present.mean() if present.size else float("nan")
    return _class_curves(curve.recall, curve.precision,
                         [f"{n} {curve.ap[k]:.3f}" for k, n in enumerate(names)], curve.mean,
                         f"all classes {mean_ap:.3f} mAP@{iou:g}", xlabel="Recall",
                         ylabel="Precision", title=f"Precision-Recall curve (IoU {iou:g})",
                         out_path=out_path)


def plot_f1_curve(result: dict[str, Any], out_path: str, *, iou: float = 0.5) -> str:
    """Per-class and mean F1 against the score threshold at one IoU threshold from a
    ``coco_evaluate`` result (``F1_curve.png``; :func:`detjax.eval.pr.f1_curve`). Returns
    ``out_path``."""
    from detjax.eval.pr import best_f1_confidence, f1_curve

    curve = f1_curve(result, iou=iou)
    names = result.get("class_names") or [str(k) for k in range(len(curve.f1))]
    conf, best, conf_all, f1_all = best_f1_confidence(curve)
    return _class_curves(curve.confidence, curve.f1,
                         [f"{n} {best[k]:.2f} at {conf[k]:.3f}" for k, n in enumerate(names)],
                         curve.mean, f"all classes {f1_all:.2f} at {conf_all:.3f}",
                         xlabel="Confidence", ylabel="F1",
                         title=f"F1-confidence curve (IoU {iou:g})", out_path=out_path)


def plot_val_grid(images: Sequence[Any], predictions: Sequence[Any],
                  ground_truths: Sequence[Any], out_path: str, *,
                  class_names: Sequence[str] | None = None, ncols: int = 4,
                  max_images: int = 16) -> str:
    """A grid of validation images, true boxes in white and predicted boxes per class colour
    with scores. ``predictions[i] = (boxes [n, 4], scores [n], labels [n])``,
    ``ground_truths[i] = (boxes [m, 4], labels [m])``, ``xyxy`` pixels of ``images[i]``."""
    n = min(len(images), max_images)
    if n == 0:
        raise ValueError("plot_val_grid needs at least one image")
    if len(predictions) < n or len(ground_truths) < n:
        raise ValueError(f"need predictions and ground truth for {n} images, got "
                         f"{len(predictions)} and {len(ground_truths)}")
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig, axes = _figure(nrows, ncols, (3.2, 3.2))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        gt_boxes, gt_labels = ground_truths[i][0], ground_truths[i][1]
        img = draw_boxes(images[i], gt_boxes, gt_labels, class_names=class_names,
                         color=(255, 255, 255), width=1)
        pb, ps, pl = predictions[i]
        img = draw_boxes(img, pb, pl, ps, class_names=class_names)
        ax.imshow(np.asarray(img))
    return _save(fig, out_path)
