"""Detection records, data sets and the report of what was fixed or skipped on load.

A ``Record`` is one annotated image: boxes are ``[n, 4]`` float32 ``xyxy`` absolute
pixels, where pixel ``(row, col)`` covers ``[col, col + 1) x [row, row + 1)``; so a
box that tightly encloses the pixels ``x0..x1`` (inclusive) is ``[x0, ., x1 + 1, .]``.
Labels are int32 ``[n]`` indices into the data set's ``class_names``.

Instance masks are optional and come either from an instance-id map (a PNG whose
pixel value ``k + 1`` marks object ``k``, 0 is background: visible masks, disjoint) or
from polygons (``segments``), rasterized on demand by :func:`load_instance_map`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import numpy as np


class DataError(ValueError):
    """A bad file: missing or corrupt image, malformed annotation, unknown class.

    The message always names the file, and the record or line where known.
    """


@dataclasses.dataclass(eq=False)
class Record:
    """One annotated image.

    Attributes:
      image_path: path of the image file.
      image_size: ``(h, w)`` in pixels.
      boxes: float32 ``[n, 4]`` ``xyxy`` absolute pixels.
      labels: int32 ``[n]`` class indices.
      difficult: bool ``[n]`` (Pascal VOC ``difficult`` flag) or None.
      mask_path: instance-id map PNG (value ``k + 1`` = object ``k``) or None.
      segments: one float32 ``[m, 2]`` polygon (x, y pixels) per object, or None.
      image_id: the id the source format gave the image (COCO id, file stem).
    """

    image_path: str
    image_size: tuple[int, int]
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray | None = None
    mask_path: str | None = None
    segments: tuple[np.ndarray, ...] | None = None
    image_id: int | str | None = None

    @property
    def has_masks(self) -> bool:
        return self.mask_path is not None or self.segments is not None


@dataclasses.dataclass
class DataReport:
    """What loading fixed or skipped, with the file (and record/line) for each problem."""

    clipped_boxes: int = 0
    dropped_zero_area: int = 0  # every dropped box: inverted, outside, zero area, NaN
    dropped_crowd: int = 0
    skipped_images: int = 0
    too_many_boxes: int = 0
    problems: list[str] = dataclasses.field(default_factory=list)
    skipped_files: list[str] = dataclasses.field(default_factory=list)

    def add(self, message: str) -> None:
        self.problems.append(message)

    def skip(self, message: str, path: str) -> None:
        """Counts a skipped image (or annotation file) ``path`` and records why."""
        self.skipped_images += 1
        self.skipped_files.append(path)
        self.problems.append(message)

    def merge(self, other: DataReport) -> None:
        for f in dataclasses.fields(self):
            mine = getattr(self, f.name)
            if isinstance(mine, list):
                mine.extend(getattr(other, f.name))
            else:
                setattr(self, f.name, mine + getattr(other, f.name))

    def counts(self) -> str:
        """The non-zero counters as ``name=value, ...`` (or ``no problems``)."""
        counts = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if isinstance(getattr(self, f.name), int) and getattr(self, f.name)}
        return ", ".join(f"{k}={v}" for k, v in counts.items()) or "no problems"

    def summary(self, max_lines: int = 10) -> str:
        lines = [self.counts()]
        lines += self.problems[:max_lines]
        if len(self.problems) > max_lines:
            lines.append(f"... and {len(self.problems) - max_lines} more")
        return "\n".join(lines)


class DetectionDataset(Sequence[Record]):
    """A list of :class:`Record` with ``class_names`` and a load :class:`DataReport`.

    ``on_error`` ("raise" or "skip") is what a loader does by default when one of its
    images fails to decode later (it was loaded with this setting).
    """

    def __init__(self, records: Sequence[Record], class_names: Sequence[str], *,
                 report: DataReport | None = None, root: str | None = None,
                 on_error: str = "raise"):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
        self.records = list(records)
        self.class_names = tuple(str(c) for c in class_names)
        self.report = report if report is not None else DataReport()
        self.root = root
        self.on_error = on_error
        self.verify_stats: dict[str, int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index):  # type: ignore[override]
        if isinstance(index, slice):
            return DetectionDataset(self.records[index], self.class_names,
                                    report=self.report, root=self.root, on_error=self.on_error)
        return self.records[index]

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    def __repr__(self) -> str:
        n = sum(len(r.labels) for r in self.records)
        return (f"DetectionDataset({len(self)} images, {n} boxes, "
                f"{len(self.class_names)} classes)")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def sanitize_boxes(boxes: np.ndarray, image_size: tuple[int, int], *, where: str,
                   report: DataReport) -> tuple[np.ndarray, np.ndarray]:
    """Clips ``[n, 4]`` xyxy boxes to the image; returns (bool keep mask ``[n]``, clipped boxes).

    Boxes that leave the image are clipped and counted. Dropped, counted and named by
    ``where`` with the reason: inverted (``x2 < x1`` or ``y2 < y1``), outside the image
    (no area left after clipping), zero area, or non-finite coordinates.
    """
    h, w = image_size
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    finite = np.isfinite(boxes).all(axis=1)
    clipped = boxes.copy()
    clipped[:, 0::2] = np.clip(clipped[:, 0::2], 0, w)
    clipped[:, 1::2] = np.clip(clipped[:, 1::2], 0, h)
    changed = finite & (np.abs(clipped - boxes) > 1e-3).any(axis=1)
    ok = finite & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    report.clipped_boxes += int((changed & ok).sum())
    n_bad = int((~ok).sum())
    if n_bad:
        inverted = finite & ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
        flat = finite & ~inverted & ((boxes[:, 2] == boxes[:, 0]) | (boxes[:, 3] == boxes[:, 1]))
        outside = ~ok & finite & ~inverted & ~flat
        reasons = {"inverted": inverted, "outside the image": outside, "zero area": flat,
                   "non-finite": ~finite}
        why = ", ".join(f"{int(m.sum())} {k}" for k, m in reasons.items() if m.any())
        report.dropped_zero_area += n_bad
        report.add(f"{where}: dropped {n_bad} box(es): {why}")
    boxes[:] = clipped
    return ok, boxes


def check_class_names(found: Sequence[str], known: Sequence[str], *, where: str) -> None:
    """Raises DataError naming every class in ``found`` that is not in ``known``."""
    unknown = sorted(set(found) - set(known))
    if unknown:
        raise DataError(f"{where}: unknown class name(s) {unknown}; known classes are "
                        f"{list(known)}")


def read_image(path: str) -> np.ndarray:
    """Reads an image as uint8 ``[H, W, 3]`` RGB; DataError naming the file if it fails."""
    import cv2

    data = np.fromfile(path, np.uint8) if _exists(path) else None
    if data is None:
        raise DataError(f"{path}: image file not found")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def load_instance_map(record: Record) -> np.ndarray | None:
    """Instance-id map ``[h, w]`` (``k + 1`` = object ``k``; uint8/uint16 as stored,
    uint16 when rasterized from polygons) of a record, or None.

    From ``mask_path`` when set, else rasterized from ``segments`` in order (later
    objects paint over earlier ones, so the map holds visible masks).
    """
    import cv2

    if record.mask_path is not None:
        m = cv2.imread(record.mask_path, cv2.IMREAD_UNCHANGED)
        if m is None:
            raise DataError(f"{record.mask_path}: cannot read instance mask of "
                            f"{record.image_path}")
        if m.shape[:2] != tuple(record.image_size):
            raise DataError(f"{record.mask_path}: mask shape {m.shape[:2]} != image size "
                            f"{tuple(record.image_size)}")
        if m.ndim != 2 or m.dtype not in (np.uint8, np.uint16):
            raise DataError(f"{record.mask_path}: instance mask must be a 1-channel 8/16-bit "
                            f"PNG, got {m.dtype} {m.shape}")
        return m
    if record.segments is not None:
        h, w = record.image_size
        m = np.zeros((h, w), np.uint16 if len(record.segments) < 2**16 else np.int32)
        for k, poly in enumerate(record.segments):
            if poly is not None and len(poly) >= 3:
                cv2.fillPoly(m, [np.round(poly).astype(np.int32)], k + 1)
        return m
    return None


def instance_pixel_counts(instance_map: np.ndarray, n: int) -> np.ndarray:
    """Visible pixel count int64 ``[n]`` of objects 1..n in an instance-id map."""
    ids = instance_map.ravel()
    return np.bincount(ids[(ids > 0) & (ids <= n)], minlength=n + 1)[1:n + 1]


def boxes_from_instance_map(instance_map: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Tight ``[n, 4]`` xyxy boxes and pixel counts ``[n]`` of objects 1..n in an id map.

    Objects with no visible pixel get a zero box and count 0.
    """
    from scipy import ndimage

    boxes = np.zeros((n, 4), np.float32)
    if n == 0:
        return boxes, np.zeros(0, np.int64)
    imap = np.asarray(instance_map)
    if not np.issubdtype(imap.dtype, np.integer):
        raise TypeError(f"instance_map must be an integer array, got {imap.dtype}")
    counts = instance_pixel_counts(imap, n)
    for k, sl in enumerate(ndimage.find_objects(imap, max_label=n)):
        if sl is not None:
            boxes[k] = (sl[1].start, sl[0].start, sl[1].stop, sl[0].stop)
    return boxes, counts
