"""Box-only copy-paste: pasted boxes are exactly the pixels written, overlap stays bounded,
per-class probabilities pick the classes, and the op runs from the augmentation config."""

import numpy as np
import pytest

from detjax.data.mosaic import _ioa, box_copy_paste
from detjax.data.ops import AugmentConfig, build_ops
from detjax.data.transforms import Sample


def _src(rng):
    image = rng.integers(0, 255, size=(90, 120, 3), dtype=np.uint8)
    boxes = np.array([[10.3, 5.7, 30.2, 25.0], [40, 40, 60, 70], [70.5, 10, 100, 30.5],
                      [5, 60, 20, 88]], np.float32)
    return Sample(image, boxes, np.array([0, 1, 2, 1], np.int32), None)


def _dst():
    image = np.full((100, 100, 3), 114, np.uint8)
    return Sample(image, np.array([[30, 30, 70, 70]], np.float32), np.array([3], np.int32), None)


@pytest.mark.parametrize("seed", range(8))
def test_pasted_boxes_are_exactly_the_pixels_written(seed):
    rng = np.random.default_rng(seed)
    src, dst = _src(rng), _dst()
    out = box_copy_paste(dst, src, rng, class_p=1.0, max_ioa=0.3)
    assert len(out.labels) > 1
    np.testing.assert_array_equal(out.boxes[:1], dst.boxes)  # existing boxes are kept
    for j, (box, label) in enumerate(zip(out.boxes[1:], out.labels[1:]), start=1):
        assert np.all(box == np.round(box))  # integer pixel rectangles
        x0, y0, x1, y1 = box.astype(int)
        matches = [k for k in range(len(src.labels)) if src.labels[k] == label and
                   np.array_equal([x1 - x0, y1 - y0],
                                  np.ceil(src.boxes[k, 2:]) - np.floor(src.boxes[k, :2]))]
        assert matches, "the pasted box has the size of a source object's crop"
        k = matches[0]
        sx0, sy0 = np.floor(src.boxes[k, :2]).astype(int)
        later = np.zeros(out.image.shape[:2], bool)  # pixels a later paste overwrote
        for lx0, ly0, lx1, ly1 in out.boxes[j + 1:].astype(int):
            later[ly0:ly1, lx0:lx1] = True
        visible = ~later[y0:y1, x0:x1]
        assert visible.mean() >= 0.7 - 1e-9  # at most max_ioa of it is covered
        np.testing.assert_array_equal(
            out.image[y0:y1, x0:x1][visible],
            src.image[sy0:sy0 + y1 - y0, sx0:sx0 + x1 - x0][visible])
    # bounded overlap between every pair of boxes, both ways
    ioa = _ioa(out.boxes.astype(np.float64), out.boxes.astype(np.float64))
    np.fill_diagonal(ioa, 0)
    assert ioa.max() <= 0.3 + 1e-9
    assert dst.image.sum() == 100 * 100 * 3 * 114  # the input is not changed


def test_class_probabilities_choose_what_is_pasted():
    rng = np.random.default_rng(0)
    src = _src(rng)
    for _ in range(20):
        out = box_copy_paste(_dst(), src, rng, class_p=[0.0, 1.0, 0.0], max_ioa=1.0)
        pasted = out.labels[1:]
        assert set(pasted.tolist()) <= {1} and len(pasted) >= 1
    none = box_copy_paste(_dst(), src, rng, class_p=[0.0, 0.0, 0.0])
    assert none is not None and len(none.labels) == 1


def test_crops_larger_than_the_image_and_empty_sources_are_skipped():
    rng = np.random.default_rng(1)
    big = Sample(np.zeros((300, 300, 3), np.uint8), np.array([[0, 0, 250, 250]], np.float32),
                 np.array([0], np.int32), None)
    dst = _dst()
    assert box_copy_paste(dst, big, rng) is dst
    empty = Sample(np.zeros((10, 10, 3), np.uint8), np.zeros((0, 4), np.float32),
                   np.zeros((0,), np.int32), None)
    assert box_copy_paste(dst, empty, rng) is dst
    with pytest.raises(ValueError, match="class_p has 2 entries"):
        box_copy_paste(dst, _src(rng), rng, class_p=[1.0, 1.0])


class _Ctx:
    size = 100

    def __init__(self, src):
        self.src = src

    def fetch(self, rng):
        return self.src


def test_the_op_is_built_from_the_augment_config():
    aug = AugmentConfig(mosaic=0.0, box_copy_paste=1.0, box_copy_paste_class_p=[1, 1, 1])
    specs = dict(aug.ops())
    assert specs["box_copy_paste"] == {"p": 1.0, "class_p": (1.0, 1.0, 1.0)}
    hash(aug)  # the config stays hashable with a per-class list
    (op,) = build_ops([("box_copy_paste", specs["box_copy_paste"])])
    rng = np.random.default_rng(3)
    out = op(_dst(), rng, _Ctx(_src(rng)))
    assert len(out.labels) > 1
    assert "box_copy_paste" not in dict(AugmentConfig().ops())  # off by default
