"""Single-image augmentations on NumPy samples (image + xyxy boxes + optional instance map).

A :class:`Sample` holds ``image`` uint8 ``[H, W, 3]`` RGB, ``boxes`` float32 ``[n, 4]`` xyxy
absolute pixels, ``labels`` int32 ``[n]`` and an optional ``instance_map`` int32 ``[H, W]``
(value ``k + 1`` marks the visible pixels of object ``k``). Every geometric op warps the
instance map with nearest-neighbour sampling when present and then recomputes each box as
the tight box of the object's remaining pixels, so boxes stay tight under rotation, shear
and erasing; without a map, boxes are mapped through their corners (enclosing, like
ultralytics without segments). Randomness comes only from the ``rng`` argument
(``numpy.random.Generator``): the same generator state gives the same output.

References: ultralytics ``data/augment.py`` (LetterBox, RandomHSV, RandomPerspective,
box_candidates, RandomFlip), torchvision ``RandomErasing`` (cutout), albumentations 2.0.8.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from detjax.data.records import boxes_from_instance_map, instance_pixel_counts

FILL = 114  # ultralytics' grey pad value


@dataclasses.dataclass
class Sample:
    """One image with its annotations; see the module docstring for shapes."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    instance_map: np.ndarray | None = None  # any integer dtype; uint16 is fastest

    def __post_init__(self):
        self.boxes = np.asarray(self.boxes, np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, np.int32).reshape(-1)
        if len(self.boxes) != len(self.labels):
            raise ValueError(f"boxes [{len(self.boxes)}, 4] and labels [{len(self.labels)}] "
                             "must have the same length")
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 [H, W, 3], got {self.image.dtype} "
                             f"{self.image.shape}")

    @property
    def size(self) -> tuple[int, int]:
        return self.image.shape[0], self.image.shape[1]

    def select(self, keep: np.ndarray) -> Sample:
        """Keeps the objects where ``keep`` (bool [n]) is true, renumbering the map."""
        keep = np.asarray(keep, bool)
        imap = self.instance_map
        if imap is not None and not keep.all():
            remap = np.zeros(max(len(keep), int(imap.max(initial=0))) + 1, imap.dtype)
            remap[1:len(keep) + 1][keep] = np.arange(1, int(keep.sum()) + 1)
            imap = np.take(remap, imap)
        return Sample(self.image, self.boxes[keep], self.labels[keep], imap)


def box_candidates(old: np.ndarray, new: np.ndarray, *, wh_thr: float = 2.0,
                   ar_thr: float = 100.0, area_thr: float = 0.1,
                   eps: float = 1e-16) -> np.ndarray:
    """bool ``[n]``: boxes (xyxy ``[n, 4]``) still worth keeping after a transform.

    ``new`` must be wider and taller than ``wh_thr`` px, keep more than ``area_thr`` of
    ``old``'s area (``old`` already scaled by the transform) and have aspect ratio below
    ``ar_thr``. Same rule as ultralytics ``RandomPerspective.box_candidates``.
    """
    w1, h1 = old[:, 2] - old[:, 0], old[:, 3] - old[:, 1]
    w2, h2 = new[:, 2] - new[:, 0], new[:, 3] - new[:, 1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def clip_boxes_np(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Clips xyxy ``[n, 4]`` boxes to an image of ``size`` (h, w); returns a new array."""
    out = np.array(boxes, np.float32, copy=True)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, size[1])
    out[:, 1::2] = np.clip(out[:, 1::2], 0, size[0])
    return out


def refresh_boxes(sample: Sample, *, min_pixels: int = 1) -> Sample:
    """Recomputes boxes from the instance map (tight); drops objects with < min_pixels."""
    if sample.instance_map is None:
        return sample
    boxes, counts = boxes_from_instance_map(sample.instance_map, len(sample.labels))
    out = Sample(sample.image, boxes, sample.labels, sample.instance_map)
    return out.select(counts >= min_pixels)


def map_dtype(n: int) -> type:
    """The narrowest map dtype OpenCV can warp for ``n`` objects (uint16, else int32)."""
    return np.uint16 if n < 2**16 else np.int32


def _warp_map(imap: np.ndarray, fn) -> np.ndarray:
    """Applies an OpenCV nearest-neighbour warp ``fn`` to an instance map of any int dtype."""
    if imap.dtype in (np.uint8, np.uint16):
        return fn(imap)
    return fn(imap.astype(np.float32)).astype(imap.dtype)  # cv2 cannot warp int32


def _transform_corners(boxes: np.ndarray, m: np.ndarray) -> np.ndarray:
    """Enclosing xyxy boxes of the 4 corners of each box under the 2x3/3x3 affine ``m``."""
    n = len(boxes)
    if n == 0:
        return boxes.reshape(0, 4).astype(np.float32)
    x1, y1, x2, y2 = boxes.T
    xs = np.stack([x1, x2, x2, x1], 1)  # [n, 4]
    ys = np.stack([y1, y1, y2, y2], 1)
    tx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
    ty = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
    return np.stack([tx.min(1), ty.min(1), tx.max(1), ty.max(1)], 1).astype(np.float32)


def warp_affine(sample: Sample, m: np.ndarray, out_size: tuple[int, int], *,
                area_thr: float = 0.1, fill: int = FILL) -> Sample:
    """Applies the 2x3 affine ``m`` (input pixel -> output pixel) and fixes the boxes.

    Output is ``out_size`` (h, w). With an instance map, boxes are re-derived from the
    warped map (tight); else from warped corners, clipped. Objects failing
    :func:`box_candidates` (against the corner-mapped box) are dropped.
    """
    import cv2

    h, w = out_size
    m = np.asarray(m, np.float64)[:2]
    image = cv2.warpAffine(sample.image, m, (w, h), flags=cv2.INTER_LINEAR,
                           borderValue=(fill, fill, fill))
    corners = _transform_corners(sample.boxes, m)
    if sample.instance_map is not None:
        imap = _warp_map(sample.instance_map, lambda a: cv2.warpAffine(
            a, m, (w, h), flags=cv2.INTER_NEAREST, borderValue=0))
        boxes, counts = boxes_from_instance_map(imap, len(sample.labels))
        keep = counts > 0
        out = Sample(image, boxes, sample.labels, imap)
    else:
        out = Sample(image, clip_boxes_np(corners, (h, w)), sample.labels, None)
        keep = np.ones(len(sample.labels), bool)
    keep &= box_candidates(corners, out.boxes, area_thr=area_thr)
    return out.select(keep)


def resize(sample: Sample, out_size: tuple[int, int]) -> Sample:
    """Resizes to ``out_size`` (h, w): bilinear image, nearest map. Boxes are scaled, then
    re-fit to the map's pixels where the object still has some (never dropped here)."""
    import cv2

    h0, w0 = sample.size
    h, w = out_size
    if (h, w) == (h0, w0):
        return sample
    image = cv2.resize(sample.image, (w, h), interpolation=cv2.INTER_LINEAR)
    sx, sy = w / w0, h / h0
    boxes = sample.boxes * np.array([sx, sy, sx, sy], np.float32)
    imap = None
    if sample.instance_map is not None:
        imap = _warp_map(sample.instance_map, lambda a: cv2.resize(
            a, (w, h), interpolation=cv2.INTER_NEAREST))
    if imap is not None:  # tight boxes from the map; objects lost to nearest sampling
        fit, counts = boxes_from_instance_map(imap, len(sample.labels))  # keep scaled boxes
        boxes = np.where((counts > 0)[:, None], fit, boxes)
    return Sample(image, boxes, sample.labels, imap)


def resize_long_side(sample: Sample, size: int) -> Sample:
    """Resizes so the longer side is ``size`` px, keeping aspect (ultralytics load_image)."""
    h0, w0 = sample.size
    r = size / max(h0, w0)
    if r == 1:
        return sample
    return resize(sample, (max(1, round(h0 * r)), max(1, round(w0 * r))))


def letterbox(sample: Sample, size: int | tuple[int, int], *, scaleup: bool = True,
              center: bool = True, fill: int = FILL
              ) -> tuple[Sample, tuple[float, float], tuple[int, int]]:
    """Aspect-preserving resize into ``size`` (int or (h, w)) with ``fill`` padding.

    Returns ``(sample, (sx, sy), (left, top))`` with ``box_out = box_in * s + pad``.
    Follows ultralytics ``LetterBox`` (r = min(h'/h, w'/w), resized to round(w r) x
    round(h r), pad split round(d -/+ 0.1)) but maps boxes with the exact per-axis scale
    and the integer pad actually used, so boxes stay pixel-exact.
    """
    import cv2

    th, tw = (size, size) if isinstance(size, int) else size
    h0, w0 = sample.size
    r = min(th / h0, tw / w0)
    if not scaleup:
        r = min(r, 1.0)
    nw, nh = round(w0 * r), round(h0 * r)
    dw, dh = tw - nw, th - nh
    if center:
        dw, dh = dw / 2, dh / 2
    top, bottom = (round(dh - 0.1), round(dh + 0.1)) if center else (0, round(dh + 0.1))
    left, right = (round(dw - 0.1), round(dw + 0.1)) if center else (0, round(dw + 0.1))
    out = resize(sample, (nh, nw))
    image = cv2.copyMakeBorder(out.image, top, bottom, left, right, cv2.BORDER_CONSTANT,
                               value=(fill, fill, fill))
    imap = None
    if out.instance_map is not None:
        imap = np.pad(out.instance_map, ((top, bottom), (left, right)))
    boxes = out.boxes + np.array([left, top, left, top], np.float32)
    sx, sy = nw / w0, nh / h0
    return Sample(image, boxes, out.labels, imap), (sx, sy), (left, top)


def horizontal_flip(sample: Sample) -> Sample:
    """Mirrors left-right: ``x -> W - x`` (exact for boxes, tight stays tight)."""
    import cv2

    w = sample.size[1]
    b = sample.boxes
    boxes = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1)
    imap = None if sample.instance_map is None else _warp_map(sample.instance_map,
                                                              lambda a: cv2.flip(a, 1))
    return Sample(cv2.flip(sample.image, 1), boxes, sample.labels, imap)


def random_hsv(sample: Sample, rng: np.random.Generator, *, hgain: float = 0.5,
               sgain: float = 0.5, vgain: float = 0.5) -> Sample:
    """HSV jitter by lookup tables; semantics of ultralytics ``RandomHSV`` (>= 8.3.79).

    ``r = U(-1, 1, 3) * (hgain, sgain, vgain)``; OpenCV hue (0..179) shifts by
    ``r_h * 180`` (mod 180); saturation and value scale by ``1 + r``, clipped to 255.
    Pass ``hgain=0.015, sgain=0.7, vgain=0.4`` for the ultralytics training defaults.
    """
    import cv2

    if not (hgain or sgain or vgain):
        return sample
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain])
    x = np.arange(256, dtype=np.float64)
    lut = np.stack([((x + r[0] * 180) % 180), np.clip(x * (r[1] + 1), 0, 255),
                    np.clip(x * (r[2] + 1), 0, 255)], -1).astype(np.uint8).reshape(1, 256, 3)
    hsv = cv2.cvtColor(sample.image, cv2.COLOR_RGB2HSV)
    image = cv2.cvtColor(cv2.LUT(hsv, lut), cv2.COLOR_HSV2RGB)
    return dataclasses.replace(sample, image=image)


def affine_matrix(rng: np.random.Generator, in_size: tuple[int, int],
                  out_size: tuple[int, int], *, degrees: float = 0.0, translate: float = 0.1,
                  scale: float = 0.5, shear: float = 0.0) -> tuple[np.ndarray, float]:
    """The random 3x3 matrix of ultralytics ``RandomPerspective`` (no perspective term).

    Centre the input, rotate by U(-degrees, degrees) and scale by U(1 - scale, 1 + scale),
    shear by U(-shear, shear) degrees, move to U(0.5 -/+ translate) of the output size.
    Returns ``(M, s)`` with ``s`` the scale factor drawn.
    """
    import cv2

    h_in, w_in = in_size
    h, w = out_size
    c = np.eye(3)
    c[0, 2], c[1, 2] = -w_in / 2, -h_in / 2
    a = rng.uniform(-degrees, degrees)
    s = rng.uniform(1 - scale, 1 + scale)
    r = np.eye(3)
    r[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    sh = np.eye(3)
    sh[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    sh[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    t = np.eye(3)
    t[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * w
    t[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * h
    return t @ sh @ r @ c, s


def random_affine(sample: Sample, rng: np.random.Generator, *,
                  out_size: tuple[int, int] | None = None, degrees: float = 0.0,
                  translate: float = 0.1, scale: float = 0.5, shear: float = 0.0,
                  area_thr: float = 0.1, fill: int = FILL) -> Sample:
    """Random rotate/scale/shear/translate (ultralytics ``RandomPerspective``, no perspective).

    ``out_size`` (h, w) defaults to the input size; a mosaic passes half its canvas
    (ultralytics' ``border = -size // 2``). Boxes follow :func:`warp_affine`.
    """
    out_size = sample.size if out_size is None else out_size
    m, _ = affine_matrix(rng, sample.size, out_size, degrees=degrees, translate=translate,
                         scale=scale, shear=shear)
    return warp_affine(sample, m, out_size, area_thr=area_thr, fill=fill)


def cutout(sample: Sample, rng: np.random.Generator, *, num_holes: int = 1,
           scale: tuple[float, float] = (0.02, 0.2), ratio: tuple[float, float] = (0.3, 3.3),
           max_cover: float = 0.6, fill: int | None = None) -> Sample:
    """Random erasing: ``num_holes`` rectangles of area ``scale`` x image area, aspect
    ``ratio`` (torchvision RandomErasing), filled with a random colour (or ``fill``).

    Objects losing more than ``max_cover`` of their visible pixels (with an instance map)
    or of their box area (without: ultralytics' ioa > 0.6 rule) are dropped; with a map
    the other boxes shrink to their remaining pixels.
    """
    h, w = sample.size
    image = sample.image.copy()
    imap = None if sample.instance_map is None else sample.instance_map.copy()
    n = len(sample.labels)
    before = instance_pixel_counts(imap, n) if imap is not None else None
    keep = np.ones(n, bool)
    for _ in range(num_holes):
        area = h * w * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        eh = min(h, max(1, round(math.sqrt(area * aspect))))
        ew = min(w, max(1, round(math.sqrt(area / aspect))))
        y0, x0 = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
        color = rng.integers(64, 192, 3) if fill is None else np.full(3, fill)
        image[y0:y0 + eh, x0:x0 + ew] = color.astype(np.uint8)
        if imap is not None:
            imap[y0:y0 + eh, x0:x0 + ew] = 0
        else:
            b = sample.boxes
            iw = np.clip(np.minimum(b[:, 2], x0 + ew) - np.maximum(b[:, 0], x0), 0, None)
            ih = np.clip(np.minimum(b[:, 3], y0 + eh) - np.maximum(b[:, 1], y0), 0, None)
            barea = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) + 1e-9
            keep &= iw * ih / barea <= max_cover
    out = Sample(image, sample.boxes, sample.labels, imap)
    if imap is None:
        return out.select(keep)
    boxes, after = boxes_from_instance_map(imap, n)
    keep = (after > 0) & (after >= (1 - max_cover) * before)
    return Sample(image, boxes, sample.labels, imap).select(keep)


# ----------------------------------------------------------------------------- albumentations

GEOMETRIC_DEFAULTS: Mapping[str, float] = {
    "hflip_p": 0.5, "rotate_limit": 15.0, "rotate_p": 0.3, "scale_limit": 0.2,
    "scale_p": 0.3, "translate": 0.1, "translate_p": 0.3}
COLOR_DEFAULTS: Mapping[str, float] = {
    "brightness_contrast_p": 0.3, "hue_saturation_p": 0.3, "clahe_p": 0.1, "blur_p": 0.1,
    "noise_p": 0.1}


def albu_geometric(**params: float):
    """albumentations 2.0.8 Compose: HorizontalFlip, Rotate, RandomScale, Affine(translate),
    with pascal_voc bbox params (``GEOMETRIC_DEFAULTS`` for the knobs)."""
    import albumentations as A
    import cv2

    p = {**GEOMETRIC_DEFAULTS, **params}
    _check_keys(params, GEOMETRIC_DEFAULTS, "albu_geometric")
    return A.Compose([
        A.HorizontalFlip(p=p["hflip_p"]),
        A.Rotate(limit=p["rotate_limit"], border_mode=cv2.BORDER_CONSTANT, fill=FILL,
                 fill_mask=0, p=p["rotate_p"]),
        A.RandomScale(scale_limit=p["scale_limit"], p=p["scale_p"]),
        A.Affine(translate_percent=(-p["translate"], p["translate"]), fill=FILL, fill_mask=0,
                 p=p["translate_p"]),
    ], bbox_params=A.BboxParams(format="pascal_voc", label_fields=["ids"], clip=True,
                                filter_invalid_bboxes=True))


def albu_color(**params: float):
    """albumentations 2.0.8 Compose: RandomBrightnessContrast, HueSaturationValue, CLAHE,
    GaussianBlur, GaussNoise (``COLOR_DEFAULTS`` for the probabilities)."""
    import albumentations as A

    p = {**COLOR_DEFAULTS, **params}
    _check_keys(params, COLOR_DEFAULTS, "albu_color")
    return A.Compose([
        A.RandomBrightnessContrast(p=p["brightness_contrast_p"]),
        A.HueSaturationValue(p=p["hue_saturation_p"]),
        A.CLAHE(p=p["clahe_p"]),
        A.GaussianBlur(p=p["blur_p"]),
        A.GaussNoise(std_range=(0.02, 0.08), p=p["noise_p"]),
    ])


def _check_keys(given: Mapping, known: Mapping, where: str) -> None:
    import difflib

    for k in given:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"{where}: unknown parameter {k!r}{hint} (known: {sorted(known)})")


def apply_albumentations(sample: Sample, compose, rng: np.random.Generator) -> Sample:
    """Runs an albumentations Compose on a sample, seeded from ``rng`` (deterministic).

    Boxes come from the warped instance map when there is one (tight), else from
    albumentations' bbox processing. The image may change size (RandomScale).
    """
    compose.set_random_seed(int(rng.integers(2**31 - 1)))
    n = len(sample.labels)
    kwargs = {"image": sample.image}
    if sample.instance_map is not None:
        if sample.instance_map.max(initial=0) > np.iinfo(np.uint16).max:
            raise ValueError("instance_map holds more than 65535 objects")
        kwargs["mask"] = sample.instance_map.astype(np.uint16)  # cv2 cannot warp int32
    if compose.processors.get("bboxes") is not None:
        h, w = sample.size
        kwargs["bboxes"] = clip_boxes_np(sample.boxes, (h, w)).astype(np.float64).reshape(-1, 4)
        kwargs["ids"] = np.arange(n)
    out = compose(**kwargs)
    image = np.ascontiguousarray(out["image"])
    if sample.instance_map is not None:
        imap = np.asarray(out["mask"]).astype(sample.instance_map.dtype)
        return refresh_boxes(Sample(image, sample.boxes, sample.labels, imap))
    if "bboxes" not in out:
        return Sample(image, sample.boxes, sample.labels, None)
    ids = np.asarray(out["ids"], np.int64).reshape(-1)
    boxes = np.asarray(out["bboxes"], np.float32).reshape(-1, 4)
    return Sample(image, boxes, sample.labels[ids], None)
