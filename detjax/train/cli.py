"""``detjax train``: load a config (file + ``key=value`` overrides) and train it."""

from __future__ import annotations

import math
import os
import sys

USAGE = """usage: detjax train [config.yaml] [key=value ...]

Trains a detector. With no arguments: the nano model on the embedded synthetic data set
(configs/default.yaml). Examples:
  detjax train                                  # the default run
  detjax train configs/yolov8s.yaml epochs=50   # another config, with an override
  detjax train data.format=yolo data.path=data/my.yaml workdir=runs/mine
Every key is listed with a comment in configs/default.yaml; results go to `workdir`."""


def enable_compile_cache(path: str | None = None) -> str:
    """Persistent XLA compilation cache (``$DETJAX_CACHE/xla``, default ``~/.cache/detjax/xla``):
    a second run with the same shapes loads the compiled step instead of compiling it."""
    import jax

    root = os.environ.get("DETJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "detjax")
    path = path or os.path.join(root, "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``detjax train`` (see ``USAGE``); returns the exit code."""
    from detjax.config import load_config

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    path = None
    if argv and "=" not in argv[0]:
        path, argv = argv[0], argv[1:]
    try:
        cfg = load_config(path, argv)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax train: {e}", file=sys.stderr)
        return 2
    if cfg.compile_cache:
        enable_compile_cache()
    from detjax.train.loop import train_and_evaluate

    final = train_and_evaluate(cfg, cfg.workdir)
    ok = all(math.isfinite(v) for v in final.values() if isinstance(v, float))
    return 0 if ok else 1
