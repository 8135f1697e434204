"""Exponential moving average of weights and BatchNorm statistics (ultralytics ``ModelEMA``).

Reference: ultralytics ``utils/torch_utils.py`` ``ModelEMA.update``: ``updates += 1``;
``d = decay * (1 - exp(-updates / tau))``; every floating entry of the state dict (weights and
BN running mean / var) becomes ``d * ema + (1 - d) * model``. The EMA starts as a copy of the
model, so the ramp makes early updates follow the model closely.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def ema_decay(updates, *, decay: float = 0.9999, tau: float = 2000.0) -> jax.Array:
    """``decay * (1 - exp(-updates / tau))`` for the ``updates``-th update (1-based)."""
    updates = jnp.asarray(updates, jnp.float32)
    return decay * -jnp.expm1(-updates / tau)  # 1 - exp(-x) without float32 cancellation


def ema_update(ema_tree: Any, model_tree: Any, updates, *, decay: float = 0.9999,
               tau: float = 2000.0) -> Any:
    """One EMA step over matching trees; ``updates`` is the count *after* incrementing.

    Non-floating leaves (counters) are copied from the model, as torch leaves them untouched.
    """
    d = ema_decay(updates, decay=decay, tau=tau)

    def one(e, m):
        if not jnp.issubdtype(jnp.result_type(e), jnp.floating):
            return m
        return (d * e.astype(jnp.float32) + (1 - d) * m.astype(jnp.float32)).astype(e.dtype)

    return jax.tree.map(one, ema_tree, model_tree)
