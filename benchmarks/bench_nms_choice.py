"""Effect of the NMS method on mAP: greedy vs soft-NMS (linear, Gaussian) vs DIoU-NMS on the
validation split of a trained run, each timed, from one set of raw head outputs.

    .venv/bin/python benchmarks/bench_nms_choice.py RUN_DIR [key=value ...]
    .venv/bin/python benchmarks/bench_nms_choice.py --train [key=value ...]

``RUN_DIR`` is a trained run folder (``detjax train``); ``key=value`` overrides change the
evaluation, e.g. ``data.difficulty=0.9`` for a crowded synthetic split (the synthetic
validation set is regenerated with that difficulty) or ``eval.iou_thres=0.6``. ``--train``
first trains a small run into ``--workdir`` (``detjax.train.train_and_evaluate``; the
overrides apply to it too, e.g. ``train.time_limit=3 data.difficulty=0.9``). The head runs once
per batch; each method then runs ``detjax.non_max_suppression`` with ``eval.*`` settings on
the same outputs and is scored by ``detjax.eval.Evaluator``. Prints mAP50-95, mAP50, mAP75,
mean detections per image and postprocess ms per batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _train(workdir: str, overrides: list[str]) -> None:
    from detjax.config import load_config
    from detjax.train import train_and_evaluate

    cfg = load_config(None, ["log.progress=false", "log.plots=false", "log.tensorboard=false",
                             "train.time_limit=3", *overrides])
    train_and_evaluate(cfg, workdir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", help="trained run folder")
    parser.add_argument("--train", action="store_true", help="train a small run first")
    parser.add_argument("--workdir", default="runs/bench_nms_choice")
    parser.add_argument("--methods", default="greedy,soft_linear,soft_gaussian,diou")
    args, overrides = parser.parse_known_args(argv)
    if args.run and "=" in args.run:  # with --train, the first override lands in ``run``
        overrides.insert(0, args.run)
        args.run = None
    if any("=" not in o for o in overrides) or not (args.run or args.train):
        parser.error("give RUN_DIR or --train; overrides look like key=value")

    import jax

    from detjax.eval import Evaluator
    from detjax.eval.validation import inference_fn
    from detjax.nms import NMS_METHODS, non_max_suppression
    from detjax.run import build_datasets, build_loaders, restore_run

    methods = args.methods.split(",")
    if bad := [m for m in methods if m not in NMS_METHODS]:
        parser.error(f"unknown methods {bad}; choose from {NMS_METHODS}")
    run = args.run
    if args.train:
        _train(args.workdir, overrides)
        run = args.workdir
    restored = restore_run(run, overrides)
    cfg = restored.config
    _, val_ds = build_datasets(cfg, splits=("val",))
    _, loader = build_loaders(cfg, None, val_ds)
    names = list(val_ds.class_names)
    records = getattr(getattr(loader, "dataset", None), "records", None)
    if getattr(getattr(loader, "config", None), "augment", True):
        records = None

    apply, variables = inference_fn(restored.model)  # the EMA weights, eval mode
    forward = jax.jit(apply)
    batches = [(np.asarray(forward(variables, b["images"])), b) for b in loader.epoch()]
    e = cfg.eval
    print(f"\nNMS choice on {len(val_ds)} validation images of {run} "
          f"(data.difficulty {cfg.data.difficulty}, conf {e.conf_thres}, "
          f"iou {e.iou_thres}, multi_label {e.multi_label}, soft_sigma {e.soft_sigma}, "
          f"soft_min_score {e.soft_min_score}; jax on {jax.default_backend()})\n")
    header = (f"{'method':<14} {'mAP50-95':>9} {'mAP50':>8} {'mAP75':>8} {'det/img':>8} "
              f"{'ms/batch':>9}")
    print(header)
    print("-" * len(header))
    for method in methods:
        post = jax.jit(partial(non_max_suppression, conf_thres=float(e.conf_thres),
                               iou_thres=float(e.iou_thres), max_det=int(e.max_det),
                               multi_label=bool(e.multi_label), method=method,
                               soft_sigma=float(e.soft_sigma),
                               soft_min_score=float(e.soft_min_score)))
        jax.block_until_ready(post(batches[0][0]))  # compile outside the timing
        ev = Evaluator(num_classes=len(names), class_names=names)
        seconds, dets = 0.0, 0
        for preds, batch in batches:
            start = time.perf_counter()
            out = jax.block_until_ready(post(preds))
            seconds += time.perf_counter() - start
            det, valid = np.asarray(out.detections), np.asarray(out.valid)
            dets += int(valid[np.asarray(batch["image_mask"])].sum())
            ev.update_batch(det, valid, batch,
                            records=records if records is not None and "index" in batch else None)
        r = ev.compute()
        print(f"{method:<14} {r['map']:>9.4f} {r['map50']:>8.4f} {r['map75']:>8.4f} "
              f"{dets / len(val_ds):>8.1f} {1e3 * seconds / len(batches):>9.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
