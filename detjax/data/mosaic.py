"""Multi-image augmentations: Mosaic (4 images), MixUp and Copy-Paste.

Inputs and outputs are :class:`~detjax.data.transforms.Sample` (uint8 ``[H, W, 3]``
image, float32 ``[n, 4]`` xyxy pixel boxes, int32 ``[n]`` labels, optional instance map).
References: ultralytics ``Mosaic._mosaic4``, ``MixUp``, ``CopyPaste`` (data/augment.py);
Ghiasi et al. 2021, "Simple Copy-Paste is a Strong Data Augmentation Method".
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from detjax.data.records import boxes_from_instance_map, instance_pixel_counts
from detjax.data.transforms import FILL, Sample, clip_boxes_np, map_dtype


def _tile_slices(i: int, xc: int, yc: int, h: int, w: int, s2: int):
    """(canvas slice box, tile slice box) of tile ``i`` (0 TL, 1 TR, 2 BL, 3 BR)."""
    if i == 0:
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    elif i == 1:
        a = (xc, max(yc - h, 0), min(xc + w, s2), yc)
        b = (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
    elif i == 2:
        a = (max(xc - w, 0), yc, xc, min(s2, yc + h))
        b = (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
    else:
        a = (xc, yc, min(xc + w, s2), min(s2, yc + h))
        b = (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))
    return a, b


def mosaic4(samples: Sequence[Sample], rng: np.random.Generator, *, size: int,
            min_area_frac: float = 0.1, fill: int = FILL, refit: bool = True) -> Sample:
    """Tiles 4 samples around a random centre on a ``2 size`` x ``2 size`` canvas.

    The centre ``(xc, yc)`` is uniform in ``[size / 2, 3 size / 2]`` (0.25-0.75 of the
    canvas), as in ultralytics ``_mosaic4``; each sample should already have its long
    side equal to ``size``. Boxes are shifted, clipped to the canvas and dropped when
    less than ``min_area_frac`` of their area (of visible pixels, with instance maps)
    remains. Follow with ``random_affine(out_size=(size, size))`` to get the final image.
    With ``refit=False`` the instance map is carried along but boxes are only clipped and
    filtered by box area (cheaper: a following geometric op re-fits them anyway).
    """
    if len(samples) != 4:
        raise ValueError(f"mosaic4 needs 4 samples, got {len(samples)}")
    s2 = 2 * size
    yc = int(rng.uniform(size / 2, 3 * size / 2))
    xc = int(rng.uniform(size / 2, 3 * size / 2))
    canvas = np.full((s2, s2, 3), fill, np.uint8)
    use_maps = all(s.instance_map is not None for s in samples)
    total = sum(len(smp.labels) for smp in samples)
    imap = np.zeros((s2, s2), map_dtype(total)) if use_maps else None
    labels, before, old = [], [], []
    offset = 0
    for i, smp in enumerate(samples):
        h, w = smp.size
        (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = _tile_slices(i, xc, yc, h, w, s2)
        canvas[y1a:y2a, x1a:x2a] = smp.image[y1b:y2b, x1b:x2b]
        n = len(smp.labels)
        if use_maps:
            tile = smp.instance_map[y1b:y2b, x1b:x2b].astype(imap.dtype)
            imap[y1a:y2a, x1a:x2a] = tile + (tile > 0).astype(imap.dtype) * offset
            if refit:
                before.append(instance_pixel_counts(smp.instance_map, n))
        shift = np.array([x1a - x1b, y1a - y1b] * 2, np.float32)
        old.append(smp.boxes + shift)
        labels.append(smp.labels)
        offset += n
    old_boxes = np.concatenate(old) if old else np.zeros((0, 4), np.float32)
    out = Sample(canvas, old_boxes, np.concatenate(labels), imap)
    if use_maps and refit:
        new_boxes, after = boxes_from_instance_map(imap, offset)
        keep = (after > 0) & (after >= min_area_frac * np.concatenate(before))
        return Sample(canvas, new_boxes, out.labels, imap).select(keep)
    clipped = clip_boxes_np(old_boxes, (s2, s2))
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    keep = (area(clipped) > 0) & (area(clipped) >= min_area_frac * area(old_boxes))
    return Sample(canvas, clipped, out.labels, imap).select(keep)


def mixup(a: Sample, b: Sample, rng: np.random.Generator, *, alpha: float = 32.0,
          beta: float = 32.0) -> Sample:
    """Blends two same-size images with ``r ~ Beta(alpha, beta)`` and keeps both box sets
    (ultralytics ``MixUp``, r ~ Beta(32, 32)). The instance map is dropped (masks of the
    two images overlap), so later geometric ops use box corners."""
    if a.size != b.size:
        raise ValueError(f"mixup needs equal image sizes, got {a.size} and {b.size}")
    r = rng.beta(alpha, beta)
    image = (a.image.astype(np.float32) * r + b.image.astype(np.float32) * (1 - r))
    return Sample(image.astype(np.uint8), np.concatenate([a.boxes, b.boxes]),
                  np.concatenate([a.labels, b.labels]), None)


def _ioa(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Intersection over the area of ``boxes`` ``[n, 4]`` vs ``others`` ``[m, 4]`` -> [n, m]."""
    lt = np.maximum(boxes[:, None, :2], others[None, :, :2])
    rb = np.minimum(boxes[:, None, 2:], others[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / (area[:, None] + 1e-9)


def copy_paste(dst: Sample, src: Sample, rng: np.random.Generator, *, p: float = 0.5,
               max_ioa: float = 0.3, max_cover: float = 0.6) -> Sample:
    """Pastes the visible pixels of random ``src`` objects onto ``dst`` (same size).

    ``src`` needs an instance map. Each src object whose box overlaps every dst box by
    at most ``max_ioa`` (intersection over the src box's area) is pasted with probability
    ``p`` (ultralytics ``CopyPaste`` rule, which pastes from the flipped image itself).
    With a dst instance map, covered dst objects shrink to their remaining pixels and
    are dropped when they lose more than ``max_cover`` of them.
    """
    if src.instance_map is None:
        raise ValueError("copy_paste needs src.instance_map (instance masks)")
    if src.size != dst.size:
        raise ValueError(f"copy_paste needs equal sizes, got {dst.size} and {src.size}")
    n_src, n_dst = len(src.labels), len(dst.labels)
    if n_src == 0:
        return dst
    ioa = _ioa(src.boxes, dst.boxes).max(1) if n_dst else np.zeros(n_src)
    chosen = np.nonzero((ioa <= max_ioa) & (rng.uniform(size=n_src) < p))[0]
    if len(chosen) == 0:
        return dst
    image = dst.image.copy()
    imap = None
    if dst.instance_map is not None:
        imap = dst.instance_map.astype(map_dtype(n_dst + len(chosen)))  # a copy
    for j, k in enumerate(chosen):
        m = src.instance_map == k + 1
        image[m] = src.image[m]
        if imap is not None:
            imap[m] = n_dst + j + 1
    boxes = np.concatenate([dst.boxes, src.boxes[chosen]])
    labels = np.concatenate([dst.labels, src.labels[chosen]])
    if imap is None:
        return Sample(image, boxes, labels, None)
    before = instance_pixel_counts(dst.instance_map, n_dst)
    boxes, after = boxes_from_instance_map(imap, len(labels))
    keep = after > 0
    keep[:n_dst] &= after[:n_dst] >= (1 - max_cover) * before
    return Sample(image, boxes, labels, imap).select(keep)


def box_copy_paste(dst: Sample, src: Sample, rng: np.random.Generator, *,
                   class_p: float | Sequence[float] = 1.0, max_ioa: float = 0.3,
                   tries: int = 10) -> Sample:
    """Pastes rectangular crops of ``src`` objects at random free places of ``dst`` (no masks).

    Each ``src`` object of class ``c`` is taken with probability ``class_p[c]`` (or the scalar
    ``class_p``), so rare classes can be pasted more often. Its crop is the pixel rectangle
    ``floor(x1), floor(y1), ceil(x2), ceil(y2)`` of the ``src`` box; up to ``tries`` random
    integer positions are drawn and the first one whose intersection with every box already in
    the image (pasted ones included) is at most ``max_ioa`` of either box's area is used. The
    pasted box is exactly the rectangle written, in ``dst`` pixels (xyxy). Crops larger than
    ``dst`` or thinner than 2 pixels are skipped.
    """
    if len(src.labels) == 0:
        return dst
    if np.ndim(class_p) == 0:
        probs = np.full(len(src.labels), float(class_p))
    else:
        table = np.asarray(class_p, np.float64)
        if src.labels.max(initial=0) >= len(table):
            raise ValueError(f"class_p has {len(table)} entries but src has class "
                             f"{int(src.labels.max())}")
        probs = table[src.labels]
    h, w = dst.image.shape[:2]
    sh, sw = src.image.shape[:2]
    image = dst.image.copy()
    boxes, labels = [dst.boxes.reshape(-1, 4)], [dst.labels]
    current = dst.boxes.reshape(-1, 4).astype(np.float64)
    for k in np.nonzero(rng.uniform(size=len(src.labels)) < probs)[0]:
        x0, y0 = np.floor(np.clip(src.boxes[k, :2], 0, [sw, sh])).astype(int)
        x1, y1 = np.ceil(np.clip(src.boxes[k, 2:], 0, [sw, sh])).astype(int)
        cw, ch = x1 - x0, y1 - y0
        if cw < 2 or ch < 2 or cw > w or ch > h:
            continue
        for _ in range(tries):
            px, py = int(rng.integers(w - cw + 1)), int(rng.integers(h - ch + 1))
            new = np.array([[px, py, px + cw, py + ch]], np.float64)
            if len(current) and max(_ioa(new, current).max(), _ioa(current, new).max()) > max_ioa:
                continue
            image[py:py + ch, px:px + cw] = src.image[y0:y1, x0:x1]
            current = np.concatenate([current, new])
            boxes.append(new.astype(np.float32))
            labels.append(src.labels[k:k + 1])
            break
    if len(current) == len(dst.labels):
        return dst
    return Sample(image, np.concatenate(boxes).astype(np.float32),
                  np.concatenate(labels).astype(dst.labels.dtype), None)
