"""Where the train step's time goes: one 3x3 convolution's forward, input gradient and weight
gradient, JAX (XLA) against PyTorch, on the YOLOv8n layer shapes at 320 px, batch 16.

The train-step benchmark (bench_train.py) compares whole steps; this one splits a convolution
into its three passes so that a gap can be traced to the backend's kernels rather than to the
model code. Both sides get the same float32 tensors (NHWC for JAX, NCHW for torch), each pass
compiled / warmed up once, then the median of ``--repeats`` timed calls.

    .venv/bin/python benchmarks/bench_conv.py [--repeats 10] [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse

import numpy as np
from _timing import jax_device_info, median_seconds, torch_blocking, torch_device_info

# (batch, size, in_ch, out_ch, stride): the 3x3 convolutions of YOLOv8n at 320 px (backbone
# stem and downsamples, C2f bottlenecks, the 80-class head's P3 branch).
SHAPES = [(16, 320, 3, 16, 2), (16, 160, 16, 32, 2), (16, 80, 16, 16, 1), (16, 80, 32, 64, 2),
          (16, 40, 32, 32, 1), (16, 40, 64, 64, 1), (16, 40, 64, 80, 1), (16, 40, 80, 80, 1),
          (16, 20, 64, 64, 1), (16, 20, 128, 128, 1), (16, 10, 128, 128, 1)]
PASSES = ("forward", "input grad", "weight grad")


def jax_passes(x, w, g, stride: int, repeats: int) -> list[float]:
    import jax
    from jax import lax

    def conv(x, w):
        return lax.conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

    fns = [jax.jit(conv),
           jax.jit(lambda x, w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0]),
           jax.jit(lambda x, w, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0])]
    args = [(x, w), (x, w, g), (x, w, g)]
    out = []
    for fn, a in zip(fns, args):
        a = jax.device_put(a)
        jax.block_until_ready(fn(*a))
        out.append(median_seconds(lambda fn=fn, a=a: jax.block_until_ready(fn(*a)), repeats))
    return out


def torch_passes(x, w, g, stride: int, device: str, repeats: int) -> list[float] | None:
    try:
        import torch
    except ImportError:
        return None
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous().to(device)
    wt = torch.from_numpy(w).permute(3, 2, 0, 1).contiguous().to(device)
    gt = torch.from_numpy(g).permute(0, 3, 1, 2).contiguous().to(device)

    def backward(mask):
        return torch.ops.aten.convolution_backward(gt, xt, wt, None, [stride] * 2, [1, 1],
                                                   [1, 1], False, [0, 0], 1, mask)

    fns = [lambda: torch.nn.functional.conv2d(xt, wt, stride=stride, padding=1),
           lambda: backward([True, False, False]), lambda: backward([False, True, False])]
    out = []
    with torch.no_grad():
        for fn in fns:
            fn = torch_blocking(fn, device)
            fn()
            out.append(median_seconds(fn, repeats))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--torch-device", default="cpu")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows, totals = [], np.zeros((2, 3))
    for b, h, c, o, s in SHAPES:
        x = rng.standard_normal((b, h, h, c), np.float32)
        w = (rng.standard_normal((3, 3, c, o)) * 0.1).astype(np.float32)
        g = rng.standard_normal((b, h // s, h // s, o), np.float32)
        tj = jax_passes(x, w, g, s, args.repeats)
        tt = torch_passes(x, w, g, s, args.torch_device, args.repeats)
        rows.append(((b, h, c, o, s), tj, tt))
        totals[0] += tj
        if tt is not None:
            totals[1] += tt
    peer = torch_device_info(args.torch_device) if rows[0][2] is not None else "(not installed)"
    print(f"3x3 convolution passes, median of {args.repeats}; JAX on {jax_device_info()}, "
          f"torch on {peer}")
    print(f"{'B x H x W, in->out, stride':<30}" + "".join(
        f"{p + ' ms jax/torch':>26}" for p in PASSES))
    for (b, h, c, o, s), tj, tt in rows:
        cells = [f"{a * 1e3:8.2f} / {(t * 1e3 if tt else float('nan')):7.2f} "
                 f"({(t / a if tt else float('nan')):4.2f}x)"
                 for a, t in zip(tj, tt or [0, 0, 0])]
        print(f"{f'{b} x {h} x {h}, {c}->{o}, s{s}':<30}" + "".join(f"{c:>26}" for c in cells))
    if rows[0][2] is not None:
        print("total ms jax / torch, ratio (torch time / jax time; > 1: jax faster):")
        for p, a, t in zip(PASSES, totals[0], totals[1]):
            print(f"  {p:<12} {a * 1e3:8.1f} / {t * 1e3:8.1f}  {t / a:5.2f}x")


if __name__ == "__main__":
    main()
