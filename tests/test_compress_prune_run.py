"""``detjax prune``: a trained run in, a smaller (channel) or sparse (magnitude) run out that the
run layer restores; bad arguments are named."""

import numpy as np
import pytest

from detjax.compress.prune_run import main, prune_run

TINY = ["data.num_train=16", "data.num_val=8", "data.imgsz=64", "data.synthetic_size=64",
        "train.batch=8", "train.nbs=8", "eval.batch=8", "train.epochs=1", "train.time_limit=0",
        "log.progress=false", "log.plots=false", "log.tensorboard=false",
        "compile_cache=false", "train.warmup_min_iters=0"]


@pytest.mark.parametrize("argv, match", [
    (["runs/x", "--ratio", "1.5"], r"--ratio must be in \(0, 1\)"),
    (["runs/x", "--method", "taylor"], "--method must be one of"),
    (["runs/x", "--finetune-epochs", "-1"], "--finetune-epochs must be >= 0"),
    (["runs/x", "--round-to", "0"], "--round-to must be >= 1"),
    (["runs/x", "extra"], "unknown arguments"),
])
def test_bad_arguments_are_named(argv, match, capsys):
    assert main(argv) == 2
    assert __import__("re").search(match, capsys.readouterr().err)


def test_a_missing_run_is_named(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--ratio", "0.3"]) == 2
    assert "config.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_channel_and_magnitude_pruned_runs_restore_and_evaluate(tmp_path):
    import jax
    from flax import nnx

    from detjax.compress.sparsity import sparsity
    from detjax.config import load_config
    from detjax.run import restore_run
    from detjax.train import train_and_evaluate

    train_and_evaluate(load_config(None, TINY), tmp_path / "run")
    source = restore_run(tmp_path / "run")
    n_source = sum(x.size for x in jax.tree.leaves(nnx.state(source.model, nnx.Param)))

    channel = prune_run(tmp_path / "run", tmp_path / "ch", method="channel", ratio=0.5)
    assert channel["params"] < 0.6 * n_source and np.isfinite(channel["map"])
    restored = restore_run(tmp_path / "ch")
    widths = restored.config.model.channels  # the widths travel in config.yaml
    assert widths and all(w % 8 == 0 for w in widths.values())  # --round-to 8 by default
    assert restored.class_names == source.class_names

    magnitude = prune_run(tmp_path / "run", tmp_path / "mag", method="magnitude", ratio=0.5,
                          finetune_epochs=1, overrides=["log.progress=false"])
    assert magnitude["params"] == n_source
    assert magnitude["sparsity"] >= 0.5 * 0.99  # kernels at 50%, biases and norms kept
    params = nnx.state(restore_run(tmp_path / "mag").model, nnx.Param)
    assert sparsity(params) == pytest.approx(magnitude["sparsity"])
