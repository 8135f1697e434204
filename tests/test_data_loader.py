"""Loader: fixed shapes, determinism by seed, resume from state, workers, reports."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from detjax.data import (
    AugmentConfig,
    DataError,
    DetectionDataset,
    Loader,
    LoaderConfig,
    Record,
    epoch_indices,
    repeat_factors,
    synthetic_dataset,
)


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return synthetic_dataset("train", num_train=24, num_val=4, image_size=128,
                             cache_dir=str(tmp_path_factory.mktemp("cache")))


def batches_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batch_layout(ds):
    loader = Loader(ds, batch_size=4, image_size=96, max_boxes=20, epochs=3)
    batch = next(iter(loader.epoch()))
    want = {"images": ((4, 96, 96, 3), np.uint8), "boxes": ((4, 20, 4), np.float32),
            "labels": ((4, 20), np.int32), "gt_mask": ((4, 20), bool),
            "index": ((4,), np.int32), "image_mask": ((4,), bool),
            "scale": ((4, 2), np.float32), "pad": ((4, 2), np.float32),
            "orig_size": ((4, 2), np.int32)}
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == want
    b, m = batch["boxes"], batch["gt_mask"]
    assert (b[m] >= 0).all() and (b[m] <= 96).all()
    assert (b[m][:, 2:] > b[m][:, :2]).all() and (b[~m] == 0).all()
    assert (batch["labels"][m] < len(ds.class_names)).all()
    assert m.any() and batch["image_mask"].all()


def test_same_seed_same_batches_other_seed_differs(ds):
    cfg = LoaderConfig(batch_size=4, image_size=64, epochs=2, seed=3)
    a = list(Loader(ds, cfg).epoch())
    b = list(Loader(ds, cfg).epoch())
    c = list(Loader(ds, dataclasses.replace(cfg, seed=4)).epoch())
    assert len(a) == 6 and all(batches_equal(x, y) for x, y in zip(a, b))
    assert not batches_equal(a[0], c[0])


def test_resume_from_state_sees_the_same_batches(ds):
    cfg = LoaderConfig(batch_size=5, image_size=64, epochs=4, seed=1, multi_scale=(64, 96))
    ref = Loader(ds, cfg)
    stream = iter(ref)
    want = [next(stream) for _ in range(10)]  # crosses the epoch boundary (4 per epoch)
    first = Loader(ds, cfg)
    it = iter(first)
    got = [next(it) for _ in range(6)]
    saved = first.state.to_dict()
    assert saved == {"epoch": 1, "position": 2, "seed": 1}
    resumed = Loader(ds, cfg)
    resumed.restore(saved)
    it = iter(resumed)
    got += [next(it) for _ in range(4)]
    assert all(batches_equal(x, y) for x, y in zip(want, got))
    with pytest.raises(ValueError, match="seed"):
        resumed.restore({"epoch": 0, "position": 0, "seed": 9})


def test_multi_scale_per_batch(ds):
    loader = Loader(ds, batch_size=2, multi_scale=(64, 96, 128), epochs=2)
    sizes = [b["images"].shape[1] for b in loader.epoch()]
    assert set(sizes) <= {64, 96, 128} and len(set(sizes)) > 1
    with pytest.raises(ValueError, match="multiples of 32"):
        Loader(ds, multi_scale=(64, 100))


def test_multi_scale_progressive(ds):
    cfg = LoaderConfig(batch_size=2, multi_scale=(96, 64, 64), epochs=6,
                       multi_scale_mode="progressive")
    # sizes ascending, equal shares: 64 (listed twice) for 4 of 6 epochs, then 96
    assert [cfg.epoch_sizes(e) for e in range(6)] == [(64,)] * 4 + [(96,)] * 2
    loader = Loader(ds, cfg)
    assert {b["images"].shape[1] for b in loader.epoch()} == {64}
    assert {loader.batch_maker(5)(b)["images"].shape[1] for b in range(2)} == {96}
    assert LoaderConfig(image_size=64).epoch_sizes(3) == (64,)
    assert LoaderConfig(multi_scale=(64, 96)).epoch_sizes(0) == (64, 96)
    with pytest.raises(ValueError, match="multi_scale_mode"):
        Loader(ds, multi_scale=(64,), multi_scale_mode="ramp")


def test_close_mosaic(ds):
    cfg = LoaderConfig(batch_size=4, image_size=64, epochs=5, aug=AugmentConfig(close_mosaic=2))
    loader = Loader(ds, cfg)
    assert [loader.batch_maker(e).mosaic_on for e in range(5)] == [True] * 3 + [False] * 2
    ops = AugmentConfig(mixup=0.5).ops(mosaic_on=False)
    assert ops[0] == ("mosaic", {"p": 0.0}) and "mixup" not in dict(ops)


def test_eval_mode_letterbox_maps_back(ds):
    val = synthetic_dataset("val", num_train=24, num_val=4, image_size=128,
                            cache_dir=os.path.dirname(os.path.dirname(ds.root)))
    loader = Loader(val, batch_size=3, image_size=96, augment=False, shuffle=False,
                    drop_remainder=False)
    batches = list(loader.epoch())
    assert len(batches) == 2
    last = batches[1]
    assert last["image_mask"].tolist() == [True, False, False]
    assert last["index"].tolist() == [3, -1, -1] and not last["gt_mask"][1:].any()
    for batch in batches:
        for j in np.nonzero(batch["image_mask"])[0]:
            r = val[int(batch["index"][j])]
            m = batch["gt_mask"][j]
            back = (batch["boxes"][j][m] - np.tile(batch["pad"][j], 2)) / \
                np.tile(batch["scale"][j], 2)
            np.testing.assert_allclose(back, r.boxes, atol=1e-3)
            assert tuple(batch["orig_size"][j]) == r.image_size


def test_max_boxes_reported_with_file(ds):
    with pytest.warns(UserWarning, match="more than max_boxes=2"):
        loader = Loader(ds, batch_size=4, image_size=64, max_boxes=2, augment=False)
    over = [r for r in ds if len(r.labels) > 2]
    assert loader.report.too_many_boxes == len(over)
    assert over[0].image_path in "\n".join(loader.report.problems)
    list(loader.epoch())
    assert any("dropped the" in p for p in loader.report.problems)


def test_max_boxes_keeps_largest():
    from detjax.data import pad_boxes

    boxes = np.array([[0, 0, 1, 1], [0, 0, 5, 5], [0, 0, 3, 3]], np.float32)
    b, lab, m, dropped = pad_boxes(boxes, np.array([0, 1, 2]), 2)
    assert dropped == 1 and lab.tolist() == [1, 2] and m.all()


def test_bad_image_raise_or_skip(ds, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00garbage")
    recs = list(ds.records[:3]) + [Record(str(bad), (128, 128), np.zeros((0, 4), np.float32),
                                          np.zeros(0, np.int32))]
    broken = DetectionDataset(recs, ds.class_names)
    loader = Loader(broken, batch_size=4, image_size=64, augment=False, shuffle=False)
    with pytest.raises(DataError, match="broken.jpg: cannot decode"):
        list(loader.epoch())
    loader = Loader(broken, batch_size=4, image_size=64, augment=False, shuffle=False,
                    on_error="skip")
    batch = next(iter(loader.epoch()))  # eval: the bad image's slot stays empty
    assert batch["index"].tolist() == [0, 1, 2, -1]
    assert batch["image_mask"].tolist() == [True, True, True, False]
    assert loader.report.skipped_images == 1 and "broken.jpg" in loader.report.problems[0]
    loader = Loader(broken, batch_size=4, image_size=64, shuffle=False, on_error="skip")
    batch = next(iter(loader.epoch()))  # training: the next loadable image fills it
    assert batch["index"].tolist() == [0, 1, 2, 0] and batch["image_mask"].all()


def test_repeat_factors_against_loop():
    labels = [np.array([0, 0, 1]), np.array([1]), np.array([], np.int64), np.array([2]),
              np.array([1, 2])] * 3 + [np.array([3])]
    t = 0.3
    got = repeat_factors(labels, 4, threshold=t)
    n = len(labels)
    for i, lab in enumerate(labels):
        want = 1.0
        for c in set(lab.tolist()):
            f = sum(c in set(x.tolist()) for x in labels) / n
            want = max(want, max(1.0, (t / f) ** 0.5))
        assert got[i] == pytest.approx(want)
    idx = epoch_indices(n, epoch=0, seed=0, factors=got)
    counts = np.bincount(idx, minlength=n)
    assert (counts >= np.floor(got)).all() and (counts <= np.ceil(got)).all()
    np.testing.assert_array_equal(idx, epoch_indices(n, epoch=0, seed=0, factors=got))
    assert not np.array_equal(idx, epoch_indices(n, epoch=1, seed=0, factors=got))
    mean = np.mean([len(epoch_indices(n, epoch=e, seed=0, factors=got)) for e in range(200)])
    assert mean == pytest.approx(got.sum(), rel=0.05)


def test_repeat_factor_loader_oversamples_rare_class(ds):
    loader = Loader(ds, batch_size=2, image_size=64, repeat_threshold=0.9, epochs=2)
    assert len(loader.indices(0)) > len(ds)


def test_unknown_op_fails_at_construction(ds):
    with pytest.raises(ValueError, match="unknown op 'mosiac'"):
        Loader(ds, pipeline=("mosiac",))


def test_workers_match_in_process(ds, tmp_path):
    """grain workers give the same batches and reports, across epochs and after a restore."""
    pytest.importorskip("grain")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00garbage")
    recs = list(ds.records) + [Record(str(bad), (128, 128), np.zeros((0, 4), np.float32),
                                      np.zeros(0, np.int32))]
    broken = DetectionDataset(recs, ds.class_names)
    cfg = LoaderConfig(batch_size=4, image_size=64, epochs=2, seed=5, on_error="skip")
    ref = Loader(broken, cfg)
    a = list(ref.epoch()) + list(ref.epoch())
    assert ref.report.skipped_images >= 1  # the problem report travels with the batch
    loader = Loader(broken, dataclasses.replace(cfg, workers=2))
    b = list(loader.epoch())
    assert loader.state.epoch == 1 and loader.state.position == 0
    it = loader.epoch()
    b += [next(it) for _ in range(2)]
    loader.restore(loader.state.to_dict())  # restarts the workers mid-epoch
    b += list(loader.epoch())
    extra = next(iter(loader))  # past config.epochs: a new pipeline for epoch 2
    loader.close()
    np.testing.assert_array_equal(extra["images"], next(iter(ref))["images"])
    assert len(a) == len(b) == 12 and all(batches_equal(x, y) for x, y in zip(a, b))
    assert loader.report.problems == ref.report.problems


def test_copy_paste_without_masks_warns(ds):
    plain = DetectionDataset([dataclasses.replace(r, mask_path=None) for r in ds], ds.class_names)
    with pytest.warns(UserWarning, match="no instance masks"):
        loader = Loader(plain, batch_size=4, image_size=64, aug=AugmentConfig(copy_paste=0.5))
    assert len(loader) == 6
