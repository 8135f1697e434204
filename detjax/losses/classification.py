"""Classification losses: binary / softmax cross entropy, focal, quality focal, varifocal.

Every function returns per-element values (callers reduce with their own normaliser),
computes in float32 whatever the input dtype (bf16/f16 are promoted), and takes
keyword-only hyperparameters whose defaults equal the named reference. Every
hyperparameter may be a traced JAX value, so a loss can be ``jax.vmap``-ed over a grid
of hyperparameters.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.losses._common import as_float, bce_with_logits, float_pair, safe_pow

__all__ = [
    "binary_cross_entropy",
    "class_weights_from_counts",
    "quality_focal_loss",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_focal_loss",
    "varifocal_loss",
]


def _logits_and_targets(logits: ArrayLike, targets: ArrayLike) -> tuple[jax.Array, jax.Array]:
    return float_pair(logits, targets, "logits", "targets")


def binary_cross_entropy(logits: ArrayLike, targets: ArrayLike) -> jax.Array:
    """Sigmoid BCE of logits ``[...]`` and hard or soft targets ``[...]`` -> ``[...]``.

    ``-(t log sigmoid(x) + (1 - t) log(1 - sigmoid(x)))`` computed stably, equal to
    ``torch.nn.functional.binary_cross_entropy_with_logits(reduction="none")``.

    >>> binary_cross_entropy(jnp.array([0.0]), jnp.array([1.0]))
    Array([0.6931472], dtype=float32)
    """
    x, t = _logits_and_targets(logits, targets)
    return bce_with_logits(x, t)


def _logits_and_soft_labels(logits: ArrayLike, labels: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Logits ``[..., C]`` and labels as ``[..., C]`` rows (integer ``[...]`` -> one-hot)."""
    x = as_float(logits, "logits")
    if x.ndim < 1:
        raise ValueError(f"logits must have shape [..., C], got {x.shape}")
    labels = jnp.asarray(labels)
    if jnp.issubdtype(labels.dtype, jnp.integer):
        t = jax.nn.one_hot(labels, x.shape[-1], dtype=jnp.float32)
    else:
        t = as_float(labels, "labels")
    if t.shape != x.shape:
        raise ValueError(f"labels must be [...] ints or [..., C] floats matching logits {x.shape}, "
                         f"got {labels.shape}")
    return x, t


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *,
                          label_smoothing: ArrayLike = 0.0) -> jax.Array:
    """Softmax cross entropy of logits ``[..., C]`` against labels -> ``[...]``.

    ``labels`` are integer class indices ``[...]`` or soft labels ``[..., C]`` (rows of a
    probability simplex). ``label_smoothing`` mixes the labels with the uniform
    distribution, as ``torch.nn.functional.cross_entropy(label_smoothing=...)``.
    An integer label outside ``[0, C)`` gives a zero one-hot row, so a zero loss.
    """
    x, t = _logits_and_soft_labels(logits, labels)
    t = t * (1.0 - label_smoothing) + label_smoothing / x.shape[-1]
    return -jnp.sum(t * jax.nn.log_softmax(x, axis=-1), axis=-1)


def sigmoid_focal_loss(logits: ArrayLike, targets: ArrayLike, *, alpha: ArrayLike = 0.25,
                       gamma: ArrayLike = 2.0) -> jax.Array:
    """Sigmoid focal loss on logits ``[...]`` with targets ``[...]`` in [0, 1] -> ``[...]``.

    ``alpha_t * (1 - p_t)^gamma * BCE(x, t)`` with ``p_t = p t + (1 - p)(1 - t)`` and
    ``alpha_t = alpha t + (1 - alpha)(1 - t)`` (Lin et al. 2017), equal to
    ``torchvision.ops.sigmoid_focal_loss(reduction="none")``; ``alpha < 0`` disables the
    alpha weight. ``alpha_t`` is built from the per-element target, as in the paper.
    ``1 - p_t`` is computed as ``t sigmoid(-x) + (1 - t) sigmoid(x)`` (the same value,
    without cancellation), and its power has a finite gradient at 0.

    >>> float(sigmoid_focal_loss(jnp.array(0.0), jnp.array(1.0)))  # 0.25 * 0.25 * log 2
    0.0433216...
    """
    x, t = _logits_and_targets(logits, targets)
    one_minus_pt = t * jax.nn.sigmoid(-x) + (1.0 - t) * jax.nn.sigmoid(x)
    loss = bce_with_logits(x, t) * safe_pow(one_minus_pt, gamma)
    alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
    return jnp.where(jnp.asarray(alpha) >= 0, alpha_t * loss, loss)


def softmax_focal_loss(logits: ArrayLike, labels: ArrayLike, *, alpha: ArrayLike = 0.25,
                       gamma: ArrayLike = 2.0) -> jax.Array:
    """Softmax (multi-class) focal loss of logits ``[..., C]`` -> ``[...]``.

    ``-sum_c alpha_c (1 - p_c)^gamma t_c log p_c`` with ``p = softmax(x)``: for one-hot
    labels this is ``-alpha (1 - p_y)^gamma log p_y`` (Lin et al. 2017, the multi-class
    form; mmcv ``softmax_focal_loss`` applies the same scalar alpha to every class).
    ``labels`` are class indices ``[...]`` or soft labels ``[..., C]``; ``alpha < 0``
    disables the alpha weight.
    """
    x, t = _logits_and_soft_labels(logits, labels)
    log_p = jax.nn.log_softmax(x, axis=-1)
    one_minus_p = -jnp.expm1(log_p)  # 1 - p without cancellation near p = 1
    loss = -jnp.sum(t * safe_pow(one_minus_p, gamma) * log_p, axis=-1)
    return jnp.where(jnp.asarray(alpha) >= 0, alpha * loss, loss)


def quality_focal_loss(logits: ArrayLike, soft_targets: ArrayLike, *,
                       beta: ArrayLike = 2.0) -> jax.Array:
    """Quality focal loss (GFL, Li et al. 2020) on logits ``[..., C]`` -> ``[..., C]``.

    ``BCE(x, y) * |y - sigmoid(x)|^beta`` where ``y`` is the IoU-valued target of the
    assigned class and 0 elsewhere. Same values as mmdet ``quality_focal_loss`` (which
    takes ``(label, score)`` and sums over classes: pass ``one_hot(label) * score`` here
    and sum the last axis).
    """
    x, y = _logits_and_targets(logits, soft_targets)
    return bce_with_logits(x, y) * safe_pow(jnp.abs(y - jax.nn.sigmoid(x)), beta)


def varifocal_loss(logits: ArrayLike, soft_targets: ArrayLike, *, alpha: ArrayLike = 0.75,
                   gamma: ArrayLike = 2.0, iou_weighted: bool = True) -> jax.Array:
    """Varifocal loss (VarifocalNet, Zhang et al. 2021) on logits ``[..., C]`` -> ``[..., C]``.

    ``BCE(x, q) * w`` with ``w = q`` (or 1 when ``iou_weighted=False``) where the IoU
    target ``q > 0``, and ``w = alpha |sigmoid(x) - q|^gamma`` where ``q <= 0``; equal to
    mmdet ``varifocal_loss(reduction="none")``.
    """
    x, q = _logits_and_targets(logits, soft_targets)
    positive = q > 0
    pos_weight = q if iou_weighted else jnp.ones_like(q)
    neg_weight = alpha * safe_pow(jnp.abs(jax.nn.sigmoid(x) - q), gamma)
    return bce_with_logits(x, q) * jnp.where(positive, pos_weight, neg_weight)


def class_weights_from_counts(counts: ArrayLike, *, method: str = "inverse",
                              beta: ArrayLike = 0.999) -> jax.Array:
    """Per-class loss weights ``[C]`` from per-class instance counts ``[C]``, mean 1.

    ``method="inverse"``: ``w_c = 1 / n_c``; ``method="effective"``: the inverse effective
    number of samples of Cui et al. 2019 ("Class-Balanced Loss Based on Effective Number of
    Samples"), ``w_c = (1 - beta) / (1 - beta ** n_c)``. Both are rescaled so that
    ``mean(w) == 1``. A class with ``n_c = 0`` gets the weight of a class seen once (so no
    infinity). ``beta`` may be traced; pass the result as ``class_weights`` to
    :func:`detjax.losses.yolo_detection_loss`.

    >>> class_weights_from_counts(jnp.array([10., 30.])).tolist()
    [1.5, 0.5]
    """
    n = as_float(counts, "counts")
    if n.ndim != 1 or n.shape[0] < 1:
        raise ValueError(f"counts must be [C] per-class counts, got shape {n.shape}")
    n = jnp.maximum(n, 1.0)
    if method == "inverse":
        w = 1.0 / n
    elif method == "effective":
        w = (1.0 - beta) / -jnp.expm1(n * jnp.log(beta))  # 1 - beta**n without cancellation
    else:
        raise ValueError(f"method must be 'inverse' or 'effective', got {method!r}")
    return w / w.mean()
