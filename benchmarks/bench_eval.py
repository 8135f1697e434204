"""COCO box evaluation speed: detjax.eval.coco_evaluate vs pycocotools COCOeval.

Synthetic set (default 5000 images, 80 classes, ~7 objects and up to 100 detections per image)
evaluated by each; prints median wall and process-CPU time over repeats, the ratio and the largest
difference between the 12 summary numbers. pycocotools time = evaluate + accumulate + summarize
(index building, loadRes and conversion to json-style dicts are timed apart).

    python benchmarks/bench_eval.py [--images 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import statistics
import time

import numpy as np


def make_set(num_images: int, num_classes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        m = int(rng.integers(1, 15))
        wh = rng.choice([10.0, 25.0, 50.0, 120.0, 250.0], (m, 2)) * rng.uniform(0.6, 1.4, (m, 2))
        xy = rng.uniform(0, 500, (m, 2))
        gt = np.concatenate([xy, xy + wh], 1)
        labels = rng.integers(0, num_classes, m)
        crowd = rng.random(m) < 0.01
        n_tp = m
        idx = rng.integers(0, m, n_tp)
        src = gt[idx]
        jit = rng.normal(0, 0.1, src.shape) * np.repeat(src[:, 2:] - src[:, :2], 2, 1)
        n_fp = int(rng.integers(0, 100 - n_tp))
        fxy = rng.uniform(0, 500, (n_fp, 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(5, 200, (n_fp, 2))], 1)
        boxes = np.concatenate([src + jit, fp])
        det_labels = np.concatenate([labels[idx], rng.integers(0, num_classes, n_fp)])
        scores = np.concatenate([rng.uniform(0.3, 1, n_tp), rng.uniform(0, 0.7, n_fp)])
        dets.append((boxes, np.round(scores, 3), det_labels))
        gts.append((gt, labels, crowd))
    return dets, gts


def to_coco(dets, gts, num_classes):
    from pycocotools.coco import COCO

    anns, results = [], []
    for i, (b, lab, crowd) in enumerate(gts):
        wh = b[:, 2:] - b[:, :2]
        for box, w, l_, c in zip(b, wh, lab, crowd):
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(l_) + 1,
                             bbox=[float(box[0]), float(box[1]), float(w[0]), float(w[1])],
                             area=float(w[0] * w[1]), iscrowd=int(c)))
    for i, (b, s, lab) in enumerate(dets):
        wh = b[:, 2:] - b[:, :2]
        for box, w, sc, l_ in zip(b, wh, s, lab):
            results.append(dict(image_id=i + 1, category_id=int(l_) + 1, score=float(sc),
                                bbox=[float(box[0]), float(box[1]), float(w[0]), float(w[1])]))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = dict(images=[dict(id=i + 1) for i in range(len(gts))], annotations=anns,
                          categories=[dict(id=k + 1) for k in range(num_classes)])
        gt.createIndex()
        dt = gt.loadRes(results)
    return gt, dt


def run_pycocotools(gt, dt):
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return np.asarray(ev.stats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3, help="detjax repeats")
    parser.add_argument("--peer-repeats", type=int, default=1, help="pycocotools repeats")
    args = parser.parse_args()
    from detjax.eval import coco_evaluate

    dets, gts = make_set(args.images, args.classes)
    n_det = sum(len(d[0]) for d in dets)
    n_gt = sum(len(g[0]) for g in gts)
    print(f"{args.images} images, {args.classes} classes, {n_gt} gt boxes, {n_det} detections")

    ours_t, ours_c, ours = [], [], None
    for _ in range(args.repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        ours = coco_evaluate(dets, gts, num_classes=args.classes)
        ours_t.append(time.perf_counter() - t0)
        ours_c.append(time.process_time() - c0)
    rows = [("detjax coco_evaluate", statistics.median(ours_t), statistics.median(ours_c))]
    try:
        t0 = time.perf_counter()
        gt, dt = to_coco(dets, gts, args.classes)
        prep = time.perf_counter() - t0
        peer_t, peer_c, peer = [], [], None
        for _ in range(args.peer_repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            peer = run_pycocotools(gt, dt)
            peer_t.append(time.perf_counter() - t0)
            peer_c.append(time.process_time() - c0)
        rows.append(("pycocotools COCOeval", statistics.median(peer_t),
                     statistics.median(peer_c)))
    except ImportError:
        peer, prep = None, None
    print(f"{'engine':<24}{'wall s':>9}{'cpu s':>9}{'ratio wall':>12}{'ratio cpu':>11}"
          "   (ratio = pycocotools / this row)")
    for name, t, c in rows:
        print(f"{name:<24}{t:>9.3f}{c:>9.3f}{rows[-1][1] / t:>12.2f}{rows[-1][2] / c:>11.2f}")
    if peer is not None:
        print(f"pycocotools COCO()+loadRes setup (not in ratio): {prep:.3f} s")
        diff = np.abs(np.asarray(ours["stats"]) - peer).max()
        print(f"mAP50-95 detjax {ours['map']:.6f}  pycocotools {peer[0]:.6f}; "
              f"max |stats diff| = {diff:.2e}")


if __name__ == "__main__":
    main()
