"""Reading and writing COCO, YOLO and Pascal VOC detection data sets.

All readers return a :class:`DetectionDataset` of :class:`Record` with ``xyxy``
absolute-pixel float32 boxes. Boxes outside the image are clipped and counted, zero-area
boxes dropped and counted (``ds.report``). Malformed annotations and unknown class names
raise :class:`DataError` naming the file and the record or line, or, with
``on_error="skip"``, skip the image and add the problem to ``ds.report``.

Conventions:
  * COCO ``bbox`` is ``[x, y, w, h]`` pixels; ``iscrowd=1`` annotations are left out
    (counted as ``dropped_crowd``) as in ultralytics' COCO conversion.
  * YOLO label lines are ``cls cx cy w h`` normalized to [0, 1]; a line with more values
    is a polygon ``cls x1 y1 x2 y2 ...`` and its box is the polygon's extent.
  * VOC ``bndbox`` coordinates are 1-based inclusive pixel indices, so the pixel-edge box
    is ``[xmin - 1, ymin - 1, xmax, ymax]``.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np

from detjax.data.records import (
    DataError,
    DataReport,
    DetectionDataset,
    Record,
    check_class_names,
    sanitize_boxes,
)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
OnError = Literal["raise", "skip"]


def _handle(err: DataError, on_error: OnError, report: DataReport,
            path: str | None = None) -> None:
    """Raises ``err``, or records the skipped file: ``path``, else the file the message
    starts with (without a ``:line`` suffix)."""
    if on_error == "raise":
        raise err
    if path is None:
        path = re.sub(r":\d+$", "", str(err).split(": ", 1)[0])
    report.skip(str(err), path)


def _check_on_error(on_error: str) -> None:
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")


def _image_size(path: str) -> tuple[int, int]:
    """(h, w) from the image header; DataError naming the file if missing or corrupt."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except Exception as e:  # noqa: BLE001 - PIL plugins (and ultralytics' patch) vary
        raise DataError(f"{path}: cannot read image header ({e!r})") from None
    return h, w


def _make_record(path: str, size: tuple[int, int], boxes, labels, *, where: str,
                 report: DataReport, **extra) -> Record:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    labels = np.asarray(labels, np.int32).reshape(-1)
    keep, boxes = sanitize_boxes(boxes, size, where=where, report=report)
    for key in ("difficult",):
        if extra.get(key) is not None:
            extra[key] = np.asarray(extra[key], bool)[keep]
    if extra.get("segments") is not None:
        extra["segments"] = tuple(s for s, k in zip(extra["segments"], keep) if k)
    return Record(path, (int(size[0]), int(size[1])), boxes[keep], labels[keep], **extra)


# ----------------------------------------------------------------------------- COCO

def _coco_paths(path: str, split: str, image_dir: str | None) -> tuple[str, list[str]]:
    """The annotation JSON and the candidate image folders for a COCO data set."""
    if os.path.isfile(path):
        ann = path
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        here = os.path.dirname(os.path.abspath(path))
    else:
        cands = [os.path.join(path, "annotations", f"instances_{split}.json"),
                 os.path.join(path, "annotations", f"instances_{split}2017.json"),
                 os.path.join(path, f"{split}.json"),
                 os.path.join(path, "annotations", f"{split}.json")]
        found = [c for c in cands if os.path.isfile(c)]
        if not found:
            raise DataError(f"{path}: no COCO annotation file for split {split!r}; looked "
                            f"for {cands}")
        ann, root, here = found[0], path, path
    dirs = [image_dir] if image_dir else [
        os.path.join(root, "images", split), os.path.join(root, split),
        os.path.join(root, f"{split}2017"), os.path.join(root, "images"), root, here]
    return ann, dirs


def _coco_segments(seg, where: str) -> np.ndarray | None:
    if not isinstance(seg, list) or not seg:
        return None  # RLE or missing: no polygon
    polys = [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
    if not polys:
        return None
    return max(polys, key=lambda p: len(p))  # largest part as the object's outline


def load_coco(path: str, *, split: str = "train", image_dir: str | None = None,
              on_error: OnError = "raise") -> DetectionDataset:
    """Reads a COCO JSON data set (``path``: the JSON, or a folder holding
    ``annotations/instances_<split>.json``). Category ids map to contiguous labels in
    the order of ``categories``. An image entry's optional ``mask_file`` (relative to the
    data set root) names an instance-id map (the format detjax writes for masks)."""
    _check_on_error(on_error)
    ann_path, dirs = _coco_paths(path, split, image_dir)
    try:
        with open(ann_path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"{ann_path}: cannot parse COCO JSON ({e})") from None
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise DataError(f"{ann_path}: missing top-level key {key!r}")
    cats = data["categories"]
    cat_to_label = {c["id"]: i for i, c in enumerate(cats)}
    names = [c["name"] for c in cats]
    report = DataReport()
    per_image: dict = {}
    for j, a in enumerate(data["annotations"]):
        per_image.setdefault(a.get("image_id"), []).append((j, a))
    root = os.path.dirname(os.path.dirname(ann_path)) if os.path.isfile(path) else path
    records = []
    for i, im in enumerate(data["images"]):
        try:
            records.append(_coco_record(im, per_image.get(im.get("id"), []), cat_to_label,
                                        dirs, root, f"{ann_path}: images[{i}]", report))
        except DataError as e:
            name = im.get("file_name") if isinstance(im, dict) else None
            _handle(e, on_error, report, os.path.join(dirs[0], name) if name else ann_path)
    return DetectionDataset(records, names, report=report, root=root)


def _coco_record(im: dict, anns: list, cat_to_label: dict, dirs: list[str], root: str,
                 where: str, report: DataReport) -> Record:
    try:
        file_name, h, w = im["file_name"], int(im["height"]), int(im["width"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{where}: malformed image entry ({e!r})") from None
    image_path = next((os.path.join(d, file_name) for d in dirs
                       if os.path.isfile(os.path.join(d, file_name))),
                      os.path.join(dirs[0], file_name))
    boxes, labels, segs = [], [], []
    for j, a in anns:
        awhere = f"{where.split(':')[0]}: annotations[{j}] (image {file_name})"
        if a.get("iscrowd", 0):
            report.dropped_crowd += 1
            continue
        if a.get("category_id") not in cat_to_label:
            raise DataError(f"{awhere}: unknown category_id {a.get('category_id')!r}")
        bbox = a.get("bbox")
        if not isinstance(bbox, list | tuple) or len(bbox) != 4:
            raise DataError(f"{awhere}: bbox must be [x, y, w, h], got {bbox!r}")
        x, y, bw, bh = (float(v) for v in bbox)
        boxes.append([x, y, x + bw, y + bh])
        labels.append(cat_to_label[a["category_id"]])
        segs.append(_coco_segments(a.get("segmentation"), awhere))
    mask_path = os.path.join(root, im["mask_file"]) if im.get("mask_file") else None
    have_segs = mask_path is None and any(s is not None for s in segs)
    return _make_record(image_path, (h, w), boxes, labels, where=f"{where} ({file_name})",
                        report=report, image_id=im.get("id"), mask_path=mask_path,
                        segments=tuple(segs) if have_segs else None)


def write_coco(ds: DetectionDataset, out_dir: str, *, split: str = "train",
               copy_images: bool = True) -> str:
    """Writes ``out_dir/annotations/instances_<split>.json`` (+ ``images/<split>/``);
    returns the JSON path. Loads in pycocotools (``COCO(path)``)."""
    img_dir = os.path.join(out_dir, "images", split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    images, anns = [], []
    for i, r in enumerate(ds):
        name = _unique_name(r, i)
        _place_image(r.image_path, os.path.join(img_dir, name), copy_images)
        entry = {"id": i + 1, "file_name": name, "height": int(r.image_size[0]),
                 "width": int(r.image_size[1])}
        if r.mask_path is not None:
            mdir = os.path.join(out_dir, "masks", split)
            os.makedirs(mdir, exist_ok=True)
            mname = os.path.splitext(name)[0] + ".png"
            _place_image(r.mask_path, os.path.join(mdir, mname), True)
            entry["mask_file"] = f"masks/{split}/{mname}"
        images.append(entry)
        for b, c in zip(r.boxes.tolist(), r.labels.tolist()):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(c) + 1,
                         "bbox": [b[0], b[1], w, h], "area": w * h, "iscrowd": 0,
                         "segmentation": [[b[0], b[1], b[2], b[1], b[2], b[3], b[0], b[3]]]})
    cats = [{"id": i + 1, "name": n, "supercategory": "object"}
            for i, n in enumerate(ds.class_names)]
    path = os.path.join(out_dir, "annotations", f"instances_{split}.json")
    with open(path, "w") as f:
        json.dump({"info": {"description": "written by detjax"}, "licenses": [],
                   "images": images, "annotations": anns, "categories": cats}, f)
    return path


def _unique_name(r: Record, i: int) -> str:
    return f"{i:06d}_{os.path.basename(r.image_path)}"


def _place_image(src: str, dst: str, copy: bool) -> None:
    if os.path.lexists(dst):
        os.remove(dst)
    if copy:
        shutil.copyfile(src, dst)
    else:
        os.symlink(os.path.abspath(src), dst)


# ----------------------------------------------------------------------------- YOLO

def _yolo_names(raw, where: str) -> list[str]:
    if isinstance(raw, dict):
        keys = sorted(int(k) for k in raw)
        if keys != list(range(len(keys))):
            raise DataError(f"{where}: 'names' keys must be 0..n-1, got {keys}")
        return [str(raw[k] if k in raw else raw[str(k)]) for k in keys]
    if isinstance(raw, list):
        return [str(n) for n in raw]
    raise DataError(f"{where}: 'names' must be a list or a dict, got {type(raw).__name__}")


def _yolo_images(root: str, entry, where: str) -> list[str]:
    entries = entry if isinstance(entry, list) else [entry]
    files: list[str] = []
    for e in entries:
        p = e if os.path.isabs(e) else os.path.join(root, e)
        if os.path.isdir(p):
            files += sorted(f for f in glob.glob(os.path.join(p, "**", "*"), recursive=True)
                            if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.isfile(p) and p.endswith(".txt"):
            with open(p) as f:
                for line in f:
                    line = line.strip()
                    if line:
                        files.append(line if os.path.isabs(line)
                                     else os.path.normpath(os.path.join(root, line)))
        else:
            raise DataError(f"{where}: split path {p} is neither a folder nor a .txt list")
    return files


def yolo_label_path(image_path: str) -> str:
    """The label file of an image: last ``/images/`` -> ``/labels/``, extension -> .txt."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    head, sep, tail = image_path.rpartition(sa)
    base = (head + sb + tail) if sep else image_path
    return os.path.splitext(base)[0] + ".txt"


def _parse_yolo_labels(path: str, size: tuple[int, int], n_classes: int):
    h, w = size
    boxes, labels, segs = [], [], []
    if not os.path.isfile(path):
        return boxes, labels, segs  # no label file = background image
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            try:
                vals = [float(v) for v in parts]
            except ValueError:
                raise DataError(f"{path}:{lineno}: non-numeric value in {line.strip()!r}") \
                    from None
            cls = vals[0]
            if cls != int(cls) or not 0 <= cls < n_classes:
                raise DataError(f"{path}:{lineno}: class {parts[0]!r} not in 0..{n_classes - 1}")
            if len(vals) == 5:
                cx, cy, bw, bh = vals[1:]
                boxes.append([(cx - bw / 2) * w, (cy - bh / 2) * h,
                              (cx + bw / 2) * w, (cy + bh / 2) * h])
                segs.append(None)
            elif len(vals) >= 7 and len(vals) % 2 == 1:
                poly = np.asarray(vals[1:], np.float32).reshape(-1, 2) * [w, h]
                boxes.append([*poly.min(0), *poly.max(0)])
                segs.append(poly.astype(np.float32))
            else:
                raise DataError(f"{path}:{lineno}: expected 'cls cx cy w h' or a polygon, "
                                f"got {len(vals)} values")
            labels.append(int(cls))
    return boxes, labels, segs


def load_yolo(path: str, *, split: str = "train", on_error: OnError = "raise"
              ) -> DetectionDataset:
    """Reads an ultralytics-style YOLO data set: ``path`` is ``data.yaml`` (or a folder
    holding it) with ``names`` and ``<split>`` (folder or .txt list of images)."""
    import yaml

    _check_on_error(on_error)
    yaml_path = path if os.path.isfile(path) else os.path.join(path, "data.yaml")
    try:
        with open(yaml_path) as f:
            cfg = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        raise DataError(f"{yaml_path}: cannot read data.yaml ({e})") from None
    if "names" not in cfg:
        raise DataError(f"{yaml_path}: missing 'names'")
    names = _yolo_names(cfg["names"], yaml_path)
    if split not in cfg:
        raise DataError(f"{yaml_path}: no entry for split {split!r}")
    base = os.path.dirname(os.path.abspath(yaml_path))
    root = cfg.get("path") or base
    root = root if os.path.isabs(root) else os.path.join(base, root)
    report = DataReport()
    records = []
    for img in _yolo_images(root, cfg[split], yaml_path):
        label_path = yolo_label_path(img)
        try:
            size = _image_size(img)
            boxes, labels, segs = _parse_yolo_labels(label_path, size, len(names))
            have = any(s is not None for s in segs)
            records.append(_make_record(img, size, boxes, labels, where=label_path,
                                        report=report,
                                        image_id=os.path.splitext(os.path.basename(img))[0],
                                        segments=tuple(segs) if have else None))
        except DataError as e:
            _handle(e, on_error, report)
    return DetectionDataset(records, names, report=report, root=root)


def write_yolo(ds: DetectionDataset, out_dir: str, *, split: str = "train",
               copy_images: bool = True) -> str:
    """Writes ``out_dir/images/<split>``, ``out_dir/labels/<split>`` and ``data.yaml``
    (merging splits already written there); returns the data.yaml path."""
    import yaml

    img_dir = os.path.join(out_dir, "images", split)
    lab_dir = os.path.join(out_dir, "labels", split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(lab_dir, exist_ok=True)
    for i, r in enumerate(ds):
        name = _unique_name(r, i)
        _place_image(r.image_path, os.path.join(img_dir, name), copy_images)
        h, w = r.image_size
        b = r.boxes.astype(np.float64)
        rows = np.stack([(b[:, 0] + b[:, 2]) / 2 / w, (b[:, 1] + b[:, 3]) / 2 / h,
                         (b[:, 2] - b[:, 0]) / w, (b[:, 3] - b[:, 1]) / h], 1)
        with open(os.path.join(lab_dir, os.path.splitext(name)[0] + ".txt"), "w") as f:
            for c, row in zip(r.labels.tolist(), rows):
                f.write(f"{c} " + " ".join(f"{v:.9g}" for v in row) + "\n")
    yaml_path = os.path.join(out_dir, "data.yaml")
    cfg = {}
    if os.path.isfile(yaml_path):
        with open(yaml_path) as f:
            cfg = yaml.safe_load(f) or {}
    cfg.update({"path": os.path.abspath(out_dir), split: f"images/{split}",
                "names": dict(enumerate(ds.class_names))})
    with open(yaml_path, "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return yaml_path


# ----------------------------------------------------------------------------- VOC

def voc_class_names(path: str) -> tuple[str, ...]:
    """The class names of a VOC folder: every object ``name`` in every
    ``Annotations/*.xml``, sorted (Unicode code point order) and unique.

    All annotation files count, whatever split lists them, so every split of a folder gets
    the same class list (and the same label indices). Files that do not parse are left out
    here; the split that lists one reports it. For the 20 Pascal classes the sorted order
    equals :data:`VOC_CLASSES`.
    """
    import xml.etree.ElementTree as ET

    ann_dir = os.path.join(path, "Annotations")
    if not os.path.isdir(ann_dir):
        raise DataError(f"{ann_dir}: annotation folder not found")
    names: set[str] = set()
    for name in os.listdir(ann_dir):
        if not name.endswith(".xml"):
            continue
        try:
            root = ET.parse(os.path.join(ann_dir, name)).getroot()
        except (ET.ParseError, OSError):
            continue
        names.update(n for n in (o.findtext("name", "").strip()
                                 for o in root.iter("object")) if n)
    return tuple(sorted(names))


def load_voc(path: str, *, split: str = "train", class_names: Sequence[str] | None = None,
             on_error: OnError = "raise") -> DetectionDataset:
    """Reads Pascal VOC (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/<split>.txt``).

    ``class_names`` (label ``i`` = ``class_names[i]``) defaults to
    :func:`voc_class_names`: the sorted names found in all of the folder's annotation
    files, the same list for every split. An object whose name is not in the list is a
    DataError naming the file and the names. ``difficult`` is kept as a flag.
    """
    _check_on_error(on_error)
    names = tuple(class_names) if class_names is not None else voc_class_names(path)
    list_path = os.path.join(path, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(list_path):
        raise DataError(f"{list_path}: split list not found")
    with open(list_path) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    report = DataReport()
    records = []
    for lineno, stem in enumerate(ids, 1):
        xml_path = os.path.join(path, "Annotations", f"{stem}.xml")
        try:
            records.append(_voc_record(path, stem, xml_path, names, report,
                                       f"{list_path}:{lineno}"))
        except DataError as e:
            _handle(e, on_error, report)
    return DetectionDataset(records, names, report=report, root=path)


def _voc_image(root: str, fname: str | None, stem: str) -> str:
    """The image of an annotation: ``JPEGImages/<filename>``, else ``<stem>.<any ext>``."""
    folder = os.path.join(root, "JPEGImages")
    if fname and os.path.isfile(os.path.join(folder, os.path.basename(fname))):
        return os.path.join(folder, os.path.basename(fname))
    for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS):
        if os.path.isfile(os.path.join(folder, stem + ext)):
            return os.path.join(folder, stem + ext)
    return os.path.join(folder, os.path.basename(fname) if fname else f"{stem}.jpg")


def _voc_record(root: str, stem: str, xml_path: str, names: Sequence[str],
                report: DataReport, listed_at: str) -> Record:
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        raise DataError(f"{xml_path}: annotation not found (listed at {listed_at})") from None
    except ET.ParseError as e:
        raise DataError(f"{xml_path}: malformed XML ({e})") from None
    image_path = _voc_image(root, (tree.findtext("filename") or "").strip(), stem)
    try:
        size = (int(tree.findtext("size/height")), int(tree.findtext("size/width")))
    except (TypeError, ValueError):
        size = _image_size(image_path)
    objs = tree.findall("object")
    found = [o.findtext("name", "").strip() for o in objs]
    check_class_names(found, names, where=xml_path)
    boxes, labels, difficult = [], [], []
    for k, o in enumerate(objs):
        try:
            bb = [float(o.findtext(f"bndbox/{t}")) for t in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise DataError(f"{xml_path}: object[{k}] ({found[k]}) has a malformed "
                            f"bndbox") from None
        boxes.append([bb[0] - 1, bb[1] - 1, bb[2], bb[3]])
        labels.append(names.index(found[k]))
        difficult.append(o.findtext("difficult", "0").strip() == "1")
    return _make_record(image_path, size, boxes, labels, where=xml_path, report=report,
                        difficult=difficult, image_id=stem)


# ----------------------------------------------------------------------------- dispatch

_LOADERS: dict[str, Callable[..., DetectionDataset]] = {
    "coco": load_coco, "yolo": load_yolo, "voc": load_voc}
_WRITERS: dict[str, Callable[..., str]] = {"coco": write_coco, "yolo": write_yolo}


def load_dataset(path: str, *, format: str = "coco", split: str = "train",
                 class_names: Sequence[str] | None = None, on_error: OnError = "skip",
                 verify: bool = True, cache_dir: str | None = None,
                 **kwargs) -> DetectionDataset:
    """Loads and checks a detection data set: ``format`` is ``'coco'``, ``'yolo'`` or ``'voc'``.

    Class names: VOC takes ``class_names`` when given, else the sorted names found in all
    of the folder's annotation files (:func:`voc_class_names`; every split gets the same
    list). COCO reads them from the JSON ``categories`` and YOLO from ``data.yaml``; a
    ``class_names`` given for those must equal the file's list.

    With ``verify`` (default), every image is decoded once up front
    (:func:`detjax.data.verify.verify_dataset`, cached by file size and modification time
    under ``cache_dir``, default ``$DETJAX_CACHE/verify``). ``on_error="skip"`` (default)
    leaves bad files out, lists them in ``ds.report`` (``skipped_files``, ``problems``),
    warns with their count, and a loader over the data set then also skips an image that
    goes bad later; ``"raise"`` stops at the first bad file (DataError naming it). A
    missing split or annotation file is an error either way. Extra keyword arguments go
    to the reader (``image_dir=`` for COCO).
    """
    if format not in _LOADERS:
        raise ValueError(f"format must be one of {tuple(_LOADERS)}, got {format!r}")
    if format == "voc":
        kwargs["class_names"] = class_names
    ds = _LOADERS[format](path, split=split, on_error=on_error, **kwargs)
    if format != "voc" and class_names is not None \
            and tuple(str(c) for c in class_names) != ds.class_names:
        raise DataError(f"{path}: class_names {list(class_names)} differ from the data set's "
                        f"{list(ds.class_names)} (COCO and YOLO read theirs from the files)")
    if verify:
        from detjax.data.verify import verify_dataset

        key = f"{format}:{os.path.abspath(path)}:{split}"
        ds = verify_dataset(ds, on_error=on_error, cache_key=key, cache_dir=cache_dir)
    ds.on_error = on_error
    skipped = ds.report.skipped_files
    if skipped:
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        warnings.warn(f"{path} ({split}): skipped {len(skipped)} bad file(s): "
                      f"{', '.join(skipped[:3])}{more}; see ds.report", stacklevel=2)
    return ds


def write_dataset(ds: DetectionDataset, out_dir: str, *, format: str = "coco",
                  split: str = "train", copy_images: bool = True) -> str:
    """Writes ``ds`` as COCO or YOLO under ``out_dir``; returns the annotation file path."""
    if format not in _WRITERS:
        raise ValueError(f"format must be one of {tuple(_WRITERS)}, got {format!r}")
    return _WRITERS[format](ds, out_dir, split=split, copy_images=copy_images)
