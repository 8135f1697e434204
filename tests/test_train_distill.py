"""Distillation from a frozen teacher run (``train.distill``): the terms, the frozen teacher,
the configuration errors and a tiny end-to-end run. The parallel paths are compared in
``test_train_distill_parallel.py``."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from train_toys import TINY_RUN, toy_batch

from detjax import run as run_lib
from detjax.config import load_config
from detjax.losses import dense_distillation_loss, feature_imitation_loss
from detjax.models import Detector
from detjax.models.adapter import FeatureAdapter
from detjax.train import distill, optim
from detjax.train import step as step_lib
from detjax.train.state import StepConfig, create_train_state

# small YOLOv8-shaped detectors: the student a quarter, the teacher half the nano widths
WIDTHS = {"yolov8n": 0.0625, "yolov8s": 0.125}


def tiny_detector(name="yolov8n", num_classes=3, seed=0):
    return Detector(depth=0.33, width=WIDTHS[name], max_channels=256, num_classes=num_classes,
                    rngs=nnx.Rngs(seed))


def _state(feature_weight=1.0, seed=0, loss_times_batch=True):
    student, teacher = tiny_detector("yolov8n"), tiny_detector("yolov8s", seed=1)
    teacher.eval()
    student.feature_adapter = FeatureAdapter(student.neck.out_channels,
                                             teacher.neck.out_channels, rngs=nnx.Rngs(seed))
    tx = optim.recipe(optim.OptimConfig(iters_per_epoch=10, epochs=3, batch=4, nbs=4,
                                        warmup_epochs=0, warmup_min_iters=0, optimizer="sgd",
                                        lr0=0.01))
    cfg = StepConfig(tx=tx, distill=distill.DistillConfig(feature_weight=feature_weight),
                     loss_times_batch=loss_times_batch)
    return create_train_state(student, cfg, teacher=nnx.split(teacher))


def test_dense_terms_are_zero_for_equal_logits_and_positive_otherwise():
    rng = np.random.default_rng(0)
    scores, bins = rng.normal(size=(2, 50, 3)), rng.normal(size=(2, 50, 4 * 16))
    kd, ld = dense_distillation_loss(scores, scores, bins, bins)
    assert abs(float(kd)) < 1e-5 and abs(float(ld)) < 1e-5
    kd, ld = dense_distillation_loss(scores + 1.0, scores, bins * 2.0, bins)
    assert float(kd) > 1e-3 and float(ld) > 1e-3
    # the teacher gets no gradient through the terms
    g = jax.grad(lambda t: sum(dense_distillation_loss(scores + 1.0, t, bins * 2, bins)))(
        jnp.asarray(scores))
    assert not np.any(np.asarray(g))
    assert float(feature_imitation_loss(np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 3))).sum()) == 0
    with pytest.raises(ValueError, match="same shape"):
        feature_imitation_loss(np.ones((1, 2, 2, 3)), np.ones((1, 2, 2, 4)))


def test_distillation_terms_vanish_when_the_student_is_the_teacher():
    model = tiny_detector()
    model.eval()
    images = step_lib.images_to_float(toy_batch(0, batch=2, size=64)["images"])
    settings = distill.DistillConfig(feature_weight=1.0)
    graphdef, state = nnx.split(model)

    @jax.jit
    def terms(state, images):
        m = nnx.merge(graphdef, state)
        return distill.distill_forward(m, nnx.merge(graphdef, state), images, settings)[1]

    items = terms(state, images)
    assert set(items) == {"kd", "ld", "feat"}
    for name, value in items.items():
        assert abs(float(value)) < 1e-5, (name, float(value))


@pytest.mark.slow  # ~100 s on a 2-core CPU: the gradient and the step compile
def test_teacher_gets_no_gradient_and_stays_bit_identical():
    state = _state()
    batch = toy_batch(0, batch=4, size=64)
    grad_teacher = jax.jit(jax.grad(lambda t: step_lib._loss_fn(
        state.params, state.replace(teacher=t), batch, jnp.float32(1.0), 4)[0]))(state.teacher)
    assert all(not np.any(np.asarray(g)) for g in jax.tree.leaves(grad_teacher))
    before = [np.array(x) for x in jax.tree.leaves(state.teacher)]
    params0 = [np.array(x) for x in jax.tree.leaves(state.params)]
    for i in range(2):
        state, metrics = step_lib.jit_train_step(state, toy_batch(i, batch=4, size=64))
    after = jax.tree.leaves(state.teacher)
    assert all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, after))
    assert {"kd", "ld", "feat"} <= set(metrics) and np.isfinite(float(metrics["loss"]))
    assert max(float(np.max(np.abs(a - np.asarray(b))))
               for a, b in zip(params0, jax.tree.leaves(state.params))) > 0  # student moved


def test_distill_settings_need_a_teacher(tmp_path):
    assert distill.distill_config(load_config()) is None
    with pytest.raises(ValueError, match="train.distill.kd_weight.*teacher is null"):
        distill.distill_config(load_config(None, ["train.distill.kd_weight=2.0"]))
    cfg = load_config(None, [f"train.distill.teacher={tmp_path / 'nowhere'}"])
    assert distill.distill_config(cfg) == distill.DistillConfig()
    with pytest.raises(FileNotFoundError, match="nowhere"):
        distill.load_teacher(cfg, ["a", "b", "c"], tiny_detector())
    with pytest.raises(ValueError, match=">= 0"):
        distill.distill_config(load_config(None, [f"train.distill.teacher={tmp_path}",
                                                  "train.distill.dfl_weight=-1"]))


def test_teacher_with_other_classes_is_named():
    teacher = types.SimpleNamespace(class_names=["cat", "dog"], run_dir="runs/teacher",
                                    model=tiny_detector(num_classes=2))
    with pytest.raises(ValueError, match=r"runs/teacher.*2 classes \['cat', 'dog'\].*3 classes"):
        distill._check_compatible(teacher, tiny_detector(), ["a", "b", "c"])


@pytest.mark.slow
def test_tiny_distillation_run_trains_and_restores(tmp_path, monkeypatch):
    from detjax.train import loop
    from detjax.train.checkpoint import Checkpointer

    monkeypatch.setattr(run_lib, "build_model",
                        lambda cfg, n, **kw: tiny_detector(cfg.model.name, n, cfg.seed))
    teacher_dir, student_dir = tmp_path / "teacher", tmp_path / "student"
    loop.train_and_evaluate(load_config(None, [*TINY_RUN, "model.name=yolov8s"]), teacher_dir)
    cfg = load_config(None, [*TINY_RUN, f"train.distill.teacher={teacher_dir}",
                             "train.distill.feature_weight=1.0", "train.epochs=2"])
    assert loop.train_and_evaluate(cfg, student_dir, stop_after_epochs=1) == {
        "stopped_at_epoch": 1}
    final = loop.train_and_evaluate(cfg, student_dir)  # resumes: the teacher comes back
    assert np.isfinite(final["map"]) and final["iterations"] == 4
    steps = (student_dir / "steps.csv").read_text().splitlines()
    assert {"kd", "ld", "feat"} <= set(steps[0].split(","))
    # checkpoints hold the student and its adapter, not the teacher
    keys = Checkpointer(student_dir / "checkpoints").restore_meta()  # a readable save
    assert keys["epoch"] == 2
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(student_dir / "checkpoints" / "2" / "state")
    assert any("feature_adapter" in k for k in saved)
    assert not any("teacher" in k for k in saved)
    restored = run_lib.restore_run(student_dir)  # the detector alone
    assert not hasattr(restored.model, "feature_adapter")
    images = step_lib.images_to_float(toy_batch(0, batch=1, size=64)["images"])
    assert restored.model.predict(restored.model(images)).shape[:2] == (
        1, 4 + len(restored.class_names))


def test_train_freeze_leaves_the_feature_adapter_trainable():
    from detjax.models import freeze_mask

    student = tiny_detector()
    student.feature_adapter = FeatureAdapter(student.neck.out_channels, (8, 16, 32),
                                             rngs=nnx.Rngs(0))
    mask = freeze_mask(nnx.state(student, nnx.Param), 22)  # everything but the head
    flat = {"/".join(str(getattr(k, "key", k)) for k in path): bool(v)
            for path, v in jax.tree_util.tree_flatten_with_path(mask)[0]}
    assert any(flat.values())
    adapter = [v for k, v in flat.items() if k.startswith("feature_adapter")]
    assert adapter and not any(adapter)
