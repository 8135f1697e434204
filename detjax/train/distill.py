"""Knowledge distillation from a trained detjax run (``train.distill.teacher``).

The teacher is a run folder restored by :func:`detjax.run.restore_run`: its EMA weights, in
eval mode. It lives in the train state as a pytree (``TrainState.teacher``, with its graph
definition as static metadata), so every parallel path carries it the way it carries the
student: one copy per device under ``pmap``, replicated over the mesh under sharded ``jit``.
The step merges it inside the same jitted program, runs it on the student's input pixels under
``jax.lax.stop_gradient`` and differentiates only the student's parameters, so the teacher's
weights pass through every step unchanged. Checkpoints leave it out (it is the teacher run's
own save); a resumed run restores it from the teacher folder again.

The teacher sees the student's batch as it is: same pixels, same size. Its training image size
does not matter (a YOLO network runs at any multiple of 32), and equal sizes give equal anchor
grids, which the per-anchor terms need; resizing for the teacher would break that
correspondence. The terms (added to the detection loss, logged as ``kd``, ``ld``, ``feat``):

- ``kd``: per-class sigmoid KD of the class logits at ``temperature``, ``T^2``-scaled;
- ``ld``: Localization Distillation of the DFL bins at ``dfl_temperature``
  (:func:`detjax.losses.dense_distillation_loss` has both, with their normaliser);
- ``feat``: FitNets feature imitation, the mean squared error between each neck level of the
  teacher and the student's (through :class:`detjax.models.adapter.FeatureAdapter` where the
  widths differ), summed over levels. The adapter is an attribute of the student
  (``feature_adapter``): it trains and is saved with it, but a restored or exported run builds
  the detector from its config, without it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from detjax.config import Config
from detjax.models.adapter import ADAPTER_ATTR


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Static weights and temperatures of the distillation terms (hashable).

    Defaults: ``kd_weight`` 1, ``temperature`` 1 (sigmoid KD), ``dfl_weight`` 0.25 and
    ``dfl_temperature`` 10 (the LD paper's mmdet config, ``loss_ld`` weight 0.25, T 10),
    ``feature_weight`` 0 (feature imitation off)."""

    kd_weight: float = 1.0
    temperature: float = 1.0
    dfl_weight: float = 0.25
    dfl_temperature: float = 10.0
    feature_weight: float = 0.0


def distill_config(cfg: Config) -> DistillConfig | None:
    """The :class:`DistillConfig` of ``cfg.train.distill``; ``None`` without a teacher. Setting
    a weight or temperature with no ``teacher`` is a ``ValueError``."""
    section = cfg.train.get("distill")
    if not isinstance(section, Config):
        return None
    values = {k: v for k, v in section.items() if k != "teacher" and v is not None}
    if section.get("teacher") is None:
        if values:
            raise ValueError(f"train.distill.{sorted(values)[0]}={values[sorted(values)[0]]!r} "
                             "is set but train.distill.teacher is null; name the teacher run "
                             "folder or drop the distillation settings")
        return None
    out = DistillConfig(**{k: float(v) for k, v in values.items()})
    if min(dataclasses.astuple(out)) < 0 or out.temperature <= 0 or out.dfl_temperature <= 0:
        raise ValueError(f"train.distill weights must be >= 0 and temperatures > 0, got {out}")
    return out


def _check_compatible(teacher_run, student: nnx.Module, class_names: list[str]) -> None:
    names = list(teacher_run.class_names)
    where = teacher_run.run_dir
    if names != list(class_names):
        raise ValueError(f"the teacher {where} was trained on {len(names)} classes {names}, the "
                         f"student's data has {len(class_names)} classes {list(class_names)}; "
                         "distillation needs the same class names in the same order")
    teacher = teacher_run.model
    for model, who in ((teacher, f"the teacher {where}"), (student, "the student")):
        if getattr(model, "head_type", None) != "dfl":
            raise ValueError(f"{who} has head {getattr(model, 'head_type', None)!r}; "
                             "distillation needs the YOLOv8 'dfl' head on both networks")
    if teacher.head.reg_max != student.head.reg_max or teacher.strides != student.strides:
        raise ValueError(f"teacher {where} (reg_max {teacher.head.reg_max}, strides "
                         f"{teacher.strides}) and student (reg_max {student.head.reg_max}, "
                         f"strides {student.strides}) need the same DFL bins and levels")


def load_teacher(cfg: Config, class_names: list[str], student: nnx.Module
                 ) -> tuple[Any, Any] | None:
    """``(graphdef, state)`` of the teacher run ``cfg.train.distill.teacher`` in eval mode (EMA
    weights), or ``None`` without a teacher. With ``feature_weight > 0`` it also gives the
    ``student`` its :class:`~detjax.models.adapter.FeatureAdapter` (initialised from
    ``cfg.seed``), so call it before the train state is built."""
    settings = distill_config(cfg)
    if settings is None:
        return None
    from detjax.run import restore_run

    folder = Path(str(cfg.train.distill.teacher))
    if not folder.exists():
        raise FileNotFoundError(f"train.distill.teacher: {folder} does not exist (expected a "
                                "detjax run folder with config.yaml and checkpoints)")
    teacher_run = restore_run(folder)
    if teacher_run.config.model.get("quantize") is not None:
        raise ValueError(f"the teacher {teacher_run.run_dir} is a quantised run; distil from "
                         "its float run")
    _check_compatible(teacher_run, student, class_names)
    teacher = teacher_run.model
    teacher.eval()
    if settings.feature_weight > 0:
        from detjax.models.adapter import FeatureAdapter

        setattr(student, ADAPTER_ATTR, FeatureAdapter(
            student.neck.out_channels, teacher.neck.out_channels, rngs=nnx.Rngs(cfg.seed)))
    graphdef, state = nnx.split(teacher)
    return graphdef, state


def _neck_and_head(model: nnx.Module, images: jax.Array):
    feats = model.neck(model.backbone(images))
    return feats, model.head(feats)


def distill_forward(student: nnx.Module, teacher: nnx.Module, images: jax.Array,
                    settings: DistillConfig) -> tuple[Any, dict[str, jax.Array]]:
    """The student's head outputs on ``images`` (float ``[B, H, W, 3]``) and the weighted
    distillation terms ``{"kd", "ld", "feat"}`` (scalars; ``feat`` only with a
    ``feature_weight``). ``teacher`` runs on the same pixels; its outputs are constants."""
    from detjax.losses import dense_distillation_loss, feature_imitation_loss

    feats, outputs = _neck_and_head(student, images)
    t_feats, t_outputs = jax.lax.stop_gradient(_neck_and_head(teacher, images))
    f32 = lambda x: x.astype(jnp.float32)
    kd, ld = dense_distillation_loss(
        outputs.preds["scores"], f32(t_outputs.preds["scores"]), outputs.preds["boxes"],
        f32(t_outputs.preds["boxes"]), reg_max=student.head.reg_max,
        temperature=settings.temperature, dfl_temperature=settings.dfl_temperature)
    items = {"kd": kd * settings.kd_weight, "ld": ld * settings.dfl_weight}
    if settings.feature_weight > 0:
        adapter = getattr(student, ADAPTER_ATTR, None)
        adapted = adapter(feats) if adapter is not None else feats
        feat = sum(feature_imitation_loss(f32(s), f32(t)).mean()
                   for s, t in zip(adapted, t_feats))
        items["feat"] = feat * settings.feature_weight
    return outputs, items
