"""BatchNorm folding (detjax.models.fuse): the fused model equals the eval-mode model."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from detjax.models import ConvBNAct
from detjax.models.blocks import pointwise_as_matmul
from detjax.models.detector import Detector
from detjax.models.fuse import Identity, fold_batch_norm, fuse


def randomize_batch_norm(model: nnx.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters in every BatchNorm of ``model``."""
    rng = np.random.default_rng(seed)
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            c = node.mean.shape[0]
            node.mean[...] = jnp.asarray(rng.normal(0, 0.5, c), jnp.float32)
            node.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
            node.scale[...] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
            node.bias[...] = jnp.asarray(rng.normal(0, 0.3, c), jnp.float32)


def tiny_detector(num_classes: int = 3, seed: int = 0) -> Detector:
    """YOLOv8 layout at width 1/16 (8..64 channels), random BN statistics, eval mode."""
    model = Detector(depth=0.33, width=0.0625, max_channels=1024, num_classes=num_classes,
                     rngs=nnx.Rngs(seed))
    randomize_batch_norm(model, seed)
    model.eval()
    return model


def jit_outputs(model: nnx.Module):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, x):
        m = nnx.merge(graphdef, state)
        out = m(x)
        return out.preds, m.predict(out)

    return lambda x: run(state, x)


def numpy_conv_bn(x, kernel, *, stride, groups, mean, var, scale, offset, eps):
    """Independent oracle: a direct NHWC convolution loop (padding k // 2) then BatchNorm."""
    kh, kw, cin_g, cout = kernel.shape
    pad = kh // 2
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    b, h, w, _ = x.shape
    ho, wo = (h + 2 * pad - kh) // stride + 1, (w + 2 * pad - kw) // stride + 1
    out = np.zeros((b, ho, wo, cout))
    per_group = cout // groups
    for o in range(cout):
        g = o // per_group
        for i in range(ho):
            for j in range(wo):
                patch = xp[:, i * stride:i * stride + kh, j * stride:j * stride + kw,
                           g * cin_g:(g + 1) * cin_g]
                out[:, i, j, o] = np.sum(patch * kernel[..., o], axis=(1, 2, 3))
    return (out - mean) / np.sqrt(var + eps) * scale + offset


@pytest.mark.parametrize("kernel,stride,groups", [(1, 1, 1), (3, 2, 1), (3, 1, 2)])
def test_fused_block_matches_numpy_conv_then_batch_norm(kernel, stride, groups):
    block = ConvBNAct(4, 6, kernel, stride, groups=groups, act=False, rngs=nnx.Rngs(1))
    randomize_batch_norm(block, seed=kernel + stride + groups)
    block.eval()
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 4)).astype(np.float32)
    bn = block.bn
    want = numpy_conv_bn(x.astype(np.float64), np.asarray(block.conv.kernel[...], np.float64),
                         stride=stride, groups=groups, mean=np.asarray(bn.mean[...]),
                         var=np.asarray(bn.var[...]), scale=np.asarray(bn.scale[...]),
                         offset=np.asarray(bn.bias[...]), eps=bn.epsilon)
    fused = fuse(block)
    assert isinstance(fused.bn, Identity) and fused.conv.bias is not None
    np.testing.assert_allclose(fused(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(block(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)


def test_fused_pointwise_conv_keeps_the_matmul_path_and_its_bias():
    """A fused 1x1 convolution still runs as a matmul (``pointwise_as_matmul``), with the
    folded bias added, and equals ``lax.conv_general_dilated`` with the same kernel and bias."""
    block = ConvBNAct(5, 7, 1, rngs=nnx.Rngs(3))
    randomize_batch_norm(block, seed=3)
    fused = fuse(block)
    assert fused.conv.conv_general_dilated is pointwise_as_matmul
    jaxpr = str(jax.make_jaxpr(lambda x: fused(x))(jnp.zeros((1, 4, 4, 5))))
    assert "dot_general" in jaxpr and "conv_general_dilated" not in jaxpr
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 4, 4, 5)), jnp.float32)
    conv = lax.conv_general_dilated(x, fused.conv.kernel[...], (1, 1), ((0, 0), (0, 0)),
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))
    np.testing.assert_allclose(fused(x), jax.nn.silu(conv + fused.conv.bias[...]),
                               rtol=1e-5, atol=1e-6)


def count_batch_norms(model: nnx.Module) -> int:
    return sum(isinstance(n, nnx.BatchNorm) for _, n in nnx.iter_graph(model))


def test_fuse_folds_every_batch_norm_of_a_detector_and_leaves_the_input_alone():
    model = tiny_detector()
    blocks = sum(isinstance(n, ConvBNAct) for _, n in nnx.iter_graph(model))
    fused = fuse(model)
    assert count_batch_norms(fused) == 0
    assert sum(isinstance(n, Identity) for _, n in nnx.iter_graph(fused)) == blocks
    assert count_batch_norms(model) == blocks  # the input keeps its BatchNorms
    assert type(fused) is Detector


@pytest.mark.slow  # two compilations of the network (~10 s idle, minutes on a loaded CPU)
def test_fused_detector_equals_eval_mode_detector():
    model = tiny_detector()
    fused = fuse(model)
    x = jnp.asarray(np.random.default_rng(0).random((2, 64, 64, 3)), jnp.float32)
    preds, decoded = jit_outputs(model)(x)
    fpreds, fdecoded = jit_outputs(fused)(x)
    for name in preds:
        np.testing.assert_allclose(fpreds[name], preds[name], atol=1e-5, rtol=0)
    # decoded boxes are pixels (up to 64): same relative precision
    np.testing.assert_allclose(fdecoded, decoded, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(preds["scores"]).max()) > 0.1  # the comparison is not of zeros


def test_fold_batch_norm_formula_and_errors():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(1, 1, 3, 2)).astype(np.float32)
    mean, var = np.array([0.5, -1.0]), np.array([2.0, 0.25])
    k, b = fold_batch_norm(kernel, np.array([1.0, 2.0]), mean=mean, var=var, scale=None,
                           offset=np.array([0.1, 0.2]), epsilon=1e-3)
    x = rng.normal(size=(4, 3))
    want = (x @ kernel[0, 0] + [1.0, 2.0] - mean) / np.sqrt(var + 1e-3) + [0.1, 0.2]
    np.testing.assert_allclose(x @ k[0, 0] + b, want, rtol=1e-6)
    assert k.dtype == np.float32 and b.dtype == np.float32
    with pytest.raises(ValueError, match="mean must have shape"):
        fold_batch_norm(kernel, None, mean=np.zeros(3), var=np.ones(2), scale=None,
                        offset=None, epsilon=1e-3)
    with pytest.raises(TypeError, match="nnx.Module"):
        fuse({"conv": kernel})


def test_fuse_is_the_package_level_function():
    import detjax.models

    assert detjax.models.fuse is fuse
