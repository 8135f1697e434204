"""Quantisation-aware training (``train.qat``): the fake-quantised forward is the qwix int8
PTQ forward for the same weights and ranges, its straight-through gradient, one train step,
and a tiny QAT run that restores as an int8 model and evaluates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_toys import toy_batch

from detjax import run as run_lib
from detjax.config import load_config
from detjax.models import Detector
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


@pytest.mark.slow  # ~60 s: compiles the float, fake-quantised and int8 networks
def test_fake_quantized_forward_equals_the_ptq_int8_forward():
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
    for key in ("boxes", "scores"):
        q, f = np.asarray(int8.preds[key]), np.asarray(fake.preds[key])
        # measured: <= 1e-6 absolute on logits up to ~10 (float32 rounding of the float
        # convolution of dequantised values against qwix's int32 accumulation)
        np.testing.assert_allclose(f, q, rtol=0, atol=1e-4 * max(1.0, np.abs(q).max()))
        # and quantisation changes the float network's outputs: the check is not vacuous
        assert np.abs(np.asarray(floating.preds[key]) - q).max() > 1e-3


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


TINY = ["data.num_train=16", "data.num_val=8", "data.imgsz=64", "train.batch=8",
        "eval.batch=8", "train.epochs=1", "train.time_limit=0", "log.progress=false",
        "log.every=1", "train.warmup_min_iters=0", "data.max_boxes=16", "compile_cache=false",
        "log.tensorboard=false", "log.plots=false"]


@pytest.mark.slow
def test_tiny_qat_run_restores_as_int8_and_evaluates(tmp_path, monkeypatch):
    from detjax.eval.validation import eval_settings, evaluate
    from detjax.train import loop

    monkeypatch.setattr(run_lib, "build_model",
                        lambda cfg, n, **kw: tiny_detector(n, cfg.seed))
    cfg = load_config(None, [*TINY, "train.qat=true"])
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
    # the training evaluation ran the fake-quantised EMA model, which the restored int8
    # model computes up to float rounding: the same mAP
    assert result["map"] == pytest.approx(final["map"], abs=1e-3)
