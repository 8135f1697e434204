"""Autoanchor: detjax (jit) vs YOLOv5 ``utils.autoanchor.kmean_anchors`` on the same box set.

YOLOv5 is not a pip package: pass ``--yolov5 DIR``, a checkout of github.com/ultralytics/
yolov5 kept outside this repository (its ``utils`` and ``models`` folders suffice); pandas,
which it imports but kmean_anchors never uses, is stubbed when absent. Without it the
peer row is skipped. The box set is a seeded COCO-like log-normal mix of (w, h) in a
640 px frame. Prints fitness, BPR, mean IoU and median wall times, compile separately.

    python benchmarks/bench_autoanchor.py --yolov5 /tmp/yolov5 [--boxes 20000] [--reps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import io
import logging
import sys
import time
import types
from unittest import mock

import jax
import numpy as np


def make_boxes(n: int, seed: int = 0) -> np.ndarray:
    """(w, h) in pixels: small / medium / large log-normal clusters, some slender."""
    rng = np.random.default_rng(seed)
    parts = [np.exp(rng.normal(np.log(m), s, (int(n * f), 2)))
             for m, s, f in ((14, 0.5, 0.4), (48, 0.5, 0.35), (160, 0.45, 0.25))]
    wh = np.concatenate(parts)
    wh[: n // 10, 1] *= 3  # tall objects (people)
    return wh[: n].clip(1, 640).astype(np.float32)


def load_yolov5(path: str):
    sys.path.insert(0, path)
    try:
        import pandas  # noqa: F401
    except ImportError:
        stub = mock.MagicMock()
        stub.__spec__ = importlib.machinery.ModuleSpec("pandas", None)
        sys.modules["pandas"] = stub
    from utils.autoanchor import kmean_anchors  # type: ignore[import-not-found]
    from utils.general import LOGGER  # type: ignore[import-not-found]

    LOGGER.setLevel(logging.ERROR)  # its per-run info lines

    return kmean_anchors


def yolov5_dataset(wh: np.ndarray, img_size: int) -> types.SimpleNamespace:
    """A single-image 'dataset' whose labels give exactly ``wh`` back in kmean_anchors."""
    labels = np.zeros((len(wh), 5), np.float32)
    labels[:, 3:5] = wh / img_size
    return types.SimpleNamespace(shapes=np.array([[img_size, img_size]], float), labels=[labels])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--yolov5", default=None, help="path to a yolov5 checkout")
    parser.add_argument("--boxes", type=int, default=20000)
    parser.add_argument("--anchors", type=int, default=9)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--population", type=int, default=4,
                        help="mutants per generation for the second detjax row")
    parser.add_argument("--init", default="iou", choices=("whitened", "iou"),
                        help="k-means start for the second detjax row")
    args = parser.parse_args()

    from detjax.anchors import (
        anchor_fitness,
        autoanchor,
        best_possible_recall,
        mean_best_iou,
    )

    wh = make_boxes(args.boxes)
    print(f"box set: {len(wh)} (w, h) pairs, {args.anchors} anchors, thr 4.0, 1000 generations")
    fit = jax.jit(autoanchor, static_argnames=("num_anchors", "population", "init"))
    rows = []
    # Row 1: YOLOv5's procedure (whitened k-means, best of 30 starts; one mutant per generation).
    # Row 2: the `detjax anchors` command's defaults (1 - IoU k-means start, more mutants).
    for population, init in ((1, "whitened"), (args.population, args.init)):
        kw = dict(population=population, init=init)
        t0 = time.perf_counter()
        jax.block_until_ready(fit(wh, args.anchors, key=jax.random.key(0), **kw))
        print(f"detjax P={population} init={init} first call (compile + run): "
              f"{time.perf_counter() - t0:.2f} s")
        times, results = [], []
        for rep in range(args.reps):
            t0 = time.perf_counter()
            results.append(jax.block_until_ready(
                fit(wh, args.anchors, key=jax.random.key(rep + 1), **kw)))
            times.append(time.perf_counter() - t0)
        rows.append((f"detjax P={population} init={init}", float(np.median(times)),
                     [float(r.fitness) for r in results], [float(r.bpr) for r in results],
                     [float(r.mean_iou) for r in results]))
    if args.yolov5:
        kmean_anchors = load_yolov5(args.yolov5)
        data = yolov5_dataset(wh, 640)
        times, fits, bprs, ious = [], [], [], []
        for rep in range(args.reps):
            np.random.seed(rep)  # noqa: NPY002  (YOLOv5 draws from the global RNG)
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                k = kmean_anchors(data, n=args.anchors, img_size=640, thr=4.0, gen=1000,
                                  verbose=False)
            times.append(time.perf_counter() - t0)
            fits.append(float(anchor_fitness(k, wh[(wh >= 2).any(1)])))
            bprs.append(float(best_possible_recall(k, wh)))
            ious.append(float(mean_best_iou(k, wh)))
        rows.append(("yolov5 kmean_anchors", float(np.median(times)), fits, bprs, ious))
    else:
        print("no --yolov5 checkout given: peer row skipped")
    print("yolov5/this = YOLOv5 median time / the row's median time; fitness is YOLOv5's "
          "anchor_fitness on the same boxes (>= 2 px), over --reps seeds")
    print(f"{'implementation':28s} {'median s':>9s} {'yolov5/this':>11s} {'mean fit':>9s} "
          f"{'min fit':>8s} {'BPR':>7s} {'mean IoU':>8s}")
    peer = rows[-1][1] if args.yolov5 else float("nan")
    for name, sec, fits, bprs, ious in rows:
        print(f"{name:28s} {sec:9.3f} {peer / sec:10.1f}x {np.mean(fits):9.4f} "
              f"{np.min(fits):8.4f} {np.mean(bprs):7.4f} {np.mean(ious):8.4f}")


if __name__ == "__main__":
    main()
