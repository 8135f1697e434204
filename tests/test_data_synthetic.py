"""The embedded synthetic data set: determinism, exact boxes, occlusion limit, knobs, cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from detjax.data import (
    SHAPES,
    SyntheticConfig,
    boxes_from_instance_map,
    generate_image,
    load_instance_map,
    synthetic_dataset,
)


def test_deterministic_and_index_addressable():
    a = generate_image(7, 3)
    b = generate_image(7, 3)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    c = generate_image(7, 4)
    d = generate_image(8, 3)
    e = generate_image(7, 3, split="val")
    assert not np.array_equal(a[0], c[0]) and not np.array_equal(a[0], d[0])
    assert not np.array_equal(a[0], e[0])


@pytest.mark.parametrize("difficulty", [0.0, 0.5, 1.0])
def test_boxes_are_tight_on_visible_pixels(difficulty):
    cfg = SyntheticConfig(image_size=128, difficulty=difficulty)
    for i in range(12):
        img, boxes, labels, imap = generate_image(0, i, config=cfg)
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and labels.dtype == np.int32
        assert imap.max() == len(labels)
        # oracle: a plain loop over objects
        for k in range(len(labels)):
            ys, xs = np.nonzero(imap == k + 1)
            np.testing.assert_array_equal(boxes[k], [xs.min(), ys.min(), xs.max() + 1,
                                                     ys.max() + 1])
        assert ((labels >= 0) & (labels < len(SHAPES))).all()


def test_objects_are_drawn_where_the_mask_says():
    """Object pixels differ from a re-rendered background-only image only inside masks."""
    img, boxes, labels, imap = generate_image(1, 2, config=SyntheticConfig(max_objects=6))
    bg_cfg = SyntheticConfig(max_objects=0)
    bg = generate_image(1, 2, config=bg_cfg)[0]
    # the background draw comes first from the same stream, so it is identical
    changed = (img != bg).any(-1)
    assert (changed <= (imap > 0)).all()
    assert changed[imap > 0].mean() > 0.8


def test_occlusion_limit_respected():
    cfg = SyntheticConfig(image_size=128, difficulty=1.0, min_visible=0.7)
    for i in range(10):
        _, boxes, labels, imap = generate_image(0, i, config=cfg)
        _, counts = boxes_from_instance_map(imap.astype(np.int32), len(labels))
        assert (counts > 0).all()


def test_difficulty_knob_changes_statistics():
    def stats(d):
        n, sizes = [], []
        for i in range(30):
            _, b, lab, _ = generate_image(0, i, config=SyntheticConfig(difficulty=d))
            n.append(len(lab))
            sizes += list(np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])))
        return np.mean(n), np.min(sizes)

    easy, hard = stats(0.0), stats(1.0)
    assert hard[0] > easy[0] and hard[1] < easy[1]
    with pytest.raises(ValueError, match="difficulty"):
        generate_image(0, 0, config=SyntheticConfig(difficulty=2.0))


def test_all_classes_and_empty_images_occur():
    labels, empty = [], 0
    for i in range(60):
        lab = generate_image(0, i, config=SyntheticConfig(image_size=96))[2]
        labels += lab.tolist()
        empty += len(lab) == 0
    assert set(labels) == set(range(len(SHAPES))) and empty > 0


def test_dataset_cache(tmp_path):
    kw = dict(num_train=6, num_val=3, image_size=96, cache_dir=str(tmp_path))
    train = synthetic_dataset("train", **kw)
    val = synthetic_dataset("val", **kw)
    assert len(train) == 6 and len(val) == 3 and train.class_names == SHAPES
    stamp = os.path.getmtime(train[0].image_path)
    again = synthetic_dataset("train", **kw)
    assert os.path.getmtime(again[0].image_path) == stamp  # served from the cache
    other = synthetic_dataset("train", **{**kw, "seed": 1})
    assert other.root != train.root
    for i, r in enumerate(val):
        _, boxes, labels, imap = generate_image(0, i, split="val",
                                                config=SyntheticConfig(image_size=96))
        np.testing.assert_array_equal(r.boxes, boxes)
        np.testing.assert_array_equal(r.labels, labels)
        np.testing.assert_array_equal(load_instance_map(r), imap)
    with pytest.raises(ValueError, match="split"):
        synthetic_dataset("test", **kw)
