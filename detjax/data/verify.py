"""Up-front checks of a data set's images, before the first training step.

Every image is decoded once in full (Pillow), so a truncated JPEG, a file that is not an
image, or an image under 10 pixels a side is found before training starts, not in the
middle of an epoch. The size recorded is the displayed size: EXIF orientations 5-8 swap
width and height, as ultralytics' ``exif_size`` does (and OpenCV applies the orientation
when the loader decodes). When an annotation's image size disagrees with the file, the
boxes are scaled to the file's size (ultralytics normalises VOC boxes by the XML size the
same way) and the fix is reported. A file whose content format does not match its
extension (a PNG named ``.jpg``) is read by its content and reported.

Results are cached per image, keyed by path, file size and modification time, in
``$DETJAX_CACHE/verify`` (default ``~/.cache/detjax/verify``), one JSON file per data
set folder and split, so a second load decodes only new or changed files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np

from detjax.data.records import DataError, DataReport, DetectionDataset, Record

MIN_SIDE = 10  # ultralytics check_image: images under 10 px a side are corrupt
# Pillow format -> the extensions it is expected under (the loader's OpenCV reads them all)
FORMATS = {"JPEG": (".jpg", ".jpeg"), "MPO": (".jpg", ".jpeg", ".mpo"), "PNG": (".png",),
           "BMP": (".bmp",), "TIFF": (".tif", ".tiff"), "WEBP": (".webp",)}
_CACHE_VERSION = 1


def verify_image(path: str) -> tuple[tuple[int, int], list[str]]:
    """Decodes an image in full; returns ``((h, w) as displayed, notes)``.

    Raises DataError naming the file when it is missing, is not an image of a known
    format, does not decode to the end (truncated), or is under 10 pixels a side.
    ``notes`` holds fixable oddities (an extension that does not match the content).
    """
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise DataError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            fmt = im.format or "?"
            w, h = im.size
            orientation = im.getexif().get(0x0112)
            im.load()  # full decode: raises on truncated data
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: corrupt or truncated image ({e})") from None
    except Exception as e:  # noqa: BLE001 - Pillow plugins (and ultralytics' patch of
        # Image.open, which tries to import pi_heif on unknown files) raise anything
        raise DataError(f"{path}: not an image ({e!r})") from None
    if fmt not in FORMATS:
        raise DataError(f"{path}: unsupported image format {fmt}")
    if orientation in (5, 6, 7, 8):  # transposed orientations: displayed w and h swap
        w, h = h, w
    if min(h, w) < MIN_SIDE:
        raise DataError(f"{path}: image size {(h, w)} under {MIN_SIDE} pixels")
    notes = []
    if not path.lower().endswith(FORMATS[fmt]):
        notes.append(f"{path}: {fmt} content with extension "
                     f"{os.path.splitext(path)[1] or '(none)'}; read by content")
    return (h, w), notes


def default_cache_dir() -> str:
    root = os.environ.get("DETJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                          "detjax")
    return os.path.join(root, "verify")


def _cache_path(cache_dir: str, key: str) -> str:
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(cache_dir, f"{digest}.json")


def _read_cache(path: str) -> dict:
    try:
        with open(path) as f:
            data = json.load(f)
        return data["images"] if data.get("version") == _CACHE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def _write_cache(path: str, images: dict) -> None:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"version": _CACHE_VERSION, "images": images}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache only costs the next run its time


def _stamp(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def _decode_entry(path: str, stamp: list[int] | None) -> dict:
    try:
        (h, w), notes = verify_image(path)
        return {"stamp": stamp, "size": [h, w], "error": None, "notes": notes}
    except DataError as e:
        return {"stamp": stamp, "size": None, "error": str(e), "notes": []}


def _entries(paths: list[str], cache: dict, workers: int) -> tuple[dict, int]:
    """Cache entries of ``paths``: from ``cache`` where size and mtime match, else decoded
    (in ``workers`` threads: Pillow decodes without the GIL). Returns (entries, decoded)."""
    from concurrent.futures import ThreadPoolExecutor

    stamps = {p: _stamp(p) for p in dict.fromkeys(paths)}
    entries = {p: cache[p] for p, st in stamps.items()
               if st is not None and p in cache and cache[p].get("stamp") == st}
    todo = [p for p in stamps if p not in entries]
    if len(todo) > 1 and workers > 1:
        with ThreadPoolExecutor(min(workers, len(todo))) as pool:
            decoded = list(pool.map(_decode_entry, todo, [stamps[p] for p in todo]))
    else:
        decoded = [_decode_entry(p, stamps[p]) for p in todo]
    entries.update(zip(todo, decoded))
    return entries, len(todo)


def _fit_to_image(record: Record, size: tuple[int, int], report: DataReport) -> Record:
    """The record with ``image_size`` = the file's size, boxes scaled to it if they differ."""
    if tuple(record.image_size) == size:
        return record
    (ah, aw), (h, w) = record.image_size, size
    swapped = " (EXIF orientation?)" if (ah, aw) == (w, h) else ""
    report.add(f"{record.image_path}: annotated size {(ah, aw)} != image size {(h, w)}"
               f"{swapped}; boxes scaled to the image")
    gain = np.array([w / aw, h / ah, w / aw, h / ah], np.float32)
    segments = record.segments
    if segments is not None:
        segments = tuple(None if s is None else s * gain[:2] for s in segments)
    return dataclasses.replace(record, image_size=size, boxes=record.boxes * gain,
                               segments=segments)


def verify_dataset(ds: DetectionDataset, *, on_error: str = "raise",
                   cache_key: str | None = None, cache_dir: str | None = None
                   ) -> DetectionDataset:
    """Decodes every image of ``ds`` (cached) and returns the data set of good records.

    A bad image raises its DataError with ``on_error="raise"``; with ``"skip"`` the record
    is left out and counted in ``report.skipped_images`` with its problem. ``cache_key``
    (e.g. folder + split) names the cache file; None disables the cache. The returned
    data set carries ``verify_stats`` = ``{"decoded": n, "cached": m}``.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    cache_file = _cache_path(cache_dir or default_cache_dir(), cache_key) if cache_key else None
    cache = _read_cache(cache_file) if cache_file else {}
    report = DataReport()
    report.merge(ds.report)
    kept: list[Record] = []
    fresh, decoded = _entries([r.image_path for r in ds], cache, min(8, os.cpu_count() or 1))
    for record in ds:
        entry = fresh[record.image_path]
        for note in entry["notes"]:
            report.add(note)
        if entry["error"] is not None:
            if on_error == "raise":
                raise DataError(entry["error"])
            report.skip(entry["error"], record.image_path)
            continue
        kept.append(_fit_to_image(record, tuple(entry["size"]), report))
    if cache_file and (decoded or len(fresh) != len(cache)):
        _write_cache(cache_file, fresh)
    out = DetectionDataset(kept, ds.class_names, report=report, root=ds.root,
                           on_error=on_error)
    out.verify_stats = {"decoded": decoded, "cached": len(fresh) - decoded}
    return out


def write_report(report: DataReport, path: str | os.PathLike) -> str:
    """Writes ``report`` as text: the counts, the skipped files (one a line), then every
    problem (each naming its file). Returns the path."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    lines = [report.counts(), "", f"skipped files ({len(report.skipped_files)}):"]
    lines += report.skipped_files
    lines += ["", f"problems ({len(report.problems)}):", *report.problems]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path

