"""``detjax val``: COCO metrics of a trained run on its validation split (EMA weights, jitted
postprocess, pycocotools-equal mAP), with the PR curve and a grid of validation images.

The run is restored with :func:`detjax.run.restore_run` (run folder, its ``best`` /
``checkpoints`` folder or one numbered save; ``best`` first); only the validation split is
loaded (:func:`detjax.run.build_datasets` with ``splits=('val',)``), and evaluated with
:func:`detjax.eval.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

USAGE = """usage: detjax val RUN_DIR|CHECKPOINT_DIR [key=value ...] [--out DIR] [--no-plots]

Evaluates a trained run on its validation split and prints the COCO metrics (mAP50-95,
mAP50, mAP75, small/medium/large, AR) and per-class AP. Config overrides (key=value, keys of
configs/default.yaml) change evaluation settings, e.g. eval.conf_thres=0.01 eval.batch=8
data.val_split=test. Results go to RUN_DIR/val (metrics.json, PR_curve.png, val_batch.png).
Examples:
  detjax val runs/train
  detjax val runs/train/best eval.iou_thres=0.6 --out runs/val_iou06"""


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
    from detjax.run import restore_run

    try:
        run = restore_run(args.path, overrides)
        result, samples, n = _validate(run, keep_images=0 if args.no_plots else 16)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax val: {e}", file=sys.stderr)
        return 2
    names = run.class_names
    print(f"{n} images, checkpoint {run.checkpoint_dir}")
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


def _validate(run, keep_images: int) -> tuple[dict[str, Any], list, int]:
    """``(metrics, samples, images)`` of a restored run on its validation split only."""
    from detjax.eval.validation import eval_settings, evaluate
    from detjax.run import build_datasets, build_loaders

    val_ds = build_datasets(run.config, splits=("val",)).val
    if len(val_ds.class_names) != len(run.class_names):
        raise ValueError(f"the validation split has {len(val_ds.class_names)} classes "
                         f"{list(val_ds.class_names)}, the run was trained on "
                         f"{len(run.class_names)} {run.class_names}")
    val_loader = build_loaders(run.config, val_ds=val_ds).val
    result, samples = evaluate(run.model, val_loader, class_names=run.class_names,
                               keep_images=keep_images, **eval_settings(run.config))
    return result, samples, len(val_ds)
