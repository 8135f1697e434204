"""Every augmentation keeps boxes consistent with pixels, called directly and in the loader.

The oracle: objects are painted at full intensity in one colour channel per class on a
black image (label 0 -> red, label 1 -> green). After a transform, every bright pixel of
channel c must lie inside a box of class c (enclosure), and every box must have bright
pixels of its channel touching all four of its edges (tightness), within a tolerance of
about one pixel for bilinear resampling. With instance maps the boxes must equal the tight
boxes of the map exactly.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detjax.data import (
    OPS,
    Sample,
    apply_albumentations,
    boxes_from_instance_map,
    copy_paste,
    cutout,
    get_op,
    horizontal_flip,
    letterbox,
    mixup,
    mosaic4,
    random_affine,
    random_hsv,
    resize,
)
from detjax.data.transforms import albu_color, albu_geometric, box_candidates

THRESH = 140  # above the 114 pad value, below 255 dimmed by HSV (v gain 0.4 -> 153)


def painted(h=96, w=128, objects=(((10, 12, 50, 40), 0, "rect"), ((70, 50, 110, 86), 1,
                                                                   "disc")), maps=True):
    """A black image with objects painted in channel ``label``; returns a Sample."""
    image = np.zeros((h, w, 3), np.uint8)
    imap = np.zeros((h, w), np.int32)
    for k, ((x0, y0, x1, y1), label, kind) in enumerate(objects):
        m = np.zeros((h, w), np.uint8)
        if kind == "rect":
            m[y0:y1, x0:x1] = 1
        else:
            cv2.ellipse(m, ((x0 + x1 - 1) // 2, (y0 + y1 - 1) // 2),
                        ((x1 - x0 - 1) // 2, (y1 - y0 - 1) // 2), 0, 0, 360, 1, -1)
        image[m > 0, label] = 255
        imap[m > 0] = k + 1
    boxes, _ = boxes_from_instance_map(imap, len(objects))
    labels = [o[1] for o in objects]
    return Sample(image, boxes, labels, imap if maps else None)


def check_consistent(s: Sample, *, tol: float = 1.5, tight: bool = True,
                     enclose: bool = True) -> None:
    h, w = s.size
    assert s.boxes.dtype == np.float32 and s.labels.dtype == np.int32
    assert (s.boxes[:, 0] >= 0).all() and (s.boxes[:, 2] <= w).all()
    assert (s.boxes[:, 1] >= 0).all() and (s.boxes[:, 3] <= h).all()
    assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
    if s.instance_map is not None:
        exact, counts = boxes_from_instance_map(s.instance_map, len(s.labels))
        seen = counts > 0  # objects below one pixel after a resize keep their scaled box
        np.testing.assert_array_equal(s.boxes[seen], exact[seen])
    for c in (0, 1):
        img = s.image.astype(np.int32)
        bright = (img[..., c] > THRESH) & (img[..., c] - img[..., 1 - c] > 30)
        ys, xs = np.nonzero(bright)
        own = s.boxes[s.labels == c]
        if enclose and len(ys):
            inside = ((xs[:, None] + 1 > own[None, :, 0] - tol)
                      & (xs[:, None] < own[None, :, 2] + tol)
                      & (ys[:, None] + 1 > own[None, :, 1] - tol)
                      & (ys[:, None] < own[None, :, 3] + tol)).any(1)
            assert inside.all(), f"channel {c}: {int((~inside).sum())} bright pixels outside boxes"
        if tight:
            for b in own:
                sel = (xs + 1 > b[0] - tol) & (xs < b[2] + tol) & (ys + 1 > b[1] - tol) & \
                      (ys < b[3] + tol)
                assert sel.any(), f"box {b} of class {c} holds no pixel of its object"
                px, py = xs[sel], ys[sel]
                assert px.min() <= b[0] + tol and px.max() + 1 >= b[2] - tol, (b, px.min())
                assert py.min() <= b[1] + tol and py.max() + 1 >= b[3] - tol, (b, py.min())


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("maps", [True, False])
def test_painted_oracle_self_check(maps):
    s = painted(maps=maps)
    check_consistent(s, tol=0)
    np.testing.assert_array_equal(s.boxes[0], [10, 12, 50, 40])
    bad = Sample(s.image, s.boxes + np.float32(3), s.labels, None)  # the oracle must fail
    with pytest.raises(AssertionError):
        check_consistent(bad, tol=1)


@pytest.mark.parametrize("maps", [True, False])
def test_flip_exact(maps):
    s = painted(maps=maps)
    out = horizontal_flip(s)
    check_consistent(out, tol=0)
    np.testing.assert_array_equal(horizontal_flip(out).image, s.image)
    np.testing.assert_allclose(out.boxes[0], [128 - 50, 12, 128 - 10, 40])


@pytest.mark.parametrize("size", [64, 160, (96, 200), (200, 96)])
@pytest.mark.parametrize("maps", [True, False])
def test_letterbox(size, maps):
    s = painted(maps=maps)
    out, (sx, sy), (left, top) = letterbox(s, size)
    th, tw = (size, size) if isinstance(size, int) else size
    assert out.size == (th, tw)
    check_consistent(out, tol=1.5)
    # the returned scale/pad map boxes back to the original
    back = (out.boxes - [left, top, left, top]) / [sx, sy, sx, sy]
    np.testing.assert_allclose(back, s.boxes, atol=2.0 / min(sx, sy))


def test_letterbox_ultralytics_padding_rule():
    s = Sample(np.zeros((100, 50, 3), np.uint8), np.zeros((0, 4)), np.zeros(0))
    out, _, (left, top) = letterbox(s, 64)
    # r = 0.64 -> 32 x 64, dw = 16 -> left = round(16 - 0.1) = 16
    assert out.size == (64, 64) and (left, top) == (16, 0)
    assert (out.image[:, :16] == 114).all() and (out.image[:, 48:] == 114).all()


@pytest.mark.parametrize("maps", [True, False])
def test_resize(maps):
    out = resize(painted(maps=maps), (70, 190))
    check_consistent(out, tol=1.5)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("degrees,shear", [(0.0, 0.0), (30.0, 0.0), (10.0, 10.0)])
def test_random_affine_with_maps_is_tight(seed, degrees, shear):
    s = painted(objects=(((40, 30, 80, 60), 0, "rect"), ((90, 20, 120, 50), 1, "disc")))
    out = random_affine(s, rng(seed), degrees=degrees, shear=shear, translate=0.05,
                        scale=0.3)
    check_consistent(out, tol=1.5)


@pytest.mark.parametrize("seed", range(4))
def test_random_affine_without_maps_encloses(seed):
    s = painted(objects=(((40, 30, 80, 60), 0, "rect"), ((90, 20, 120, 50), 1, "rect")),
                maps=False)
    out = random_affine(s, rng(seed), degrees=0.0, translate=0.05, scale=0.3)
    check_consistent(out, tol=1.5)  # no rotation: corner boxes are tight
    rot = random_affine(s, rng(seed), degrees=30.0, translate=0.05, scale=0.3)
    check_consistent(rot, tol=1.5, tight=False)  # rotated corners enclose


def test_affine_output_size_and_fill():
    s = painted()
    out = random_affine(s, rng(), out_size=(64, 80), scale=0.0, translate=0.0)
    assert out.size == (64, 80)
    check_consistent(out, tol=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_hsv_keeps_boxes_and_is_seeded(seed):
    s = painted()
    a = random_hsv(s, rng(seed), hgain=0.015, sgain=0.7, vgain=0.4)
    b = random_hsv(s, rng(seed), hgain=0.015, sgain=0.7, vgain=0.4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, s.boxes)
    assert random_hsv(s, rng(), hgain=0, sgain=0, vgain=0) is s


def test_hsv_matches_ultralytics_lut_formula():
    """Independent oracle: per-pixel HSV arithmetic from the ultralytics formula."""
    img = np.random.default_rng(1).integers(0, 256, (8, 8, 3)).astype(np.uint8)
    s = Sample(img, np.zeros((0, 4)), np.zeros(0))
    out = random_hsv(s, rng(5), hgain=0.015, sgain=0.7, vgain=0.4)
    r = rng(5).uniform(-1, 1, 3) * [0.015, 0.7, 0.4]
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV).astype(np.float64)
    hsv[..., 0] = (hsv[..., 0] + r[0] * 180) % 180
    hsv[..., 1] = np.clip(hsv[..., 1] * (1 + r[1]), 0, 255)
    hsv[..., 2] = np.clip(hsv[..., 2] * (1 + r[2]), 0, 255)
    want = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2RGB)
    np.testing.assert_array_equal(out.image, want)


def test_hsv_parity_with_ultralytics():
    pytest.importorskip("ultralytics")
    from ultralytics.data.augment import RandomHSV

    img = np.random.default_rng(2).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    np.random.seed(7)  # noqa: NPY002 (ultralytics draws from the global generator)
    ref = {"img": img[..., ::-1].copy()}  # ultralytics works in BGR
    RandomHSV(0.015, 0.7, 0.4)(ref)
    ours = random_hsv(Sample(img, np.zeros((0, 4)), np.zeros(0)),
                      np.random.RandomState(7), hgain=0.015, sgain=0.7, vgain=0.4)
    np.testing.assert_array_equal(ours.image, ref["img"][..., ::-1])


@pytest.mark.parametrize("maps", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_cutout(maps, seed):
    s = painted(maps=maps)
    out = cutout(s, rng(seed), num_holes=3, scale=(0.05, 0.2), fill=0, max_cover=1.0)
    check_consistent(out, tol=0, tight=maps)  # without maps boxes are not shrunk
    assert len(out.labels) <= len(s.labels)


def test_cutout_drops_covered_object():
    s = painted(objects=(((10, 10, 30, 30), 0, "rect"),), h=40, w=40)
    out = cutout(s, rng(), scale=(1.0, 1.0), ratio=(1.0, 1.0), fill=0)
    assert len(out.labels) == 0 and out.image.max() == 0


@pytest.mark.parametrize("maps", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_mosaic4(maps, seed):
    tiles = [painted(64, 64, (((8, 8, 30, 28), 0, "rect"), ((36, 34, 60, 60), 1, "disc")),
                     maps=maps) for _ in range(4)]
    out = mosaic4(tiles, rng(seed), size=64, min_area_frac=0.0)
    assert out.size == (128, 128)
    check_consistent(out, tol=0)


def test_mosaic_centre_range():
    tiles = [Sample(np.full((32, 32, 3), 10 * (i + 1), np.uint8), np.zeros((0, 4)),
                    np.zeros(0)) for i in range(4)]
    centres = []
    for seed in range(30):
        img = mosaic4(tiles, rng(seed), size=32).image[..., 0]
        ys, xs = np.nonzero(img == 10)  # top-left tile ends at the centre
        ys4, xs4 = np.nonzero(img == 40)  # bottom-right tile starts there
        assert (ys.max() + 1, xs.max() + 1) == (ys4.min(), xs4.min())
        centres.append((xs4.min(), ys4.min()))
    c = np.array(centres)
    assert (c >= 16).all() and (c <= 48).all() and len(np.unique(c[:, 0])) > 5


def test_mosaic_filters_by_remaining_area():
    tile = painted(64, 64, (((0, 0, 64, 64), 0, "rect"),), maps=False)
    out = mosaic4([tile] * 4, rng(3), size=64, min_area_frac=0.9)
    area = (out.boxes[:, 2] - out.boxes[:, 0]) * (out.boxes[:, 3] - out.boxes[:, 1])
    assert (area >= 0.9 * 64 * 64).all()


def test_mixup_blends_and_concatenates():
    a, b = painted(), horizontal_flip(painted())
    out = mixup(a, b, rng())
    assert len(out.labels) == 4 and out.instance_map is None
    r = rng().beta(32, 32)
    want = (a.image.astype(np.float32) * r + b.image.astype(np.float32) * (1 - r))
    np.testing.assert_array_equal(out.image, want.astype(np.uint8))


@pytest.mark.parametrize("seed", range(4))
def test_copy_paste_keeps_tight_boxes(seed):
    dst = painted(objects=(((10, 12, 50, 40), 0, "rect"),))
    src = painted(objects=(((60, 40, 100, 80), 1, "disc"), ((20, 50, 40, 90), 0, "rect")))
    out = copy_paste(dst, src, rng(seed), p=1.0, max_ioa=1.0)
    check_consistent(out, tol=0)
    assert len(out.labels) == 3


def test_copy_paste_occlusion_drops_hidden_object():
    dst = painted(objects=(((10, 10, 30, 30), 1, "rect"),))
    src = painted(objects=(((5, 5, 40, 40), 0, "rect"),))
    out = copy_paste(dst, src, rng(), p=1.0, max_ioa=1.0)
    assert out.labels.tolist() == [0]  # dst object fully covered -> dropped
    check_consistent(out, tol=0)
    kept = copy_paste(dst, src, rng(), p=1.0, max_ioa=0.3)  # overlapping src not pasted
    np.testing.assert_array_equal(kept.image, dst.image)


@pytest.mark.parametrize("seed", range(3))
def test_albumentations_geometric_with_maps(seed):
    s = painted()
    out = apply_albumentations(s, albu_geometric(rotate_p=1.0, scale_p=1.0,
                                                 translate_p=1.0), rng(seed))
    check_consistent(out, tol=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_albumentations_geometric_boxes_only(seed):
    s = painted(objects=(((40, 30, 80, 60), 0, "rect"),), maps=False)
    out = apply_albumentations(s, albu_geometric(rotate_p=0.0, scale_p=1.0,
                                                 translate_p=1.0), rng(seed))
    check_consistent(out, tol=1.5)


def test_albumentations_is_seeded_and_color_keeps_boxes():
    s = painted()
    comp = albu_color(brightness_contrast_p=1.0, noise_p=1.0, blur_p=1.0)
    a, b = (apply_albumentations(s, comp, rng(4)) for _ in range(2))
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, s.boxes)
    assert not np.array_equal(a.image, s.image)
    with pytest.raises(ValueError, match="did you mean 'clahe_p'"):
        albu_color(clahe=0.5)


@given(st.lists(st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(1, 50),
                          st.floats(1, 50)), max_size=5))
def test_box_candidates_matches_loop(rows):
    old = np.array([[x, y, x + w, y + h] for x, y, w, h in rows], np.float32).reshape(-1, 4)
    new = old * np.float32(0.5)
    got = box_candidates(old, new)
    for i, (o, n) in enumerate(zip(old, new)):
        w1, h1, w2, h2 = o[2] - o[0], o[3] - o[1], n[2] - n[0], n[3] - n[1]
        want = (w2 > 2 and h2 > 2 and w2 * h2 / (w1 * h1 + 1e-16) > 0.1
                and max(w2 / (h2 + 1e-16), h2 / (w2 + 1e-16)) < 100)
        assert got[i] == want


class _Ctx:
    """OpContext stand-in: fetches painted samples."""

    def __init__(self, size):
        self.size = size

    def fetch(self, r):
        return resize(painted(objects=(((8, 8, 40, 30), 0, "rect"),
                                       ((60, 40, 100, 80), 1, "disc"))), (self.size * 3 // 4,
                                                                          self.size))


OP_CASES = {
    "letterbox": {}, "mosaic": {"p": 1.0, "min_area_frac": 0.0}, "copy_paste": {"p": 1.0},
    "box_copy_paste": {"p": 1.0},
    "affine": {"degrees": 20.0, "translate": 0.0, "scale": 0.2}, "mixup": {"p": 1.0},
    "albu_geometric": {"p": 1.0}, "albu_color": {"p": 1.0}, "hsv": {}, "hflip": {"p": 1.0},
    "cutout": {"p": 1.0},
}


def test_every_registered_op_has_a_case():
    assert set(OPS) == set(OP_CASES)


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_registered_ops_directly(name):
    op = get_op(name, **OP_CASES[name])
    s = letterbox(painted(), 128)[0]
    out = op(s, rng(1), _Ctx(128))
    same = op(s, rng(1), _Ctx(128))
    np.testing.assert_array_equal(out.image, same.image)
    # mixup blends two images (channel test void), mosaic output needs the affine crop
    if name != "mixup":
        cropping = ("mosaic", "affine", "albu_geometric", "cutout")  # may drop slivers
        check_consistent(out, tol=1.5, enclose=name not in cropping)


def test_get_op_unknown_name_hint():
    with pytest.raises(ValueError, match="Did you mean 'mosaic'"):
        get_op("mosiac")


# ----------------------------------------------------------------------------- in the loader

@pytest.fixture(scope="module")
def painted_dataset(tmp_path_factory):
    """A 6-image data set on disk (PNG, lossless) with instance-map masks."""
    from detjax.data import DetectionDataset, Record

    root = tmp_path_factory.mktemp("painted")
    records = []
    layouts = [(((8, 8, 40, 30), 0, "rect"), ((60, 40, 100, 80), 1, "disc")),
               (((20, 30, 90, 60), 1, "rect"),), (((5, 50, 30, 90), 0, "disc"),
                                                  ((70, 10, 120, 40), 1, "rect"))]
    for i in range(6):
        s = painted(objects=layouts[i % 3])
        ip, mp = str(root / f"im{i}.png"), str(root / f"mask{i}.png")
        cv2.imwrite(ip, s.image[..., ::-1])
        cv2.imwrite(mp, s.instance_map.astype(np.uint8))
        records.append(Record(ip, s.size, s.boxes, s.labels, mask_path=mp))
    return DetectionDataset(records, ["red", "green"])


@pytest.mark.parametrize("name", sorted(OP_CASES))
def test_registered_ops_inside_loader(painted_dataset, name):
    from detjax.data import Loader

    loader = Loader(painted_dataset, batch_size=3, image_size=128, max_boxes=12,
                    pipeline=((name, OP_CASES[name]),))
    for batch in loader.epoch():
        for j in range(3):
            m = batch["gt_mask"][j]
            s = Sample(batch["images"][j], batch["boxes"][j][m], batch["labels"][j][m])
            assert not batch["gt_mask"][j][m.sum():].any()
            if name != "mixup":
                # two resamplings here (data set -> letterbox -> op): ~1 px each
                # box-only copy-paste may cover up to max_ioa of a box: boxes stay, not tight
                check_consistent(s, tol=2.5, enclose=name in ("letterbox", "hflip", "hsv"),
                                 tight=name != "box_copy_paste")


@given(st.integers(8, 120), st.integers(8, 120), st.sampled_from([32, 64, 96]),
       st.integers(0, 6), st.integers(0, 6), st.integers(2, 7), st.integers(2, 7))
def test_letterbox_properties(h, w, size, x0, y0, bw, bh):
    """Output is size x size, the painted box stays tight, and scale/pad invert it."""
    x1, y1 = min(w, x0 + bw), min(h, y0 + bh)
    s = painted(h, w, (((x0, y0, x1, y1), 0, "rect"),))
    out, (sx, sy), (left, top) = letterbox(s, size)
    assert out.size == (size, size)
    np.testing.assert_allclose((out.boxes - [left, top, left, top]) / [sx, sy, sx, sy],
                               s.boxes, atol=1.0 / min(sx, sy) + 1e-4)
    check_consistent(out, tol=1.5, tight=False)


@given(st.integers(0, 2**31 - 1))
def test_flip_involution_and_affine_determinism(seed):
    s = painted()
    twice = horizontal_flip(horizontal_flip(s))
    np.testing.assert_array_equal(twice.image, s.image)
    np.testing.assert_array_equal(twice.boxes, s.boxes)
    np.testing.assert_array_equal(twice.instance_map, s.instance_map)
    a = random_affine(s, rng(seed), degrees=10.0)
    b = random_affine(s, rng(seed), degrees=10.0)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)


@pytest.mark.parametrize("shape", [(48, 64), (100, 50), (33, 77)])
def test_letterbox_parity_with_ultralytics(shape):
    pytest.importorskip("ultralytics")
    from ultralytics.data.augment import LetterBox

    img = np.random.default_rng(0).integers(0, 256, (*shape, 3)).astype(np.uint8)
    ref = LetterBox(new_shape=(64, 64), auto=False, scaleup=True, center=True)(image=img)
    out = letterbox(Sample(img, np.zeros((0, 4)), np.zeros(0)), 64)[0]
    np.testing.assert_array_equal(out.image, ref)
