"""detjax.infer: Predictor (letterbox + jitted postprocess), sliced inference, TTA, WBF."""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
import pytest

from detjax.eval.evaluator import scale_boxes
from detjax.infer import (
    Prediction,
    Predictor,
    letterbox_image,
    list_images,
    merge_nms,
    predict_source,
    slice_windows,
    sliced_predict,
    weighted_boxes_fusion,
)

# ----------------------------------------------------------------------------- Predictor


def fixed_forward(variables, x):
    """Toy detector: fixed cxcywh boxes (network pixels) scored by the brightest pixel, which
    also proves the images arrive as float 0..1."""
    b = x.shape[0]
    score = x.reshape(b, -1).max(axis=1)  # [B]
    boxes = jnp.broadcast_to(variables["boxes"].T[None], (b, 4, variables["boxes"].shape[0]))
    probs = variables["probs"].T[None] * score[:, None, None]  # [B, C, A]
    return jnp.concatenate([boxes, probs], axis=1)


VARS = {"boxes": jnp.array([[32.0, 32, 20, 10], [10, 12, 8, 8], [32.5, 32, 20, 10]]),
        "probs": jnp.array([[0.0, 1.0], [1.0, 0.0], [0.0, 0.9]])}


def test_predictor_maps_boxes_back_to_original_images():
    images = [np.full((100, 200, 3), 204, np.uint8), np.full((90, 60, 3), 153, np.uint8),
              np.full((64, 64, 3), 255, np.uint8)]
    pred = Predictor(fixed_forward, VARS, imgsz=64, conf_thres=0.25, iou_thres=0.7,
                     batch_size=2)
    out = pred(images)
    assert len(out) == 3 and all(isinstance(p, Prediction) for p in out)
    net_xyxy = np.array([[22.0, 27, 42, 37], [6, 8, 14, 16]])
    for image, p in zip(images, out):
        _, s, pad = letterbox_image(image, 64)
        bright = image.max() / 255.0
        # box 2 (IoU > 0.7 with box 0, lower score) is suppressed; box 1 survives
        expect_scores = [bright, bright]
        np.testing.assert_allclose(p.scores, expect_scores, rtol=1e-6)
        np.testing.assert_array_equal(p.labels, [1, 0][: len(p.scores)])
        want = scale_boxes(net_xyxy[: len(p.scores)], s, pad, image.shape[:2])
        np.testing.assert_allclose(p.boxes, want, atol=1e-4)


def test_predictor_checks_arguments():
    with pytest.raises(ValueError, match="multiple of 32"):
        Predictor(fixed_forward, VARS, imgsz=100)
    with pytest.raises(ValueError, match="uint8"):
        letterbox_image(np.zeros((4, 4, 3), np.float32), 32)


def test_predict_source_writes_images_and_txt(tmp_path):
    from PIL import Image

    src = tmp_path / "images"
    src.mkdir()
    for name, value in (("a.png", 200), ("b.jpg", 90)):
        Image.fromarray(np.full((40, 70, 3), value, np.uint8)).save(src / name)
    (src / "notes.txt").write_text("not an image")
    assert [os.path.basename(p) for p in list_images(str(src))] == ["a.png", "b.jpg"]
    pred = Predictor(fixed_forward, VARS, imgsz=64, batch_size=4)
    out = predict_source(pred, str(src), str(tmp_path / "out"), class_names=["x", "y"],
                         save_txt=True)
    assert len(out) == 2
    assert (tmp_path / "out" / "a.png").exists() and (tmp_path / "out" / "b.jpg").exists()
    rows = np.loadtxt(tmp_path / "out" / "a.txt", ndmin=2)
    np.testing.assert_allclose(rows[:, 2:], out[0][1].boxes, atol=0.01)
    with pytest.raises(FileNotFoundError):
        list_images(str(tmp_path / "missing"))


# ----------------------------------------------------------------------------- sliced


def sahi_windows(h, w, sh, sw, oh, ow):
    """SAHI get_slice_bboxes, written out as its nested while loops."""
    out, y_max, y_min = [], 0, 0
    y_ov, x_ov = int(oh * sh), int(ow * sw)
    while y_max < h:
        x_min = x_max = 0
        y_max = y_min + sh
        while x_max < w:
            x_max = x_min + sw
            if y_max > h or x_max > w:
                xmax, ymax = min(w, x_max), min(h, y_max)
                out.append([max(0, xmax - sw), max(0, ymax - sh), xmax, ymax])
            else:
                out.append([x_min, y_min, x_max, y_max])
            x_min = x_max - x_ov
        y_min = y_max - y_ov
    return np.array(out)


@pytest.mark.parametrize("h,w,sh,sw,oh,ow", [(1000, 700, 256, 256, 0.2, 0.2),
                                            (300, 300, 512, 512, 0.2, 0.2),
                                            (640, 641, 320, 160, 0.0, 0.5),
                                            (257, 1023, 128, 256, 0.25, 0.1)])
def test_slice_windows_match_sahi(h, w, sh, sw, oh, ow):
    win = slice_windows(h, w, slice_size=(sh, sw), overlap=(oh, ow))
    np.testing.assert_array_equal(win, sahi_windows(h, w, sh, sw, oh, ow))
    covered = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in win:
        covered[y0:y1, x0:x1] = True
    assert covered.all()


def test_slice_windows_rejects_bad_overlap():
    with pytest.raises(ValueError, match="overlap"):
        slice_windows(100, 100, slice_size=50, overlap=1.0)


class BrightBoxPredictor:
    """Stand-in Predictor: one box around the bright pixels of each tile, score = fraction of
    the square that is visible (so full views win the merge)."""

    def __call__(self, tiles):
        out = []
        for t in tiles:
            ys, xs = np.nonzero(t[..., 0] > 128)
            if len(xs) == 0:
                out.append(Prediction(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)))
                continue
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float64)
            out.append(Prediction(box, np.array([len(xs) / 400.0]), np.array([0])))
        return out


def test_sliced_predict_shifts_tiles_and_merges_duplicates():
    img = np.zeros((300, 500, 3), np.uint8)
    img[140:160, 240:260] = 255  # 20x20 square seen by several overlapping tiles
    res = sliced_predict(BrightBoxPredictor(), img, slice_size=128, overlap=0.25,
                         full_image=False, iou_thres=0.3)
    assert len(res.boxes) == 1
    np.testing.assert_allclose(res.boxes[0], [240, 140, 260, 160])
    assert res.scores[0] == pytest.approx(1.0)


def test_merge_nms_matches_torchvision():
    torchvision = pytest.importorskip("torchvision")
    import torch

    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, (60, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(5, 40, (60, 2))], 1).astype(np.float32)
    scores = rng.random(60).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    keep = merge_nms(boxes, scores, labels, iou_thres=0.4)
    want = torchvision.ops.batched_nms(torch.tensor(boxes), torch.tensor(scores),
                                       torch.tensor(labels), 0.4).numpy()
    np.testing.assert_array_equal(keep, want)
    assert len(merge_nms(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))) == 0


# ----------------------------------------------------------------------------- WBF


def test_wbf_fuses_overlapping_boxes_by_score_weighted_mean():
    b, s, lab = weighted_boxes_fusion([[[0, 0, 10, 10]], [[1, 1, 11, 11]]], [[0.9], [0.6]],
                                      [[0], [0]])
    np.testing.assert_allclose(b, [[0.6 / 1.5] * 2 + [10 + 0.6 / 1.5] * 2])
    np.testing.assert_allclose(s, [(0.9 + 0.6) / 2 * 2 / 2])


def test_wbf_keeps_labels_apart_and_rescales_single_model_boxes():
    boxes = [[[0, 0, 10, 10], [50, 50, 60, 60]], [[0, 0, 10, 10]]]
    b, s, lab = weighted_boxes_fusion(boxes, [[0.8, 0.5], [0.4]], [[0, 0], [1]],
                                      weights=[2, 1])
    # three clusters (different label never fuses); each holds one box: score * w * 1 / 3
    np.testing.assert_allclose(sorted(s), sorted([0.8 * 2 / 3, 0.5 * 2 / 3, 0.4 / 3]))
    assert (np.diff(s) <= 0).all()
    assert sorted(lab.tolist()) == [0, 0, 1]
    # max mode divides by the largest weight
    _, s_max, _ = weighted_boxes_fusion(boxes, [[0.8, 0.5], [0.4]], [[0, 0], [1]],
                                        weights=[2, 1], conf_type="max")
    np.testing.assert_allclose(s_max[0], 0.8)


def test_wbf_identical_boxes_from_all_models_become_one():
    box = [[5.0, 5, 25, 30]]
    b, s, _ = weighted_boxes_fusion([box] * 4, [[0.9], [0.7], [0.5], [0.3]], [[2]] * 4,
                                    skip_box_thr=0.4)  # 0.3 skipped
    np.testing.assert_allclose(b, box)
    np.testing.assert_allclose(s, [(0.9 + 0.7 + 0.5) / 3 * 3 / 4])


def test_wbf_matches_ensemble_boxes():
    eb = pytest.importorskip("ensemble_boxes")
    rng = np.random.default_rng(0)
    boxes, scores, labels = [], [], []
    for _ in range(3):
        xy = rng.uniform(0, 0.7, (8, 2))
        boxes.append(np.concatenate([xy, xy + rng.uniform(0.05, 0.3, (8, 2))], 1))
        scores.append(rng.random(8))
        labels.append(rng.integers(0, 2, 8))
    got = weighted_boxes_fusion(boxes, scores, labels, weights=[1, 2, 1])
    want = eb.weighted_boxes_fusion(boxes, scores, labels, weights=[1, 2, 1])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-6)


def test_wbf_errors():
    with pytest.raises(ValueError, match="one entry per model"):
        weighted_boxes_fusion([[]], [], [])
    with pytest.raises(ValueError, match="conf_type"):
        weighted_boxes_fusion([[]], [[]], [[]], conf_type="median")
    with pytest.raises(ValueError, match="same length"):
        weighted_boxes_fusion([[[0, 0, 1, 1]]], [[0.5, 0.2]], [[0]])
    b, s, lab = weighted_boxes_fusion([np.zeros((0, 4))], [np.zeros(0)], [np.zeros(0)])
    assert b.shape == (0, 4) and s.shape == (0,) and lab.shape == (0,)

