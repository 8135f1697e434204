"""``detjax val``: COCO metrics of a trained run on its validation split (EMA weights, jitted
postprocess, pycocotools-equal mAP), with the PR curve and a grid of validation images.

Checkpoints come from the TRAIN helper's ``detjax.train.checkpoint``: the documented entry
point ``restore_for_inference(path, overrides) -> (model, state, config)`` restores a run
folder (preferring ``best/``), a checkpoint folder or one numbered save; the evaluation loop is
``detjax.train.loop.evaluate`` (EMA weights, jitted ``non_max_suppression``, this package's
:class:`~detjax.eval.Evaluator`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

USAGE = """usage: detjax val RUN_DIR|CHECKPOINT_DIR [key=value ...] [--out DIR] [--no-plots]

Evaluates a trained run on its validation split and prints the COCO metrics (mAP50-95,
mAP50, mAP75, small/medium/large, AR) and per-class AP. Config overrides (key=value, keys of
configs/default.yaml) change evaluation settings, e.g. eval.conf_thres=0.01 eval.batch=8
data.val_split=test. Results go to RUN_DIR/val (metrics.json, PR_curve.png, val_batch.png).
Examples:
  detjax val runs/train
  detjax val runs/train/best eval.iou_thres=0.6 --out runs/val_iou06"""


class LoadedRun(NamedTuple):
    """A restored run: ``state`` (TrainState), ``config``, ``run_dir``, ``class_names``
    (``None`` until a data set is built) and the checkpoint folder it came from."""

    state: Any
    config: Any
    run_dir: Path
    class_names: list[str] | None
    checkpoint_dir: Path


def load_run(path: str | Path, overrides: list[str] | None = None) -> LoadedRun:
    """Restores the EMA-carrying ``TrainState`` and config of a run for inference through
    ``detjax.train.checkpoint.restore_for_inference`` (run folder, its ``best`` /
    ``checkpoints`` folder, or one numbered save)."""
    from detjax.train.checkpoint import find_run_dir, restore_for_inference

    _, state, cfg = restore_for_inference(str(path), list(overrides or []))
    return LoadedRun(state, cfg, find_run_dir(path), None, Path(path).absolute())


def format_metrics(result: dict[str, Any]) -> str:
    """The 12 COCO numbers and a per-class AP table as text."""
    labels = {"map": "mAP50-95", "map50": "mAP50", "map75": "mAP75", "map_small": "mAP small",
              "map_medium": "mAP medium", "map_large": "mAP large"}
    lines = [f"{labels.get(k, k.replace('mar_', 'AR ')):>12}: {result[k]:.4f}"
             for k in result if k.startswith(("map", "mar_"))]
    names = result.get("class_names") or []
    lines.append(f"{'class':>20} {'AP50':>8} {'AP50-95':>8}")
    for name, ap50, ap in zip(names, result["per_class_ap50"], result["per_class_ap"]):
        fmt = lambda v: f"{v:8.4f}" if v > -1 else f"{'-':>8}"
        lines.append(f"{name:>20} {fmt(ap50)} {fmt(ap)}")
    return "\n".join(lines)


def _jsonable_metrics(result: dict[str, Any]) -> dict[str, Any]:
    out = {k: float(v) for k, v in result.items() if isinstance(v, float)}
    out["per_class_ap"] = dict(zip(result["class_names"], map(float, result["per_class_ap"])))
    out["per_class_ap50"] = dict(zip(result["class_names"],
                                     map(float, result["per_class_ap50"])))
    out["num_images"] = int(result.get("num_images", 0))
    return out


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="detjax val", usage=USAGE, add_help=False)
    parser.add_argument("path", nargs="?")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("-h", "--help", action="store_true")
    args, rest = parser.parse_known_args(argv)
    unknown = [a for a in rest if "=" not in a]
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; overrides look like key=value")
    return args, rest


def val_main(argv: list[str]) -> int:
    """Entry point of ``detjax val`` (see ``USAGE``); returns the exit code."""
    try:
        args, overrides = _parse(list(argv))
    except ValueError as e:
        print(f"detjax val: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
    if args.help or not args.path:
        print(USAGE)
        return 0 if args.help else 2
    try:
        run = load_run(args.path, overrides)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax val: {e}", file=sys.stderr)
        return 2
    from detjax.train.loop import build_datasets, build_loaders, evaluate

    train_ds, val_ds = build_datasets(run.config)
    names = run.class_names or list(val_ds.class_names)
    _, val_loader = build_loaders(run.config, train_ds, val_ds)
    result, samples = evaluate(run.state, val_loader, run.config, names,
                               keep_images=0 if args.no_plots else 16)
    print(f"{len(val_ds)} images, checkpoint {run.checkpoint_dir}")
    print(format_metrics(result))
    out = Path(args.out) if args.out else run.run_dir / "val"
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(_jsonable_metrics(result), indent=2))
    if not args.no_plots:
        from detjax import plots

        plots.plot_pr_curve(result, str(out / "PR_curve.png"))
        if samples:
            plots.plot_val_grid([s[0] for s in samples], [s[1] for s in samples],
                                [s[2] for s in samples], str(out / "val_batch.png"),
                                class_names=names)
    print(f"results saved to {out}")
    return 0 if np.isfinite(result["map"]) else 1
