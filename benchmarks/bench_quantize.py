"""Float vs int8 (qwix PTQ) forward latency of a run, side by side in one process.

    python benchmarks/bench_quantize.py FLOAT_RUN INT8_RUN [--imgsz 320] [--batches 1 16]

``INT8_RUN`` is what ``detjax quantize FLOAT_RUN`` wrote. Both models are restored with
``detjax.run.restore_run`` and their forward pass (backbone, neck, head; no NMS) is jitted;
the median of ``--repeats`` calls after one warm-up call is printed with the int8/float ratio.
"""

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import median_seconds  # noqa: E402


def _forward(model):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)), state


def main() -> None:
    from detjax.run import restore_run

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("float_run")
    parser.add_argument("int8_run")
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    models = {"float": restore_run(args.float_run).model, "int8": restore_run(args.int8_run).model}
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}, imgsz {args.imgsz}")
    for batch in args.batches:
        x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (batch, args.imgsz, args.imgsz, 3)),
                        jnp.float32)
        ms = {}
        for name, model in models.items():
            fn, state = _forward(model)
            jax.block_until_ready(fn(state, x))
            call = lambda f=fn, s=state, x=x: jax.block_until_ready(f(s, x))  # noqa: E731
            ms[name] = 1e3 * median_seconds(call, args.repeats)
        print(f"batch {batch:3d}: float {ms['float']:8.1f} ms  int8 {ms['int8']:8.1f} ms  "
              f"int8/float {ms['int8'] / ms['float']:.2f}x time")


if __name__ == "__main__":
    main()
