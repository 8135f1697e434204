"""detjax.assign.hungarian: DETR cost oracle and scipy linear_sum_assignment parity."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detjax.assign import detr_cost, hungarian, linear_assignment

_hungarian = jax.jit(hungarian)


def _problem(rng, n=12, m=5, c=4):
    logits = rng.normal(size=(n, c))
    probs = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    pred = np.concatenate([rng.uniform(0.2, 0.8, (n, 2)), rng.uniform(0.05, 0.4, (n, 2))], -1)
    gt = np.concatenate([rng.uniform(0.2, 0.8, (m, 2)), rng.uniform(0.05, 0.4, (m, 2))], -1)
    return probs, pred.astype(np.float32), rng.integers(0, c, m), gt.astype(np.float32)


def _giou_np(a, b):
    a = [a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2]
    b = [b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2]
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_detr_cost_oracle():
    probs, pred, labels, gt = _problem(np.random.default_rng(0))
    got = jax.jit(detr_cost)(probs, pred, labels, gt)
    want = [[5 * np.abs(p - g).sum() - probs[i, labels[j]] - 2 * _giou_np(p, g)
             for j, g in enumerate(gt)] for i, p in enumerate(pred)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@settings(max_examples=10)
@given(seed=st.integers(0, 2**16), n_valid=st.integers(0, 5))
def test_matches_scipy(seed, n_valid):
    scipy_opt = pytest.importorskip("scipy.optimize")
    probs, pred, labels, gt = _problem(np.random.default_rng(seed))
    mask = np.arange(5) < n_valid
    got = _hungarian(probs, pred, labels, gt, mask)
    cost = np.asarray(detr_cost(probs, pred, labels, gt))[:, :n_valid]
    rows, cols = scipy_opt.linear_sum_assignment(cost)
    want_q = np.full(5, -1)
    want_q[cols] = rows
    np.testing.assert_array_equal(got.query_index, want_q)
    want_t = np.full(12, -1)
    want_t[rows] = cols
    np.testing.assert_array_equal(got.target_index, want_t)
    np.testing.assert_array_equal(got.fg_mask, want_t >= 0)


def test_vmap_and_errors():
    rng = np.random.default_rng(1)
    problems = [_problem(rng) for _ in range(3)]
    masks = np.array([[1, 1, 1, 0, 0], [1] * 5, [0] * 5], bool)
    stacked = [np.stack(x) for x in zip(*problems)]
    batched = jax.jit(jax.vmap(hungarian))(*stacked, masks)
    for b in range(3):
        one = hungarian(*problems[b], masks[b])
        np.testing.assert_array_equal(batched.target_index[b], one.target_index)
    with pytest.raises(ValueError, match="queries"):
        linear_assignment(np.zeros((2, 3)), np.ones(3, bool))
    empty = linear_assignment(np.zeros((4, 0)), np.zeros(0, bool))
    assert (empty.target_index == -1).all()
