"""Quantisation-aware training (``train.qat: true``): int8 fake quantisation in the train step.

Usually a short fine-tune of a float run (``model.weights``, or a resumed run). Before the
train state is built, the float model's convolution input ranges are calibrated on
``CALIB_BATCHES`` letterboxed batches of the training split (:func:`detjax.run.calibration_images`,
as ``detjax quantize`` does) and written to ``act_ranges.json`` in the run folder; a resumed run
reads them back, so they stay fixed for the whole run. Every convolution then trains
fake-quantised (:func:`detjax.models.quantize.fake_quantized`: inputs per tensor at those ranges,
kernels per output channel, straight-through gradients); the EMA and the evaluations during
training see the same fake-quantised network.

The run folder's ``config.yaml`` sets ``model.quantize`` as ``detjax quantize`` writes it, so
:func:`detjax.run.restore_run` (``detjax val``, ``detjax predict``) rebuilds the trained float
EMA weights and converts them to the qwix int8 model with the same ranges. Each fake-quantised
convolution computes the int8 one up to float rounding; a value that lands on a rounding
boundary may round one step apart, and that step propagates through the later layers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flax import nnx

from detjax.config import Config

ACT_RANGES = "act_ranges.json"
CALIB_BATCHES = 32  # detjax quantize's default --calib-batches


def prepare_qat(cfg: Config, workdir: Path, model: nnx.Module, class_names: list[str], *,
                resuming: bool = False, write: bool = True) -> dict[str, Any] | None:
    """With ``cfg.train.qat``: fake-quantises ``model`` in place and returns the
    ``model.quantize`` settings for the run's ``config.yaml``; without it, ``None``.

    The ranges are read from ``workdir/act_ranges.json`` when it exists, else calibrated now
    (``write``: saved there, the main process only) on ``model``'s weights or, when
    ``resuming`` a float run, on the EMA weights of its latest save."""
    if not cfg.train.get("qat"):
        return None
    from detjax.models.quantize import calibrate, fake_quantized
    from detjax.run import calibration_images

    if cfg.model.get("quantize") is not None and not (workdir / ACT_RANGES).is_file():
        raise ValueError("train.qat trains a float model fake-quantised; model.quantize is set "
                         "(a quantised run's config): start from its float run instead")
    path = workdir / ACT_RANGES
    if path.is_file():
        ranges = json.loads(path.read_text())
    else:
        source = model
        if resuming:  # a float run continued with train.qat: calibrate its trained weights
            from detjax.run import restore_run

            source = restore_run(workdir / "checkpoints").model  # the latest save
        ranges, _ = calibrate(source, calibration_images(cfg, class_names),
                              num_batches=CALIB_BATCHES)
        if write:
            path.write_text(json.dumps(ranges, indent=1))
    fake_quantized(model, ranges)
    return {"weight_qtype": "int8", "act_qtype": "int8", "act_ranges": ACT_RANGES,
            "calib_batches": CALIB_BATCHES, "source": "train.qat"}
