"""``detjax quantize RUN [--calib-batches 32] [--out DIR] [--weights-only]``: int8 post-training
quantisation of a trained run into a new run folder.

The new folder holds the source run's ``run.json`` and restored save (copied), the activation
ranges measured on ``--calib-batches`` letterboxed (unaugmented) batches of the training split
(``act_ranges.json``), and ``config.yaml`` with ``model.quantize`` set. ``detjax val``,
``detjax predict`` and :func:`detjax.run.restore_run` then rebuild the quantised model from it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ACT_RANGES = "act_ranges.json"


def quantize_run(run_path: str, out: str | Path, *, calib_batches: int = 32,
                 weights_only: bool = False) -> Path:
    """Writes the quantised run of ``run_path`` to ``out`` and returns ``out``."""
    from detjax.config import dump_config
    from detjax.models.quantize import calibrate
    from detjax.run import RUN_INFO, calibration_images, restore_run

    if not isinstance(calib_batches, int) or calib_batches < 1:
        raise ValueError(f"--calib-batches must be a positive int, got {calib_batches!r}")
    run = restore_run(run_path)
    if run.config.model.get("quantize") is not None:
        raise ValueError(f"{run.run_dir} is already quantised (model.quantize is set); "
                         "quantise the float run it came from")
    out = Path(out)
    if out.resolve() == run.run_dir.resolve():
        raise ValueError("--out must be a new folder, not the source run")
    out.mkdir(parents=True, exist_ok=True)
    settings = {"weight_qtype": "int8", "act_qtype": None if weights_only else "int8",
                "act_ranges": None if weights_only else ACT_RANGES,
                "calib_batches": None if weights_only else calib_batches,
                "source": str(run.checkpoint_dir)}
    if not weights_only:
        ranges, _ = calibrate(run.model, calibration_images(run.config, run.class_names),
                              num_batches=calib_batches)
        (out / ACT_RANGES).write_text(json.dumps(ranges, indent=1))
    save = out / run.checkpoint_dir.parent.name / run.checkpoint_dir.name
    if save.exists():
        shutil.rmtree(save)
    shutil.copytree(run.checkpoint_dir, save)
    if (run.run_dir / RUN_INFO).is_file():
        shutil.copy(run.run_dir / RUN_INFO, out / RUN_INFO)
    cfg = run.config
    cfg.model.quantize = settings
    dump_config(cfg, out / "config.yaml")
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="detjax quantize", description=__doc__.split("\n")[0])
    parser.add_argument("run", help="a trained run folder (or one of its saves)")
    parser.add_argument("--calib-batches", type=int, default=32,
                        help="training batches (eval.batch images each) for activation ranges")
    parser.add_argument("--out", default=None, help="new run folder (default: RUN-int8)")
    parser.add_argument("--weights-only", action="store_true",
                        help="int8 weights only; activations and compute stay float")
    args = parser.parse_args(argv)
    out = args.out or f"{str(args.run).rstrip('/')}-int8"
    try:
        path = quantize_run(args.run, out, calib_batches=args.calib_batches,
                            weights_only=args.weights_only)
    except (ValueError, FileNotFoundError) as e:
        print(f"detjax quantize: {e}", file=sys.stderr)
        return 2
    print(f"quantised run written to {path} (detjax val {path})")
    return 0
