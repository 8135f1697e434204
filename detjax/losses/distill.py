"""Knowledge distillation losses: logit KD and detection-aware terms.

* :func:`kd_loss` / :func:`kd_mixed_loss`: Hinton et al. 2015, KL at temperature ``T``
  times ``T^2``, mixed with the hard-label loss by ``alpha``.
* :func:`score_distillation_loss`: per-class sigmoid scores on all anchors (binary KL).
* :func:`dfl_distillation_loss`: box-side distributions on foreground anchors
  (Localization Distillation, Zheng et al. 2022).
* :func:`feature_imitation_loss`: squared error between (adapted) student and teacher feature
  maps (FitNets hints, Romero et al. 2015).
* :func:`dense_distillation_loss`: the two logit terms of a dense sigmoid + DFL head (YOLOv8)
  on all anchors, weighted by the teacher's confidence and normalised like the YOLO loss.

All return per-element values; every hyperparameter may be traced.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from detjax.losses._common import bce_with_logits, float_pair
from detjax.losses.classification import softmax_cross_entropy

__all__ = ["dense_distillation_loss", "dfl_distillation_loss", "feature_imitation_loss",
           "kd_loss", "kd_mixed_loss", "score_distillation_loss"]


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
    """Hinton et al. 2015's mixed objective, ``alpha * kd_loss + (1 - alpha) * CE(student,
    labels)``, per example ``[...]``.

    ``student_logits`` and ``teacher_logits`` are softmax logits ``[..., C]``; ``labels`` are
    class indices ``[...]`` or soft labels ``[..., C]``
    (:func:`~detjax.losses.softmax_cross_entropy`). ``kd_loss`` is the T^2-scaled KL of the
    temperature-softened distributions. ``alpha = 1`` is pure distillation; ``temperature``
    and ``alpha`` may be traced (``jax.vmap`` over them).
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


def feature_imitation_loss(student_feat: ArrayLike, teacher_feat: ArrayLike) -> jax.Array:
    """Elementwise squared error ``(s - t)^2`` of feature maps ``[B, H, W, C]`` (any equal
    shapes) -> the same shape; the teacher gets no gradient.

    FitNets hint learning (Romero et al. 2015): the student's map, brought to the teacher's
    width by a learned 1x1 adapter where the widths differ, regresses the teacher's map.
    Callers reduce (mean over elements, summed over pyramid levels).
    """
    s, t = float_pair(student_feat, teacher_feat, "student_feat", "teacher_feat")  # same shape
    return jnp.square(s - jax.lax.stop_gradient(t))


def dense_distillation_loss(student_scores: ArrayLike, teacher_scores: ArrayLike,
                            student_distri: ArrayLike, teacher_distri: ArrayLike, *,
                            reg_max: int = 16, temperature: ArrayLike = 1.0,
                            dfl_temperature: ArrayLike = 10.0
                            ) -> tuple[jax.Array, jax.Array]:
    """Logit distillation of a dense sigmoid + DFL head -> ``(kd, ld)`` scalars.

    Inputs per anchor, both networks on the same anchor grid: class logits ``[B, A, C]``
    and DFL bin logits ``[B, A, 4 * reg_max]`` (sides l, t, r, b). With the teacher's
    confidence ``w_a = max_c sigmoid(t_ac)`` and ``S = max(sum_a w_a, 1)`` over the batch:

    * ``kd = sum_{b,a,c} score_distillation_loss(s, t; T) / S``: per-class binary KL at
      temperature ``T`` times ``T^2`` on every anchor (the sigmoid form of Hinton et al.
      2015's KD, for heads whose classes are independent sigmoids: the softmax KL over classes
      does not apply to them);
    * ``ld = sum_{b,a} w_a dfl_distillation_loss(s_bins, t_bins; T_ld) / S``: Localization
      Distillation (Zheng et al. 2022), the KL between the teacher's and the student's softmax
      over each side's bins at ``dfl_temperature`` (LD's 10), times ``T_ld^2``, mean over the
      four sides. LD distils on the label assignment's positives; here the teacher's own
      confidence ``w_a`` weights every anchor, so the term needs no assignment and stays
      independent of the detection loss.

    ``S`` plays the role of the YOLO loss's ``target_scores_sum`` (the two terms are on the
    scale of its ``cls`` and ``dfl`` items). Both are 0 when student and teacher logits are
    equal; the teacher gets no gradient.
    """
    s_cls, t_cls = _student_teacher(student_scores, teacher_scores)
    s_box, t_box = _student_teacher(student_distri, teacher_distri)
    if s_cls.ndim != 3 or s_cls.shape != t_cls.shape:
        raise ValueError(f"scores must be [B, A, C] for student and teacher alike, got "
                         f"{s_cls.shape} and {t_cls.shape}")
    expected = (*s_cls.shape[:2], 4 * reg_max)
    if s_box.shape != expected or t_box.shape != expected:
        raise ValueError(f"DFL logits must be [B, A, 4 * reg_max] = {list(expected)}, got "
                         f"{s_box.shape} and {t_box.shape}")
    weight = jax.nn.sigmoid(t_cls).max(-1)  # [B, A] teacher confidence
    normaliser = jnp.maximum(weight.sum(), 1.0)
    kd = score_distillation_loss(s_cls, t_cls, temperature=temperature).sum() / normaliser
    bins = lambda x: x.reshape(*x.shape[:2], 4, reg_max)  # [B, A, 4, reg_max]
    fg = jnp.ones(s_cls.shape[:2], bool)
    ld_per_anchor = dfl_distillation_loss(bins(s_box), bins(t_box), fg,
                                          temperature=dfl_temperature)  # [B, A]
    ld = (weight * ld_per_anchor).sum() / normaliser
    return kd, ld
