"""Timing helpers shared by the benchmark scripts (run as `python benchmarks/<name>.py`)."""

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``repeats`` calls of ``fn`` (which must block until done)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def torch_blocking(fn: Callable, device) -> Callable:
    """``fn`` as is on the CPU; on a CUDA ``device``, ``fn`` followed by
    ``torch.cuda.synchronize`` so that a timer read after the call sees the queued kernels."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return fn

    def call(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize(device)
        return out

    return call


def torch_device_info(device) -> str:
    """'cpu (N threads)' or 'cuda:0 (<GPU name>)', for the benchmark headers."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} threads)"


def jax_device_info() -> str:
    """The default JAX device, e.g. 'cpu (cpu)' or 'gpu (NVIDIA H100 80GB HBM3)'."""
    import jax

    dev = jax.devices()[0]
    return f"{dev.platform} ({dev.device_kind})"
