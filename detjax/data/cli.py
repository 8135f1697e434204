"""``detjax data``: inspect a data set, or export the embedded synthetic one.

    detjax data check PATH --format coco|yolo|voc [--split train] [--class-names a,b]
        [--plot stats.png] [--raise]    # statistics, then every problem with its file
    detjax data export OUT --format coco|yolo [--num-train 2000 --num-val 300 ...]
"""

from __future__ import annotations

import argparse
import collections

import numpy as np

# COCO area ranges (pycocotools): small < 32^2 <= medium < 96^2 <= large, in pixels^2
SMALL_AREA, LARGE_AREA = 32.0**2, 96.0**2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detjax data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="load a data set and print its statistics and problems")
    c.add_argument("path")
    c.add_argument("--format", choices=("coco", "yolo", "voc"), default="coco")
    c.add_argument("--split", default="train")
    c.add_argument("--class-names", default=None,
                   help="comma-separated VOC class names (default: read from the annotations)")
    c.add_argument("--plot", default=None, metavar="PNG",
                   help="write a PNG of the class counts and box sizes")
    c.add_argument("--raise", dest="on_error", action="store_const", const="raise",
                   default="skip", help="stop at the first bad file instead of listing all")
    e = sub.add_parser("export", help="write the synthetic data set as COCO or YOLO")
    e.add_argument("out")
    e.add_argument("--format", choices=("coco", "yolo"), default="coco")
    e.add_argument("--num-train", type=int, default=2000)
    e.add_argument("--num-val", type=int, default=300)
    e.add_argument("--image-size", type=int, default=256)
    e.add_argument("--difficulty", type=float, default=0.5)
    e.add_argument("--seed", type=int, default=0)
    return p


def dataset_stats(ds) -> dict:
    """Counts of a data set: ``class_counts`` [C], ``objects_per_image`` [N],
    ``box_wh`` [n, 2] (w, h pixels of the xyxy boxes), ``area_counts`` (COCO small /
    medium / large) and ``empty_images`` (paths of images without boxes)."""
    per_image = np.array([len(r.labels) for r in ds], np.int64)
    labels = np.concatenate([np.asarray(r.labels, np.int64) for r in ds] or [np.zeros(0, int)])
    boxes = np.concatenate([np.asarray(r.boxes, np.float64).reshape(-1, 4) for r in ds]
                           or [np.zeros((0, 4))])
    wh = boxes[:, 2:] - boxes[:, :2]
    area = wh.prod(1)
    return {"class_counts": np.bincount(labels, minlength=len(ds.class_names)),
            "objects_per_image": per_image, "box_wh": wh,
            "area_counts": {"small": int((area < SMALL_AREA).sum()),
                            "medium": int(((area >= SMALL_AREA) & (area < LARGE_AREA)).sum()),
                            "large": int((area >= LARGE_AREA).sum())},
            "empty_images": [r.image_path for r, n in zip(ds, per_image) if n == 0]}


def describe(ds, stats: dict) -> str:
    """The text report of ``detjax data check``."""
    per = stats["objects_per_image"]
    n = int(per.sum())
    lines = [f"{len(ds)} images, {n} boxes, {len(ds.class_names)} classes", "", "class counts:"]
    lines += [f"  {name:<20} {int(c):>8}" for name, c in zip(ds.class_names,
                                                             stats["class_counts"])]
    if len(per):
        hist = collections.Counter(per.tolist())
        lines += ["", f"objects per image: mean {per.mean():.2f}, median {np.median(per):g}, "
                      f"max {per.max()}",
                  "  " + ", ".join(f"{k}: {hist[k]}" for k in sorted(hist))]
    a = stats["area_counts"]
    lines += ["", "box sizes (COCO areas, pixels^2 of the source image): "
                  f"small (< 32^2) {a['small']}, medium {a['medium']}, large (>= 96^2) "
                  f"{a['large']}"]
    if len(stats["box_wh"]):
        wh = stats["box_wh"]
        lines.append(f"  width  min {wh[:, 0].min():.1f} median {np.median(wh[:, 0]):.1f} "
                     f"max {wh[:, 0].max():.1f}")
        lines.append(f"  height min {wh[:, 1].min():.1f} median {np.median(wh[:, 1]):.1f} "
                     f"max {wh[:, 1].max():.1f}")
    empty = stats["empty_images"]
    lines += ["", f"images without boxes: {len(empty)}", *(f"  {p}" for p in empty)]
    rep = ds.report
    lines += ["", "report: " + rep.counts(),
              f"problems ({len(rep.problems)}):", *(f"  {p}" for p in rep.problems)]
    return "\n".join(lines)


def plot_stats(ds, stats: dict, path: str) -> str:
    """PNG with the class counts (bars) and the box sizes (w, h scatter, log axes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4.5), tight_layout=True)
    names = list(ds.class_names)
    ax0.bar(range(len(names)), stats["class_counts"])
    ax0.set_xticks(range(len(names)), names, rotation=90 if len(names) > 8 else 0)
    ax0.set(title=f"class counts ({len(ds)} images)", ylabel="boxes")
    wh = stats["box_wh"]
    if len(wh):
        ax1.scatter(wh[:, 0].clip(0.5), wh[:, 1].clip(0.5), s=3, alpha=0.4)
        ax1.set(xscale="log", yscale="log")
    a = stats["area_counts"]
    ax1.set(title=f"box sizes: small {a['small']}, medium {a['medium']}, large {a['large']}",
            xlabel="width (px)", ylabel="height (px)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    from detjax.data import DataError, load_dataset, synthetic_dataset, write_dataset

    args = _parser().parse_args(argv)
    if args.action == "check":
        names = [n.strip() for n in args.class_names.split(",")] if args.class_names else None
        try:
            ds = load_dataset(args.path, format=args.format, split=args.split,
                              class_names=names, on_error=args.on_error)
        except DataError as e:
            print(f"error: {e}")
            return 1
        stats = dataset_stats(ds)
        print(describe(ds, stats))
        if args.plot:
            print(f"plot: {plot_stats(ds, stats, args.plot)}")
        return 0
    kw = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
              difficulty=args.difficulty, seed=args.seed)
    for split in ("train", "val"):
        ds = synthetic_dataset(split, **kw)
        path = write_dataset(ds, args.out, format=args.format, split=split)
        print(f"{split}: {len(ds)} images -> {path}")
    return 0
