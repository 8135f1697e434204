"""COCO / YOLO / VOC readers and writers: round trips, bad input, pycocotools parity."""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from detjax.data import (
    DataError,
    DetectionDataset,
    Record,
    load_dataset,
    load_instance_map,
    synthetic_dataset,
    write_dataset,
)


def _image(path, h, w, seed=0):
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, img)


def make_coco(root, *, images=((48, 64), (40, 40), (32, 80)), extra_anns=(), split="train"):
    """A small COCO data set on disk; returns the annotation path."""
    ims, anns = [], []
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate(images):
        name = f"im{i}.png"
        _image(os.path.join(root, "images", split, name), h, w, seed=i)
        ims.append({"id": 10 + i, "file_name": name, "height": h, "width": w})
        for _ in range(i + 1):
            x, y = rng.uniform(0, w / 2), rng.uniform(0, h / 2)
            bw, bh = rng.uniform(2, w / 2), rng.uniform(2, h / 2)
            anns.append({"id": len(anns) + 1, "image_id": 10 + i,
                         "category_id": int(rng.choice([3, 7, 9])),
                         "bbox": [x, y, bw, bh], "area": bw * bh, "iscrowd": 0})
    anns += list(extra_anns)
    cats = [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}, {"id": 9, "name": "fox"}]
    path = os.path.join(root, "annotations", f"instances_{split}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump({"images": ims, "annotations": anns, "categories": cats}, f)
    return path


def assert_same(a: DetectionDataset, b: DetectionDataset, atol=1e-4):
    assert a.class_names == b.class_names and len(a) == len(b)
    for ra, rb in zip(a, b):
        assert ra.image_size == rb.image_size
        np.testing.assert_array_equal(ra.labels, rb.labels)
        np.testing.assert_allclose(ra.boxes, rb.boxes, atol=atol)
        np.testing.assert_array_equal(cv2.imread(ra.image_path), cv2.imread(rb.image_path))


def test_coco_reader_against_json(tmp_path):
    path = make_coco(str(tmp_path))
    ds = load_dataset(str(tmp_path), format="coco")
    assert ds.class_names == ("cat", "dog", "fox") and len(ds) == 3
    data = json.load(open(path))
    cat_index = {3: 0, 7: 1, 9: 2}
    for r, im in zip(ds, data["images"]):
        anns = [a for a in data["annotations"] if a["image_id"] == im["id"]]
        want = np.array([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2],
                          a["bbox"][1] + a["bbox"][3]] for a in anns], np.float32)
        want[:, 0::2] = want[:, 0::2].clip(0, im["width"])
        want[:, 1::2] = want[:, 1::2].clip(0, im["height"])
        np.testing.assert_allclose(r.boxes, want, rtol=1e-6)
        assert r.labels.tolist() == [cat_index[a["category_id"]] for a in anns]
        assert r.image_size == (im["height"], im["width"]) and os.path.isfile(r.image_path)
    # the JSON path itself works too
    assert len(load_dataset(path, format="coco")) == 3


def test_round_trip_coco_yolo_coco(tmp_path):
    make_coco(str(tmp_path / "src"))
    ds = load_dataset(str(tmp_path / "src"), format="coco")
    yaml_path = write_dataset(ds, str(tmp_path / "yolo"), format="yolo")
    ds_yolo = load_dataset(yaml_path, format="yolo")
    assert_same(ds, ds_yolo)
    coco_path = write_dataset(ds_yolo, str(tmp_path / "coco2"), format="coco")
    assert_same(ds, load_dataset(coco_path, format="coco"))


def test_yolo_both_splits_and_txt_list(tmp_path):
    make_coco(str(tmp_path / "src"), split="train")
    make_coco(str(tmp_path / "src"), split="val", images=((30, 30),))
    out = str(tmp_path / "yolo")
    for split in ("train", "val"):
        write_dataset(load_dataset(str(tmp_path / "src"), format="coco", split=split), out,
                      format="yolo", split=split)
    assert len(load_dataset(out, format="yolo", split="val")) == 1
    assert len(load_dataset(out, format="yolo", split="train")) == 3


def test_coco_output_loads_in_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO

    make_coco(str(tmp_path / "src"))
    ds = load_dataset(str(tmp_path / "src"), format="coco")
    path = write_dataset(ds, str(tmp_path / "out"), format="coco")
    coco = COCO(path)
    assert len(coco.getImgIds()) == 3 and len(coco.getCatIds()) == 3
    total = sum(len(r.labels) for r in ds)
    assert len(coco.getAnnIds()) == total
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[1]))[0]
    b = ds[0].boxes[0]
    np.testing.assert_allclose(ann["bbox"], [b[0], b[1], b[2] - b[0], b[3] - b[1]], rtol=1e-6)
    assert coco.annToMask(ann).sum() > 0


def test_clipping_zero_area_and_crowd_are_counted(tmp_path):
    extra = [{"id": 100, "image_id": 10, "category_id": 3, "bbox": [-5, -5, 20, 20],
              "iscrowd": 0},
             {"id": 101, "image_id": 10, "category_id": 3, "bbox": [70, 10, 5, 5],
              "iscrowd": 0},  # fully right of the 64-wide image -> zero area
             {"id": 102, "image_id": 10, "category_id": 7, "bbox": [1, 1, 5, 5],
              "iscrowd": 1}]
    make_coco(str(tmp_path), extra_anns=extra)
    ds = load_dataset(str(tmp_path), format="coco")
    rep = ds.report
    assert rep.clipped_boxes >= 1 and rep.dropped_zero_area == 1 and rep.dropped_crowd == 1
    assert any("im0.png" in p for p in rep.problems)
    assert [0, 0, 15, 15] in ds[0].boxes.tolist()


def test_malformed_coco_names_record(tmp_path):
    extra = [{"id": 100, "image_id": 11, "category_id": 3, "bbox": [1, 2, 3]}]
    path = make_coco(str(tmp_path), extra_anns=extra)
    with pytest.raises(DataError, match=r"instances_train.json: annotations\[6\].*im1.png"):
        load_dataset(str(tmp_path), format="coco", on_error="raise")
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        ds = load_dataset(path, format="coco", on_error="skip")
    assert len(ds) == 2 and ds.report.skipped_images == 1
    assert ds.report.skipped_files == [str(tmp_path / "images" / "train" / "im1.png")]
    extra = [{"id": 100, "image_id": 11, "category_id": 42, "bbox": [1, 2, 3, 4]}]
    make_coco(str(tmp_path), extra_anns=extra)
    with pytest.raises(DataError, match="unknown category_id 42"):
        load_dataset(str(tmp_path), format="coco", on_error="raise")


def test_malformed_yolo_line_and_class(tmp_path):
    make_coco(str(tmp_path / "src"))
    yaml_path = write_dataset(load_dataset(str(tmp_path / "src")), str(tmp_path / "y"),
                              format="yolo")
    label = sorted((tmp_path / "y" / "labels" / "train").iterdir())[1]
    label.write_text(label.read_text() + "0 0.5 0.5 oops 0.1\n")
    with pytest.raises(DataError, match=f"{label.name}:3: non-numeric"):
        load_dataset(yaml_path, format="yolo", on_error="raise")
    label.write_text("5 0.5 0.5 0.1 0.1\n")
    with pytest.raises(DataError, match=f"{label.name}:1: class '5' not in 0..2"):
        load_dataset(yaml_path, format="yolo", on_error="raise")
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        ds = load_dataset(yaml_path, format="yolo", on_error="skip")
    assert len(ds) == 2 and "class '5'" in ds.report.problems[0]
    assert ds.report.skipped_files == [str(label)]


def test_yolo_polygon_labels(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    _image(str(tmp_path / "images" / "train" / "a.png"), 50, 100)
    (tmp_path / "labels" / "train" / "a.txt").write_text("1 0.1 0.2 0.5 0.2 0.3 0.8\n")
    (tmp_path / "data.yaml").write_text("train: images/train\nnames: [a, b]\n")
    ds = load_dataset(str(tmp_path), format="yolo")
    np.testing.assert_allclose(ds[0].boxes, [[10, 10, 50, 40]], atol=1e-4)
    assert ds[0].segments is not None and load_instance_map(ds[0]).max() == 1


def test_missing_and_corrupt_images_named(tmp_path):
    make_coco(str(tmp_path / "src"))
    yaml_path = write_dataset(load_dataset(str(tmp_path / "src")), str(tmp_path / "y"),
                              format="yolo")
    imgs = sorted((tmp_path / "y" / "images" / "train").iterdir())
    imgs[0].write_bytes(b"not an image")
    with pytest.raises(DataError, match=f"{imgs[0].name}: cannot read image header"):
        load_dataset(yaml_path, format="yolo", on_error="raise")
    with pytest.warns(UserWarning, match="skipped 1 bad file"):
        ds = load_dataset(yaml_path, format="yolo", on_error="skip")
    assert len(ds) == 2 and ds.report.skipped_images == 1
    assert ds.report.skipped_files == [str(imgs[0])]


def make_voc(root, objects, split="train"):
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    _image(os.path.join(root, "JPEGImages", "000001.jpg"), 60, 80)
    objs = "".join(
        f"<object><name>{n}</name><difficult>{d}</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, d, b in objects)
    with open(os.path.join(root, "Annotations", "000001.xml"), "w") as f:
        f.write(f"<annotation><filename>000001.jpg</filename><size><width>80</width>"
                f"<height>60</height><depth>3</depth></size>{objs}</annotation>")
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("000001\n")


def test_voc_reader(tmp_path):
    make_voc(str(tmp_path), [("dog", 0, (1, 1, 10, 20)), ("person", 1, (5, 6, 80, 60))])
    ds = load_dataset(str(tmp_path), format="voc")
    r = ds[0]
    np.testing.assert_allclose(r.boxes, [[0, 0, 10, 20], [4, 5, 80, 60]])
    assert r.labels.tolist() == [ds.class_names.index("dog"), ds.class_names.index("person")]
    assert r.difficult.tolist() == [False, True] and r.image_size == (60, 80)


def test_voc_unknown_class_names_error(tmp_path):
    make_voc(str(tmp_path), [("dog", 0, (1, 1, 10, 20)), ("unicorn", 0, (1, 1, 5, 5)),
                             ("gryphon", 0, (1, 1, 5, 5))])
    with pytest.raises(DataError, match=r"000001.xml: unknown class name\(s\) \['gryphon', "
                                        r"'unicorn'\]"):
        load_dataset(str(tmp_path), format="voc", class_names=["dog", "person"],
                     on_error="raise")
    ds = load_dataset(str(tmp_path), format="voc", class_names=["dog", "unicorn", "gryphon"])
    assert ds[0].labels.tolist() == [0, 1, 2]


def test_bad_format_and_missing_split(tmp_path):
    with pytest.raises(ValueError, match="format must be one of"):
        load_dataset(str(tmp_path), format="kitti")
    with pytest.raises(DataError, match="no COCO annotation file for split 'val'"):
        load_dataset(str(tmp_path), format="coco", split="val")


def test_synthetic_round_trip_keeps_masks(tmp_path):
    ds = synthetic_dataset("val", num_train=2, num_val=4, cache_dir=str(tmp_path / "c"))
    out = write_dataset(ds, str(tmp_path / "coco"), format="coco", split="val")
    back = load_dataset(out, format="coco", split="val")
    assert_same(ds, back, atol=0)
    for a, b in zip(ds, back):
        np.testing.assert_array_equal(load_instance_map(a), load_instance_map(b))
    yolo = load_dataset(write_dataset(ds, str(tmp_path / "y"), format="yolo", split="val"),
                        format="yolo", split="val")
    assert_same(ds, yolo)
    assert isinstance(ds[0], Record)


def test_data_command_check_and_export(tmp_path, capsys, monkeypatch):
    from detjax.cli import main

    monkeypatch.setenv("DETJAX_CACHE", str(tmp_path / "cache"))
    assert main(["data", "export", str(tmp_path / "y"), "--format", "yolo", "--num-train", "3",
                 "--num-val", "2", "--image-size", "64"]) == 0
    assert main(["data", "check", str(tmp_path / "y"), "--format", "yolo", "--split",
                 "val"]) == 0
    out = capsys.readouterr().out
    assert "val: 2 images" in out and "2 images," in out and "ellipse" in out
    assert main(["data", "check", str(tmp_path / "nothing"), "--format", "coco"]) == 1
