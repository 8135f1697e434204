#!/usr/bin/env bash
rm -rf /tmp/site  # a warm machine keeps the last call's packages
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=$PWD:/tmp/site || exit 1
# .whl/ holds what the image lacks (albumentations 2.0.8 + albucore, simsimd, stringzilla,
# pydantic + core, grain + array-record, portpicker, tensorboardX, pycocotools, ultralytics +
# thop + platform, optax, orbax-checkpoint). Not flax: the image's flax matches its jax; flax
# 0.12.8 from PyPI failed to import against the image's jax 0.11.2 (seen on an H100).
# One-shot check on a lent GPU machine (one H100): environment, the fast test suite with JAX on
# the GPU, then every benchmark with detjax on the GPU and its torch peer on the same card
# (--torch-device cuda). Run from the repo root, with the missing wheels in .whl/:
#
#     OUT=/some/dir bash benchmarks/gpu_check.sh
#
# GPU_CHECK_TESTS_CAP (default 240 s), GPU_CHECK_BENCH_RESERVE (180 s) and GPU_CHECK_BENCH
# (all | short | none) trade test time against benchmarks.
# Writes env.log, tests.log, bench.log (all benchmarks) and steps.log (each step's exit status
# and seconds) under $OUT. Every step runs under `timeout` (SIGINT first, so pytest prints its
# summary and a hung Python shows its traceback; SIGKILL 15 s later), capped further so that the
# whole script ends by GPU_CHECK_DEADLINE seconds (default 420) after it started; a step that
# fails or times out (exit status 124, or 137 if killed) does not stop the next one.

set -o pipefail
: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false MPLBACKEND=Agg
export YOLO_OFFLINE=1 YOLO_AUTOINSTALL=false YOLO_CONFIG_DIR=/tmp/ultralytics_config
DEADLINE=${GPU_CHECK_DEADLINE:-420}
BENCH_RESERVE=${GPU_CHECK_BENCH_RESERVE:-180}  # seconds kept for the benchmarks
TESTS_CAP=${GPU_CHECK_TESTS_CAP:-240}
BENCH=${GPU_CHECK_BENCH:-all}  # all | short (bench_conv + the 320 px train step) | none

stamp() { echo "== $(date -u '+%F %T') UTC, +${SECONDS}s: $*"; }

# step LOG CAP CMD...: CMD under `timeout` (CAP s, or less if the deadline is nearer), its output
# appended to $OUT/LOG; one line per step into steps.log.
step() {
    local log=$1 cap=$2 left t0 rc
    shift 2
    left=$((DEADLINE - SECONDS))
    ((cap > left)) && cap=$left
    if ((cap < 15)); then
        stamp "SKIPPED, deadline reached: $*" | tee -a "$OUT/$log" "$OUT/steps.log"
        return 0
    fi
    stamp "start (timeout ${cap}s): $*" | tee -a "$OUT/$log"
    t0=$SECONDS
    timeout -s INT -k 15 "$cap" "$@" 2>&1 | tee -a "$OUT/$log"
    rc=$?
    local note=""
    ((rc == 124 || rc == 137)) && note=" (TIMED OUT)"
    stamp "end rc=$rc$note after $((SECONDS - t0))s: $*" | tee -a "$OUT/$log" "$OUT/steps.log"
    echo >>"$OUT/$log"
    return 0
}

stamp "gpu_check start (wheels installed), deadline +${DEADLINE}s" | tee -a "$OUT/steps.log"

# 1. environment
step env.log 30 nvidia-smi
step env.log 90 python3 -c '
import importlib, sys, jax, torch
print("python", sys.version.split()[0])
print("jax", jax.__version__, jax.devices())
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-")
for name in ("flax", "optax", "orbax.checkpoint", "torchvision", "ultralytics", "pycocotools"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), m.__file__)
    except Exception as err:
        print(name, "IMPORT FAILED:", repr(err))
'
step env.log 60 bash -c 'python3 -m pip list 2>/dev/null | grep -iE "jax|flax|optax|orbax|torch|ultralytics|pycocotools"; nproc'

# 2. tests (JAX on the GPU by default), at most 240 s and never eating the benchmarks' reserve
tests_cap=$((DEADLINE - BENCH_RESERVE - SECONDS))
((tests_cap > TESTS_CAP)) && tests_cap=$TESTS_CAP
per_test=(--timeout 120)  # pytest-timeout is in the image; without it, run without the cap
python3 -c "import pytest_timeout" 2>/dev/null || per_test=()
step tests.log "$tests_cap" python3 -m pytest -m "not slow" -n 8 -q -p no:cacheprovider \
    "${per_test[@]}" -rfEs --durations 10

# 3. benchmarks: detjax on the GPU, torch peers on the same GPU; all into bench.log
[[ $BENCH == none ]] && { stamp "gpu_check done (no benchmarks)" | tee -a "$OUT/steps.log"; exit 0; }
step bench.log 90 python3 benchmarks/bench_conv.py --repeats 20 --torch-device cuda
step bench.log 120 python3 benchmarks/bench_train.py --size 320 --batch 16 --steps 8 \
    --torch-device cuda
[[ $BENCH == short ]] && { stamp "gpu_check done (short benchmarks)" | tee -a "$OUT/steps.log"; exit 0; }
step bench.log 120 python3 benchmarks/bench_train.py --size 640 --batch 32 --steps 8 \
    --torch-device cuda
step bench.log 90 python3 benchmarks/bench_infer.py --sizes 320 640 --batch 32 --repeats 20 \
    --fuse --torch-device cuda
step bench.log 90 python3 benchmarks/bench_nms.py --repeats 20 --torch-threads 16 \
    --torch-device cuda
step bench.log 60 python3 benchmarks/bench_loss.py --repeats 20 --torch-device cuda
step bench.log 60 python3 benchmarks/bench_assign.py --reps 20 --torch-device cuda
step bench.log 120 python3 benchmarks/bench_eval.py  # numpy vs pycocotools, CPU only

stamp "gpu_check done" | tee -a "$OUT/steps.log"
