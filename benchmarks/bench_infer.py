"""Inference throughput of the nano detector: detjax (flax.nnx, jitted, eval-mode BN) against
ultralytics YOLOv8n built from its packaged ``yolov8n.yaml`` (no weights download).

Both sides run the full network plus box decoding to ``[B, 84, A]`` (no NMS) on the same
random batch: detjax under ``jax.jit`` with NHWC input, ultralytics in ``eval()`` under
``torch.inference_mode()`` with NCHW input, as is. ``--fuse`` also times both sides with
BatchNorm folded into the convolutions (detjax :func:`detjax.models.fuse`, ultralytics
``model.fuse()``, which its predictor uses) and prints fused / fused; ``--pointwise-conv``
adds the fused detjax model with its 1x1 convolutions run by ``lax.conv_general_dilated``
instead of the matmul path. Medians over ``--repeats`` timed calls after warm-up; detjax's
compile time is reported separately. detjax runs on JAX's default device (XLA:CPU uses every
core), ultralytics on ``--torch-device`` with ``--threads`` torch threads (default: the
machine's core count, the threads XLA uses); ``cuda``: model and batch on the GPU, each
timed call waits for it.

    python benchmarks/bench_infer.py [--sizes 320 640] [--batch 8] [--repeats 5] [--fuse]
        [--pointwise-conv] [--threads N] [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from _timing import jax_device_info, median_seconds, torch_blocking, torch_device_info
from flax import nnx

from detjax.models import create_model
from detjax.models.fuse import fuse


def _pointwise_by_conv(model: nnx.Module) -> None:
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.Conv):
            node.conv_general_dilated = jax.lax.conv_general_dilated


def bench_detjax(images: np.ndarray, repeats: int, *, fused: bool = False,
                 pointwise_conv: bool = False) -> tuple[float, float]:
    """(compile seconds, median seconds per batch)."""
    model = create_model("yolov8n", num_classes=80, rngs=nnx.Rngs(0))
    model.eval()
    if fused:
        model = fuse(model)
    if pointwise_conv:
        _pointwise_by_conv(model)
    graphdef, state = nnx.split(model)

    @jax.jit
    def infer(state, x):
        m = nnx.merge(graphdef, state)
        return m.predict(m(x))

    x = jnp.asarray(images)
    t0 = time.perf_counter()
    compiled = infer.lower(state, x).compile()
    compile_s = time.perf_counter() - t0
    compiled(state, x).block_until_ready()
    return compile_s, median_seconds(lambda: compiled(state, x).block_until_ready(), repeats)


def bench_ultralytics(images: np.ndarray, repeats: int, fuse: bool,
                      device: str = "cpu") -> float | None:
    try:
        import torch
        from ultralytics import YOLO
    except ImportError:
        return None
    model = YOLO("yolov8n.yaml").model.eval().to(device)
    if fuse:
        model = model.fuse(verbose=False)
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
    call = torch_blocking(lambda: model(x), device)
    with torch.inference_mode():
        call()
        return median_seconds(call, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[320, 640])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fuse", action="store_true", help="also time both sides fused")
    parser.add_argument("--pointwise-conv", action="store_true",
                        help="also time fused detjax with 1x1 convolutions as convolutions")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="torch CPU threads (default: the machine's core count)")
    parser.add_argument("--torch-device", default="cpu",
                        help="device of the ultralytics peer: cpu (default) or cuda")
    args = parser.parse_args()
    try:
        import torch
        torch.set_num_threads(args.threads)
        torch_info = f"torch {torch.__version__} on {torch_device_info(args.torch_device)}"
    except ImportError:
        torch_info = "torch not installed"
    print(f"jax {jax.__version__} on {jax_device_info()}; {torch_info}; "
          f"batch {args.batch}, median of {args.repeats}")
    header = f"{'size':>5} {'detjax img/s':>13} {'ultra img/s':>12} {'ratio':>6} {'compile s':>10}"
    if args.fuse:
        header += f" {'dj fused':>9} {'ul fused':>9} {'fused/fused':>11}"
    if args.pointwise_conv:
        header += f" {'dj fused 1x1 conv':>17}"
    print(header)
    for size in args.sizes:
        images = np.random.default_rng(0).random((args.batch, size, size, 3), np.float32)
        compile_s, ours = bench_detjax(images, args.repeats)
        theirs = bench_ultralytics(images, args.repeats, fuse=False, device=args.torch_device)
        ours_ips = args.batch / ours
        row = f"{size:>5} {ours_ips:>13.1f} "
        row += (f"{args.batch / theirs:>12.1f} {ours_ips / (args.batch / theirs):>6.2f}"
                if theirs else f"{'n/a':>12} {'n/a':>6}")
        row += f" {compile_s:>10.1f}"
        if args.fuse:
            _, ours_fused = bench_detjax(images, args.repeats, fused=True)
            fused = bench_ultralytics(images, args.repeats, fuse=True,
                                      device=args.torch_device)
            row += f" {args.batch / ours_fused:>9.1f}"
            row += (f" {args.batch / fused:>9.1f} {fused / ours_fused:>11.2f}"
                    if fused else f" {'n/a':>9} {'n/a':>11}")
        if args.pointwise_conv:
            _, conv = bench_detjax(images, args.repeats, fused=True, pointwise_conv=True)
            row += f" {args.batch / conv:>17.1f}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
