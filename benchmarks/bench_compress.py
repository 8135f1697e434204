"""Compression table of one trained run: size, GFLOPs, CPU latency and mAP of every variant.

    python benchmarks/bench_compress.py BASELINE_RUN [--out DIR] [--finetune-epochs 1]
        [--time-limit MIN] [--variants baseline channel30 ...] [--round-to 8] [--force]
        [--repeats 10]

Variants (``--variants``, default all), each built from ``BASELINE_RUN`` into ``DIR/<name>``:

- ``baseline``: the run itself (nothing is written but the cached metrics);
- ``channel30`` / ``channel50``: ``detjax prune --method channel --ratio 0.3|0.5 --round-to R
  --finetune-epochs N`` (:func:`detjax.compress.prune_run.prune_run`);
- ``magnitude50`` / ``magnitude80``: ``detjax prune --method magnitude --ratio 0.5|0.8
  --finetune-epochs N`` (unstructured, global L1, Zhu & Gupta ramp over the fine-tune);
- ``int8_ptq``: ``detjax quantize`` (qwix int8 weights and activations, static ranges
  calibrated on ``--calib-batches`` training batches);
- ``qat``: ``detjax train train.qat=true`` for N epochs from the baseline's EMA weights, at
  ``--qat-lr-scale`` x the baseline's ``train.lr0`` (the README's QAT example uses a tenth);
- ``student`` / ``student_distilled``: a fresh (randomly initialised) yolov8n trained for
  ``--student-epochs`` (default N) on the baseline's data and recipe, without and with
  ``train.distill.teacher=--teacher`` (default: BASELINE_RUN; the issue's comparison is a
  yolov8s teacher run on the same data) with the default distillation weights.

Every fine-tune uses the source run's recipe and image size (``key=value`` overrides after the
options apply to all of them, e.g. ``train.batch=16``) with ``train.epochs=N`` and
``train.time_limit=--time-limit`` (minutes per fine-tune; 0 = off; the schedule is refitted
after each epoch, so it never cuts the first one). A variant whose folder holds
``bench_variant.json`` (written when its build finished) is reused; ``--force`` rebuilds the
selected variants.

Columns:

- parameters: ``nnx.Param`` entries of the float network (channel-pruned: the smaller network;
  magnitude-pruned: also the non-zero convolution kernel entries; int8: the float network's count,
  stored as int8 kernels + float scales);
- GFLOPs at ``--flops-imgsz`` (640) px, batch 1: counted *analytically* from the convolution
  shapes, 2 x multiply-accumulates of every convolution (``out_h * out_w * kh * kw * in/groups *
  out``), found by tracing the forward pass with ``jax.eval_shape``; BatchNorm (folded),
  activations, upsampling, pooling and the box decode are not counted (ultralytics / thop count
  the same convolutions on the fused model). Magnitude-pruned rows add the count over non-zero
  kernel entries only (what sparse kernels could skip; XLA's dense convolutions do not). The
  header cross-checks the count on yolov8n with 80 classes at 640 px against ultralytics' 8.7
  GFLOPs and against XLA's own cost analysis of the compiled fused forward;
- latency at ``--latency-imgsz`` (320) px, batches ``--batches`` (1 16), on JAX's CPU device:
  the restored EMA model in eval mode (BatchNorm folded with :func:`detjax.models.fuse` for the
  float variants; the qwix int8 models keep float BatchNorm after their int8 convolutions, as
  ``restore_run`` builds them), ``model.predict(model(x))`` (network + box decode, no NMS)
  jitted and compiled first (compile time excluded), 2 warm-up calls, then ``--repeats`` rounds
  that time one call of every (variant, batch) in turn, so load drift hits all variants alike;
  the median per (variant, batch) is reported, with baseline / variant as the speed-up;
- mAP50-95 / mAP50: :func:`detjax.eval.validation.evaluate` of the restored run (what
  ``detjax val`` reports: for int8 runs the qwix int8 model) on the baseline's validation split
  with the baseline's ``eval.*`` settings; drop = baseline - variant.

Targets of the issue are printed next to the numbers: channel30 >= 1.25x faster at 320 px with
a mAP50-95 drop <= 0.02, int8_ptq drop <= 0.01. Output: the table on stdout and
``DIR/compress_table.md`` / ``DIR/compress_table.json``.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import jax_device_info  # noqa: E402

VARIANTS = ("baseline", "channel30", "channel50", "magnitude50", "magnitude80", "int8_ptq", "qat",
            "student", "student_distilled")
MARKER = "bench_variant.json"
ULTRALYTICS_YOLOV8N_GFLOPS = 8.7  # ultralytics' fused YOLOv8n summary, 80 classes, 640 px
TARGETS = {"channel30": {"speedup": 1.25, "drop": 0.02}, "int8_ptq": {"drop": 0.01}}


# ----------------------------------------------------------------------------- counting


def _convs(model: nnx.Module) -> list[tuple[str, nnx.Conv]]:
    return [("/".join(map(str, path)), m) for path, m in nnx.iter_modules(model)
            if isinstance(m, nnx.Conv)]


def conv_shapes(model: nnx.Module, imgsz: int) -> dict[str, tuple[tuple, tuple]]:
    """``{conv path: (output shape, kernel shape)}`` of every convolution of ``model`` (a float
    detector) on one ``imgsz`` x ``imgsz`` image, traced with ``jax.eval_shape`` (no compute)."""
    model = nnx.clone(model)
    model.eval()
    graphdef, state = nnx.split(model)
    found: dict[str, tuple[tuple, tuple]] = {}

    def recording(name, conv):
        def call(lhs, rhs, *args, **kwargs):
            out = conv(lhs, rhs, *args, **kwargs)
            found[name] = (tuple(out.shape), tuple(rhs.shape))
            return out
        return call

    def forward(state, x):
        m = nnx.merge(graphdef, state)
        for name, conv in _convs(m):
            conv.conv_general_dilated = recording(name, conv.conv_general_dilated)
        return m(x)

    jax.eval_shape(forward, state, jax.ShapeDtypeStruct((1, imgsz, imgsz, 3), jnp.float32))
    return found


def conv_gflops(model: nnx.Module, imgsz: int) -> tuple[float, float]:
    """``(dense, non-zero)`` GFLOPs (2 x MACs) of ``model``'s convolutions at ``imgsz``, batch 1;
    non-zero counts only the kernel entries that are not exactly 0."""
    shapes = conv_shapes(model, imgsz)
    kernels = dict(_convs(model))
    dense = nonzero = 0
    for name, (out, kshape) in shapes.items():
        positions = int(np.prod(out[:-1]))  # batch x out_h x out_w
        dense += positions * int(np.prod(kshape))  # kh * kw * in/groups * out
        nonzero += positions * int(np.count_nonzero(np.asarray(kernels[name].kernel[...])))
    return 2 * dense / 1e9, 2 * nonzero / 1e9


def xla_gflops(model: nnx.Module, imgsz: int) -> float | None:
    """XLA's cost analysis (``flops``) of the compiled, BN-fused forward at batch 1."""
    from detjax.models.fuse import fuse

    m = fuse(model)
    graphdef, state = nnx.split(m)
    x = jax.ShapeDtypeStruct((1, imgsz, imgsz, 3), jnp.float32)
    try:
        cost = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).lower(state, x).compile()
        cost = cost.cost_analysis()
    except Exception:  # cost analysis is backend-dependent
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) / 1e9 if cost and "flops" in cost else None


def float_network(run) -> nnx.Module:
    """The float architecture of a restored run (int8 runs: the network they quantise)."""
    from detjax.run import build_model

    if run.config.model.get("quantize") is None:
        return run.model
    cfg = copy.deepcopy(run.config)
    cfg.model.quantize = None
    return build_model(cfg, len(run.class_names))


def param_counts(run) -> tuple[int, int]:
    """``(parameters, non-zero conv kernel entries)``; the second is only meaningful for float
    runs (int8 runs report the count of their float network)."""
    net = float_network(run)
    params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
    if run.config.model.get("quantize") is not None:
        return params, -1
    zeros = sum(int(np.size(c.kernel[...]) - np.count_nonzero(np.asarray(c.kernel[...])))
                for _, c in _convs(net))
    return params, params - zeros


# ----------------------------------------------------------------------------- variants


def _common_overrides(args) -> list[str]:
    return ["log.progress=false", "log.plots=false", "log.tensorboard=false", "resume=false",
            "checkpoint.keep=1", f"train.time_limit={args.time_limit}", *args.overrides]


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


def build_variant(name: str, base, folder: Path, args) -> dict[str, Any]:
    """Writes the run folder of variant ``name`` into ``folder``; returns what it was built
    with (for the marker and the notes)."""
    from detjax.compress.cli import quantize_run
    from detjax.compress.prune_run import prune_run
    from detjax.config import load_config
    from detjax.models import save_weights
    from detjax.train import train_and_evaluate

    n, common = args.finetune_epochs, _common_overrides(args)
    info: dict[str, Any] = {"variant": name, "source": str(base.checkpoint_dir)}
    if name.startswith(("channel", "magnitude")):
        method = "channel" if name.startswith("channel") else "magnitude"
        ratio = int(name.removeprefix(method)) / 100
        prune_run(base.run_dir, folder, method=method, ratio=ratio, round_to=args.round_to,
                  finetune_epochs=n, overrides=common)
        info.update(method=method, ratio=ratio, finetune_epochs=n, time_limit=args.time_limit)
        if method == "channel":
            info.update(round_to=args.round_to)
    elif name == "int8_ptq":
        quantize_run(str(base.run_dir), _fresh(folder), calib_batches=args.calib_batches)
        info.update(calib_batches=args.calib_batches)
    elif name == "qat":
        _fresh(folder)
        weights = save_weights(base.model, folder / "start.safetensors",
                               metadata={"class_names": list(base.class_names)})
        lr0 = float(base.config.train.lr0) * args.qat_lr_scale
        cfg = load_config(str(base.run_dir / "config.yaml"), [
            f"model.weights={weights}", f"workdir={folder}", "train.qat=true",
            f"train.epochs={n}", f"train.lr0={lr0}", *common])
        train_and_evaluate(cfg, folder)
        info.update(finetune_epochs=n, lr0=lr0, time_limit=args.time_limit)
    elif name in ("student", "student_distilled"):
        _fresh(folder)
        teacher_run = args.teacher or str(base.run_dir)
        teacher = teacher_run if name == "student_distilled" else "null"
        cfg = load_config(str(base.run_dir / "config.yaml"), [
            "model.name=yolov8n", "model.weights=null", "model.channels=null",
            f"workdir={folder}", "train.qat=false", "train.freeze=0",
            f"train.distill.teacher={teacher}", f"train.epochs={args.student_epochs}", *common])
        train_and_evaluate(cfg, folder)
        info.update(epochs=args.student_epochs, teacher=None if teacher == "null" else teacher,
                    time_limit=args.time_limit)
    else:
        raise ValueError(f"unknown variant {name!r}; choose from {VARIANTS}")
    return info


def measure_static(run, val_loader, base_cfg, flops_imgsz: int) -> dict[str, Any]:
    """Parameters, GFLOPs and mAP of a restored run (cached in its marker)."""
    from detjax.eval.validation import eval_settings, evaluate

    params, nonzero = param_counts(run)
    dense, nz_flops = conv_gflops(float_network(run), flops_imgsz)
    run.model.eval()
    result, _ = evaluate(run.model, val_loader, class_names=list(run.class_names),
                         **eval_settings(base_cfg))
    return {"params": params, "nonzero_params": nonzero, "gflops": dense,
            "gflops_nonzero": nz_flops if nonzero >= 0 else dense,
            "map": float(result["map"]), "map50": float(result["map50"]),
            "checkpoint": str(run.checkpoint_dir)}


# ----------------------------------------------------------------------------- latency


def _latency_model(run, name: str):
    from detjax.models.fuse import fuse

    if run.config.model.get("quantize") is not None:
        return run.model, False  # qwix int8: BN stays float after the int8 convolutions
    return fuse(run.model), True


def time_latency(models: dict[str, nnx.Module], imgsz: int, batches: list[int], repeats: int
                 ) -> dict[str, dict[int, float]]:
    """Median seconds of one jitted ``predict(model(x))`` call per (variant, batch) on the CPU,
    interleaved over variants (see the module docstring)."""
    cpu = jax.devices("cpu")[0]
    calls = {}
    with jax.default_device(cpu):
        for name, model in models.items():
            graphdef, state = nnx.split(model)
            state = jax.device_put(state, cpu)

            def forward(s, x, graphdef=graphdef):
                m = nnx.merge(graphdef, s)
                return m.predict(m(x))

            for b in batches:
                x = jax.device_put(jnp.asarray(np.random.default_rng(b).random(
                    (b, imgsz, imgsz, 3), np.float32)), cpu)
                compiled = jax.jit(forward).lower(state, x).compile()
                for _ in range(2):
                    jax.block_until_ready(compiled(state, x))
                calls[name, b] = (compiled, state, x)
        times: dict[tuple[str, int], list[float]] = {k: [] for k in calls}
        for _ in range(repeats):
            for key, (compiled, state, x) in calls.items():
                t0 = time.perf_counter()
                jax.block_until_ready(compiled(state, x))
                times[key].append(time.perf_counter() - t0)
    out: dict[str, dict[int, float]] = {}
    for (name, b), ts in times.items():
        out.setdefault(name, {})[b] = statistics.median(ts)
    return out


# ----------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cores": os.cpu_count(),
            "jax": jax.__version__, "default_device": jax_device_info(),
            "python": platform.python_version()}


def _fmt_params(row) -> str:
    s = f"{row['params'] / 1e6:.3f}M"
    if row["nonzero_params"] >= 0 and row["nonzero_params"] < row["params"] * 0.99:
        s += f" ({row['nonzero_params'] / 1e6:.3f}M nz)"
    if row.get("int8"):
        s += " int8"
    return s


def _fmt_flops(row) -> str:
    s = f"{row['gflops']:.2f}"
    if row["gflops_nonzero"] < row["gflops"] * 0.99:
        s += f" ({row['gflops_nonzero']:.2f} nz)"
    return s


def _target(name: str, row, batches: list[int]) -> str:
    t = TARGETS.get(name)
    if t is None:
        return ""
    parts = []
    if "speedup" in t:
        for b in batches:
            s = row["speedup"].get(b)
            if s is not None:
                parts.append(f"b{b} {s:.2f}x {'>=' if s >= t['speedup'] else '<'} "
                             f"{t['speedup']}x {'met' if s >= t['speedup'] else 'MISSED'}")
    drop = row["drop"]
    parts.append(f"drop {drop:+.4f} {'<=' if drop <= t['drop'] else '>'} {t['drop']} "
                 f"{'met' if drop <= t['drop'] else 'MISSED'}")
    return "; ".join(parts)


def render(rows: dict[str, dict], batches: list[int], imgsz: int, flops_imgsz: int
           ) -> tuple[str, list[str]]:
    """The markdown table and its column names."""
    cols = ["variant", "params", f"GFLOPs@{flops_imgsz}"]
    for b in batches:
        cols += [f"ms b{b}@{imgsz}", f"speed-up b{b}"]
    cols += ["mAP50-95", "mAP50", "drop", "target", "notes"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for name, row in rows.items():
        cells = [name, _fmt_params(row), _fmt_flops(row)]
        for b in batches:
            ms = row["latency_ms"].get(b)
            cells += [f"{ms:.1f}" if ms is not None else "n/a",
                      f"{row['speedup'][b]:.2f}x" if b in row["speedup"] else "n/a"]
        cells += [f"{row['map']:.4f}", f"{row['map50']:.4f}", f"{row['drop']:+.4f}",
                  _target(name, row, batches), row["notes"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines), cols


def _notes(name: str, info: dict, base, fused: bool) -> str:
    parts = ["BN fused" if fused else "int8 convs, BN unfused"]
    if name.startswith("channel"):
        rounded = (f" (widths to multiples of {info['round_to']})"
                   if info.get("round_to", 1) > 1 else "")
        parts.append(f"L1 channel prune {info.get('ratio')}{rounded}, "
                     f"{info.get('finetune_epochs')} ep fine-tune")
    elif name.startswith("magnitude"):
        parts.append(f"global L1 sparsity {info.get('ratio')}, {info.get('finetune_epochs')} ep "
                     "fine-tune; dense kernels (XLA has no sparse conv)")
    elif name == "int8_ptq":
        parts.append(f"qwix PTQ, {info.get('calib_batches')} calib batches")
    elif name == "qat":
        parts.append(f"{info.get('finetune_epochs')} ep QAT from baseline, lr0 "
                     f"{info.get('lr0'):g}; restored as qwix int8")
    elif name.startswith("student"):
        teacher = info.get("teacher")
        who = "with" if teacher else "without"
        named = ("the baseline" if not teacher or Path(teacher) == Path(base.run_dir)
                 else Path(teacher).name)
        parts.append(f"fresh yolov8n, {info.get('epochs')} ep from scratch {who} {named} "
                     "as teacher")
        if (named == "the baseline" and base.config.model.name == "yolov8n"
                and not base.config.model.get("channels")):
            parts.append("baseline is itself yolov8n: compare student vs student_distilled")
    if info.get("time_limit"):
        parts.append(f"time_limit {info['time_limit']} min")
    if info.get("build_min") is not None:
        parts.append(f"built in {info['build_min']:.1f} min")
    return "; ".join(parts)


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", help="a trained detjax run folder (the float baseline)")
    parser.add_argument("--out", default=None,
                        help="folder for the variants' runs and the table (default: "
                             "BASELINE_RUN/compress_bench)")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--finetune-epochs", type=int, default=1,
                        help="epochs of every fine-tune (pruning, QAT); default 1")
    parser.add_argument("--teacher", default=None,
                        help="teacher run of student_distilled (default: the baseline run)")
    parser.add_argument("--student-epochs", type=int, default=None,
                        help="epochs of the fresh students (default: --finetune-epochs)")
    parser.add_argument("--time-limit", type=float, default=0.0,
                        help="train.time_limit of each fine-tune in minutes (0 = off)")
    parser.add_argument("--round-to", type=int, default=8,
                        help="channel variants: kept channels per group a multiple of this "
                             "(detjax prune --round-to)")
    parser.add_argument("--calib-batches", type=int, default=32,
                        help="int8 PTQ calibration batches (detjax quantize's default)")
    parser.add_argument("--qat-lr-scale", type=float, default=0.1,
                        help="QAT lr0 = this x the baseline's train.lr0")
    parser.add_argument("--latency-imgsz", type=int, default=320)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--flops-imgsz", type=int, default=640)
    parser.add_argument("--force", action="store_true", help="rebuild the selected variants")
    parser.add_argument("overrides", nargs="*",
                        help="key=value config overrides for every fine-tune")
    args = parser.parse_args()
    if args.student_epochs is None:
        args.student_epochs = args.finetune_epochs
    if args.finetune_epochs < 1 or args.student_epochs < 1:
        parser.error("--finetune-epochs and --student-epochs must be >= 1")
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        parser.error(f"overrides look like key=value, got {bad}")

    from detjax.models import create_model
    from detjax.run import build_datasets, build_loaders, restore_run

    t_start = time.time()
    base = restore_run(args.baseline)
    if base.config.model.get("quantize") is not None:
        parser.error(f"{base.run_dir} is a quantised run; give its float run")
    out = Path(args.out) if args.out else base.run_dir / "compress_bench"
    out.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    print(f"machine: {machine['cpu']}, {machine['cores']} cores ({machine['host']}); "
          f"jax {machine['jax']}, default device {machine['default_device']}; latency on "
          f"jax's CPU device")
    print(f"baseline: {base.checkpoint_dir} ({base.config.model.name}, "
          f"{len(base.class_names)} classes, imgsz {base.image_size}); out: {out}")

    # cross-check of the analytic count: yolov8n, 80 classes, 640 px
    ref = create_model("yolov8n", num_classes=80, rngs=nnx.Rngs(0))
    ref_params = sum(int(x.size) for x in jax.tree.leaves(nnx.state(ref, nnx.Param)))
    ref_flops, _ = conv_gflops(ref, 640)
    ref_xla = xla_gflops(ref, 640)
    ref_line = (f"GFLOPs cross-check, yolov8n 80 classes 640 px: analytic {ref_flops:.2f}, XLA "
                f"cost analysis {'n/a' if ref_xla is None else f'{ref_xla:.2f}'}, ultralytics "
                f"{ULTRALYTICS_YOLOV8N_GFLOPS} (fused); {ref_params / 1e6:.3f}M params "
                "(ultralytics: 3.157M with its 16 fixed DFL weights, unfused)")
    print(ref_line, flush=True)
    del ref

    _, val_ds = build_datasets(base.config, splits=("val",))
    val_loader = build_loaders(base.config, None, val_ds).val

    rows: dict[str, dict] = {}
    runs: dict[str, Any] = {}
    for name in args.variants:
        folder = out / name
        marker = folder / MARKER
        info = json.loads(marker.read_text()) if marker.is_file() else None
        if name == "baseline":
            info = info if info and info.get("source") == str(base.checkpoint_dir) else None
            if info is None:
                folder.mkdir(parents=True, exist_ok=True)
                info = {"variant": name, "source": str(base.checkpoint_dir)}
            run = base
        else:
            if info is None or args.force:
                print(f"== building {name} in {folder}", flush=True)
                t0 = time.time()
                info = build_variant(name, base, folder, args)
                info["build_min"] = (time.time() - t0) / 60
                marker.write_text(json.dumps(info, indent=1))
            else:
                print(f"== reusing {name} ({folder}; --force rebuilds it)", flush=True)
            run = restore_run(folder)
        static = info.get("static")
        if static is None or static.get("checkpoint") != str(run.checkpoint_dir):
            static = measure_static(run, val_loader, base.config, args.flops_imgsz)
            info["static"] = static
            marker.write_text(json.dumps(info, indent=1))
        print(f"   {name}: mAP50-95 {static['map']:.4f} mAP50 {static['map50']:.4f}, "
              f"{static['params'] / 1e6:.3f}M params, {static['gflops']:.2f} GFLOPs", flush=True)
        runs[name] = run
        rows[name] = {**static, "info": info,
                      "int8": run.config.model.get("quantize") is not None}

    print(f"== latency: {args.latency_imgsz} px, batches {args.batches}, median of "
          f"{args.repeats} interleaved rounds", flush=True)
    load_start = os.getloadavg()
    models, fused = {}, {}
    for name, run in runs.items():
        models[name], fused[name] = _latency_model(run, name)
    t0 = time.time()
    latency = time_latency(models, args.latency_imgsz, args.batches, args.repeats)
    latency_s = time.time() - t0
    load_end = os.getloadavg()
    del models

    base_row = rows.get("baseline")
    base_map = base_row["map"] if base_row else measure_static(
        base, val_loader, base.config, args.flops_imgsz)["map"]
    base_lat = latency.get("baseline")
    for name, row in rows.items():
        row["latency_ms"] = {b: 1e3 * s for b, s in latency[name].items()}
        row["speedup"] = ({b: base_lat[b] / s for b, s in latency[name].items()}
                          if base_lat else {})
        row["drop"] = base_map - row["map"]
        row["notes"] = _notes(name, row["info"], base, fused[name])
    table, cols = render(rows, args.batches, args.latency_imgsz, args.flops_imgsz)
    fmt_load = lambda la: " ".join(f"{x:.2f}" for x in la)  # noqa: E731
    header = [
        f"Compression of `{base.run_dir}` ({base.config.model.name}, "
        f"{base.config.data.format} data, imgsz {base.image_size}, "
        f"{len(val_ds)} val images); {datetime.datetime.now():%Y-%m-%d %H:%M}",
        f"Machine: {machine['cpu']}, {machine['cores']} cores; jax {machine['jax']} "
        "(latency on its CPU device)",
        f"Load average (1/5/15 min) at start of latency: {fmt_load(load_start)}; at end: "
        f"{fmt_load(load_end)} ({latency_s:.0f} s)",
        ref_line,
        f"GFLOPs: analytic conv count (2 x MACs) at {args.flops_imgsz} px batch 1; `nz`: over "
        "non-zero kernel entries. Latency: jitted network + box decode (no NMS), "
        f"{args.latency_imgsz} px, median of {args.repeats} rounds after 2 warm-up calls, "
        "compile excluded. Speed-up = baseline / variant. Drop = baseline - variant mAP50-95. "
        "mAP: the restored run (EMA; int8 rows: the qwix int8 model) on the baseline's val "
        "split and eval settings. Targets: channel30 >= 1.25x at 320 px with drop <= 0.02; "
        "int8_ptq drop <= 0.01.",
    ]
    text = "\n\n".join([*header, table])
    print()
    print(text)
    total_min = (time.time() - t_start) / 60
    print(f"\n(total {total_min:.1f} min; table in {out / 'compress_table.md'})")
    (out / "compress_table.md").write_text(text + "\n")
    payload = {"baseline": str(base.run_dir), "checkpoint": str(base.checkpoint_dir),
               "machine": machine, "load_avg_start": load_start, "load_avg_end": load_end,
               "latency_imgsz": args.latency_imgsz, "batches": args.batches,
               "repeats": args.repeats, "flops_imgsz": args.flops_imgsz,
               "gflops_method": "analytic: 2 x conv multiply-accumulates, batch 1",
               "crosscheck": {"yolov8n_80cls_640_analytic": ref_flops,
                              "yolov8n_80cls_640_xla": ref_xla,
                              "ultralytics": ULTRALYTICS_YOLOV8N_GFLOPS,
                              "yolov8n_80cls_params": ref_params},
               "targets": TARGETS, "finetune_epochs": args.finetune_epochs,
               "student_epochs": args.student_epochs, "time_limit": args.time_limit,
               "total_min": total_min, "columns": cols,
               "rows": {k: {kk: vv for kk, vv in v.items()} for k, v in rows.items()}}
    (out / "compress_table.json").write_text(json.dumps(payload, indent=1, default=str))


if __name__ == "__main__":
    main()
