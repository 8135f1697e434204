"""The ultralytics optimiser recipe as one ``optax.GradientTransformation``.

Reference: ultralytics ``engine/trainer.py`` (``build_optimizer``, the warmup block of
``_do_train``, ``optimizer_step``) and ``utils/torch_utils.py`` (``one_cycle``), in the classic
8.x form:

- groups: ``bias`` (every parameter named ``bias``, no decay), ``bn`` (norm scales and any other
  1-D parameter, no decay), ``weight`` (kernels, decay);
- ``accumulate = max(round(nbs / batch), 1)``, ``weight_decay *= batch * accumulate / nbs``;
- ``nw = max(round(warmup_epochs * nb), warmup_min_iters)`` warmup iterations (``-1`` when
  ``warmup_epochs <= 0``); for iteration ``ni <= nw``: ``accumulate`` ramps 1 -> ``nbs / batch``,
  bias lr ``warmup_bias_lr -> lr0 * lf(epoch)``, other lrs ``0 -> lr0 * lf(epoch)``, momentum
  ``warmup_momentum -> momentum`` (linear ``np.interp``); afterwards lr is ``lr0 * lf(epoch)``;
- ``lf`` cosine (``one_cycle(1, lrf, epochs)``), linear (``(1 - e / epochs) * (1 - lrf) + lrf``)
  or step decay (``gamma ** #milestones passed``, an option ultralytics does not have);
- an optimiser step when ``ni - last_opt_step >= accumulate``: clip the summed gradient to
  global norm ``grad_clip``, then torch ``SGD(momentum, nesterov=True)`` with coupled weight
  decay, or torch ``AdamW(betas=(momentum, 0.999), eps=1e-8)`` with decoupled decay.

:func:`recipe` builds it from Optax parts::

    MultiSteps(                               # gradient accumulation (summed), k(step)
        chain(clip_by_global_norm(grad_clip),
              inject_hyperparams(groups)(     # lr, bias lr, momentum: schedules of the step
                  chain(scale_by_adam(b1, b2, eps) | trace(momentum, nesterov=True),
                        add_decayed_weights(wd, mask=kernels),   # where torch decays
                        scale_by_group_learning_rate(lr, bias_lr)))),
        every_k_schedule=accumulate_of_step, use_grad_mean=False)

(SGD adds the decay before the momentum trace: torch's coupled decay.) Other Optax optimisers
run whole per group under ``optax.multi_transform``.

Ultralytics schedules are functions of the micro-batch iteration ``ni`` (and of the epoch
``ni // nb``: lr is constant within an epoch after warmup), while Optax schedules see the
optimiser step count. The accumulate ramp is deterministic, so the ``ni`` of every optimiser step
is known in advance (:func:`iteration_of_step`): a table over the warmup, then one step per
``accumulate`` iterations. The schedules evaluate the ultralytics formulas at that ``ni``;
``MultiSteps`` takes its ``every_k_schedule`` from the same table, so steps fire exactly where
``ni - last_opt_step >= accumulate`` fires.

The schedule length is an Optax extra argument: ``tx.update(grads, state, params, epochs=n)``
(absent or ``n <= 0``: ``OptimConfig.epochs``). The train step passes ``TrainState.epochs``,
which the loop lowers to fit ``train.time_limit`` without recompiling.

Clipping: torch ``clip_grad_norm_`` scales by ``max / (norm + 1e-6)``, ``optax.clip_by_global_norm``
by ``max / norm``; they differ by a factor ``1 + 1e-6 / norm``, and clipping only acts when
``norm > max``, so the relative difference is below ``1e-6 / grad_clip`` (1e-7 at the default 10,
under float32 resolution). ``tests/test_train_optim.py`` checks every step against torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

Group = Literal["weight", "bn", "bias"]

# optax functions with a ``learning_rate`` first argument that are not whole optimisers, or
# need more than a gradient (lbfgs reads the loss value through extra arguments)
_NOT_OPTIMIZERS = ("lbfgs", "scale_by_learning_rate", "scale_by_rprop")


@functools.cache
def optax_optimizers() -> tuple[str, ...]:
    """Names of the Optax optimisers ``train.optimizer`` accepts besides ``sgd | adamw | auto``
    (every ``optax.<name>(learning_rate, ...)`` alias, e.g. ``lion``, ``adafactor``, ``lamb``)."""
    names = []
    for name in dir(optax):
        fn = getattr(optax, name)
        if name.startswith("_") or name in _NOT_OPTIMIZERS or inspect.isclass(fn):
            continue
        try:
            params = list(inspect.signature(fn).parameters)
        except (TypeError, ValueError):
            continue
        if params[:1] == ["learning_rate"]:
            names.append(name)
    return tuple(sorted(names))


def _check_optimizer(name: str) -> None:
    valid = ("sgd", "adamw", *(n for n in optax_optimizers() if n not in ("sgd", "adamw")))
    if name not in valid:
        close = difflib.get_close_matches(name, valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(f"unknown optimizer {name!r}{hint}; valid: auto, {', '.join(valid)}")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Static optimiser hyperparameters (hashable: :func:`recipe` caches on it).

    ``batch`` is the global batch of one iteration; ``iters_per_epoch`` is ``nb``. ``optimizer``
    is ``sgd`` (torch Nesterov SGD), ``adamw`` (torch AdamW) or the name of any Optax optimiser
    (:func:`optax_optimizers`), called as ``optax.<name>(learning_rate=..., **optimizer_kwargs)``
    per group, with the scaled ``weight_decay`` on kernels when it takes a ``weight_decay`` (a
    ``weight_decay`` in ``optimizer_kwargs`` applies to every group instead).
    Defaults equal ultralytics ``cfg/default.yaml``.
    """

    iters_per_epoch: int
    epochs: int
    batch: int
    optimizer: str = "sgd"
    lr0: float = 0.01
    lrf: float = 0.01
    momentum: float = 0.937
    weight_decay: float = 5e-4
    nbs: int = 64
    warmup_epochs: float = 3.0
    warmup_min_iters: int = 100
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    schedule: Literal["cosine", "linear", "step"] = "linear"
    step_milestones: tuple[float, ...] = (0.7, 0.9)
    step_gamma: float = 0.1
    grad_clip: float = 10.0
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    optimizer_kwargs: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self):
        _check_optimizer(self.optimizer)
        if self.schedule not in ("cosine", "linear", "step"):
            raise ValueError(
                f"schedule must be 'cosine', 'linear' or 'step', got {self.schedule!r}")
        if self.iters_per_epoch < 1 or self.epochs < 1 or self.batch < 1:
            raise ValueError("iters_per_epoch, epochs and batch must be >= 1, got "
                             f"{self.iters_per_epoch}, {self.epochs}, {self.batch}")
        kwargs = dict(self.optimizer_kwargs)
        if "learning_rate" in kwargs:
            raise ValueError("optimizer_kwargs may not set learning_rate: the recipe schedules "
                             "it from lr0 (use train.lr0)")
        if kwargs and self.optimizer in ("sgd", "adamw"):
            raise ValueError(f"optimizer_kwargs are for Optax optimisers; {self.optimizer!r} "
                             f"takes its settings from lr0 / momentum / weight_decay, got {kwargs}")

    @property
    def accumulate(self) -> int:
        """Nominal micro-batches per optimiser step: ``max(round(nbs / batch), 1)``."""
        return max(round(self.nbs / self.batch), 1)

    @property
    def scaled_weight_decay(self) -> float:
        """``weight_decay * batch * accumulate / nbs`` (ultralytics nominal-batch scaling)."""
        return self.weight_decay * self.batch * self.accumulate / self.nbs

    @property
    def warmup_iters(self) -> int:
        """``max(round(warmup_epochs * nb), warmup_min_iters)``, or -1 without warmup."""
        if self.warmup_epochs <= 0:
            return -1
        return max(round(self.warmup_epochs * self.iters_per_epoch), self.warmup_min_iters)


# ----------------------------------------------------------------------------- schedule of ni


def lr_factor(epoch, cfg: OptimConfig, xp=jnp, epochs=None):
    """``lf(epoch)``: the multiplier of ``lr0`` at (integer) ``epoch``; ``xp`` is jnp or np.

    ``epochs`` (default ``cfg.epochs``) may be traced: the loop shortens a run to a time limit
    without recompiling the step.
    """
    epoch = xp.asarray(epoch, dtype=xp.float32)
    total = xp.asarray(cfg.epochs if epochs is None else epochs, dtype=xp.float32)
    if cfg.schedule == "cosine":
        ramp = xp.maximum((1 - xp.cos(epoch * math.pi / total)) / 2, 0.0)
        return ramp * (cfg.lrf - 1.0) + 1.0
    if cfg.schedule == "linear":
        return xp.maximum(1 - epoch / total, 0.0) * (1.0 - cfg.lrf) + cfg.lrf
    passed = sum((epoch >= xp.round(m * total)).astype(xp.float32) for m in cfg.step_milestones)
    return cfg.step_gamma ** passed


class Hyper(NamedTuple):
    """Per-iteration hyperparameters: lr per group, momentum and the accumulate target."""

    lr_bias: jax.Array
    lr_bn: jax.Array
    lr_weight: jax.Array
    momentum: jax.Array
    accumulate: jax.Array


def _interp(x, x1, y0, y1, xp):
    # np.interp on [0, x1] -> [y0, y1] for 0 <= x <= x1
    t = xp.clip(x / max(x1, 1), 0.0, 1.0)
    return y0 + t * (y1 - y0)


def schedule(ni, cfg: OptimConfig, xp=jnp, epochs=None) -> Hyper:
    """Hyperparameters for iteration ``ni`` (micro-batches seen, ultralytics ``ni``)."""
    ni = xp.asarray(ni)
    epoch = ni // cfg.iters_per_epoch
    target = cfg.lr0 * lr_factor(epoch, cfg, xp, epochs)
    nw = cfg.warmup_iters
    nif = ni.astype(xp.float32)
    acc0 = float(cfg.accumulate)
    if nw > 0:
        warm = ni <= nw
        lr_bias = xp.where(warm, _interp(nif, nw, cfg.warmup_bias_lr, target, xp), target)
        lr_other = xp.where(warm, _interp(nif, nw, 0.0, target, xp), target)
        momentum = xp.where(warm, _interp(nif, nw, cfg.warmup_momentum, cfg.momentum, xp),
                            cfg.momentum)
        ramp = xp.maximum(1.0, xp.round(_interp(nif, nw, 1.0, cfg.nbs / cfg.batch, xp)))
        accumulate = xp.where(warm, ramp, acc0)
    else:
        lr_bias = lr_other = target
        momentum = xp.asarray(cfg.momentum, xp.float32)
        accumulate = xp.asarray(acc0, xp.float32)
    f32 = lambda v: xp.asarray(v, dtype=xp.float32)
    return Hyper(f32(lr_bias), f32(lr_other), f32(lr_other), f32(momentum),
                 xp.asarray(accumulate).astype(xp.int32))


def schedule_numpy(ni: int, cfg: OptimConfig, epochs=None) -> dict[str, float]:
    """``schedule`` on the host, as plain floats."""
    h = schedule(np.asarray(ni), cfg, xp=np, epochs=epochs)
    return {k: float(v) for k, v in h._asdict().items()}


# ----------------------------------------------------------------------------- ni of a step


@functools.cache
def _warmup_step_iterations(cfg: OptimConfig) -> np.ndarray:
    """``ni`` of every optimiser step up to the first one at or after the end of warmup,
    by the ultralytics rule ``ni - last_opt_step >= accumulate(ni)``; empty when every
    step is ``accumulate`` iterations long (no warmup, or ``accumulate == 1``)."""
    nw = cfg.warmup_iters
    if nw <= 0 or cfg.accumulate == 1:
        return np.zeros(0, np.int32)
    ramp = schedule(np.arange(nw + cfg.accumulate + 1), cfg, xp=np).accumulate.tolist()
    out, last, ni = [], -1, 0
    while last < nw:
        if ni - last >= ramp[ni]:
            out.append(ni)
            last = ni
        ni += 1
    return np.asarray(out, np.int32)


def iteration_of_step(step, cfg: OptimConfig) -> jax.Array:
    """The iteration ``ni`` at which optimiser step ``step`` (0-based) happens."""
    step = jnp.asarray(step, jnp.int32)
    table = _warmup_step_iterations(cfg)
    n = len(table)
    last = int(table[-1]) if n else -1
    after = last + (step - n + 1) * cfg.accumulate
    if n == 0:
        return after
    return jnp.where(step < n, jnp.asarray(table)[jnp.clip(step, 0, n - 1)], after)


def accumulate_of_step(step, cfg: OptimConfig) -> jax.Array:
    """Micro-batches summed into optimiser step ``step``: the ``every_k_schedule`` of
    ``optax.MultiSteps``."""
    step = jnp.asarray(step, jnp.int32)
    previous = jnp.where(step > 0, iteration_of_step(step - 1, cfg), -1)
    return iteration_of_step(step, cfg) - previous


# ----------------------------------------------------------------------------- groups


def _leaf_name(path) -> str:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [str(n) for n in names if n is not None and n != "value"]
    return names[-1] if names else ""


def param_group(path, leaf) -> Group:
    """ultralytics group of one parameter from its tree path and shape.

    ``bias`` by name first (as ``"bias" in fullname``), then norm scales / 1-D leaves -> ``bn``,
    everything else (conv and dense kernels) -> ``weight``.
    """
    name = _leaf_name(path)
    if "bias" in name:
        return "bias"
    if name == "scale" or jnp.ndim(leaf) <= 1:
        return "bn"
    return "weight"


def param_groups(params) -> Any:
    """A tree of group names with the structure of ``params`` (``optax.multi_transform`` labels)."""
    return jax.tree_util.tree_map_with_path(param_group, params)


# ----------------------------------------------------------------------------- the recipe


class _StepSchedule(optax.schedules.WrappedSchedule):
    """An Optax stateful schedule ``fn(step, epochs)``: ``step`` counts optimiser steps,
    ``epochs`` is the ``epochs`` extra argument of ``update`` (absent or <= 0: as built)."""

    def __call__(self, state, **extra_args):
        return self.schedule_fn(state.count, extra_args.get("epochs"))


def _hyper_of_step(step, epochs, *, cfg: OptimConfig, field: str) -> jax.Array:
    if epochs is not None:
        epochs = jnp.where(jnp.asarray(epochs) > 0, epochs, cfg.epochs)
    return getattr(schedule(iteration_of_step(step, cfg), cfg, epochs=epochs), field)


def _by_group(weight, bn, bias) -> optax.GradientTransformation:
    return optax.multi_transform({"weight": weight, "bn": bn, "bias": bias}, param_groups)


def scale_by_group_learning_rate(learning_rate, bias_learning_rate
                                 ) -> optax.GradientTransformation:
    """Multiplies each update by ``-bias_learning_rate`` (``bias`` group) or ``-learning_rate``
    (``weight`` and ``bn``): torch param groups that differ only in lr, as one elementwise
    pass (``optax.multi_transform`` over three full optimisers cost 1.3x the update time)."""

    def update(updates, state, params=None):
        del params
        lr = lambda group: bias_learning_rate if group == "bias" else learning_rate
        return jax.tree.map(lambda u, g: -lr(g) * u, updates, param_groups(updates)), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _kernels(params) -> Any:
    """``optax.masked`` mask of the ``weight`` group (the one ultralytics decays)."""
    return jax.tree.map(lambda g: g == "weight", param_groups(params))


def _group_factory(cfg: OptimConfig):
    """``factory(**hyperparameters) -> transformation`` of the three groups for
    ``optax.inject_hyperparams``; returns it with its hyperparameters (schedules or values)."""
    wd = cfg.scaled_weight_decay
    sched = lambda field: _StepSchedule(functools.partial(_hyper_of_step, cfg=cfg, field=field))
    lrs = {"learning_rate": sched("lr_weight"), "bias_learning_rate": sched("lr_bias")}
    if cfg.optimizer == "sgd":
        def factory(learning_rate, bias_learning_rate, momentum):
            # torch SGD: g + wd * p on kernels, then Nesterov momentum, then -lr of the group
            return optax.chain(optax.add_decayed_weights(wd, mask=_kernels),
                               optax.trace(decay=momentum, nesterov=True),
                               scale_by_group_learning_rate(learning_rate, bias_learning_rate))
        return factory, {**lrs, "momentum": sched("momentum")}
    if cfg.optimizer == "adamw":
        # ultralytics' warmup sets only groups that have a "momentum" key: AdamW's beta1 stays
        def factory(learning_rate, bias_learning_rate, momentum):
            # torch AdamW: p -= lr * (adam + wd * p), decay on kernels only
            return optax.chain(optax.scale_by_adam(b1=momentum, b2=cfg.adam_beta2,
                                                   eps=cfg.adam_eps),
                               optax.add_decayed_weights(wd, mask=_kernels),
                               scale_by_group_learning_rate(learning_rate, bias_learning_rate))
        return factory, {**lrs, "momentum": cfg.momentum}
    fn = getattr(optax, cfg.optimizer)
    kwargs = dict(cfg.optimizer_kwargs)
    params = inspect.signature(fn).parameters
    decays = "weight_decay" in params and "weight_decay" not in kwargs
    # the logged momentum: the optimiser's own momentum / beta1, held as a constant (0 = none)
    beta = next((n for n in ("momentum", "b1")
                 if n in params and kwargs.get(n, params[n].default) is not None), None)
    momentum = float(kwargs.pop(beta, params[beta].default)) if beta else 0.0

    def factory(learning_rate, bias_learning_rate, momentum):
        def one(lr, decay):
            own = {beta: momentum} if beta else {}
            return fn(learning_rate=lr, **({"weight_decay": decay} if decays else {}), **own,
                      **kwargs)
        return _by_group(one(learning_rate, wd), one(learning_rate, 0.0),
                         one(bias_learning_rate, 0.0))
    return factory, {**lrs, "momentum": momentum}


@functools.cache
def recipe(cfg: OptimConfig) -> optax.GradientTransformation:
    """The ultralytics recipe for ``cfg`` as one Optax transformation (see the module docstring).

    Call ``update`` once per micro-batch with the micro-batch gradient; the updates are zero
    until an optimiser step. ``update(..., epochs=n)`` sets the schedule length. Equal configs
    give the same object, so train states built from them share compiled steps.
    """
    factory, hyper = _group_factory(cfg)
    groups = optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(**hyper)
    inner = optax.chain(optax.clip_by_global_norm(cfg.grad_clip) if cfg.grad_clip > 0
                        else optax.identity(), groups)
    if cfg.accumulate == 1:
        return inner
    every_k = functools.partial(accumulate_of_step, cfg=cfg)
    return optax.MultiSteps(inner, every_k_schedule=every_k,
                            use_grad_mean=False).gradient_transformation()


# ----------------------------------------------------------------------------- from a Config


def auto_optimizer(*, num_classes: int, iterations: int) -> tuple[str, float, float]:
    """ultralytics ``optimizer=auto``: ``(name, lr0, momentum)``.

    AdamW with ``lr0 = round(0.002 * 5 / (4 + num_classes), 6)`` and momentum 0.9 for runs of
    at most 10,000 iterations, else SGD with lr0 0.01 and momentum 0.9 (classic 8.x; recent
    ultralytics picks its MuSGD there).
    """
    if iterations > 10000:
        return "sgd", 0.01, 0.9
    return "adamw", round(0.002 * 5 / (4 + num_classes), 6), 0.9


def auto_iterations(*, iters_per_epoch: int, batch: int, nbs: int, epochs: int) -> int:
    """ultralytics' ``iterations`` for ``auto``: ``ceil(N / max(batch, nbs)) * epochs`` with
    ``N = iters_per_epoch * batch`` images (optimiser steps at the nominal batch)."""
    return math.ceil(iters_per_epoch * batch / max(batch, nbs)) * epochs


def optimizer_config(config, *, iters_per_epoch: int, num_classes: int) -> OptimConfig:
    """The :class:`OptimConfig` of a detjax ``Config`` (``train.*``), ``auto`` resolved."""
    t = config.train
    name = str(t.optimizer).lower()
    lr0, momentum, warmup_bias_lr = float(t.lr0), float(t.momentum), float(t.warmup_bias_lr)
    if name == "auto":
        iterations = auto_iterations(iters_per_epoch=iters_per_epoch, batch=int(t.batch),
                                     nbs=int(t.nbs), epochs=int(t.epochs))
        name, lr0, momentum = auto_optimizer(num_classes=num_classes, iterations=iterations)
        warmup_bias_lr = 0.0  # ultralytics: bias warmup starts at zero under auto
    kwargs = t.optimizer_kwargs
    kwargs = dict(kwargs.to_dict() if hasattr(kwargs, "to_dict") else kwargs or {})
    frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in kwargs.items()))
    return OptimConfig(
        iters_per_epoch=iters_per_epoch, epochs=int(t.epochs), batch=int(t.batch),
        optimizer=name, lr0=lr0, lrf=float(t.lrf), momentum=momentum,
        weight_decay=float(t.weight_decay), nbs=int(t.nbs), warmup_epochs=float(t.warmup_epochs),
        warmup_min_iters=int(t.warmup_min_iters), warmup_momentum=float(t.warmup_momentum),
        warmup_bias_lr=warmup_bias_lr, schedule=t.schedule,
        step_milestones=tuple(t.step_milestones), step_gamma=float(t.step_gamma),
        grad_clip=float(t.grad_clip), optimizer_kwargs=frozen)


def make_optimizer(config, *, iters_per_epoch: int, num_classes: int
                   ) -> optax.GradientTransformation:
    """The training recipe of a detjax ``Config`` as one ``optax.GradientTransformation``.

    ``train.optimizer`` is ``sgd``, ``adamw``, ``auto`` (ultralytics' choice by run length,
    :func:`auto_optimizer`) or an Optax optimiser name with ``train.optimizer_kwargs``; groups,
    warmup, decay, clipping and accumulation follow ``train.*``. Example::

        tx = make_optimizer(load_config(None, ["train.optimizer=lion"]),
                            iters_per_epoch=250, num_classes=80)
        opt_state = tx.init(params)
        updates, opt_state = tx.update(grads, opt_state, params)
    """
    tx = recipe(optimizer_config(config, iters_per_epoch=iters_per_epoch,
                                 num_classes=num_classes))
    freeze = int(config.train.get("freeze", 0) or 0)
    return with_frozen_layers(tx, freeze) if freeze else tx


@functools.cache
def with_frozen_layers(tx: optax.GradientTransformation, n: int
                       ) -> optax.GradientTransformation:
    """``tx`` with the layers ``model.0 .. model.{n-1}`` frozen (ultralytics ``freeze: N``,
    :func:`detjax.models.freeze_mask`): their gradients are zeroed before ``tx`` (so they leave
    the clipping norm, as frozen torch parameters without a gradient do) and their updates
    after it (no decoupled weight decay). BatchNorm statistics still update, as in ultralytics."""
    from detjax.models import freeze_mask

    mask = functools.partial(freeze_mask, n=n)
    return optax.chain(optax.masked(optax.set_to_zero(), mask), tx,
                       optax.masked(optax.set_to_zero(), mask))


def describe(config, *, iters_per_epoch: int, num_classes: int) -> str:
    """One line saying which optimiser the recipe runs (and why, for ``auto``)."""
    oc = optimizer_config(config, iters_per_epoch=iters_per_epoch, num_classes=num_classes)
    why = ""
    if str(config.train.optimizer).lower() == "auto":
        n = auto_iterations(iters_per_epoch=iters_per_epoch, batch=oc.batch, nbs=oc.nbs,
                            epochs=oc.epochs)
        why = f" (auto: {n} iterations {'>' if n > 10000 else '<='} 10000)"
    own = oc.optimizer in ("sgd", "adamw")  # others keep their own momentum / betas
    extra = f", momentum={oc.momentum:g}" if own else f", optax.{oc.optimizer}"
    extra += f" {dict(oc.optimizer_kwargs)}" if oc.optimizer_kwargs else ""
    return (f"optimizer: {oc.optimizer}{why}, lr0={oc.lr0:g}{extra}; "
            f"{oc.schedule} decay to lrf={oc.lrf:g}, warmup {max(oc.warmup_iters, 0)} iterations, "
            f"accumulate {oc.accumulate}, weight_decay {oc.scaled_weight_decay:g}")


# ----------------------------------------------------------------------------- reading a state


def _find(opt_state, name: str):
    found = optax.tree_utils.tree_get_all_with_path(
        opt_state, name, lambda path, v: isinstance(v, jax.Array) and v.ndim == 0)
    return found[0][1] if found else None


def hyperparams(opt_state) -> dict[str, jax.Array]:
    """``lr``, ``lr_bias`` and ``momentum`` of the last optimiser step, read from an Optax state
    by name (the ``learning_rate``, ``bias_learning_rate``, ``momentum`` / ``b1`` entries that
    ``optax.inject_hyperparams`` keeps); NaN where the state has none."""
    nan = jnp.asarray(jnp.nan, jnp.float32)
    lr = _find(opt_state, "learning_rate")
    lr_bias = _find(opt_state, "bias_learning_rate")
    momentum = _find(opt_state, "momentum")
    momentum = _find(opt_state, "b1") if momentum is None else momentum
    f32 = lambda v, default: default if v is None else jnp.asarray(v, jnp.float32)
    return {"lr": f32(lr, nan), "lr_bias": f32(lr_bias, f32(lr, nan)),
            "momentum": f32(momentum, nan)}


def optimizer_step_taken(old_state, new_state) -> jax.Array:
    """Whether an update applied an optimiser step: ``optax.MultiSteps`` advanced its
    ``gradient_step``; any other transformation steps on every update."""
    if isinstance(new_state, optax.MultiStepsState):
        return new_state.gradient_step > old_state.gradient_step
    return jnp.asarray(True)
