"""COCO-style box mAP: a vectorised NumPy re-implementation of pycocotools ``COCOeval``.

Boxes are ``[n, 4]`` ``xyxy`` absolute pixels per image (``box_format='xywh'`` accepts COCO
json boxes as they are). The result equals ``pycocotools.cocoeval.COCOeval(iouType='bbox')``
followed by ``evaluate(); accumulate(); summarize()`` within 1e-4 (in practice bit for bit;
``tests/test_eval_coco.py`` proves it on random and edge cases): same IoU (float64, from
``xywh``, no ``+1``, crowd IoU = intersection / detection area), same greedy matching order
(detections by score with a stable sort, non-ignored ground truth first, ties go to the later
ground truth, crowd regions matched any number of times), same area ranges, ``maxDets``
truncation, 101-point interpolated precision and ``-1`` for classes without ground truth.

Interface::

    coco_evaluate(detections, ground_truths, *, class_names=None, num_classes=None,
                  iou_thresholds=0.50:0.05:0.95) -> dict

* ``detections[i]`` = ``(boxes [n, 4], scores [n], labels [n])`` NumPy (or a mapping with
  those keys) for image ``i``;
* ``ground_truths[i]`` = ``(boxes [m, 4], labels [m])`` optionally followed by ``iscrowd [m]``,
  ``area [m]`` and ``ignore [m]`` (or a mapping with those keys). ``area`` defaults to the box
  area (COCO json files carry the segment area instead). ``ignore`` is a detjax extension that
  marks a box as "don't care" like an out-of-range box; pycocotools itself overwrites an
  annotation's ``ignore`` with ``iscrowd``, so leave it ``None`` for parity.

Returned keys: the 12 ``COCOeval.stats`` under names (``map``, ``map50``, ``map75``,
``map_small``, ``map_medium``, ``map_large``, ``mar_1``, ``mar_10``, ``mar_100``,
``mar_small``, ``mar_medium``, ``mar_large``) and as ``stats``; ``per_class_ap`` and
``per_class_ap50`` ``[K]`` (``-1`` for absent classes); ``precision`` ``[T, R, K, A, M]``,
``recall`` ``[T, K, A, M]`` and ``scores`` ``[T, R, K, A, M]`` laid out as pycocotools' ``eval``;
``iou_thresholds``, ``recall_thresholds``, ``area_ranges``, ``max_dets``, ``class_names``.

How it is vectorised: matching loops only over the detection rank (at most ``maxDets[-1]``
steps) and works on all (image, class) pairs, IoU thresholds and area ranges at once; the
accumulation is one cumulative sum per class over all thresholds, area ranges and ``maxDets``.

Reference: pycocotools/cocoeval.py (``computeIoU``, ``evaluateImg``, ``accumulate``,
``summarize``) and maskApi.c ``bbIou``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AREA_RANGES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("all", (0.0, 1e5**2)),
    ("small", (0.0, 32.0**2)),
    ("medium", (32.0**2, 96.0**2)),
    ("large", (96.0**2, 1e5**2)),
)
MAX_DETS: tuple[int, ...] = (1, 10, 100)
STAT_NAMES: tuple[str, ...] = (
    "map", "map50", "map75", "map_small", "map_medium", "map_large",
    "mar_1", "mar_10", "mar_100", "mar_small", "mar_medium", "mar_large",
)
_CHUNK_ELEMENTS = 1 << 21  # pairs * detections * ground truths per matching chunk


def coco_iou_thresholds() -> np.ndarray:
    """The 10 COCO IoU thresholds 0.50:0.05:0.95, built exactly as pycocotools builds them."""
    return np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)


def coco_recall_thresholds() -> np.ndarray:
    """The 101 COCO recall points 0:0.01:1, built exactly as pycocotools builds them."""
    return np.linspace(0.0, 1.0, int(np.round((1.0 - 0.0) / 0.01)) + 1, endpoint=True)


# ----------------------------------------------------------------------------- input parsing

def _field(entry: Any, index: int, key: str, name: str, required: bool) -> Any:
    if isinstance(entry, Mapping):
        if key in entry:
            return entry[key]
    elif isinstance(entry, Sequence) and not isinstance(entry, str):
        if index < len(entry):
            return entry[index]
    else:
        raise TypeError(f"{name}: expected a tuple or a mapping, got {type(entry).__name__}")
    if required:
        raise ValueError(f"{name}: missing {key!r}")
    return None


def _boxes_xywh(boxes: Any, box_format: str, name: str) -> np.ndarray:
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return np.zeros((0, 4))
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"{name}: boxes must have shape [n, 4], got {b.shape}")
    if box_format == "xyxy":
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    if box_format == "xywh":
        return b
    raise ValueError(f"box_format must be 'xyxy' or 'xywh', got {box_format!r}")


def _vector(values: Any, n: int, dtype: Any, default: Any, name: str) -> np.ndarray:
    if values is None:
        return np.full(n, default, dtype=dtype)
    v = np.asarray(values, dtype=dtype).reshape(-1)
    if v.shape[0] != n:
        raise ValueError(f"{name}: expected {n} values (one per box), got {v.shape[0]}")
    return v


def _flatten_detections(detections: Sequence[Any], box_format: str) -> dict[str, np.ndarray]:
    boxes, scores, labels, images = [], [], [], []
    for i, det in enumerate(detections):
        name = f"detections[{i}]"
        b = _boxes_xywh(_field(det, 0, "boxes", name, True), box_format, name)
        boxes.append(b)
        scores.append(_vector(_field(det, 1, "scores", name, True), len(b), np.float64, 0, name))
        labels.append(_vector(_field(det, 2, "labels", name, True), len(b), np.int64, 0, name))
        images.append(np.full(len(b), i, dtype=np.int64))
    return _concat(boxes=boxes, scores=scores, labels=labels, images=images)


def _flatten_ground_truths(ground_truths: Sequence[Any], box_format: str
                           ) -> dict[str, np.ndarray]:
    boxes, labels, crowd, area, ignore, images = [], [], [], [], [], []
    for i, gt in enumerate(ground_truths):
        name = f"ground_truths[{i}]"
        b = _boxes_xywh(_field(gt, 0, "boxes", name, True), box_format, name)
        n = len(b)
        boxes.append(b)
        labels.append(_vector(_field(gt, 1, "labels", name, True), n, np.int64, 0, name))
        crowd.append(_vector(_field(gt, 2, "iscrowd", name, False), n, bool, False, name))
        a = _field(gt, 3, "area", name, False)
        area.append(b[:, 2] * b[:, 3] if a is None else _vector(a, n, np.float64, 0, name))
        ignore.append(_vector(_field(gt, 4, "ignore", name, False), n, bool, False, name))
        images.append(np.full(n, i, dtype=np.int64))
    return _concat(boxes=boxes, labels=labels, crowd=crowd, area=area, ignore=ignore,
                   images=images)


_DTYPES = {"boxes": np.float64, "scores": np.float64, "area": np.float64, "labels": np.int64,
           "images": np.int64, "crowd": bool, "ignore": bool}


def _concat(**parts: list[np.ndarray]) -> dict[str, np.ndarray]:
    out = {}
    for key, arrays in parts.items():
        empty = np.zeros((0, 4) if key == "boxes" else (0,), dtype=_DTYPES[key])
        out[key] = np.concatenate(arrays).astype(_DTYPES[key]) if arrays else empty
    return out


# ----------------------------------------------------------------------------- matching

def _coco_box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """xywh ``dt [..., D, 4]``, ``gt [..., G, 4]``, ``crowd [..., G]`` -> IoU ``[..., D, G]``.

    pycocotools' ``bbIou`` in float64: no ``+1``, union = detection area for crowd regions.
    (Kept apart from ``detjax.box_iou``, which is float32 JAX and has no crowd rule.)
    """
    d, g = dt[..., :, None, :], gt[..., None, :, :]
    w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])
    h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])
    inter = np.where((w > 0) & (h > 0), w * h, 0.0)
    d_area, g_area = d[..., 2] * d[..., 3], g[..., 2] * g[..., 3]
    union = np.where(crowd[..., None, :], d_area, d_area + g_area - inter)
    return np.where(inter > 0, inter / np.where(inter > 0, union, 1.0), 0.0)


def _greedy_match(iou: np.ndarray, det_valid: np.ndarray, gt_valid: np.ndarray,
                  gt_ignore: np.ndarray, crowd: np.ndarray, thresholds: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """pycocotools ``evaluateImg`` matching for many (image, class) pairs at once.

    ``iou [P, D, G]`` (detections sorted by score), ``det_valid [P, D]``, ``gt_valid [P, G]``,
    ``gt_ignore [A, P, G]``, ``crowd [P, G]``, ``thresholds [T]`` ->
    ``(matched [A, P, T, D], matched_ignored [A, P, T, D])``.

    For each detection in score order: among the candidates (unmatched or crowd ground truth
    with IoU >= t) take the best non-ignored one; only if there is none, the best ignored one;
    equal IoUs go to the later ground truth (pycocotools' ``<`` comparison).
    """
    num_a, num_p, num_g = gt_ignore.shape
    num_t, num_d = len(thresholds), iou.shape[1]
    thr = np.minimum(thresholds, 1 - 1e-10)[None, None, :, None]  # [1, 1, T, 1]
    taken = np.zeros((num_a, num_p, num_t, num_g), dtype=bool)
    matched = np.zeros((num_a, num_p, num_t, num_d), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    reusable = (crowd | ~gt_valid)[None, :, None, :]  # [1, P, 1, G]; padding never matches below
    ignored = gt_ignore[:, :, None, :]  # [A, P, 1, G]
    rows = np.arange(num_a * num_p * num_t)
    for d in range(num_d):
        iou_d = np.where(gt_valid, iou[:, d, :], -1.0)[None, :, None, :]  # [1, P, 1, G]
        cand = (~taken | reusable) & (iou_d >= thr) & det_valid[None, :, None, d, None]
        regular = cand & ~ignored
        use = np.where(regular.any(-1, keepdims=True), regular, cand)  # [A, P, T, G]
        found = use.any(-1)  # [A, P, T]
        keyed = np.where(use, iou_d, -2.0)
        m = num_g - 1 - np.argmax(keyed[..., ::-1], axis=-1)  # last argmax: ties -> later gt
        flat_taken = taken.reshape(-1, num_g)
        flat_taken[rows, m.reshape(-1)] |= found.reshape(-1)
        matched[..., d] = found
        ign = np.take_along_axis(np.broadcast_to(ignored, use.shape), m[..., None], -1)[..., 0]
        matched_ignored[..., d] = found & ign
    return matched, matched_ignored


def _group_rank(keys_sorted: np.ndarray) -> np.ndarray:
    """Position of each element inside its run of equal keys (``keys_sorted`` is sorted)."""
    n = len(keys_sorted)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.r_[0, np.flatnonzero(keys_sorted[1:] != keys_sorted[:-1]) + 1]
    run = np.repeat(starts, np.diff(np.r_[starts, n]))
    return np.arange(n) - run


def _next_pow2(x: np.ndarray) -> np.ndarray:
    return (1 << np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64)).astype(np.int64)


def _evaluate_pairs(dets: dict[str, np.ndarray], gts: dict[str, np.ndarray],
                    gt_ignore: np.ndarray, thresholds: np.ndarray, num_classes: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Match every (image, class) pair that has both detections and ground truth.

    ``dets`` sorted by (image, class, -score) with ``rank``; ``gt_ignore [A, N_gt]``.
    Returns ``matched, matched_ignored`` ``[A, T, N_det]``.
    """
    num_a, num_t, n_det = gt_ignore.shape[0], len(thresholds), len(dets["scores"])
    matched = np.zeros((num_a, num_t, n_det), dtype=bool)
    matched_ignored = np.zeros_like(matched)
    det_key = dets["images"] * num_classes + dets["labels"]
    gt_order = np.lexsort((np.arange(len(gts["labels"])), gts["labels"], gts["images"]))
    gt_key = (gts["images"] * num_classes + gts["labels"])[gt_order]
    gt_pos = _group_rank(gt_key)
    pair_keys = np.intersect1d(det_key, gt_key)
    if len(pair_keys) == 0:
        return matched, matched_ignored
    n_d = np.bincount(np.searchsorted(pair_keys, det_key[np.isin(det_key, pair_keys)]),
                      minlength=len(pair_keys))
    n_g = np.bincount(np.searchsorted(pair_keys, gt_key[np.isin(gt_key, pair_keys)]),
                      minlength=len(pair_keys))
    bucket = _next_pow2(n_d) * (1 << 20) + _next_pow2(n_g)
    for b in np.unique(bucket):
        pairs = np.flatnonzero(bucket == b)
        pad_d, pad_g = int(b >> 20), int(b & ((1 << 20) - 1))
        per_pair = pad_g * (pad_d + num_a * num_t) + num_a * num_t * pad_d
        step = max(1, _CHUNK_ELEMENTS // per_pair)
        for start in range(0, len(pairs), step):
            _match_chunk(pair_keys[pairs[start:start + step]], pad_d, pad_g, dets, det_key,
                         gts, gt_order, gt_key, gt_pos, gt_ignore, thresholds,
                         matched, matched_ignored)
    return matched, matched_ignored


def _match_chunk(keys: np.ndarray, pad_d: int, pad_g: int, dets: dict[str, np.ndarray],
                 det_key: np.ndarray, gts: dict[str, np.ndarray], gt_order: np.ndarray,
                 gt_key: np.ndarray, gt_pos: np.ndarray, gt_ignore: np.ndarray,
                 thresholds: np.ndarray, matched: np.ndarray, matched_ignored: np.ndarray
                 ) -> None:
    num_p, num_a = len(keys), gt_ignore.shape[0]
    d_idx = np.flatnonzero(np.isin(det_key, keys))  # detections of these pairs
    d_pair, d_rank = np.searchsorted(keys, det_key[d_idx]), dets["rank"][d_idx]
    g_sel = np.flatnonzero(np.isin(gt_key, keys))  # positions in gt_order
    g_idx = gt_order[g_sel]
    g_pair, g_rank = np.searchsorted(keys, gt_key[g_sel]), gt_pos[g_sel]

    dt_boxes = np.zeros((num_p, pad_d, 4))
    dt_boxes[d_pair, d_rank] = dets["boxes"][d_idx]
    det_valid = np.zeros((num_p, pad_d), dtype=bool)
    det_valid[d_pair, d_rank] = True
    gt_boxes = np.zeros((num_p, pad_g, 4))
    gt_boxes[g_pair, g_rank] = gts["boxes"][g_idx]
    gt_valid = np.zeros((num_p, pad_g), dtype=bool)
    gt_valid[g_pair, g_rank] = True
    crowd = np.zeros((num_p, pad_g), dtype=bool)
    crowd[g_pair, g_rank] = gts["crowd"][g_idx]
    ignore = np.ones((num_a, num_p, pad_g), dtype=bool)
    ignore[:, g_pair, g_rank] = gt_ignore[:, g_idx]

    iou = _coco_box_iou(dt_boxes, gt_boxes, crowd)  # [P, D, G]
    m, mi = _greedy_match(iou, det_valid, gt_valid, ignore, crowd, thresholds)
    matched[:, :, d_idx] = m[:, d_pair, :, d_rank].transpose(1, 2, 0)
    matched_ignored[:, :, d_idx] = mi[:, d_pair, :, d_rank].transpose(1, 2, 0)


# ----------------------------------------------------------------------------- accumulation

def _min_true_positives(thresholds: np.ndarray, npig: np.ndarray) -> np.ndarray:
    """Smallest integer ``c`` with ``c / npig >= thr`` in float64, ``[len(npig), R]``.

    ``tp / npig`` is monotone in ``tp``, so "first index with recall >= thr" (pycocotools'
    ``searchsorted(rc, recThrs, 'left')``) is "first index with tp >= c", an exact integer search.
    """
    n = npig[:, None].astype(np.float64)
    c = np.ceil(thresholds[None, :] * n)
    c = np.where((c - 1 >= 0) & ((c - 1) / n >= thresholds), c - 1, c)
    c = np.where(c / n < thresholds, c + 1, c)
    return c.astype(np.int64)


def _accumulate_class(matched: np.ndarray, ignored: np.ndarray, rank: np.ndarray,
                      scores: np.ndarray, npig: np.ndarray, max_dets: Sequence[int],
                      rec_thr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One class. ``matched/ignored [A, T, N]`` sorted by score over all images,
    ``rank [N]`` (rank inside its image), ``npig [A]`` -> precision/scores ``[T, R, A, M]``,
    recall ``[T, A, M]`` (``-1`` where ``npig == 0``)."""
    num_a, num_t, n = matched.shape
    num_m, num_r = len(max_dets), len(rec_thr)
    included = rank[None, :] < np.asarray(max_dets)[:, None]  # [M, N]
    live = ~ignored[:, None] & included[None, :, None]  # [A, M, T, N]
    tp = np.cumsum(matched[:, None] & live, axis=-1, dtype=np.int32)
    fp = np.cumsum(~matched[:, None] & live, axis=-1, dtype=np.int32)
    precision = np.zeros((num_a, num_m, num_t, num_r))
    score_out = np.zeros_like(precision)
    recall = np.zeros((num_a, num_m, num_t))
    if n:
        tpf, fpf = tp.astype(np.float64), fp.astype(np.float64)
        pr = tpf / (fpf + tpf + np.spacing(1))
        pr = np.maximum.accumulate(pr[..., ::-1], axis=-1)[..., ::-1]
        recall = tpf[..., -1] / np.maximum(npig, 1)[:, None, None]
        c = _min_true_positives(rec_thr, np.maximum(npig, 1))  # [A, R]
        rows = np.arange(num_a * num_m * num_t).reshape(num_a, num_m, num_t)
        big = n + int(npig.max()) + 2
        flat = (tp + rows[..., None] * big).reshape(-1)
        want = c[:, None, None, :] + rows[..., None] * big  # [A, M, T, R]
        idx = np.searchsorted(flat, want, side="left") - rows[..., None] * n  # [A, M, T, R]
        ok = idx < n
        safe = np.minimum(idx, n - 1)
        precision = np.where(ok, np.take_along_axis(pr, safe, -1), 0.0)
        # c == 0 lands on the first element even when it is cut by maxDets; pycocotools
        # reports the first included detection's score there.
        first = np.argmax(included, axis=1)  # [M]
        has = included.any(axis=1)
        score_idx = np.where(c[:, None, None, :] == 0, first[None, :, None, None], safe)
        score_out = np.where(ok & has[None, :, None, None], scores[score_idx], 0.0)
    absent = (npig == 0)[:, None, None]
    precision = np.where(absent[..., None], -1.0, precision)
    score_out = np.where(absent[..., None], -1.0, score_out)
    recall = np.where(absent, -1.0, recall)
    return (precision.transpose(2, 3, 0, 1), recall.transpose(2, 0, 1),
            score_out.transpose(2, 3, 0, 1))


def _mean_valid(x: np.ndarray) -> float:
    v = x[x > -1]
    return float(np.mean(v)) if v.size else -1.0


def _summarize(precision: np.ndarray, recall: np.ndarray, thresholds: np.ndarray,
               max_dets: Sequence[int]) -> dict[str, float]:
    """``COCOeval.summarize()``: AP at IoU .5:.95/.5/.75 and per area (largest ``maxDets``),
    AR per ``maxDets`` (area all) and per area; -1 where nothing is defined."""

    def at_iou(x: np.ndarray, iou: float | None) -> np.ndarray:
        return x if iou is None else x[np.flatnonzero(thresholds == iou)]

    names = list(STAT_NAMES[:6])
    values = [_mean_valid(at_iou(precision, iou)[:, :, :, 0, -1]) for iou in (None, 0.5, 0.75)]
    values += [_mean_valid(precision[:, :, :, a, -1]) for a in (1, 2, 3)]
    for m, max_det in enumerate(max_dets):
        names.append(f"mar_{max_det}")
        values.append(_mean_valid(recall[:, :, 0, m]))
    names += list(STAT_NAMES[-3:])
    values += [_mean_valid(recall[:, :, a, -1]) for a in (1, 2, 3)]
    return dict(zip(names, values))


def _per_class(precision: np.ndarray, iou_index: np.ndarray | None = None) -> np.ndarray:
    p = precision[:, :, :, 0, -1] if iou_index is None else precision[iou_index, :, :, 0, -1]
    return np.array([_mean_valid(p[:, :, k]) for k in range(p.shape[2])])


# ----------------------------------------------------------------------------- public

def _infer_num_classes(num_classes: int | None, class_names: Sequence[str] | None,
                       labels: np.ndarray) -> int:
    if num_classes is not None:
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names but num_classes is "
                             f"{num_classes}")
        return int(num_classes)
    if class_names is not None:
        return len(class_names)
    return int(labels.max()) + 1 if labels.size else 0


def coco_evaluate(detections: Sequence[Any], ground_truths: Sequence[Any], *,
                  class_names: Sequence[str] | None = None, num_classes: int | None = None,
                  iou_thresholds: Sequence[float] | np.ndarray | None = None,
                  max_dets: Sequence[int] = MAX_DETS, box_format: str = "xyxy"
                  ) -> dict[str, Any]:
    """COCO box mAP of per-image detections against per-image ground truth (pycocotools).

    Args:
      detections: one entry per image, ``(boxes [n, 4], scores [n], labels [n])``.
      ground_truths: one entry per image, ``(boxes [m, 4], labels [m][, iscrowd [m][, area [m]
        [, ignore [m]]]])`` or a mapping with those keys.
      class_names: optional names, one per class; fixes the number of classes.
      num_classes: number of classes ``K`` (labels are ``0..K-1``); default from names/labels.
      iou_thresholds: default ``0.50:0.05:0.95`` (pycocotools' ``linspace``).
      max_dets: detections kept per image and class, sorted (default ``(1, 10, 100)``).
      box_format: ``'xyxy'`` (default) or ``'xywh'`` (COCO json).

    Returns:
      dict with ``map``, ``map50``, ``map75``, ... (see module docstring), ``per_class_ap``,
      ``precision [T, R, K, A, M]``, ``recall [T, K, A, M]``, ``scores``.

    Example::

      >>> det = [(np.array([[0., 0, 10, 10]]), np.array([0.9]), np.array([0]))]
      >>> gt = [(np.array([[0., 0, 10, 10]]), np.array([0]))]
      >>> round(coco_evaluate(det, gt)["map"], 6)
      1.0
    """
    if len(detections) != len(ground_truths):
        raise ValueError(f"detections has {len(detections)} images but ground_truths has "
                         f"{len(ground_truths)}")
    thresholds = (coco_iou_thresholds() if iou_thresholds is None
                  else np.asarray(iou_thresholds, dtype=np.float64).reshape(-1))
    max_dets = sorted(int(m) for m in max_dets)
    if not max_dets or max_dets[0] < 1:
        raise ValueError(f"max_dets must be positive integers, got {max_dets}")
    rec_thr = coco_recall_thresholds()
    dets = _flatten_detections(detections, box_format)
    gts = _flatten_ground_truths(ground_truths, box_format)
    k = _infer_num_classes(num_classes, class_names,
                           np.concatenate([dets["labels"], gts["labels"]]))
    for name, labels in (("detection", dets["labels"]), ("ground truth", gts["labels"])):
        if labels.size and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"{name} labels must be in [0, {k}), got range "
                             f"[{labels.min()}, {labels.max()}]")

    # sort detections by (image, class, -score, input order), keep the top maxDets[-1]
    order = np.lexsort((np.arange(len(dets["scores"])), -dets["scores"], dets["labels"],
                        dets["images"]))
    dets = {key: v[order] for key, v in dets.items()}
    dets["rank"] = _group_rank(dets["images"] * max(k, 1) + dets["labels"])
    keep = dets["rank"] < max_dets[-1]
    dets = {key: v[keep] for key, v in dets.items()}

    ranges = np.array([r for _, r in AREA_RANGES])  # [A, 2]
    out_of_range = lambda area: (area[None] < ranges[:, :1]) | (area[None] > ranges[:, 1:])
    gt_ignore = gts["crowd"][None] | gts["ignore"][None] | out_of_range(gts["area"])  # [A, G]
    det_area = dets["boxes"][:, 2] * dets["boxes"][:, 3]
    matched, matched_ignored = _evaluate_pairs(dets, gts, gt_ignore, thresholds, max(k, 1))
    det_ignored = matched_ignored | (~matched & out_of_range(det_area)[:, None, :])  # [A, T, N]

    num_a, num_t, num_r, num_m = len(ranges), len(thresholds), len(rec_thr), len(max_dets)
    npig = np.zeros((k, num_a), dtype=np.int64)
    for a in range(num_a):
        npig[:, a] = np.bincount(gts["labels"][~gt_ignore[a]], minlength=k)[:k]
    precision = -np.ones((num_t, num_r, k, num_a, num_m))
    recall = -np.ones((num_t, k, num_a, num_m))
    scores = -np.ones_like(precision)
    # all classes, each sorted by -score with images in order (pycocotools' mergesort)
    order = np.lexsort((dets["rank"], dets["images"], -dets["scores"], dets["labels"]))
    bounds = np.searchsorted(dets["labels"][order], np.arange(k + 1))
    matched, det_ignored = matched[:, :, order], det_ignored[:, :, order]
    rank, det_scores = dets["rank"][order], dets["scores"][order]
    for c in range(k):
        if not npig[c].any():
            continue
        sel = slice(bounds[c], bounds[c + 1])
        for a in range(num_a):  # one area range at a time bounds memory to [M, T, N]
            p, r, s = _accumulate_class(matched[a:a + 1, :, sel], det_ignored[a:a + 1, :, sel],
                                        rank[sel], det_scores[sel], npig[c, a:a + 1],
                                        max_dets, rec_thr)
            precision[:, :, c, a], scores[:, :, c, a] = p[:, :, 0], s[:, :, 0]
            recall[:, c, a] = r[:, 0]

    result: dict[str, Any] = _summarize(precision, recall, thresholds, max_dets)
    result.update(
        stats=np.array(list(result.values())), precision=precision, recall=recall, scores=scores,
        per_class_ap=_per_class(precision),
        per_class_ap50=_per_class(precision, np.flatnonzero(thresholds == 0.5)),
        iou_thresholds=thresholds, recall_thresholds=rec_thr,
        area_ranges=AREA_RANGES, max_dets=tuple(max_dets),
        class_names=list(class_names) if class_names is not None else [str(i) for i in range(k)],
        num_images=len(detections))
    return result


def _load_json(source: Any) -> Any:
    if isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        import json

        with open(source) as f:
            return json.load(f)
    return source


def coco_json_to_inputs(ground_truth: Any, results: Any
                        ) -> tuple[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]],
                                   list[str], list[int], list[int]]:
    """A COCO annotation file and a results file (paths or loaded json) -> per-image inputs of
    :func:`coco_evaluate` (``xywh`` boxes), class names, image ids and category ids.

    Images and categories are those of the ground truth sorted by id (pycocotools' ``imgIds``
    / ``catIds``); results on other categories are dropped, results on unknown images raise
    (pycocotools' ``loadRes`` assertion). Annotation order is kept inside each image.
    """
    gt, res = _load_json(ground_truth), _load_json(results)
    image_ids = sorted(int(im["id"]) for im in gt["images"])
    cats = sorted(gt["categories"], key=lambda c: int(c["id"]))
    cat_ids = [int(c["id"]) for c in cats]
    names = [str(c.get("name", c["id"])) for c in cats]
    img_index = {i: n for n, i in enumerate(image_ids)}
    cat_index = {c: n for n, c in enumerate(cat_ids)}
    gts: list[dict[str, list]] = [dict(boxes=[], labels=[], iscrowd=[], area=[])
                                  for _ in image_ids]
    for ann in gt.get("annotations", []):
        if int(ann["category_id"]) not in cat_index:
            continue
        g = gts[img_index[int(ann["image_id"])]]
        x, y, w, h = ann["bbox"]
        g["boxes"].append([x, y, w, h])
        g["labels"].append(cat_index[int(ann["category_id"])])
        g["iscrowd"].append(bool(ann.get("iscrowd", 0)))
        g["area"].append(float(ann["area"]) if "area" in ann else w * h)
    dts: list[dict[str, list]] = [dict(boxes=[], scores=[], labels=[]) for _ in image_ids]
    for n, det in enumerate(res):
        if int(det["image_id"]) not in img_index:
            raise ValueError(f"results[{n}]: image_id {det['image_id']} is not in the ground "
                             "truth images")
        if int(det["category_id"]) not in cat_index:
            continue
        d = dts[img_index[int(det["image_id"])]]
        d["boxes"].append(det["bbox"])
        d["scores"].append(float(det["score"]))
        d["labels"].append(cat_index[int(det["category_id"])])
    as_arrays = lambda items: [{k: np.asarray(v) for k, v in e.items()} for e in items]
    return as_arrays(dts), as_arrays(gts), names, image_ids, cat_ids


def evaluate_coco_json(ground_truth: Any, results: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`coco_evaluate` of a COCO results file against a COCO annotation file (paths or
    loaded json), the drop-in for ``COCOeval(COCO(gt), COCO(gt).loadRes(res), 'bbox')``.
    ``per_class_ap`` follows the ground truth's categories sorted by id."""
    dets, gts, names, _, _ = coco_json_to_inputs(ground_truth, results)
    return coco_evaluate(dets, gts, class_names=names, box_format="xywh", **kwargs)
