"""YOLOv8 loss: detjax ``yolo_detection_loss`` (jitted) vs ultralytics ``v8DetectionLoss``.

Same tensors into both: batch 16 x 8400 anchors (640 px, strides 8/16/32) x 80 classes x
32 ground-truth slots. Prints the median wall time of the value (and of the value and
gradient w.r.t. the predictions), the speed ratio, detjax's compile time, and the largest
relative difference of the three loss items. detjax runs on JAX's default device, ultralytics
on ``--torch-device`` (``cuda``: all its inputs on the GPU, each timed call waits for it).

    .venv/bin/python benchmarks/bench_loss.py [--batch 16] [--repeats 7] [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _timing import jax_device_info, torch_blocking, torch_device_info
from _timing import median_seconds as median_time

from detjax.anchors import make_anchor_points  # noqa: E402
from detjax.losses import yolo_detection_loss  # noqa: E402

STRIDES = (8.0, 16.0, 32.0)


def make_inputs(batch: int, num_classes: int, max_boxes: int, imgsz: int, reg_max: int,
                seed: int = 0) -> dict:
    """Random head outputs and between 1 and ``max_boxes`` boxes per image (one image full)."""
    rng = np.random.default_rng(seed)
    shapes = [(imgsz // int(s), imgsz // int(s)) for s in STRIDES]
    num_anchors = sum(h * w for h, w in shapes)
    counts = rng.integers(1, max_boxes + 1, batch)
    counts[0] = max_boxes
    centres = rng.uniform(0.1, 0.9, (counts.sum(), 2))
    sizes = rng.uniform(0.02, 0.5, (counts.sum(), 2))
    return {
        "shapes": shapes,
        "distri": (rng.normal(size=(batch, num_anchors, 4 * reg_max)) * 2).astype(np.float32),
        "scores": (rng.normal(size=(batch, num_anchors, num_classes)) - 3).astype(np.float32),
        "batch_idx": np.repeat(np.arange(batch), counts).astype(np.float32),
        "cls": rng.integers(0, num_classes, counts.sum()).astype(np.float32),
        "xywhn": np.concatenate([centres, sizes], 1).astype(np.float32),
        "counts": counts, "max_boxes": max_boxes, "imgsz": imgsz, "nc": num_classes,
    }


def padded_pixel_gt(inp: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[B, M] labels, [B, M, 4] xyxy pixels, [B, M] mask, with ultralytics' float ops."""
    import torch  # the peer's own arithmetic, so both sides see identical boxes

    xywh = torch.tensor(inp["xywhn"]) * inp["imgsz"]
    xyxy = torch.cat([xywh[:, :2] - xywh[:, 2:] / 2, xywh[:, :2] + xywh[:, 2:] / 2], 1).numpy()
    b, m = len(inp["counts"]), inp["max_boxes"]
    labels, boxes, mask = np.zeros((b, m), np.int32), np.zeros((b, m, 4), np.float32), np.zeros(
        (b, m), bool)
    start = 0
    for i, n in enumerate(inp["counts"]):
        labels[i, :n] = inp["cls"][start:start + n]
        boxes[i, :n] = xyxy[start:start + n]
        mask[i, :n] = True
        start += n
    return labels, boxes, mask



def ultralytics_loss(inp: dict, reg_max: int, device: str = "cpu"):
    """Returns (value_fn, value_and_grad_fn, items) for ultralytics v8DetectionLoss on
    ``device``; on a GPU both functions wait for it before they return."""
    import torch
    from ultralytics.utils.loss import v8DetectionLoss

    class _Model(torch.nn.Module):  # the attributes v8DetectionLoss reads
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.args = types.SimpleNamespace(box=7.5, cls=0.5, dfl=1.5)
            self.model = [types.SimpleNamespace(stride=torch.tensor(STRIDES, device=device),
                                                nc=inp["nc"], reg_max=reg_max)]

    criterion = v8DetectionLoss(_Model().to(device))
    batch = {"batch_idx": torch.tensor(inp["batch_idx"]), "cls": torch.tensor(inp["cls"])[:, None],
             "bboxes": torch.tensor(inp["xywhn"])}
    batch = {k: v.to(device) for k, v in batch.items()}
    feats = [torch.zeros(len(inp["counts"]), 1, h, w, device=device) for h, w in inp["shapes"]]
    distri = torch.tensor(inp["distri"]).permute(0, 2, 1).to(device)
    scores = torch.tensor(inp["scores"]).permute(0, 2, 1).to(device)

    def value():
        with torch.no_grad():
            return criterion.loss({"boxes": distri, "scores": scores, "feats": feats}, batch)

    def value_and_grad():
        d, s = distri.clone().requires_grad_(), scores.clone().requires_grad_()
        loss, items = criterion.loss({"boxes": d, "scores": s, "feats": feats}, batch)
        loss.sum().backward()
        return items, d.grad, s.grad

    items = {k.removesuffix("_loss"): float(v) for k, v in value()[1].items()}
    return torch_blocking(value, device), torch_blocking(value_and_grad, device), items


def sweep_rows(dev: list, repeats: int) -> None:
    """A 3 x 3 grid of (box, cls) gains: one vmapped call against 9 separate jitted calls."""
    grid = jnp.array([(b, c, 1.5) for b in (2.5, 7.5, 12.5) for c in (0.25, 0.5, 1.0)])
    one = jax.jit(lambda g, *x: yolo_detection_loss(*x, box_gain=g[0], cls_gain=g[1],
                                                    dfl_gain=g[2])[0])
    sweep = jax.jit(jax.vmap(one, in_axes=(0,) + (None,) * len(dev)))
    separate = lambda: [jax.block_until_ready(one(g, *dev)) for g in grid]
    swept = jax.block_until_ready(sweep(grid, *dev))
    np.testing.assert_allclose(swept, [float(v) for v in separate()], rtol=1e-5)
    t_sweep = median_time(lambda: jax.block_until_ready(sweep(grid, *dev)), repeats)
    t_sep = median_time(separate, repeats)
    print(f"\ngain sweep, 9 settings: vmapped {t_sweep * 1e3:.1f} ms, 9 separate calls "
          f"{t_sep * 1e3:.1f} ms ({t_sep / t_sweep:.1f}x; the assignment does not depend on "
          "the gains, so the sweep computes it once)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--max-boxes", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-grad", action="store_true", help="skip the value_and_grad rows")
    parser.add_argument("--no-sweep", action="store_true",
                        help="skip the 9-setting gain sweep (jax.vmap vs 9 separate calls)")
    parser.add_argument("--torch-device", default="cpu",
                        help="device of the ultralytics peer: cpu (default) or cuda")
    args = parser.parse_args(argv)
    reg_max = 16
    inp = make_inputs(args.batch, args.classes, args.max_boxes, args.imgsz, reg_max)
    labels, boxes, mask = padded_pixel_gt(inp)
    points, strides = make_anchor_points(inp["shapes"], STRIDES)
    dev = [jnp.asarray(x) for x in (inp["distri"], inp["scores"], points, strides, labels,
                                    boxes, mask)]
    num_anchors = inp["distri"].shape[1]
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; batch {args.batch} x "
          f"{num_anchors} anchors x {args.classes} classes x {args.max_boxes} gt slots")
    try:
        peer_device = torch_device_info(args.torch_device)
    except ImportError:
        peer_device = "- (torch not installed)"
    print(f"devices: detjax on {jax_device_info()}, ultralytics on {peer_device}")

    value_fn = jax.jit(yolo_detection_loss)
    grad_fn = jax.jit(jax.value_and_grad(
        lambda d, s, *rest: yolo_detection_loss(d, s, *rest)[0], argnums=(0, 1)))

    t0 = time.perf_counter()
    total, items = jax.block_until_ready(value_fn(*dev))
    compile_value = time.perf_counter() - t0
    rows = []
    t_dj = median_time(lambda: jax.block_until_ready(value_fn(*dev)), args.repeats)
    peer = None
    try:
        peer_value, peer_grad, peer_items = ultralytics_loss(inp, reg_max, args.torch_device)
        peer = median_time(peer_value, args.repeats)
    except ImportError as err:
        print(f"ultralytics not installed ({err}); detjax timings only")
    rows.append(("value", t_dj, peer))
    compile_grad = None
    if not args.no_grad:
        t0 = time.perf_counter()
        jax.block_until_ready(grad_fn(*dev))
        compile_grad = time.perf_counter() - t0
        t_g = median_time(lambda: jax.block_until_ready(grad_fn(*dev)), args.repeats)
        rows.append(("value_and_grad", t_g, median_time(peer_grad, args.repeats) if peer else None))

    print(f"\n{'':16s}{'detjax (ms)':>14s}{'ultralytics (ms)':>18s}{'speed-up':>10s}")
    for name, ours, theirs in rows:
        ratio = f"{theirs / ours:9.2f}x" if theirs else "       -"
        theirs_s = f"{theirs * 1e3:18.1f}" if theirs else f"{'-':>18s}"
        print(f"{name:16s}{ours * 1e3:14.1f}{theirs_s}{ratio}")
    if not args.no_sweep:
        sweep_rows(dev, args.repeats)
    print(f"\ncompile (first call): value {compile_value:.2f} s"
          + (f", value_and_grad {compile_grad:.2f} s" if compile_grad is not None else ""))
    if peer:
        worst = max(abs(float(items[k]) - peer_items[k]) / max(abs(peer_items[k]), 1e-12)
                    for k in ("box", "cls", "dfl"))
        print("items detjax     :", {k: round(float(v), 6) for k, v in items.items()})
        print("items ultralytics:", {k: round(v, 6) for k, v in peer_items.items()})
        print(f"max relative difference of the items: {worst:.2e} "
              f"({'within' if worst <= 1e-4 else 'OUTSIDE'} 1e-4)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
