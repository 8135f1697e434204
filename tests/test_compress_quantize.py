"""Post-training int8 quantisation with qwix: every convolution kernel stored int8 per output
channel and equal to a NumPy recomputation, static activation ranges and scales equal to a NumPy
recomputation, outputs within a stated tolerance of the float model, and clear errors for bad
settings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detjax.models import create_model
from detjax.models.quantize import (
    calibrate,
    quantize_from_stats,
    quantize_ptq,
    quantized_kernels,
)

pytest.importorskip("qwix")
from test_run import run_copy, trained  # noqa: E402, F401  (the toy run fixtures)

RNG = np.random.default_rng(12)


def _images(n=2, size=64):
    return jnp.asarray(RNG.uniform(0, 1, (n, size, size, 3)), jnp.float32)


def _model():
    """yolov8n with BatchNorm statistics of real activations (one train-mode pass with
    momentum 0), so features do not fade to the head's biases as with init statistics."""
    model = create_model("yolov8n", num_classes=3, rngs=nnx.Rngs(0))
    for _, node in nnx.iter_graph(model):
        if isinstance(node, nnx.BatchNorm):
            node.momentum = 0.0
    model.train()
    nnx.jit(lambda m, x: m(x))(model, _images(4))
    model.eval()
    return model


def _forward(model, images):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images)


def _rel_error(q, f):
    return max(float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))
               for a, b in zip(jax.tree.leaves(q), jax.tree.leaves(f)))


@pytest.fixture(scope="module")
def float_model():
    return _model()


@pytest.mark.slow
def test_ptq_int8_kernels_and_outputs_within_tolerance(float_model):
    calib = [_images() for _ in range(2)]
    ranges, first = calibrate(float_model, calib, num_batches=2)
    quant = quantize_from_stats(float_model, ranges, first)
    kernels = quantized_kernels(quant)
    n_convs = sum(isinstance(m, nnx.Conv) for _, m in nnx.iter_modules(float_model))
    assert len(kernels) == n_convs == 63          # the 1x1 convolutions included
    assert set(kernels.values()) == {np.dtype(np.int8)}
    floats = [k for k, v in jax.tree_util.tree_flatten_with_path(nnx.state(quant))[0]
              if "kernel" in jax.tree_util.keystr(k) and "scale" not in jax.tree_util.keystr(k)
              and v.dtype != jnp.int8]
    assert not floats                             # no float copy of a kernel left behind
    x = _images()
    f, q = _forward(float_model, x), _forward(quant, x)
    # oracle for what is stored: the stem's kernel as round(w / s_c) with s_c = max |w| / 127.5
    # per output channel (qwix's int8 bound: 127 + half a step), and its input scale
    # absmax / 127.5. Each channel's extreme lands on +-127.5, which float rounding sends to
    # 127 or 128 (-127 or -128): there only the magnitude is checked.
    w = np.asarray(float_model.backbone.stem.conv.kernel[...])
    s_c = np.abs(w).max(axis=(0, 1, 2), keepdims=True) / 127.5
    stem = nnx.to_pure_dict(nnx.state(quant))["backbone"]["stem"]["conv"]
    stored = np.asarray(stem["kernel"]["array"]["qvalue"])
    edge = np.isclose(np.abs(w / s_c), 127.5)
    np.testing.assert_array_equal(stored[~edge], np.round(w / s_c)[~edge].astype(np.int8))
    assert np.all(np.abs(stored[edge].astype(int)) >= 127)
    np.testing.assert_allclose(np.asarray(stem["kernel"]["array"]["scale"]), s_c, rtol=1e-6)
    lhs_scale = jax.tree.leaves(stem["conv_general_dilated0_lhs_scale"])[0]
    np.testing.assert_allclose(np.asarray(lhs_scale).ravel(),
                               [ranges["backbone/stem/conv"] / 127.5], rtol=1e-6)
    # outputs near float: on this random-weight network (raw logits ~15; chaotic, so one
    # rounding difference spreads) int8 weights and activations through 63 layers move the
    # raw outputs by 18-36% of their norm (weights alone ~5%); the accuracy of trained
    # networks is measured with detjax val on a quantised run (see the report)
    err = _rel_error(q, f)
    assert 1e-3 < err < 0.5, err
    assert not quantized_kernels(float_model)     # the float model is untouched


@pytest.mark.slow
def test_weight_only_is_closer_than_full_int8(float_model):
    x = _images()
    f = _forward(float_model, x)
    weight_only = quantize_ptq(float_model, [x], act_qtype=None)
    assert set(quantized_kernels(weight_only).values()) == {np.dtype(np.int8)}
    err = _rel_error(_forward(weight_only, x), f)
    assert 1e-4 < err < 0.1, err


@pytest.mark.slow
def test_calibrated_ranges_are_the_mean_absmax_of_each_conv_input(float_model):
    batches = [_images(), _images()]
    ranges, first = calibrate(float_model, batches, num_batches=2)
    assert first is not None and len(ranges) == 63
    # oracle: the stem convolution sees the images themselves
    want = np.mean([np.abs(np.asarray(b)).max(axis=(1, 2, 3)).mean() for b in batches])
    assert ranges["backbone/stem/conv"] == pytest.approx(want, rel=1e-6)


def test_bad_settings_are_named():
    model = create_model("yolov8n", num_classes=1, rngs=nnx.Rngs(0))
    x = _images(1)
    with pytest.raises(ValueError, match="weight_qtype must be one of"):
        quantize_from_stats(model, {}, x, weight_qtype="int3")
    with pytest.raises(ValueError, match="act_qtype must equal weight_qtype"):
        quantize_from_stats(model, {}, x, weight_qtype="int8", act_qtype="int4")
    with pytest.raises(ValueError, match="has no range for"):
        quantize_from_stats(model, {}, x)
    with pytest.raises(ValueError, match="num_batches must be a positive int"):
        calibrate(model, [x], num_batches=0)
    with pytest.raises(ValueError, match="gave no batch"):
        quantize_ptq(model, [])
    with pytest.raises(ValueError, match=r"float \[B, H, W, 3\]"):
        calibrate(model, [np.zeros((1, 64, 64, 3), np.uint8)])


@pytest.mark.slow
def test_quantize_command_writes_a_run_that_restores_int8(run_copy, tmp_path):  # noqa: F811
    from detjax import run as run_lib
    from detjax.compress.cli import main, quantize_run

    run_dir, _ = run_copy  # a one-epoch toy-detector run (3 convolutions) on a tiny VOC set
    out = quantize_run(str(run_dir), tmp_path / "int8", calib_batches=2)
    assert run_lib.load_config(str(out / "config.yaml")).model.quantize.act_qtype == "int8"
    ranges = json.loads((out / "act_ranges.json").read_text())
    assert set(ranges) == {"c1", "c2", "head"} and all(v > 0 for v in ranges.values())
    quant, flt = run_lib.restore_run(out), run_lib.restore_run(run_dir)
    assert set(quantized_kernels(quant.model).values()) == {np.dtype(np.int8)}
    assert len(quantized_kernels(quant.model)) == 3 and not quantized_kernels(flt.model)
    # noise images reach past the ranges calibrated on the flat toy images (clipped): ~12%
    x = _images(2, 64)
    assert 1e-5 < _rel_error(_forward(quant.model, x), _forward(flt.model, x)) < 0.3
    # a quantised run is not quantised twice, and bad counts are named
    assert main([str(out), "--out", str(tmp_path / "again")]) == 2
    with pytest.raises(ValueError, match="calib-batches must be a positive int"):
        quantize_run(str(run_dir), tmp_path / "x", calib_batches=0)
