"""Orbax checkpoints: exact round trip, a save killed half way keeps the last good one."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx
from train_toys import ToyDetector

from detjax.train import optim
from detjax.train.checkpoint import Checkpointer, arrays_to_state, state_to_arrays
from detjax.train.state import StepConfig, create_train_state


def _state(seed=0, nbs=16):
    """A fresh toy state, built on the CPU so that it is bit-identical to the one the
    killed-save subprocess (JAX_PLATFORMS=cpu) writes, whatever the default backend is."""
    oc = optim.OptimConfig(iters_per_epoch=5, epochs=2, batch=4, nbs=nbs)
    with jax.default_device(jax.devices("cpu")[0]):
        return create_train_state(ToyDetector(rngs=nnx.Rngs(seed)),
                                  StepConfig(tx=optim.recipe(oc)))


def _assert_same(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact(tmp_path):
    state = _state(1)
    state = state.replace(iteration=np.int32(17), step=np.int32(4))
    ckpt = Checkpointer(tmp_path / "ck", max_to_keep=2)
    meta = {"epoch": 3, "loader": {"epoch": 3, "position": 0, "seed": 0}, "best_map": 0.25}
    ckpt.save(3, state, meta)
    restored, rmeta = ckpt.restore(_state(2))  # template with other values, same structure
    _assert_same(restored, state)
    assert rmeta == meta
    assert restored.graphdef == state.graphdef and restored.config == state.config
    ckpt.close()


def test_keeps_last_n_and_rejects_other_structures(tmp_path):
    ckpt = Checkpointer(tmp_path / "ck", max_to_keep=2)
    for step in (1, 2, 3):
        ckpt.save(step, _state(step), {"epoch": step})
    assert ckpt.all_steps() == [2, 3] and ckpt.latest_step() == 3
    with pytest.raises(ValueError, match="different model or config"):
        arrays_to_state(_state(nbs=4), state_to_arrays(_state()))  # no optax.MultiSteps
    ckpt.close()


KILLED_SAVE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    from flax import nnx
    from train_toys import ToyDetector
    from orbax.checkpoint._src.path import atomicity
    from detjax.train import optim
    from detjax.train.checkpoint import Checkpointer
    from detjax.train.state import StepConfig, create_train_state

    oc = optim.OptimConfig(iters_per_epoch=5, epochs=2, batch=4, nbs=16)
    make = lambda seed: create_train_state(ToyDetector(rngs=nnx.Rngs(seed)),
                                           StepConfig(tx=optim.recipe(oc)))
    ckpt = Checkpointer({directory!r})
    ckpt.save(1, make(1), {{"epoch": 1}})

    async def killed(self, *args, **kwargs):  # every file written, the commit never happens
        os._exit(9)

    atomicity.AtomicRenameTemporaryPath.finalize = killed
    ckpt.save(2, make(2), {{"epoch": 2}})
    print("not reached")
""")


def test_save_killed_half_way_keeps_last_good(tmp_path):
    directory = str(tmp_path / "ck")
    script = KILLED_SAVE.format(tests=str(Path(__file__).parent), directory=directory)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 9, proc.stderr[-2000:]
    assert "not reached" not in proc.stdout
    leftovers = [p.name for p in Path(directory).iterdir()]
    assert any(n != "1" for n in leftovers), leftovers  # the half-written save is on disk
    ckpt = Checkpointer(directory)
    assert ckpt.latest_step() == 1
    state, meta = ckpt.restore(_state(5))
    _assert_same(state, _state(1))
    assert meta == {"epoch": 1}
    ckpt.save(2, _state(2), {"epoch": 2})  # the next save succeeds over the debris
    assert ckpt.latest_step() == 2
    _assert_same(ckpt.restore(_state(5))[0], _state(2))
    ckpt.close()


def _read_csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_killed_run_with_a_user_transformation_resumes_exactly(tmp_path, monkeypatch):
    """``train_and_evaluate(..., tx=optax chain)``: stop after one epoch, resume, and the
    iterations, losses and final mAP equal an uninterrupted run (the Optax state round-trips)."""
    import optax

    from detjax import run as run_lib
    from detjax.config import load_config
    from detjax.train import loop

    toy = lambda cfg, n, **kw: ToyDetector(n, rngs=nnx.Rngs(cfg.seed))
    monkeypatch.setattr(run_lib, "build_model", toy)
    cfg = load_config(None, [
        "data.num_train=16", "data.num_val=8", "data.imgsz=64", "train.batch=8", "eval.batch=8",
        "train.epochs=2", "train.time_limit=0", "eval.every=2", "log.progress=false",
        "log.every=1", "data.max_boxes=16", "compile_cache=false", "log.tensorboard=false",
        "log.plots=false"])
    tx = optax.chain(optax.clip_by_global_norm(5.0), optax.inject_hyperparams(optax.adamw)(
        learning_rate=optax.cosine_decay_schedule(2e-3, 4), weight_decay=1e-4))
    full = loop.train_and_evaluate(cfg, tmp_path / "a", tx=tx)
    assert loop.train_and_evaluate(cfg, tmp_path / "b", tx=tx, stop_after_epochs=1) == {
        "stopped_at_epoch": 1}
    resumed = loop.train_and_evaluate(cfg, tmp_path / "b", tx=tx)
    a, b = _read_csv(tmp_path / "a" / "steps.csv"), _read_csv(tmp_path / "b" / "steps.csv")
    assert len(a) == len(b) == 4
    for key in ("iteration", "loss", "lr", "grad_norm", "optimizer_step"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    lrs = [float(r["lr"]) for r in a]  # the caller's schedule, read from the Optax state
    assert lrs == pytest.approx([2e-3 * (1 + np.cos(np.pi * k / 4)) / 2 for k in range(4)],
                                rel=1e-5)
    assert resumed["map"] == full["map"] and resumed["iterations"] == full["iterations"] == 4
