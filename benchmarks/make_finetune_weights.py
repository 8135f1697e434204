"""Pretrained weights for the fine-tune benchmark, without internet: ultralytics trains a
YOLOv8n from scratch (``yolov8n.yaml``, ``pretrained=False``) for a few epochs on detjax's
synthetic data set (written in YOLO format), and the result is converted to a detjax
safetensors file.

A detjax run then starts from it with ``model.weights=OUT`` (its 7 synthetic classes differ from
most data sets' classes: the class branch is re-initialised and the log says so). The weights
carry ultralytics' AGPL-3.0 licence. Needs torch and ultralytics.

    .venv/bin/python benchmarks/make_finetune_weights.py [--epochs 3] [--imgsz 160]
        [--num-train 500] [--out runs/finetune/yolov8n-synthetic.safetensors]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path


def write_yolo_data(root: Path, *, num_train: int, num_val: int, image_size: int) -> str:
    """The synthetic train and val splits as a YOLO folder; returns its data.yaml."""
    from detjax.data import synthetic_dataset, write_dataset

    yaml_path = ""
    for split in ("train", "val"):
        ds = synthetic_dataset(split, num_train=num_train, num_val=num_val,
                               image_size=image_size)
        yaml_path = write_dataset(ds, str(root), format="yolo", split=split)
    return yaml_path


def train_ultralytics(data_yaml: str, workdir: Path, *, epochs: int, imgsz: int, batch: int,
                      workers: int) -> tuple[Path, dict, float]:
    """(last.pt, final validation metrics, wall seconds) of an ultralytics YOLOv8n run."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    start = time.perf_counter()
    model = YOLO("yolov8n.yaml")
    model.train(data=data_yaml, epochs=epochs, imgsz=imgsz, batch=batch, workers=workers,
                pretrained=False, device="cpu", project=str(workdir), name="ultralytics",
                exist_ok=True, plots=False, amp=False, verbose=False)
    wall = time.perf_counter() - start
    metrics = {k: float(v) for k, v in (model.trainer.metrics or {}).items()}
    return Path(model.trainer.last), metrics, wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=160)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--num-train", type=int, default=500)
    parser.add_argument("--num-val", type=int, default=100)
    parser.add_argument("--synthetic-size", type=int, default=256)
    parser.add_argument("--workdir", default="runs/finetune")
    parser.add_argument("--out", default="runs/finetune/yolov8n-synthetic.safetensors")
    args = parser.parse_args()

    from detjax.models.ultralytics import read_ultralytics_checkpoint, ultralytics_to_detjax
    from detjax.models.weights import save_arrays

    workdir = Path(args.workdir).resolve()
    data_yaml = write_yolo_data(workdir / "synthetic-yolo", num_train=args.num_train,
                                num_val=args.num_val, image_size=args.synthetic_size)
    last, metrics, wall = train_ultralytics(data_yaml, workdir, epochs=args.epochs,
                                            imgsz=args.imgsz, batch=args.batch,
                                            workers=args.workers)
    state_dict, meta = read_ultralytics_checkpoint(last)
    meta["trained_on"] = (f"detjax synthetic, {args.num_train} images, {args.epochs} epochs, "
                          f"{args.imgsz} px, ultralytics from scratch")
    path = save_arrays(ultralytics_to_detjax(state_dict), args.out, metadata=meta)
    print(f"ultralytics YOLOv8n: {args.epochs} epochs in {wall:.0f} s; final val "
          f"mAP50-95 {metrics.get('metrics/mAP50-95(B)', float('nan')):.3f}, "
          f"mAP50 {metrics.get('metrics/mAP50(B)', float('nan')):.3f}")
    print(f"wrote {path} ({meta['num_classes']} classes: {', '.join(meta['class_names'])}); "
          f"fine-tune with: detjax train model.weights={path}")


if __name__ == "__main__":
    main()
