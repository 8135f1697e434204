"""Task-aligned assignment: detjax (jit + vmap) vs ultralytics TaskAlignedAssigner.

Batch 16 x 8400 anchors (640x640, strides 8/16/32) x 80 classes x 32 ground-truth slots,
realistic fill (0-32 boxes per image). Prints median wall times, the ratio, compile time
separately, and whether the outputs agree. detjax runs on JAX's default device, ultralytics
on ``--torch-device`` (default cpu; ``cuda``: inputs on the GPU, each timed call waits for it).

    python benchmarks/bench_assign.py [--reps 5] [--batch 16] [--torch-device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import jax
import numpy as np
from _timing import median_seconds, torch_blocking, torch_device_info


def make_problem(batch: int, max_boxes: int, num_classes: int, seed: int = 0):
    from detjax.anchors import make_anchor_points

    rng = np.random.default_rng(seed)
    pts, strides = make_anchor_points([(80, 80), (40, 40), (20, 20)], [8, 16, 32])
    pts = np.asarray(pts * strides)
    a = len(pts)
    n = rng.integers(0, max_boxes + 1, batch)
    mask = np.arange(max_boxes)[None] < n[:, None]
    c = rng.uniform(0, 640, (batch, max_boxes, 2))
    wh = rng.uniform(8, 300, (batch, max_boxes, 2))
    gt = (np.concatenate([c - wh / 2, c + wh / 2], -1) * mask[..., None]).astype(np.float32)
    labels = (rng.integers(0, num_classes, (batch, max_boxes)) * mask).astype(np.int32)
    pc = pts[None] + rng.normal(0, 4, (batch, a, 2))
    pwh = rng.uniform(8, 200, (batch, a, 2))
    pd = np.concatenate([pc - pwh / 2, pc + pwh / 2], -1).astype(np.float32)
    scores = rng.uniform(0, 1, (batch, a, num_classes)).astype(np.float32)
    return scores, pd, pts.astype(np.float32), labels, gt, mask


def median_time(fn, args, reps: int) -> float:
    return median_seconds(lambda: jax.block_until_ready(fn(*args)), reps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-boxes", type=int, default=32)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--torch-device", default="cpu",
                        help="device of the ultralytics peer: cpu (default) or cuda")
    args = parser.parse_args()

    from detjax.assign import batched_task_aligned

    problem = make_problem(args.batch, args.max_boxes, args.classes)
    scores, pd, pts, labels, gt, mask = problem
    dev = [jax.device_put(x) for x in problem]
    print(f"problem: batch {args.batch} x {len(pts)} anchors x {args.classes} classes x "
          f"{args.max_boxes} gt slots ({int(mask.sum())} boxes); devices: {jax.devices()}")
    try:
        import torch
        from ultralytics.utils.tal import TaskAlignedAssigner
    except ImportError:
        torch = None
        print("ultralytics not installed: peer rows skipped")
    else:
        print(f"ultralytics peer on {torch_device_info(args.torch_device)}")
    rows = []
    # classic candidates (ultralytics stride=[0.] disables the >= 8.4 enlargement), then the
    # installed v8DetectionLoss configuration (stride [8, 16, 32] -> boxes below 16 px grow).
    for label, min_gt_size, stride in (("classic", None, [0.0]), ("8.4 small-box", 16, None)):
        fn = jax.jit(lambda *x, m=min_gt_size: batched_task_aligned(*x, min_gt_size=m))
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*dev))
        print(f"[{label}] detjax compile (first call): {time.perf_counter() - t0:.2f} s")
        ours = median_time(fn, dev, args.reps)
        rows.append((f"[{label}] detjax task_aligned (jit, vmap)", ours, ours))
        if torch is None:
            continue
        ref = TaskAlignedAssigner(topk=10, num_classes=args.classes, alpha=0.5, beta=6.0,
                                  stride=stride or [8, 16, 32])
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x)).to(args.torch_device)
        targs = (t(scores), t(pd), t(pts), t(labels[..., None].astype(np.float32)), t(gt),
                 t(mask[..., None].astype(np.float32)))
        with torch.no_grad():
            want = ref(*targs)
            theirs = median_time(torch_blocking(ref, args.torch_device), targs, args.reps)
        where = (f"{torch.get_num_threads()} threads" if torch.device(args.torch_device).type
                 == "cpu" else str(args.torch_device))
        rows.append((f"[{label}] ultralytics TaskAlignedAssigner ({where})", theirs, ours))
        want = [w.cpu() for w in want]
        fg, fg_ref = np.asarray(out.fg_mask), want[3].numpy()
        both = fg & fg_ref
        same_gt = (np.asarray(out.gt_index) == want[4].numpy())[both].mean()
        score_diff = np.abs(np.asarray(out.scores) - want[2].numpy()).max()
        print(f"[{label}] agreement with ultralytics: fg_mask {(fg == fg_ref).mean():.6f} "
              f"({int(fg.sum())} vs {int(fg_ref.sum())} positives), gt_index on common "
              f"positives {same_gt:.6f}, max |scores diff| {score_diff:.2e}")
    print("(fg differences can only come from top-k ties among zero alignments)")
    print(f"{'implementation':62s} {'median s':>9s} {'vs detjax':>9s}")
    for name, sec, base in rows:
        print(f"{name:62s} {sec:9.4f} {sec / base:8.2f}x")

if __name__ == "__main__":
    main()
