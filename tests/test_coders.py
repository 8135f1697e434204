"""detjax.coders: ltrb / DFL / delta coders against oracles, ultralytics and torchvision."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from detjax.coders import bbox2dist, decode_deltas, dfl_decode, dist2bbox, encode_deltas


def _boxes(rng, n, lo=1.0, hi=50.0):
    xy = rng.uniform(0, 100, (n, 2))
    wh = rng.uniform(lo, hi, (n, 2))
    return np.concatenate([xy, xy + wh], -1).astype(np.float32)


@given(seed=st.integers(0, 2**16))
def test_ltrb_round_trip_and_oracle(seed):
    rng = np.random.default_rng(seed)
    boxes = _boxes(rng, 7)
    pts = rng.uniform(0, 150, (7, 2)).astype(np.float32)
    d = jax.jit(bbox2dist)(pts, boxes)
    want = np.stack([pts[:, 0] - boxes[:, 0], pts[:, 1] - boxes[:, 1],
                     boxes[:, 2] - pts[:, 0], boxes[:, 3] - pts[:, 1]], -1)
    np.testing.assert_allclose(d, want, rtol=1e-6)
    np.testing.assert_allclose(jax.jit(dist2bbox)(d, pts), boxes, rtol=1e-5, atol=1e-4)
    c = jax.jit(lambda d, p: dist2bbox(d, p, out_fmt="cxcywh"))(d, pts)
    np.testing.assert_allclose(c[:, 2:], boxes[:, 2:] - boxes[:, :2], rtol=1e-5, atol=1e-4)
    clamped = jax.jit(lambda p, b: bbox2dist(p, b, reg_max=15))(pts, boxes)
    np.testing.assert_allclose(clamped, np.clip(want, 0, 14.99), rtol=1e-6)


@pytest.mark.peers
def test_ltrb_parity_ultralytics():
    torch = pytest.importorskip("torch")
    tal = pytest.importorskip("ultralytics.utils.tal")
    rng = np.random.default_rng(0)
    boxes = _boxes(rng, 50)
    pts = rng.uniform(0, 150, (50, 2)).astype(np.float32)
    t = torch.from_numpy
    for reg_max in (None, 15):
        want = tal.bbox2dist(t(pts), t(boxes), reg_max).numpy()
        got = jax.jit(lambda p, b, r=reg_max: bbox2dist(p, b, reg_max=r))(pts, boxes)
        np.testing.assert_array_equal(got, want)
    d = np.abs(rng.normal(0, 5, (50, 4))).astype(np.float32)
    for xywh, fmt in ((False, "xyxy"), (True, "cxcywh")):
        want = tal.dist2bbox(t(d), t(pts), xywh=xywh).numpy()
        got = jax.jit(lambda d, p, f=fmt: dist2bbox(d, p, out_fmt=f))(d, pts)
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)


def test_dfl_decode_oracle_and_grad():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (3, 5, 64)).astype(np.float32)
    got = jax.jit(dfl_decode)(logits)
    x = logits.reshape(3, 5, 4, 16).astype(np.float64)
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    np.testing.assert_allclose(got, (p * np.arange(16)).sum(-1), rtol=1e-5, atol=1e-5)
    assert got.shape == (3, 5, 4) and (got >= 0).all() and (got <= 15).all()
    g = jax.grad(lambda z: dfl_decode(z, reg_max=8).sum())(jnp.zeros((2, 32), jnp.bfloat16))
    assert np.isfinite(np.asarray(g, np.float32)).all()
    with pytest.raises(ValueError, match="reg_max"):
        dfl_decode(logits, reg_max=10)


def _deltas_oracle(anchors, boxes, means, stds):
    out = []
    for a, b in zip(anchors.astype(float), boxes.astype(float)):
        pw, ph = a[2] - a[0], a[3] - a[1]
        gw, gh = b[2] - b[0], b[3] - b[1]
        d = [((b[0] + b[2]) - (a[0] + a[2])) / 2 / pw, ((b[1] + b[3]) - (a[1] + a[3])) / 2 / ph,
             math.log(gw / pw), math.log(gh / ph)]
        out.append([(x - m) / s for x, m, s in zip(d, means, stds)])
    return np.array(out)


@given(seed=st.integers(0, 2**16))
def test_deltas_oracle_and_round_trip(seed):
    rng = np.random.default_rng(seed)
    anchors, boxes = _boxes(rng, 6), _boxes(rng, 6)
    means, stds = (0.0, 0.1, 0.0, -0.1), (0.1, 0.1, 0.2, 0.2)
    enc = jax.jit(lambda a, b: encode_deltas(a, b, means=means, stds=stds))(anchors, boxes)
    np.testing.assert_allclose(enc, _deltas_oracle(anchors, boxes, means, stds),
                               rtol=1e-4, atol=1e-4)
    dec = jax.jit(lambda a, d: decode_deltas(a, d, means=means, stds=stds))(anchors, enc)
    np.testing.assert_allclose(dec, boxes, rtol=1e-4, atol=1e-3)


def test_delta_clamp_and_degenerate():
    anchors = np.array([[0, 0, 10, 10]] * 2, np.float32)
    huge = np.array([[0, 0, 100, -10], [0, 0, 1, 1]], np.float32)
    dec = decode_deltas(anchors, huge)
    r = math.log(1000 / 16)
    np.testing.assert_allclose(dec[0, 2] - dec[0, 0], 10 * math.exp(r), rtol=1e-5)
    np.testing.assert_allclose(dec[0, 3] - dec[0, 1], 10 * math.exp(-r), rtol=1e-5)
    one_sided = decode_deltas(anchors, huge, clamp_both_sides=False)
    np.testing.assert_allclose(one_sided[0, 3] - one_sided[0, 1], 10 * math.exp(-10), rtol=1e-3)
    flat = np.array([[5, 5, 5, 5], [0, 0, 0, 0]], np.float32)
    g = jax.grad(lambda b: encode_deltas(flat, b).sum())(flat)
    assert np.isfinite(encode_deltas(flat, flat)).all() and np.isfinite(g).all()


@pytest.mark.peers
def test_deltas_parity_torchvision():
    torch = pytest.importorskip("torch")
    det_utils = pytest.importorskip("torchvision.models.detection._utils")
    rng = np.random.default_rng(1)
    anchors, boxes = _boxes(rng, 40), _boxes(rng, 40)
    weights = (10.0, 10.0, 5.0, 5.0)
    coder = det_utils.BoxCoder(weights)
    stds = tuple(1 / w for w in weights)
    want = coder.encode_single(torch.from_numpy(boxes), torch.from_numpy(anchors)).numpy()
    got = jax.jit(lambda a, b: encode_deltas(a, b, stds=stds))(anchors, boxes)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    deltas = rng.normal(0, 3, (40, 4)).astype(np.float32)
    want = coder.decode_single(torch.from_numpy(deltas), torch.from_numpy(anchors)).numpy()
    got = jax.jit(lambda a, d: decode_deltas(a, d, stds=stds, clamp_both_sides=False))(
        anchors, deltas)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
