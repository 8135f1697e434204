"""Unstructured magnitude pruning as an Optax transformation, and the network-slimming L1 term.

``prune_by_magnitude(schedule)`` goes last in an Optax chain. Its state holds one boolean mask per
prunable leaf (convolution / dense kernels: ``ndim >= 2``) and the step count. Every
``update_every`` steps it recomputes the masks from the magnitudes of the weights the step is
about to produce, at the sparsity ``schedule(step)`` asks for, and never revives a pruned weight;
the update it returns sets every pruned weight to exactly 0, so ``optax.apply_updates`` leaves
them at zero. ``scope="global"`` ranks all prunable weights together, ``"layer"`` each leaf on
its own.

``polynomial_sparsity`` is the gradual schedule of Zhu & Gupta 2017:
``s_t = s_f + (s_i - s_f) (1 - (t - t_0) / (t_1 - t_0))^3`` for ``t_0 <= t <= t_1``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

Scope = Literal["global", "layer"]


def polynomial_sparsity(final_sparsity: float, *, begin_step: int = 0, end_step: int,
                        initial_sparsity: float = 0.0, power: float = 3.0
                        ) -> Callable[[jax.Array], jax.Array]:
    """Sparsity as a function of the step (Zhu & Gupta 2017); constant outside the ramp."""
    if not 0.0 <= initial_sparsity <= final_sparsity < 1.0:
        raise ValueError("need 0 <= initial_sparsity <= final_sparsity < 1, got "
                         f"{initial_sparsity}, {final_sparsity}")
    if end_step <= begin_step:
        raise ValueError(f"end_step ({end_step}) must be > begin_step ({begin_step})")

    def schedule(step):
        t = jnp.clip((jnp.asarray(step, jnp.float32) - begin_step) / (end_step - begin_step),
                     0.0, 1.0)
        return final_sparsity + (initial_sparsity - final_sparsity) * (1.0 - t) ** power

    return schedule


def is_prunable(path, leaf) -> bool:
    """Kernels of convolutions and dense layers (``ndim >= 2``); biases and norms are kept."""
    return jnp.ndim(leaf) >= 2


def _threshold(magnitudes: jax.Array, sparsity: jax.Array) -> jax.Array:
    """The magnitude at or below which ``sparsity`` of ``magnitudes`` (1-D) fall."""
    n = magnitudes.shape[0]
    k = jnp.floor(sparsity * n).astype(jnp.int32)  # weights to prune
    ordered = jnp.sort(magnitudes)
    return jnp.where(k > 0, ordered[jnp.clip(k - 1, 0, n - 1)], -jnp.inf)


def magnitude_masks(params: Any, sparsity: float | jax.Array, *, scope: Scope = "global",
                    prunable: Callable[[Any, Any], bool] = is_prunable) -> Any:
    """A tree of bool masks (True = kept) pruning ``floor(sparsity * n)`` smallest-magnitude
    prunable weights (globally or per leaf); other leaves get all-True masks. Ties at the
    threshold are pruned together, so the count can exceed the target only on exact ties."""
    if scope not in ("global", "layer"):
        raise ValueError(f"scope must be 'global' or 'layer', got {scope!r}")
    flags = jax.tree_util.tree_map_with_path(prunable, params)
    leaves, treedef = jax.tree.flatten(params)
    flag_leaves = jax.tree.leaves(flags)
    sparsity = jnp.asarray(sparsity, jnp.float32)
    if scope == "global":
        pool = [jnp.abs(x).ravel() for x, f in zip(leaves, flag_leaves) if f]
        t = _threshold(jnp.concatenate(pool), sparsity) if pool else -jnp.inf
        masks = [jnp.abs(x) > t if f else jnp.ones(x.shape, bool)
                 for x, f in zip(leaves, flag_leaves)]
    else:
        masks = [jnp.abs(x) > _threshold(jnp.abs(x).ravel(), sparsity) if f
                 else jnp.ones(x.shape, bool) for x, f in zip(leaves, flag_leaves)]
    return jax.tree.unflatten(treedef, masks)


class MagnitudePruneState(NamedTuple):
    count: jax.Array
    masks: Any


def prune_by_magnitude(schedule: Callable[[jax.Array], jax.Array] | float, *,
                       scope: Scope = "global", update_every: int = 1,
                       prunable: Callable[[Any, Any], bool] = is_prunable
                       ) -> optax.GradientTransformation:
    """The last link of an Optax chain that keeps ``schedule(step)`` of the prunable weights
    at zero (see the module docstring). ``schedule`` may be a constant sparsity."""
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")
    sparsity_at = schedule if callable(schedule) else (lambda step: jnp.asarray(schedule))

    def init(params):
        return MagnitudePruneState(jnp.zeros((), jnp.int32),
                                   jax.tree.map(lambda p: jnp.ones(p.shape, bool), params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("prune_by_magnitude needs params (optax.apply_updates' params)")
        proposed = optax.apply_updates(params, updates)
        def refreshed(old):  # a sort of every prunable magnitude: only on refresh steps
            fresh = magnitude_masks(jax.tree.map(lambda p, m: jnp.where(m, p, 0.0), proposed,
                                                 old),
                                    sparsity_at(state.count), scope=scope, prunable=prunable)
            return jax.tree.map(jnp.logical_and, old, fresh)

        masks = jax.lax.cond(state.count % update_every == 0, refreshed, lambda old: old,
                             state.masks)
        updates = jax.tree.map(lambda u, p, m: jnp.where(m, u, -p).astype(u.dtype),
                               updates, params, masks)
        return updates, MagnitudePruneState(state.count + 1, masks)

    return optax.GradientTransformation(init, update)


def apply_masks(tree: Any, masks: Any) -> Any:
    """``tree`` with masked-out entries set to 0 (e.g. the EMA weights of a pruned run)."""
    return jax.tree.map(lambda x, m: jnp.where(m, x, jnp.zeros_like(x)), tree, masks)


def sparsity(params: Any, prunable: Callable[[Any, Any], bool] = is_prunable) -> float:
    """Fraction of exact zeros among the prunable weights."""
    flags = jax.tree.leaves(jax.tree_util.tree_map_with_path(prunable, params))
    leaves = [x for x, f in zip(jax.tree.leaves(params), flags) if f]
    total = sum(int(x.size) for x in leaves)
    zeros = sum(int((x == 0).sum()) for x in leaves)
    return zeros / max(total, 1)


def is_bn_scale(path, leaf) -> bool:
    """BatchNorm scale leaves (named ``scale``)."""
    names = [str(getattr(k, "key", getattr(k, "name", ""))) for k in path]
    return "scale" in names and jnp.ndim(leaf) == 1


def bn_scale_l1(coefficient: float) -> optax.GradientTransformation:
    """Adds the subgradient of ``coefficient * sum |gamma|`` over BatchNorm scales to the
    gradient (network slimming, Liu et al. 2017: 1e-4 .. 1e-5); put it before the optimiser."""
    if coefficient < 0:
        raise ValueError(f"coefficient must be >= 0, got {coefficient}")

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("bn_scale_l1 needs params")
        flags = jax.tree_util.tree_map_with_path(is_bn_scale, params)
        updates = jax.tree.map(lambda u, p, f: u + coefficient * jnp.sign(p) if f else u,
                               updates, params, flags)
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
