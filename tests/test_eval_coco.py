"""detjax.eval.coco_evaluate against pycocotools COCOeval and an independent loop oracle."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detjax.eval import coco_evaluate
from detjax.eval.coco import AREA_RANGES, coco_iou_thresholds, coco_recall_thresholds

# ----------------------------------------------------------------------------- random cases


def random_case(seed: int, *, num_images: int = 6, num_classes: int = 3, max_gt: int = 6,
                crowd_p: float = 0.1, quantize: int | None = 10, empty_p: float = 0.15,
                fp: int = 4):
    """Per-image (dets, gts) with boxes over all COCO area ranges, duplicate scores, crowd."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(num_images):
        m = 0 if rng.random() < empty_p else int(rng.integers(0, max_gt + 1))
        size = rng.choice([8.0, 24.0, 40.0, 80.0, 150.0], size=(m, 2)) * rng.uniform(0.7, 1.3,
                                                                                    (m, 2))
        xy = rng.uniform(0, 300, (m, 2))
        gt_boxes = np.concatenate([xy, xy + size], axis=1)
        if m > 1 and rng.random() < 0.3:  # an exact duplicate ground-truth box
            gt_boxes[1] = gt_boxes[0]
        gt_labels = rng.integers(0, num_classes, m)
        crowd = rng.random(m) < crowd_p
        gts.append((gt_boxes, gt_labels, crowd))
        # detections: jittered copies (some twice), plus false positives
        keep = rng.random(m) < 0.8
        src = np.concatenate([gt_boxes[keep], gt_boxes[keep][: int(rng.integers(0, 3))]])
        lab = np.concatenate([gt_labels[keep], gt_labels[keep][: len(src) - keep.sum()]])
        jitter = rng.normal(0, 1, src.shape) * (src[:, 2:4] - src[:, 0:2]).repeat(2, 1) * 0.08
        n_fp = 0 if rng.random() < empty_p else int(rng.integers(0, fp + 1))
        fxy = rng.uniform(0, 300, (n_fp, 2))
        fboxes = np.concatenate([fxy, fxy + rng.uniform(5, 120, (n_fp, 2))], axis=1)
        boxes = np.concatenate([src + jitter, fboxes])
        labels = np.concatenate([lab, rng.integers(0, num_classes, n_fp)])
        if rng.random() < 0.2:  # a label swap makes a wrong-class detection
            labels = np.where(rng.random(len(labels)) < 0.2, (labels + 1) % num_classes, labels)
        scores = rng.random(len(boxes))
        if quantize:
            scores = np.round(scores * quantize) / quantize  # many exact ties
        dets.append((boxes, scores, labels.astype(np.int64)))
    return dets, gts


# ----------------------------------------------------------------------------- pycocotools


def run_pycocotools(dets, gts, num_classes, *, iou_thresholds=None, max_dets=None, areas=None):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        b = np.asarray(b, np.float64).reshape(-1, 4)
        return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1)

    anns, results = [], []
    for i, gt in enumerate(gts):
        boxes = xywh(gt[0])
        crowd = gt[2] if len(gt) > 2 and gt[2] is not None else np.zeros(len(boxes), bool)
        area = gt[3] if len(gt) > 3 and gt[3] is not None else boxes[:, 2] * boxes[:, 3]
        for b, lab, c, a in zip(boxes, gt[1], crowd, area):
            anns.append(dict(id=len(anns) + 1, image_id=i + 1, category_id=int(lab) + 1,
                             bbox=[float(x) for x in b], area=float(a), iscrowd=int(c)))
    for i, (boxes, scores, labels) in enumerate(dets):
        for b, s, lab in zip(xywh(boxes), scores, labels):
            results.append(dict(image_id=i + 1, category_id=int(lab) + 1,
                                bbox=[float(x) for x in b], score=float(s)))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dict(images=[dict(id=i + 1) for i in range(len(gts))],
                               annotations=anns,
                               categories=[dict(id=k + 1) for k in range(num_classes)])
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if iou_thresholds is not None:
            ev.params.iouThrs = np.asarray(iou_thresholds)
        if max_dets is not None:
            ev.params.maxDets = list(max_dets)
        ev.evaluate()
        ev.accumulate()
        if max_dets is None and iou_thresholds is None:
            ev.summarize()
    return ev


def assert_matches_pycocotools(dets, gts, num_classes, **kw):
    ev = run_pycocotools(dets, gts, num_classes, **kw)
    res = coco_evaluate(dets, gts, num_classes=num_classes, **kw)
    np.testing.assert_allclose(res["precision"], ev.eval["precision"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(res["recall"], ev.eval["recall"], atol=1e-10, rtol=0)
    np.testing.assert_allclose(res["scores"], ev.eval["scores"], atol=1e-10, rtol=0)
    if len(ev.stats):
        np.testing.assert_allclose(res["stats"], ev.stats, atol=1e-10, rtol=0)
    return res, ev


@pytest.mark.peers
@pytest.mark.parametrize("seed", range(12))
def test_random_cases_match_pycocotools(seed):
    res, ev = assert_matches_pycocotools(*random_case(seed), 3)
    assert res["map"] == pytest.approx(ev.stats[0], abs=1e-4)
    assert res["map50"] == pytest.approx(ev.stats[1], abs=1e-4)


@pytest.mark.peers
@pytest.mark.parametrize("kw", [
    dict(crowd_p=0.5), dict(quantize=2), dict(empty_p=0.6), dict(max_gt=15, fp=30),
    dict(num_classes=1), dict(num_classes=7, num_images=3), dict(quantize=None),
])
def test_edge_mixtures_match_pycocotools(kw):
    k = kw.get("num_classes", 3)
    assert_matches_pycocotools(*random_case(99, **kw), k)


@pytest.mark.peers
def test_many_detections_per_image_maxdets_truncation():
    # > 100 detections of one class in one image: pycocotools drops the tail before matching
    dets, gts = random_case(5, num_images=3, num_classes=2, max_gt=12, fp=150, quantize=3)
    assert_matches_pycocotools(dets, gts, 2)


@pytest.mark.peers
def test_custom_thresholds_and_max_dets_match_pycocotools():
    dets, gts = random_case(7)
    assert_matches_pycocotools(dets, gts, 3, iou_thresholds=[0.3, 0.5, 0.9],
                               max_dets=[2, 5, 20])


@pytest.mark.peers
def test_given_area_and_duplicate_boxes_match_pycocotools():
    rng = np.random.default_rng(3)
    box = np.array([[10.0, 10, 60, 60]])
    gts = [(np.repeat(box, 3, 0), np.zeros(3, int), np.array([0, 1, 0], bool),
            np.array([500.0, 2000.0, 9300.0]))]
    dets = [(np.repeat(box, 5, 0) + rng.normal(0, 0.5, (5, 4)), np.full(5, 0.5),
             np.zeros(5, int))]
    assert_matches_pycocotools(dets, gts, 1)


@pytest.mark.peers
def test_empty_ground_truth_images_and_absent_classes():
    dets, gts = random_case(11, num_classes=4)
    gts = [(np.zeros((0, 4)), np.zeros(0, int)) if i % 2 else g for i, g in enumerate(gts)]
    gts = [(g[0][g[1] != 3], g[1][g[1] != 3]) for g in gts]  # class 3: detections only
    res, _ = assert_matches_pycocotools(dets, gts, 4)
    assert res["per_class_ap"][3] == -1


# ----------------------------------------------------------------------------- own oracle


def oracle(dets, gts, num_classes, thresholds=None, max_dets=(1, 10, 100)):
    """Plain loops, written from the COCOeval definition (one image, class, area at a time)."""
    thresholds = coco_iou_thresholds() if thresholds is None else np.asarray(thresholds)
    rec = coco_recall_thresholds()
    T, R, K, A, M = len(thresholds), len(rec), num_classes, len(AREA_RANGES), len(max_dets)
    precision = -np.ones((T, R, K, A, M))
    recall = -np.ones((T, K, A, M))

    def iou(d, g, crowd):
        dw, dh, gw, gh = d[2] - d[0], d[3] - d[1], g[2] - g[0], g[3] - g[1]
        w = min(d[0] + dw, g[0] + gw) - max(d[0], g[0])
        h = min(d[1] + dh, g[1] + gh) - max(d[1], g[1])
        if w <= 0 or h <= 0:
            return 0.0
        return w * h / (dw * dh if crowd else dw * dh + gw * gh - w * h)

    for k in range(K):
        for a, (_, (lo, hi)) in enumerate(AREA_RANGES):
            rows = []  # (score, tp, ignored, image, rank)
            npig = 0
            for i, ((db, ds, dl), gt) in enumerate(zip(dets, gts)):
                gb, gl = np.asarray(gt[0]).reshape(-1, 4), np.asarray(gt[1])
                gc = gt[2] if len(gt) > 2 and gt[2] is not None else np.zeros(len(gb), bool)
                g_idx = [j for j in range(len(gb)) if gl[j] == k]
                d_idx = [j for j in range(len(db)) if dl[j] == k]
                d_idx = sorted(d_idx, key=lambda j: -ds[j])[: max_dets[-1]]
                g_area = [(gb[j, 2] - gb[j, 0]) * (gb[j, 3] - gb[j, 1]) for j in g_idx]
                g_ign = [bool(gc[j]) or not lo <= ar <= hi for j, ar in zip(g_idx, g_area)]
                npig += sum(not x for x in g_ign)
                order = [n for n in range(len(g_idx)) if not g_ign[n]]
                order += [n for n in range(len(g_idx)) if g_ign[n]]
                for t, thr in enumerate(thresholds):
                    used = set()
                    for rank, j in enumerate(d_idx):
                        best, best_iou = None, min(thr, 1 - 1e-10)
                        for n in order:
                            crowd = bool(gc[g_idx[n]])
                            if n in used and not crowd:
                                continue
                            if best is not None and not g_ign[best] and g_ign[n]:
                                break
                            v = iou(db[j], gb[g_idx[n]], crowd)
                            if v >= best_iou:
                                best, best_iou = n, v
                        d_area = (db[j, 2] - db[j, 0]) * (db[j, 3] - db[j, 1])
                        if best is not None:
                            used.add(best)
                            ign = g_ign[best]
                        else:
                            ign = not lo <= d_area <= hi
                        rows.append((t, ds[j], best is not None, ign, i, rank))
            if npig == 0:
                continue
            for m, md in enumerate(max_dets):
                for t in range(T):
                    r = [x for x in rows if x[0] == t and x[5] < md]
                    r.sort(key=lambda x: (-x[1], x[4], x[5]))
                    tp = np.cumsum([x[2] and not x[3] for x in r]).astype(float)
                    fp = np.cumsum([(not x[2]) and not x[3] for x in r]).astype(float)
                    rc = tp / npig
                    pr = list(tp / (fp + tp + np.spacing(1)))
                    recall[t, k, a, m] = rc[-1] if len(r) else 0
                    for n in range(len(pr) - 1, 0, -1):
                        pr[n - 1] = max(pr[n - 1], pr[n])
                    q = np.zeros(R)
                    for ri, thr_r in enumerate(rec):
                        pos = int(np.searchsorted(rc, thr_r, side="left"))
                        q[ri] = pr[pos] if pos < len(pr) else 0.0
                    precision[t, :, k, a, m] = q
    return precision, recall


@pytest.mark.parametrize("seed", range(3))
def test_matches_loop_oracle(seed):
    dets, gts = random_case(100 + seed, num_images=4, max_gt=5)
    p, r = oracle(dets, gts, 3)
    res = coco_evaluate(dets, gts, num_classes=3)
    np.testing.assert_allclose(res["precision"], p, atol=1e-12)
    np.testing.assert_allclose(res["recall"], r, atol=1e-12)


def test_oracle_with_custom_thresholds():
    dets, gts = random_case(7, num_images=3)
    p, r = oracle(dets, gts, 3, thresholds=[0.1, 0.5, 0.75], max_dets=(3, 50))
    res = coco_evaluate(dets, gts, num_classes=3, iou_thresholds=[0.1, 0.5, 0.75],
                        max_dets=(3, 50))
    np.testing.assert_allclose(res["precision"], p, atol=1e-12)
    np.testing.assert_allclose(res["recall"], r, atol=1e-12)


@given(st.integers(0, 2**31 - 1), st.sampled_from([None, 2, 5]))
def test_hypothesis_against_oracle(seed, quantize):
    dets, gts = random_case(seed, num_images=2, max_gt=4, fp=3, quantize=quantize,
                            crowd_p=0.25)
    p, r = oracle(dets, gts, 3, thresholds=[0.5, 0.75])
    res = coco_evaluate(dets, gts, num_classes=3, iou_thresholds=[0.5, 0.75])
    np.testing.assert_allclose(res["precision"], p, atol=1e-12)
    np.testing.assert_allclose(res["recall"], r, atol=1e-12)


# ----------------------------------------------------------------------------- properties


def test_perfect_detections_give_map_one():
    _, gts = random_case(1, crowd_p=0.0)
    dets = [(g[0], np.linspace(1, 0.5, len(g[0])), g[1]) for g in gts]
    res = coco_evaluate(dets, gts, num_classes=3)
    assert res["map"] == pytest.approx(1.0, abs=1e-9)
    assert res["map50"] == pytest.approx(1.0, abs=1e-9)


def test_no_detections_gives_zero_and_no_gt_gives_minus_one():
    _, gts = random_case(2, crowd_p=0.0)
    empty = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in gts]
    assert coco_evaluate(empty, gts, num_classes=3)["map"] == 0.0
    no_gt = [(np.zeros((0, 4)), np.zeros(0, int)) for _ in gts]
    dets, _ = random_case(2)
    res = coco_evaluate(dets, no_gt, num_classes=3)
    assert res["map"] == -1.0 and (res["per_class_ap"] == -1).all()


def test_image_order_and_xywh_input_do_not_change_result():
    dets, gts = random_case(4, quantize=None)
    perm = np.random.default_rng(0).permutation(len(dets))
    a = coco_evaluate(dets, gts, num_classes=3)
    b = coco_evaluate([dets[i] for i in perm], [gts[i] for i in perm], num_classes=3)
    assert a["map"] == pytest.approx(b["map"], abs=1e-12)

    def to_xywh(b):
        return np.concatenate([b[:, :2], b[:, 2:] - b[:, :2]], 1)

    c = coco_evaluate([(to_xywh(d[0]), d[1], d[2]) for d in dets],
                      [(to_xywh(g[0]), *g[1:]) for g in gts], num_classes=3, box_format="xywh")
    np.testing.assert_allclose(c["precision"], a["precision"], atol=1e-9)


def test_mapping_inputs_and_ignore_extension():
    box = np.array([[0.0, 0, 50, 50], [100, 100, 150, 150]])
    gts = [dict(boxes=box, labels=[0, 0], ignore=[False, True])]
    dets = [dict(boxes=box, scores=[0.9, 0.8], labels=[0, 0])]
    res = coco_evaluate(dets, gts)
    # the ignored box is neither a miss nor does matching it count as a false positive
    assert res["map"] == pytest.approx(1.0, abs=1e-9)
    assert res["class_names"] == ["0"]


def test_errors_name_the_problem():
    box = np.zeros((1, 4))
    with pytest.raises(ValueError, match="ground_truths has"):
        coco_evaluate([(box, [1.0], [0])], [])
    with pytest.raises(ValueError, match=r"shape \[n, 4\]"):
        coco_evaluate([(np.zeros((1, 3)), [1.0], [0])], [(box, [0])])
    with pytest.raises(ValueError, match="labels must be in"):
        coco_evaluate([(box, [1.0], [5])], [(box, [0])], num_classes=2)
    with pytest.raises(ValueError, match="box_format"):
        coco_evaluate([(box, [1.0], [0])], [(box, [0])], box_format="cxcywh")
    with pytest.raises(ValueError, match="one per box"):
        coco_evaluate([(box, [1.0, 2.0], [0])], [(box, [0])])


def _tie_case():
    # det 1 overlaps A and B with exactly equal IoU 1/3; pycocotools gives it the later gt (B),
    # which leaves A free for det 2 (IoU 1): two true positives, recall 1.
    gts = [(np.array([[0.0, 0, 10, 10], [10, 0, 20, 10]]), np.array([0, 0]))]
    dets = [(np.array([[5.0, 0, 15, 10], [0, 0, 10, 10]]), np.array([0.9, 0.8]),
             np.array([0, 0]))]
    return dets, gts


def test_equal_iou_goes_to_later_ground_truth():
    dets, gts = _tie_case()
    res = coco_evaluate(dets, gts, iou_thresholds=[0.3])
    p, r = oracle(dets, gts, 1, thresholds=[0.3])
    np.testing.assert_allclose(res["precision"], p, atol=1e-12)
    assert res["recall"][0, 0, 0, -1] == 1.0


@pytest.mark.peers
def test_equal_iou_tie_matches_pycocotools():
    assert_matches_pycocotools(*_tie_case(), 1, iou_thresholds=[0.3])


@pytest.mark.peers
def test_evaluate_coco_json_matches_pycocotools_on_files(tmp_path):
    """Non-contiguous image/category ids, given areas, crowd, results on a category the
    ground truth does not list: the file path route equals COCOeval on the same files."""
    import json

    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from detjax.eval import evaluate_coco_json

    dets, gts = random_case(21, num_images=5, num_classes=3, crowd_p=0.2)
    img_ids, cat_ids = [7, 3, 42, 11, 5], [5, 1, 90]
    anns, results = [], []
    for i, (boxes, labels, crowd) in enumerate(gts):
        for b, lab, c in zip(boxes, labels, crowd):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append(dict(id=len(anns) + 1, image_id=img_ids[i], category_id=cat_ids[lab],
                             bbox=[b[0], b[1], w, h], area=w * h * 0.7, iscrowd=int(c)))
    for i, (boxes, scores, labels) in enumerate(dets):
        for b, s, lab in zip(boxes, scores, labels):
            results.append(dict(image_id=img_ids[i], category_id=cat_ids[lab], score=s,
                                bbox=[b[0], b[1], b[2] - b[0], b[3] - b[1]]))
    results.append(dict(image_id=7, category_id=999, score=0.99, bbox=[0, 0, 5, 5]))
    gt = dict(images=[dict(id=i) for i in img_ids], annotations=anns,
              categories=[dict(id=c, name=f"c{c}") for c in cat_ids])
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(tmp_path / "gt.json"))
        ev = COCOeval(coco_gt, coco_gt.loadRes(str(tmp_path / "res.json")), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    res = evaluate_coco_json(str(tmp_path / "gt.json"), str(tmp_path / "res.json"))
    np.testing.assert_allclose(res["stats"], ev.stats, atol=1e-10)
    np.testing.assert_allclose(res["precision"], ev.eval["precision"], atol=1e-10)
    assert res["class_names"] == ["c1", "c5", "c90"]


def test_no_images_and_all_empty_images():
    res = coco_evaluate([], [])
    assert res["map"] == -1.0 and res["precision"].shape == (10, 101, 0, 4, 3)
    e = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    g = (np.zeros((0, 4)), np.zeros(0, int))
    res = coco_evaluate([e, e], [g, g], num_classes=2)
    assert res["map"] == -1.0 and (res["per_class_ap"] == -1).all()


@pytest.mark.peers
def test_zero_area_boxes_match_pycocotools():
    boxes = np.array([[0.0, 0, 0, 0], [1, 1, 5, 5], [3, 3, 3, 9]])
    dets = [(boxes, np.array([0.5, 0.4, 0.3]), np.array([0, 1, 1]))]
    gts = [(boxes, np.array([0, 1, 1]))]
    res, _ = assert_matches_pycocotools(dets, gts, 2)
    assert res["per_class_ap"][0] == 0.0  # a zero-area box never overlaps anything


@pytest.mark.slow
@pytest.mark.peers
def test_randomized_sweep_matches_pycocotools():
    """150 random configurations (images, classes, crowd rate, score ties, empties)."""
    rng = np.random.default_rng(123)
    for seed in range(150):
        kw = dict(num_images=int(rng.integers(1, 8)), num_classes=int(rng.integers(1, 5)),
                  max_gt=int(rng.integers(0, 10)), crowd_p=float(rng.choice([0, 0.1, 0.4])),
                  quantize=[None, 2, 10][seed % 3], empty_p=float(rng.choice([0, 0.3])),
                  fp=int(rng.integers(0, 20)))
        dets, gts = random_case(seed, **kw)
        if sum(len(d[0]) for d in dets):  # pycocotools' loadRes cannot take zero results
            assert_matches_pycocotools(dets, gts, kw["num_classes"])
