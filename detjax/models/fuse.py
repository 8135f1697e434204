"""BatchNorm folded into the preceding convolution, for inference.

In eval mode a ``ConvBNAct`` computes ``act(gamma * (conv(x, W) - mean) / sqrt(var + eps) +
beta)``. With the per-output-channel scale ``s = gamma / sqrt(var + eps)`` this is one
convolution with bias::

    W' = W * s        (kernel [kh, kw, in / groups, out], s broadcast over the last axis)
    b' = (b - mean) * s + beta      (b = 0 for the bias-free ultralytics ``Conv``)

so the fused network runs one convolution (and its bias add) where the unfused one runs a
convolution and a normalisation pass over every feature map (ultralytics ``fuse_conv_and_bn``
does the same for its ``Conv`` modules). The folding is done in float64 on the host and
stored as float32 parameters, so the fused model equals the eval-mode model up to float32
rounding of the convolution itself.

The result is an ordinary :class:`~detjax.models.Detector` (same class, same ``predict``), whose
``ConvBNAct`` blocks hold a biased convolution and an :class:`Identity` in place of the
BatchNorm. It has no batch statistics left, so it is an inference model: training it
would train without normalisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from detjax.models.blocks import ConvBNAct

__all__ = ["Identity", "fold_batch_norm", "fuse"]


class Identity(nnx.Module):
    """``x -> x``; stands where a folded BatchNorm was."""

    def __call__(self, x: jax.Array) -> jax.Array:
        return x


def fold_batch_norm(kernel: np.ndarray, bias: np.ndarray | None, *, mean: np.ndarray,
                    var: np.ndarray, scale: np.ndarray | None, offset: np.ndarray | None,
                    epsilon: float) -> tuple[np.ndarray, np.ndarray]:
    """``(kernel', bias')`` of the convolution equal to conv ``kernel [kh, kw, in/g, out]``
    (+ ``bias [out]`` or None) followed by eval-mode BatchNorm with running ``mean``/``var``
    ``[out]``, ``scale`` (gamma) and ``offset`` (beta) ``[out]`` (None: 1 and 0) and
    ``epsilon``. Computed in float64, returned in the kernel's dtype."""
    kernel = np.asarray(kernel)
    out = kernel.shape[-1]
    k = kernel.astype(np.float64)
    b = np.zeros(out) if bias is None else np.asarray(bias, np.float64)
    gamma = np.ones(out) if scale is None else np.asarray(scale, np.float64)
    beta = np.zeros(out) if offset is None else np.asarray(offset, np.float64)
    mean, var = np.asarray(mean, np.float64), np.asarray(var, np.float64)
    for name, x in (("bias", b), ("mean", mean), ("var", var), ("scale", gamma),
                    ("offset", beta)):
        if x.shape != (out,):
            raise ValueError(f"{name} must have shape ({out},) (the kernel's output channels), "
                             f"got {x.shape}")
    s = gamma / np.sqrt(var + epsilon)  # [out]
    return (k * s).astype(kernel.dtype), ((b - mean) * s + beta).astype(kernel.dtype)


def _host(v) -> np.ndarray | None:
    return None if v is None else np.asarray(jax.device_get(v[...]))


def _fuse_block(block: ConvBNAct) -> None:
    """Folds ``block.bn`` into ``block.conv`` in place."""
    conv, bn = block.conv, block.bn
    kernel, bias = fold_batch_norm(
        _host(conv.kernel), _host(conv.bias), mean=_host(bn.mean), var=_host(bn.var),
        scale=_host(bn.scale), offset=_host(bn.bias), epsilon=float(bn.epsilon))
    conv.kernel = nnx.Param(jnp.asarray(kernel))
    conv.bias = nnx.Param(jnp.asarray(bias))
    conv.use_bias = True
    block.bn = Identity()


def fuse(model: nnx.Module) -> nnx.Module:
    """A copy of ``model`` (e.g. a :class:`~detjax.models.Detector`) in eval mode with every
    ``ConvBNAct``'s BatchNorm folded into its convolution (see the module docstring);
    outputs equal ``model`` in eval mode. ``model`` itself is not changed.

    Example::

        fused = fuse(model)
        preds = fused.predict(fused(images))    # == model.eval(); model.predict(model(images))
    """
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model must be an nnx.Module, got {type(model).__name__}")
    fused = nnx.clone(model)
    blocks = [node for _, node in nnx.iter_graph(fused)
              if isinstance(node, ConvBNAct) and isinstance(node.bn, nnx.BatchNorm)]
    for block in blocks:
        _fuse_block(block)
    fused.eval()
    return fused
