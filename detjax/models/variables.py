"""A model's weights as a flat mapping ``{dotted path: array}``.

The key of a variable is its path in the module tree joined with dots, list indices included:
``backbone.stem.conv.kernel`` (``[kh, kw, in, out]``, HWIO), ``backbone.c2f2.m.0.cv1.bn.mean``,
``head.cls_branches.2.layers.2.bias``. Only ``nnx.Param`` and ``nnx.BatchStat`` variables are
weights; anything else a module holds (RNG state, counters) is not.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

WEIGHTS = nnx.Any(nnx.Param, nnx.BatchStat)


def _key(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def variable_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """``{key: shape}`` of every weight of ``model`` (an abstract ``nnx.eval_shape`` model works:
    nothing is computed)."""
    flat = nnx.to_flat_state(nnx.state(model, WEIGHTS))
    return {_key(path): tuple(var.get_value().shape) for path, var in flat}


def variable_arrays(model: nnx.Module) -> dict[str, np.ndarray]:
    """``{key: NumPy array}`` of every weight of ``model`` (a host copy)."""
    flat = nnx.to_flat_state(nnx.state(model, WEIGHTS))
    return {_key(path): np.asarray(var.get_value()) for path, var in flat}


def assign_arrays(model: nnx.Module, arrays: Mapping[str, np.ndarray], *,
                  strict: bool = True) -> None:
    """Write ``arrays`` into ``model``'s weights in place, cast to each weight's dtype.

    Every key must name a weight of ``model`` with the same shape (``ValueError`` naming the key
    and both shapes otherwise). ``strict`` also requires every weight to be given; without it,
    weights missing from ``arrays`` keep their values.
    """
    flat = nnx.to_flat_state(nnx.state(model, WEIGHTS))
    by_key = {_key(path): (path, var) for path, var in flat}
    unknown = sorted(set(arrays) - set(by_key))
    if unknown:
        raise ValueError(f"{len(unknown)} key(s) name no weight of the model, e.g. {unknown[:5]}")
    if strict:
        missing = sorted(set(by_key) - set(arrays))
        if missing:
            raise ValueError(f"{len(missing)} weight(s) of the model are not given, "
                             f"e.g. {missing[:5]}")
    updates = []
    for key, value in arrays.items():
        path, var = by_key[key]
        old = var.get_value()
        value = np.asarray(value)
        if value.shape != old.shape:
            raise ValueError(f"{key}: got shape {value.shape}, the model has {old.shape}")
        updates.append((path, var.replace(value=jnp.asarray(value, old.dtype))))
    nnx.update(model, nnx.from_flat_state(updates))
