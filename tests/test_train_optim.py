"""Optimiser recipe: the Optax transformation vs a written-out ultralytics loop and vs torch's
optimisers driven by it, Optax optimisers by name, ``auto``, parameter groups, EMA maths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from detjax.train import ema as ema_lib
from detjax.train import optim


def ultralytics_schedule_oracle(*, nb, epochs, batch, nbs, lr0, lrf, momentum, warmup_epochs,
                                warmup_bias_lr, warmup_momentum, cosine, min_iters):
    """The classic ultralytics trainer loop (``_setup_train`` + ``_do_train``), written out.

    Returns one row per iteration: (lr_bias, lr_weight, momentum, optimizer_step).
    """
    if cosine:
        lf = lambda x: ((1 - math.cos(x * math.pi / epochs)) / 2) * (lrf - 1) + 1
    else:
        lf = lambda x: (1 - x / epochs) * (1.0 - lrf) + lrf
    nw = max(round(warmup_epochs * nb), min_iters) if warmup_epochs > 0 else -1
    accumulate = max(round(nbs / batch), 1)
    groups = {"bias": {"initial_lr": lr0}, "weight": {"initial_lr": lr0}}
    mom = momentum
    last_opt_step = -1
    rows = []
    for epoch in range(epochs):
        for g in groups.values():  # LambdaLR: lr = initial_lr * lf(epoch)
            g["lr"] = g["initial_lr"] * lf(epoch)
        for i in range(nb):
            ni = i + nb * epoch
            if ni <= nw:
                xi = [0, nw]
                accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch]).round()))
                for name, g in groups.items():
                    start = warmup_bias_lr if name == "bias" else 0.0
                    g["lr"] = np.interp(ni, xi, [start, g["initial_lr"] * lf(epoch)])
                mom = np.interp(ni, xi, [warmup_momentum, momentum])
            step = ni - last_opt_step >= accumulate
            if step:
                last_opt_step = ni
            rows.append((groups["bias"]["lr"], groups["weight"]["lr"], mom, step))
    return np.asarray(rows, np.float64)


def _run_recipe(cfg: optim.OptimConfig, n: int, params=None, grads=None, epochs=None):
    """Drives ``optim.recipe(cfg)`` for ``n`` micro-batches as the train step does; rows of
    (lr_bias, lr_weight, momentum, optimizer_step) after each, and the parameters."""
    tx = optax.with_extra_args_support(optim.recipe(cfg))
    params = _params() if params is None else params
    extra = {} if epochs is None else {"epochs": jnp.int32(epochs)}

    @jax.jit
    def update(g, state, params):
        updates, new = tx.update(g, state, params, **extra)
        h = optim.hyperparams(new)
        row = (h["lr_bias"], h["lr"], h["momentum"], optim.optimizer_step_taken(state, new))
        return optax.apply_updates(params, updates), new, row

    state, rows, trajectory = tx.init(params), [], []
    for ni in range(n):
        g = jax.tree.map(jnp.zeros_like, params) if grads is None else grads(ni)
        params, state, row = update(g, state, params)
        rows.append([float(x) for x in row])
        trajectory.append(params)
    return np.asarray(rows, np.float64), trajectory


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("warmup_epochs, min_iters, batch, nbs", [
    (2.0, 10, 4, 16), (1.0, 12, 8, 64), (0.0, 0, 4, 8), (3.0, 100, 16, 64), (1.0, 0, 8, 8)])
def test_recipe_matches_ultralytics_loop(schedule, warmup_epochs, min_iters, batch, nbs):
    """The Optax transformation steps where the ultralytics loop steps, with the lr / bias lr /
    momentum the loop has set at that iteration (the logged values: those of the last step)."""
    nb, epochs = 7, 5
    kw = dict(lr0=0.01, lrf=0.01, momentum=0.937, warmup_epochs=warmup_epochs,
              warmup_bias_lr=0.1, warmup_momentum=0.8)
    cfg = optim.OptimConfig(iters_per_epoch=nb, epochs=epochs, batch=batch, nbs=nbs,
                            schedule=schedule, warmup_min_iters=min_iters, **kw)
    oracle = ultralytics_schedule_oracle(nb=nb, epochs=epochs, batch=batch, nbs=nbs,
                                         cosine=schedule == "cosine", min_iters=min_iters, **kw)
    got, _ = _run_recipe(cfg, nb * epochs)
    np.testing.assert_array_equal(got[:, 3], oracle[:, 3])
    stepped = oracle[:, 3] == 1
    np.testing.assert_allclose(got[stepped, :3], oracle[stepped, :3], rtol=1e-5, atol=1e-7)
    # the schedule as a function of ni (the ultralytics form) agrees at every iteration
    at = jax.jit(lambda ni: optim.schedule(ni, cfg))
    rows = np.asarray([[float(x) for x in at(ni)[:4]] for ni in range(nb * epochs)])
    np.testing.assert_allclose(rows[:, [0, 2, 3]], oracle[:, :3], rtol=1e-5, atol=1e-7)


def test_epochs_extra_argument_shortens_the_schedule():
    """``update(..., epochs=n)`` (the time limit) moves the decay without a new transformation."""
    cfg = optim.OptimConfig(iters_per_epoch=4, epochs=10, batch=8, nbs=8, warmup_epochs=0,
                            schedule="linear")
    for epochs, want in ((None, 10), (0, 10), (6, 6)):
        got, _ = _run_recipe(cfg, 4 * 6, epochs=epochs)
        lf = [(1 - e / want) * 0.99 + 0.01 for e in range(6)]
        np.testing.assert_allclose(got[::4, 1], 0.01 * np.asarray(lf), rtol=1e-6)


def test_accumulate_of_step_follows_the_warmup_ramp():
    cfg = optim.OptimConfig(iters_per_epoch=7, epochs=5, batch=4, nbs=16, warmup_epochs=2.0,
                            warmup_min_iters=10)
    ks = [int(optim.accumulate_of_step(g, cfg)) for g in range(12)]
    nis = [int(optim.iteration_of_step(g, cfg)) for g in range(12)]
    assert ks == [1, 1, 1, 2, 2, 3, 4, 4, 4, 4, 4, 4]  # nw = 14: ramp 1 -> 4
    assert nis == list(np.cumsum(ks) - 1)
    flat = optim.OptimConfig(iters_per_epoch=7, epochs=5, batch=4, nbs=16, warmup_epochs=0)
    assert [int(optim.iteration_of_step(g, flat)) for g in range(3)] == [3, 7, 11]


def test_schedule_chosen_values():
    cfg = optim.OptimConfig(iters_per_epoch=50, epochs=10, batch=16, warmup_epochs=3,
                            schedule="linear")
    assert cfg.warmup_iters == 150 and cfg.accumulate == 4
    assert cfg.scaled_weight_decay == pytest.approx(5e-4)
    h0 = optim.schedule_numpy(0, cfg)
    assert h0["lr_bias"] == pytest.approx(0.1) and h0["lr_weight"] == 0.0
    assert h0["momentum"] == pytest.approx(0.8) and h0["accumulate"] == 1
    h = optim.schedule_numpy(75, cfg)  # epoch 1, half-way through warmup
    target = 0.01 * ((1 - 1 / 10) * 0.99 + 0.01)
    assert h["lr_weight"] == pytest.approx(target / 2, rel=1e-6)
    assert h["lr_bias"] == pytest.approx(0.1 + (target - 0.1) / 2, rel=1e-6)
    assert h["momentum"] == pytest.approx(0.8685, rel=1e-6)
    late = optim.schedule_numpy(9 * 50 + 3, cfg)
    assert late["lr_weight"] == pytest.approx(0.01 * (0.1 * 0.99 + 0.01), rel=1e-6)
    assert late["accumulate"] == 4
    # traced schedule length (time limit): epoch 5 of a shortened 6-epoch run
    short = optim.schedule_numpy(5 * 50, cfg, epochs=6)
    assert short["lr_weight"] == pytest.approx(0.01 * ((1 - 5 / 6) * 0.99 + 0.01), rel=1e-6)


def test_step_schedule():
    cfg = optim.OptimConfig(iters_per_epoch=10, epochs=10, batch=64, warmup_epochs=0,
                            schedule="step", step_milestones=(0.5, 0.8), step_gamma=0.1)
    lrs = [optim.schedule_numpy(e * 10, cfg)["lr_weight"] for e in range(10)]
    np.testing.assert_allclose(lrs, [0.01] * 5 + [0.001] * 3 + [0.0001] * 2, rtol=1e-6)


def test_config_validation():
    with pytest.raises(ValueError, match="did you mean 'lion'.*valid: auto, sgd, adamw, "):
        optim.OptimConfig(iters_per_epoch=1, epochs=1, batch=1, optimizer="lionn")
    with pytest.raises(ValueError, match="schedule"):
        optim.OptimConfig(iters_per_epoch=1, epochs=1, batch=1, schedule="poly")
    with pytest.raises(ValueError, match="learning_rate"):
        optim.OptimConfig(iters_per_epoch=1, epochs=1, batch=1, optimizer="lion",
                          optimizer_kwargs=(("learning_rate", 0.1),))
    assert {"lion", "adafactor", "lamb", "sgd", "adamw"} <= set(optim.optax_optimizers())
    assert "lbfgs" not in optim.optax_optimizers()


def _params(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {"conv": {"kernel": f(3, 3, 2, 4), "bias": f(4)},
            "bn": {"scale": f(4), "bias": f(4)}, "dense": {"kernel": f(4, 3)}}


def test_param_groups():
    groups = optim.param_groups(_params())
    assert groups == {"conv": {"kernel": "weight", "bias": "bias"},
                      "bn": {"scale": "bn", "bias": "bias"}, "dense": {"kernel": "weight"}}


def _torch_groups(torch, params):
    tp = {k: {n: torch.nn.Parameter(torch.tensor(np.asarray(v))) for n, v in d.items()}
          for k, d in params.items()}
    flat = [(f"{k}.{n}", p) for k, d in tp.items() for n, p in d.items()]
    bias = [p for name, p in flat if "bias" in name]
    bn = [p for name, p in flat if name.startswith("bn") and "bias" not in name]
    weight = [p for name, p in flat if "kernel" in name]
    return tp, bias, bn, weight


@pytest.mark.peers
@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_recipe_matches_torch_under_the_ultralytics_loop(name):
    """Parameters after every micro-batch: the Optax recipe vs torch's optimiser driven by the
    written-out ultralytics loop (groups, warmup of lr / bias lr / momentum, linear decay,
    summed accumulation with the ramp, clip_grad_norm_, Nesterov SGD or AdamW)."""
    torch = pytest.importorskip("torch")
    nb, epochs, batch, nbs = 5, 3, 4, 16
    kw = dict(lr0=0.05, lrf=0.1, momentum=0.9, warmup_epochs=1.0, warmup_bias_lr=0.1,
              warmup_momentum=0.8)
    cfg = optim.OptimConfig(iters_per_epoch=nb, epochs=epochs, batch=batch, nbs=nbs,
                            optimizer=name, grad_clip=1.0, weight_decay=0.05,
                            warmup_min_iters=6, schedule="linear", **kw)
    assert cfg.accumulate == 4 and cfg.warmup_iters == 6
    oracle = ultralytics_schedule_oracle(nb=nb, epochs=epochs, batch=batch, nbs=nbs,
                                         cosine=False, min_iters=6, **kw)
    rng = np.random.default_rng(1)
    params = _params()
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
             for _ in range(nb * epochs)]
    _, trajectory = _run_recipe(cfg, nb * epochs, params, grads=lambda ni: grads[ni])

    tp, bias, bn, weight = _torch_groups(torch, params)
    wd = cfg.scaled_weight_decay
    if name == "sgd":
        opt = torch.optim.SGD(bias, lr=0.1, momentum=0.9, nesterov=True)
    else:
        opt = torch.optim.AdamW(bias, lr=0.1, betas=(cfg.momentum, 0.999), weight_decay=0.0)
    opt.add_param_group({"params": weight, "weight_decay": wd})
    opt.add_param_group({"params": bn, "weight_decay": 0.0})
    every = [p for d in tp.values() for p in d.values()]
    for ni, (lr_b, lr_w, mom, step) in enumerate(oracle):
        for gk, d in tp.items():
            for n, p in d.items():
                g = torch.tensor(np.asarray(grads[ni][gk][n]))
                p.grad = g if p.grad is None else p.grad + g  # backward() sums
        if step:
            torch.nn.utils.clip_grad_norm_(every, max_norm=1.0)
            for group, lr in zip(opt.param_groups, (lr_b, lr_w, lr_w)):
                group["lr"] = lr
                if "momentum" in group:  # ultralytics warms up only groups with a momentum
                    group["momentum"] = mom
            opt.step()
            opt.zero_grad()
        for gk, d in tp.items():
            for n, p in d.items():
                np.testing.assert_allclose(np.asarray(trajectory[ni][gk][n]),
                                           p.detach().numpy(), rtol=2e-5, atol=2e-6,
                                           err_msg=f"{gk}.{n} at ni={ni}")


@pytest.mark.peers
def test_optax_clip_matches_torch_clip_grad_norm():
    """optax divides by the norm, torch by norm + 1e-6: equal to float32 rounding at norms the
    clip acts on; both leave smaller gradients alone."""
    torch = pytest.importorskip("torch")
    clip = optax.clip_by_global_norm(1.0)
    for scale in (0.3, 1.0001, 3.0, 1e3):
        g = {"a": jnp.linspace(-1.0, 2.0, 7) * scale, "b": jnp.full((3,), 0.5 * scale)}
        got, _ = clip.update(g, clip.init(g))
        tg = [torch.nn.Parameter(torch.zeros(x.shape)) for x in g.values()]
        for p, x in zip(tg, g.values()):
            p.grad = torch.tensor(np.asarray(x))
        torch.nn.utils.clip_grad_norm_(tg, max_norm=1.0)
        for p, x in zip(tg, got.values()):
            np.testing.assert_allclose(np.asarray(x), p.grad.numpy(), rtol=2e-6, atol=0)


def test_optax_optimizer_by_name_per_group():
    """``optimizer=lion``: ``optax.lion`` per group, the scaled decay on kernels only, bias lr
    from its own warmup (here the first step: lr 0, bias lr warmup_bias_lr)."""
    cfg = optim.OptimConfig(iters_per_epoch=10, epochs=3, batch=8, nbs=8, optimizer="lion",
                            lr0=1e-3, weight_decay=0.1, warmup_epochs=1, warmup_min_iters=0,
                            warmup_bias_lr=0.02, grad_clip=0.0, optimizer_kwargs=(("b1", 0.95),))
    params = _params()
    rng = np.random.default_rng(2)
    grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
             for _ in range(3)]
    rows, trajectory = _run_recipe(cfg, 3, params, grads=lambda ni: grads[ni])
    np.testing.assert_allclose(rows[:, 2], 0.95)  # the logged momentum is lion's b1
    for key, name in (("conv", "kernel"), ("conv", "bias"), ("bn", "scale"), ("dense", "kernel")):
        decay = cfg.scaled_weight_decay if name == "kernel" else 0.0
        p, state = params[key][name], None
        for ni in range(3):
            h = optim.schedule_numpy(ni, cfg)
            lr = h["lr_bias"] if name == "bias" else h["lr_weight"]
            tx = optax.lion(lr, b1=0.95, weight_decay=decay)
            state = tx.init(p) if state is None else state
            u, state = tx.update(grads[ni][key][name], state, p)
            p = optax.apply_updates(p, u)
            np.testing.assert_allclose(trajectory[ni][key][name], p, rtol=1e-6, atol=1e-7)


def _cfg(overrides):
    from detjax.config import load_config

    return load_config(None, overrides)


def test_auto_follows_the_ultralytics_rule():
    short = _cfg(["train.optimizer=auto", "train.epochs=10", "train.batch=16", "train.nbs=64"])
    oc = optim.optimizer_config(short, iters_per_epoch=100, num_classes=1)
    # iterations = ceil(1600 / 64) * 10 = 250 <= 10000: AdamW, lr0 fitted to the classes
    assert (oc.optimizer, oc.lr0, oc.momentum, oc.warmup_bias_lr) == ("adamw", 0.002, 0.9, 0.0)
    assert optim.optimizer_config(short, iters_per_epoch=100, num_classes=80).lr0 == 0.000119
    long = optim.optimizer_config(short, iters_per_epoch=4001, num_classes=80)  # 1001 x 10
    assert (long.optimizer, long.lr0, long.momentum) == ("sgd", 0.01, 0.9)
    assert "auto: 250 iterations <= 10000" in optim.describe(short, iters_per_epoch=100,
                                                             num_classes=1)
    assert optim.auto_iterations(iters_per_epoch=3, batch=8, nbs=64, epochs=2) == 2


@pytest.mark.peers
def test_auto_matches_ultralytics_build_optimizer():
    pytest.importorskip("torch")
    trainer = pytest.importorskip("ultralytics.engine.trainer")
    import types

    import torch

    for nc in (1, 3, 80):
        fake = types.SimpleNamespace(args=types.SimpleNamespace(lr0=0.01, optimizer="auto",
                                                                warmup_bias_lr=0.1),
                                     data={"nc": nc})
        opt = trainer.BaseTrainer.build_optimizer(fake, torch.nn.Linear(2, 2), name="auto",
                                                  iterations=500)
        name, lr0, momentum = optim.auto_optimizer(num_classes=nc, iterations=500)
        assert type(opt).__name__.lower() == name
        assert opt.param_groups[0]["lr"] == lr0 and opt.param_groups[0]["betas"][0] == momentum
        assert fake.args.warmup_bias_lr == 0.0


def test_make_optimizer_from_config():
    cfg = _cfg(["train.optimizer=adafactor", "train.optimizer_kwargs={decay_rate: 0.7}"])
    tx = optim.make_optimizer(cfg, iters_per_epoch=10, num_classes=3)
    assert isinstance(tx, optax.GradientTransformation)
    assert tx is optim.make_optimizer(cfg, iters_per_epoch=10, num_classes=3)  # cached
    params = _params()
    updates, state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)
    assert all(np.isfinite(np.asarray(u)).all() for u in jax.tree.leaves(updates))
    assert float(optim.hyperparams(state)["momentum"]) == 0.0  # adafactor: no momentum
    with pytest.raises(ValueError, match="unknown optimizer 'adamx'"):
        optim.make_optimizer(_cfg(["train.optimizer=adamx"]), iters_per_epoch=1, num_classes=1)


# ----------------------------------------------------------------------------- EMA


def test_ema_matches_model_ema_formula():
    rng = np.random.default_rng(0)
    model = [rng.normal(size=(3, 2)) for _ in range(6)]
    ema = model[0].copy()
    tree = {"w": jnp.asarray(model[0], jnp.float32), "count": jnp.int32(0)}
    step = jax.jit(lambda e, m, u: ema_lib.ema_update(e, m, u, decay=0.9999, tau=3.0))
    for updates, m in enumerate(model[1:], start=1):
        d = 0.9999 * (1 - math.exp(-updates / 3.0))  # ModelEMA.decay(updates)
        ema = d * ema + (1 - d) * m
        tree = step(tree, {"w": jnp.asarray(m, jnp.float32), "count": jnp.int32(updates)},
                    updates)
        np.testing.assert_allclose(tree["w"], ema, rtol=1e-5, atol=1e-6)
        assert int(tree["count"]) == updates  # non-float leaves follow the model


@pytest.mark.peers
def test_ema_decay_matches_ultralytics():
    pytest.importorskip("torch")
    tu = pytest.importorskip("ultralytics.utils.torch_utils")
    import torch

    ema = tu.ModelEMA(torch.nn.Linear(2, 2))
    for k in (1, 10, 500, 2000, 10000):
        assert float(ema_lib.ema_decay(k)) == pytest.approx(ema.decay(k), rel=1e-6)
