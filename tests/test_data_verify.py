"""Data as users bring it: VOC class names from the annotations, up-front image checks
(truncated JPEG, wrong extension, EXIF orientation), the check cache, skip-and-report, a
loader that survives a file going bad, ``detjax data check`` and a run on a broken folder."""

from __future__ import annotations

import importlib.util
import os
import shutil

import cv2
import numpy as np
import pytest
from PIL import Image

from detjax.data import DataError, Loader, load_dataset, read_image
from detjax.data.formats import voc_class_names
from detjax.data.verify import verify_image, write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def _raccoon() -> str:
    """``../shared/data/raccoon`` next to the repository (for a git worktree: next to its
    main checkout), as ``benchmarks/bench_real.py`` finds it."""
    spec = importlib.util.spec_from_file_location(
        "bench_real", os.path.join(os.path.dirname(HERE), "benchmarks", "bench_real.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench.DEFAULT_DATA


RACCOON = _raccoon()


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DETJAX_CACHE", str(tmp_path / "cache"))


def _jpeg(path, h, w, seed=0, exif_orientation=None):
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (h, w, 3)).astype(np.uint8))
    kw = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        kw["exif"] = exif.tobytes()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, "JPEG", quality=90, **kw)


def _xml(root, stem, size, objects, filename=None):
    h, w = size
    objs = "".join(
        f"<object><name>{n}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin>"
        f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
        for n, b in objects)
    os.makedirs(os.path.join(root, "Annotations"), exist_ok=True)
    with open(os.path.join(root, "Annotations", f"{stem}.xml"), "w") as f:
        f.write(f"<annotation><filename>{filename or stem + '.jpg'}</filename><size><width>{w}"
                f"</width><height>{h}</height><depth>3</depth></size>{objs}</annotation>")


def _split(root, split, stems):
    os.makedirs(os.path.join(root, "ImageSets", "Main"), exist_ok=True)
    with open(os.path.join(root, "ImageSets", "Main", f"{split}.txt"), "w") as f:
        f.write("\n".join(stems) + "\n")


def broken_voc(root) -> str:
    """A labelImg-style VOC folder with own class names and the usual accidents."""
    root = str(root)
    img = os.path.join(root, "JPEGImages")
    for i in range(6):
        _jpeg(os.path.join(img, f"ok{i}.jpg"), 48, 64, seed=i)
        _xml(root, f"ok{i}", (48, 64), [("raccoon", (5, 5, 50, 45))])
    # truncated JPEG: the header is fine, the scan data stops halfway
    _jpeg(os.path.join(img, "trunc.jpg"), 48, 64, seed=9)
    data = open(os.path.join(img, "trunc.jpg"), "rb").read()
    open(os.path.join(img, "trunc.jpg"), "wb").write(data[:len(data) // 2])
    _xml(root, "trunc", (48, 64), [("raccoon", (5, 5, 30, 40))])
    # malformed XML
    with open(os.path.join(root, "Annotations", "badxml.xml"), "w") as f:
        f.write("<annotation><filename>ok0.jpg</filename><object><name>raccoon</name>")
    # EXIF orientation 6 (rotate 90): stored 40 x 64 (h x w), displayed 64 x 40
    _jpeg(os.path.join(img, "rot.jpg"), 40, 64, seed=3, exif_orientation=6)
    _xml(root, "rot", (64, 40), [("dog", (2, 3, 20, 50))])
    # PNG content under .jpg; a text file named .jpg; boxes to clip and to drop
    cv2.imwrite(os.path.join(img, "png.png"), np.full((32, 32, 3), 90, np.uint8))
    os.replace(os.path.join(img, "png.png"), os.path.join(img, "png.jpg"))
    _xml(root, "png", (32, 32), [("dog", (1, 1, 20, 20)), ("dog", (20, 20, 10, 10)),
                                 ("dog", (40, 40, 50, 50)), ("dog", (-5, 3, 40, 20))])
    with open(os.path.join(img, "text.jpg"), "w") as f:
        f.write("not an image")
    _xml(root, "text", (48, 64), [("raccoon", (5, 5, 30, 40))])
    _split(root, "train", ["ok0", "ok1", "ok2", "ok3", "trunc", "badxml", "rot", "png", "text"])
    _split(root, "val", ["ok4", "ok5"])  # val has raccoons only
    return root


def test_voc_class_names_from_all_annotations_same_for_every_split(tmp_path):
    root = broken_voc(tmp_path)
    assert voc_class_names(root) == ("dog", "raccoon")  # sorted; badxml.xml left out
    with pytest.warns(UserWarning, match="skipped 3"):
        train = load_dataset(root, format="voc", split="train")
    val = load_dataset(root, format="voc", split="val")
    assert train.class_names == val.class_names == ("dog", "raccoon")
    assert val[0].labels.tolist() == [1]  # raccoon is label 1 in both splits
    given = load_dataset(root, format="voc", split="val", class_names=["raccoon"])
    assert given.class_names == ("raccoon",) and given[0].labels.tolist() == [0]
    with pytest.warns(UserWarning, match="skipped 5"):  # rot and png hold a 'dog'
        named = load_dataset(root, format="voc", split="train", class_names=["raccoon"])
    unknown = [p for p in named.report.problems if "unknown class name(s) ['dog']" in p]
    assert sorted(os.path.basename(p.split(":")[0]) for p in unknown) == ["png.xml", "rot.xml"]


def test_broken_folder_skips_and_reports_every_file(tmp_path):
    root = broken_voc(tmp_path)
    with pytest.warns(UserWarning, match="skipped 3 bad file"):
        ds = load_dataset(root, format="voc", split="train")
    rep = ds.report
    names = sorted(os.path.basename(p) for p in rep.skipped_files)
    assert names == ["badxml.xml", "text.jpg", "trunc.jpg"] and rep.skipped_images == 3
    assert sorted(os.path.basename(r.image_path) for r in ds) == \
        ["ok0.jpg", "ok1.jpg", "ok2.jpg", "ok3.jpg", "png.jpg", "rot.jpg"]
    text = "\n".join(rep.problems)
    assert "malformed XML" in text and "truncated" in text and "not an image" in text
    assert "PNG content with extension .jpg" in text
    png = next(r for r in ds if r.image_path.endswith("png.jpg"))
    # VOC 1-based (1,1,20,20) -> [0,0,20,20]; inverted and outside boxes dropped; one clipped
    np.testing.assert_allclose(png.boxes, [[0, 0, 20, 20], [0, 2, 32, 20]])
    assert rep.dropped_zero_area == 2 and rep.clipped_boxes == 1
    assert "png.xml: dropped 2 box(es): 1 inverted, 1 outside the image" in text
    out = write_report(rep, tmp_path / "run" / "data_report.txt")
    lines = open(out).read().splitlines()
    assert "skipped_images=3" in lines[0]
    assert all(p in lines for p in rep.skipped_files)
    with pytest.raises(DataError, match="trunc.jpg: corrupt or truncated|badxml.xml"):
        load_dataset(root, format="voc", split="train", on_error="raise")


def test_exif_orientation_applied_as_ultralytics(tmp_path):
    root = broken_voc(tmp_path)
    path = os.path.join(root, "JPEGImages", "rot.jpg")
    assert Image.open(path).size == (64, 40)  # stored (w, h)
    (h, w), notes = verify_image(path)
    assert (h, w) == (64, 40) and notes == []  # displayed: width and height swapped
    assert read_image(path).shape[:2] == (64, 40)  # the loader's decode agrees
    ultra = pytest.importorskip("ultralytics.data.utils")
    with Image.open(path) as im:
        assert ultra.exif_size(im) == (w, h)
    with pytest.warns(UserWarning, match="skipped 3"):
        ds = load_dataset(root, format="voc", split="train")
    rec = next(r for r in ds if r.image_path == path)
    assert rec.image_size == (64, 40)


def test_annotated_size_disagreeing_with_image_scales_boxes(tmp_path):
    root = str(tmp_path)
    _jpeg(os.path.join(root, "JPEGImages", "a.jpg"), 40, 80)
    _xml(root, "a", (20, 40), [("cat", (1, 1, 20, 10))])  # annotated at half size
    _split(root, "train", ["a"])
    ds = load_dataset(root, format="voc")
    assert ds[0].image_size == (40, 80)
    np.testing.assert_allclose(ds[0].boxes, [[0, 0, 40, 20]])
    assert "annotated size (20, 40) != image size (40, 80)" in ds.report.problems[0]


def test_second_load_uses_the_cache_and_sees_changed_files(tmp_path):
    root = broken_voc(tmp_path / "data")
    first = load_dataset(root, format="voc", split="val")
    assert first.verify_stats == {"decoded": 2, "cached": 0}
    again = load_dataset(root, format="voc", split="val")
    assert again.verify_stats == {"decoded": 0, "cached": 2}
    # the same content rewritten with another size and mtime: checked again
    path = os.path.join(root, "JPEGImages", "ok5.jpg")
    _jpeg(path, 48, 64, seed=99)
    os.utime(path, ns=(1, 1))
    third = load_dataset(root, format="voc", split="val")
    assert third.verify_stats == {"decoded": 1, "cached": 1}
    # a file that breaks is found again, not served from the cache
    open(path, "wb").write(b"broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        fourth = load_dataset(root, format="voc", split="val")
    assert len(fourth) == 1 and fourth.report.skipped_files == [path]


def test_loader_survives_a_file_going_bad_after_verification(tmp_path):
    root = broken_voc(tmp_path)
    ds = load_dataset(root, format="voc", split="val")  # on_error="skip" by default
    os.remove(ds[1].image_path)
    loader = Loader(ds, batch_size=2, image_size=64, shuffle=False)
    [batch] = list(loader.epoch())  # training: the next loadable image takes the slot
    assert batch["index"].tolist() == [0, 0] and loader.report.skipped_images == 1
    assert loader.report.skipped_files == [ds[1].image_path]
    loader = Loader(ds, batch_size=2, image_size=64, augment=False, shuffle=False)
    [batch] = list(loader.epoch())  # eval: the slot stays empty, nothing counts twice
    assert batch["index"].tolist() == [0, -1] and batch["image_mask"].tolist() == [True, False]
    strict = load_dataset(root, format="voc", split="val", verify=False, on_error="raise")
    with pytest.raises(DataError, match="ok5.jpg: image file not found"):
        list(Loader(strict, batch_size=2, image_size=64, augment=False).epoch())


def test_yolo_and_coco_keep_their_own_names(tmp_path):
    from detjax.data import write_dataset

    root = broken_voc(tmp_path / "voc")
    ds = load_dataset(root, format="voc", split="val")
    yaml_path = write_dataset(ds, str(tmp_path / "y"), format="yolo", split="val")
    assert load_dataset(yaml_path, format="yolo", split="val").class_names == ("dog", "raccoon")
    with pytest.raises(DataError, match="differ from the data set's"):
        load_dataset(yaml_path, format="yolo", split="val", class_names=["raccoon"])


def test_data_check_command(tmp_path, capsys):
    from detjax.cli import main

    root = broken_voc(tmp_path)
    png = str(tmp_path / "stats.png")
    with pytest.warns(UserWarning):
        assert main(["data", "check", root, "--format", "voc", "--plot", png]) == 0
    out = capsys.readouterr().out
    assert "6 images, 7 boxes, 2 classes" in out
    assert "dog" in out and "raccoon" in out
    assert "small (< 32^2) 3, medium 4, large (>= 96^2) 0" in out
    assert "objects per image: mean 1.17" in out
    assert "images without boxes: 0" in out
    for name in ("trunc.jpg", "badxml.xml", "text.jpg", "png.jpg"):
        assert name in out
    assert cv2.imread(png) is not None
    with pytest.warns(UserWarning):
        assert main(["data", "check", root, "--format", "voc", "--class-names",
                     "raccoon,dog"]) == 0
    out = capsys.readouterr().out
    assert out.index("raccoon") < out.index("dog")
    assert main(["data", "check", root, "--format", "voc", "--raise"]) == 1


def test_anchors_command_reads_voc_without_names(tmp_path):
    from detjax.anchors import load_box_sizes

    root = broken_voc(tmp_path)
    with pytest.warns(UserWarning):
        wh = load_box_sizes(root, format="voc", img_size=64)
    assert len(wh) == 7


@pytest.mark.slow
def test_train_to_the_end_on_the_broken_folder(tmp_path, monkeypatch):
    from flax import nnx
    from train_toys import ToyDetector

    from detjax import run as run_lib
    from detjax.config import load_config
    from detjax.train import loop

    monkeypatch.setattr(run_lib, "build_model",
                        lambda cfg, n, **kw: ToyDetector(n, rngs=nnx.Rngs(cfg.seed)))
    root = broken_voc(tmp_path / "data")
    cfg = load_config(None, ["data.format=voc", f"data.path={root}", "data.imgsz=64",
                             "train.batch=2", "eval.batch=2", "train.epochs=1",
                             "train.time_limit=0", "log.progress=false", "log.plots=false",
                             "log.tensorboard=false", "compile_cache=false",
                             "train.warmup_min_iters=0"])
    # a file the up-front check passed goes bad before the first step
    real_load = run_lib.build_loaders

    def break_one(cfg, train_ds, val_ds):
        os.remove(train_ds[0].image_path)
        return real_load(cfg, train_ds, val_ds)

    monkeypatch.setattr(run_lib, "build_loaders", break_one)
    with pytest.warns(UserWarning, match="skipped 3 bad file"):
        final = loop.train_and_evaluate(cfg, tmp_path / "run")
    assert final["epochs"] == 1 and np.isfinite(final["map"])
    report = (tmp_path / "run" / "data_report.txt").read_text()  # the skipped files, listed
    assert "skipped files" in report and ".jpg" in report


@pytest.mark.skipif(not os.path.isdir(RACCOON), reason="../shared/data/raccoon not present")
def test_raccoon_images(tmp_path):
    """A few real labelImg images: names read from the XML, sizes equal Pillow's."""
    root = str(tmp_path / "raccoon")
    stems = []
    with open(os.path.join(RACCOON, "ImageSets", "Main", "train.txt")) as f:
        stems = [line.strip() for line in f if line.strip()][:4]
    os.makedirs(os.path.join(root, "JPEGImages"))
    os.makedirs(os.path.join(root, "Annotations"))
    for s in stems:
        os.symlink(os.path.join(RACCOON, "JPEGImages", f"{s}.jpg"),
                   os.path.join(root, "JPEGImages", f"{s}.jpg"))
        shutil.copy(os.path.join(RACCOON, "Annotations", f"{s}.xml"),
                    os.path.join(root, "Annotations"))
    _split(root, "train", stems)
    ds = load_dataset(root, format="voc")
    assert ds.class_names == ("raccoon",) and len(ds) == 4 and not ds.report.problems
    for r in ds:
        w, h = Image.open(r.image_path).size
        assert r.image_size == (h, w) and (r.labels == 0).all() and len(r.boxes) >= 1
        assert (r.boxes[:, 2:] <= [w, h]).all() and (r.boxes[:, :2] >= 0).all()
