"""The ``detjax demo`` command and its generators (tiny sizes: a smoke test)."""

import numpy as np

from detjax.demo import clustered_candidates, main, yolo_head_output


def test_clustered_candidates_shapes_and_overlap():
    boxes, scores, classes = clustered_candidates(200, num_classes=3, seed=1)
    assert boxes.shape == (200, 4) and scores.shape == (200,) and classes.shape == (200,)
    assert boxes.dtype == np.float32 and np.all(boxes[:, 2:] > boxes[:, :2])
    assert set(np.unique(classes)) <= {0, 1, 2} and len(np.unique(scores)) == 200
    again = clustered_candidates(200, num_classes=3, seed=1)
    assert all(np.array_equal(a, b) for a, b in zip((boxes, scores, classes), again))


def test_yolo_head_output_layout():
    pred = yolo_head_output(2, num_classes=5, image_size=64, num_objects=3, seed=0)
    assert pred.shape == (2, 9, 64 * 64 // 64 + 64 * 64 // 256 + 64 * 64 // 1024)
    assert np.all((pred[:, 4:] > 0) & (pred[:, 4:] < 1)) and np.all(pred[:, 2:4] > 0)


def test_demo_main_runs(capsys):
    assert main(["--n", "60", "--batch", "1", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "nms" in out and "kept" in out and "non_max_suppression" in out
