"""train_step / eval_forward on a small stand-in detector: overfit, accumulation equivalence,
precision, loss scaling, EMA wiring, any Optax transformation, no recompilation, jit == eager."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from train_toys import ToyDetector, toy_batch

from detjax.train import optim
from detjax.train import step as step_lib
from detjax.train.state import StepConfig, create_train_state, ema_model


def _state(*, batch=8, nbs=8, precision="f32", batchnorm=True, optimizer="adamw", lr0=0.01,
           warmup_epochs=0.0, seed=0, **kw):
    oc = optim.OptimConfig(iters_per_epoch=100, epochs=10, batch=batch, nbs=nbs,
                           optimizer=optimizer, lr0=lr0, warmup_epochs=warmup_epochs,
                           warmup_min_iters=0, **kw)
    model = ToyDetector(batchnorm=batchnorm, rngs=nnx.Rngs(seed))
    return create_train_state(model, StepConfig(tx=optim.recipe(oc), precision=precision,
                                                loss_times_batch=False))


def test_overfit_one_batch_loss_falls_steadily():
    state = _state()  # the shared config: one compile serves most tests here
    batch = toy_batch(0)
    losses = []
    for _ in range(40):
        state, m = step_lib.jit_train_step(state, batch)
        losses.append(float(m["loss"]))
    losses = np.asarray(losses)
    assert losses[-1] < 0.2 * losses[0]
    windows = losses[:40].reshape(8, 5).mean(1)  # steady: every 5-step window lower
    assert np.all(np.diff(windows) < 0), windows
    assert int(state.step) == 40 and int(state.iteration) == 40


def test_gradient_accumulation_equals_large_batch():
    big = toy_batch(1, batch=16)
    micro = [{k: v[i * 4:(i + 1) * 4] for k, v in big.items()} for i in range(4)]
    # loss_times_batch: ultralytics' sum-over-images gradient scale makes micro-batches add up
    a = _state(batch=4, nbs=16, batchnorm=False, weight_decay=0.01)
    a = a.replace(config=dataclasses.replace(a.config, loss_times_batch=True))
    b = _state(batch=16, nbs=16, batchnorm=False, weight_decay=0.01)
    b = b.replace(config=dataclasses.replace(b.config, loss_times_batch=True))
    oa = optim.OptimConfig(iters_per_epoch=100, epochs=10, batch=4, nbs=16, weight_decay=0.01)
    ob = dataclasses.replace(oa, batch=16)
    assert oa.accumulate == 4 and ob.accumulate == 1
    assert oa.scaled_weight_decay == pytest.approx(ob.scaled_weight_decay)
    assert isinstance(a.opt_state, optax.MultiStepsState)
    steps = []
    for mb in micro:
        a, m = step_lib.jit_train_step(a, mb)
        steps.append(bool(m["optimizer_step"]))
    assert steps == [False, False, False, True]  # ni - last_opt_step >= 4 first at ni = 3
    b, _ = step_lib.jit_train_step(b, big)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert int(a.step) == int(b.step) == 1


def test_bf16_step_is_finite_and_close_to_f32():
    batch = toy_batch(2)
    s32, m32 = step_lib.jit_train_step(_state(), batch)
    s16, m16 = step_lib.jit_train_step(_state(precision="bf16"), batch)
    assert np.isfinite(float(m16["loss"]))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(s16.params))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(s16.params))
    assert float(m16["loss"]) == pytest.approx(float(m32["loss"]), rel=0.05)


def test_f16_loss_scaling_skips_non_finite_steps():
    batch = toy_batch(3)
    state = _state(precision="f16")
    assert float(state.loss_scale) == 2.0 ** 16
    state = state.replace(loss_scale=jnp.float32(1e30))  # overflows float16 gradients
    before = jax.tree.map(np.asarray, (state.params, state.opt_state, state.ema_params))
    state, m = step_lib.jit_train_step(state, batch)  # donates its input state
    assert not bool(m["finite"]) and not bool(m["optimizer_step"]) and int(state.step) == 0
    after = (state.params, state.opt_state, state.ema_params)
    for x, y in zip(jax.tree.leaves(after), jax.tree.leaves(before)):
        np.testing.assert_array_equal(x, y)  # the micro-batch is dropped whole
    assert float(state.loss_scale) == pytest.approx(5e29) and int(state.iteration) == 1
    state = state.replace(loss_scale=jnp.float32(2.0 ** 8))
    state, m = step_lib.jit_train_step(state, batch)
    assert bool(m["finite"]) and np.isfinite(float(m["loss"]))
    changed = [not np.array_equal(x, y) for x, y in
               zip(jax.tree.leaves(state.params), jax.tree.leaves(before))]
    assert any(changed) and int(state.good_steps) == 1


def test_f16_loss_scale_grows_after_interval():
    state = _state(precision="f16")
    interval = state.config.loss_scale_growth_interval  # 2000, torch GradScaler
    state = state.replace(loss_scale=jnp.float32(4.0), good_steps=jnp.int32(interval - 2))
    scales = []
    for _ in range(3):
        state, _ = step_lib.jit_train_step(state, toy_batch(4))
        scales.append(float(state.loss_scale))
    assert scales == [4.0, 8.0, 8.0] and int(state.good_steps) == 1


def test_ema_tracks_weights_and_batch_stats():
    state = _state()
    batch = toy_batch(5)
    ema0 = jax.tree.map(np.asarray, (state.ema_params, state.ema_stats))
    state, _ = step_lib.jit_train_step(state, batch)
    # first update: d = 0.9999 * (1 - exp(-1/2000)) ~ 5e-4, so the EMA ~ the model
    d = 0.9999 * -np.expm1(-1 / 2000)
    for e, e0, p in zip(jax.tree.leaves(state.ema_params), jax.tree.leaves(ema0[0]),
                        jax.tree.leaves(state.params)):
        np.testing.assert_allclose(e, d * e0 + (1 - d) * np.asarray(p), rtol=1e-5, atol=1e-6)
    for e, e0, s in zip(jax.tree.leaves(state.ema_stats), jax.tree.leaves(ema0[1]),
                        jax.tree.leaves(state.batch_stats)):
        np.testing.assert_allclose(e, d * e0 + (1 - d) * np.asarray(s), rtol=1e-5, atol=1e-6)
    assert not np.allclose(jax.tree.leaves(state.batch_stats)[0], jax.tree.leaves(ema0[1])[0])


def test_eval_forward_uses_ema_in_eval_mode():
    state = _state()
    batch = toy_batch(6)
    for _ in range(3):
        state, _ = step_lib.jit_train_step(state, batch)
    preds = step_lib.jit_eval_forward(state, batch["images"])
    assert preds.shape == (8, 4 + 3, 64)
    model = ema_model(state)
    expected = model.predict(model(step_lib.images_to_float(jnp.asarray(batch["images"]))))
    np.testing.assert_allclose(preds, expected, rtol=1e-5, atol=1e-5)
    # eval mode: one image's prediction does not depend on the rest of the batch
    single = step_lib.jit_eval_forward(state, batch["images"][:1])
    np.testing.assert_allclose(single, preds[:1], rtol=1e-4, atol=1e-5)


def test_any_optax_transformation_and_no_recompilation():
    """The loop's flat step compiles once, for a user transformation and for the recipe with
    accumulation (its steps follow ``ni - last_opt_step >= accumulate(ni)``)."""
    lion = optax.inject_hyperparams(optax.lion)(learning_rate=optax.linear_schedule(1e-3, 0, 10))
    user = create_train_state(ToyDetector(rngs=nnx.Rngs(0)), StepConfig(tx=lion))
    recipe = _state(batch=4, nbs=16, warmup_epochs=0.05)  # nw = 5: accumulate 1,2,2,3,3,4,4
    for state, steps in ((user, [True] * 6), (recipe, [True, False, True, False, False, False])):
        flat = step_lib.FlatState.of(state)
        run = step_lib.make_flat_step(flat.treedef)
        leaves, got = flat.leaves, []
        for i in range(6):
            leaves, m = run(leaves, toy_batch(i, batch=4))
            got.append(bool(m["optimizer_step"]))
        assert run._cache_size() == 1
        assert got == steps
        done = step_lib.FlatState(leaves, flat.treedef).unflatten()
        assert int(done.step) == sum(steps) and int(done.iteration) == 6


def test_user_transformation_updates_like_optax():
    tx = optax.inject_hyperparams(optax.lion)(learning_rate=optax.linear_schedule(1e-3, 0, 10))
    state = create_train_state(ToyDetector(batchnorm=False, rngs=nnx.Rngs(0)),
                               StepConfig(tx=tx, loss_times_batch=False))
    params, opt = jax.tree.map(jnp.copy, state.params), tx.init(state.params)
    lrs = []
    for i in range(3):
        batch = toy_batch(i)
        loss = lambda p, s=state, b=batch: step_lib._loss_fn(p, s, b, 1.0, 8)[0]
        grads = jax.grad(loss)(params)
        updates, opt = tx.update(grads, opt, params)
        params = optax.apply_updates(params, updates)
        state, m = step_lib.jit_train_step(state, batch)
        lrs.append(float(m["lr"]))
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(params)):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
    assert lrs == pytest.approx([1e-3, 9e-4, 8e-4], rel=1e-5)
    assert int(state.step) == 3


@pytest.mark.slow  # eager NNX dispatch is slow on CPU
def test_jit_equals_eager():
    state = _state()
    batch = jax.tree.map(jnp.asarray, toy_batch(7))
    copy = jax.tree.map(jnp.copy, state)  # jit_train_step donates its input
    s_jit, m_jit = step_lib.jit_train_step(copy, batch)
    with jax.disable_jit():
        s_eager, m_eager = step_lib.train_step(state, batch)
    assert float(m_jit["loss"]) == pytest.approx(float(m_eager["loss"]), rel=1e-5)
    for x, y in zip(jax.tree.leaves(s_jit.params), jax.tree.leaves(s_eager.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
