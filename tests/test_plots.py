"""detjax.plots: files are written, boxes land where they should, bad input is rejected."""

from __future__ import annotations

import numpy as np
import pytest

from detjax import plots
from detjax.eval import coco_evaluate


def test_draw_boxes_paints_outline_in_class_colour():
    img = np.zeros((60, 80, 3), np.uint8)
    out = np.asarray(plots.draw_boxes(img, [[10, 20, 50, 55]], [2], [0.9]))
    assert out.shape == img.shape
    colour = plots.class_color(2)
    assert tuple(out[40, 10]) == colour and tuple(out[40, 50]) == colour  # left/right edges
    assert tuple(out[40, 30]) == (0, 0, 0)  # the inside stays untouched
    assert (img == 0).all()  # input not modified
    skipped = np.asarray(plots.draw_boxes(img, [[50, 20, 10, 55], [np.nan, 0, 5, 5]], [2, 2]))
    np.testing.assert_array_equal(skipped, img)  # inverted / non-finite boxes are not drawn
    float_img = np.asarray(plots.draw_boxes(np.ones((8, 8, 3), np.float32), np.zeros((0, 4)),
                                            []))
    assert float_img.dtype == np.uint8 and (float_img == 255).all()
    with pytest.raises(ValueError, match="labels"):
        plots.draw_boxes(img, [[0, 0, 1, 1]], [1, 2])
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        plots.draw_boxes(np.zeros((4, 4)), [], [])


def _png_ok(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_from_csv(tmp_path):
    csv_path = tmp_path / "metrics.csv"
    csv_path.write_text("epoch,loss/box,loss/cls,metrics/mAP50-95,note\n"
                        "1,2.0,3.0,,a\n2,1.5,2.0,0.1,b\n3,1.2,1.5,0.3,c\n")
    data = plots.read_metrics_csv(str(csv_path))
    assert set(data) == {"epoch", "loss/box", "loss/cls", "metrics/mAP50-95"}
    assert np.isnan(data["metrics/mAP50-95"][0])
    _png_ok(plots.plot_metrics(str(csv_path), str(tmp_path / "out" / "results.png")))
    empty = tmp_path / "empty.csv"
    empty.write_text("epoch\n")
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_metrics(str(empty), str(tmp_path / "x.png"))


def test_plot_pr_f1_curves_and_val_grid(tmp_path):
    rng = np.random.default_rng(0)
    gts = [(np.array([[5.0, 5, 30, 30], [40, 10, 60, 50]]), np.array([0, 1])) for _ in range(3)]
    dets = [(g[0] + rng.normal(0, 1, (2, 4)), np.array([0.9, 0.6]), g[1]) for g in gts]
    res = coco_evaluate(dets, gts, class_names=["a", "b"])
    _png_ok(plots.plot_pr_curve(res, str(tmp_path / "PR_curve.png")))
    _png_ok(plots.plot_f1_curve(res, str(tmp_path / "F1_curve.png")))
    images = [rng.integers(0, 255, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    _png_ok(plots.plot_val_grid(images, dets, gts, str(tmp_path / "val.png"),
                                class_names=["a", "b"], ncols=2))
    with pytest.raises(ValueError, match="at least one image"):
        plots.plot_val_grid([], [], [], str(tmp_path / "none.png"))
