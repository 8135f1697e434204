"""detjax.tune: search space, evolution, optuna study with pruning and resume, best config.

Most tests train nothing: a fake ``train_fn`` scores each trial from its values, so the search
logic is tested in milliseconds. One slow test runs the real loop (2 trials, then a resumed third).
"""

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from detjax.config import load_config
from detjax.tune import evolve
from detjax.tune.space import Param, SearchSpace, apply_params, load_space, parse_space
from detjax.tune.tuner import tune

SPACE = parse_space({"space": {
    "train.lr0": {"type": "log", "low": 1e-4, "high": 1e-2},
    "train.momentum": {"type": "float", "low": 0.6, "high": 0.98, "gain": 0.3},
    "train.loss.box_gain": {"type": "float", "low": 1.0, "high": 20.0},
    "data.imgsz": {"type": "choice", "choices": [128, 160]},
}})


def _score(values) -> float:
    # a smooth objective with its optimum at lr0 = 1e-3, momentum = 0.9, imgsz 160
    return (1.0 - abs(math.log10(values["train.lr0"]) + 3) / 2
            - abs(values["train.momentum"] - 0.9) + 0.1 * (values["data.imgsz"] == 160))


def fake_train(calls, epochs=3):
    def train_fn(cfg, workdir, on_eval):
        workdir.mkdir(parents=True, exist_ok=True)
        values = {"train.lr0": cfg.train.lr0, "train.momentum": cfg.train.momentum,
                  "data.imgsz": cfg.data.imgsz}
        calls.append((workdir.name, values, dict(cfg.train.loss)))
        final = _score(values)
        metrics = {}
        for epoch in range(1, epochs + 1):
            metrics = {"map": final * epoch / epochs, "map50": final * epoch / epochs}
            if on_eval(epoch, metrics):
                break
        return metrics
    return train_fn


def test_fitness_is_ultralytics_weighting():
    assert SPACE.fitness({"map": 0.5, "map50": 0.7}) == pytest.approx(0.9 * 0.5 + 0.1 * 0.7)
    assert SPACE.fitness({"map": float("nan")}) == 0.0
    custom = parse_space({"fitness": {"map": 1.0}, "space": {"train.lr0": {"low": 0.1,
                                                                          "high": 0.2}}})
    assert custom.fitness({"map": 0.3, "map50": 0.9}) == pytest.approx(0.3)


def test_apply_params_sets_nested_and_null_mapping_keys():
    cfg = load_config(None, [])
    out = apply_params(cfg, {"train.lr0": 0.003, "train.loss.box_gain": 5.0,
                             "data.augment.mosaic": 0.5})
    assert out.train.lr0 == 0.003 and out.train.loss.box_gain == 5.0
    assert out.data.augment.mosaic == 0.5
    assert cfg.train.loss is None and cfg.train.lr0 != 0.003  # the input is not changed


@pytest.mark.parametrize("params, match", [
    ({"train.lr00": 0.1}, "nearest valid key: 'train.lr0'"),
    ({"data.augment.mosaicc": 0.1}, "unknown config key"),
    ({"train.epochs.x": 1}, "no section"),
])
def test_apply_params_rejects_unknown_keys(params, match):
    with pytest.raises(ValueError, match=match):
        apply_params(load_config(None, []), params)


def test_apply_params_checks_types():
    with pytest.raises(TypeError, match="train.lr0"):
        apply_params(load_config(None, []), {"train.lr0": "fast"})


@pytest.mark.parametrize("spec, match", [
    ({"space": {"train.lr0": {"type": "gauss", "low": 0, "high": 1}}}, "type must be"),
    ({"space": {"train.lr0": {"type": "log", "low": 0.0, "high": 1}}}, "low > 0"),
    ({"space": {"train.lr0": {"low": 2, "high": 1}}}, "low <= high"),
    ({"space": {"data.imgsz": {"type": "choice"}}}, "non-empty"),
    ({"space": {"train.lr0": {"low": 0, "high": 1, "sigma": 2}}}, "unknown fields"),
    ({"spaces": {}}, "'space' section"),
])
def test_parse_space_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_space(spec)


def test_shipped_space_file_loads_and_matches_the_config():
    space = load_space("tune.yaml")
    assert "train.lr0" in space.keys and "data.imgsz" in space.keys
    lr0 = next(p for p in space.params if p.key == "train.lr0")
    assert lr0.kind == "log" and lr0.low == 1e-4


def test_mutate_starts_from_the_base_config_then_stays_in_bounds():
    rng = np.random.default_rng(0)
    base = {"train.lr0": 0.002, "train.momentum": 0.937, "data.imgsz": 160}
    first = evolve.mutate([], SPACE, base, rng)
    assert first["train.lr0"] == 0.002 and first["data.imgsz"] == 160
    assert first["train.loss.box_gain"] == pytest.approx(10.5)  # null in the config: midpoint
    history = [(0.5, first)]
    for _ in range(50):
        child = evolve.mutate(history, SPACE, base, rng)
        for p in SPACE.params:
            if p.kind == "choice":
                assert child[p.key] in p.choices
            else:
                assert p.low <= child[p.key] <= p.high
        assert all(child != h[1] for h in history)
        history.append((rng.random(), child))


def test_start_values_clip_numbers_and_skip_unset_keys_and_foreign_choices():
    base = {"train.lr0": 0.5, "train.momentum": 0.9, "data.imgsz": 640,
            "train.loss.box_gain": None}
    assert SPACE.start_values(base) == {"train.lr0": 1e-2, "train.momentum": 0.9}
    # evolution's first generation: a 640 px config under a [128, 160] choice starts at 128
    first = evolve.mutate([], SPACE, base, np.random.default_rng(0))
    assert first == {"train.lr0": 1e-2, "train.momentum": 0.9, "train.loss.box_gain": 10.5,
                     "data.imgsz": 128}


def test_tpe_first_trial_trains_the_config_itself(tmp_path):
    calls = []
    cfg = load_config(None, ["train.lr0=0.003", "train.momentum=0.85", "data.imgsz=160"])
    log = []
    tune(cfg, SPACE, tmp_path, trials=2, train_fn=fake_train(calls), log=log.append)
    assert calls[0][1] == {"train.lr0": 0.003, "train.momentum": 0.85, "data.imgsz": 160}
    assert calls[0][2] == {"box_gain": 7.5}  # train.loss unset: the dfl head's default
    assert calls[1][1] != calls[0][1]
    assert any("config's own values of 4 of the 4" in line for line in log)
    # a resumed study does not queue the config again
    tune(cfg, SPACE, tmp_path, trials=3, train_fn=fake_train(calls), log=log.append)
    assert len(calls) == 3 and calls[2][1] != calls[0][1]


def test_mutate_multiplies_the_parent_within_ultralytics_factor_range():
    space = SearchSpace((Param("train.lr0", "float", 1e-9, 1e9),))
    rng = np.random.default_rng(1)
    parent = {"train.lr0": 1.0}
    children = [evolve.mutate([(1.0, parent)], space, {}, rng)["train.lr0"] for _ in range(300)]
    assert all(0.3 <= c <= 3.0 for c in children)
    assert all(c != 1.0 for c in children)  # redrawn until a key changes
    # sigma 0.2 times a uniform factor: most mutations are small
    assert np.median(np.abs(np.log(children))) < 0.15


def test_mutate_picks_parents_from_the_best_five():
    space = SearchSpace((Param("train.lr0", "float", 1e-9, 1e9),))
    rng = np.random.default_rng(2)
    history = [(float(i), {"train.lr0": 10.0 ** i}) for i in range(10)]  # best: 1e9
    for _ in range(100):
        child = evolve.mutate(history, space, {}, rng)["train.lr0"]
        assert child >= 0.3 * 10.0 ** 5  # parents are the top 5 (1e5 .. 1e9)


def test_evolve_runs_and_resumes_from_its_csv(tmp_path):
    calls = []
    cfg = load_config(None, [])
    r1 = tune(cfg, SPACE, tmp_path, trials=2, method="evolve", train_fn=fake_train(calls),
              log=lambda s: None)
    rows = list(csv.DictReader(open(tmp_path / "evolve.csv")))
    assert len(rows) == 2 and len(calls) == 2
    assert calls[0][2] == {"box_gain": 7.5}  # generation 1: the dfl head's own default gain
    r2 = tune(cfg, SPACE, tmp_path, trials=3, method="evolve", train_fn=fake_train(calls),
              log=lambda s: None)
    rows2 = list(csv.DictReader(open(tmp_path / "evolve.csv")))
    assert len(rows2) == 3 and rows2[:2] == rows and len(calls) == 3
    assert r2.best_fitness >= r1.best_fitness
    assert (tmp_path / "optimization_history.png").stat().st_size > 0


def test_tpe_study_prunes_resumes_interrupted_trials_and_writes_best(tmp_path):
    import optuna

    calls = []
    cfg = load_config(None, [])
    tune(cfg, SPACE, tmp_path, trials=2, train_fn=fake_train(calls), log=lambda s: None)
    assert len(calls) == 2
    # a trial that was running when the process was killed: asked, never told
    study = optuna.load_study(study_name="detjax", storage=f"sqlite:///{tmp_path}/study.db")
    killed = study.ask({p.key: optuna.distributions.FloatDistribution(p.low, p.high,
                                                                      log=p.kind == "log")
                        if p.kind != "choice" else
                        optuna.distributions.CategoricalDistribution(list(p.choices))
                        for p in SPACE.params})
    killed.set_user_attr("workdir", "trial_killed")
    log = []
    result = tune(cfg, SPACE, tmp_path, trials=3, train_fn=fake_train(calls), log=log.append)
    assert any("interrupted" in line for line in log)
    assert calls[2][0] == "trial_killed"  # the same run folder (its checkpoints resume)
    assert calls[2][1]["train.lr0"] == pytest.approx(killed.params["train.lr0"])
    assert len(result.trials) == 3
    best = load_config(tmp_path / "best.yaml", [])
    assert best.train.lr0 == pytest.approx(result.best_params["train.lr0"])
    assert best.train.loss.box_gain == pytest.approx(result.best_params["train.loss.box_gain"])
    assert (tmp_path / "optimization_history.png").exists()
    assert (tmp_path / "param_importances.png").exists()


def test_median_pruner_stops_a_bad_trial_early(tmp_path):
    seen = []

    def train_fn(cfg, workdir, on_eval):
        good = len(seen) < 2  # two good startup trials, then a bad one
        epochs = 0
        for epoch in range(1, 6):
            epochs = epoch
            if on_eval(epoch, {"map": 0.5 if good else 0.01, "map50": 0.5 if good else 0.01}):
                break
        seen.append(epochs)
        return {"map": 0.5 if good else 0.01, "map50": 0.5 if good else 0.01}

    result = tune(load_config(None, []), SPACE, tmp_path, trials=3, train_fn=train_fn,
                  log=lambda s: None)
    assert seen == [5, 5, 1]
    assert [t["pruned"] for t in result.trials] == [False, False, True]


def test_bad_method_and_unknown_space_key_fail_before_training(tmp_path):
    with pytest.raises(ValueError, match="method must be"):
        tune(load_config(None, []), SPACE, tmp_path, method="grid", train_fn=fake_train([]))
    bad = parse_space({"space": {"train.lrr0": {"low": 0.1, "high": 0.2}}})
    calls = []
    with pytest.raises(ValueError, match="train.lr0"):
        tune(load_config(None, []), bad, tmp_path, train_fn=fake_train(calls))
    assert calls == []


def test_cli_reports_a_bad_space_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"space": {"train.lr9": {"low": 0.1, "high": 0.2}}}))
    r = subprocess.run([sys.executable, "-m", "detjax", "tune", "--space", str(space),
                        "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert r.returncode == 2 and "train.lr0" in r.stderr


@pytest.mark.slow
def test_real_training_two_trials_then_a_resumed_third(tmp_path):
    space = parse_space({"space": {"train.lr0": {"type": "log", "low": 1e-3, "high": 1e-2}}})
    cfg = load_config(None, ["data.num_train=16", "data.num_val=8", "data.imgsz=64",
                             "train.batch=8", "train.nbs=8", "train.epochs=1",
                             "train.time_limit=0", "log.progress=false", "log.plots=false",
                             "log.tensorboard=false", "eval.batch=8",
                             "data.synthetic_size=64"])
    tune(cfg, space, tmp_path, trials=2, log=lambda s: None)
    result = tune(cfg, space, tmp_path, trials=3, log=lambda s: None)
    assert len(result.trials) == 3
    assert all((tmp_path / t["name"] / "metrics.csv").exists() for t in result.trials)
    assert np.isfinite(result.best_fitness)
