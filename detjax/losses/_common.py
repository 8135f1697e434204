"""Private helpers shared by the loss modules: dtype promotion and safe powers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike


def as_float(x: ArrayLike, name: str) -> jax.Array:
    """Returns ``x`` as a floating array computed in at least float32 (bf16/f16 are promoted)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        if jnp.issubdtype(x.dtype, jnp.integer) or x.dtype == jnp.bool_:
            x = x.astype(jnp.float32)
        else:
            raise TypeError(f"{name} must be a real floating or integer array, got {x.dtype}")
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_same_shape(a: jax.Array, b: jax.Array, name_a: str, name_b: str) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} and {name_b} must have the same shape, got {a.shape} and "
                         f"{b.shape}")


def float_pair(a: ArrayLike, b: ArrayLike, name_a: str,
               name_b: str) -> tuple[jax.Array, jax.Array]:
    """Both arguments as float (>= float32) arrays of one shape, else ValueError/TypeError."""
    a, b = as_float(a, name_a), as_float(b, name_b)
    check_same_shape(a, b, name_a, name_b)
    return a, b


def safe_pow(base: jax.Array, exponent: ArrayLike) -> jax.Array:
    """``base ** exponent`` for ``base >= 0`` with ``0 ** 0 = 1`` and finite gradients at 0.

    ``jnp.power`` has an infinite or NaN derivative at ``base = 0`` when the exponent is
    below 1 (or traced), which happens at saturated logits; here the derivative there is 0.
    """
    positive = base > 0
    powered = jnp.power(jnp.where(positive, base, 1.0), exponent)
    return jnp.where(positive, powered, jnp.where(jnp.asarray(exponent) == 0, 1.0, 0.0))


def bce_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-element ``-(t log sigmoid(x) + (1 - t) log sigmoid(-x))``, stable for any ``x``."""
    return jax.nn.softplus(logits) - logits * targets
