"""Knowledge distillation losses: logit KD and detection-aware terms.

* :func:`kd_loss` / :func:`kd_mixed_loss`: Hinton et al. 2015, KL at temperature ``T``
  times ``T^2``, mixed with the hard-label loss by ``alpha``.
* :func:`score_distillation_loss`: per-class sigmoid scores on all anchors (binary KL).
* :func:`dfl_distillation_loss`: box-side distributions on foreground anchors
  (Localization Distillation, Zheng et al. 2022).

All return per-element values; every hyperparameter may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.losses._common import bce_with_logits, float_pair
from detjax.losses.classification import softmax_cross_entropy

__all__ = ["dfl_distillation_loss", "kd_loss", "kd_mixed_loss", "score_distillation_loss"]


def _student_teacher(student: ArrayLike, teacher: ArrayLike) -> tuple[jax.Array, jax.Array]:
    s, t = float_pair(student, teacher, "student_logits", "teacher_logits")
    t = jax.lax.stop_gradient(t)
    if s.ndim < 1:
        raise ValueError(f"logits must have a class axis [..., C], got {s.shape}")
    return s, t


def kd_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
            temperature: ArrayLike = 4.0) -> jax.Array:
    """Soft-target KD of logits ``[..., C]`` -> ``[...]``: ``T^2 KL(softmax(t/T) || softmax(s/T))``.

    Hinton et al. 2015 (the ``T^2`` keeps gradient magnitudes independent of ``T``); equal
    to ``F.kl_div(log_softmax(s/T), softmax(t/T), reduction="none").sum(-1) * T**2``.
    The teacher gets no gradient. ``0 * log 0`` counts as 0.
    """
    s, t = _student_teacher(student_logits, teacher_logits)
    log_q = jax.nn.log_softmax(s / temperature, axis=-1)
    log_p = jax.nn.log_softmax(t / temperature, axis=-1)
    p = jnp.exp(log_p)
    kl = jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return kl * temperature**2


def kd_mixed_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, labels: ArrayLike, *,
                  temperature: ArrayLike = 4.0, alpha: ArrayLike = 0.5) -> jax.Array:
    """``alpha * kd_loss + (1 - alpha) * CE(student, labels)`` per example ``[...]``.

    ``labels`` are class indices ``[...]`` or soft labels ``[..., C]``
    (:func:`~detjax.losses.softmax_cross_entropy`). ``alpha = 1`` is pure distillation.
    """
    soft = kd_loss(student_logits, teacher_logits, temperature=temperature)
    hard = softmax_cross_entropy(student_logits, labels)
    return alpha * soft + (1.0 - alpha) * hard


def score_distillation_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *,
                            temperature: ArrayLike = 1.0) -> jax.Array:
    """Per-class sigmoid score distillation on all anchors ``[..., C]`` -> ``[..., C]``.

    Binary KL ``KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) * T^2``, i.e. the BCE of the
    student against the teacher's probabilities minus the teacher's entropy, so it is 0
    when the scores agree. For sigmoid (YOLOv8, RetinaNet, GFL) heads, where a softmax KD
    over classes does not apply.
    """
    s, t = _student_teacher(student_logits, teacher_logits)
    s, t = s / temperature, t / temperature
    p = jax.nn.sigmoid(t)
    return (bce_with_logits(s, p) - bce_with_logits(t, p)) * temperature**2


def dfl_distillation_loss(student_dist: ArrayLike, teacher_dist: ArrayLike, fg_mask: ArrayLike,
                          *, temperature: ArrayLike = 10.0) -> jax.Array:
    """Localization distillation of box-side distributions ``[..., 4, n_bins]`` -> ``[...]``.

    For each anchor, the mean over its four sides of :func:`kd_loss` on the bin logits at
    temperature ``T`` (LD's default 10), zero where ``fg_mask [...]`` is False (the
    teacher's distributions are taught on foreground anchors). mmdet
    ``KnowledgeDistillationKLDivLoss`` averages the KL over bins instead of summing it:
    its value is this one divided by ``n_bins``.
    """
    s, t = _student_teacher(student_dist, teacher_dist)
    if s.ndim < 2 or s.shape[-2] != 4:
        raise ValueError(f"distributions must be [..., 4, n_bins], got {s.shape}")
    fg_mask = jnp.asarray(fg_mask)
    if fg_mask.shape != s.shape[:-2]:
        raise ValueError(f"fg_mask must be {s.shape[:-2]}, got {fg_mask.shape}")
    per_side = kd_loss(s, t, temperature=temperature)  # [..., 4]
    return jnp.where(fg_mask, per_side.mean(-1), 0.0)
