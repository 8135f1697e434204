"""NMS family benchmark: detjax vs torchvision / ultralytics, side by side on this machine.

    .venv/bin/python benchmarks/bench_nms.py [--repeats 20] [--quick] [--torch-device cpu|cuda]

Cases (issue 2, section 5): ``nms`` on clustered detector-like candidates at N=1000 and
N=5000, ``nms`` over a batch of 16 images (``vmap`` vs a Python loop over torchvision),
``box_iou`` 1000 x 1000, and the YOLO postprocess on a 16 x 84 x 8400 head output at
conf 0.25 and 0.001, plus ultralytics' validation setting (conf 0.001, iou 0.7,
multi_label); ultralytics' ``max_time_img`` is raised so that it never skips images.
torch gets the machine's core count as intra-op threads by default, as XLA:CPU uses them all.
Each row shows medians of ``--repeats`` steady-state calls (ms), ratio = peer / detjax
(> 1 means detjax is faster), detjax's compile time (first call minus a steady call)
and whether both returned the same result. Inputs come from detjax.demo's generators.
detjax runs on JAX's default device, the peers on ``--torch-device`` (``cuda``: inputs copied
to the GPU once, each timed call waits for it).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from functools import partial

import numpy as np
from _timing import jax_device_info, median_seconds, torch_blocking, torch_device_info

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))


def _median_ms(fn, repeats: int) -> float:
    return median_seconds(fn, repeats) * 1e3


def _jax_case(fn, args, repeats: int):
    """(result, median ms, compile s) of a jitted detjax call on device-resident inputs
    (the peers get zero-copy torch.from_numpy views, or tensors copied to their GPU beforehand,
    so no copy is timed on either side)."""
    import jax

    args = jax.device_put(args)
    start = time.perf_counter()
    result = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    ms = _median_ms(lambda: jax.block_until_ready(fn(*args)), repeats)
    return result, ms, max(first - ms / 1e3, 0.0)


def _kept(result, i=None) -> np.ndarray:
    idx, count = ((result.indices, result.count) if i is None
                  else (result.indices[i], result.count[i]))
    return np.asarray(idx)[: int(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--iou", type=float, default=0.5, help="IoU threshold of the nms rows")
    parser.add_argument("--quick", action="store_true", help="skip the postprocess rows")
    parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                        help="torch intra-op threads (default: the machine's core count, "
                             "the threads XLA:CPU uses)")
    parser.add_argument("--torch-device", default="cpu",
                        help="device of the torchvision / ultralytics peers: cpu (default) or cuda")
    args = parser.parse_args(argv)

    import jax
    import torch
    import torchvision.ops as tv

    torch.set_num_threads(args.torch_threads)
    device = args.torch_device
    on_dev = lambda a: torch.from_numpy(a).to(device)  # a zero-copy view on the CPU
    peer_ms = lambda fn, repeats: _median_ms(torch_blocking(fn, device), repeats)

    from detjax.boxes import box_iou
    from detjax.demo import clustered_candidates, yolo_head_output
    from detjax.nms import nms, non_max_suppression

    rows = []  # (case, detjax ms, peer ms, compile s, same)
    iou = args.iou

    for n in (1000, 5000):
        boxes, scores, _ = clustered_candidates(n, seed=n)
        f = jax.jit(partial(nms, iou_threshold=iou, max_output=n))
        result, ms, compile_s = _jax_case(f, (boxes, scores), args.repeats)
        tb, ts = on_dev(boxes), on_dev(scores)
        ref = tv.nms(tb, ts, iou).cpu().numpy()
        peer = peer_ms(lambda tb=tb, ts=ts: tv.nms(tb, ts, iou), args.repeats)
        rows.append((f"nms N={n} (kept {len(ref)}) vs torchvision", ms, peer, compile_s,
                     np.array_equal(_kept(result), ref)))

    batch = [clustered_candidates(1000, seed=100 + i) for i in range(16)]
    boxes = np.stack([b for b, _, _ in batch])
    scores = np.stack([s for _, s, _ in batch])
    f = jax.jit(jax.vmap(partial(nms, iou_threshold=iou, max_output=1000)))
    result, ms, compile_s = _jax_case(f, (boxes, scores), args.repeats)
    tb, ts = on_dev(boxes), on_dev(scores)
    refs = [tv.nms(tb[i], ts[i], iou).cpu().numpy() for i in range(16)]
    peer = peer_ms(lambda: [tv.nms(tb[i], ts[i], iou) for i in range(16)], args.repeats)
    same = all(np.array_equal(_kept(result, i), refs[i]) for i in range(16))
    rows.append(("nms 16 x N=1000, vmap vs loop over torchvision", ms, peer, compile_s, same))

    boxes = clustered_candidates(1000, seed=7)[0]
    result, ms, compile_s = _jax_case(jax.jit(box_iou), (boxes, boxes), args.repeats)
    tb = on_dev(boxes)
    peer = peer_ms(lambda: tv.box_iou(tb, tb), args.repeats)
    same = np.allclose(np.asarray(result), tv.box_iou(tb, tb).cpu().numpy(), atol=1e-6)
    rows.append(("box_iou 1000 x 1000 vs torchvision", ms, peer, compile_s, same))

    if not args.quick:
        from ultralytics.utils.nms import non_max_suppression as ultra_nms

        pred = yolo_head_output(16, seed=3)
        tp = on_dev(pred)
        settings = [(f"conf {conf}", dict(conf_thres=conf)) for conf in (0.25, 0.001)]
        settings.append(("val (conf 0.001 iou 0.7 multi_label)",
                         dict(conf_thres=0.001, iou_thres=0.7, multi_label=True)))
        for name, kwargs in settings:
            f = jax.jit(partial(non_max_suppression, **kwargs))
            repeats = max(3, args.repeats // 4)
            result, ms, compile_s = _jax_case(f, (pred,), repeats)
            call = lambda kwargs=kwargs: ultra_nms(tp, **kwargs, max_time_img=1e3)
            ref = call()
            peer = peer_ms(call, repeats)
            same = all(np.array_equal(np.asarray(result.detections[i, : int(result.count[i])]),
                                      ref[i].cpu().numpy()) for i in range(16))
            rows.append((f"postprocess 16x84x8400 {name} vs ultra", ms, peer,
                         compile_s, same))

    print(f"\ndetjax NMS benchmark  (jax {jax.__version__} on {jax.default_backend()}, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, median of {args.repeats} calls; iou {iou})")
    print(f"devices: detjax on {jax_device_info()}, peers on {torch_device_info(device)}\n")
    header = (f"{'case':<66} {'detjax ms':>10} {'peer ms':>10} {'ratio':>7} "
              f"{'compile s':>10} {'same':>5}")
    print(header)
    print("-" * len(header))
    for case, ms, peer, compile_s, same in rows:
        print(f"{case:<66} {ms:>10.2f} {peer:>10.2f} {peer / ms:>7.2f} {compile_s:>10.2f} "
              f"{'yes' if same else 'NO':>5}")
    print("\nratio = peer / detjax: above 1 means detjax is faster.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
