"""YOLOv8 loss: parity with ultralytics v8DetectionLoss (values and gradients), vmap over
images, traced gains, padding, empty ground truth, extremes and bf16."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detjax.anchors import make_anchor_points
from detjax.coders import dfl_decode, dist2bbox
from detjax.losses import binary_cross_entropy, yolo_box_loss, yolo_detection_loss

STRIDES = (8.0, 16.0, 32.0)
REG_MAX = 16


def make_case(seed, batch=3, nc=4, imgsz=64, counts=(3, 0, 4), small=False):
    """Random predictions and normalised xywh ground truth, plus the padded pixel form."""
    rng = np.random.default_rng(seed)
    shapes = [(imgsz // int(s), imgsz // int(s)) for s in STRIDES]
    a = sum(h * w for h, w in shapes)
    n = sum(counts)
    lo, hi = (0.02, 0.2) if small else (0.05, 0.7)  # small: sides below 16 px get enlarged
    xywhn = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(lo, hi, (n, 2))], 1)
    case = {
        "shapes": shapes, "nc": nc, "imgsz": imgsz,
        # bins decay so that decoded sides are 1-3 cells: boxes overlap the ground truth
        "distri": (rng.normal(size=(batch, a, 4, REG_MAX)) - 0.6 * np.arange(REG_MAX)).reshape(
            batch, a, 4 * REG_MAX).astype(np.float32),
        "scores": (rng.normal(size=(batch, a, nc)) - 1).astype(np.float32),
        "batch_idx": np.repeat(np.arange(batch), counts).astype(np.float32),
        "cls": rng.integers(0, nc, n).astype(np.float32),
        "xywhn": xywhn.astype(np.float32),
    }
    m = max(max(counts), 1)
    xy, wh = xywhn[:, :2] * imgsz, xywhn[:, 2:] * imgsz
    xyxy = np.concatenate([xy - wh / 2, xy + wh / 2], 1).astype(np.float32)
    labels, boxes, mask = np.zeros((batch, m), np.int32), np.zeros((batch, m, 4), np.float32), \
        np.zeros((batch, m), bool)
    start = 0
    for i, c in enumerate(counts):
        labels[i, :c], boxes[i, :c], mask[i, :c] = case["cls"][start:start + c], \
            xyxy[start:start + c], True
        start += c
    points, strides = make_anchor_points(shapes, STRIDES)
    case["jax_args"] = (case["distri"], case["scores"], points, strides, labels, boxes, mask)
    return case


def ultralytics_items(case, gains=(7.5, 0.5, 1.5), grads=False, topk2=None, class_weights=None):
    torch = pytest.importorskip("torch")
    loss_mod = pytest.importorskip("ultralytics.utils.loss")

    class Model(torch.nn.Module):  # the attributes v8DetectionLoss reads
        def __init__(self):
            super().__init__()
            self.p = torch.nn.Parameter(torch.zeros(1))
            self.args = types.SimpleNamespace(box=gains[0], cls=gains[1], dfl=gains[2])
            self.model = [types.SimpleNamespace(stride=torch.tensor(STRIDES), nc=case["nc"],
                                                reg_max=REG_MAX)]
            if class_weights is not None:
                self.class_weights = torch.tensor(class_weights, dtype=torch.float32)

    crit = loss_mod.v8DetectionLoss(Model(), tal_topk2=topk2)
    d = torch.tensor(case["distri"]).permute(0, 2, 1).requires_grad_()
    s = torch.tensor(case["scores"]).permute(0, 2, 1).requires_grad_()
    feats = [torch.zeros(len(case["distri"]), 1, h, w) for h, w in case["shapes"]]
    batch = {"batch_idx": torch.tensor(case["batch_idx"]),
             "cls": torch.tensor(case["cls"])[:, None], "bboxes": torch.tensor(case["xywhn"])}
    loss, items = crit.loss({"boxes": d, "scores": s, "feats": feats}, batch)
    out = {k.removesuffix("_loss"): float(v) for k, v in items.items()}
    if not grads:
        return out
    loss.sum().backward()
    return out, d.grad.permute(0, 2, 1).numpy(), s.grad.permute(0, 2, 1).numpy()


LOSS = jax.jit(yolo_detection_loss)
LOSS_GAINS = jax.jit(lambda g, *args: yolo_detection_loss(*args, box_gain=g[0], cls_gain=g[1],
                                                          dfl_gain=g[2]))  # traced gains


def assert_items_close(ours, theirs, rtol=1e-4):
    for k in ("box", "cls", "dfl"):
        np.testing.assert_allclose(float(ours[k]), theirs[k], rtol=rtol, atol=1e-7, err_msg=k)


@pytest.mark.peers
@pytest.mark.parametrize("seed,small", [(0, False), (1, False), (2, True)])
def test_equals_ultralytics_v8detectionloss(seed, small):
    case = make_case(seed, small=small)
    total, items = LOSS(*case["jax_args"])
    want = ultralytics_items(case)
    assert_items_close(items, want)
    np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)
    assert want["box"] > 0.05 and want["dfl"] > 0.05  # foreground with real target scores


@pytest.mark.peers
def test_gradients_equal_ultralytics_backward():
    """ultralytics back-propagates loss.sum() * B; ours is total, so scale by B."""
    case = make_case(3)
    _, d_grad, s_grad = ultralytics_items(case, grads=True)
    batch = case["distri"].shape[0]
    grad_fn = jax.jit(jax.grad(lambda d, s, *r: batch * yolo_detection_loss(d, s, *r)[0],
                               argnums=(0, 1)))
    gd, gs = grad_fn(*case["jax_args"])
    np.testing.assert_allclose(gs, s_grad, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(gd, d_grad, rtol=1e-3, atol=2e-6)


@pytest.mark.peers
def test_custom_gains_and_traced_hyperparameters():
    case = make_case(4)
    gains = (2.0, 1.0, 0.25)
    want = ultralytics_items(case, gains=gains)
    _, items = LOSS_GAINS(jnp.asarray(gains), *case["jax_args"])
    assert_items_close(items, want)


@pytest.mark.peers
def test_no_ground_truth_anywhere():
    case = make_case(5, counts=(0, 0, 0))
    _, items = LOSS(*case["jax_args"])
    want = ultralytics_items(case)
    assert_items_close(items, want)
    # oracle: all targets zero, S = 1 -> cls = 0.5 * sum softplus(x)
    cls = 0.5 * float(binary_cross_entropy(case["scores"], np.zeros_like(case["scores"])).sum())
    np.testing.assert_allclose(float(items["cls"]), cls, rtol=1e-5)
    assert float(items["box"]) == 0.0 and float(items["dfl"]) == 0.0


def test_padding_slots_are_inert():
    case = make_case(6)
    d, s, p, st, labels, boxes, mask = case["jax_args"]
    pad = 3
    junk = np.tile(np.array([[1.0, 2.0, 60.0, 50.0]], np.float32), (labels.shape[0], pad, 1))
    padded = (d, s, p, st, np.concatenate([labels, np.full((3, pad), 2, np.int32)], 1),
              np.concatenate([boxes, junk], 1), np.concatenate([mask, np.zeros((3, pad), bool)], 1))
    t0, i0 = LOSS(*case["jax_args"])
    t1, i1 = LOSS(*padded)
    np.testing.assert_allclose(float(t1), float(t0), rtol=1e-6)


def test_vmap_over_images_equals_loop():
    case = make_case(7)
    d, s, p, st, labels, boxes, mask = case["jax_args"]
    per_image = jax.jit(jax.vmap(lambda *a: yolo_detection_loss(a[0], a[1], p, st, *a[2:])[0]))
    got = per_image(d, s, labels, boxes, mask)
    want = [float(LOSS(d[i:i + 1], s[i:i + 1], p, st, labels[i:i + 1], boxes[i:i + 1],
                       mask[i:i + 1])[0]) for i in range(len(d))]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # an unbatched image is the same as a batch of one
    single = LOSS(d[1], s[1], p, st, labels[1], boxes[1], mask[1])[0]
    np.testing.assert_allclose(float(single), want[1], rtol=1e-6)


def test_vmap_over_gain_grid_equals_loop():
    args = make_case(8)["jax_args"]
    grid = jnp.array([[7.5, 0.5, 1.5], [1.0, 1.0, 1.0], [0.0, 2.0, 0.5]])
    sweep = jax.jit(jax.vmap(lambda g: yolo_detection_loss(
        *args, box_gain=g[0], cls_gain=g[1], dfl_gain=g[2])[0]))
    want = [float(LOSS_GAINS(g, *args)[0]) for g in grid]
    np.testing.assert_allclose(sweep(grid), want, rtol=1e-5)


def test_finite_at_extreme_logits_and_degenerate_boxes():
    case = make_case(9)
    d, s, p, st, labels, boxes, mask = case["jax_args"]
    d = np.where(np.arange(d.shape[-1]) % 2 == 0, 100.0, -100.0) * np.ones_like(d)
    s = np.where(np.arange(s.shape[1])[None, :, None] % 2 == 0, 100.0, -100.0) * np.ones_like(s)
    boxes = boxes.copy()
    boxes[0, 0] = [20.0, 20.0, 20.0, 40.0]  # zero width
    boxes[0, 1] = [30.0, 30.0, 30.0, 30.0]  # a point
    grad_fn = jax.jit(jax.value_and_grad(lambda a, b: yolo_detection_loss(
        a, b, p, st, labels, boxes, mask)[0], argnums=(0, 1)))
    val, (gd, gs) = grad_fn(d.astype(np.float32), s.astype(np.float32))
    assert np.isfinite(val) and np.all(np.isfinite(gd)) and np.all(np.isfinite(gs))


def test_bf16_predictions_within_tolerance():
    args = make_case(10)["jax_args"]
    low = (jnp.asarray(args[0], jnp.bfloat16), jnp.asarray(args[1], jnp.bfloat16)) + args[2:]
    t16, i16 = LOSS(*low)
    t32, i32 = LOSS(*((low[0].astype(jnp.float32), low[1].astype(jnp.float32)) + args[2:]))
    np.testing.assert_allclose(float(t16), float(t32), rtol=1e-5)  # computed in float32
    np.testing.assert_allclose(float(t16), float(LOSS(*args)[0]), rtol=5e-2)


def test_bad_shapes_raise():
    d, s, p, st, labels, boxes, mask = make_case(11)["jax_args"]
    with pytest.raises(ValueError, match="4 \\* reg_max"):
        yolo_detection_loss(d[..., :60], s, p, st, labels, boxes, mask)
    with pytest.raises(ValueError, match="anchor_points"):
        yolo_detection_loss(d, s, p[:-1], st, labels, boxes, mask)
    with pytest.raises(TypeError, match="integer"):
        yolo_detection_loss(d, s, p, st, labels.astype(np.float32), boxes, mask)


def test_min_gt_size_auto_is_second_stride_and_none_disables():
    args = make_case(2, small=True)["jax_args"]
    fn = jax.jit(lambda size, *a: yolo_detection_loss(*a, min_gt_size=size))
    auto = float(LOSS(*args)[0])
    np.testing.assert_allclose(float(fn(16.0, *args)[0]), auto, rtol=1e-6)  # strides 8/16/32
    classic = float(jax.jit(lambda *a: yolo_detection_loss(*a, min_gt_size=None))(*args)[0])
    assert abs(classic - auto) > 1e-4 * auto  # small boxes gain candidates when enlarged


@pytest.mark.peers
def test_topk2_equals_ultralytics_tal_topk2():
    case = make_case(12)
    _, items = jax.jit(lambda *a: yolo_detection_loss(*a, topk2=3))(*case["jax_args"])
    assert_items_close(items, ultralytics_items(case, topk2=3))


@pytest.mark.peers
def test_box_terms_equal_ultralytics_bboxloss():
    torch = pytest.importorskip("torch")
    loss_mod = pytest.importorskip("ultralytics.utils.loss")
    rng = np.random.default_rng(13)
    points, _ = make_anchor_points([(6, 6)], [8.0])  # 36 anchors, grid units
    b, a, c = 2, 36, 3
    distri = (rng.normal(size=(b, a, 4, REG_MAX)) - 0.5 * np.arange(REG_MAX)).reshape(
        b, a, 4 * REG_MAX).astype(np.float32)
    pred = np.asarray(dist2bbox(dfl_decode(distri), points))
    centre = rng.uniform(1, 5, (b, a, 2))
    target = np.concatenate([centre - rng.uniform(0.2, 3, (b, a, 2)),
                             centre + rng.uniform(0.2, 3, (b, a, 2))], -1).astype(np.float32)
    fg = rng.uniform(size=(b, a)) < 0.4
    scores = (np.eye(c)[rng.integers(0, c, (b, a))] * rng.uniform(0, 1, (b, a, 1))
              * fg[..., None]).astype(np.float32)
    score_sum = max(float(scores.sum()), 1.0)
    t = torch.tensor
    want = loss_mod.BboxLoss(REG_MAX)(t(distri), t(pred), t(np.asarray(points)), t(target),
                                      t(scores), t(score_sum), t(fg), t([48.0, 48.0]),
                                      t(np.full((a, 1), 8.0, np.float32)))
    got = jax.jit(yolo_box_loss)(distri, pred, points, target, scores, score_sum, fg)
    for ours, theirs in zip(got, want):
        np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


def test_ground_truth_slot_order_and_padding_position_do_not_matter():
    d, s, p, st, labels, boxes, mask = make_case(14)["jax_args"]
    rng = np.random.default_rng(14)
    perm = np.stack([rng.permutation(labels.shape[1]) for _ in range(len(labels))])
    take = lambda x: np.take_along_axis(x, perm.reshape(perm.shape + (1,) * (x.ndim - 2)), 1)
    t0 = float(LOSS(d, s, p, st, labels, boxes, mask)[0])
    t1 = float(LOSS(d, s, p, st, take(labels), take(boxes), take(mask))[0])
    np.testing.assert_allclose(t1, t0, rtol=1e-6)


@pytest.mark.peers
def test_class_weights_equal_ultralytics_class_weights():
    case = make_case(15)
    weights = np.array([0.5, 2.0, 0.0, 1.25], np.float32)
    _, items = jax.jit(lambda w, *a: yolo_detection_loss(*a, class_weights=w))(
        weights, *case["jax_args"])
    assert_items_close(items, ultralytics_items(case, class_weights=weights))


def test_class_weights_scale_each_class_and_zero_removes_it():
    """cls = cls_gain * sum_c w_c sum_{b,a} BCE(x, t)[b, a, c] / S, S unweighted (ultralytics)."""
    from detjax.assign import batched_task_aligned

    case = make_case(16)
    d, s, p, st, labels, boxes, mask = case["jax_args"]
    pred = jnp.asarray(dist2bbox(dfl_decode(d), p)) * st
    targets = batched_task_aligned(jax.nn.sigmoid(s), pred, p * st, labels, boxes, mask,
                                   min_gt_size=16.0)
    t = np.asarray(targets.scores, np.float64)
    x = np.asarray(s, np.float64)
    per_class = (np.logaddexp(0, x) - x * t).sum((0, 1))  # [C], float64 oracle
    score_sum = max(t.sum(), 1.0)
    weighted = jax.jit(lambda w: yolo_detection_loss(*case["jax_args"], class_weights=w))
    for w in (np.ones(4), np.array([1.0, 0.0, 3.0, 0.5]), np.zeros(4)):
        _, items = weighted(w.astype(np.float32))
        np.testing.assert_allclose(float(items["cls"]), 0.5 * (w * per_class).sum() / score_sum,
                                   rtol=1e-5, atol=1e-7)
    # a zero weight: class 1's logits no longer reach the classification loss at all
    w = jnp.array([1.0, 0.0, 1.0, 1.0])
    grad = jax.grad(lambda z: yolo_detection_loss(d, z, p, st, labels, boxes, mask,
                                                  class_weights=w)[1]["cls"])(s)
    assert not np.asarray(grad[..., 1]).any() and np.asarray(grad[..., 0]).any()
    # vmap over weight vectors equals the loop; the default equals all-ones
    grid = jnp.array([[1.0, 1.0, 1.0, 1.0], [0.0, 1.0, 2.0, 3.0]])
    swept = jax.jit(jax.vmap(lambda w: weighted(w)[0]))(grid)
    np.testing.assert_allclose(swept, [float(weighted(w)[0]) for w in grid], rtol=1e-6)
    np.testing.assert_allclose(float(swept[0]), float(LOSS(*case["jax_args"])[0]), rtol=1e-6)
    with pytest.raises(ValueError, match="class_weights"):
        yolo_detection_loss(*case["jax_args"], class_weights=np.ones(3))
