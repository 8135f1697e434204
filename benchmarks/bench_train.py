"""Train-step throughput: detjax YOLOv8n vs ultralytics YOLOv8n, same size, batch and data.

One train step = forward, the YOLOv8 loss (TAL assigner, CIoU + DFL + BCE), backward and an SGD
update, on random images with random boxes (80 classes, ~8 boxes per image). Prints a table of
median step time and images/s, the ratio detjax / ultralytics, and compile time separately.
detjax runs on JAX's default device; ultralytics on ``--torch-device`` (``cuda`` waits for the
GPU inside each timed step). On a GPU both sides get device-resident batches.

    .venv/bin/python benchmarks/bench_train.py [--size 320] [--batch 16] [--steps 8]
        [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import statistics
import time

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
    from flax import nnx

    from detjax.models import create_model
    from detjax.train import optim, step
    from detjax.train.state import StepConfig, create_train_state

    model = create_model("yolov8n", num_classes=80, rngs=nnx.Rngs(0))
    oc = optim.OptimConfig(iters_per_epoch=1000, epochs=10, batch=len(batches[0]["images"]),
                           nbs=len(batches[0]["images"]), optimizer="sgd", warmup_epochs=0)
    state = create_train_state(model, StepConfig(optim=oc))
    if jax.default_backend() != "cpu":  # on the CPU the numpy batches are already resident
        batches = jax.device_put(batches)
    t = time.perf_counter()
    state, m = step.jit_train_step(state, batches[0])
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t
    times = []
    for i in range(steps):
        t = time.perf_counter()
        state, m = step.jit_train_step(state, batches[(i + 1) % len(batches)])
        jax.block_until_ready(m)
        times.append(time.perf_counter() - t)
    return {"compile_s": compile_s, "step_s": statistics.median(times),
            "loss": float(m["loss"])}


def bench_ultralytics(batches, size: int, steps: int, device: str = "cpu") -> dict | None:
    try:
        import torch
        from ultralytics.cfg import get_cfg
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return None
    torch.manual_seed(0)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=320)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--torch-device", default="cpu",
                    help="device of the ultralytics peer: cpu (default) or cuda")
    args = ap.parse_args()
    batches = [make_batch(s, args.batch, args.size) for s in range(3)]
    rows = {"detjax": bench_detjax(batches, args.size, args.steps),
            "ultralytics": bench_ultralytics(batches, args.size, args.steps, args.torch_device)}
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
        print(f"ratio detjax / ultralytics images/s: {ratio:.2f}")


if __name__ == "__main__":
    main()
