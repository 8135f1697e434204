"""Post-training int8 quantisation of a detjax detector with qwix.

Weights are quantised per output channel (symmetric, ``absmax``: scale = max |w| / 127.5 over
each output channel's kernel, values clipped to [-127, 127]; qwix's int8 bound is 127 plus
half a step). Activations are quantised per tensor with *static* scales
calibrated on ``num_batches`` batches of images: the float model records each convolution
input's max |x| per image, averaged over images and batches (:func:`calibrate`), and qwix's
``PtqProvider`` turns those ranges into fixed scales (scale = absmax / 127.5). Every
convolution of the backbone, neck and head then runs as an int8 x int8 convolution with an
int32 accumulator (qwix ``conv_general_dilated``) followed by the float rescale; BatchNorm,
SiLU, the concatenations and the head's decode (``model.predict``) stay float.

qwix intercepts ``jax.lax.conv_general_dilated``, ``jax.lax.dot_general``, ``jnp.einsum`` and
``jnp.dot`` called inside ``model.__call__`` and finds a weight by identity with a parameter
of the calling module. The float model runs 1x1 convolutions as an einsum over ``kernel[0, 0]``
(``detjax.models.blocks.pointwise_as_matmul``); that slice is not the parameter, so qwix would
take the kernel for an activation and leave it float. The quantised model therefore sends
every convolution through ``lax.conv_general_dilated`` (same values), where the kernel is
found and stored as int8.

With ``act_qtype=None`` only the weights are quantised (stored int8 per channel, dequantised
to float before a float convolution): qwix's own convolution needs both sides quantised.

Quantisation-aware training (``train.qat``) uses the same scheme as fake quantisation
(:func:`fake_quantize`, :func:`fake_quantized`): every convolution quantises and dequantises
its input (per tensor, the static calibrated range) and its kernel (per output channel) in
float, with a straight-through gradient, so each fake-quantised convolution computes the int8
convolution of :func:`quantize_from_stats` up to float rounding (a float32 sum of dequantised
products against an int32 sum, then scaled; a value on a rounding boundary of the next layer
may land one step apart). This is written here rather
than with qwix's ``QtProvider``: its statistics updates inside ``custom_vjp`` raise flax's
``TraceContextError`` under ``jax.jit`` (qwix 0.1.8), and the train step is jitted.

Reference: qwix (github.com/google/qwix) ``PtqProvider`` with ``act_static_scale=True``;
defaults are qwix's (``absmax`` for weights and activations, ``act_batch_axes=(0,)``). qwix's
own calibration runs a ``QtProvider`` model, whose statistics updates raise flax's
``TraceContextError`` under ``jax.jit`` (qwix 0.1.8, inside its ``custom_vjp``), so the
ranges are measured here by a jitted float forward pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from detjax.models.blocks import pointwise_as_matmul

QTYPES = {"int8": jnp.int8, "int4": jnp.int4}
_INT8_BOUND = 127.5  # qwix's symmetric int8 bound: qmax plus half a step
_STAT_NAME = "conv_general_dilated0_lhs"


def _qtype(name: Any, what: str):
    if name is None:
        return None
    key = name if isinstance(name, str) else jnp.dtype(name).name
    if key not in QTYPES:
        raise ValueError(f"{what} must be one of {tuple(QTYPES)} or None, got {name!r}")
    return QTYPES[key]


def _provider_classes():
    import qwix
    from qwix._src.core import conv_general
    from qwix._src.providers import ptq
    from qwix._src.utils import flax_util

    class WeightOnlyPtqProvider(qwix.PtqProvider):
        """qwix PTQ whose convolutions quantise only the kernel (per output channel) and
        compute in float with the dequantised kernel."""

        def conv_general_dilated(self, lhs, rhs, window_strides, padding, lhs_dilation=None,
                                 rhs_dilation=None, dimension_numbers=None,
                                 feature_group_count=1, batch_group_count=1, precision=None,
                                 preferred_element_type=None, out_sharding=None):
            rule, _ = self._get_current_rule_and_op_id("conv_general_dilated")
            if rule is None or rule.weight_qtype is None or rule.act_qtype is not None:
                return super().conv_general_dilated(
                    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count, precision,
                    preferred_element_type, out_sharding)
            numbers = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            if isinstance(rhs, ptq.WithAux):
                kernel = rhs.array
            else:
                how = conv_general.get_how_to_quantize(
                    dimension_numbers=numbers, for_lhs=False, qtype=rule.weight_qtype,
                    calibration_method=rule.weight_calibration_method)
                kernel = ptq.create_quantized_param(flax_util.find_param(rhs), rhs, how).array
            return lax.conv_general_dilated(
                lhs, qwix.dequantize(kernel).astype(lhs.dtype), window_strides, padding,
                lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
                dimension_numbers=numbers, feature_group_count=feature_group_count,
                batch_group_count=batch_group_count, precision=precision,
                preferred_element_type=preferred_element_type)

    return qwix, WeightOnlyPtqProvider


def _rule(cls, weight_qtype, act_qtype):
    if act_qtype is None:
        return cls(module_path=".*", weight_qtype=weight_qtype)
    return cls(module_path=".*", weight_qtype=weight_qtype, act_qtype=act_qtype,
               act_static_scale=True, act_calibration_method="absmax")


def _convs_as_convolutions(model: nnx.Module) -> None:
    """Every ``nnx.Conv`` of ``model`` calls ``lax.conv_general_dilated`` itself (so qwix
    finds its kernel), in place of the 1x1 einsum route."""
    for _, module in model.iter_modules():
        if isinstance(module, nnx.Conv):
            module.conv_general_dilated = lax.conv_general_dilated


def _convert(model: nnx.Module, provider, example: jax.Array) -> nnx.Module:
    """qwix's NNX conversion (weights replaced by quantised arrays, static scales created on
    the first call), with that first call under ``nnx.jit``: eagerly, op by op, it took ~2.5x
    longer on the 2-core CPU."""
    import qwix

    quantized = qwix.quantize_model(model, provider, example, skip_nnx_init=True)
    nnx.jit(lambda m, images: m(images))(quantized, example)
    return quantized


def _check_images(images: Any) -> jax.Array:
    images = jnp.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or not jnp.issubdtype(images.dtype,
                                                                          jnp.floating):
        raise ValueError("calibration batches must be float [B, H, W, 3] images in 0..1, got "
                         f"{images.dtype} {images.shape}")
    return images


def _conv_paths(model: nnx.Module) -> list[tuple[str, nnx.Conv]]:
    return [("/".join(map(str, path)), module) for path, module in nnx.iter_modules(model)
            if isinstance(module, nnx.Conv)]


def _recording_conv(found: dict[str, jax.Array], name: str):
    def conv(lhs, rhs, *args, **kwargs):
        # qwix static scale of a convolution input: absmax per image (its channelwise axis
        # is the batch), averaged over the batch (act_batch_axes=(0,))
        found[name] = jnp.max(jnp.abs(lhs), axis=(1, 2, 3)).mean()
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

    return conv


def calibrate(model: nnx.Module, calib_images: Iterable[Any], *, num_batches: int = 32
              ) -> tuple[dict[str, float], jax.Array]:
    """Activation ranges of ``model`` (a float detector, run in eval mode) over the first
    ``num_batches`` float ``[B, H, W, 3]`` batches of ``calib_images``: ``(absmax, first)``
    with ``absmax[conv path]`` the mean over batches and images of each convolution input's
    max |x| (qwix's ``absmax`` static calibration) and ``first`` the first batch."""
    if not isinstance(num_batches, int) or num_batches < 1:
        raise ValueError(f"num_batches must be a positive int, got {num_batches!r}")
    batches = iter(calib_images)
    first = next(batches, None)
    if first is None:
        raise ValueError("calib_images gave no batch")
    first = _check_images(first)
    model = nnx.clone(model)
    model.eval()
    graphdef, state = nnx.split(model)

    @jax.jit
    def absmax(state, images):
        m = nnx.merge(graphdef, state)
        found: dict[str, jax.Array] = {}
        for name, conv in _conv_paths(m):
            conv.conv_general_dilated = _recording_conv(found, name)
        m(images)
        return found

    totals = absmax(state, first)
    count = 1
    for images in batches:
        if count >= num_batches:
            break
        totals = jax.tree.map(jnp.add, totals, absmax(state, _check_images(images)))
        count += 1
    return {k: float(v) / count for k, v in totals.items()}, first


def quantize_from_stats(model: nnx.Module, act_absmax: Mapping[str, float] | None,
                        example_images: Any, *, weight_qtype: Any = "int8",
                        act_qtype: Any = "int8") -> nnx.Module:
    """The quantised copy of ``model`` (a float detector) with the activation ranges
    ``act_absmax`` from :func:`calibrate` (``None`` when ``act_qtype`` is None).
    ``example_images``: one float ``[B, H, W, 3]`` batch, run once to convert the weights.
    Returns an eval-mode model whose kernels are stored ``weight_qtype`` per output channel."""
    wq, aq = _qtype(weight_qtype, "weight_qtype"), _qtype(act_qtype, "act_qtype")
    if wq is None:
        raise ValueError("weight_qtype must be set; use the float model for no quantisation")
    if aq is not None and aq != wq:
        raise ValueError(f"act_qtype must equal weight_qtype or be None (qwix convolutions "
                         f"need both sides alike), got {act_qtype!r} and {weight_qtype!r}")
    qwix, weight_only = _provider_classes()
    example = _check_images(example_images)
    model = nnx.clone(model)
    model.eval()
    _convs_as_convolutions(model)
    if aq is None:
        return _convert(model, weight_only([_rule(qwix.QuantizationRule, wq, None)]), example)
    convs = _conv_paths(model)
    missing = sorted({name for name, _ in convs} - set(act_absmax or {}))
    if missing:
        raise ValueError(f"act_absmax has no range for the convolution(s) {missing[:3]}; "
                         "calibrate this model (calibrate()) first")
    for name, conv in convs:
        # the running-statistics variable qwix's PTQ turns into the static input scale of
        # the module's first convolution (op id ``conv_general_dilated0``)
        value = jnp.full((1, 1, 1, 1), act_absmax[name], jnp.float32)
        setattr(conv, _STAT_NAME, qwix.QuantStat({"count": jnp.ones((), jnp.int32),
                                                  "sum_of_absmax": value}))
    quantized = _convert(model, qwix.PtqProvider([_rule(qwix.QuantizationRule, wq, aq)]),
                         example)
    unused = [name for name, conv in _conv_paths(quantized) if hasattr(conv, _STAT_NAME)]
    if unused:
        raise RuntimeError(f"qwix did not use the activation ranges of {unused[:3]}; this "
                           "qwix version names its statistics differently")
    return quantized


def quantize_ptq(model: nnx.Module, calib_images: Iterable[Any], *, weight_qtype: Any = "int8",
                 act_qtype: Any = "int8", num_batches: int = 32) -> nnx.Module:
    """Post-training quantisation of a float detector with qwix: kernels ``weight_qtype``
    per output channel; convolution inputs ``act_qtype`` with static per-tensor scales
    calibrated on ``num_batches`` float ``[B, H, W, 3]`` batches of ``calib_images``
    (``act_qtype=None``: weights only, the first batch only converts them). Returns a new
    eval-mode model; ``model`` is left unchanged. Defaults are qwix's (``absmax``)."""
    if _qtype(act_qtype, "act_qtype") is None:
        first = next(iter(calib_images), None)
        if first is None:
            raise ValueError("calib_images gave no batch")
        return quantize_from_stats(model, None, first, weight_qtype=weight_qtype,
                                   act_qtype=None)
    act_absmax, first = calibrate(model, calib_images, num_batches=num_batches)
    return quantize_from_stats(model, act_absmax, first, weight_qtype=weight_qtype,
                               act_qtype=act_qtype)


def quantized_kernels(model: nnx.Module) -> dict[str, np.dtype]:
    """``{path: dtype}`` of every stored quantised value (qwix ``qvalue``) in ``model``'s
    state, e.g. ``'backbone/stem/conv/kernel/array/qvalue' -> int8``."""
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(model))[0]:
        name = "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        if name.endswith("qvalue") or "/qvalue/" in name:
            out[name.removesuffix("/value")] = np.dtype(leaf.dtype)
    return out


# ----------------------------------------------------------------------------- fake quantisation


def fake_quantize(x: jax.Array, absmax: jax.Array) -> jax.Array:
    """int8 quantise-dequantise of ``x`` with the symmetric range ``absmax`` (broadcast against
    ``x``: a scalar per tensor or ``[1, ..., 1, C]`` per channel), straight-through gradient.

    qwix's int8 ``absmax`` scheme: ``scale = absmax / 127.5`` (1 where it is below
    ``sqrt(tiny)``), ``q = clip(round(x / scale), -128, 127)``, value ``q * scale``. The
    gradient is 1 where ``x`` lies inside the representable range ``[-128, 127] * scale`` and 0
    outside (clipped straight-through estimator, Bengio et al. 2013; Jacob et al. 2018); the
    range itself gets no gradient.
    """
    x = jnp.asarray(x)
    absmax = jax.lax.stop_gradient(jnp.asarray(absmax, x.dtype))
    scale = absmax / _INT8_BOUND
    scale = jnp.where(scale < jnp.sqrt(jnp.finfo(x.dtype).tiny), jnp.ones_like(scale), scale)
    lo, hi = -128.0 * scale, 127.0 * scale
    value = jnp.clip(jnp.round(x / scale), -128.0, 127.0) * scale
    inside = jnp.clip(x, lo, hi)  # carries the gradient
    return inside + jax.lax.stop_gradient(value - inside)


def _fake_quant_conv(act_absmax: float):
    """A ``conv_general_dilated`` for an NHWC / HWIO ``nnx.Conv`` whose input (static range
    ``act_absmax``) and kernel (per output channel) are int8 fake-quantised."""

    def conv(lhs, rhs, *args, **kwargs):
        kernel_absmax = jnp.max(jnp.abs(rhs), axis=(0, 1, 2), keepdims=True)  # [1, 1, 1, O]
        return pointwise_as_matmul(fake_quantize(lhs, act_absmax),
                                   fake_quantize(rhs, kernel_absmax), *args, **kwargs)

    return conv


def fake_quantized(model: nnx.Module, act_absmax: Mapping[str, float]) -> nnx.Module:
    """``model`` (a float detector) with every convolution int8 fake-quantised, in place:
    inputs per tensor at the ranges ``act_absmax`` (:func:`calibrate`), kernels per output
    channel. It trains as usual (straight-through gradients, :func:`fake_quantize`); after
    training, :func:`quantize_from_stats` with the same ranges gives the int8 model whose
    convolutions these compute up to float rounding. Returns ``model``."""
    convs = _conv_paths(model)
    missing = sorted({name for name, _ in convs} - set(act_absmax))
    if missing:
        raise ValueError(f"act_absmax has no range for the convolution(s) {missing[:3]}; "
                         "calibrate this model (calibrate()) first")
    for name, conv in convs:
        conv.conv_general_dilated = _fake_quant_conv(float(act_absmax[name]))
    return model
