"""Training throughput: detjax YOLOv8n vs ultralytics YOLOv8n, same size, batch and data.

Two figures, each printed with the ratio detjax / ultralytics (images/s):

1. The train step alone: forward, the YOLOv8 loss (TAL assigner, CIoU + DFL + BCE), backward
   and an SGD update on random images with random boxes (80 classes, ~8 boxes per image).
   detjax runs the step the training loop runs (``train.runner.Runner``: the flat-state jitted
   step of ``train.parallel=single``, state built by ``train.loop.step_config``).
2. ``--e2e DATA``: whole epochs as a user feels them, loader and validation included, on a VOC
   folder (``../shared/data/raccoon``): both train YOLOv8n from scratch at the same size and
   batch with ultralytics' augmentation (mosaic on, HSV, translate, scale, flips), 2 loader
   workers, validation after every epoch. ultralytics reads a YOLO-format copy written with
   ``detjax.data.write_dataset`` into a temporary folder. images/s = training images x epochs
   / (train + validation seconds), over the epochs after the first (which compiles / warms up).

detjax runs on JAX's default device; ultralytics on ``--torch-device`` with ``--threads``
torch threads (default 2, the CPU cores JAX uses here).

    .venv/bin/python benchmarks/bench_train.py [--size 320] [--batch 16] [--steps 8]
        [--torch-device cpu|cuda] [--e2e ../shared/data/raccoon --epochs 3]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from _timing import jax_device_info, torch_blocking, torch_device_info


def make_batch(seed: int, batch: int, size: int, max_boxes: int = 16, num_classes: int = 80):
    rng = np.random.default_rng(seed)
    n = rng.integers(4, 12, batch)
    xy = rng.uniform(0, size * 0.7, (batch, max_boxes, 2))
    wh = rng.uniform(size * 0.05, size * 0.3, (batch, max_boxes, 2))
    boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], -1).astype(np.float32)
    mask = np.arange(max_boxes)[None] < n[:, None]
    return {"images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
            "boxes": boxes * mask[..., None], "gt_mask": mask,
            "labels": (rng.integers(0, num_classes, (batch, max_boxes)) * mask).astype(np.int32)}


def bench_detjax(batches, size: int, steps: int) -> dict:
    import jax

    from detjax.config import load_config
    from detjax.run import build_model
    from detjax.train.loop import step_config
    from detjax.train.runner import Runner
    from detjax.train.state import create_train_state

    batch = len(batches[0]["images"])
    cfg = load_config(None, ["model.name=yolov8n", f"data.imgsz={size}", f"train.batch={batch}",
                             f"train.nbs={batch}", "train.optimizer=sgd",
                             "train.warmup_epochs=0", "train.epochs=10"])
    state = create_train_state(build_model(cfg, 80), step_config(cfg, 1000))
    if jax.default_backend() != "cpu":  # on the CPU the numpy batches are already resident
        batches = jax.device_put(batches)
    runner = Runner("single", batch)
    state = runner.put(state)
    t = time.perf_counter()
    state, m = runner.step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, m = runner.step(state, batches[(i + 1) % len(batches)])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "step_s": statistics.median(times),
            "loss": float(m["loss"])}


def bench_ultralytics(batches, size: int, steps: int, device: str = "cpu", threads: int = 2
                      ) -> dict | None:
    try:
        import torch
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    model = DetectionModel("yolov8n.yaml", nc=80, verbose=False).to(device)
    model.args = get_cfg()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True)

    def to_torch(b):
        img = torch.from_numpy(b["images"]).permute(0, 3, 1, 2).float() / 255
        idx, cls, xywh = [], [], []
        for i in range(len(b["images"])):
            bx = b["boxes"][i][b["gt_mask"][i]]
            idx += [i] * len(bx)
            cls += list(b["labels"][i][b["gt_mask"][i]])
            c = np.stack([(bx[:, 0] + bx[:, 2]) / 2, (bx[:, 1] + bx[:, 3]) / 2,
                          bx[:, 2] - bx[:, 0], bx[:, 3] - bx[:, 1]], -1) / size
            xywh.append(c)
        out = {"img": img, "batch_idx": torch.tensor(idx, dtype=torch.float32),
               "cls": torch.tensor(cls, dtype=torch.float32)[:, None],
               "bboxes": torch.from_numpy(np.concatenate(xywh).astype(np.float32))}
        return {k: v.to(device) for k, v in out.items()}

    tb = [to_torch(b) for b in batches]

    def one(b):
        loss, _ = model.loss(b)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        return float(loss.sum())

    one = torch_blocking(one, device)
    t = time.perf_counter()
    one(tb[0])
    first_s = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        loss = one(tb[(i + 1) % len(tb)])
        times.append(time.perf_counter() - t)
    return {"compile_s": first_s, "step_s": statistics.median(times), "loss": loss,
            "threads": torch.get_num_threads(), "device": torch_device_info(device)}


# ultralytics' default augmentation (cfg/default.yaml), used by both sides end to end
ULTRALYTICS_AUG = {"mosaic": 1.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "translate": 0.1,
                   "scale": 0.5, "fliplr": 0.5}


def _steady(epoch_s: list[float], images: int) -> float:
    """images/s over the epochs after the first."""
    rest = epoch_s[1:] or epoch_s
    return images * len(rest) / sum(rest)


def e2e_detjax(data: str, size: int, batch: int, epochs: int, workdir: str) -> dict:
    from detjax.config import load_config
    from detjax.train.loop import train_and_evaluate

    aug = [f"data.augment.{k}={v}" for k, v in ULTRALYTICS_AUG.items()]
    cfg = load_config(None, [
        "data.format=voc", f"data.path={data}", "data.class_names=[raccoon]",
        f"data.imgsz={size}", f"train.batch={batch}", f"eval.batch={batch}",
        f"train.epochs={epochs}", "train.time_limit=0", "eval.every=1", "data.workers=2",
        "data.augment.close_mosaic=0", *aug, "log.progress=false", "log.tensorboard=false",
        "log.plots=false", "compile_cache=false", "checkpoint.save_best=false"])
    t = time.perf_counter()
    train_and_evaluate(cfg, workdir)
    total = time.perf_counter() - t
    with open(os.path.join(workdir, "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    train_s = [float(r["time_s"]) for r in rows]
    epoch_s = [b - a + float(r["eval_time_s"] or 0)
               for a, b, r in zip([0.0, *train_s], train_s, rows)]
    return {"epoch_s": epoch_s, "total_s": total, "map": float(rows[-1]["val/map"])}


def e2e_ultralytics(data: str, size: int, batch: int, epochs: int, workdir: str,
                    device: str = "cpu", threads: int = 2) -> dict | None:
    try:
        import torch
        from ultralytics import YOLO
    except ImportError:
        return None
    from detjax.data import load_dataset, write_dataset

    torch.set_num_threads(threads)
    yolo_dir = os.path.join(workdir, "yolo_data")
    for split in ("train", "val"):
        ds = load_dataset(data, format="voc", split=split, class_names=["raccoon"])
        yaml_path = write_dataset(ds, yolo_dir, format="yolo", split=split)
    model = YOLO("yolov8n.yaml")
    marks: list[float] = []
    model.add_callback("on_train_epoch_start", lambda trainer: marks.append(time.perf_counter()))
    model.add_callback("on_fit_epoch_end", lambda trainer: marks.append(time.perf_counter()))
    t = time.perf_counter()
    model.train(data=yaml_path, epochs=epochs, imgsz=size, batch=batch, workers=2,
                device=device, close_mosaic=0, plots=False, amp=False, seed=0,
                project=workdir, name="ultralytics", exist_ok=True, verbose=False,
                pretrained=False, **ULTRALYTICS_AUG)
    total = time.perf_counter() - t
    epoch_s = [b - a for a, b in zip(marks[0::2], marks[1::2])]
    res = model.trainer.metrics or {}
    return {"epoch_s": epoch_s, "total_s": total,
            "map": float(res.get("metrics/mAP50-95(B)", float("nan")))}


def run_e2e(args) -> None:
    from detjax.data import load_dataset

    n_train = len(load_dataset(args.e2e, format="voc", split="train",
                               class_names=["raccoon"]))
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"detjax": None, "ultralytics": None}
        if args.impl in ("both", "detjax"):
            rows["detjax"] = e2e_detjax(args.e2e, args.size, args.batch, args.epochs,
                                        os.path.join(tmp, "detjax"))
        if args.impl in ("both", "ultralytics"):
            rows["ultralytics"] = e2e_ultralytics(args.e2e, args.size, args.batch, args.epochs,
                                                  tmp, args.torch_device, args.threads)
    # detjax drops a short last batch; ultralytics trains on it
    seen = {"detjax": n_train // args.batch * args.batch, "ultralytics": n_train}
    print(f"\nYOLOv8n end to end on {Path(args.e2e).name} ({n_train} train images), "
          f"{args.size}px, batch {args.batch}, {args.epochs} epochs, mosaic on, 2 workers, "
          "validation every epoch")
    print(f"{'impl':<12} {'images/s':>9} {'epoch s (each, incl. val)':>40} {'total s':>8} "
          f"{'mAP50-95':>9}")
    for name, r in rows.items():
        if r is None:
            print(f"{name:<12} {'(not run or not installed)':>9}")
            continue
        each = " ".join(f"{s:.1f}" for s in r["epoch_s"])
        print(f"{name:<12} {_steady(r['epoch_s'], seen[name]):9.2f} {each:>40} "
              f"{r['total_s']:8.1f} {r['map']:9.4f}")
    if rows["ultralytics"] and rows["detjax"]:
        ratio = (_steady(rows["detjax"]["epoch_s"], seen["detjax"])
                 / _steady(rows["ultralytics"]["epoch_s"], seen["ultralytics"]))
        print(f"ratio detjax / ultralytics images/s (end to end): {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--torch-device", default="cpu",
                    help="device of the ultralytics peer: cpu (default) or cuda")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the peer")
    ap.add_argument("--e2e", default=None, metavar="VOC_DIR",
                    help="also time whole epochs (loader + validation) on this VOC folder")
    ap.add_argument("--epochs", type=int, default=3, help="epochs of the --e2e runs")
    ap.add_argument("--skip-step", action="store_true", help="only the --e2e figure")
    ap.add_argument("--impl", choices=("both", "detjax", "ultralytics"), default="both",
                    help="--e2e side(s) to run (two processes can run the sides at once)")
    args = ap.parse_args()
    if not args.skip_step:
        run_step(args)
    if args.e2e:
        run_e2e(args)


def run_step(args) -> None:
    batches = [make_batch(s, args.batch, args.size) for s in range(3)]
    rows = {"detjax": bench_detjax(batches, args.size, args.steps),
            "ultralytics": bench_ultralytics(batches, args.size, args.steps, args.torch_device,
                                             args.threads)}
    print(f"\nYOLOv8n train step, {args.size}px, batch {args.batch}, median of {args.steps} steps")
    peer = rows["ultralytics"]["device"] if rows["ultralytics"] else "-"
    print(f"devices: detjax on {jax_device_info()}, ultralytics on {peer}")
    print(f"{'impl':<12} {'step s':>8} {'images/s':>9} {'first step s (compile)':>24}")
    for name, r in rows.items():
        if r is None:
            print(f"{name:<12} {'(not installed)':>8}")
            continue
        print(f"{name:<12} {r['step_s']:8.3f} {args.batch / r['step_s']:9.2f} "
              f"{r['compile_s']:24.1f}")
    if rows["ultralytics"]:
        ratio = rows["ultralytics"]["step_s"] / rows["detjax"]["step_s"]
        print(f"ratio detjax / ultralytics images/s (train step): {ratio:.2f}")


if __name__ == "__main__":
    main()
