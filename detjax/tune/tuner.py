"""``tune(config, space, tune_dir)``: hyperparameter search over ordinary training runs.

Methods:

- ``tpe`` (default): optuna's TPE sampler with a median pruner fed the fitness of every evaluation
  during a trial (``eval.every`` sets how often); a pruned trial stops after that epoch. The study
  lives in SQLite (``tune_dir/study.db``), so a rerun with the same folder resumes it: trials that
  were running when the process died (kill -9 included) are marked failed and queued again with the
  same values and run folder, whose own checkpoints then resume the training.
- ``evolve``: ultralytics-style genetic evolution (:mod:`detjax.tune.evolve`), resumed from its CSV.

Every trial is a run folder ``tune_dir/trial_NNNN`` that ``detjax val`` / ``predict`` accept. At the
end ``best.yaml`` holds the whole config with the best values (``detjax train tune_dir/best.yaml``),
and ``tune_dir`` gets PNG plots (optimisation history; parameter importances with >= 2 trials).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detjax.config import Config, dump_config
from detjax.tune import evolve as evolve_lib
from detjax.tune.space import SearchSpace, apply_params

METHODS = ("tpe", "evolve")
# train_fn(config, workdir, on_eval) -> final metrics; on_eval(epoch, metrics) -> True stops
TrainFn = Callable[[Config, Path, Callable[[int, dict], bool]], Mapping[str, Any]]


@dataclasses.dataclass
class TuneResult:
    best_params: dict[str, Any]
    best_fitness: float
    best_trial: str
    trials: list[dict[str, Any]]
    best_config: Path


def default_train_fn(config: Config, workdir: Path, on_eval) -> Mapping[str, Any]:
    from detjax.train import train_and_evaluate

    return train_and_evaluate(config, workdir, on_eval=on_eval)


def tune(config: Config, space: SearchSpace, tune_dir: str | Path, *, trials: int = 20,
         time_limit: float = 0.0, method: str = "tpe", seed: int = 0,
         train_fn: TrainFn | None = None, log: Callable[[str], None] = print) -> TuneResult:
    """Runs (or resumes) a search in ``tune_dir`` until ``trials`` trials have finished or
    ``time_limit`` minutes (0 = none) have passed; returns the best values so far."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    tune_dir = Path(tune_dir)
    tune_dir.mkdir(parents=True, exist_ok=True)
    apply_params(config, {p.key: p.choices[0] if p.kind == "choice" else p.low
                          for p in space.params})  # unknown keys fail before any training
    runner = _Runner(config, space, tune_dir, train_fn or default_train_fn, log,
                     deadline=time.time() + 60 * time_limit if time_limit > 0 else None,
                     total=trials)
    if method == "tpe":
        history = _run_optuna(runner, trials, seed)
    else:
        history = _run_evolve(runner, trials, seed)
    return _finish(runner, history, method)


@dataclasses.dataclass
class _Runner:
    config: Config
    space: SearchSpace
    tune_dir: Path
    train_fn: TrainFn
    log: Callable[[str], None]
    deadline: float | None
    total: int

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def run(self, name: str, values: Mapping[str, Any],
            report: Callable[[int, float], bool] | None = None) -> tuple[float, dict, bool]:
        """Trains one trial; ``report(epoch, fitness) -> prune?``. Returns
        ``(final fitness, final metrics, pruned)``."""
        cfg = apply_params(self.config, values)
        workdir = self.tune_dir / name
        cfg["workdir"] = str(workdir)
        pruned = False

        def on_eval(epoch: int, metrics: dict) -> bool:
            nonlocal pruned
            if report is not None and report(epoch, self.space.fitness(metrics)):
                pruned = True
            return pruned

        t0 = time.time()
        final = dict(self.train_fn(cfg, workdir, on_eval))
        fitness = self.space.fitness(final)
        shown = ", ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in values.items())
        self.log(f"{name}: fitness {fitness:.4f} (mAP50-95 {final.get('map', float('nan')):.4f}, "
                 f"mAP50 {final.get('map50', float('nan')):.4f}) in {time.time() - t0:.0f}s"
                 f"{' (pruned)' if pruned else ''}; {shown}")
        return fitness, final, pruned


def _base_values(config: Config, space: SearchSpace) -> dict[str, Any]:
    """The config's flat values, where every searched ``train.loss.*`` key that the config
    leaves unset is the model head's own default (:func:`detjax.models.loss_defaults`): the
    values the config actually trains with, where the first trial starts."""
    base = config.flat()
    unset = [p.key for p in space.params
             if p.key.startswith("train.loss.") and base.get(p.key) is None]
    if unset:
        from detjax.models import loss_defaults

        defaults = loss_defaults(config.model.head)
        for key in unset:
            base[key] = defaults.get(key.removeprefix("train.loss."))
    return base


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ----------------------------------------------------------------------------- optuna (TPE)


def _run_optuna(runner: _Runner, trials: int, seed: int) -> list[dict[str, Any]]:
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = f"sqlite:///{(runner.tune_dir / 'study.db').absolute()}"
    study = optuna.create_study(
        study_name="detjax", storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0))
    stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
    for t in stale:  # the process died during these: fail them, train them again
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"workdir": t.user_attrs.get("workdir")})
        runner.log(f"resuming: trial {t.number} was interrupted; queued again")
    done = lambda: [t for t in study.get_trials(deepcopy=False)
                    if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    if not study.get_trials(deepcopy=False):  # a new study starts from the config itself
        start = runner.space.start_values(_base_values(runner.config, runner.space))
        study.enqueue_trial(start)
        runner.log(f"trial 1 trains the config's own values of {len(start)} of the "
                   f"{len(runner.space.params)} searched keys (the others: TPE's draw)")
    if done():
        runner.log(f"resuming the study in {runner.tune_dir}: {len(done())} trials done")
    while len(done()) < trials and not runner.out_of_time():
        trial = study.ask()
        values = {p.key: _suggest(trial, p) for p in runner.space.params}
        name = trial.user_attrs.get("workdir") or f"trial_{trial.number:04d}"
        trial.set_user_attr("workdir", name)

        def report(epoch: int, fitness: float, trial=trial) -> bool:
            trial.report(fitness, epoch)
            return trial.should_prune()

        runner.log(f"trial {len(done()) + 1}/{trials} ({name})")
        fitness, final, pruned = runner.run(name, values, report)
        trial.set_user_attr("metrics", {k: v for k, v in final.items()
                                        if isinstance(v, (int, float))})
        if pruned:
            study.tell(trial, state=TrialState.PRUNED)
        elif not np.isfinite(fitness):
            study.tell(trial, state=TrialState.FAIL)
        else:
            study.tell(trial, fitness)
    _plot_optuna(study, runner)
    history = []
    for t in done():
        value = t.value if t.value is not None else max(t.intermediate_values.values(),
                                                        default=float("nan"))
        history.append({"name": t.user_attrs.get("workdir", f"trial_{t.number:04d}"),
                        "fitness": float(value), "values": _from_optuna(t.params, runner.space),
                        "pruned": t.state == TrialState.PRUNED})
    return history


def _suggest(trial, p) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.key, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.key, int(p.low), int(p.high))
    return trial.suggest_float(p.key, p.low, p.high, log=p.kind == "log")


def _from_optuna(params: Mapping[str, Any], space: SearchSpace) -> dict[str, Any]:
    return {p.key: params[p.key] for p in space.params if p.key in params}


def _plot_optuna(study, runner: _Runner) -> None:
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    jobs = [("optimization_history.png", "plot_optimization_history", 1)]
    if len(runner.space.params) > 1:
        jobs.append(("param_importances.png", "plot_param_importances", 2))
    for filename, name, needed in jobs:
        if len(complete) < needed:
            continue
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            from optuna.visualization import matplotlib as ovm

            with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = getattr(ovm, name)(study)
            ax.figure.tight_layout()
            ax.figure.savefig(runner.tune_dir / filename, dpi=120)
            plt.close(ax.figure)
        except Exception as e:  # noqa: BLE001 - a figure never fails a finished search
            runner.log(f"warning: {filename} failed: {e!r}")


# ----------------------------------------------------------------------------- evolution


def _run_evolve(runner: _Runner, trials: int, seed: int) -> list[dict[str, Any]]:
    path = runner.tune_dir / "evolve.csv"
    history = evolve_lib.read_history(path, runner.space)
    if history:
        runner.log(f"resuming the evolution in {runner.tune_dir}: {len(history)} generations "
                   "done")
    rng = np.random.default_rng([seed, len(history)])
    base = _base_values(runner.config, runner.space)
    while len(history) < trials and not runner.out_of_time():
        values = evolve_lib.mutate(history, runner.space, base, rng)
        name = f"trial_{len(history):04d}"
        if (runner.tune_dir / name).exists():  # a generation killed half way: start it afresh
            import shutil

            shutil.rmtree(runner.tune_dir / name)
        runner.log(f"generation {len(history) + 1}/{trials} ({name})")
        fitness, _, _ = runner.run(name, values)
        evolve_lib.append_history(path, runner.space, fitness, values)
        history.append((fitness, values))
    _plot_evolve(history, runner)
    return [{"name": f"trial_{i:04d}", "fitness": f, "values": v, "pruned": False}
            for i, (f, v) in enumerate(history)]


def _plot_evolve(history, runner: _Runner) -> None:
    if not history:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fitness = [f for f, _ in history]
        numeric = [p for p in runner.space.params if p.kind != "choice"]
        cols = 1 + len(numeric)
        fig, axes = plt.subplots(1, cols, figsize=(3 * cols, 3), squeeze=False)
        axes[0, 0].plot(range(1, len(fitness) + 1), fitness, "o-")
        axes[0, 0].plot(range(1, len(fitness) + 1), np.maximum.accumulate(fitness), "r-")
        axes[0, 0].set(title="fitness", xlabel="generation")
        for ax, p in zip(axes[0, 1:], numeric):
            ax.scatter([v[p.key] for _, v in history], fitness, c=range(len(history)),
                       cmap="viridis", s=12)
            ax.set(title=p.key.rsplit(".", 1)[-1], xscale="log" if p.kind == "log" else "linear")
        fig.tight_layout()
        fig.savefig(runner.tune_dir / "optimization_history.png", dpi=120)
        plt.close(fig)
    except Exception as e:  # noqa: BLE001 - a figure never fails a finished search
        runner.log(f"warning: optimization_history.png failed: {e!r}")


# ----------------------------------------------------------------------------- result


def _finish(runner: _Runner, history: list[dict[str, Any]], method: str) -> TuneResult:
    finite = [h for h in history if np.isfinite(h["fitness"])]
    if not finite:
        raise RuntimeError(f"no trial in {runner.tune_dir} finished with a finite fitness")
    best = max(finite, key=lambda h: h["fitness"])
    cfg = apply_params(runner.config, best["values"])
    cfg["workdir"] = "runs/train"
    path = runner.tune_dir / "best.yaml"
    dump_config(cfg, path)
    summary = {"method": method, "best_trial": best["name"], "best_fitness": best["fitness"],
               "best_params": best["values"], "trials": history}
    (runner.tune_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    runner.log(f"best: {best['name']} fitness {best['fitness']:.4f}; config in {path}")
    return TuneResult(best["values"], float(best["fitness"]), best["name"], history, path)
