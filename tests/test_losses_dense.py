"""RetinaNet (focal + box) and GFL (QFL + GIoU + DFL) losses: torchvision parity, a NumPy
oracle of mmdet's GFLHead, matches from the detjax assigners, padding and empty images."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detjax.assign import atss, max_iou
from detjax.losses import gfl_loss, retinanet_loss

RNG = np.random.default_rng(3)
B, C = 2, 3


def grid_anchors(stride, size, img=64):
    """Square anchors of side ``size`` centred on a ``stride`` grid over a 64 px image."""
    c = np.arange(stride / 2, img, stride)
    cx, cy = np.meshgrid(c, c)
    centres = np.stack([cx.ravel(), cy.ravel()], 1)
    return np.concatenate([centres - size / 2, centres + size / 2], 1).astype(np.float32)


ANCHORS = np.concatenate([grid_anchors(8, 24), grid_anchors(16, 48)])  # 64 + 16 anchors
STRIDES = np.concatenate([np.full(64, 8.0), np.full(16, 16.0)]).astype(np.float32)
A = len(ANCHORS)
GT_BOXES = np.array([[[4, 6, 30, 28], [30, 30, 60, 62], [0, 0, 0, 0]],
                     [[10, 12, 40, 50], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
GT_LABELS = np.array([[2, 0, 0], [1, 0, 0]], np.int32)
GT_MASK = np.array([[True, True, False], [True, False, False]])


def retina_matches():
    fn = jax.jit(jax.vmap(lambda g, m: max_iou(ANCHORS, g, m, pos_threshold=0.5,
                                               neg_threshold=0.4).matches))
    return np.asarray(fn(GT_BOXES, GT_MASK))


@pytest.mark.peers
@pytest.mark.parametrize("box_loss", ["l1", "smooth_l1", "giou", "ciou"])
def test_retinanet_equals_torchvision_compute_loss(box_loss):
    torch = pytest.importorskip("torch")
    retina = pytest.importorskip("torchvision.models.detection.retinanet")
    matches = retina_matches()
    assert (matches >= 0).sum() >= 3 and (matches == -2).any()  # fg, bg and ignored anchors
    logits = RNG.normal(size=(B, A, C)).astype(np.float32) * 2
    deltas = RNG.normal(size=(B, A, 4)).astype(np.float32) * 0.3
    head = retina.RetinaNetHead(1, 1, C)
    head.regression_head._loss_type = box_loss
    targets = [{"boxes": torch.tensor(GT_BOXES[i][GT_MASK[i]]),
                "labels": torch.tensor(GT_LABELS[i][GT_MASK[i]]).long()} for i in range(B)]
    outputs = {"cls_logits": torch.tensor(logits), "bbox_regression": torch.tensor(deltas)}
    idx = [torch.tensor(m).long() for m in matches]
    want_cls = float(head.classification_head.compute_loss(targets, outputs, idx))
    want_box = float(head.regression_head.compute_loss(
        targets, outputs, [torch.tensor(ANCHORS)] * B, idx))
    fn = jax.jit(lambda *a: retinanet_loss(*a, box_loss=box_loss))
    total, items = fn(logits, deltas, ANCHORS, GT_LABELS, GT_BOXES, matches)
    np.testing.assert_allclose(float(items["cls"]), want_cls, rtol=1e-5)
    np.testing.assert_allclose(float(items["box"]), want_box, rtol=1e-5)
    np.testing.assert_allclose(float(total), want_cls + want_box, rtol=1e-5)


def test_retinanet_single_image_empty_and_grads():
    matches = retina_matches()
    logits = jnp.asarray(RNG.normal(size=(B, A, C)), jnp.float32)
    deltas = jnp.asarray(RNG.normal(size=(B, A, 4)) * 0.3, jnp.float32)
    fn = jax.jit(retinanet_loss)
    batch_total, _ = fn(logits, deltas, ANCHORS, GT_LABELS, GT_BOXES, matches)
    singles = [fn(logits[i], deltas[i], ANCHORS, GT_LABELS[i], GT_BOXES[i], matches[i])[0]
               for i in range(B)]
    np.testing.assert_allclose(float(batch_total), np.mean(singles), rtol=1e-6)
    # an image without ground truth: every anchor negative, box loss 0, cls = sum focal
    none = np.full((A,), -1, np.int32)
    _, items = fn(logits[0], deltas[0], ANCHORS, GT_LABELS[0, :0], GT_BOXES[0, :0], none)
    assert float(items["box"]) == 0.0 and float(items["cls"]) > 0
    grad = jax.jit(jax.grad(lambda x, d: retinanet_loss(
        x, d, ANCHORS, GT_LABELS, GT_BOXES, matches, box_loss="giou")[0], argnums=(0, 1)))(
            logits * 50, deltas)
    assert all(np.all(np.isfinite(g)) for g in grad)


# ---------------------------------------------------------------- GFL: oracle of mmdet GFLHead
def _log_softmax(x):
    m = x.max()
    return x - m - math.log(np.exp(x - m).sum())


def _sig(x):
    return 1 / (1 + math.exp(-x))


def _bce(x, t):
    return t * np.logaddexp(0, -x) + (1 - t) * np.logaddexp(0, x)


def _iou_giou(p, t):
    iw = max(min(p[2], t[2]) - max(p[0], t[0]), 0)
    ih = max(min(p[3], t[3]) - max(p[1], t[1]), 0)
    inter = iw * ih
    union = (p[2] - p[0]) * (p[3] - p[1]) + (t[2] - t[0]) * (t[3] - t[1]) - inter
    enclose = (max(p[2], t[2]) - min(p[0], t[0])) * (max(p[3], t[3]) - min(p[1], t[1]))
    return inter / union, inter / (union + 1e-7) - (enclose - union) / (enclose + 1e-7)


def gfl_oracle(logits, dist, matches, reg_max=16):
    """Loops over anchors as mmdet's GFLHead.loss_by_feat_single, batch-wide normalisers."""
    n_bins = reg_max + 1
    cls_sum = box_sum = dfl_sum = weight_sum = 0.0
    num_pos = 0
    for b in range(logits.shape[0]):
        for a in range(A):
            s = STRIDES[a]
            centre = (ANCHORS[a, :2] + ANCHORS[a, 2:]) / 2 / s
            m = matches[b, a]
            score = 0.0
            label = -1
            if m >= 0:
                num_pos += 1
                label = GT_LABELS[b, m]
                target = GT_BOXES[b, m] / s
                sides = []
                for k in range(4):
                    logp = _log_softmax(dist[b, a, k * n_bins:(k + 1) * n_bins].astype(np.float64))
                    sides.append((np.exp(logp) * np.arange(n_bins)).sum())
                pred = np.array([centre[0] - sides[0], centre[1] - sides[1],
                                 centre[0] + sides[2], centre[1] + sides[3]])
                score, giou = _iou_giou(pred, target)
                w = max(_sig(float(x)) for x in logits[b, a])
                weight_sum += w
                box_sum += w * (1 - giou)
                ltrb = [centre[0] - target[0], centre[1] - target[1], target[2] - centre[0],
                        target[3] - centre[1]]
                dfl = 0.0
                for k in range(4):
                    t = min(max(ltrb[k], 0), reg_max - 0.01)
                    left = int(math.floor(t))
                    logp = _log_softmax(dist[b, a, k * n_bins:(k + 1) * n_bins].astype(np.float64))
                    dfl += -((left + 1 - t) * logp[left] + (t - left) * logp[left + 1])
                dfl_sum += w * dfl / 4
            for c in range(C):
                y = score if c == label else 0.0
                x = float(logits[b, a, c])
                cls_sum += _bce(x, y) * abs(y - _sig(x)) ** 2
    weight_sum = max(weight_sum, 1.0)
    return {"cls": cls_sum / max(num_pos, 1), "box": 2.0 * box_sum / weight_sum,
            "dfl": 0.25 * dfl_sum / weight_sum}


def atss_matches():
    fn = jax.jit(jax.vmap(lambda g, m: atss(ANCHORS, g, m, num_anchors_per_level=(64, 16),
                                            topk=9).matches))
    return np.asarray(fn(GT_BOXES, GT_MASK))


def test_gfl_matches_mmdet_oracle():
    matches = atss_matches()
    assert (matches >= 0).sum() >= 3
    logits = RNG.normal(size=(B, A, C)).astype(np.float32)
    dist = RNG.normal(size=(B, A, 4 * 17)).astype(np.float32)
    total, items = jax.jit(gfl_loss)(logits, dist, ANCHORS, STRIDES, GT_LABELS, GT_BOXES, matches)
    want = gfl_oracle(logits, dist, matches)
    for k in ("cls", "box", "dfl"):
        np.testing.assert_allclose(float(items[k]), want[k], rtol=1e-4, err_msg=k)
    np.testing.assert_allclose(float(total), sum(want.values()), rtol=1e-4)


def test_gfl_grads_finite_padding_inert_and_bins_checked():
    matches = atss_matches()
    logits = jnp.asarray(RNG.normal(size=(B, A, C)) * 100, jnp.float32)
    dist = jnp.asarray(RNG.normal(size=(B, A, 68)) * 100, jnp.float32)
    fn = jax.jit(jax.value_and_grad(lambda x, d, g: gfl_loss(
        x, d, ANCHORS, STRIDES, GT_LABELS, g, matches)[0], argnums=(0, 1)))
    val, grads = fn(logits, dist, GT_BOXES)
    assert np.isfinite(val) and all(np.all(np.isfinite(g)) for g in grads)
    junk = GT_BOXES.copy()
    junk[~GT_MASK] = [1, 2, 50, 60]  # padded slots are never matched, so they cannot matter
    np.testing.assert_allclose(float(fn(logits, dist, junk)[0]), float(val), rtol=1e-6)
    with pytest.raises(ValueError, match="68"):
        gfl_loss(logits, dist[..., :64], ANCHORS, STRIDES, GT_LABELS, GT_BOXES, matches)
