"""Building blocks of the YOLOv8 network (ultralytics ``nn/modules``), NHWC, in flax.nnx.

Feature maps are ``[B, H, W, C]``. Every block matches the ultralytics block of the same name
in structure and parameter count: ``ConvBNAct`` (ultralytics ``Conv``: bias-free convolution,
BatchNorm with eps 1e-3 / momentum 0.03, SiLU), ``Bottleneck``, ``C2f`` and ``SPPF``.

Initialisation follows PyTorch's defaults (what ultralytics leaves in place): convolution
kernels and biases ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)); BatchNorm scale 1, bias 0.
PyTorch's BN ``momentum=0.03`` is flax's ``momentum=0.97`` (weight of the old running value).
One difference: flax updates the running variance with the biased batch variance, PyTorch with
the unbiased one (a factor n/(n-1), negligible at detector batch x spatial sizes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

BN_EPS = 1e-3
BN_MOMENTUM = 0.97  # flax convention; PyTorch/ultralytics momentum 0.03

def _uniform(key: jax.Array, shape: tuple[int, ...], dtype, bound: float) -> jax.Array:
    """U(-bound, bound). With a concrete key the draw is made by NumPy (seeded from the key):
    eager ``jax.random`` compiles one XLA program per parameter shape, which made building a
    model take ~40 s on a loaded 2-core CPU. Traced keys (under jit/eval_shape) use jax.random."""
    if isinstance(key, jax.core.Tracer):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    seed = np.asarray(jax.random.key_data(key)).astype(np.uint32).ravel()
    draw = np.random.default_rng(seed).uniform(-bound, bound, size=shape)
    return jnp.asarray(draw, dtype)


def torch_kernel_init(key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> jax.Array:
    """PyTorch's default Conv2d kernel init, ``kaiming_uniform(a=sqrt(5))`` ==
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)); flax kernel shape ``[kh, kw, in / groups, out]``."""
    fan_in = int(np.prod(shape[:-1]))
    return _uniform(key, shape, dtype, 1.0 / fan_in ** 0.5)


def torch_bias_init(fan_in: int):
    """PyTorch's default Conv2d bias init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def init(key, shape, dtype=jnp.float32):
        return _uniform(key, shape, dtype, 1.0 / float(fan_in) ** 0.5)

    return init


def pointwise_as_matmul(lhs, rhs, window_strides, padding, *, lhs_dilation=None,
                        rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                        precision=None, **kwargs):
    """``lax.conv_general_dilated`` that runs a 1x1, stride-1, unpadded, ungrouped NHWC
    convolution as a matmul over channels. Same result; XLA:CPU's convolution backward pass
    for 1x1 kernels was ~2.5x slower than the matmul's on a 2-core CPU (benchmarks/)."""
    pointwise = (rhs.shape[0] == rhs.shape[1] == 1 and tuple(window_strides) == (1, 1)
                 and feature_group_count == 1 and not isinstance(padding, str)
                 and all(tuple(p) == (0, 0) for p in padding)
                 and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation)))
    if pointwise:
        return jnp.einsum("...c,cd->...d", lhs, rhs[0, 0], precision=precision,
                          preferred_element_type=kwargs.get("preferred_element_type"))
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding,
                                    lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                                    dimension_numbers=dimension_numbers,
                                    feature_group_count=feature_group_count,
                                    precision=precision, **kwargs)


def conv2d(in_ch: int, out_ch: int, kernel: int, *, stride: int = 1, groups: int = 1,
           use_bias: bool = False, dtype=None, rngs: nnx.Rngs) -> nnx.Conv:
    """A PyTorch-like NHWC convolution: symmetric padding ``kernel // 2`` (ultralytics
    ``autopad``), PyTorch default initialisation. Flax's 'SAME' would pad (0, 1) at stride 2."""
    pad = kernel // 2
    fan_in = in_ch // groups * kernel * kernel
    return nnx.Conv(in_ch, out_ch, (kernel, kernel), (stride, stride),
                    padding=((pad, pad), (pad, pad)), feature_group_count=groups,
                    use_bias=use_bias, kernel_init=torch_kernel_init,
                    bias_init=torch_bias_init(fan_in), dtype=dtype, rngs=rngs,
                    conv_general_dilated=pointwise_as_matmul)


class ConvBNAct(nnx.Module):
    """ultralytics ``Conv``: Conv2d(bias=False) -> BatchNorm -> SiLU (or identity).

    ``[B, H, W, in_ch] -> [B, H/stride, W/stride, out_ch]``.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1, stride: int = 1, *,
                 groups: int = 1, act: bool = True, dtype=None, rngs: nnx.Rngs):
        self.conv = conv2d(in_ch, out_ch, kernel, stride=stride, groups=groups,
                           dtype=dtype, rngs=rngs)
        self.bn = nnx.BatchNorm(out_ch, momentum=BN_MOMENTUM, epsilon=BN_EPS, dtype=dtype,
                                rngs=rngs)
        self.act = act

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.bn(self.conv(x))
        return jax.nn.silu(y) if self.act else y


class Bottleneck(nnx.Module):
    """ultralytics ``Bottleneck``: two 3x3 ``ConvBNAct`` with hidden width ``int(out_ch * e)``
    and a residual add when ``shortcut`` and ``in_ch == out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, *, shortcut: bool = True, e: float = 0.5,
                 dtype=None, rngs: nnx.Rngs):
        hidden = int(out_ch * e)
        self.cv1 = ConvBNAct(in_ch, hidden, 3, dtype=dtype, rngs=rngs)
        self.cv2 = ConvBNAct(hidden, out_ch, 3, dtype=dtype, rngs=rngs)
        self.add = shortcut and in_ch == out_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


class C2f(nnx.Module):
    """ultralytics ``C2f`` (CSP bottleneck with 2 convolutions, YOLOv8).

    ``cv1`` (1x1) to ``2c`` channels, split in two halves, ``n`` Bottlenecks (e=1.0) chained on
    the second half, every intermediate concatenated (``(2 + n) c`` channels), ``cv2`` (1x1).
    """

    def __init__(self, in_ch: int, out_ch: int, n: int = 1, *, shortcut: bool = False,
                 e: float = 0.5, dtype=None, rngs: nnx.Rngs):
        self.c = int(out_ch * e)
        self.cv1 = ConvBNAct(in_ch, 2 * self.c, 1, dtype=dtype, rngs=rngs)
        self.cv2 = ConvBNAct((2 + n) * self.c, out_ch, 1, dtype=dtype, rngs=rngs)
        self.m = nnx.List([Bottleneck(self.c, self.c, shortcut=shortcut, e=1.0, dtype=dtype,
                                      rngs=rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        ys = list(jnp.split(self.cv1(x), 2, axis=-1))
        for block in self.m:
            ys.append(block(ys[-1]))
        return self.cv2(jnp.concatenate(ys, axis=-1))


def max_pool_same(x: jax.Array, kernel: int) -> jax.Array:
    """Stride-1 max pooling with -inf padding ``kernel // 2`` (torch ``MaxPool2d``), NHWC."""
    pad = kernel // 2
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, kernel, kernel, 1),
                             (1, 1, 1, 1), ((0, 0), (pad, pad), (pad, pad), (0, 0)))


class SPPF(nnx.Module):
    """ultralytics ``SPPF`` as YOLOv8 builds it: 1x1 ``ConvBNAct`` (with SiLU; YOLO26 drops it)
    to ``in_ch // 2``, three chained 5x5 max-pools (SPP with 5/9/13), concat, 1x1 to ``out_ch``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 5, *, dtype=None,
                 rngs: nnx.Rngs):
        hidden = in_ch // 2
        self.cv1 = ConvBNAct(in_ch, hidden, 1, dtype=dtype, rngs=rngs)
        self.cv2 = ConvBNAct(hidden * 4, out_ch, 1, dtype=dtype, rngs=rngs)
        self.kernel = kernel

    def __call__(self, x: jax.Array) -> jax.Array:
        ys = [self.cv1(x)]
        for _ in range(3):
            ys.append(max_pool_same(ys[-1], self.kernel))
        return self.cv2(jnp.concatenate(ys, axis=-1))


def upsample2x(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling of ``[B, H, W, C]`` to ``[B, 2H, 2W, C]``."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


def set_bn_axis_name(module: nnx.Module, axis_name: str | None) -> None:
    """Make every ``nnx.BatchNorm`` in ``module`` average its batch statistics over the named
    mapped axis (``jax.pmap(..., axis_name=...)`` / ``shard_map``), i.e. synchronised BN.
    Under ``jax.jit`` with sharded arrays the statistics are already global: leave it None."""
    for _, node in nnx.iter_graph(module):
        if isinstance(node, nnx.BatchNorm):
            node.axis_name = axis_name
