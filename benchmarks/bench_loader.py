"""Loader throughput: detjax.data.Loader vs the ultralytics training dataloader.

Both read the same synthetic data set (written once at each image size, detjax's COCO
cache and a YOLO copy for ultralytics) and apply the same ultralytics default training
augmentations (mosaic 1.0, affine translate 0.1 / scale 0.5, HSV 0.015/0.7/0.4, flip 0.5).
Reports images/s (median over repeats) at 320 and 640 px with 0 and 2 workers, and the
start-up time (first batch, incl. worker start) separately.

    python benchmarks/bench_loader.py [--images 160] [--batches 5] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def _time_batches(make_iter, n_batches: int, batch_size: int, repeats: int, workers: int):
    """(start-up seconds, median steady images/s).

    Start-up is the time to the first batch (incl. worker start). The steady rate is
    measured over ``n_batches`` after skipping the ``2 * workers`` batches that the
    workers of both loaders may have prefetched meanwhile.
    """
    rates, startup = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        it = make_iter()
        next(it)
        startup.append(time.perf_counter() - t0)
        for _ in range(2 * workers):
            next(it)
        t1 = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        rates.append(n_batches * batch_size / (time.perf_counter() - t1))
        del it
    return statistics.median(startup), statistics.median(rates)


def _detjax(ds, size, workers, batch, n_batches, repeats):
    from detjax.data import Loader

    def make():
        loader = Loader(ds, batch_size=batch, image_size=size, workers=workers, epochs=100,
                        max_boxes=100)
        return iter(loader)

    return _time_batches(make, n_batches, batch, repeats, workers)


def _ultralytics(yaml_path, names, size, workers, batch, n_batches, repeats):
    from ultralytics.cfg import get_cfg
    from ultralytics.data.build import build_dataloader
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.utils import DEFAULT_CFG

    hyp = get_cfg(DEFAULT_CFG)
    img_dir = os.path.join(os.path.dirname(yaml_path), "images", "train")
    data = {"names": dict(enumerate(names)), "nc": len(names), "channels": 3}
    ds = YOLODataset(img_path=img_dir, imgsz=size, augment=True, hyp=hyp, batch_size=batch,
                     data=data, task="detect", pad=0.0)

    def make():
        return iter(build_dataloader(ds, batch, workers, shuffle=True, pin_memory=False,
                                     device="cpu"))

    return _time_batches(make, n_batches, batch, repeats, workers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=160)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=5, help="timed batches per repeat")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "detjax-bench"))
    args = p.parse_args()
    need = args.batch * (args.batches + 1 + 2 * max(args.workers))
    if args.images < need:
        p.error(f"--images must be >= {need} (ultralytics iterates one epoch)")

    from detjax.data import synthetic_dataset, write_dataset

    try:
        import ultralytics  # noqa: F401
        have_ul = True
    except ImportError:
        have_ul = False
    rows = []
    for size in args.sizes:
        ds = synthetic_dataset("train", num_train=args.images, num_val=1, image_size=size,
                               cache_dir=args.cache)
        yaml_path = os.path.join(args.cache, f"yolo-{size}-{args.images}", "data.yaml")
        if have_ul and not os.path.isfile(yaml_path):
            write_dataset(ds, os.path.dirname(yaml_path), format="yolo")
        for w in args.workers:
            s_d, r_d = _detjax(ds, size, w, args.batch, args.batches, args.repeats)
            s_u = r_u = float("nan")
            if have_ul:
                s_u, r_u = _ultralytics(yaml_path, ds.class_names, size, w, args.batch,
                                        args.batches, args.repeats)
            rows.append((size, w, r_d, r_u, s_d, s_u))
            print(f"  done size={size} workers={w}", flush=True)
    print(f"\nsteady images/s, batch {args.batch}, mosaic on, median of {args.repeats} x "
          f"{args.batches} batches after the first 1 + 2 x workers; start-up = time to the "
          "first batch incl. worker start (detjax workers run across epochs)")
    print(f"{'size':>5} {'workers':>7} {'detjax img/s':>13} {'ultralytics img/s':>18} "
          f"{'ratio d/u':>9} {'start-up d (s)':>14} {'start-up u (s)':>14}")
    for size, w, r_d, r_u, s_d, s_u in rows:
        print(f"{size:>5} {w:>7} {r_d:>13.1f} {r_u:>18.1f} {r_d / r_u:>9.2f} {s_d:>14.2f} "
              f"{s_u:>14.2f}")


if __name__ == "__main__":
    main()
