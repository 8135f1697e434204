"""The train state pytree: params, BN statistics, Optax state, EMA copies, counters.

``TrainState`` holds ``params`` (float32 master weights, ``nnx.Param`` leaves), ``batch_stats``
(``nnx.BatchStat``), ``other`` (any remaining NNX state, e.g. RNG counters), ``opt_state`` (the
Optax state of ``StepConfig.tx``, gradient accumulation included when the transformation is an
``optax.MultiSteps``), ``ema_params`` / ``ema_stats`` and the counters ``step`` (optimiser steps
= EMA updates), ``iteration`` (micro-batches seen, ultralytics ``ni``), the float16 dynamic
loss-scale state, and ``epochs`` (the schedule length, passed to the transformation as the
``epochs`` extra argument, 0 = as built; the loop may shorten it to a time limit without
recompiling), and ``teacher``: the frozen teacher's NNX state when distilling
(:mod:`detjax.train.distill`; ``None`` otherwise), never differentiated nor updated. Static
parts (the two NNX graph definitions, train and eval mode, the teacher's eval-mode graph
definition and the ``StepConfig``) are pytree metadata, so ``train_step(state, batch)`` jits
with no extra args.

The model is an ``nnx.Module`` with ``__call__(images)`` -> raw head outputs,
``loss(outputs, batch, **hyp) -> (scalar, dict)``, ``predict(outputs) -> [B, 4+C, A]`` and
``train()`` / ``eval()`` modes.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx

Precision = Literal["f32", "bf16", "f16"]
_PRECISIONS = ("f32", "bf16", "f16")


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """Static settings of the train step (hashable).

    ``tx`` is the optimiser: any ``optax.GradientTransformation``, called once per micro-batch
    (``detjax.train.make_optimizer`` builds the ultralytics recipe from a config).
    ``loss_hyp`` are keyword arguments for ``model.loss`` as a tuple of pairs;
    ``loss_times_batch`` multiplies the differentiated loss by the global batch size, as
    ultralytics' detection loss does (``loss.sum() * batch_size``), so ``lr0`` keeps its meaning.
    """

    tx: optax.GradientTransformation
    precision: Precision = "f32"
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    loss_hyp: tuple[tuple[str, Any], ...] = ()
    loss_times_batch: bool = True
    init_loss_scale: float = 2.0 ** 16
    loss_scale_growth_interval: int = 2000
    distill: Any = None  # detjax.train.distill.DistillConfig with a teacher in the state

    def __post_init__(self):
        if not isinstance(self.tx, optax.GradientTransformation):
            raise TypeError(f"tx must be an optax.GradientTransformation, got {type(self.tx)}")
        if self.precision not in _PRECISIONS:
            raise ValueError(f"precision must be one of {_PRECISIONS}, got {self.precision!r}")

    @property
    def compute_dtype(self):
        return {"f32": jnp.float32, "bf16": jnp.bfloat16, "f16": jnp.float16}[self.precision]


@flax.struct.dataclass
class TrainState:
    params: Any
    batch_stats: Any
    other: Any
    opt_state: Any
    ema_params: Any
    ema_stats: Any
    step: jax.Array
    iteration: jax.Array
    loss_scale: jax.Array
    good_steps: jax.Array
    epochs: jax.Array
    graphdef: Any = flax.struct.field(pytree_node=False)
    eval_graphdef: Any = flax.struct.field(pytree_node=False)
    config: StepConfig = flax.struct.field(pytree_node=False)
    teacher: Any = None
    teacher_graphdef: Any = flax.struct.field(pytree_node=False, default=None)


def _set_mode(model: nnx.Module, train: bool) -> None:
    (model.train if train else model.eval)()


def split_model(model: nnx.Module):
    """``(train graphdef, eval graphdef, params, batch_stats, other)`` of an NNX model."""
    _set_mode(model, train=False)
    eval_graphdef, *_ = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    _set_mode(model, train=True)
    graphdef, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    return graphdef, eval_graphdef, params, stats, other


def _init_opt_state(tx, params):
    """``tx.init(params)`` as one compiled program: run op by op, the recipe's init dispatched
    ~80 small programs, each compiled (7 s of a 2-core CPU's start-up)."""
    return jax.jit(tx.init)(params)


def create_train_state(model: nnx.Module, config: StepConfig, *, epochs: int = 0,
                       teacher: tuple[Any, Any] | None = None) -> TrainState:
    """Initial state: EMA = copy of the model, ``config.tx.init(params)``, counters at 0.

    ``epochs``: the schedule length held in the state (see ``TrainState``); 0 keeps the
    length the optimiser was built with. ``teacher``: ``(graphdef, state)`` of an eval-mode
    teacher (:func:`detjax.train.distill.load_teacher`); it needs ``config.distill``.
    """
    if (teacher is None) != (config.distill is None):
        raise ValueError("a teacher needs StepConfig.distill and StepConfig.distill a teacher")
    teacher_graphdef, teacher_state = teacher if teacher is not None else (None, None)
    graphdef, eval_graphdef, params, stats, other = split_model(model)
    copy = lambda t: jax.tree.map(jnp.array, t)
    return TrainState(
        params=params, batch_stats=stats, other=other,
        opt_state=_init_opt_state(config.tx, params),
        ema_params=copy(params), ema_stats=copy(stats),
        step=jnp.zeros((), jnp.int32), iteration=jnp.zeros((), jnp.int32),
        loss_scale=jnp.asarray(config.init_loss_scale if config.precision == "f16" else 1.0,
                               jnp.float32),
        good_steps=jnp.zeros((), jnp.int32),
        epochs=jnp.asarray(epochs, jnp.int32),
        graphdef=graphdef, eval_graphdef=eval_graphdef, config=config,
        teacher=teacher_state, teacher_graphdef=teacher_graphdef)


def with_batchnorm_axis(state: TrainState, axis_name: str | None) -> TrainState:
    """The same state whose BatchNorm layers reduce statistics over ``axis_name`` (pmap sync BN).

    Under ``jax.pmap`` each device sees only its shard; naming the mapped axis makes
    ``nnx.BatchNorm`` average mean and variance across devices, so statistics (and results)
    equal a single device on the global batch. The sharded ``jit`` path needs no change.
    """
    graphdefs = []
    for graphdef in (state.graphdef, state.eval_graphdef):
        model = nnx.merge(graphdef, state.params, state.batch_stats, state.other)
        for _, module in model.iter_modules():
            if isinstance(module, nnx.BatchNorm):
                module.axis_name = axis_name
        graphdefs.append(nnx.split(model, nnx.Param, nnx.BatchStat, ...)[0])
    return state.replace(graphdef=graphdefs[0], eval_graphdef=graphdefs[1])


def ema_model(state: TrainState) -> nnx.Module:
    """The EMA weights as an NNX model in eval mode (for export, inference, checkpoints)."""
    return nnx.merge(state.eval_graphdef, state.ema_params, state.ema_stats, state.other)


def train_model(state: TrainState) -> nnx.Module:
    """The raw (non-EMA) weights as an NNX model in train mode."""
    return nnx.merge(state.graphdef, state.params, state.batch_stats, state.other)
