"""Pure ``train_step(state, batch) -> (state, metrics)`` and ``eval_forward(state, images)``,
with three ways to run them data parallel.

Batch: ``images`` uint8 (or float in 0..1) ``[B, H, W, 3]``, ``boxes`` float32
``[B, max_boxes, 4]`` xyxy pixels, ``labels`` int32 ``[B, max_boxes]``, ``gt_mask`` bool
``[B, max_boxes]``; any other keys pass through to ``model.loss``.

One call is one ultralytics iteration ``ni``: forward + backward on the batch, then
``StepConfig.tx.update(grads, opt_state, params, epochs=state.epochs)`` and
``optax.apply_updates``. The transformation decides when an optimiser step happens (the recipe
wraps ``optax.MultiSteps``, which returns zero updates until ``accumulate`` micro-batches are
summed); the EMA updates on every optimiser step. BN statistics update every iteration; the EMA
covers weights and BN statistics. Metrics: the loss and its parts, ``lr`` / ``lr_bias`` /
``momentum`` of the last optimiser step (read from the Optax state, NaN when it keeps none),
``grad_norm`` (global norm of this iteration's gradient, before clipping), ``optimizer_step``,
``finite`` and ``loss_scale``.

Precision (``StepConfig.precision``): ``f32``; ``bf16`` casts weights and images to bfloat16
for the forward/backward while the master weights, optimiser, EMA and loss stay float32 (the
TPU path); ``f16`` does the same in float16 with dynamic loss scaling (torch ``GradScaler``:
scale 2**16, halved on a non-finite gradient, doubled after 2000 good optimiser steps). A
non-finite micro-batch is dropped whole: parameters, optimiser state (so also the accumulated
gradient) and EMA stay as they were.

Parallelism, all on the same global batch and equal to one device:
- single device: ``jax.jit(train_step)``;
- ``pmap_train_step``: ``jax.pmap`` with gradients ``pmean``-ed and BatchNorm statistics synced
  over the mapped axis (``state.with_batchnorm_axis``); state replicated with ``replicate``;
- ``sharded_train_step``: ``jax.jit`` over a ``Mesh`` with the batch ``NamedSharding``-ed along
  ``data`` and the state replicated (multi-host: call ``jax.distributed.initialize()`` first and
  build global batches with ``global_batch``).
A loss normalised inside the batch (ultralytics divides by the batch's ``target_scores_sum``)
equals the single-device value exactly on the ``jit`` path; under ``pmap`` each device
normalises its own shard, as ultralytics DDP does.

Distillation (``state.teacher`` set, :mod:`detjax.train.distill`): the frozen teacher runs in
the same program on the same images; its distillation terms are added to the loss and logged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from detjax.train import distill, optim
from detjax.train import ema as ema_lib
from detjax.train.state import TrainState, with_batchnorm_axis


def images_to_float(images: jax.Array, dtype=jnp.float32) -> jax.Array:
    """uint8 ``[B, H, W, 3]`` -> ``dtype`` in 0..1; float input is only cast."""
    if images.dtype == jnp.uint8:
        return images.astype(dtype) / jnp.asarray(255.0, dtype)
    return images.astype(dtype)


def _cast_floating(tree, dtype):
    cast = lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
    return jax.tree.map(cast, tree)


def _loss_fn(params, state: TrainState, batch: dict, loss_scale, global_batch: int):
    cfg = state.config
    dtype = cfg.compute_dtype
    model = nnx.merge(state.graphdef, _cast_floating(params, dtype), state.batch_stats,
                      state.other, copy=True)
    images = images_to_float(batch["images"], dtype)
    if state.teacher is None:
        outputs, distill_items = model(images), {}
    else:  # the frozen teacher: eval mode, no gradient, the same pixels
        teacher = nnx.merge(state.teacher_graphdef,
                            _cast_floating(jax.lax.stop_gradient(state.teacher), dtype),
                            copy=True)
        outputs, distill_items = distill.distill_forward(model, teacher, images, cfg.distill)
    outputs = _cast_floating(outputs, jnp.float32)
    loss, components = model.loss(outputs, batch, **dict(cfg.loss_hyp))
    loss = loss.astype(jnp.float32) + sum(distill_items.values(), jnp.float32(0.0))
    components = {**components, **distill_items}
    _, _, new_stats, new_other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    new_stats = jax.tree.map(lambda n, o: n.astype(o.dtype), new_stats, state.batch_stats)
    scaled = loss * (global_batch if cfg.loss_times_batch else 1.0) * loss_scale
    aux = (loss, components, new_stats, new_other)
    return scaled, aux


def _tree_where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


def _global_norm(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _all_finite(tree) -> jax.Array:
    return jnp.all(jnp.asarray([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def train_step(state: TrainState, batch: dict, *, axis_name: str | None = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """One iteration (see the module docstring). Pure; jit it, or use the parallel wrappers.

    ``axis_name``: the mapped axis under ``jax.pmap`` (gradients and metrics are averaged over
    it); ``None`` on one device or with sharded ``jit``.
    """
    cfg = state.config
    n_dev = 1 if axis_name is None else jax.lax.psum(1, axis_name)
    global_batch = batch["images"].shape[0] * n_dev
    grad_fn = jax.grad(_loss_fn, has_aux=True)
    grads, (loss, components, new_stats, new_other) = grad_fn(
        state.params, state, batch, state.loss_scale, global_batch)
    grads = jax.tree.map(lambda g: g.astype(jnp.float32) / state.loss_scale, grads)
    if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
        loss, components = jax.lax.pmean((loss, components), axis_name)

    tx = optax.with_extra_args_support(cfg.tx)
    updates, new_opt = tx.update(grads, state.opt_state, state.params, epochs=state.epochs)
    new_params = optax.apply_updates(state.params, updates)
    finite = _all_finite(grads) if cfg.precision == "f16" else jnp.asarray(True)
    params = _tree_where(finite, new_params, state.params)
    opt_state = _tree_where(finite, new_opt, state.opt_state)
    do_step = finite & optim.optimizer_step_taken(state.opt_state, new_opt)

    step = state.step + do_step.astype(jnp.int32)  # ultralytics updates the EMA on every step
    ema_params = ema_lib.ema_update(state.ema_params, params, step, decay=cfg.ema_decay,
                                    tau=cfg.ema_tau)
    ema_stats = ema_lib.ema_update(state.ema_stats, new_stats, step, decay=cfg.ema_decay,
                                   tau=cfg.ema_tau)
    ema_params = _tree_where(do_step, ema_params, state.ema_params)
    ema_stats = _tree_where(do_step, ema_stats, state.ema_stats)

    loss_scale, good_steps = state.loss_scale, state.good_steps
    if cfg.precision == "f16":
        grow = do_step & (good_steps + 1 >= cfg.loss_scale_growth_interval)
        loss_scale = jnp.where(~finite, loss_scale * 0.5,
                               jnp.where(grow, loss_scale * 2.0, loss_scale))
        good_steps = jnp.where(do_step & ~grow, good_steps + 1,
                               jnp.where(grow | ~finite, 0, good_steps))

    new_state = state.replace(
        params=params, batch_stats=new_stats, other=new_other, opt_state=opt_state,
        ema_params=ema_params, ema_stats=ema_stats, step=step, iteration=state.iteration + 1,
        loss_scale=loss_scale, good_steps=good_steps)
    metrics = {"loss": loss, **{k: jnp.asarray(v, jnp.float32) for k, v in components.items()},
               **optim.hyperparams(opt_state), "grad_norm": _global_norm(grads),
               "optimizer_step": do_step, "finite": finite, "loss_scale": state.loss_scale}
    return new_state, metrics


def eval_forward(state: TrainState, images: jax.Array, *, use_ema: bool = True) -> jax.Array:
    """EMA (or raw) weights in eval mode: images ``[B, H, W, 3]`` -> ``[B, 4 + C, A]``, boxes
    ``cxcywh`` pixels (centre, width, height) then class scores."""
    params = state.ema_params if use_ema else state.params
    stats = state.ema_stats if use_ema else state.batch_stats
    model = nnx.merge(state.eval_graphdef, params, stats, state.other)
    dtype = state.config.compute_dtype
    outputs = model(images_to_float(images, dtype))
    return model.predict(_cast_floating(outputs, jnp.float32))


# ----------------------------------------------------------------------------- jit wrappers


def _compile(step_fn, mode: str, mesh: Mesh | None = None, axis: str = "data"):
    """``step_fn(state, batch, axis_name=None)`` compiled for one parallel mode, the state
    (first argument) donated: ``single`` (``jax.jit``), ``pmap`` (over ``AXIS``) or
    ``sharded`` (``jax.jit`` over ``mesh``: state replicated, batch split along ``axis``)."""
    if mode == "single":
        return jax.jit(step_fn, donate_argnums=0)
    if mode == "pmap":
        return jax.pmap(functools.partial(step_fn, axis_name=AXIS), axis_name=AXIS,
                        donate_argnums=0)
    if mode == "sharded":
        if mesh is None:
            raise ValueError("mode='sharded' needs a mesh")
        replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P(axis))
        return jax.jit(step_fn, in_shardings=(replicated, data),
                       out_shardings=(replicated, replicated), donate_argnums=0)
    raise ValueError(f"mode must be single|pmap|sharded, got {mode!r}")


@functools.cache
def _jitted_step():
    return _compile(train_step, "single")


def jit_train_step(state: TrainState, batch: dict):
    """``jax.jit(train_step)`` with the state donated (single device)."""
    return _jitted_step()(state, batch)


jit_eval_forward = jax.jit(eval_forward, static_argnames="use_ema")


# ----------------------------------------------------------------------------- pmap


def replicate(tree: Any, devices=None) -> Any:
    """Stacks ``tree`` once per local device (the pmap state layout ``[n_devices, ...]``)."""
    n = len(devices or jax.local_devices())
    return jax.tree.map(lambda x: jnp.broadcast_to(jnp.asarray(x), (n, *jnp.shape(x))), tree)


def unreplicate(tree: Any) -> Any:
    return jax.tree.map(lambda x: x[0], tree)


def shard_batch(batch: dict, n_devices: int | None = None) -> dict:
    """``[B, ...]`` -> ``[n_devices, B // n_devices, ...]`` for pmap."""
    n = n_devices or jax.local_device_count()

    def split(x):
        if x.shape[0] % n:
            raise ValueError(f"batch size {x.shape[0]} is not divisible by {n} devices")
        return x.reshape(n, x.shape[0] // n, *x.shape[1:])

    return jax.tree.map(split, batch)


AXIS = "batch"


def prepare_pmap_state(state: TrainState) -> TrainState:
    """Sync BatchNorm over the pmap axis, then replicate over local devices."""
    return replicate(with_batchnorm_axis(state, AXIS))


@functools.cache
def _pmapped_step():
    return _compile(train_step, "pmap")


def pmap_train_step(state: TrainState, batch: dict):
    """``jax.pmap`` data parallel step: ``state`` from ``prepare_pmap_state``, batch from
    ``shard_batch``; metrics come back per device (identical after ``pmean``)."""
    return _pmapped_step()(state, batch)


# ----------------------------------------------------------------------------- sharded jit


def make_mesh(devices=None, axis: str = "data") -> Mesh:
    """A 1-D mesh over all (global) devices for data parallelism."""
    devices = np.asarray(devices if devices is not None else jax.devices())
    return Mesh(devices.reshape(-1), (axis,))


def replicate_on_mesh(tree: Any, mesh: Mesh) -> Any:
    return jax.device_put(tree, NamedSharding(mesh, P()))


def global_batch(batch: dict, mesh: Mesh, axis: str = "data") -> dict:
    """Host batch -> global ``jax.Array`` sharded along ``axis`` on dimension 0.

    Single process: ``device_put`` of the whole batch. Multi-host (after
    ``jax.distributed.initialize()``): each process passes its local slice and
    ``jax.make_array_from_process_local_data`` assembles the global array.
    """
    sharding = NamedSharding(mesh, P(axis))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


@functools.cache
def _sharded_step(mesh: Mesh, axis: str):
    return _compile(train_step, "sharded", mesh, axis)


def sharded_train_step(state: TrainState, batch: dict, mesh: Mesh, axis: str = "data"):
    """``jax.jit`` with ``NamedSharding``: state replicated, batch split along ``axis``."""
    return _sharded_step(mesh, axis)(state, batch)


# ----------------------------------------------------------------------------- flat state


@dataclasses.dataclass(frozen=True)
class FlatState:
    """A :class:`TrainState` held as its list of leaves plus the tree structure.

    Every call of a jitted function on a ``TrainState`` rebuilds its ~1000 ``nnx.Variable``
    leaves in Python on the way out (measured: ~80 ms per step on a 2-core CPU, several times a
    GPU step of the nano model). A flat list of arrays goes through jit's C++ path instead;
    the structure is rebuilt only inside the trace. ``unflatten()`` gives the state back.
    """

    leaves: list
    treedef: Any

    @classmethod
    def of(cls, state: TrainState) -> FlatState:
        leaves, treedef = jax.tree.flatten(state)
        return cls(leaves, treedef)

    def unflatten(self) -> TrainState:
        return jax.tree.unflatten(self.treedef, self.leaves)


def make_flat_step(treedef, mode: str = "single", mesh: Mesh | None = None,
                   axis: str = "data"):
    """``step(leaves, batch) -> (leaves, metrics)``: ``train_step`` on the flattened state.

    ``mode``: ``single`` (``jax.jit``), ``pmap`` (leaves replicated by ``replicate``, batch
    from ``shard_batch``) or ``sharded`` (``jax.jit`` over ``mesh``; leaves replicated, batch
    sharded along ``axis``). The state is donated.
    """

    def step(leaves, batch, axis_name=None):
        new_state, metrics = train_step(jax.tree.unflatten(treedef, leaves), batch,
                                        axis_name=axis_name)
        new_leaves, new_def = jax.tree.flatten(new_state)
        if new_def != treedef:
            raise ValueError("train_step changed the structure of the state")
        return new_leaves, metrics

    return _compile(step, mode, mesh, axis)
