"""Distribution focal loss (DFL, Li et al. 2020 "Generalized Focal Loss").

A box side is predicted as a discrete distribution over bins ``0 .. n_bins - 1`` (in
stride units); DFL is the cross entropy against the two bins around the continuous
target, weighted linearly. Two conventions name the bin count differently:

* ``"ultralytics"`` (YOLOv8 ``DFLoss``): ``reg_max`` *is* the number of bins,
  ``reg_max=16`` -> 16 bins 0..15, and the target is clamped to ``reg_max - 1 - 0.01``.
* ``"mmdet"`` (GFL ``distribution_focal_loss``): ``reg_max`` is the largest bin value,
  ``reg_max=16`` -> 17 bins 0..16, and the target is clamped to ``reg_max - 0.01``
  (mmdet clamps in ``bbox2distance(max_dis=reg_max, eps=0.01)``).

In both the clamp is ``n_bins - 1 - 0.01``, so the per-side loss below is the same
function of ``(pred_dist, target)``; the convention only fixes ``n_bins`` from
``reg_max`` (see :func:`dfl_bins`). ultralytics then averages the four sides of a box;
mmdet treats each side as a sample (its GFL head divides the sum by 4).
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.losses._common import as_float

__all__ = ["DFLConvention", "dfl_bins", "distribution_focal_loss"]

DFLConvention = Literal["ultralytics", "mmdet"]
_CONVENTIONS = ("ultralytics", "mmdet")


def dfl_bins(reg_max: int, convention: DFLConvention = "ultralytics") -> int:
    """Number of distribution bins for ``reg_max``: ``reg_max`` (ultralytics) or ``reg_max + 1``
    (mmdet/GFL).

    >>> dfl_bins(16), dfl_bins(16, "mmdet")
    (16, 17)
    """
    if convention not in _CONVENTIONS:
        raise ValueError(f"convention must be one of {_CONVENTIONS}, got {convention!r}")
    if int(reg_max) != reg_max or reg_max < 1:
        raise ValueError(f"reg_max must be a positive integer, got {reg_max!r}")
    return int(reg_max) + (1 if convention == "mmdet" else 0)


def distribution_focal_loss(pred_dist: ArrayLike, target: ArrayLike, *,
                            reg_max: int | None = None,
                            convention: DFLConvention = "ultralytics") -> jax.Array:
    """DFL of bin logits ``pred_dist [..., n_bins]`` and distances ``target [...]`` -> ``[...]``.

    ``target`` is in bin units (a distance divided by the stride). It is clamped to
    ``[0, n_bins - 1 - 0.01]``; with ``l = floor(target)`` the loss is
    ``-(l + 1 - target) log p_l - (target - l) log p_{l+1}`` with ``p = softmax(pred_dist)``.
    One value per side (ultralytics ``DFLoss`` returns the mean over the 4 sides of a box;
    take ``.mean(-1)`` of a ``[..., 4]`` result for that).

    ``reg_max`` (optional) is checked against ``n_bins`` under ``convention``:
    ``"ultralytics"`` expects ``n_bins == reg_max`` (16 for reg_max=16), ``"mmdet"``
    ``n_bins == reg_max + 1`` (17). The target gradient is zero (the target is data).

    >>> logits = jnp.zeros((16,))
    >>> float(distribution_focal_loss(logits, 3.5, reg_max=16))  # uniform: log 16
    2.7725887...
    """
    logits = as_float(pred_dist, "pred_dist")
    if logits.ndim < 1:
        raise ValueError(f"pred_dist must have shape [..., n_bins], got {logits.shape}")
    n_bins = logits.shape[-1]
    if n_bins < 2:
        raise ValueError(f"pred_dist needs at least 2 bins on its last axis, got {logits.shape}")
    if reg_max is not None and dfl_bins(reg_max, convention) != n_bins:
        raise ValueError(f"pred_dist has {n_bins} bins but reg_max={reg_max} in the {convention!r} "
                         f"convention needs {dfl_bins(reg_max, convention)}")
    t = jax.lax.stop_gradient(as_float(target, "target"))
    try:
        t = jnp.broadcast_to(t, logits.shape[:-1])
    except ValueError:
        raise ValueError(f"target {t.shape} must broadcast to pred_dist's leading shape "
                         f"{logits.shape[:-1]}") from None
    t = jnp.clip(t, 0.0, n_bins - 1 - 0.01)
    # The two-bin linear weights (l + 1 - t on bin l, t - l on bin l + 1) are the hat
    # function max(0, 1 - |k - t|) over bins k: a dense soft label, no gather needed.
    bins = jnp.arange(n_bins, dtype=logits.dtype)
    soft_label = jnp.maximum(0.0, 1.0 - jnp.abs(bins - t[..., None]))  # [..., n_bins]
    return -jnp.sum(soft_label * jax.nn.log_softmax(logits, axis=-1), axis=-1)


# Reverse-mode kernels of the YOLOv8 loss. They compute the same values as dfl_decode and
# distribution_focal_loss with fewer passes over the [..., n_bins] logits and no
# [..., n_bins] intermediates: one softmax pass serves decoding and DFL, and each
# backward pass is one elementwise pass that writes the gradient. (custom_vjp: no jax.jvp.)


@jax.custom_vjp
def _softmax_expectation_and_lse(logits: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sum_k k softmax(logits)_k, logsumexp(logits))`` over the last axis: the decoded
    distance (ultralytics ``bbox_decode``) and the log-sum-exp that DFL needs, from one
    softmax pass. ``[..., n_bins] -> ([...], [...])``."""
    return _expectation_and_lse_fwd(logits)[0]


def _expectation_and_lse_fwd(logits):
    peak = jax.lax.stop_gradient(logits.max(-1, keepdims=True))
    e = jnp.exp(logits - peak)
    bins = jnp.arange(logits.shape[-1], dtype=logits.dtype)
    # one variadic reduction: both sums share the exponentials (two reductions would store e)
    z, moment = jax.lax.reduce((e, e * bins), (jnp.zeros((), e.dtype), jnp.zeros((), e.dtype)),
                               lambda a, b: (a[0] + b[0], a[1] + b[1]), (logits.ndim - 1,))
    expectation, lse = moment / z, peak[..., 0] + jnp.log(z)
    return (expectation, lse), (logits, expectation, lse)


def _expectation_and_lse_bwd(res, cotangents):
    logits, expectation, lse = res
    g_expectation, g_lse = cotangents
    bins = jnp.arange(logits.shape[-1], dtype=logits.dtype)
    p = jnp.exp(logits - lse[..., None])  # softmax, recomputed instead of stored
    return (p * (g_expectation[..., None] * (bins - expectation[..., None])
                 + g_lse[..., None]),)


_softmax_expectation_and_lse.defvjp(_expectation_and_lse_fwd, _expectation_and_lse_bwd)


@jax.custom_vjp
def _two_bin_logit(logits: jax.Array, target: jax.Array) -> jax.Array:
    """``(l + 1 - t) logits[l] + (1 - (l + 1 - t)) logits[l + 1]`` with ``l = floor(t)``:
    the DFL target logit, ``logits [..., n_bins]`` and ``target [...]`` already clamped to
    ``[0, n_bins - 1 - 0.01]`` -> ``[...]``. ``DFL = logsumexp(logits) - _two_bin_logit``,
    ultralytics ``DFLoss``'s two cross entropies in one gather; no gradient to ``target``."""
    return _two_bin_logit_fwd(logits, target)[0]


def _two_bins(target):
    left = jnp.floor(target)
    w_left = left + 1 - target  # ultralytics: wl = tr - target, wr = 1 - wl
    return left.astype(jnp.int32), w_left, 1 - w_left


def _two_bin_logit_fwd(logits, target):
    left, w_left, w_right = _two_bins(target)
    pick = lambda i: jnp.take_along_axis(logits, i[..., None], -1,
                                         mode="promise_in_bounds")[..., 0]
    return pick(left) * w_left + pick(left + 1) * w_right, (logits, target)


def _two_bin_logit_bwd(res, g):
    logits, target = res
    left, w_left, w_right = _two_bins(target)
    k = jnp.arange(logits.shape[-1], dtype=jnp.int32)
    weight = jnp.where(k == left[..., None], w_left[..., None],
                       jnp.where(k == left[..., None] + 1, w_right[..., None], 0.0))
    return g[..., None] * weight, None


_two_bin_logit.defvjp(_two_bin_logit_fwd, _two_bin_logit_bwd)
