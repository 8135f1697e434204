"""detjax.anchors: anchor points / boxes, k-means and YOLOv5 autoanchor."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detjax.anchors import (
    _log_fitness,
    anchor_fitness,
    anchors_above_threshold,
    autoanchor,
    best_possible_recall,
    evolve_anchors,
    kmeans_anchors,
    load_box_sizes,
    make_anchor_boxes,
    make_anchor_points,
    mean_best_iou,
    ratio_metric,
    wh_iou,
)
from detjax.anchors import main as anchors_main


def test_anchor_points_oracle():
    pts, s = jax.jit(make_anchor_points, static_argnums=(0, 1))(((2, 3), (1, 2)), (8, 16))
    want = [(x + 0.5, y + 0.5) for y in range(2) for x in range(3)]
    want += [(x + 0.5, 0.5) for x in range(2)]
    np.testing.assert_array_equal(pts, want)
    np.testing.assert_array_equal(s[:, 0], [8] * 6 + [16] * 2)
    with pytest.raises(ValueError, match="stride"):
        make_anchor_points([(2, 2)], [8, 16])


@pytest.mark.peers
def test_anchor_points_parity_ultralytics():
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    shapes, strides = [(80, 60), (40, 30), (20, 15)], [8, 16, 32]
    feats = [torch.zeros(1, 2, h, w) for h, w in shapes]
    want_p, want_s = tal.make_anchors(feats, torch.tensor(strides, dtype=torch.float32), 0.5)
    got_p, got_s = make_anchor_points(shapes, strides)
    np.testing.assert_array_equal(got_p, want_p.numpy())
    np.testing.assert_array_equal(got_s, want_s.numpy())


# ------------------------------------------------------------------------- anchor boxes


def _anchor_boxes_oracle(shapes, strides, sizes_per_level, ratios, offset):
    out = []
    for (h, w), stride, sizes in zip(shapes, strides, sizes_per_level):
        for y in range(h):
            for x in range(w):
                cx, cy = (x + offset) * stride, (y + offset) * stride
                for r in ratios:
                    for s in sizes:
                        aw, ah = s / np.sqrt(r), s * np.sqrt(r)
                        out.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
    return np.array(out)


def test_anchor_boxes_retinanet_oracle():
    shapes, strides = [(4, 3), (2, 2)], [8, 16]
    octaves = (2**0, 2 ** (1 / 3), 2 ** (2 / 3))
    got = jax.jit(lambda: make_anchor_boxes(shapes, strides, base_scale=4.0,
                                            octave_scales=octaves))()
    want = _anchor_boxes_oracle(shapes, strides, [[4 * s * o for o in octaves] for s in strides],
                                (0.5, 1.0, 2.0), 0.0)
    assert got.shape == (4 * 3 * 9 + 2 * 2 * 9, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    h = got[:, 3] - got[:, 1]
    w = got[:, 2] - got[:, 0]
    np.testing.assert_allclose(np.unique(np.round(h / w, 4)), [0.5, 1.0, 2.0])  # h / w ratios


@pytest.mark.peers
def test_anchor_boxes_parity_torchvision():
    torch = pytest.importorskip("torch")
    anchor_utils = pytest.importorskip("torchvision.models.detection.anchor_utils")
    from torchvision.models.detection.image_list import ImageList

    sizes, ratios = ((32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 3
    gen = anchor_utils.AnchorGenerator(sizes, ratios)
    shapes, strides = [(8, 12), (4, 6), (2, 3)], [8, 16, 32]
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    feats = [torch.zeros(1, 1, h, w) for h, w in shapes]
    want = gen(images, feats)[0].numpy()
    got = make_anchor_boxes(shapes, strides, sizes=sizes, round_base=True)
    np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------- anchor fitting


def _wh(seed, n=300):
    rng = np.random.default_rng(seed)
    return np.exp(rng.normal(3.0, 0.8, (n, 2))).astype(np.float32)


def _yolov5_metrics(anchors, wh, thr=4.0):
    """YOLOv5 kmean_anchors metric / fitness / BPR / AAT, written from their definitions."""
    x = np.array([[min(min(b[0] / a[0], a[0] / b[0]), min(b[1] / a[1], a[1] / b[1]))
                   for a in anchors] for b in wh])
    best = x.max(1)
    return (x, (best * (best > 1 / thr)).mean(), (best > 1 / thr).mean(),
            (x > 1 / thr).sum(1).mean())


def test_yolov5_metrics_oracle():
    wh, anchors = _wh(0, 60), _wh(1, 5)
    x, fit, bpr, aat = _yolov5_metrics(anchors.astype(float), wh.astype(float))
    np.testing.assert_allclose(jax.jit(ratio_metric)(wh, anchors), x, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(anchor_fitness)(anchors, wh), fit, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(best_possible_recall)(anchors, wh), bpr, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(anchors_above_threshold)(anchors, wh), aat, rtol=1e-5)
    log_fit = _log_fitness(jnp.asarray(wh), 4.0, jnp.ones(len(wh)))
    np.testing.assert_allclose(jax.jit(log_fit)(anchors), fit, rtol=1e-5)
    # mask: padding rows do not count
    padded = np.concatenate([wh, np.full((7, 2), 1000.0, np.float32)])
    mask = np.arange(len(padded)) < len(wh)
    np.testing.assert_allclose(anchor_fitness(anchors, padded, mask=mask), fit, rtol=1e-5)
    np.testing.assert_allclose(best_possible_recall(anchors, padded, mask=mask), bpr, rtol=1e-6)


def test_wh_iou_and_mean_best_iou_oracle():
    wh, anchors = _wh(2, 40), _wh(3, 4)
    want = np.array([[min(b[0], a[0]) * min(b[1], a[1])
                      / (b.prod() + a.prod() - min(b[0], a[0]) * min(b[1], a[1]))
                      for a in anchors] for b in wh.astype(float)])
    np.testing.assert_allclose(jax.jit(wh_iou)(wh, anchors), want, rtol=1e-5)
    np.testing.assert_allclose(jax.jit(mean_best_iou)(anchors, wh), want.max(1).mean(), rtol=1e-5)


def test_kmeans_recovers_clusters_and_improves_iou():
    rng = np.random.default_rng(0)
    centres = np.array([[10, 12], [40, 20], [25, 80]], np.float32)
    wh = np.concatenate([c * np.exp(rng.normal(0, 0.05, (100, 2))) for c in centres])
    fn = jax.jit(kmeans_anchors, static_argnames=("num_anchors", "iterations"))
    got = fn(wh.astype(np.float32), 3, key=jax.random.key(0))
    order = np.argsort(centres.prod(1))
    np.testing.assert_allclose(got, centres[order], rtol=0.05)
    assert (np.diff(np.asarray(got).prod(1)) >= 0).all()  # sorted by area
    start = wh[:3]
    assert mean_best_iou(got, wh) > mean_best_iou(start, wh)
    with pytest.raises(ValueError, match="num_anchors"):
        kmeans_anchors(wh, 0, key=jax.random.key(0))


def test_evolve_never_worse_sorted_and_clipped():
    wh = _wh(4)
    start = np.array([[3, 3], [200, 10], [10, 200]], np.float32)
    fn = jax.jit(evolve_anchors, static_argnames=("generations", "population"))
    f0 = anchor_fitness(start, wh)
    for population in (1, 4):
        k, f = fn(start, wh, key=jax.random.key(1), generations=200, population=population)
        k = np.asarray(k)
        assert f > f0 + 0.05
        np.testing.assert_allclose(anchor_fitness(k, wh), f, rtol=1e-5)
        assert (np.diff(k.prod(1)) >= 0).all() and (k >= 2.0).all()
    k0, f0_none = fn(start, wh, key=jax.random.key(1), generations=0)
    np.testing.assert_allclose(f0_none, f0, rtol=1e-5)


@pytest.mark.parametrize("init", ["whitened", "iou"])
def test_autoanchor_fits(init):
    wh = _wh(5, 400)
    fn = jax.jit(autoanchor, static_argnames=("num_anchors", "generations", "init",
                                              "kmeans_restarts"))
    r = fn(wh, 4, key=jax.random.key(0), generations=100, init=init, kmeans_restarts=3)
    assert r.anchors.shape == (4, 2)
    _, fit, bpr, aat = _yolov5_metrics(np.asarray(r.anchors, float), wh.astype(float))
    np.testing.assert_allclose([r.fitness, r.bpr, r.aat], [fit, bpr, aat], rtol=1e-4)
    assert r.bpr > 0.95 and 0.3 < r.mean_iou <= 1
    with pytest.raises(ValueError, match="init"):
        autoanchor(wh, 4, key=jax.random.key(0), init="bad")


# ------------------------------------------------------------------------- command


def test_cli_array_and_plot(tmp_path, capsys):
    wh = _wh(6, 200)
    np.save(tmp_path / "wh.npy", wh)
    xy = np.concatenate([np.zeros_like(wh), wh], 1)
    np.savetxt(tmp_path / "boxes.txt", xy)
    png = tmp_path / "plot.png"
    args = ["-n", "3", "--generations", "50", "--plot", str(png)]
    assert anchors_main([str(tmp_path / "wh.npy"), *args]) == 0
    out = capsys.readouterr().out
    assert "BPR" in out and "mean IoU" in out and png.stat().st_size > 1000
    assert anchors_main([str(tmp_path / "boxes.txt"), "-n", "3", "--generations", "50"]) == 0
    assert out.splitlines()[1] == capsys.readouterr().out.splitlines()[1]  # same anchors
    np.save(tmp_path / "bad.npy", np.zeros((4, 3)))
    assert anchors_main([str(tmp_path / "bad.npy")]) == 2
    assert "[N, 2]" in capsys.readouterr().err


def test_cli_coco_dataset(tmp_path, capsys):
    pytest.importorskip("detjax.data")
    import json

    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"{i}.jpg", "height": 320, "width": 640} for i in range(4)]
    anns = [{"id": j, "image_id": j % 4, "category_id": 1, "iscrowd": 0,
             "bbox": [10.0, 10.0, float(rng.uniform(5, 200)), float(rng.uniform(5, 200))]}
            for j in range(40)]
    from PIL import Image  # images exist: the data check decodes every one

    for im in images:
        Image.new("RGB", (640, 320)).save(tmp_path / im["file_name"])
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": anns,
                                "categories": [{"id": 1, "name": "thing"}]}))
    sizes = load_box_sizes(str(path), format="coco", img_size=320)
    want = np.array([a["bbox"][2:] for a in anns]) / 2  # longer side 640 -> 320
    np.testing.assert_allclose(np.sort(sizes, 0), np.sort(want, 0), rtol=1e-5)
    assert anchors_main([str(path), "--format", "coco", "-n", "3", "--generations", "20"]) == 0
    assert "40 boxes" in capsys.readouterr().out
