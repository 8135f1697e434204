"""Anchor points, anchor boxes and anchor fitting.

* :func:`make_anchor_points`: cell centres of every feature map with a stride per point
  (ultralytics ``make_anchors``), for anchor-free heads (YOLOv8, FCOS).
* :func:`make_anchor_boxes`: anchor boxes of FPN levels from scales, octave scales and
  ratios (torchvision / mmdet ``AnchorGenerator``; RetinaNet, Faster R-CNN).
* Fitting anchors ``[K, 2]`` (w, h) to the box sizes ``wh [N, 2]`` of a data set:
  :func:`kmeans_anchors` (k-means with ``1 - IoU`` distance, jittable),
  :func:`mean_best_iou`, and YOLOv5 autoanchor: :func:`ratio_metric`,
  :func:`anchor_fitness`, :func:`best_possible_recall`, :func:`anchors_above_threshold`,
  :func:`evolve_anchors`, :func:`autoanchor`; the ``detjax anchors`` command (:func:`main`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def _check_levels(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float]) -> None:
    if len(feature_shapes) != len(strides):
        raise ValueError(
            f"need one stride per feature map, got {len(feature_shapes)} shapes and "
            f"{len(strides)} strides")
    for shape in feature_shapes:
        if len(shape) != 2:
            raise ValueError(f"feature shapes must be (height, width), got {shape}")


def make_anchor_points(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float], *,
                       offset: float = 0.5,
                       dtype: jnp.dtype = jnp.float32) -> tuple[jax.Array, jax.Array]:
    """Anchor points ``[A, 2]`` (x, y) in grid units and strides ``[A, 1]``.

    For each level of ``(height, width)`` in ``feature_shapes``, the points are
    ``(col + offset, row + offset)`` in row-major order, levels concatenated;
    multiply by the strides for pixels. Same as ``ultralytics.utils.tal.make_anchors``.
    The shapes are static Python ints, so this is free under ``jax.jit``.

    >>> pts, s = make_anchor_points([(2, 2)], [8])
    >>> (pts * s).tolist()
    [[4.0, 4.0], [12.0, 4.0], [4.0, 12.0], [12.0, 12.0]]
    """
    _check_levels(feature_shapes, strides)
    points, point_strides = [], []
    for (h, w), stride in zip(feature_shapes, strides):
        ys, xs = np.meshgrid(np.arange(int(h)), np.arange(int(w)), indexing="ij")
        points.append(np.stack([xs, ys], -1).reshape(-1, 2) + offset)
        point_strides.append(np.full((int(h) * int(w), 1), stride))
    return (jnp.asarray(np.concatenate(points), dtype),
            jnp.asarray(np.concatenate(point_strides), dtype))


def make_anchor_boxes(feature_shapes: Sequence[Sequence[int]], strides: Sequence[float], *,
                      ratios: Sequence[float] = (0.5, 1.0, 2.0), base_scale: float = 8.0,
                      octave_scales: Sequence[float] = (1.0,),
                      sizes: Sequence[Sequence[float]] | None = None, offset: float = 0.0,
                      round_base: bool = False,
                      dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """Anchor boxes ``[A, 4]`` xyxy pixels for FPN levels, location-major then anchor.

    At each cell ``(col + offset, row + offset) * stride`` of each level, one box per
    ``(ratio, size)`` pair, ratio-major: ``w = size / sqrt(ratio)``, ``h = size *
    sqrt(ratio)`` with ``ratio = height / width``. The sizes of a level are ``sizes[l]``
    when given (torchvision ``AnchorGenerator(sizes, aspect_ratios)``, which also rounds
    the base boxes: ``round_base=True``), else ``stride * base_scale * octave_scales``
    (mmdet ``AnchorGenerator``: Faster R-CNN ``base_scale=8``; RetinaNet ``base_scale=4,
    octave_scales=(2**0, 2**(1/3), 2**(2/3))``). ``offset=0`` puts boxes on cell corners
    as both references; 0.5 centres them. ``A = sum(h * w) * len(ratios) * len(sizes)``.
    """
    _check_levels(feature_shapes, strides)
    if sizes is not None and len(sizes) != len(strides):
        raise ValueError(f"sizes needs one tuple per level ({len(strides)}), got {len(sizes)}")
    out = []
    for level, ((h, w), stride) in enumerate(zip(feature_shapes, strides)):
        level_sizes = (np.asarray(sizes[level], np.float64) if sizes is not None
                       else stride * base_scale * np.asarray(octave_scales, np.float64))
        hr = np.sqrt(np.asarray(ratios, np.float64))
        ws = (level_sizes[None, :] / hr[:, None]).reshape(-1)  # [R * S], ratio-major
        hs = (level_sizes[None, :] * hr[:, None]).reshape(-1)
        base = np.stack([-ws, -hs, ws, hs], -1) / 2
        if round_base:
            base = np.round(base)
        ys, xs = np.meshgrid(np.arange(int(h)), np.arange(int(w)), indexing="ij")
        shifts = (np.stack([xs, ys, xs, ys], -1).reshape(-1, 1, 4) + offset) * stride
        out.append((shifts + base[None]).reshape(-1, 4))
    return jnp.asarray(np.concatenate(out), dtype)


# ----------------------------------------------------------------------------------------
# Anchor fitting. Anchors and box sizes are (w, h) pairs in pixels; an optional
# ``mask [N]`` marks valid rows so that a padded, fixed-size wh array works under jit.
# ----------------------------------------------------------------------------------------


def _as_wh(wh: ArrayLike, name: str = "wh") -> jax.Array:
    wh = jnp.asarray(wh)
    if wh.ndim != 2 or wh.shape[-1] != 2:
        raise ValueError(f"{name} must be [N, 2] (width, height), got {wh.shape}")
    return wh.astype(jnp.promote_types(wh.dtype, jnp.float32))


def _weights(wh: jax.Array, mask: ArrayLike | None) -> jax.Array:
    if mask is None:
        return jnp.ones(wh.shape[:1], wh.dtype)
    mask = jnp.asarray(mask)
    if mask.shape != wh.shape[:1]:
        raise ValueError(f"mask must be [N] = [{wh.shape[0]}], got {mask.shape}")
    return mask.astype(wh.dtype)


def _mean(values: jax.Array, weights: jax.Array) -> jax.Array:
    return (values * weights).sum() / jnp.maximum(weights.sum(), 1)


def wh_iou(wh: ArrayLike, anchors: ArrayLike) -> jax.Array:
    """IoU ``[N, K]`` of (w, h) pairs ``[N, 2]`` and anchors ``[K, 2]`` aligned at a common
    centre (YOLOv2 / YOLOv5 ``wh_iou``); boxes built as xyxy and sent through
    :func:`detjax.box_iou`."""
    from detjax.boxes import box_iou

    wh, anchors = _as_wh(wh), _as_wh(anchors, "anchors")
    zeros = lambda x: jnp.zeros_like(x)
    return box_iou(jnp.concatenate([zeros(wh), wh], -1),
                   jnp.concatenate([zeros(anchors), anchors], -1))


def mean_best_iou(anchors: ArrayLike, wh: ArrayLike, mask: ArrayLike | None = None) -> jax.Array:
    """Mean over boxes ``wh [N, 2]`` of the best :func:`wh_iou` with ``anchors [K, 2]``
    (the YOLOv2 "avg IoU" fit of a set of anchors)."""
    wh = _as_wh(wh)
    return _mean(wh_iou(wh, anchors).max(1), _weights(wh, mask))


def kmeans_anchors(wh: ArrayLike, num_anchors: int, *, key: jax.Array, iterations: int = 100,
                   mask: ArrayLike | None = None) -> jax.Array:
    """k-means of box sizes ``wh [N, 2]`` with distance ``1 - IoU`` -> anchors ``[K, 2]``
    sorted by area (YOLOv2, Redmon & Farhadi 2017).

    Starts from ``num_anchors`` distinct valid boxes drawn with ``key``; each of the
    ``iterations`` steps assigns every box to the anchor of highest :func:`wh_iou` and
    moves each anchor to the mean (w, h) of its boxes (an anchor with no box stays).
    Jittable (``num_anchors`` and ``iterations`` static); ``mask [N]`` excludes padding.
    """
    wh = _as_wh(wh)
    weights = _weights(wh, mask)
    if not 1 <= num_anchors <= wh.shape[0]:
        raise ValueError(f"num_anchors must be in [1, N={wh.shape[0]}], got {num_anchors}")
    start = _draw_distinct(key, weights, num_anchors)
    anchors, _ = _lloyd(wh, weights, wh[start], iterations, _nearest_iou)
    return anchors[jnp.argsort(anchors.prod(1))]


def ratio_metric(wh: ArrayLike, anchors: ArrayLike) -> jax.Array:
    """YOLOv5 anchor-box ratio metric (ultralytics ``utils/autoanchor.py`` ``metric``).

    Args:
      wh: ``[N, 2]`` box (width, height) in pixels.
      anchors: ``[K, 2]`` anchor (width, height) in pixels.

    Returns ``[N, K]``: ``min over (w, h) of min(r, 1 / r)`` with ``r = box / anchor`` (1 for
    a perfect fit; ``> 1 / anchor_t`` means trainable).
    """
    wh, anchors = _as_wh(wh), _as_wh(anchors, "anchors")
    r = wh[:, None, :] / anchors[None, :, :]  # [N, K, 2]
    return jnp.minimum(r, 1 / r).min(-1)


def anchor_fitness(anchors: ArrayLike, wh: ArrayLike, *, thr: float = 4.0,
                   mask: ArrayLike | None = None) -> jax.Array:
    """YOLOv5 ``kmean_anchors.anchor_fitness`` -> scalar: mean over boxes of
    ``best * (best > 1/thr)``, ``best`` the box's highest :func:`ratio_metric` over the anchors.

    ``anchors`` ``[K, 2]`` and ``wh`` ``[N, 2]`` are (width, height) in pixels; ``mask``
    ``[N]`` (optional) marks the real boxes of a padded ``wh``.
    """
    wh = _as_wh(wh)
    best = ratio_metric(wh, anchors).max(1)
    return _mean(best * (best > 1 / thr), _weights(wh, mask))


def best_possible_recall(anchors: ArrayLike, wh: ArrayLike, *, thr: float = 4.0,
                         mask: ArrayLike | None = None) -> jax.Array:
    """YOLOv5 best possible recall (ultralytics ``check_anchors`` ``bpr``) -> scalar: the
    fraction of boxes whose best :func:`ratio_metric` exceeds ``1 / thr``.

    ``anchors`` ``[K, 2]`` and ``wh`` ``[N, 2]`` are (width, height) in pixels; ``mask``
    ``[N]`` (optional) marks the real boxes of a padded ``wh``.
    """
    wh = _as_wh(wh)
    return _mean(ratio_metric(wh, anchors).max(1) > 1 / thr, _weights(wh, mask))


def anchors_above_threshold(anchors: ArrayLike, wh: ArrayLike, *, thr: float = 4.0,
                            mask: ArrayLike | None = None) -> jax.Array:
    """YOLOv5 "anchors past thr" (ultralytics ``check_anchors`` ``aat``) -> scalar: the mean
    number of anchors per box with :func:`ratio_metric` ``> 1 / thr``.

    ``anchors`` ``[K, 2]`` and ``wh`` ``[N, 2]`` are (width, height) in pixels; ``mask``
    ``[N]`` (optional) marks the real boxes of a padded ``wh``.
    """
    wh = _as_wh(wh)
    return _mean((ratio_metric(wh, anchors) > 1 / thr).sum(1), _weights(wh, mask))


def _log_fitness(wh: jax.Array, thr: float, weights: jax.Array):
    """:func:`anchor_fitness` as a function of anchors, in log space: ``min(r, 1/r) =
    exp(-|log r|)``, so the ``[N, K]`` work is subtractions and the exp runs once per box."""
    log_w, log_h = jnp.log(jnp.maximum(wh, jnp.finfo(wh.dtype).tiny)).T  # [N] each

    def fitness(anchors: jax.Array) -> jax.Array:
        log_k = jnp.log(anchors)  # [K, 2]
        gap = jnp.full_like(log_w, jnp.inf)
        for k in range(anchors.shape[0]):  # K is small: [N]-wide vector ops, one fused loop
            gap = jnp.minimum(gap, jnp.maximum(jnp.abs(log_w - log_k[k, 0]),
                                               jnp.abs(log_h - log_k[k, 1])))
        best = jnp.exp(-gap)
        return _mean(best * (best > 1 / thr), weights)

    return fitness


def evolve_anchors(anchors: ArrayLike, wh: ArrayLike, *, key: jax.Array,
                   generations: int = 1000, mutation_prob: float = 0.9, sigma: float = 0.1,
                   thr: float = 4.0, population: int = 1,
                   mask: ArrayLike | None = None) -> tuple[jax.Array, jax.Array]:
    """YOLOv5 genetic anchor evolution -> (anchors ``[K, 2]`` sorted by area, fitness).

    Each generation multiplies the anchors by ``v = clip(1 + (u < mutation_prob) * s *
    n * sigma, 0.3, 3.0)`` (``u, s`` uniform, one ``s`` per mutant, ``n`` normal), clips
    them at 2 px and keeps the mutant if its :func:`anchor_fitness` is strictly higher,
    as YOLOv5 ``kmean_anchors`` (whose redraw of an all-ones ``v`` has probability
    ``(1 - mutation_prob) ** (2K)`` and is skipped here). ``population > 1`` draws that
    many mutants per generation (one batched evaluation) and keeps the best: more search
    for the same number of sequential steps. Jittable; ``generations`` and ``population``
    are static.

    Args:
      anchors: ``[K, 2]`` starting anchor (width, height) in pixels (e.g. k-means centres).
      wh: ``[N, 2]`` box (width, height) in pixels; ``mask`` ``[N]`` marks real boxes.
      key: PRNG key of the mutations.
    """
    wh = _as_wh(wh)
    anchors = _as_wh(anchors, "anchors")
    fitness = jax.vmap(_log_fitness(wh, thr, _weights(wh, mask)))

    def step(_, state):
        best, best_f, key = state
        key, k_u, k_s, k_n = jax.random.split(key, 4)
        shape = (population, *best.shape)
        u = jax.random.uniform(k_u, shape) < mutation_prob
        s = jax.random.uniform(k_s, (population, 1, 1))
        v = jnp.clip(1 + u * s * jax.random.normal(k_n, shape) * sigma, 0.3, 3.0)
        mutants = jnp.maximum(best[None] * v, 2.0)  # [P, K, 2]
        f = fitness(mutants)
        i = jnp.argmax(f)
        better = f[i] > best_f
        return (jnp.where(better, mutants[i], best), jnp.where(better, f[i], best_f), key)

    start = (anchors, fitness(anchors[None])[0], key)
    best, best_f, _ = jax.lax.fori_loop(0, generations, step, start)
    return best[jnp.argsort(best.prod(1))], best_f


class AnchorFit(NamedTuple):
    """Result of :func:`autoanchor`: ``anchors [K, 2]`` (w, h) sorted by area, their
    ``fitness``, ``bpr`` and ``aat`` (on all boxes, as YOLOv5 reports) and
    ``mean_iou`` (:func:`mean_best_iou`)."""

    anchors: jax.Array
    fitness: jax.Array
    bpr: jax.Array
    aat: jax.Array
    mean_iou: jax.Array


def _draw_distinct(key: jax.Array, weights: jax.Array, k: int) -> jax.Array:
    """``k`` distinct row indices drawn with probability proportional to ``weights [N]``
    without replacement (Gumbel top-k: the law of ``jax.random.choice(replace=False, p=...)``
    at a fraction of its cost on CPU)."""
    log_w = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
    return jax.lax.top_k(log_w + jax.random.gumbel(key, weights.shape, weights.dtype), k)[1]


def _nearest_iou(wh: jax.Array, anchors: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index ``[N]`` of the anchor of highest :func:`wh_iou` (first on ties) and ``1 - IoU``;
    one ``[N]``-wide column per anchor (an unrolled loop: fast on CPU)."""
    best_iou = jnp.full(wh.shape[:1], -1.0, wh.dtype)
    best_i = jnp.zeros(wh.shape[:1], jnp.int32)
    for k in range(anchors.shape[0]):
        iou = wh_iou(wh, anchors[k:k + 1])[:, 0]
        best_i = jnp.where(iou > best_iou, k, best_i)
        best_iou = jnp.maximum(iou, best_iou)
    return best_i, 1 - best_iou


def _nearest(x: jax.Array, centres: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Index ``[N]`` and Euclidean distance ``[N]`` of the nearest of ``centres [K, 2]``
    (first on ties); an unrolled loop keeps every op ``N``-wide (fast on CPU)."""
    best_d = jnp.full(x.shape[:1], jnp.inf, x.dtype)
    best_i = jnp.zeros(x.shape[:1], jnp.int32)
    for k in range(centres.shape[0]):
        d = (x[:, 0] - centres[k, 0]) ** 2 + (x[:, 1] - centres[k, 1]) ** 2
        best_i = jnp.where(d < best_d, k, best_i)
        best_d = jnp.minimum(d, best_d)
    return best_i, jnp.sqrt(best_d)


def _lloyd(x: jax.Array, weights: jax.Array, centres: jax.Array, iterations: int,
           nearest=_nearest) -> tuple[jax.Array, jax.Array]:
    """k-means steps on ``x [N, 2]`` with ``nearest(x, centres) -> (index, distance)`` ->
    (centres ``[K, 2]``, mean distance); a centre with no point stays where it is."""

    xw = jnp.concatenate([x * weights[:, None], weights[:, None]], 1)  # [N, 3]

    def step(_, c):
        idx, _ = nearest(x, c)
        sums = jax.ops.segment_sum(xw, idx, c.shape[0])  # [K, 3]: weighted sums of x, counts
        return jnp.where(sums[:, 2:] > 0, sums[:, :2] / jnp.maximum(sums[:, 2:], 1e-12), c)

    centres = jax.lax.fori_loop(0, iterations, step, centres)
    return centres, _mean(nearest(x, centres)[1], weights)


def _whitened_kmeans(wh: jax.Array, weights: jax.Array, k: int, key: jax.Array,
                     restarts: int, iterations: int) -> jax.Array:
    """YOLOv5's init, ``scipy.cluster.vq.kmeans(wh / std, k, iter=restarts) * std``: k-means
    on std-whitened (w, h) from ``restarts`` random draws of k boxes, keeping the lowest
    mean distance (fixed ``iterations`` Lloyd steps per start instead of a tolerance)."""
    total = jnp.maximum(weights.sum(), 1)
    mean = (wh * weights[:, None]).sum(0) / total  # [2]
    std = jnp.sqrt((((wh - mean) ** 2) * weights[:, None]).sum(0) / total)  # numpy std, ddof 0
    x = wh / std

    def run(key):
        start = _draw_distinct(key, weights, k)
        return _lloyd(x, weights, x[start], iterations)

    centres, distortion = jax.vmap(run)(jax.random.split(key, restarts))
    return centres[jnp.argmin(distortion)] * std


def autoanchor(wh: ArrayLike, num_anchors: int = 9, *, key: jax.Array, thr: float = 4.0,
               generations: int = 1000, mutation_prob: float = 0.9, sigma: float = 0.1,
               population: int = 1, kmeans_restarts: int = 30, kmeans_iterations: int = 20,
               init: str = "whitened",
               mask: ArrayLike | None = None) -> AnchorFit:
    """YOLOv5 ``kmean_anchors``: fit ``num_anchors`` anchors to box sizes ``wh [N, 2]`` pixels.

    Boxes with both sides < 2 px are left out of the fit (not of BPR / AAT); the start is
    k-means on std-whitened (w, h), best of ``kmeans_restarts`` starts (``init="whitened"``,
    YOLOv5's ``scipy.cluster.vq.kmeans(..., iter=30)``) or :func:`kmeans_anchors`
    (``init="iou"``, ``kmeans_iterations`` steps); then :func:`evolve_anchors` (1000
    generations, mutation probability 0.9, sigma 0.1). Jittable with the ints and ``init``
    static. Returns an :class:`AnchorFit`.
    """
    wh = _as_wh(wh)
    weights = _weights(wh, mask)
    fit_w = weights * (wh >= 2.0).any(1)
    if init not in ("whitened", "iou"):
        raise ValueError(f"init must be 'whitened' or 'iou', got {init!r}")
    k_init, k_evolve = jax.random.split(key)
    if init == "iou":
        start = kmeans_anchors(wh, num_anchors, key=k_init, iterations=kmeans_iterations,
                               mask=fit_w)
    else:
        start = _whitened_kmeans(wh, fit_w, num_anchors, k_init, kmeans_restarts,
                                 kmeans_iterations)
    anchors, fitness = evolve_anchors(start, wh, key=k_evolve, generations=generations,
                                      mutation_prob=mutation_prob, sigma=sigma, thr=thr,
                                      population=population, mask=fit_w)
    return AnchorFit(anchors, fitness, best_possible_recall(anchors, wh, thr=thr, mask=mask),
                     anchors_above_threshold(anchors, wh, thr=thr, mask=mask),
                     mean_best_iou(anchors, wh, mask))


# ----------------------------------------------------------------------------------------
# `detjax anchors` command
# ----------------------------------------------------------------------------------------


def load_box_sizes(source: str, *, format: str | None = None, split: str = "train",
                   img_size: int = 640) -> np.ndarray:
    """Box sizes ``[N, 2]`` (w, h) float32 from ``source``.

    ``.npy`` / ``.txt`` files hold ``[N, 2]`` (w, h) or ``[N, 4]`` xyxy boxes, used as they
    are. A data set (``format`` ``coco``, ``yolo`` or ``voc``; read by
    :func:`detjax.data.load_dataset`) is rescaled per image so that its longer side is
    ``img_size``, as YOLOv5 ``kmean_anchors``.
    """
    path = Path(source)
    if format in (None, "npy", "txt") and path.suffix in (".npy", ".txt"):
        arr = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=2)
        arr = np.asarray(arr, np.float32)
        if arr.ndim != 2 or arr.shape[1] not in (2, 4):
            raise ValueError(f"{source}: expected an [N, 2] (w, h) or [N, 4] xyxy array, "
                             f"got shape {arr.shape}")
        return arr if arr.shape[1] == 2 else arr[:, 2:] - arr[:, :2]
    if format not in ("coco", "yolo", "voc"):
        raise ValueError(f"{source}: give a .npy/.txt array or --format coco|yolo|voc, "
                         f"got format {format!r}")
    from detjax.data import load_dataset

    ds = load_dataset(str(source), format=format, split=split, on_error="skip")
    sizes = []
    for i in range(len(ds)):
        rec = ds[i]
        boxes = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        sizes.append((boxes[:, 2:] - boxes[:, :2]) * (img_size / max(rec.image_size)))
    return np.concatenate(sizes) if sizes else np.zeros((0, 2), np.float32)


def plot_anchors(wh: np.ndarray, anchors: np.ndarray, path: str) -> None:
    """Scatter of box sizes (log axes) with the anchors marked, saved as PNG (Agg canvas;
    matplotlib is imported here only, and pyplot not at all)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 6), tight_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(wh[:, 0], wh[:, 1], s=2, alpha=0.3, label=f"boxes ({len(wh)})")
    ax.scatter(anchors[:, 0], anchors[:, 1], s=80, c="red", marker="x",
               label=f"anchors ({len(anchors)})")
    ax.set(xscale="log", yscale="log", xlabel="width (px)", ylabel="height (px)")
    ax.legend()
    fig.savefig(path, dpi=120)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="detjax anchors",
        description="Fit anchors to box sizes (YOLOv5 autoanchor: k-means + genetic evolution) "
                    "and report BPR and mean IoU.")
    p.add_argument("source", help=".npy/.txt array of (w, h) or xyxy boxes, or a data set path")
    p.add_argument("--format", choices=("npy", "txt", "coco", "yolo", "voc"), default=None)
    p.add_argument("--split", default="train", help="data set split (coco/yolo/voc)")
    p.add_argument("-n", "--num-anchors", type=int, default=9)
    p.add_argument("--img-size", type=int, default=640, help="longer image side (data sets)")
    p.add_argument("--thr", type=float, default=4.0, help="anchor_t: max box/anchor side ratio")
    p.add_argument("--generations", type=int, default=1000)
    p.add_argument("--population", type=int, default=4,
                   help="mutants per generation (1 = YOLOv5's procedure)")
    p.add_argument("--init", choices=("whitened", "iou"), default="iou",
                   help="k-means start: 1 - IoU (fast) or YOLOv5's whitened Euclidean")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None, metavar="PNG", help="save a (w, h) scatter here")
    p.add_argument("--levels", type=int, default=3,
                   help="feature levels the anchors are split over (by area, strides ascending)")
    p.add_argument("--save", default=None, metavar="YAML",
                   help="write model.head_kwargs.anchors to this config file (detjax train FILE)")
    return p


def anchors_per_level(anchors: np.ndarray, levels: int) -> list[list[list[float]]]:
    """``[K, 2]`` (w, h) anchors sorted by area -> ``levels`` lists of ``K / levels`` ``[w, h]``
    pairs (smallest first, for strides ascending), rounded to 0.1 px: the format of
    ``model.head_kwargs.anchors`` (:class:`detjax.models.RetinaHead`, ``ATSSHead``)."""
    if levels < 1 or len(anchors) % levels:
        raise ValueError(f"{len(anchors)} anchors cannot be split evenly over {levels} levels")
    order = np.argsort(anchors.prod(1), kind="stable")
    pairs = [[round(float(w), 1), round(float(h), 1)] for w, h in anchors[order]]
    k = len(pairs) // levels
    return [pairs[i * k:(i + 1) * k] for i in range(levels)]


def main(argv: list[str] | None = None) -> int:
    """``detjax anchors SOURCE [options]``: prints anchors, fitness, BPR, AAT and mean IoU."""
    args = _parser().parse_args(argv)
    try:
        wh = load_box_sizes(args.source, format=args.format, split=args.split,
                            img_size=args.img_size)
    except (OSError, ValueError) as e:
        print(f"detjax anchors: {e}", file=sys.stderr)
        return 2
    wh = wh[(wh > 0).all(1)]
    if len(wh) < args.num_anchors:
        print(f"detjax anchors: need at least {args.num_anchors} boxes, got {len(wh)}",
              file=sys.stderr)
        return 2
    fit = jax.jit(autoanchor, static_argnames=("num_anchors", "generations", "population",
                                               "init"))
    r = fit(wh, args.num_anchors, key=jax.random.key(args.seed), thr=args.thr,
            generations=args.generations, population=args.population, init=args.init)
    anchors = np.asarray(r.anchors)
    print(f"{len(wh)} boxes, {args.num_anchors} anchors (w, h), thr {args.thr}:")
    print("  " + ",  ".join(f"{w:.0f},{h:.0f}" for w, h in anchors))
    print(f"fitness {float(r.fitness):.4f}  BPR {float(r.bpr):.4f}  "
          f"anchors/target {float(r.aat):.2f}  mean IoU {float(r.mean_iou):.4f}")
    try:
        per_level = anchors_per_level(anchors, args.levels)
    except ValueError as e:
        per_level = None
        print(f"(not written as model.head_kwargs.anchors: {e})")
    if per_level is not None:
        print(f"model.head_kwargs.anchors: {per_level}")
    if args.plot:
        plot_anchors(wh, anchors, args.plot)
        print(f"plot: {args.plot}")
    if args.save:
        if per_level is None:
            print(f"detjax anchors: --save needs --num-anchors divisible by --levels "
                  f"({args.num_anchors} / {args.levels})", file=sys.stderr)
            return 2
        import yaml

        Path(args.save).write_text(
            f"# detjax anchors {args.source}: {args.num_anchors} anchors over {args.levels} "
            f"levels (fitness {float(r.fitness):.4f}, BPR {float(r.bpr):.4f})\n"
            + yaml.safe_dump({"model": {"head_kwargs": {"anchors": per_level}}},
                             default_flow_style=None))
        print(f"saved: {args.save}")
    return 0
