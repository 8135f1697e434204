"""Fixed-size non-maximum suppression: nms, soft_nms, diou_nms, batched_nms and the
YOLO multiclass postprocess ``non_max_suppression``.

Every function here works on one image (``boxes [N, 4]`` xyxy, ``scores [N]``), has
static output shapes (``max_output`` slots padded with ``-1``), runs under ``jax.jit``
and batches with ``jax.vmap``; ``non_max_suppression`` takes the batched head output
``[B, 4 + C, A]`` like its ultralytics reference.

Validity. A box takes part only if its score and all four coordinates are not NaN and
its score is above ``-inf`` (and above ``score_threshold`` when one is given). Invalid
boxes are never kept and never suppress anything, so padding a batch with ``-inf`` or
NaN scores changes nothing.

Algorithm (hard NMS). Greedy NMS is sequential, which suits neither XLA nor a vector
unit; this implementation keeps the greedy answer exactly but works in rounds:

1. take the ``tile`` best still-alive boxes with ``lax.top_k`` (no full sort: XLA's CPU
   sort is slow, a small top-k is cheap);
2. resolve greedy NMS among those ``tile`` boxes by a fixed-point iteration on their
   ``[tile, tile]`` suppression matrix (``kept = alive & ~any(kept_i & S_ij, i < j)``
   converges to the greedy solution, usually in two or three steps);
3. the boxes kept in this round suppress every other alive box (``[tile, M]`` IoU);
4. stop when nothing is alive or ``max_output`` boxes are kept.

Every alive box has already been compared with every box kept in earlier rounds, so the
result equals the sequential greedy loop. As boxes die, the alive ones are compacted into
arrays four times smaller (static sizes ``N, N/4, N/16, ...``, one ``while_loop`` per size), so
the IoU work follows the number of alive boxes instead of ``N`` per round.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from detjax.boxes import box_convert, box_iou, distance_box_iou

__all__ = [
    "NMSResult",
    "Detections",
    "nms",
    "diou_nms",
    "batched_nms",
    "soft_nms",
    "non_max_suppression",
    "NMS_METHODS",
]

_TILE = 16  # boxes resolved per round: 16 measured 10-20 % faster than 32 or 64 on CPU
_SHRINK = 4  # each compaction level is this many times smaller (fewer levels = faster compile)
_MIN_LEVEL = 128  # smallest compacted size
_MIN_CANDIDATES = 128  # smallest candidate buffer of non_max_suppression


class NMSResult(NamedTuple):
    """Fixed-size NMS output for one image (add a leading batch axis under ``vmap``).

    indices: int32 ``[max_output]``, kept box indices in descending score order, then -1.
    count: int32 ``[]``, number of valid entries in ``indices``.
    valid: bool ``[max_output]``, ``arange(max_output) < count``.
    scores: float32 ``[max_output]``, score of each kept box (the decayed score for
      ``soft_nms``), 0 in padding slots.
    """

    indices: jax.Array
    count: jax.Array
    valid: jax.Array
    scores: jax.Array


class Detections(NamedTuple):
    """Fixed-size output of :func:`non_max_suppression` for ``B`` images.

    detections: float32 ``[B, max_det, 6]`` rows ``(x1, y1, x2, y2, score, class)``,
      zeros in padding rows.
    valid: bool ``[B, max_det]``.
    count: int32 ``[B]``.
    indices: int32 ``[B, max_det]``, anchor index of each detection (ultralytics'
      ``return_idxs``), -1 in padding.
    """

    detections: jax.Array
    valid: jax.Array
    count: jax.Array
    indices: jax.Array


# ----------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------


def _check_boxes_scores(boxes: ArrayLike, scores: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Validates one image's ``boxes [N, 4]`` and ``scores [N]``; returns float32 copies."""
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(
            f"boxes must have shape [N, 4] (xyxy, one image; use jax.vmap for a batch), "
            f"got {boxes.shape}")
    if scores.shape != boxes.shape[:1]:
        raise ValueError(
            f"scores must have shape [N] = {boxes.shape[:1]} to match boxes {boxes.shape}, "
            f"got {scores.shape}")
    for name, x in (("boxes", boxes), ("scores", scores)):
        if not (jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.integer)):
            raise TypeError(f"{name} must be a real (float or int) array, got {x.dtype}")
    return boxes.astype(jnp.float32), scores.astype(jnp.float32)


def _check_max_output(max_output: int, name: str = "max_output") -> int:
    if isinstance(max_output, bool) or not isinstance(max_output, int | np.integer):
        raise TypeError(f"{name} must be a Python int (a static size), got {max_output!r}")
    if max_output < 0:
        raise ValueError(f"{name} must be >= 0, got {max_output}")
    return int(max_output)


def _strict_threshold(threshold: ArrayLike) -> jax.Array:
    """float32 ``t`` such that ``x > t`` in float32 equals ``x > threshold`` in float64.

    torchvision compares its float32 IoU with a double threshold; rounding a Python
    threshold down to float32 reproduces that comparison exactly (0.3 rounds *up* to
    float32, so ``iou == float32(0.3)`` is suppressed by torchvision). Traced thresholds
    are used as given.
    """
    if isinstance(threshold, int | float | np.floating | np.integer):
        t32 = np.float32(threshold)
        if float(t32) > float(threshold):
            t32 = np.nextafter(t32, np.float32(-np.inf))
        return jnp.asarray(t32)
    return jnp.asarray(threshold, jnp.float32)


def _valid_mask(boxes: jax.Array, scores: jax.Array,
                score_threshold: ArrayLike | None) -> jax.Array:
    """[N] bool: not NaN, score above -inf and above ``score_threshold`` (if given)."""
    ok = ~jnp.isnan(scores) & ~jnp.any(jnp.isnan(boxes), axis=-1) & (scores > -jnp.inf)
    if score_threshold is not None:
        ok &= scores > jnp.asarray(score_threshold, jnp.float32)
    return ok


# ----------------------------------------------------------------------------------------
# Greedy core: rounds of (top-k tile, in-tile fixed point, suppress the rest), compacted
# ----------------------------------------------------------------------------------------

# suppress(a, b) -> [Ta, Mb] bool: box a_i (higher score) suppresses box b_j.
SuppressFn = Callable[[tuple[jax.Array, ...], tuple[jax.Array, ...]], jax.Array]


def _take(data: tuple[jax.Array, ...], idx: jax.Array) -> tuple[jax.Array, ...]:
    return tuple(x[idx] for x in data)


def _resolve_tile(sup: jax.Array, alive: jax.Array) -> jax.Array:
    """Greedy NMS inside one score-sorted tile. ``sup [T, T]`` is upper triangular
    (i < j suppresses j); returns kept ``[T]``. Iterates ``kept = alive & ~(S^T kept)``
    from ``kept = alive``; the unique fixed point is the greedy solution."""

    def step(state):
        kept, _ = state
        new = alive & ~jnp.any(sup & kept[:, None], axis=0)  # [T]
        return new, jnp.any(new != kept)

    kept, _ = lax.while_loop(lambda s: s[1], step, (alive, jnp.array(True)))
    return kept


def _round(suppress: SuppressFn, tile: int, max_output: int, data, scores, orig, state):
    """One round on a compacted level. state = (alive [M], out [K], count)."""
    alive, out, count = state
    _, idx = lax.top_k(jnp.where(alive, scores, -jnp.inf), tile)  # [T] best alive first
    cand_alive = alive[idx]
    cand = _take(data, idx)
    upper = jnp.arange(tile)[:, None] < jnp.arange(tile)[None, :]
    kept = _resolve_tile(suppress(cand, cand) & upper, cand_alive)  # [T]
    killed = jnp.any(suppress(cand, data) & kept[:, None], axis=0)  # [M]
    alive = (alive & ~killed).at[idx].set(False)
    # Every index in range and distinct: a kept box goes to its output slot, everything else
    # to its own spare slot past max_output (``out`` has ``tile`` of them, cut off at the
    # end). On an H100 with --xla_gpu_deterministic_ops, a vmapped scatter that drops
    # out-of-range indices wrote wrong rows (jax 0.11.2).
    pos = count + jnp.cumsum(kept) - 1
    slot = jnp.where(kept & (pos < max_output), pos, max_output + jnp.arange(tile))
    out = out.at[slot].set(orig[idx], unique_indices=True)
    return alive, out, count + jnp.sum(kept, dtype=jnp.int32)


def _level_sizes(n: int, tile: int) -> list[int]:
    sizes = [n]
    while sizes[-1] // _SHRINK >= max(_MIN_LEVEL, 2 * tile):
        sizes.append(sizes[-1] // _SHRINK)
    return sizes


def _compact(alive: jax.Array, size: int, data, scores, orig):
    """Moves the alive entries (at most ``size`` of them) to the front of ``size`` arrays."""
    (idx,) = jnp.nonzero(alive, size=size, fill_value=0)
    new_alive = jnp.arange(size) < jnp.sum(alive)
    return new_alive, _take(data, idx), scores[idx], orig[idx]


def _run_level(suppress: SuppressFn, max_output: int, tile: int, next_size: int, data,
               scores, orig, state):
    """Rounds on one compacted level until its alive boxes fit ``next_size`` (-1: the
    last level), nothing is alive, or ``max_output`` boxes are kept."""

    def cond(state):
        alive, _, count = state
        n_alive = jnp.sum(alive, dtype=jnp.int32)
        return (n_alive > 0) & (n_alive > next_size) & (count < max_output)

    body = lambda state: _round(suppress, tile, max_output, data, scores, orig, state)
    return lax.while_loop(cond, body, state)


def _greedy_nms(data: tuple[jax.Array, ...], scores: jax.Array, ok: jax.Array,
                suppress: SuppressFn, max_output: int, tile: int = _TILE) -> NMSResult:
    """Exact greedy NMS over boxes described by ``data`` (arrays with leading dim N)."""
    n = scores.shape[0]
    out = jnp.full((max_output + tile,), -1, jnp.int32)  # + spare slots, see _round
    count = jnp.int32(0)
    if n > 0 and max_output > 0:
        sizes = _level_sizes(n, tile)
        alive, level_data, level_scores = ok, data, scores
        orig = jnp.arange(n, dtype=jnp.int32)  # level position -> input index
        for level, size in enumerate(sizes):
            if level > 0:
                alive, level_data, level_scores, orig = _compact(
                    alive, size, level_data, level_scores, orig)
            next_size = sizes[level + 1] if level + 1 < len(sizes) else -1
            alive, out, count = _run_level(suppress, max_output, min(tile, size), next_size,
                                           level_data, level_scores, orig, (alive, out, count))
    out = out[:max_output]
    count = jnp.minimum(count, max_output)
    valid = jnp.arange(max_output) < count
    kept_scores = scores[jnp.maximum(out, 0)] if n > 0 else jnp.zeros(max_output)
    return NMSResult(out, count, valid, jnp.where(valid, kept_scores, 0.0))


def _iou_suppress(threshold: jax.Array) -> SuppressFn:
    return lambda a, b: box_iou(a[0], b[0]) > threshold


def _diou_suppress(threshold: jax.Array, eps: float = 1e-7) -> SuppressFn:
    return lambda a, b: distance_box_iou(a[0], b[0], eps=eps) > threshold


# ----------------------------------------------------------------------------------------
# Public hard-NMS family
# ----------------------------------------------------------------------------------------


def nms(boxes: ArrayLike, scores: ArrayLike, *, iou_threshold: ArrayLike, max_output: int,
        score_threshold: ArrayLike | None = None) -> NMSResult:
    """Greedy NMS of one image: ``boxes [N, 4]`` xyxy, ``scores [N]`` -> :class:`NMSResult`.

    Reference: ``torchvision.ops.nms`` — boxes are visited in descending score order and
    a box is dropped when its IoU with an already kept box is *strictly* greater than
    ``iou_threshold``. ``indices[:count]`` equals torchvision's result truncated to
    ``max_output``; equal scores go lower index first, like torchvision's stable sort.
    Boxes with NaN coordinates/scores, ``-inf`` scores or scores ``<= score_threshold``
    (when given) are ignored. ``iou_threshold`` and ``score_threshold`` may be traced; a
    Python-number ``iou_threshold`` reproduces torchvision's float64 comparison exactly,
    a traced one is compared in float32.

    >>> b = jnp.array([[0., 0., 10., 10.], [1., 1., 11., 11.], [20., 20., 30., 30.]])
    >>> r = nms(b, jnp.array([0.9, 0.8, 0.7]), iou_threshold=0.5, max_output=3)
    >>> r.indices, r.count
    (Array([ 0,  2, -1], dtype=int32), Array(2, dtype=int32))
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    max_output = _check_max_output(max_output)
    ok = _valid_mask(boxes, scores, score_threshold)
    return _greedy_nms((boxes,), scores, ok, _iou_suppress(_strict_threshold(iou_threshold)),
                       max_output)


def diou_nms(boxes: ArrayLike, scores: ArrayLike, *, iou_threshold: ArrayLike, max_output: int,
             score_threshold: ArrayLike | None = None, eps: float = 1e-7) -> NMSResult:
    """DIoU-NMS of one image: ``boxes [N, 4]`` xyxy, ``scores [N]`` -> :class:`NMSResult`.

    Greedy NMS that drops a box when ``IoU - rho^2 / (c^2 + eps) > iou_threshold`` with
    an already kept box (Zheng et al., "Distance-IoU Loss", AAAI 2020); rho is the
    distance between centres and c the diagonal of the enclosing box, exactly
    :func:`detjax.boxes.distance_box_iou` (``torchvision.ops.distance_box_iou``, eps=1e-7).
    Validity rules as in :func:`nms`.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    max_output = _check_max_output(max_output)
    ok = _valid_mask(boxes, scores, score_threshold)
    return _greedy_nms((boxes,), scores, ok,
                       _diou_suppress(_strict_threshold(iou_threshold), eps), max_output)


def batched_nms(boxes: ArrayLike, scores: ArrayLike, classes: ArrayLike, *,
                iou_threshold: ArrayLike, max_output: int,
                score_threshold: ArrayLike | None = None) -> NMSResult:
    """Per-class NMS of one image: ``boxes [N, 4]`` xyxy, ``scores [N]``, ``classes [N]``
    (integer ids) -> :class:`NMSResult`.

    Boxes of different classes never suppress each other; the kept set and its
    descending-score order are those of ``torchvision.ops.batched_nms``. The IoU is
    computed on the original boxes (torchvision's per-class path); torchvision's
    coordinate-offset path (used for N <= 1000 on CPU) can differ from it by float
    rounding when an IoU is within an ulp of the threshold.
    """
    boxes, scores = _check_boxes_scores(boxes, scores)
    classes = jnp.asarray(classes)
    if classes.shape != scores.shape:
        raise ValueError(
            f"classes must have shape [N] = {scores.shape} to match boxes, got {classes.shape}")
    if not jnp.issubdtype(classes.dtype, jnp.integer):
        raise TypeError(f"classes must be integer class ids, got {classes.dtype}")
    max_output = _check_max_output(max_output)
    ok = _valid_mask(boxes, scores, score_threshold)
    threshold = _strict_threshold(iou_threshold)

    def suppress(a, b):
        same = a[1][:, None] == b[1][None, :]
        return same & (box_iou(a[0], b[0]) > threshold)

    return _greedy_nms((boxes, classes), scores, ok, suppress, max_output)


# ----------------------------------------------------------------------------------------
# Soft-NMS (mmcv.ops.soft_nms)
# ----------------------------------------------------------------------------------------

_SOFT_METHODS = ("linear", "gaussian", "naive")


def _soft_weight(iou: jax.Array, method: str, sigma: ArrayLike, threshold: jax.Array):
    if method == "gaussian":
        return jnp.exp(-(iou * iou) / sigma)
    if method == "linear":
        return jnp.where(iou >= threshold, 1.0 - iou, 1.0)
    return jnp.where(iou >= threshold, 0.0, 1.0)  # naive = hard NMS with >=


def soft_nms(boxes: ArrayLike, scores: ArrayLike, *,
             method: Literal["linear", "gaussian", "naive"] = "linear", sigma: ArrayLike = 0.5,
             iou_threshold: ArrayLike = 0.3, min_score: ArrayLike = 1e-3,
             max_output: int | None = None) -> NMSResult:
    """Soft-NMS of one image: ``boxes [N, 4]`` xyxy, ``scores [N]`` -> :class:`NMSResult`
    whose ``scores`` are the decayed scores (``max_output`` defaults to N).

    Reference: ``mmcv.ops.soft_nms`` (CPU kernel, ``offset=0``: IoU without the +1
    pixel), Bodla et al. 2017. Repeatedly picks the box with the highest *current*
    score, then multiplies every remaining score by a weight of its IoU with the pick:
    ``gaussian``: ``exp(-iou^2 / sigma)`` for every remaining box; ``linear``:
    ``1 - iou`` where ``iou >= iou_threshold``, else 1; ``naive``: 0 where
    ``iou >= iou_threshold``. A remaining box whose decayed score falls below
    ``min_score`` is dropped. As in mmcv, the very first pick is never tested against
    ``min_score`` (only decayed scores are), so a non-empty input keeps at least one box.
    Differences: NaN / ``-inf`` inputs are ignored, a pair with zero union has IoU 0
    (mmcv divides 0 by 0), equal current scores go lower index first (mmcv's order
    depends on its in-place swaps), and at most ``max_output`` boxes are picked.
    """
    if method not in _SOFT_METHODS:
        raise ValueError(f"method must be one of {_SOFT_METHODS}, got {method!r}")
    boxes, scores = _check_boxes_scores(boxes, scores)
    n = scores.shape[0]
    max_output = n if max_output is None else _check_max_output(max_output)
    return _soft_nms(boxes, scores, _valid_mask(boxes, scores, None), method=method,
                     sigma=sigma, iou_threshold=iou_threshold, min_score=min_score,
                     max_output=max_output)


def _soft_nms(boxes: jax.Array, scores: jax.Array, ok: jax.Array, *, method: str,
              sigma: ArrayLike, iou_threshold: ArrayLike, min_score: ArrayLike,
              max_output: int) -> NMSResult:
    """Soft-NMS of checked float32 ``boxes [N, 4]`` xyxy and ``scores [N]`` among ``ok``."""
    n = scores.shape[0]
    threshold = jnp.asarray(iou_threshold, jnp.float32)
    min_score = jnp.asarray(min_score, jnp.float32)
    out = jnp.full((max_output,), -1, jnp.int32)
    out_scores = jnp.zeros((max_output,), jnp.float32)

    def cond(state):
        alive, _, _, _, count = state
        return jnp.any(alive) & (count < max_output)

    def step(state):
        alive, current, out, out_scores, count = state
        pick = jnp.argmax(jnp.where(alive, current, -jnp.inf))
        out = out.at[count].set(pick.astype(jnp.int32))
        out_scores = out_scores.at[count].set(current[pick])
        alive = alive.at[pick].set(False)
        iou = box_iou(boxes[pick][None], boxes)[0]  # [N]
        current = jnp.where(alive, current * _soft_weight(iou, method, sigma, threshold),
                            current)
        alive &= ~(current < min_score)
        return alive, current, out, out_scores, count + 1

    if n > 0 and max_output > 0:
        _, _, out, out_scores, count = lax.while_loop(
            cond, step, (ok, scores, out, out_scores, jnp.int32(0)))
    else:
        count = jnp.int32(0)
    valid = jnp.arange(max_output) < count
    return NMSResult(out, count, valid, out_scores)


# ----------------------------------------------------------------------------------------
# YOLO multiclass postprocess (ultralytics.utils.nms.non_max_suppression)
# ----------------------------------------------------------------------------------------


def _best_class(pred: jax.Array, first: int = 4) -> tuple[jax.Array, jax.Array]:
    """Max and first argmax of the class rows ``pred[..., first:, :]`` of ``pred [..., R, A]``
    -> ``[..., A]`` x 2 (class ids count from ``first``).

    A running fold over the rows (each contiguous along A) of the unsliced array: XLA on
    CPU reduces a non-minor axis, or slices the rows out first, several times slower.
    Call it on the whole batch, not under ``vmap`` (a batched dynamic slice is a gather).
    """
    axis = pred.ndim - 2

    def body(c, state):
        best, arg = state
        x = lax.dynamic_index_in_dim(pred, first + c, axis, keepdims=False)
        better = (x > best) | jnp.isnan(x)  # NaN wins and sticks, like torch's max
        return jnp.where(better, x, best), jnp.where(better, c, arg)

    init = lax.index_in_dim(pred, first, axis, keepdims=False)
    return lax.fori_loop(1, pred.shape[axis] - first, body,
                         (init, jnp.zeros(init.shape, jnp.int32)))


def _candidates(pred: jax.Array, conf_thres: float, multi_label: bool, max_nms: int,
                classes: jax.Array | None):
    """Candidates of a batch ``pred [B, 4 + C, A]`` -> (anchor, label, score, ok), each
    ``[B, K]`` with ``K = A`` (best class per anchor) or ``A * C`` (``multi_label``, in
    torch.where's (anchor, class) order), cut to the ``max_nms`` best when larger."""
    batch, num_classes, num_anchors = pred.shape[0], pred.shape[1] - 4, pred.shape[2]
    if multi_label:
        score = jnp.swapaxes(pred[:, 4:], 1, 2).reshape(batch, -1)  # [B, A * C]
        pair = jnp.arange(num_anchors * num_classes, dtype=jnp.int32)
        anchor, label = pair // num_classes, pair % num_classes
        anchor, label = (jnp.broadcast_to(x, score.shape) for x in (anchor, label))
    else:
        score, label = _best_class(pred)  # [B, A]
        anchor = jnp.broadcast_to(jnp.arange(num_anchors, dtype=jnp.int32), score.shape)
    ok = score > conf_thres  # NaN compares False
    if classes is not None:
        ok &= jnp.any(label[..., None] == classes, axis=-1)
    if score.shape[1] > max_nms:  # ultralytics keeps the max_nms best candidates
        _, top = lax.top_k(jnp.where(ok, score, -jnp.inf), max_nms)  # [B, max_nms]
        anchor, label, score, ok = (jnp.take_along_axis(x, top, axis=1)
                                    for x in (anchor, label, score, ok))
    return anchor, label, score, ok


def _max_score(pred: jax.Array, first: int = 4) -> jax.Array:
    """Max over the class rows ``pred[..., first:, :]`` of ``pred [..., R, A]`` -> ``[..., A]``
    (NaN propagates). The same row fold as :func:`_best_class` without the argmax: one
    ``maximum`` per row, about 2.5x cheaper on CPU."""
    axis = pred.ndim - 2

    def body(c, best):
        return jnp.maximum(best, lax.dynamic_index_in_dim(pred, c, axis, keepdims=False))

    init = lax.index_in_dim(pred, first, axis, keepdims=False)
    return lax.fori_loop(first + 1, pred.shape[axis], body, init)


def _candidate_sizes(num_anchors: int, max_nms: int) -> list[int]:
    """The static candidate-buffer sizes, ascending: the largest ``_MIN_CANDIDATES * 4^k``
    up to ``num_anchors / 4`` (and ``max_nms``, so no top-k cut is needed inside it) and
    half of it when that is at least ``_MIN_CANDIDATES``; ``[]`` when none fits. Each size
    compiles its own NMS, so two, not a ladder: the half buffer halves the compaction and
    the NMS of the common case (a few hundred to a thousand candidates of 8400 anchors)."""
    cap = min(num_anchors // 4, max_nms)
    if cap < _MIN_CANDIDATES:
        return []
    size = _MIN_CANDIDATES
    while size * _SHRINK <= cap:
        size *= _SHRINK
    return [size // 2, size] if size // 2 >= _MIN_CANDIDATES else [size]


def _compacted_candidates(pred: jax.Array, ok: jax.Array, count: jax.Array,
                          max_score: jax.Array, size: int):
    """The anchors of ``pred [B, 4 + C, A]`` marked ``ok [B, A]`` (``count [B]`` of them, at
    most ``size`` per image, in anchor order) -> (boxes cxcywh ``[B, size, 4]``, anchor, label,
    score, ok), each ``[B, size]``; ``max_score [B, A]`` is the class max of every anchor.
    Classes are resolved only for these columns, as the first class row equal to the max
    (``ok`` anchors have no NaN score: NaN never passes the threshold)."""
    anchor = jax.vmap(lambda m: jnp.nonzero(m, size=size, fill_value=0)[0])(ok)  # [B, K]
    anchor = anchor.astype(jnp.int32)
    cols = jnp.take_along_axis(pred, anchor[:, None, :], axis=2)  # [B, 4 + C, K]
    score = jnp.take_along_axis(max_score, anchor, axis=1)  # [B, K]

    def first_equal(c, label):
        x = lax.dynamic_index_in_dim(cols, 4 + c, 1, keepdims=False)
        return jnp.where((label < 0) & (x == score), c, label)

    label = lax.fori_loop(0, cols.shape[1] - 4, first_equal, jnp.full(score.shape, -1, jnp.int32))
    valid = jnp.arange(size) < count[:, None]  # [B, K]
    return jnp.swapaxes(cols[:, :4], 1, 2), anchor, jnp.maximum(label, 0), score, valid


def _nms_one_image(boxes: jax.Array, anchor: jax.Array, label: jax.Array, score: jax.Array,
                   ok: jax.Array, iou_thres: ArrayLike, max_det: int, max_wh: float,
                   agnostic: bool, method: str, soft_sigma: ArrayLike,
                   soft_min_score: ArrayLike):
    """Class-offset NMS (``method``) of one image's candidates; ``boxes [K, 4]`` xyxy."""
    ok &= ~jnp.any(jnp.isnan(boxes), axis=-1)
    offset = label.astype(jnp.float32) * (0.0 if agnostic else float(max_wh))
    shifted = boxes + offset[:, None]
    if method == "greedy":
        result = _greedy_nms((shifted,), score, ok, _iou_suppress(_strict_threshold(iou_thres)),
                             max_det)
    elif method == "diou":
        result = _greedy_nms((shifted,), score, ok,
                             _diou_suppress(_strict_threshold(iou_thres)), max_det)
    else:  # soft_linear / soft_gaussian
        result = _soft_nms(shifted, score, ok, method=method.removeprefix("soft_"),
                           sigma=soft_sigma, iou_threshold=iou_thres,
                           min_score=soft_min_score, max_output=max_det)
    keep = jnp.maximum(result.indices, 0)
    rows = jnp.concatenate(
        [boxes[keep], result.scores[:, None], label[keep, None].astype(jnp.float32)], axis=1)
    rows = jnp.where(result.valid[:, None], rows, 0.0)  # [max_det, 6]
    indices = jnp.where(result.valid, anchor[keep], -1)
    return rows, result.valid, result.count, indices


NMS_METHODS = ("greedy", "soft_linear", "soft_gaussian", "diou")


def non_max_suppression(prediction: ArrayLike, *, conf_thres: float = 0.25,
                        iou_thres: ArrayLike = 0.45, classes: Sequence[int] | None = None,
                        agnostic: bool = False, multi_label: bool = False, max_det: int = 300,
                        max_nms: int = 30000, max_wh: float = 7680,
                        method: Literal["greedy", "soft_linear", "soft_gaussian",
                                        "diou"] = "greedy",
                        soft_sigma: ArrayLike = 0.5,
                        soft_min_score: ArrayLike = 0.001) -> Detections:
    """YOLO postprocess: head output ``prediction [B, 4 + C, A]`` (cxcywh boxes + class
    scores) -> :class:`Detections` with ``detections [B, max_det, 6]``
    ``(x1, y1, x2, y2, score, class)``, ``valid [B, max_det]`` and ``count [B]``.

    Reference: ``ultralytics.utils.nms.non_max_suppression`` (8.x) with the same
    arguments (``nc=0``, no extra channels, not rotated / end-to-end): candidates have
    max class score ``> conf_thres``; ``multi_label`` makes one candidate per
    (anchor, class) with score ``> conf_thres``, otherwise each anchor takes its first
    best class; ``classes`` keeps only those class ids; at most ``max_nms`` best
    candidates enter NMS; NMS runs on boxes offset by ``class * max_wh`` (0 when
    ``agnostic``) with strict ``IoU > iou_thres``; the ``max_det`` best survivors are
    returned in descending score order (ultralytics' ``x[i]`` rows, un-offset boxes).
    Padding rows are zero. ``conf_thres`` is static; ``iou_thres`` may be traced.

    ``method`` picks the suppression run on those offset candidates (``greedy`` is the
    reference's): ``diou`` is :func:`diou_nms` (``DIoU > iou_thres``); ``soft_linear`` and
    ``soft_gaussian`` are :func:`soft_nms` (``iou_threshold=iou_thres``,
    ``sigma=soft_sigma``, ``min_score=soft_min_score``; mmcv's defaults 0.5 and 0.001),
    whose rows carry the decayed scores.

    Speed: without ``multi_label`` or ``classes``, when every image has few enough anchors
    above ``conf_thres`` (at most ``S = 128 * 4^k <= A / 4``: 2048 of 8400), they are first
    compacted into a static buffer of ``S / 2`` when that holds every image, else of ``S``
    (``lax.switch`` at run time), and only those columns get their best class resolved; the
    result is the same as on all ``A`` anchors.
    """
    pred = jnp.asarray(prediction)
    if pred.ndim != 3 or pred.shape[1] < 5:
        raise ValueError(
            f"prediction must have shape [B, 4 + C, A] (cxcywh + C >= 1 class scores), "
            f"got {pred.shape}")
    if not 0 <= conf_thres <= 1:
        raise ValueError(f"conf_thres must be in [0, 1], got {conf_thres}")
    if method not in NMS_METHODS:
        raise ValueError(f"method must be one of {NMS_METHODS}, got {method!r}")
    max_det = _check_max_output(max_det, "max_det")
    max_nms = _check_max_output(max_nms, "max_nms")
    pred = pred.astype(jnp.promote_types(pred.dtype, jnp.float32))
    multi_label = bool(multi_label) and pred.shape[1] - 4 > 1
    class_ids = None if classes is None else jnp.asarray(classes, jnp.int32).reshape(-1)
    one = partial(_nms_one_image, iou_thres=iou_thres, max_det=max_det, max_wh=max_wh,
                  agnostic=agnostic, method=method, soft_sigma=soft_sigma,
                  soft_min_score=soft_min_score)
    return _postprocess(pred, conf_thres=conf_thres, multi_label=multi_label, max_nms=max_nms,
                        classes=class_ids, nms_one=one)


def _postprocess(pred: jax.Array, *, conf_thres: float, multi_label: bool, max_nms: int,
                 classes: jax.Array | None, nms_one: Callable) -> Detections:
    """Candidates, box conversion and per-image ``nms_one`` of ``pred [B, 4 + C, A]``."""

    def all_anchors(pred, _):
        anchor, label, score, ok = _candidates(pred, conf_thres, multi_label, max_nms, classes)
        boxes = jnp.swapaxes(pred[:, :4], 1, 2)  # [B, A, 4] cxcywh
        if anchor.shape[1] != boxes.shape[1] or multi_label:  # candidates are not all anchors
            boxes = jnp.take_along_axis(boxes, anchor[..., None], axis=1)  # [B, K, 4]
        return _run_nms(nms_one, boxes, anchor, label, score, ok)

    sizes = [] if multi_label or classes is not None else _candidate_sizes(pred.shape[2],
                                                                            max_nms)
    if not sizes:
        return all_anchors(pred, None)

    def compacted(size, pred, ok):
        return _run_nms(nms_one, *_compacted_candidates(pred, ok, count, max_score, size))

    max_score = _max_score(pred)  # [B, A]
    ok = max_score > conf_thres  # NaN compares False
    count = jnp.sum(ok, axis=1)  # [B]
    branch = jnp.sum(jnp.max(count) > jnp.asarray(sizes))  # first buffer that holds every image
    branches = [partial(compacted, size) for size in sizes] + [all_anchors]
    return lax.switch(branch, branches, pred, ok)  # (lax.cond for one buffer)


def _run_nms(nms_one: Callable, boxes_cxcywh, anchor, label, score, ok) -> Detections:
    boxes = box_convert(boxes_cxcywh, "cxcywh", "xyxy")
    return Detections(*jax.vmap(nms_one)(boxes, anchor, label, score, ok))
