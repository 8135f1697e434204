"""``detjax tune``: search hyperparameters with optuna (TPE + median pruning) or evolution."""

from __future__ import annotations

import argparse
import sys

USAGE = """usage: detjax tune [config.yaml] [key=value ...] [--space configs/tune.yaml]
                   [--method tpe|evolve] [--trials 20] [--time-limit MIN] [--out runs/tune]
                   [--seed 0]

Trains one run per trial (each an ordinary run folder under --out) and maximises the fitness
0.1 * mAP50 + 0.9 * mAP50-95 (the space file's `fitness` changes the weights). Rerunning the same
command resumes the search (the study is in --out/study.db, the evolution in --out/evolve.csv).
The best config goes to --out/best.yaml (`detjax train runs/tune/best.yaml`), plots beside it.
The config and key=value overrides set each trial's budget, e.g. train.epochs=10 or
train.time_limit=5 (minutes per trial). Examples:
  detjax tune train.epochs=10 --trials 30
  detjax tune configs/yolov8n.yaml data.format=voc data.path=VOC --method evolve --time-limit 120"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detjax tune", usage=USAGE, add_help=False)
    p.add_argument("config", nargs="?")
    p.add_argument("--space", default="tune.yaml")
    p.add_argument("--method", default="tpe")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--time-limit", type=float, default=0.0)
    p.add_argument("--out", default="runs/tune")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-h", "--help", action="store_true")
    return p


def main(argv: list[str]) -> int:
    args, rest = _parser().parse_known_args(list(argv))
    if args.help:
        print(USAGE)
        return 0
    overrides = [a for a in rest if "=" in a]
    path = args.config
    if path is not None and "=" in path:
        overrides.insert(0, path)
        path = None
    unknown = [a for a in rest if "=" not in a]
    try:
        if unknown:
            raise ValueError(f"unknown arguments {unknown}")
        from detjax.config import load_config
        from detjax.tune.space import load_space
        from detjax.tune.tuner import tune

        config = load_config(path, overrides)
        space = load_space(args.space)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax tune: {e}\n\n{USAGE}", file=sys.stderr)
        return 2
    if config.compile_cache:
        from detjax.train.cli import enable_compile_cache

        enable_compile_cache()
    try:
        tune(config, space, args.out, trials=args.trials, time_limit=args.time_limit,
             method=args.method, seed=args.seed)
    except ValueError as e:
        print(f"detjax tune: {e}", file=sys.stderr)
        return 2
    return 0
