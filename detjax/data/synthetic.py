"""The embedded default data set: procedurally generated shapes on cluttered backgrounds.

``synthetic_dataset(split)`` returns a :class:`DetectionDataset` of ``SHAPES`` (7 visually
distinct classes: ellipse, rectangle, triangle, star, cross, ring, arrow) drawn with
solid, striped, checkered or gradient fills in varied colours, at scales from small
(~20 px at the default 256 px, difficulty 0.5) to ~115 px, with random aspect ratios and
rotations, limited occlusion, 0 to many objects per image, on smooth-noise backgrounds
with clutter lines and dots. Boxes are exact: each box tightly encloses the object's
*visible* pixels (``xyxy`` pixel edges); an object is only placed if every object it
covers keeps at least ``min_visible`` of its pixels, so no labelled object is hidden.
Instance masks (visible, disjoint) are saved as instance-id PNGs.

Generation is deterministic per (seed, split, index), independent of the number of
images, and cached on disk as a COCO-format data set (``annotations/instances_<split>.json``
plus ``images/<split>/*.jpg`` (JPEG quality 95) and ``masks/<split>/*.png``) under ``cache_dir``
(default ``$DETJAX_CACHE`` or ``~/.cache/detjax``), keyed by every parameter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile

import numpy as np

from detjax.data.records import DetectionDataset

SHAPES = ("ellipse", "rectangle", "triangle", "star", "cross", "ring", "arrow")
_VERSION = 3  # bump when the generator's output changes, so caches are rebuilt
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator. ``difficulty`` in [0, 1] sets the defaults marked (d).

    Attributes:
      image_size: square image side in pixels.
      difficulty: 0 = few big unoccluded objects on calm backgrounds; 1 = many small,
        occluded objects, strong clutter and textures.
      min_size, max_size: object size range as a fraction of ``image_size`` (d).
      max_objects: objects per image: none with probability ``empty_prob``, else uniform
        in ``1..max_objects`` (d); fewer when placement fails the occlusion limit.
      empty_prob: probability of an image without objects.
      min_visible: smallest visible fraction of an occluded object (d).
      clutter: number of clutter strokes per image (d).
      max_aspect: largest aspect ratio of stretched shapes (d).
    """

    image_size: int = 256
    difficulty: float = 0.5
    min_size: float | None = None
    max_size: float | None = None
    max_objects: int | None = None
    empty_prob: float = 0.05
    min_visible: float | None = None
    clutter: int | None = None
    max_aspect: float | None = None

    def resolved(self) -> SyntheticConfig:
        d = float(self.difficulty)
        if not 0.0 <= d <= 1.0:
            raise ValueError(f"difficulty must be in [0, 1], got {d}")
        lerp = lambda a, b: a + (b - a) * d
        pick = lambda v, default: default if v is None else v
        return dataclasses.replace(
            self,
            min_size=pick(self.min_size, lerp(0.12, 0.035)),
            max_size=pick(self.max_size, lerp(0.40, 0.50)),
            max_objects=int(pick(self.max_objects, round(lerp(6, 20)))),
            min_visible=pick(self.min_visible, lerp(0.85, 0.4)),
            clutter=int(pick(self.clutter, round(lerp(2, 30)))),
            max_aspect=pick(self.max_aspect, lerp(1.5, 3.0)),
        )


def _random_color(rng: np.random.Generator, *, sat: tuple[float, float],
                  val: tuple[float, float]) -> np.ndarray:
    """A random RGB colour (float32 [3], 0..255) with saturation/value in the given ranges."""
    import colorsys

    h = rng.uniform()
    s = rng.uniform(*sat)
    v = rng.uniform(*val)
    return np.array(colorsys.hsv_to_rgb(h, s, v), np.float32) * 255


def _background(rng: np.random.Generator, size: int, cfg: SyntheticConfig) -> np.ndarray:
    """Smooth low-frequency colour noise + grain + clutter strokes, uint8 [size, size, 3]."""
    import cv2

    d = cfg.difficulty
    base = _random_color(rng, sat=(0.0, 0.3 + 0.4 * d), val=(0.25, 0.85))
    cells = int(rng.integers(2, 7))
    low = rng.normal(0, 18 + 30 * d, (cells, cells, 3)).astype(np.float32)
    img = cv2.resize(low, (size, size), interpolation=cv2.INTER_CUBIC) + base
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * (3 + 6 * d)
    img = np.clip(img, 0, 255).astype(np.uint8)
    for _ in range(int(cfg.clutter)):
        color = tuple(int(c) for c in _random_color(rng, sat=(0, 0.6), val=(0.2, 0.9)))
        if rng.uniform() < 0.6:  # thin line or polyline
            pts = rng.integers(-size // 4, size + size // 4, (int(rng.integers(2, 5)), 2))
            cv2.polylines(img, [pts.astype(np.int32)], False, color,
                          int(rng.integers(1, 3)))
        else:  # small dot
            c = rng.integers(0, size, 2)
            cv2.circle(img, (int(c[0]), int(c[1])), int(rng.integers(1, 3)), color, -1)
    return img


def _regular(n: int, r_out: float, r_in: float | None = None, phase: float = 0.0) -> np.ndarray:
    """Vertices of a regular polygon (or star when r_in is given) in the unit frame."""
    k = 2 * n if r_in is not None else n
    t = phase + np.arange(k) * 2 * np.pi / k
    r = np.full(k, r_out) if r_in is None else np.where(np.arange(k) % 2 == 0, r_out, r_in)
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


_UNIT_POLYS = {
    "rectangle": np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], np.float64),
    "triangle": _regular(3, 1.15, phase=-np.pi / 2) + [0, 0.2],
    "star": _regular(5, 1.0, 0.45, phase=-np.pi / 2),
    "cross": np.array([[-0.3, -1], [0.3, -1], [0.3, -0.3], [1, -0.3], [1, 0.3], [0.3, 0.3],
                       [0.3, 1], [-0.3, 1], [-0.3, 0.3], [-1, 0.3], [-1, -0.3],
                       [-0.3, -0.3]], np.float64),
    "arrow": np.array([[-1, -0.3], [0.2, -0.3], [0.2, -0.8], [1, 0], [0.2, 0.8], [0.2, 0.3],
                       [-1, 0.3]], np.float64),
}


def _shape_mask(rng: np.random.Generator, shape: str, size: float, aspect: float,
                angle: float) -> np.ndarray:
    """bool mask [hh, ww] of a shape of nominal ``size`` px, tightly cropped."""
    import cv2

    sx, sy = size / 2 * math.sqrt(aspect), size / 2 / math.sqrt(aspect)
    pad = int(math.ceil(max(sx, sy) * 1.5)) + 2
    canvas = np.zeros((2 * pad, 2 * pad), np.uint8)
    c, s = math.cos(angle), math.sin(angle)
    rot = np.array([[c, -s], [s, c]])
    if shape in ("ellipse", "ring"):
        axes = (max(1, round(sx)), max(1, round(sy)))
        cv2.ellipse(canvas, (pad, pad), axes, math.degrees(angle), 0, 360, 1, -1)
        if shape == "ring":
            inner = (max(1, round(sx * 0.55)), max(1, round(sy * 0.55)))
            cv2.ellipse(canvas, (pad, pad), inner, math.degrees(angle), 0, 360, 0, -1)
    else:
        pts = _UNIT_POLYS[shape] * [sx, sy] @ rot.T + pad
        cv2.fillPoly(canvas, [np.round(pts).astype(np.int32)], 1)
    ys, xs = np.nonzero(canvas)
    if len(ys) == 0:
        return np.ones((1, 1), bool)
    return canvas[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(bool)


def _fill(rng: np.random.Generator, hh: int, ww: int, d: float) -> np.ndarray:
    """Object texture float32 [hh, ww, 3]: solid, stripes, checker or gradient."""
    c1 = _random_color(rng, sat=(0.45, 1.0), val=(0.45, 1.0))
    c2 = _random_color(rng, sat=(0.3, 1.0), val=(0.2, 1.0))
    kind = rng.choice(4, p=[0.5 - 0.2 * d, 0.2 + 0.05 * d, 0.15 + 0.05 * d, 0.15 + 0.1 * d])
    if kind == 0:
        return np.broadcast_to(c1, (hh, ww, 3))
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32)
    if kind == 1:
        t = rng.uniform(0, np.pi)
        period = rng.uniform(3, 10)
        w = ((xx * math.cos(t) + yy * math.sin(t)) // period % 2)[..., None]
    elif kind == 2:
        cell = rng.uniform(3, 9)
        w = ((xx // cell + yy // cell) % 2)[..., None]
    else:
        t = rng.uniform(0, 2 * np.pi)
        g = xx * math.cos(t) + yy * math.sin(t)
        w = ((g - g.min()) / max(float(np.ptp(g)), 1.0))[..., None]
    return c1 * (1 - w) + c2 * w


def generate_image(seed: int, index: int, *, split: str = "train",
                   config: SyntheticConfig = SyntheticConfig()):
    """One synthetic image: (uint8 [S,S,3] RGB, boxes f32 [n,4], labels i32 [n], id map).

    The instance-id map (uint8 ``[S, S]``, uint16 above 255 objects; value ``k + 1`` =
    object ``k``) holds the visible pixels of each object; ``boxes[k]`` tightly encloses
    them (xyxy pixel edges).
    Deterministic in (seed, split, index).
    """
    cfg = config.resolved()
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {tuple(_SPLIT_IDS)}, got {split!r}")
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index, _VERSION])
    size = cfg.image_size
    img = _background(rng, size, cfg).astype(np.float32)
    owner = np.zeros((size, size), np.int32)  # visible object id (k + 1), 0 = none
    areas: list[int] = []
    labels: list[int] = []
    visible = np.zeros(cfg.max_objects + 1, np.int64)  # visible pixels per id
    empty = rng.uniform() < cfg.empty_prob
    n_target = 0 if empty or cfg.max_objects < 1 else int(rng.integers(1, cfg.max_objects + 1))
    lo, hi = math.log(cfg.min_size * size), math.log(cfg.max_size * size)
    for _ in range(n_target):
        cls = int(rng.integers(len(SHAPES)))
        obj_size = math.exp(rng.uniform(lo, hi))
        stretch = SHAPES[cls] in ("ellipse", "rectangle", "cross", "arrow")
        amax = cfg.max_aspect if stretch else min(cfg.max_aspect, 1.3)
        aspect = math.exp(rng.uniform(-math.log(amax), math.log(amax)))
        angle = rng.uniform(-np.pi, np.pi) if SHAPES[cls] != "rectangle" else \
            rng.uniform(-0.3, 0.3) * cfg.difficulty
        mask = _shape_mask(rng, SHAPES[cls], obj_size, aspect, angle)
        hh, ww = mask.shape
        if hh >= size or ww >= size or mask.sum() < 12:
            continue
        for _try in range(8):
            y0 = int(rng.integers(0, size - hh + 1))
            x0 = int(rng.integers(0, size - ww + 1))
            covered = owner[y0:y0 + hh, x0:x0 + ww][mask]
            lost = np.bincount(covered, minlength=len(visible))
            lost[0] = 0
            if len(areas) and not _occlusion_ok(visible, lost, areas, cfg.min_visible):
                continue
            k = len(areas) + 1
            visible -= lost
            visible[k] = int(mask.sum())
            region = owner[y0:y0 + hh, x0:x0 + ww]
            region[mask] = k
            tex = _fill(rng, hh, ww, cfg.difficulty)
            img_region = img[y0:y0 + hh, x0:x0 + ww]
            img_region[mask] = tex[mask]
            areas.append(int(mask.sum()))
            labels.append(cls)
            break
    from detjax.data.records import boxes_from_instance_map

    boxes, counts = boxes_from_instance_map(owner, len(areas))
    keep = counts > 0
    if not keep.all():  # cannot happen with min_visible > 0, kept as a guard
        remap = np.zeros(len(areas) + 1, np.int32)
        remap[1:][keep] = np.arange(1, keep.sum() + 1)
        owner = remap[owner]
        boxes = boxes[keep]
    labels_arr = np.asarray(labels, np.int32)[keep] if labels else np.zeros(0, np.int32)
    map_type = np.uint8 if len(labels_arr) < 256 else np.uint16
    return img.astype(np.uint8), boxes, labels_arr, owner.astype(map_type)


def _occlusion_ok(visible: np.ndarray, lost: np.ndarray, areas: list[int],
                  min_visible: float) -> bool:
    """Whether every object keeps >= min_visible of its full area after losing ``lost``."""
    n = len(areas)
    return bool(((visible[1:n + 1] - lost[1:n + 1]) >= min_visible * np.asarray(areas)).all())


def default_cache_dir() -> str:
    return os.environ.get("DETJAX_CACHE", os.path.join(os.path.expanduser("~"), ".cache",
                                                       "detjax"))


def _cache_key(seed: int, num_images: dict[str, int], cfg: SyntheticConfig) -> str:
    blob = json.dumps({"v": _VERSION, "seed": seed, "n": num_images,
                       "cfg": dataclasses.asdict(cfg)}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _write_images(root: str, split: str, start: int, stop: int, seed: int,
                  cfg: SyntheticConfig) -> list[tuple[dict, list[dict]]]:
    """Writes images ``start..stop-1``; returns their (image entry, annotations) pairs."""
    import cv2

    png = [cv2.IMWRITE_PNG_COMPRESSION, 1]
    jpg = [cv2.IMWRITE_JPEG_QUALITY, 95]  # 6x smaller than PNG, decodes 3x faster
    out = []
    for i in range(start, stop):
        img, boxes, labels, owner = generate_image(seed, i, split=split, config=cfg)
        name, mname = f"{i:06d}.jpg", f"{i:06d}.png"
        cv2.imwrite(os.path.join(root, "images", split, name), img[..., ::-1], jpg)
        cv2.imwrite(os.path.join(root, "masks", split, mname), owner, png)
        entry = {"id": i, "file_name": name, "height": cfg.image_size,
                 "width": cfg.image_size, "mask_file": f"masks/{split}/{mname}"}
        areas = np.bincount(owner.ravel(), minlength=len(labels) + 1)[1:]
        anns = [{"image_id": i, "category_id": c + 1, "area": float(a), "iscrowd": 0,
                 "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
                for b, c, a in zip(boxes.tolist(), labels.tolist(), areas.tolist())]
        out.append((entry, anns))
    return out


def _write_split(root: str, split: str, n: int, seed: int, cfg: SyntheticConfig,
                 workers: int) -> None:
    os.makedirs(os.path.join(root, "images", split), exist_ok=True)
    os.makedirs(os.path.join(root, "masks", split), exist_ok=True)
    if workers > 1 and n >= 200:
        import concurrent.futures as cf
        import multiprocessing as mp

        bounds = np.linspace(0, n, 4 * workers + 1).astype(int)
        with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as ex:
            futs = [ex.submit(_write_images, root, split, int(a), int(b), seed, cfg)
                    for a, b in zip(bounds[:-1], bounds[1:])]
            parts = [item for f in futs for item in f.result()]
    else:
        parts = _write_images(root, split, 0, n, seed, cfg)
    images = [entry for entry, _ in parts]
    anns = [dict(a, id=k + 1) for k, a in enumerate(a for _, al in parts for a in al)]
    cats = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    os.makedirs(os.path.join(root, "annotations"), exist_ok=True)
    with open(os.path.join(root, "annotations", f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": anns, "categories": cats}, f)


def synthetic_dataset(split: str = "train", *, num_train: int = 2000, num_val: int = 300,
                      seed: int = 0, image_size: int = 256, difficulty: float = 0.5,
                      cache_dir: str | None = None, config: SyntheticConfig | None = None,
                      workers: int | None = None) -> DetectionDataset:
    """The embedded default data set (``SHAPES``), generated once and cached on disk.

    Args:
      split: ``"train"`` or ``"val"``.
      num_train, num_val: images per split.
      seed: generator seed; same seed, same pixels and boxes.
      image_size, difficulty: see :class:`SyntheticConfig` (ignored if ``config`` given).
      cache_dir: root of the cache (default ``$DETJAX_CACHE`` or ``~/.cache/detjax``).
      workers: generator processes for the first build (default: up to 2 CPUs); the
        output does not depend on it.

    Returns a COCO-backed :class:`DetectionDataset` whose records carry ``mask_path``.

    >>> ds = synthetic_dataset("val", num_val=8)   # doctest: +SKIP
    >>> ds.class_names[:3]
    ('ellipse', 'rectangle', 'triangle')
    """
    from detjax.data.formats import load_dataset

    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    cfg = config or SyntheticConfig(image_size=image_size, difficulty=difficulty)
    num = {"train": int(num_train), "val": int(num_val)}
    root = os.path.join(cache_dir or default_cache_dir(),
                        f"synthetic-{_cache_key(seed, num, cfg)}")
    if workers is None:
        workers = min(2, os.cpu_count() or 1)
    if not os.path.isfile(os.path.join(root, "DONE")):
        os.makedirs(os.path.dirname(root), exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-synthetic-", dir=os.path.dirname(root))
        try:
            for s, n in num.items():
                _write_split(tmp, s, n, seed, cfg, workers)
            with open(os.path.join(tmp, "DONE"), "w") as f:
                json.dump({"seed": seed, "num": num, "config": dataclasses.asdict(cfg)}, f)
            try:
                os.rename(tmp, root)
            except OSError:  # another process won the race; its copy is identical
                shutil.rmtree(tmp, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return load_dataset(root, format="coco", split=split)
