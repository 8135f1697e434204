"""train_and_evaluate end to end on tiny synthetic data: resume equality, run folder contents,
restore for inference, on_eval stopping, the time budget, the CLI, and a one-step smoke test of
every shipped config."""

import csv

import jax
import numpy as np
import pytest
import yaml
from flax import nnx
from train_toys import ToyDetector, toy_batch

from detjax import run as run_lib
from detjax.config import CONFIG_DIR, load_config
from detjax.eval.validation import evaluate, predict_batch
from detjax.train import budget, loop
from detjax.train import cli as train_cli
from detjax.train import step as step_lib
from detjax.train.state import create_train_state, ema_model

TINY = ["data.num_train=24", "data.num_val=8", "data.imgsz=64", "train.batch=8", "eval.batch=8",
        "train.epochs=3", "train.time_limit=0", "eval.every=2", "log.progress=false",
        "log.every=1", "train.warmup_min_iters=0", "data.max_boxes=16", "compile_cache=false"]


@pytest.fixture
def toy_model(monkeypatch):
    """The loop with the small stand-in detector (the real one is covered by the smoke test)."""
    monkeypatch.setattr(run_lib, "build_model",
                        lambda cfg, n, **kw: ToyDetector(n, rngs=nnx.Rngs(cfg.seed)))


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_resume_equals_uninterrupted_run(tmp_path, toy_model):
    cfg = load_config(None, [*TINY, "log.tensorboard=false", "log.plots=false"])
    full = loop.train_and_evaluate(cfg, tmp_path / "a")
    assert loop.train_and_evaluate(cfg, tmp_path / "b", stop_after_epochs=1) == {
        "stopped_at_epoch": 1}
    part = _read(tmp_path / "b" / "steps.csv")
    assert {int(r["epoch"]) for r in part} == {0}
    resumed = loop.train_and_evaluate(cfg, tmp_path / "b")
    a, b = _read(tmp_path / "a" / "steps.csv"), _read(tmp_path / "b" / "steps.csv")
    assert len(a) == len(b) == 3 * 3  # 24 images / batch 8 = 3 iterations per epoch
    for key in ("iteration", "loss", "box", "cls", "lr", "grad_norm"):
        assert [r[key] for r in a] == [r[key] for r in b], key  # same data order, same losses
    assert resumed["map"] == full["map"] and resumed["iterations"] == full["iterations"] == 9
    assert [r["epoch"] for r in _read(tmp_path / "b" / "metrics.csv")] == ["1", "2", "3"]


def test_run_folder_plots_tensorboard_and_restore(tmp_path, toy_model):
    from detjax.train.checkpoint import Checkpointer

    cfg = load_config(None, [*TINY, "train.epochs=2", "log.tensorboard=true",
                             "log.plots=true"])
    final = loop.train_and_evaluate(cfg, tmp_path)
    for name in ("config.yaml", "metrics.csv", "steps.csv", "results.png", "PR_curve.png",
                 "val_batch.png"):
        assert (tmp_path / name).is_file(), name
    assert any((tmp_path / "tb").iterdir())
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1", "2"]
    assert np.isfinite(final["map"]) and final["epochs"] == 2
    rows = _read(tmp_path / "metrics.csv")
    assert "val/map" in rows[-1] and float(rows[-1]["train/loss"]) > 0
    restored = run_lib.restore_run(tmp_path / "checkpoints")
    assert restored.config.train.epochs == 2 and restored.meta["epoch"] == 2
    assert restored.checkpoint_dir == tmp_path / "checkpoints" / "2"
    # the restored model is the EMA of the saved train state, read back by the train layer
    ckpt = Checkpointer(tmp_path / "checkpoints", max_to_keep=None)
    template = create_train_state(run_lib.build_model(cfg, len(restored.class_names)),
                                  loop.step_config(cfg, 3))
    state, _ = ckpt.restore(template)
    ckpt.close()
    assert int(state.iteration) == 6
    images = toy_batch(0, batch=2, size=64)["images"]
    model = restored.model
    np.testing.assert_allclose(step_lib.jit_eval_forward(state, images),
                               model.predict(model(step_lib.images_to_float(images))),
                               rtol=1e-5, atol=1e-5)


def test_on_eval_true_stops_after_that_epoch(tmp_path, toy_model):
    cfg = load_config(None, [*TINY, "eval.every=1", "log.tensorboard=false", "log.plots=false"])
    calls = []

    def on_eval(epoch, metrics):
        calls.append((epoch, metrics["map"]))
        return True if epoch == 2 else None

    final = loop.train_and_evaluate(cfg, tmp_path, on_eval=on_eval)
    assert [e for e, _ in calls] == [1, 2]
    assert final["epochs"] == 2 and final["iterations"] == 6 and final["map"] == calls[-1][1]
    assert [r["epoch"] for r in _read(tmp_path / "metrics.csv")] == ["1", "2"]
    assert run_lib.restore_run(tmp_path / "checkpoints").meta["epochs"] == 2


def test_time_limit_shortens_the_schedule():  # limit 1 min = 60 s
    assert budget.schedule_fit(1.0, 20, 1, 20.0, 10.0, 5.0) == 4   # 1 + (60-20-5) // 10
    assert budget.schedule_fit(1.0, 3, 1, 20.0, 10.0, 5.0) == 3    # never above epochs
    assert budget.schedule_fit(1.0, 20, 2, 50.0, 10.0, 5.0) == 2   # no time left: stop now
    assert budget.schedule_fit(1.0, 20, 2, 80.0, 10.0, 5.0) == 2   # over time: stop now
    assert budget.schedule_fit(0.0, 20, 1, 1e9, 1, 1) == 20       # no limit
    # per-epoch costs that depend on the schedule length (progressive resizing)
    assert budget.schedule_fit(1.0, 20, 1, 20.0, lambda e, total: 10.0, 5.0) == 4
    assert budget.schedule_fit(1.0, 20, 2, 80.0, lambda e, total: 10.0, 5.0) == 2


def test_time_limit_with_progressive_sizes():
    """Small first half, large second half: the fit prices each epoch at its own size."""
    from detjax.data.loader import LoaderConfig

    lc = LoaderConfig(image_size=64, multi_scale=(32, 64), multi_scale_mode="progressive")
    # 1 s per 64^2 pixels: epochs at 32 px cost 0.25 s, at 64 px 1 s
    cost = lambda e, total: budget.epoch_cost(1.0 / 64 ** 2, lc, e, total)
    assert cost(0, 10) == 0.25 and cost(5, 10) == 1.0
    # 0 done, 55 s left: E epochs cost E/2 * 0.25 + E/2 * 1 (E even) <= 55 -> E = 88
    assert budget.schedule_fit(1.0, 200, 0, 0.0, cost, 5.0) == 88
    assert budget.schedule_fit(1.0, 50, 0, 0.0, cost, 5.0) == 50


def test_cli_rejects_unknown_key(capsys):
    assert train_cli.main(["train.lr=0.1"]) == 2
    assert "train.lr0" in capsys.readouterr().err


def test_cli_registered():
    from detjax.cli import COMMANDS

    assert COMMANDS["train"][0] == "detjax.train.cli:main"


# run configs (the tuner's search space, configs/tune.yaml, has another schema)
CONFIGS = sorted(p.name for p in CONFIG_DIR.glob("*.yaml")
                 if "space" not in (yaml.safe_load(p.read_text()) or {}))


def _config_state(name, num_classes=3):
    cfg = load_config(name, ["data.imgsz=64", "train.batch=2"])
    return create_train_state(run_lib.build_model(cfg, num_classes), loop.step_config(cfg, 4))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_model_and_state(name):
    state = _config_state(name)
    assert int(state.step) == 0 and jax.tree.leaves(state.params)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_one_step_smoke(name):
    state = _config_state(name)
    batch = toy_batch(0, batch=2, size=64, max_boxes=4)
    state, m = step_lib.jit_train_step(state, batch)
    assert np.isfinite(float(m["loss"])) and int(state.iteration) == 1
    preds = step_lib.jit_eval_forward(state, batch["images"])
    assert preds.shape[:2] == (2, 4 + 3)


def test_predict_batch_postprocess_is_ultralytics_val():
    """The eval postprocess is non_max_suppression on the EMA model's forward (equal to the
    train step's eval_forward), multi-label by default (ultralytics DetectionValidator);
    multi_label=False keeps each anchor's best."""
    from detjax.nms import non_max_suppression

    state = create_train_state(ToyDetector(3, rngs=nnx.Rngs(0)), loop.step_config(
        load_config(None, []), 10))
    images = toy_batch(0, batch=2, size=64)["images"]
    preds = step_lib.jit_eval_forward(state, images)
    got = {}
    for multi in (True, False):
        det, valid = predict_batch(ema_model(state), images, iou_thres=0.7, conf_thres=0.001,
                                   max_det=3000, multi_label=multi)
        want = non_max_suppression(preds, conf_thres=0.001, iou_thres=0.7, max_det=3000,
                                   multi_label=multi)
        np.testing.assert_array_equal(valid, want.valid)
        np.testing.assert_allclose(det, want.detections, rtol=1e-6, atol=1e-6)
        got[multi] = int(valid.sum())
    assert got[True] > got[False]
    default = predict_batch(ema_model(state), images, conf_thres=0.001, max_det=3000)
    assert int(default[1].sum()) == got[True]
    assert load_config(None, []).eval.multi_label is True


def test_evaluate_counts_every_ground_truth_box_beyond_max_boxes(toy_model, monkeypatch):
    """Validation ground truth comes from the data set, not the batch (capped at max_boxes)."""
    from detjax.eval import Evaluator

    cfg = load_config(None, [*TINY, "data.max_boxes=2"])
    val_ds = run_lib.build_datasets(cfg, splits=("val",)).val
    val = run_lib.build_loaders(cfg, val_ds=val_ds).val
    counts = [len(r.labels) for r in val_ds.records]
    assert max(counts) > 2  # the cap would drop boxes
    seen = {}
    compute = Evaluator.compute

    def spy(self):
        seen["gt"] = [len(labels) for _, labels, _ in self.ground_truths]
        seen["boxes"] = [boxes for boxes, _, _ in self.ground_truths]
        return compute(self)

    monkeypatch.setattr(Evaluator, "compute", spy)
    model = run_lib.build_model(cfg, len(val_ds.class_names))
    model.eval()
    evaluate(model, val, class_names=val_ds.class_names)
    assert seen["gt"] == counts
    for boxes, rec in zip(seen["boxes"], val_ds.records):
        np.testing.assert_array_equal(boxes, rec.boxes)  # original pixels, no round trip
