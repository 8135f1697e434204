"""detjax.infer.tta against ultralytics' _predict_augment pipeline on a toy detector."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from detjax.infer import descale_predictions, scale_image, tta_predict

STRIDES = (8, 16, 32)


def toy_forward_jax(_, x):
    """Per-level average pooling -> one box per grid cell (cxcywh px) + 2 class scores."""
    b, h, w, _ = x.shape
    g = x.mean(-1)
    outs = []
    for s in STRIDES:
        p = g.reshape(b, h // s, s, w // s, s).mean((2, 4))  # [B, h/s, w/s]
        gy, gx = jnp.meshgrid(jnp.arange(h // s), jnp.arange(w // s), indexing="ij")
        cx = jnp.broadcast_to((gx + 0.5) * s, p.shape)
        cy = jnp.broadcast_to((gy + 0.5) * s, p.shape)
        out = jnp.stack([cx, cy, p * 50 + 1, p * 30 + 1, p, 1 - p], 1)  # [B, 6, h/s, w/s]
        outs.append(out.reshape(b, 6, -1))
    return jnp.concatenate(outs, -1)


def toy_forward_torch(x):
    import torch
    import torch.nn.functional as F

    b, _, h, w = x.shape
    g = x.mean(1, keepdim=True)
    outs = []
    for s in STRIDES:
        p = F.avg_pool2d(g, s)[:, 0]
        gy, gx = torch.meshgrid(torch.arange(h // s), torch.arange(w // s), indexing="ij")
        cx = ((gx + 0.5) * s).expand_as(p).to(p.dtype)
        cy = ((gy + 0.5) * s).expand_as(p).to(p.dtype)
        out = torch.stack([cx, cy, p * 50 + 1, p * 30 + 1, p, 1 - p], 1)
        outs.append(out.reshape(b, 6, -1))
    return torch.cat(outs, -1)


def ultralytics_tta(x_nchw):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.nn.tasks import DetectionModel
    from ultralytics.utils.torch_utils import scale_img

    img_size = x_nchw.shape[-2:]
    y = []
    for si, fi in zip([1, 0.83, 0.67], [None, 3, None]):
        xi = scale_img(x_nchw.flip(fi) if fi else x_nchw, si, gs=32)
        y.append(DetectionModel._descale_pred(toy_forward_torch(xi), fi, si, img_size))
    fake = types.SimpleNamespace(model=[types.SimpleNamespace(nl=3)])
    y = DetectionModel._clip_augmented(fake, y)
    return torch.cat(y, -1).numpy()


@pytest.mark.peers
@pytest.mark.parametrize("hw", [(64, 96), (128, 64)])
def test_tta_matches_ultralytics(hw):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    img = rng.random((2, *hw, 3)).astype(np.float32)
    want = ultralytics_tta(torch.tensor(img).permute(0, 3, 1, 2).contiguous())
    got = jax.jit(lambda v: tta_predict(toy_forward_jax, None, v))(jnp.asarray(img))
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-5, atol=1e-4)


@pytest.mark.peers
def test_scale_image_matches_ultralytics_scale_img():
    torch = pytest.importorskip("torch")
    pytest.importorskip("ultralytics")
    from ultralytics.utils.torch_utils import scale_img

    img = np.random.default_rng(1).random((1, 96, 160, 3)).astype(np.float32)
    for ratio in (0.83, 0.67, 0.5):
        want = scale_img(torch.tensor(img).permute(0, 3, 1, 2), ratio, gs=32)
        got = jax.jit(lambda v, r=ratio: scale_image(v, r))(jnp.asarray(img))
        np.testing.assert_allclose(np.asarray(got), want.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_descale_predictions_inverts_flip_and_scale():
    rng = np.random.default_rng(2)
    pred = jnp.asarray(rng.uniform(0, 60, (2, 7, 11)).astype(np.float32))
    for flip, ratio in ((None, 0.5), ("lr", 0.83), ("ud", 1.0)):
        got = np.asarray(jax.jit(lambda p, f=flip, r=ratio: descale_predictions(
            p, flip=f, ratio=r, image_size=(48, 80)))(pred))
        want = np.asarray(pred).copy()
        want[:, :4] /= ratio
        if flip == "lr":
            want[:, 0] = 80 - want[:, 0]
        if flip == "ud":
            want[:, 1] = 48 - want[:, 1]
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_tta_argument_checks():
    x = jnp.zeros((1, 64, 64, 3))
    with pytest.raises(ValueError, match="pair up"):
        tta_predict(toy_forward_jax, None, x, scales=(1.0,), flips=(None, "lr"))
    with pytest.raises(ValueError, match="flip must be"):
        tta_predict(toy_forward_jax, None, x, scales=(1.0,), flips=("diag",))
    out = jax.eval_shape(lambda v: tta_predict(toy_forward_jax, None, v, scales=(1.0,),
                                               flips=(None,)), x)
    assert out.shape == (1, 6, 64 + 16 + 4)  # one view: nothing clipped
