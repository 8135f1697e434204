"""The ultralytics optimiser recipe as pure functions: parameter groups, warmup, lr schedule,
nominal-batch accumulation, gradient clipping, SGD (Nesterov) and AdamW.

Reference: ultralytics ``engine/trainer.py`` (``build_optimizer``, the warmup block of
``_do_train``, ``optimizer_step``) and ``utils/torch_utils.py`` (``one_cycle``), in the classic
8.x form the issue specifies:

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
  global norm ``grad_clip`` (torch ``clip_grad_norm_``: ``coef = max / (norm + 1e-6)``, applied
  when < 1), then torch ``SGD(momentum, nesterov=True)`` with coupled weight decay, or torch
  ``AdamW(betas=(momentum, 0.999), eps=1e-8)`` with decoupled decay.

Everything here is a pure function of the iteration counter, so it runs inside ``jax.jit``; the
NumPy twin ``schedule_numpy`` is what the loop logs and what the tests compare against.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

Group = Literal["weight", "bn", "bias"]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """Static optimiser hyperparameters (hashable: lives in the jitted step as a constant).

    ``batch`` is the global batch of one iteration; ``iters_per_epoch`` is ``nb``.
    Defaults equal ultralytics ``cfg/default.yaml``.
    """

    iters_per_epoch: int
    epochs: int
    batch: int
    optimizer: Literal["sgd", "adamw"] = "sgd"
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

    def __post_init__(self):
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "linear", "step"):
            raise ValueError(
                f"schedule must be 'cosine', 'linear' or 'step', got {self.schedule!r}")
        if self.iters_per_epoch < 1 or self.epochs < 1 or self.batch < 1:
            raise ValueError("iters_per_epoch, epochs and batch must be >= 1, got "
                             f"{self.iters_per_epoch}, {self.epochs}, {self.batch}")

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
    """``schedule`` on the host, as plain floats (for logging)."""
    h = schedule(np.asarray(ni), cfg, xp=np, epochs=epochs)
    return {k: float(v) for k, v in h._asdict().items()}


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
    """A tree of group names with the structure of ``params``."""
    return jax.tree_util.tree_map_with_path(param_group, params)


# ----------------------------------------------------------------------------- clipping


def global_norm(tree) -> jax.Array:
    leaves = jax.tree.leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def clip_by_global_norm(grads, max_norm: float):
    """torch ``clip_grad_norm_``: scale by ``min(max_norm / (norm + 1e-6), 1)``; also the norm."""
    norm = global_norm(grads)
    coef = jnp.minimum(max_norm / (norm + 1e-6), 1.0)
    return jax.tree.map(lambda g: (g * coef).astype(g.dtype), grads), norm


# ----------------------------------------------------------------------------- optimisers


class SGDState(NamedTuple):
    momentum_buffer: Any


class AdamWState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def init(params, cfg: OptimConfig) -> SGDState | AdamWState:
    zeros = lambda: jax.tree.map(jnp.zeros_like, params)
    if cfg.optimizer == "sgd":
        return SGDState(zeros())
    return AdamWState(jnp.zeros((), jnp.int32), zeros(), zeros())


def _lr_tree(groups, hyper: Hyper):
    table = {"bias": hyper.lr_bias, "bn": hyper.lr_bn, "weight": hyper.lr_weight}
    return jax.tree.map(lambda g: table[g], groups)


def _decay_tree(groups, weight_decay: float):
    return jax.tree.map(lambda g: weight_decay if g == "weight" else 0.0, groups)


def sgd_update(grads, state: SGDState, params, *, lrs, decays, momentum):
    """torch ``SGD(nesterov=True)``: ``g += wd p; b = mu b + g; p -= lr (g + mu b)``."""
    def one(g, b, p, lr, wd):
        g = g + wd * p
        b = momentum * b + g
        return p - lr * (g + momentum * b), b

    out = jax.tree.map(one, grads, state.momentum_buffer, params, lrs, decays)
    new_params = jax.tree.map(lambda o: o[0], out, is_leaf=lambda x: isinstance(x, tuple))
    new_buf = jax.tree.map(lambda o: o[1], out, is_leaf=lambda x: isinstance(x, tuple))
    return new_params, SGDState(new_buf)


def adamw_update(grads, state: AdamWState, params, *, lrs, decays, beta1, beta2, eps):
    """torch ``AdamW``: ``p *= 1 - lr wd``, bias-corrected Adam step with ``eps`` outside sqrt."""
    count = state.count + 1
    c1 = 1 - beta1 ** count.astype(jnp.float32)
    c2 = 1 - beta2 ** count.astype(jnp.float32)

    def one(g, m, v, p, lr, wd):
        p = p * (1 - lr * wd)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        return p - lr * (m / c1) / (jnp.sqrt(v / c2) + eps), m, v

    out = jax.tree.map(one, grads, state.mu, state.nu, params, lrs, decays)
    pick = lambda i: jax.tree.map(lambda o: o[i], out, is_leaf=lambda x: isinstance(x, tuple))
    return pick(0), AdamWState(count, pick(1), pick(2))


def apply_update(grads, opt_state, params, hyper: Hyper, cfg: OptimConfig):
    """Clip, then one SGD / AdamW step with per-group lr and decay -> (params, state, norm)."""
    grads, norm = clip_by_global_norm(grads, cfg.grad_clip)
    groups = param_groups(params)
    lrs = _lr_tree(groups, hyper)
    decays = _decay_tree(groups, cfg.scaled_weight_decay)
    if cfg.optimizer == "sgd":
        params, opt_state = sgd_update(grads, opt_state, params, lrs=lrs, decays=decays,
                                       momentum=hyper.momentum)
    else:
        params, opt_state = adamw_update(grads, opt_state, params, lrs=lrs, decays=decays,
                                         beta1=cfg.momentum, beta2=cfg.adam_beta2,
                                         eps=cfg.adam_eps)
    return params, opt_state, norm
