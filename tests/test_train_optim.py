"""Optimiser recipe: schedule vs a written-out ultralytics loop, SGD / AdamW / clipping vs torch,
parameter groups, EMA maths."""

import math

import jax
import jax.numpy as jnp
import numpy as np
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


def _simulate(cfg: optim.OptimConfig, n: int):
    """The step decisions of ``train_step``: jitted schedule + the accumulate rule."""
    sched = jax.jit(lambda ni: optim.schedule(ni, cfg))
    rows, last = [], -1
    for ni in range(n):
        h = sched(ni)
        step = ni - last >= int(h.accumulate)
        last = ni if step else last
        rows.append((float(h.lr_bias), float(h.lr_weight), float(h.momentum), step))
    return np.asarray(rows, np.float64)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
@pytest.mark.parametrize("warmup_epochs, min_iters, batch, nbs", [
    (2.0, 10, 4, 16), (1.0, 12, 8, 64), (0.0, 0, 4, 8), (3.0, 100, 16, 64)])
def test_schedule_matches_ultralytics_loop(schedule, warmup_epochs, min_iters, batch, nbs):
    nb, epochs = 7, 5
    kw = dict(lr0=0.01, lrf=0.01, momentum=0.937, warmup_epochs=warmup_epochs,
              warmup_bias_lr=0.1, warmup_momentum=0.8)
    cfg = optim.OptimConfig(iters_per_epoch=nb, epochs=epochs, batch=batch, nbs=nbs,
                            schedule=schedule, warmup_min_iters=min_iters, **kw)
    oracle = ultralytics_schedule_oracle(nb=nb, epochs=epochs, batch=batch, nbs=nbs,
                                         cosine=schedule == "cosine", min_iters=min_iters, **kw)
    got = _simulate(cfg, nb * epochs)
    np.testing.assert_allclose(got[:, :3], oracle[:, :3], rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(got[:, 3], oracle[:, 3])


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
    with pytest.raises(ValueError, match="optimizer"):
        optim.OptimConfig(iters_per_epoch=1, epochs=1, batch=1, optimizer="lamb")
    with pytest.raises(ValueError, match="schedule"):
        optim.OptimConfig(iters_per_epoch=1, epochs=1, batch=1, schedule="poly")


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
def test_optimizer_matches_torch(name):
    torch = pytest.importorskip("torch")
    cfg = optim.OptimConfig(iters_per_epoch=10, epochs=3, batch=16, nbs=64, optimizer=name,
                            grad_clip=1.0, weight_decay=0.05)
    params = _params()
    tp, bias, bn, weight = _torch_groups(torch, params)
    wd = cfg.scaled_weight_decay
    if name == "sgd":
        opt = torch.optim.SGD(bias, lr=0.1, momentum=0.9, nesterov=True)
        opt.add_param_group({"params": weight, "weight_decay": wd})
        opt.add_param_group({"params": bn, "weight_decay": 0.0})
    else:
        opt = torch.optim.AdamW(bias, lr=0.1, betas=(cfg.momentum, 0.999), weight_decay=0.0)
        opt.add_param_group({"params": weight, "weight_decay": wd})
        opt.add_param_group({"params": bn, "weight_decay": 0.0})
    state = optim.init(params, cfg)
    update = jax.jit(lambda g, s, p, h: optim.apply_update(g, s, p, h, cfg))
    rng = np.random.default_rng(1)
    for k in range(5):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape) * 3, jnp.float32),
                             params)
        lr_b, lr_w, mom = 0.1 - 0.01 * k, 0.02 + 0.01 * k, 0.8 + 0.03 * k
        hyper = optim.Hyper(*(jnp.float32(x) for x in (lr_b, lr_w, lr_w, mom)), jnp.int32(1))
        params, state, norm = update(grads, state, params, hyper)
        for gk, d in tp.items():
            for n, p in d.items():
                p.grad = torch.tensor(np.asarray(grads[gk][n]))
        tnorm = torch.nn.utils.clip_grad_norm_([p for d in tp.values() for p in d.values()],
                                               max_norm=1.0)
        for group, lr in zip(opt.param_groups, (lr_b, lr_w, lr_w)):
            group["lr"] = lr
            if name == "sgd":
                group["momentum"] = mom
        opt.step()
        assert float(norm) == pytest.approx(float(tnorm), rel=1e-5)
        for gk, d in tp.items():
            for n, p in d.items():
                np.testing.assert_allclose(np.asarray(params[gk][n]), p.detach().numpy(),
                                           rtol=2e-5, atol=2e-6)


def test_clip_only_scales_down():
    g = {"a": jnp.full((4,), 0.1)}
    clipped, norm = jax.jit(lambda t: optim.clip_by_global_norm(t, 10.0))(g)
    np.testing.assert_allclose(clipped["a"], g["a"])
    assert float(norm) == pytest.approx(0.2)
    big = {"a": jnp.full((4,), 100.0)}
    clipped, _ = optim.clip_by_global_norm(big, 10.0)
    assert float(optim.global_norm(clipped)) == pytest.approx(10.0, rel=1e-5)


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
