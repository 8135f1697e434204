"""``detjax demo``: IoU + NMS + batched NMS + YOLO postprocess on generated detections.

A quick look at the box ops without a trained model. It also provides the two seeded
generators the NMS benchmark uses: :func:`clustered_candidates` (what a detector emits
before NMS: many jittered boxes around a few dozen objects, plus some background) and
:func:`yolo_head_output` (a ``[B, 4 + C, A]`` YOLO head output with realistic score
statistics).
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np


def clustered_candidates(n: int, *, num_objects: int = 30, image_size: float = 640.0,
                         background: float = 0.05, num_classes: int = 1,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detector-like NMS input: ``boxes [n, 4]`` xyxy float32, ``scores [n]`` float32 and
    ``classes [n]`` int32.

    ``num_objects`` objects (log-uniform sizes 16..256 px) each receive a random share of
    the candidates, jittered by 15 % of the object size in centre and scale, with scores
    that fall off with the jitter; a ``background`` fraction are small isolated boxes
    with scores below 0.2. Candidates come in random order.
    """
    rng = np.random.default_rng(seed)
    wh = np.exp(rng.uniform(np.log(16), np.log(256), (num_objects, 2)))
    centre = rng.uniform(0, image_size, (num_objects, 2))
    confidence = rng.uniform(0.3, 0.95, num_objects)
    label = rng.integers(0, num_classes, num_objects)
    n_bg = int(n * background)
    n_fg = n - n_bg
    obj = rng.integers(0, num_objects, n_fg)
    shift = rng.normal(0, 0.15, (n_fg, 2))
    scale = rng.normal(0, 0.15, (n_fg, 2))
    jitter = np.sqrt((shift**2).sum(1)) + np.abs(scale).sum(1)
    fg_scores = confidence[obj] * np.exp(-3 * jitter) * rng.uniform(0.8, 1.0, n_fg)
    cxcy = np.concatenate([centre[obj] + shift * wh[obj],
                           rng.uniform(0, image_size, (n_bg, 2))])
    size = np.concatenate([wh[obj] * np.exp(scale),
                           np.exp(rng.uniform(np.log(8), np.log(128), (n_bg, 2)))])
    scores = np.concatenate([fg_scores, rng.uniform(0, 0.2, n_bg)])
    classes = np.concatenate([label[obj], rng.integers(0, num_classes, n_bg)])
    boxes = np.concatenate([cxcy - size / 2, cxcy + size / 2], 1)
    order = rng.permutation(n)
    return (boxes[order].astype(np.float32), scores[order].astype(np.float32),
            classes[order].astype(np.int32))


def _anchor_points(image_size: int, strides: tuple[int, ...]) -> np.ndarray:
    """[A, 3] (x, y, stride) cell centres of every feature level, YOLO order."""
    points = []
    for s in strides:
        g = (np.arange(image_size // s) + 0.5) * s
        xx, yy = np.meshgrid(g, g)
        points.append(np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, s)], 1))
    return np.concatenate(points)


def yolo_head_output(batch: int = 16, *, num_classes: int = 80, image_size: int = 640,
                     strides: tuple[int, ...] = (8, 16, 32), num_objects: int = 20,
                     seed: int = 0) -> np.ndarray:
    """Synthetic YOLO head output ``[batch, 4 + num_classes, A]`` float32 (cxcywh boxes in
    pixels + sigmoid class scores), ``A = 8400`` for 640 px and strides 8/16/32.

    Anchors whose cell lies inside an object of matching scale predict a jittered copy of
    it with a class score decaying from the object's confidence; all others predict a
    small box near their cell with background scores ``sigmoid(N(-9.5, 1))`` per class
    (about a third of the anchors pass ``conf 0.001``, as with a trained detector).
    """
    rng = np.random.default_rng(seed)
    points = _anchor_points(image_size, strides)
    num_anchors = len(points)
    out = np.empty((batch, 4 + num_classes, num_anchors), np.float32)
    for b in range(batch):
        wh = np.exp(rng.uniform(np.log(16), np.log(image_size / 2), (num_objects, 2)))
        centre = rng.uniform(0, image_size, (num_objects, 2))
        label = rng.integers(0, num_classes, num_objects)
        confidence = rng.uniform(0.4, 0.95, num_objects)
        logits = rng.normal(-9.5, 1.0, (num_classes, num_anchors))
        box_wh = points[:, 2:3] * np.exp(rng.uniform(0.5, 2.5, (num_anchors, 2)))
        box_c = points[:, :2] + rng.normal(0, 0.5, (num_anchors, 2)) * points[:, 2:3]
        dist = np.abs(points[:, None, :2] - centre[None]) / (wh[None] / 2)  # [A, O, 2]
        scale_ok = np.abs(np.log(wh.max(1)[None] / (points[:, 2:3] * 8))) < 1.2  # [A, O]
        radius = np.where((dist < 1).all(-1) & scale_ok, np.sqrt((dist**2).sum(-1)), np.inf)
        pos = np.isfinite(radius.min(1))
        obj = radius.argmin(1)[pos]
        box_c[pos] = centre[obj] + rng.normal(0, 0.05, (pos.sum(), 2)) * wh[obj]
        box_wh[pos] = wh[obj] * np.exp(rng.normal(0, 0.08, (pos.sum(), 2)))
        score = confidence[obj] * np.exp(-1.5 * radius[pos, obj])
        logits[label[obj], np.nonzero(pos)[0]] = np.log(score / (1 - score))
        out[b, :2], out[b, 2:4] = box_c.T, box_wh.T
        out[b, 4:] = 1 / (1 + np.exp(-logits))
    return out


def _timed(fn, *args):
    """(result, seconds) of a call, blocking on JAX outputs."""
    import jax

    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    return result, time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    """Runs box_iou, nms, batched_nms and non_max_suppression on generated detections."""
    parser = argparse.ArgumentParser(prog="detjax demo", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="candidate boxes per image")
    parser.add_argument("--batch", type=int, default=4, help="images for the YOLO postprocess")
    parser.add_argument("--image-size", type=int, default=320, help="YOLO input size (px)")
    parser.add_argument("--iou", type=float, default=0.5, help="NMS IoU threshold")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.n < 1 or args.batch < 1 or args.image_size < 32:
        parser.error("--n and --batch must be >= 1 and --image-size >= 32")

    import jax

    from detjax.boxes import box_iou
    from detjax.nms import batched_nms, nms, non_max_suppression

    boxes, scores, classes = clustered_candidates(args.n, num_classes=5, seed=args.seed)
    pred = yolo_head_output(args.batch, image_size=args.image_size, seed=args.seed)
    steps = [
        ("box_iou", jax.jit(box_iou), (boxes, boxes),
         lambda r: f"mean IoU {float(r.mean()):.4f}"),
        ("nms", jax.jit(partial(nms, iou_threshold=args.iou, max_output=args.n)),
         (boxes, scores), lambda r: f"kept {int(r.count)} of {args.n}"),
        ("batched_nms (5 classes)",
         jax.jit(partial(batched_nms, iou_threshold=args.iou, max_output=args.n)),
         (boxes, scores, classes), lambda r: f"kept {int(r.count)} of {args.n}"),
        (f"non_max_suppression {pred.shape}",
         jax.jit(partial(non_max_suppression, conf_thres=0.25, iou_thres=0.45)), (pred,),
         lambda r: f"detections per image {np.asarray(r.count).tolist()}"),
    ]
    print(f"detjax demo: {args.n} clustered candidates, seed {args.seed}, "
          f"backend {jax.default_backend()}")
    for name, fn, fn_args, summary in steps:
        _, first = _timed(fn, *fn_args)
        result, again = _timed(fn, *fn_args)
        print(f"  {name:<34} {summary(result):<40} "
              f"{again * 1e3:8.2f} ms (first call {first:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
