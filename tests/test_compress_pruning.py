"""Pruning: the gradual sparsity schedule, exact magnitude sparsity kept through Optax updates,
the network-slimming L1 term, and channel pruning that shrinks the network without changing what
it computes once the removed channels are zero."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from detjax.compress.sparsity import (
    apply_masks,
    bn_scale_l1,
    magnitude_masks,
    polynomial_sparsity,
    prune_by_magnitude,
    sparsity,
)
from detjax.models import channels as C
from detjax.models import create_model

RNG = np.random.default_rng(5)


def _params():
    return {"conv": {"kernel": jnp.asarray(RNG.normal(size=(3, 3, 4, 8)), jnp.float32),
                     "bias": jnp.asarray(RNG.normal(size=(8,)), jnp.float32)},
            "dense": {"kernel": jnp.asarray(RNG.normal(size=(16, 5)), jnp.float32)}}


def test_polynomial_schedule_is_zhu_gupta():
    f = polynomial_sparsity(0.8, begin_step=10, end_step=110, initial_sparsity=0.1)
    for t in [0, 10, 35, 60, 110, 500]:
        frac = min(max((t - 10) / 100, 0), 1)
        assert float(f(t)) == pytest.approx(0.8 + (0.1 - 0.8) * (1 - frac) ** 3, abs=1e-6)
    with pytest.raises(ValueError, match="final_sparsity"):
        polynomial_sparsity(1.0, end_step=10)
    with pytest.raises(ValueError, match="end_step"):
        polynomial_sparsity(0.5, begin_step=5, end_step=5)


@pytest.mark.parametrize("s", [0.0, 0.3, 0.5, 0.8])
def test_magnitude_masks_prune_exactly_the_smallest(s):
    params = _params()
    masks = magnitude_masks(params, s, scope="global")
    assert bool(masks["conv"]["bias"].all())  # biases are never pruned
    kernels = np.concatenate([np.abs(params["conv"]["kernel"]).ravel(),
                              np.abs(params["dense"]["kernel"]).ravel()])
    kept = np.concatenate([np.asarray(masks["conv"]["kernel"]).ravel(),
                           np.asarray(masks["dense"]["kernel"]).ravel()])
    k = int(np.floor(s * kernels.size))
    assert (~kept).sum() == k
    if k:
        assert kernels[~kept].max() < kernels[kept].min()
    per_layer = magnitude_masks(params, s, scope="layer")
    for name in ("conv", "dense"):
        m = np.asarray(per_layer[name]["kernel"])
        assert (~m).sum() == int(np.floor(s * m.size))


def test_magnitude_pruning_in_an_optax_chain_keeps_weights_at_zero():
    params = _params()
    target = jax.tree.map(lambda x: jnp.asarray(RNG.normal(size=x.shape), jnp.float32), params)
    schedule = polynomial_sparsity(0.5, begin_step=0, end_step=20)
    tx = optax.chain(optax.sgd(0.1, momentum=0.9), prune_by_magnitude(schedule, update_every=2))
    state = tx.init(params)

    @jax.jit
    def step(params, state):
        grads = jax.grad(lambda p: sum(jnp.sum((a - b) ** 2) for a, b in
                                       zip(jax.tree.leaves(p), jax.tree.leaves(target))))(params)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    previous = None
    for _ in range(30):
        params, state = step(params, state)
        masks = state[1].masks
        for p, m in zip(jax.tree.leaves(params), jax.tree.leaves(masks)):
            assert np.all(np.asarray(p)[~np.asarray(m)] == 0)  # pruned weights are exactly 0
        if previous is not None:  # a pruned weight never comes back
            for old, new in zip(jax.tree.leaves(previous), jax.tree.leaves(masks)):
                assert not np.any(np.asarray(new) & ~np.asarray(old))
        previous = masks
    n = params["conv"]["kernel"].size + params["dense"]["kernel"].size
    assert sparsity(params) == pytest.approx(np.floor(0.5 * n) / n)
    ema = jax.tree.map(lambda x: x + 1.0, params)
    assert sparsity(apply_masks(ema, state[1].masks)) == pytest.approx(np.floor(0.5 * n) / n)


def test_bn_scale_l1_adds_the_subgradient_to_scales_only():
    params = {"bn": {"scale": jnp.array([0.5, -2.0, 0.0]), "bias": jnp.array([1.0, 1.0, 1.0])},
              "conv": {"kernel": jnp.ones((1, 1, 3, 3))}}
    grads = jax.tree.map(jnp.zeros_like, params)
    out, _ = bn_scale_l1(1e-2).update(grads, None, params)
    np.testing.assert_allclose(out["bn"]["scale"], [1e-2, -1e-2, 0.0])
    assert not np.any(np.asarray(out["bn"]["bias"]))
    assert not np.any(np.asarray(out["conv"]["kernel"]))


def _model(head="dfl"):
    model = create_model("yolov8n", num_classes=3, head=head, rngs=nnx.Rngs(0))
    for _, node in nnx.iter_graph(model):  # random BN statistics, as a trained model has
        if isinstance(node, nnx.BatchNorm):
            n = node.scale[...].shape[0]
            node.scale.set_value(jnp.asarray(RNG.uniform(0.5, 1.5, n), jnp.float32))
            node.bias.set_value(jnp.asarray(RNG.normal(0, 0.1, n), jnp.float32))
            node.mean.set_value(jnp.asarray(RNG.normal(0, 0.1, n), jnp.float32))
            node.var.set_value(jnp.asarray(RNG.uniform(0.5, 1.5, n), jnp.float32))
    model.eval()
    return model


def _n_params(model):
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize("head", ["dfl", pytest.param("retina", marks=pytest.mark.slow)])
def test_removing_zeroed_channels_leaves_outputs_unchanged(head):
    model = _model(head)
    images = jnp.asarray(RNG.uniform(size=(2, 64, 64, 3)), jnp.float32)
    groups = C.channel_groups(model)
    assert len(groups) >= 20
    removed = {}
    for g in groups:  # zero the lowest-L1 third of every group first
        order = np.argsort(C.channel_scores(g, "l1"), kind="stable")
        removed[g.name] = order[: g.width - C.kept_count(g.width, 1 / 3)]
        C.zero_channels(g, removed[g.name])
    before = model(images).preds
    n_before = _n_params(model)
    widths = C.prune_channels(model, 1 / 3, method="l1")
    after = model(images).preds
    assert _n_params(model) < 0.85 * n_before
    for k in before:
        np.testing.assert_allclose(after[k], before[k], atol=2e-5, rtol=1e-5)
    assert widths == C.get_widths(model)
    # the widths rebuild a template with the pruned shapes (what a checkpoint restores into)
    template = C.set_widths(_model(head), widths)
    shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
    assert shapes(template) == shapes(model)


@pytest.mark.slow  # builds, prunes and differentiates a full detector
def test_bn_ranking_removes_the_smallest_scales_and_the_pruned_model_trains():
    model = _model()
    group = C.channel_groups(model)[0]
    scores = C.channel_scores(group, "bn")
    np.testing.assert_allclose(scores, np.abs(np.asarray(group.producer.bn.scale[...])))
    C.prune_channels(model, 0.5, method="bn", round_to=4)
    assert all(w % 4 == 0 for w in C.get_widths(model).values())
    model.train()
    batch = {"boxes": jnp.array([[[4.0, 4.0, 40.0, 40.0]]]), "labels": jnp.array([[1]]),
             "gt_mask": jnp.array([[True]])}
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss(p):
        m = nnx.merge(graphdef, p, rest, copy=True)
        return m.loss(m(jnp.ones((1, 64, 64, 3)) * 0.5), batch)[0]

    grads = jax.grad(loss)(params)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_bad_input_is_named():
    model = _model()
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\)"):
        C.prune_channels(model, 1.0)
    with pytest.raises(ValueError, match="method must be one of"):
        C.prune_channels(model, 0.3, method="taylor")
    with pytest.raises(ValueError, match="unknown channel groups"):
        C.set_widths(model, {"backbone.nope": 3})
    with pytest.raises(TypeError, match="needs a detjax Detector"):
        C.channel_groups(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="scope must be"):
        magnitude_masks(_params(), 0.5, scope="block")
