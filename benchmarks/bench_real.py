"""YOLOv8n from scratch on a real data set: detjax vs ultralytics, side by side.

Both sides train on the same split of a VOC folder (default ``../shared/data/raccoon``), one
after the other, each in its own subprocess (so peak memory is measured per side):

* detjax: ``configs/yolov8n.yaml`` with ``data.format=voc`` and ``data.path`` set;
* ultralytics: ``YOLO("yolov8n.yaml").train(pretrained=False, ...)``, its defaults, on a
  YOLO-format copy written by ``detjax.data.write_dataset``.

Same epochs, image size, batch and loader workers; torch gets as many threads as JAX has
CPU cores. Each side then predicts the validation images with its final (EMA) weights at
conf 0.001, IoU 0.7, max_det 300, and ONE evaluator (pycocotools) scores both against the
same ground truth. Prints mAP50-95, mAP50, training wall time (the train call, including
compilation and per-epoch validation), peak RSS of the largest process (``wait4``), and
the peak summed RSS of the process tree (main + loader workers, sampled every 0.5 s).

    .venv/bin/python benchmarks/bench_real.py [--epochs 30] [--imgsz 320] [--batch 16]
        [--workers 2] [--data DIR] [--out DIR] [--sides detjax,ultralytics]
        [--weights FILE.safetensors]   # fine-tune: the detjax side starts from these weights
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _main_checkout(root: str) -> str:
    """The repository root, or for a git worktree (``.git`` is a file) its main checkout."""
    git = os.path.join(root, ".git")
    if os.path.isfile(git):
        with open(git) as f:
            gitdir = f.read().split("gitdir:", 1)[-1].strip()
        head, sep, _ = gitdir.rpartition(os.sep + ".git" + os.sep)
        if sep:
            return head
    return root


DEFAULT_DATA = os.path.normpath(os.path.join(_main_checkout(ROOT), "..", "shared", "data",
                                             "raccoon"))


def _args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=DEFAULT_DATA, help="VOC folder (train / val splits)")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--imgsz", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    p.add_argument("--sides", default="ultralytics,detjax")
    p.add_argument("--weights", default=None,
                   help="detjax side starts from these weights (model.weights: a .safetensors "
                        "written by detjax convert / make_finetune_weights.py)")
    p.add_argument("--child", choices=("detjax", "ultralytics"), default=None,
                   help=argparse.SUPPRESS)
    return p.parse_args(argv)


# ----------------------------------------------------------------------------- data


def prepare(args, out: str) -> dict:
    """YOLO copy of both splits and the COCO ground truth of the validation split."""
    from detjax.data import load_dataset, write_dataset

    paths = {"yolo": os.path.join(out, "yolo"), "gt": None}
    for split in ("train", "val"):
        ds = load_dataset(args.data, format="voc", split=split, on_error="skip")
        print(f"{split}: {ds}; {ds.report.summary(3)}")
        write_dataset(ds, paths["yolo"], format="yolo", split=split, copy_images=False)
        if split == "val":
            paths["gt"] = write_dataset(ds, os.path.join(out, "coco"), format="coco",
                                        split="val", copy_images=False)
            paths["val_images"] = [r.image_path for r in ds]
            paths["class_names"] = list(ds.class_names)
    return paths


# ----------------------------------------------------------------------------- children


def _coco_rows(image_id: int, boxes, scores, labels) -> list[dict]:
    return [{"image_id": image_id, "category_id": int(c) + 1, "score": float(s),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]}
            for b, s, c in zip(boxes, scores, labels)]


def child_detjax(args, out: str, paths: dict) -> dict:
    from detjax.config import load_config
    from detjax.data import read_image
    from detjax.eval.validation import inference_fn
    from detjax.infer.predict import Predictor
    from detjax.run import restore_run
    from detjax.train.cli import enable_compile_cache
    from detjax.train.loop import train_and_evaluate

    workdir = os.path.join(out, "detjax_run")
    overrides = ["data.format=voc", f"data.path={args.data}", f"train.epochs={args.epochs}",
                 f"data.imgsz={args.imgsz}", f"train.batch={args.batch}",
                 f"data.workers={args.workers}", f"seed={args.seed}", "resume=false",
                 "log.tensorboard=false", "log.plots=false", "log.progress=false",
                 f"workdir={workdir}"]
    if args.weights:
        overrides.append(f"model.weights={os.path.abspath(args.weights)}")
    cfg = load_config(os.path.join(ROOT, "configs", "yolov8n.yaml"), overrides)
    enable_compile_cache()
    t0 = time.perf_counter()
    final = train_and_evaluate(cfg, workdir)
    train_s = time.perf_counter() - t0
    run = restore_run(os.path.join(workdir, "checkpoints"))  # last epoch, not best-on-val
    forward, variables = inference_fn(run.model)  # EMA weights, eval mode
    predictor = Predictor(forward, variables, imgsz=args.imgsz, conf_thres=0.001,
                          iou_thres=0.7, max_det=300, batch_size=8)
    rows = []
    for i, path in enumerate(paths["val_images"]):
        [pred] = predictor([read_image(path)])
        rows += _coco_rows(i + 1, pred.boxes, pred.scores, pred.labels)
    return {"train_s": train_s, "detections": rows,
            "own_map": float(final.get("map", float("nan")))}


def child_ultralytics(args, out: str, paths: dict) -> dict:
    import torch
    from ultralytics import YOLO

    torch.set_num_threads(os.cpu_count() or 1)  # XLA's CPU client uses every core
    model = YOLO("yolov8n.yaml")
    t0 = time.perf_counter()
    model.train(data=os.path.join(paths["yolo"], "data.yaml"), epochs=args.epochs,
                imgsz=args.imgsz, batch=args.batch, workers=args.workers, pretrained=False,
                device="cpu", project=out, name="ultralytics_run", exist_ok=True, plots=False,
                seed=args.seed, verbose=False)
    train_s = time.perf_counter() - t0
    last = YOLO(os.path.join(out, "ultralytics_run", "weights", "last.pt"))
    rows = []
    for i, path in enumerate(paths["val_images"]):
        [res] = last.predict(path, imgsz=args.imgsz, conf=0.001, iou=0.7, max_det=300,
                             device="cpu", verbose=False)
        b = res.boxes
        rows += _coco_rows(i + 1, b.xyxy.numpy(), b.conf.numpy(), b.cls.numpy())
    return {"train_s": train_s, "detections": rows}


# ----------------------------------------------------------------------------- parent


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_side(side: str, args, out: str, paths_file: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", side, "--out", out,
           "--data", args.data, "--epochs", str(args.epochs), "--imgsz", str(args.imgsz),
           "--batch", str(args.batch), "--workers", str(args.workers), "--seed", str(args.seed)]
    if args.weights:
        cmd += ["--weights", args.weights]
    # a fresh XLA cache: detjax's wall time includes compiling, as on a user's first run
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + HERE,
               DETJAX_CACHE=os.path.join(out, "detjax_cache"))
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    peak_tree, done = [0], threading.Event()

    def sample():
        while not done.wait(0.5):
            peak_tree[0] = max(peak_tree[0], _tree_rss(proc.pid))

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    thread.join()
    if proc.returncode:
        raise SystemExit(f"{side} run failed (exit {proc.returncode})")
    with open(os.path.join(out, f"{side}.json")) as f:
        result = json.load(f)
    result.update(process_s=time.perf_counter() - t0, peak_rss=usage.ru_maxrss * 1024,
                  peak_tree_rss=peak_tree[0])
    return result


def score(gt_path: str, detections: list[dict]) -> tuple[float, float]:
    """pycocotools bbox (mAP50-95, mAP50) of COCO-format detections."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if not detections:
        return 0.0, 0.0
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        dt = gt.loadRes(detections)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def main(argv=None) -> int:
    args = _args(argv)
    if args.child:
        with open(os.path.join(args.out, "paths.json")) as f:
            paths = json.load(f)
        fn = child_detjax if args.child == "detjax" else child_ultralytics
        result = fn(args, args.out, paths)
        with open(os.path.join(args.out, f"{args.child}.json"), "w") as f:
            json.dump(result, f)
        return 0
    out = args.out or tempfile.mkdtemp(prefix="bench_real_")
    os.makedirs(out, exist_ok=True)
    paths = prepare(args, out)
    paths_file = os.path.join(out, "paths.json")
    with open(paths_file, "w") as f:
        json.dump(paths, f)
    load = os.getloadavg()
    start = f", detjax from {args.weights}" if args.weights else ""
    print(f"bench_real: {args.data}{start}, {args.epochs} epochs, {args.imgsz} px, "
          f"batch {args.batch}, {args.workers} workers, {os.cpu_count()} CPUs, "
          f"load {load[0]:.1f}; work folder {out}")
    results = {}
    for side in args.sides.split(","):
        print(f"--- {side}", flush=True)
        results[side] = run_side(side, args, out, paths_file)
        results[side]["map"], results[side]["map50"] = score(paths["gt"],
                                                             results[side]["detections"])
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f}")
    header = f"{'':<12}{'mAP50-95':>10}{'mAP50':>8}{'train s':>9}{'peak RSS':>10}{'tree RSS':>10}"
    print(header)
    for side, r in results.items():
        print(f"{side:<12}{r['map']:>10.4f}{r['map50']:>8.4f}{r['train_s']:>9.0f}"
              f"{r['peak_rss'] / 2**30:>9.2f}G{r['peak_tree_rss'] / 2**30:>9.2f}G")
    if len(results) == 2:
        d, u = results["detjax"], results["ultralytics"]
        print(f"{'ratio d/u':<12}{d['map'] / max(u['map'], 1e-9):>10.2f}"
              f"{d['map50'] / max(u['map50'], 1e-9):>8.2f}{d['train_s'] / u['train_s']:>9.2f}"
              f"{d['peak_rss'] / u['peak_rss']:>10.2f}"
              f"{d['peak_tree_rss'] / max(u['peak_tree_rss'], 1):>10.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
