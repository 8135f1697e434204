"""The model options of a run config: ``model.weights`` (pretrained start), ``model.channels``
(a channel-pruned architecture) and ``train.freeze`` (ultralytics ``freeze: N`` in the Optax
recipe)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from detjax import run as run_lib
from detjax.config import load_config
from detjax.models import freeze_mask, save_weights
from detjax.train import optim


def _params(model):
    return nnx.state(model, nnx.Param)


def test_model_weights_are_loaded_only_when_pretrained(tmp_path):
    donor = run_lib.build_model(load_config(None, ["seed=7"]), 2)
    path = tmp_path / "w.safetensors"
    save_weights(donor, path)
    cfg = load_config(None, [f"model.weights={path}"])
    loaded = run_lib.build_model(cfg, 2, pretrained=True)
    fresh = run_lib.build_model(cfg, 2)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), _params(loaded), _params(donor))
    assert all(jax.tree.leaves(same))
    differs = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), _params(fresh),
                           _params(donor))
    assert not all(jax.tree.leaves(differs))


def test_model_channels_build_the_pruned_architecture():
    from detjax.compress import get_widths, prune_channels

    cfg = load_config(None, [])
    pruned = run_lib.build_model(cfg, 3)
    widths = prune_channels(pruned, 0.5)
    cfg2 = load_config(None, ["model.channels=" + str(widths).replace("'", "")])
    rebuilt = run_lib.build_model(cfg2, 3)
    assert get_widths(rebuilt) == widths
    shapes = lambda m: jax.tree.map(jnp.shape, _params(m))
    assert shapes(rebuilt) == shapes(pruned)


@pytest.mark.parametrize("freeze", [0, 10, 22])
def test_train_freeze_zeroes_the_frozen_layers_updates(freeze):
    cfg = load_config(None, [f"train.freeze={freeze}", "train.batch=8", "train.nbs=8",
                             "train.optimizer=sgd", "train.warmup_epochs=0"])
    params = _params(run_lib.build_model(cfg, 2))
    tx = optim.make_optimizer(cfg, iters_per_epoch=10, num_classes=2)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    mask = freeze_mask(params, freeze)
    for u, frozen in zip(jax.tree.leaves(updates), jax.tree.leaves(mask)):
        if frozen:
            assert not np.any(np.asarray(u))
        else:
            assert np.any(np.asarray(u))
    assert sum(jax.tree.leaves(mask)) > 0 or freeze == 0


def test_class_weights_from_the_config_reach_the_step_config():
    from types import SimpleNamespace

    from detjax.losses import class_weights_from_counts
    from detjax.train.loop import resolve_class_weights, step_config

    cfg = load_config(None, ["train.loss={class_weights: [1.0, 0.0]}"])
    sc = step_config(cfg, 4, 2)
    assert dict(sc.loss_hyp)["class_weights"] == (1.0, 0.0)
    hash(sc)  # static in the jitted step
    records = [SimpleNamespace(labels=np.array(l)) for l in ([0, 0, 0], [0, 1], [0])]
    ds = SimpleNamespace(records=records, num_classes=3)
    auto = resolve_class_weights(load_config(None, ["train.loss={class_weights: auto}"]), ds)
    want = np.asarray(class_weights_from_counts(np.array([5, 1, 0]), method="effective"))
    np.testing.assert_allclose(auto.train.loss.class_weights, want, rtol=1e-5)
    assert resolve_class_weights(cfg, ds) is cfg
