"""Quantisation-aware training (``train.qat``): a fake-quantised convolution is the qwix int8
PTQ convolution for the same weights and range (and a fake-quantised detector tracks the int8
one), its straight-through gradient, one train step, and a tiny QAT run that restores as an
int8 model and evaluates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_toys import TINY_RUN, toy_batch

from detjax import run as run_lib
from detjax.config import load_config
from detjax.models import Detector
from detjax.models.blocks import conv2d
from detjax.models.quantize import (
    calibrate,
    fake_quantize,
    fake_quantized,
    quantize_from_stats,
    quantized_kernels,
)
from detjax.train import optim
from detjax.train import step as step_lib
from detjax.train.state import StepConfig, create_train_state

pytest.importorskip("qwix")


def tiny_detector(num_classes=3, seed=0):
    return Detector(depth=0.33, width=0.0625, max_channels=256, num_classes=num_classes,
                    rngs=nnx.Rngs(seed))


def _images(n=4, size=64):
    return jnp.asarray(np.random.default_rng(3).uniform(0, 1, (n, size, size, 3)), jnp.float32)


def _forward(model, images):
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, images)


def test_fake_quantize_values_and_straight_through_gradient():
    x = jnp.asarray([-3.0, -1.0, -0.004, 0.0, 0.5, 0.99, 1.0])
    absmax = 1.0
    scale = absmax / 127.5
    want = np.clip(np.round(np.asarray(x) / scale), -128, 127) * scale  # NumPy oracle
    np.testing.assert_allclose(fake_quantize(x, absmax), want, rtol=0, atol=1e-7)
    grad = jax.grad(lambda v: fake_quantize(v, absmax).sum())(x)
    np.testing.assert_array_equal(grad, [0, 1, 1, 1, 1, 1, 0])  # 0 outside [-128, 127] * scale
    per_channel = fake_quantize(jnp.asarray([[0.5, 4.0], [-1.0, 2.0]]),
                                jnp.asarray([[1.0, 4.0]]))
    step = 4 / 127.5  # the second channel's scale; 4.0 rounds to 128 and clips to 127
    np.testing.assert_allclose(per_channel[:, 1], np.asarray([127, 64]) * step, atol=1e-6)


class _OneConv(nnx.Module):
    def __init__(self, kernel, rngs):
        self.conv = conv2d(3, 16, kernel, rngs=rngs)

    def __call__(self, x):
        return self.conv(x)


@pytest.mark.parametrize("kernel", [1, 3])  # the 1x1 matmul route and a real convolution
def test_a_fake_quantized_convolution_equals_the_qwix_int8_convolution(kernel):
    layer = _OneConv(kernel, nnx.Rngs(kernel))
    images = _images(2, 32) * 2.0 - 0.5  # some inputs beyond the calibrated range
    ranges, _ = calibrate(layer, [images[:1]])
    int8 = np.asarray(_forward(quantize_from_stats(layer, ranges, images), images))
    fake = np.asarray(_forward(fake_quantized(nnx.clone(layer), ranges), images))
    floating = np.asarray(_forward(layer, images))
    # int32 accumulation then scaling vs a float32 sum of dequantised products: float rounding
    np.testing.assert_allclose(fake, int8, rtol=0, atol=1e-5 * np.abs(int8).max())
    assert np.abs(floating - int8).max() > 1e-3  # quantisation shows: the check is not vacuous


@pytest.mark.slow  # ~80 s: compiles the float, fake-quantised and int8 networks
def test_fake_quantized_detector_tracks_the_ptq_int8_detector():
    """Layer by layer the two compute the same values up to float rounding (test above), but
    an activation that lands on a rounding boundary may round one step apart, and through a
    network of 4-channel layers such a step propagates. So: most images agree to float
    rounding, and the fake-quantised network is far closer to the int8 one than the float
    network is (measured on this model: relative error 0.06-0.08 against 0.23-0.27 on the
    box logits, 0.010-0.011 against 0.031-0.038 on the class logits)."""
    model = tiny_detector()
    for _, node in nnx.iter_graph(model):  # BatchNorm statistics of real activations
        if isinstance(node, nnx.BatchNorm):
            node.momentum = 0.0
    images = _images()
    model.train()
    nnx.jit(lambda m, x: m(x))(model, images)
    model.eval()
    ranges, _ = calibrate(model, [images])
    int8 = _forward(quantize_from_stats(model, ranges, images), images)
    fake = _forward(fake_quantized(nnx.clone(model), ranges), images)
    floating = _forward(model, images)
    rel = lambda a, b: np.linalg.norm(a - b) / np.linalg.norm(b)
    agree = 0
    for i in range(len(images)):
        agree += all(np.abs(np.asarray(fake.preds[k][i]) - np.asarray(int8.preds[k][i])).max()
                     < 1e-4 for k in ("boxes", "scores"))
    assert agree >= len(images) // 2
    for key in ("boxes", "scores"):
        q = np.asarray(int8.preds[key])
        assert rel(np.asarray(fake.preds[key]), q) < 0.5 * rel(np.asarray(floating.preds[key]), q)


@pytest.mark.slow  # one train step compile of the fake-quantised detector
def test_a_qat_train_step_runs_with_gradients_through_the_quantisers():
    model = tiny_detector()
    ranges = {name: 4.0 for name in calibrate(model, [_images(1)])[0]}
    fake_quantized(model, ranges)
    tx = optim.recipe(optim.OptimConfig(iters_per_epoch=10, epochs=3, batch=4, nbs=4,
                                        warmup_epochs=0, warmup_min_iters=0, optimizer="sgd",
                                        lr0=0.01))
    state = create_train_state(model, StepConfig(tx=tx))
    params0 = [np.array(x) for x in jax.tree.leaves(state.params)]
    state, metrics = step_lib.jit_train_step(state, toy_batch(0, batch=4, size=64))
    assert np.isfinite(float(metrics["loss"])) and float(metrics["grad_norm"]) > 0
    moved = [np.abs(a - np.asarray(b)).max() for a, b in zip(params0,
                                                              jax.tree.leaves(state.params))]
    assert min(moved) >= 0 and sum(m > 0 for m in moved) > len(moved) // 2


def test_fake_quantized_needs_every_range():
    with pytest.raises(ValueError, match="no range"):
        fake_quantized(tiny_detector(), {})


@pytest.mark.slow
def test_tiny_qat_run_restores_as_int8_and_evaluates(tmp_path, monkeypatch):
    from detjax.eval.validation import eval_settings, evaluate
    from detjax.train import loop

    monkeypatch.setattr(run_lib, "build_model",
                        lambda cfg, n, **kw: tiny_detector(n, cfg.seed))
    cfg = load_config(None, [*TINY_RUN, "train.qat=true"])
    final = loop.train_and_evaluate(cfg, tmp_path)
    assert np.isfinite(final["map"])
    assert (tmp_path / "act_ranges.json").is_file()
    restored = run_lib.restore_run(tmp_path)
    assert restored.config.model.quantize.act_qtype == "int8"
    kernels = quantized_kernels(restored.model)
    assert kernels and set(kernels.values()) == {np.dtype("int8")}
    _, val_ds = run_lib.build_datasets(restored.config, splits=("val",))
    loader = run_lib.build_loaders(restored.config, val_ds=val_ds).val
    result, _ = evaluate(restored.model, loader, class_names=restored.class_names,
                         **eval_settings(restored.config))
    assert np.isfinite(result["map"])
    # the training evaluation ran the fake-quantised EMA model, whose convolutions the
    # restored int8 model computes up to float rounding: close mAP
    assert result["map"] == pytest.approx(final["map"], abs=0.01)
