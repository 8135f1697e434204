"""``detjax val``: COCO metrics of a trained run on its validation split (EMA weights, jitted
postprocess, pycocotools-equal mAP), with the PR curve and a grid of validation images.

The run is restored with :func:`detjax.run.restore_run` (run folder, its ``best`` /
``checkpoints`` folder or one numbered save; ``best`` first); only the validation split is
loaded (:func:`detjax.run.build_datasets` with ``splits=('val',)``), and evaluated with
:func:`detjax.eval.evaluate`. ``--sweep`` scores a grid of NMS thresholds on one forward pass
(:mod:`detjax.eval.sweep`); several runs with ``--ensemble`` are fused per image
(:func:`detjax.infer.ensemble.evaluate_ensemble`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

USAGE = """usage: detjax val RUN_DIR|CHECKPOINT_DIR [key=value ...] [--out DIR] [--no-plots]
                  [--sweep [--sweep-iou 0.5:0.8:0.05] [--sweep-conf 0.001,0.01,0.1]]
       detjax val RUN1 RUN2 ... --ensemble wbf|nms|soft [--ensemble-iou T] [key=value ...]

Evaluates a trained run on its validation split and prints the COCO metrics (mAP50-95,
mAP50, mAP75, small/medium/large, AR) and per-class AP. Config overrides (key=value, keys of
configs/default.yaml) change evaluation settings, e.g. eval.conf_thres=0.01 eval.batch=8
data.val_split=test. Results go to RUN_DIR/val (metrics.json, PR_curve.png, val_batch.png).

--sweep runs the network once and scores every (confidence, NMS IoU) threshold pair of two
grids (start:stop:step or a comma list; defaults IoU 0.5:0.8:0.05, conf 0.001,0.01,0.05,0.1,
0.25); it prints the IoU with the best mAP50-95 at the lowest confidence, the mAP table and
the best-F1 confidence per class, and writes sweep.json and F1_curve.png.
--ensemble fuses the runs' detections per image (each run at its own image size and eval
settings; the runs must share class names) by weighted boxes fusion (wbf), NMS or soft-NMS;
--ensemble-iou is the fusion's IoU threshold (default: wbf 0.55, nms/soft 0.5). Results go
to RUN1/val_ensemble. Examples:
  detjax val runs/train
  detjax val runs/train/best eval.iou_thres=0.6 --out runs/val_iou06
  detjax val runs/train --sweep --sweep-iou 0.6,0.65,0.7
  detjax val runs/a runs/b --ensemble wbf"""


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


def parse_grid(text: str) -> tuple[float, ...]:
    """``"0.5:0.8:0.05"`` (start, stop inclusive, step) or ``"0.5,0.6,0.7"`` -> thresholds."""
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0:
                raise ValueError
            n = int(np.floor((stop - start) / step + 1e-9)) + 1
            return tuple(round(start + i * step, 10) for i in range(max(n, 0)))
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ValueError(f"a threshold grid is start:stop:step (step > 0) or a comma list, "
                         f"got {text!r}") from None


def _parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="detjax val", usage=USAGE, add_help=False)
    parser.add_argument("paths", nargs="*")
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--sweep-iou", type=parse_grid, default=None)
    parser.add_argument("--sweep-conf", type=parse_grid, default=None)
    parser.add_argument("--ensemble", default=None)
    parser.add_argument("--ensemble-iou", type=float, default=None)
    parser.add_argument("-h", "--help", action="store_true")
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit:
        raise ValueError("bad option value") from None
    unknown = [a for a in rest if a.startswith("-")]
    if unknown:
        raise ValueError(f"unknown arguments {unknown}; overrides look like key=value")
    words = args.paths + rest
    args.paths = [a for a in words if "=" not in a]
    if len(args.paths) > 1 and not args.ensemble:
        raise ValueError(f"{len(args.paths)} runs given; several runs need --ensemble")
    if args.ensemble and args.sweep:
        raise ValueError("--sweep runs on one run, not on an --ensemble")
    return args, [a for a in words if "=" in a]


def val_main(argv: list[str]) -> int:
    """Entry point of ``detjax val`` (see ``USAGE``); returns the exit code."""
    try:
        args, overrides = _parse(list(argv))
    except ValueError as e:
        print(f"detjax val: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
    if args.help or not args.paths:
        print(USAGE)
        return 0 if args.help else 2
    if args.ensemble:
        return _ensemble_main(args, overrides)
    if args.sweep:
        return _sweep_main(args, overrides)
    from detjax.run import restore_run

    try:
        run = restore_run(args.paths[0], overrides)
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
    from detjax.run import build_loaders

    val_ds = _val_dataset(run)
    val_loader = build_loaders(run.config, val_ds=val_ds).val
    result, samples = evaluate(run.model, val_loader, class_names=run.class_names,
                               keep_images=keep_images, **eval_settings(run.config))
    return result, samples, len(val_ds)


def _val_dataset(run):
    """The validation split of a restored run, its class count checked against the run's."""
    from detjax.run import build_datasets

    val_ds = build_datasets(run.config, splits=("val",)).val
    if len(val_ds.class_names) != len(run.class_names):
        raise ValueError(f"the validation split has {len(val_ds.class_names)} classes "
                         f"{list(val_ds.class_names)}, the run was trained on "
                         f"{len(run.class_names)} {run.class_names}")
    return val_ds


def run_sweep(run, *, conf_grid=None, iou_grid=None):
    """:func:`detjax.eval.sweep.sweep_nms` of a restored run on its validation split (one
    forward pass; the run's ``eval`` settings except the two thresholds)."""
    from detjax.eval.sweep import CONF_GRID, IOU_GRID, raw_predictions, sweep_nms
    from detjax.eval.validation import eval_settings
    from detjax.run import build_loaders

    loader = build_loaders(run.config, val_ds=_val_dataset(run)).val
    confs = tuple(conf_grid or CONF_GRID)
    settings = eval_settings(run.config)
    del settings["conf_thres"], settings["iou_thres"]
    raw = raw_predictions(run.model, loader, min_conf=min(confs))
    return sweep_nms(raw, conf_grid=confs, iou_grid=tuple(iou_grid or IOU_GRID),
                     class_names=run.class_names, **settings)


def format_sweep(sweep, f1) -> str:
    """The mAP50-95 table over the IoU (rows) and confidence (columns) grids, the best IoU,
    and the best-F1 confidence per class and overall (``f1``: :func:`sweep_summary`'s)."""
    confs, ious, m = sweep.conf_grid, sweep.iou_grid, sweep.metrics
    lines = [f"mAP50-95 by NMS IoU (rows) and confidence (columns); mAP50 at conf {confs[0]:g}",
             f"{'IoU':>6} " + " ".join(f"{c:>8g}" for c in confs) + f" {'mAP50':>8}"]
    for t, iou in enumerate(ious):
        mark = " <- best" if np.isclose(iou, sweep.best_iou) else ""
        lines.append(f"{iou:6.3g} " + " ".join(f"{m['map'][c, t]:8.4f}" for c in
                                               range(len(confs)))
                     + f" {m['map50'][0, t]:8.4f}{mark}")
    best_t = int(np.flatnonzero(np.isclose(ious, sweep.best_iou))[0])
    lines.append(f"best NMS IoU {sweep.best_iou:g}: mAP50-95 {m['map'][0, best_t]:.4f} "
                 f"at conf {confs[0]:g}")
    lines.append(f"best-F1 confidence (IoU {f1['iou']:g} matching, NMS IoU {sweep.best_iou:g}):"
                 f" all classes {f1['conf']:.3f} (F1 {f1['f1']:.3f})")
    lines.append(f"{'class':>20} {'conf':>8} {'F1':>8}")
    for name, row in f1["per_class"].items():
        if row["conf"] is None:
            lines.append(f"{name:>20} {'-':>8} {'-':>8}")
        else:
            lines.append(f"{name:>20} {row['conf']:8.3f} {row['f1']:8.3f}")
    return "\n".join(lines)


def sweep_summary(sweep, *, iou: float = 0.5) -> dict[str, Any]:
    """JSON-ready sweep results: the grids, ``map`` / ``map50`` / ``map75`` ``[conf][iou]``,
    ``best_iou`` and the best-F1 confidences (``f1``) at ``(conf_grid[0], best_iou)``."""
    from detjax.eval.pr import best_f1_confidence, f1_curve

    conf, best, conf_all, f1_all = best_f1_confidence(f1_curve(sweep.result, iou=iou))
    names = sweep.result.get("class_names") or [str(k) for k in range(len(conf))]
    per_class = {n: {"conf": None if np.isnan(c) else float(c),
                     "f1": None if np.isnan(f) else float(f)}
                 for n, c, f in zip(names, conf, best)}
    return {"conf_grid": sweep.conf_grid.tolist(), "iou_grid": sweep.iou_grid.tolist(),
            **{k: v.tolist() for k, v in sweep.metrics.items()},
            "best_iou": sweep.best_iou, "at_conf": float(sweep.conf_grid[0]),
            "metrics_at_best": _jsonable_metrics(sweep.result),
            "f1": {"iou": iou, "conf": conf_all, "f1": f1_all, "per_class": per_class}}


def _sweep_main(args, overrides: list[str]) -> int:
    from detjax.run import restore_run

    try:
        run = restore_run(args.paths[0], overrides)
        sweep = run_sweep(run, conf_grid=args.sweep_conf, iou_grid=args.sweep_iou)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax val: {e}", file=sys.stderr)
        return 2
    summary = sweep_summary(sweep)
    print(f"checkpoint {run.checkpoint_dir}")
    print(format_sweep(sweep, summary["f1"]))
    out = Path(args.out) if args.out else run.run_dir / "val"
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(json.dumps(summary, indent=2))
    if not args.no_plots:
        from detjax import plots

        plots.plot_f1_curve(sweep.result, str(out / "F1_curve.png"))
    print(f"results saved to {out}")
    return 0 if np.isfinite(sweep.metrics["map"]).all() else 1


def run_ensemble(runs, *, method: str, iou_thr: float | None = None) -> dict[str, Any]:
    """:func:`detjax.infer.ensemble.evaluate_ensemble` of restored runs on the first run's
    validation split; each run predicts at its own image size with its own ``eval``
    settings."""
    from detjax.eval.validation import eval_settings
    from detjax.infer.ensemble import check_class_names, evaluate_ensemble
    from detjax.run import build_loaders

    names = check_class_names([r.class_names for r in runs], [str(r.run_dir) for r in runs])
    val_ds = _val_dataset(runs[0])
    members = [(r.model, build_loaders(r.config, val_ds=val_ds).val, eval_settings(r.config))
               for r in runs]
    return evaluate_ensemble(members, class_names=names, method=method, iou_thr=iou_thr,
                             max_det=int(runs[0].config.eval.max_det))


def _ensemble_main(args, overrides: list[str]) -> int:
    from detjax.run import restore_run

    try:
        runs = [restore_run(p, overrides) for p in args.paths]
        result = run_ensemble(runs, method=args.ensemble, iou_thr=args.ensemble_iou)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax val: {e}", file=sys.stderr)
        return 2
    print(f"ensemble ({args.ensemble}) of {len(runs)} runs: "
          + ", ".join(f"{r.checkpoint_dir} ({r.image_size} px)" for r in runs))
    print(format_metrics(result))
    out = Path(args.out) if args.out else runs[0].run_dir / "val_ensemble"
    out.mkdir(parents=True, exist_ok=True)
    metrics = _jsonable_metrics(result)
    metrics["ensemble"] = {"method": args.ensemble, "iou_thr": args.ensemble_iou,
                           "runs": [str(r.checkpoint_dir) for r in runs]}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if not args.no_plots:
        from detjax import plots

        plots.plot_pr_curve(result, str(out / "PR_curve.png"))
    print(f"results saved to {out}")
    return 0 if np.isfinite(result["map"]) else 1
