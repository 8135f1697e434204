"""``detjax data``: inspect a data set, or export the embedded synthetic one.

    detjax data check PATH --format coco|yolo|voc [--split train]   # counts + problems
    detjax data export OUT --format coco|yolo [--num-train 2000 --num-val 300 ...]
"""

from __future__ import annotations

import argparse
import collections


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detjax data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("check", help="load a data set and print its statistics and problems")
    c.add_argument("path")
    c.add_argument("--format", choices=("coco", "yolo", "voc"), default="coco")
    c.add_argument("--split", default="train")
    e = sub.add_parser("export", help="write the synthetic data set as COCO or YOLO")
    e.add_argument("out")
    e.add_argument("--format", choices=("coco", "yolo"), default="coco")
    e.add_argument("--num-train", type=int, default=2000)
    e.add_argument("--num-val", type=int, default=300)
    e.add_argument("--image-size", type=int, default=256)
    e.add_argument("--difficulty", type=float, default=0.5)
    e.add_argument("--seed", type=int, default=0)
    return p


def _describe(ds) -> str:
    counts = collections.Counter(int(c) for r in ds for c in r.labels)
    n = sum(counts.values())
    lines = [f"{len(ds)} images, {n} boxes, {len(ds.class_names)} classes"]
    lines += [f"  {name:<20} {counts.get(i, 0):>8}" for i, name in enumerate(ds.class_names)]
    lines.append("report: " + ds.report.summary())
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from detjax.data import DataError, load_dataset, synthetic_dataset, write_dataset

    args = _parser().parse_args(argv)
    if args.action == "check":
        try:
            ds = load_dataset(args.path, format=args.format, split=args.split,
                              on_error="skip")
        except DataError as e:
            print(f"error: {e}")
            return 1
        print(_describe(ds))
        return 0
    kw = dict(num_train=args.num_train, num_val=args.num_val, image_size=args.image_size,
              difficulty=args.difficulty, seed=args.seed)
    for split in ("train", "val"):
        ds = synthetic_dataset(split, **kw)
        path = write_dataset(ds, args.out, format=args.format, split=split)
        print(f"{split}: {len(ds)} images -> {path}")
    return 0
