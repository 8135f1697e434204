"""``detjax predict``: draw a trained run's detections on an image or a folder of images.

The run is restored with :func:`detjax.run.restore_run` (EMA weights, class names and image
size from the run folder alone; no data set is read); inference is
:class:`~detjax.infer.predict.Predictor` (letterbox, one jitted forward + NMS), optionally with
flip/scale TTA (``--tta``) or sliced inference for large images (``--slice``). Several runs
with ``--ensemble`` predict as one :class:`~detjax.infer.ensemble.EnsemblePredictor` (each run
at its own image size and with its own TTA views, fused per image).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

USAGE = """usage: detjax predict RUN_DIR|CHECKPOINT_DIR SOURCE [--out DIR] [--imgsz N]
                      [--conf 0.25] [--iou 0.7] [--max-det 300] [--batch 8] [--save-txt]
                      [--tta] [--slice N [--overlap 0.2]]
       detjax predict RUN1 RUN2 ... SOURCE --ensemble wbf|nms|soft [--ensemble-iou T] ...

Runs the run's EMA weights on SOURCE (an image file or a folder of images) and saves each
image with its boxes drawn to DIR (default RUN_DIR/predict); --save-txt also writes
<name>.txt rows `class score x1 y1 x2 y2` (original pixels). With several runs and
--ensemble, every run predicts each image (at its own image size unless --imgsz, with --conf,
--iou and --tta applied to each) and the detections are fused per image by weighted boxes
fusion (wbf), NMS or soft-NMS (--ensemble-iou: default wbf 0.55, nms/soft 0.5); the runs must
share class names, and results go to RUN1/predict. Examples:
  detjax predict runs/train path/to/images
  detjax predict runs/train big.jpg --slice 512 --overlap 0.25 --conf 0.3
  detjax predict runs/a runs/b path/to/images --ensemble wbf"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detjax predict", usage=USAGE, add_help=False)
    p.add_argument("paths", nargs="*", help="RUN [RUN ...] SOURCE")
    p.add_argument("--out", default=None)
    p.add_argument("--imgsz", type=int, default=None, help="default: the run's data.imgsz")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--save-txt", action="store_true")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--slice", type=int, default=0)
    p.add_argument("--overlap", type=float, default=0.2)
    p.add_argument("--ensemble", default=None)
    p.add_argument("--ensemble-iou", type=float, default=None)
    p.add_argument("-h", "--help", action="store_true")
    return p


def _forward(model, tta: bool):
    """``(forward, variables)`` of a restored model, with flip/scale TTA when ``tta``."""
    from detjax.eval.validation import inference_fn

    forward, variables = inference_fn(model)
    if not tta:
        return forward, variables
    from detjax.infer.tta import tta_predict

    return (lambda v, images: tta_predict(forward, v, images)), variables


def _predictor(run, args):
    """The :class:`~detjax.infer.predict.Predictor` of one restored run."""
    from detjax.infer.predict import Predictor

    forward, variables = _forward(run.model, args.tta)
    e = run.config.eval
    return Predictor(forward, variables, imgsz=args.imgsz or run.image_size,
                     conf_thres=args.conf, iou_thres=args.iou, max_det=args.max_det,
                     batch_size=args.batch, nms=str(e.nms), soft_sigma=float(e.soft_sigma),
                     soft_min_score=float(e.soft_min_score))


def build_predictor(runs, args):
    """One run's predictor, or with ``args.ensemble`` the runs' fused
    :class:`~detjax.infer.ensemble.EnsemblePredictor` (class names checked first)."""
    if not args.ensemble:
        if len(runs) > 1:
            raise ValueError(f"{len(runs)} runs given; several runs need --ensemble")
        return _predictor(runs[0], args)
    from detjax.infer.ensemble import EnsemblePredictor, check_class_names

    check_class_names([r.class_names for r in runs], [str(r.run_dir) for r in runs])
    return EnsemblePredictor([_predictor(r, args) for r in runs], method=args.ensemble,
                             iou_thr=args.ensemble_iou, max_det=args.max_det)


def predict_main(argv: list[str]) -> int:
    """Entry point of ``detjax predict`` (see ``USAGE``); returns the exit code."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit:
        print(USAGE, file=sys.stderr)
        return 2
    if args.help or len(args.paths) < 2:
        print(USAGE)
        return 0 if args.help else 2
    from detjax.infer.predict import list_images, predict_source
    from detjax.run import restore_run

    *run_paths, source = args.paths
    try:
        runs = [restore_run(p) for p in run_paths]
        paths = list_images(source)
        predictor = build_predictor(runs, args)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax predict: {e}", file=sys.stderr)
        return 2
    names = runs[0].class_names
    out = Path(args.out) if args.out else runs[0].run_dir / "predict"
    if args.slice:
        results = _predict_sliced(predictor, paths, out, names, args)
    else:
        results = predict_source(predictor, source, str(out), class_names=names,
                                 save_txt=args.save_txt)
    for path, pred in results:
        counts = np.bincount(pred.labels, minlength=len(names)) if len(pred.labels) else []
        summary = ", ".join(f"{c} {names[k]}" for k, c in enumerate(counts) if c) or "nothing"
        print(f"{os.path.basename(path)}: {summary}")
    print(f"{len(results)} images saved to {out}")
    return 0


def _predict_sliced(predictor, paths, out: Path, names, args) -> list:
    from detjax.data.records import read_image
    from detjax.infer.sliced import sliced_predict
    from detjax.plots import draw_boxes

    out.mkdir(parents=True, exist_ok=True)
    results = []
    for path in paths:
        image = read_image(path)
        pred = sliced_predict(predictor, image, slice_size=args.slice, overlap=args.overlap,
                              max_det=args.max_det)
        draw_boxes(image, pred.boxes, pred.labels, pred.scores,
                   class_names=names).save(out / os.path.basename(path))
        results.append((path, pred))
    return results
