"""``train_and_evaluate(config, workdir)``: the training loop.

It builds the run from the config (``detjax.run``: data sets, loaders, model), the train
state, and runs epochs of the train step in one data-parallel mode (``train.parallel``,
:class:`~detjax.train.runner.Runner`). Every ``eval.every`` epochs and after the last one it
evaluates the EMA weights with :func:`detjax.eval.evaluate`. It writes to ``workdir``:
``config.yaml``, ``run.json`` (class names, image size), ``metrics.csv`` (one row per epoch),
``steps.csv`` (loss per logged iteration), TensorBoard events in ``tb/``
(:mod:`detjax.train.logs`), orbax checkpoints (``checkpoints/``, ``best/``) and, at the end,
PNG plots (``results.png``, ``PR_curve.png``, ``val_batch.png``). ``detjax.run.restore_run``
restores the folder for inference.

Multi-scale training draws one size per batch from ``data.multi_scale``; each size compiles
once and is cached, so the step never recompiles after the sizes have been seen. Mosaic turns
off for the last ``data.augment.close_mosaic`` epochs. ``train.time_limit`` (minutes) sets the
schedule length after each epoch (at most ``train.epochs``, :mod:`detjax.train.budget`) so
that training plus the final evaluation fit the limit; the length is part of the state, so
this does not recompile.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from detjax import run as run_lib
from detjax._malloc import limit_arenas, release_free_memory
from detjax.config import Config, dump_config
from detjax.eval.validation import eval_settings, evaluate
from detjax.train import budget, logs, optim
from detjax.train.checkpoint import Checkpointer
from detjax.train.distill import distill_config, load_teacher
from detjax.train.qat import prepare_qat
from detjax.train.runner import Runner
from detjax.train.state import StepConfig, TrainState, create_train_state, ema_model

MODEL_KEYS = ("images", "boxes", "labels", "gt_mask")

OnEval = Callable[[int, dict[str, Any]], "bool | None"]


def step_config(cfg: Config, iters_per_epoch: int, num_classes: int = 10, *,
                tx=None) -> StepConfig:
    """The step settings of ``cfg``; ``tx`` (an ``optax.GradientTransformation``) replaces the
    recipe of ``train.*`` (``optim.make_optimizer``; ``num_classes`` matters to ``auto`` only,
    ultralytics assumes 10 when the data does not say)."""
    t = cfg.train
    if tx is None:
        tx = optim.make_optimizer(cfg, iters_per_epoch=iters_per_epoch, num_classes=num_classes)
    loss = tuple(sorted((k, _hashable(v)) for k, v in t.loss.to_dict().items())
                 ) if isinstance(t.loss, Config) else ()
    return StepConfig(tx=tx, precision=t.precision, ema_decay=t.ema_decay,
                      ema_tau=t.ema_tau, loss_hyp=loss, loss_times_batch=t.loss_times_batch,
                      distill=distill_config(cfg))


def _hashable(value):
    """Lists from YAML (``train.loss.class_weights``) as tuples: the step config is static."""
    return tuple(_hashable(v) for v in value) if isinstance(value, (list, tuple)) else value


def resolve_class_weights(cfg: Config, train_ds) -> Config:
    """``train.loss.class_weights: auto`` -> the effective-number weights (Cui et al. 2019,
    beta 0.999, mean 1) of the training set's box counts per class; other values unchanged."""
    loss = cfg.train.loss
    if not isinstance(loss, Config) or loss.get("class_weights") != "auto":
        return cfg
    from detjax.losses import class_weights_from_counts

    labels = [np.asarray(r.labels).ravel() for r in train_ds.records]
    counts = np.bincount(np.concatenate(labels) if labels else np.zeros(0, np.int64),
                         minlength=train_ds.num_classes)
    weights = np.asarray(class_weights_from_counts(counts, method="effective"))
    cfg = copy.deepcopy(cfg)
    cfg.train.loss["class_weights"] = [round(float(w), 6) for w in weights]
    print(f"train.loss.class_weights=auto: {cfg.train.loss['class_weights']} "
          f"(box counts {counts.tolist()})")
    return cfg


def eval_model(state: TrainState, use_ema: bool = True):
    """The NNX model to evaluate: the EMA weights (or the raw ones), in eval mode."""
    if use_ema:
        return ema_model(state)
    from flax import nnx

    return nnx.merge(state.eval_graphdef, state.params, state.batch_stats, state.other)


def _evaluate(state: TrainState, loader, cfg: Config, class_names, keep_images: int):
    model = eval_model(state, bool(cfg.eval.use_ema))
    return evaluate(model, loader, class_names=class_names, keep_images=keep_images,
                    **eval_settings(cfg))


def _train_epoch(runner: Runner, state, loader, cfg: Config, log: logs.TrainLog, epoch: int,
                 epochs: int, show: bool, timing: dict[str, float]):
    """One pass over ``loader``: ``(state, last iteration + 1, mean step metrics, images)``.
    The first step of the run compiles; its time goes to ``timing['compile']``."""
    t0 = time.time()
    nb = loader.num_batches(epoch)
    bar = logs.progress(nb - loader.state.position, f"{epoch + 1}/{epochs}", show)
    sums: dict[str, float] = {}
    count, pending, images_seen, window = 0, [], 0, (time.time(), 0)
    it = int(runner.host_state(state).iteration)
    if "compile" not in timing:  # set-up's freed memory (image checks, model init) goes back
        release_free_memory()  # before the compiler's peak
    for batch in loader.epoch():
        state, m = runner.step(state, {k: batch[k] for k in MODEL_KEYS})
        if "compile" not in timing:  # the first step compiles: time it apart from training
            jax.block_until_ready(m)
            timing["compile"] = time.time() - t0
            release_free_memory()  # the compiler's freed memory, kept by malloc otherwise
            if show:
                bar.write(f"train step compiled and ran once in {timing['compile']:.1f}s")
        pending.append((it, m))
        it += 1
        images_seen += len(batch["images"])
        bar.update(1)
        if len(pending) >= cfg.log.every:
            count = log.flush_steps(pending, sums, count, epoch, bar,
                                    images_seen - window[1], window[0])
            pending, window = [], (time.time(), images_seen)
    count = log.flush_steps(pending, sums, count, epoch, bar, images_seen - window[1],
                            window[0])
    bar.close()
    return state, it, {k: v / max(count, 1) for k, v in sums.items()}, images_seen


def _saved_part(state: TrainState) -> TrainState:
    """What a checkpoint holds: the state without the distillation teacher (the teacher's
    own run folder has its weights)."""
    return state.replace(teacher=None)


def _write_data_reports(workdir: Path, train_ds, val_ds) -> None:
    """``data_report.txt`` / ``data_report_val.txt``: the files the data check skipped and why
    (written only when there is something to say)."""
    from detjax.data import write_report

    for ds, name in ((train_ds, "data_report.txt"), (val_ds, "data_report_val.txt")):
        report = getattr(ds, "report", None)
        if report is not None and (report.skipped_files or report.problems):
            write_report(report, workdir / name)
            print(f"data: {len(report.skipped_files)} file(s) skipped in "
                  f"{'training' if ds is train_ds else 'validation'}; see {workdir / name}")


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *,
                       tx=None, on_eval: OnEval | None = None,
                       stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint when
    ``config.resume``) and returns the final metrics (``map``, ``map50``, ``map75``,
    ``epochs``, ``best_map``, ``train_time_s``, ``total_time_s``, ``iterations``).

    ``tx``: any ``optax.GradientTransformation`` in place of the ``train.*`` recipe (its
    schedule is the caller's; it is called once per batch).

    ``on_eval(epoch, metrics)`` is called after each evaluation (``epoch`` counts from 1,
    ``metrics`` is the COCO result); returning ``True`` stops the run after that epoch (a
    tuner's pruner), which then saves a checkpoint and reports that evaluation.
    ``stop_after_epochs`` ends this call early after that many epochs in total, leaving a
    resumable run (``{"stopped_at_epoch": n}``)."""
    t_start = time.time()
    limit_arenas()  # see detjax._malloc: the step's temporaries otherwise spread over arenas
    cfg = config
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.distributed:
        jax.distributed.initialize()
    is_main = jax.process_index() == 0
    dump_config(cfg, workdir / "config.yaml")

    train_ds, val_ds = run_lib.build_datasets(cfg)
    class_names = list(train_ds.class_names)
    cfg = resolve_class_weights(cfg, train_ds)
    if is_main:
        run_lib.write_run_info(workdir, cfg, class_names)
        _write_data_reports(workdir, train_ds, val_ds)
    train_loader, val_loader = run_lib.build_loaders(cfg, train_ds, val_ds)
    nb = train_loader.num_batches(0)
    if nb < 1:
        raise ValueError(f"{len(train_ds)} training images < train.batch={cfg.train.batch}")
    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
    resuming = bool(cfg.resume) and ckpt.latest_step() is not None
    model = run_lib.build_model(cfg, len(class_names), pretrained=not resuming)
    quantize = prepare_qat(cfg, workdir, model, class_names, resuming=resuming,
                           write=is_main)
    if quantize is not None and is_main:  # the run folder restores as the int8 model
        saved_cfg = copy.deepcopy(cfg)
        saved_cfg.model.quantize = quantize
        dump_config(saved_cfg, workdir / "config.yaml")
    teacher = load_teacher(cfg, class_names, model)
    state = create_train_state(model, step_config(cfg, nb, len(class_names), tx=tx),
                               teacher=teacher)
    del model

    best_ckpt = Checkpointer(workdir / "best", max_to_keep=1) if cfg.checkpoint.save_best else None
    log = logs.TrainLog(workdir, tensorboard=cfg.log.tensorboard, enabled=is_main)
    epochs, start_epoch, best_map, train_time = int(cfg.train.epochs), 0, -1.0, 0.0
    if resuming:
        state, meta = ckpt.restore(_saved_part(state))
        state = state.replace(teacher=teacher[1] if teacher is not None else None)
        train_loader.restore(meta["loader"])
        start_epoch, best_map = int(meta["epoch"]), float(meta["best_map"])
        epochs, train_time = int(meta["epochs"]), float(meta.get("train_time", 0.0))
        log.start(int(state.iteration), start_epoch)
        print(f"resumed from {ckpt.directory} at epoch {start_epoch} "
              f"(iteration {int(state.iteration)})")
    else:
        log.start()
    state = state.replace(epochs=np.int32(epochs))
    train_loader.config = dataclasses.replace(train_loader.config, epochs=epochs)

    runner = Runner(cfg.train.parallel, cfg.train.batch)
    state = runner.put(state)
    if is_main:
        n_params = sum(x.size for x in jax.tree.leaves(runner.host_state(state).params))
        print(f"detjax train: {cfg.model.name} ({n_params / 1e6:.2f}M params, head "
              f"{cfg.model.head}) on {cfg.data.format} ({len(train_ds)} train / {len(val_ds)} "
              f"val images, {len(class_names)} classes), {nb} iterations/epoch, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s), "
              f"parallel={runner.mode}, workdir={workdir}; set up in "
              f"{time.time() - t_start:.0f}s")
        print(optim.describe(cfg, iters_per_epoch=nb, num_classes=len(class_names)) if tx is None
              else "optimizer: the given optax transformation (train.optimizer, lr0, warmup, "
              "schedule, nbs and grad_clip unused)")
        if teacher is not None:
            print(f"distillation: teacher {cfg.train.distill.teacher}, "
                  f"{distill_config(cfg)}")
        if quantize is not None:
            print(f"train.qat: int8 fake quantisation, activation ranges in "
                  f"{workdir / quantize['act_ranges']}")

    result: dict[str, Any] = {}
    last_eval_time, epoch_times, timing = 0.0, [], {}
    epoch = start_epoch
    samples: list = []
    while epoch < epochs:
        t0 = time.time()
        state, it, means, images_seen = _train_epoch(
            runner, state, train_loader, cfg, log, epoch, epochs, cfg.log.progress and is_main,
            timing)
        epoch += 1
        epoch_time = time.time() - t0
        first = len(epoch_times) == 0
        steady_time = epoch_time - timing.get("compile", 0.0) if first else epoch_time
        steady_time *= nb / max(nb - 1, 1) if first else 1.0
        epoch_times.append(steady_time / budget.epoch_pixels(train_loader.config, epoch - 1))
        train_time += epoch_time
        row = {"epoch": epoch, "iteration": it, "time_s": train_time,
               "images_per_s": images_seen / epoch_time,
               **{f"train/{k}": v for k, v in means.items()},
               "val/map": "", "val/map50": "", "val/map75": "", "eval_time_s": ""}

        # shorten the schedule to the time limit (the first epoch includes compilation);
        # epoch cost = seconds per pixel x the epoch's pixels (sizes vary when multi-scale)
        per_pixel = float(np.median(epoch_times))
        eval_estimate = (1.3 * last_eval_time if last_eval_time else 30.0 + 0.5 * per_pixel
                         * cfg.data.imgsz ** 2 * len(val_ds) / (nb * cfg.train.batch))
        cost = functools.partial(budget.epoch_cost, per_pixel, train_loader.config)
        new_epochs = budget.schedule_fit(cfg.train.time_limit, int(cfg.train.epochs), epoch,
                                         time.time() - t_start, cost, eval_estimate + 5.0)
        if new_epochs != epochs:
            print(f"time_limit={cfg.train.time_limit} min: schedule set from {epochs} to "
                  f"{new_epochs} epochs (at most train.epochs={cfg.train.epochs})")
            epochs = new_epochs
            state = runner.set_epochs(state, epochs)
            train_loader.config = dataclasses.replace(train_loader.config, epochs=epochs)

        last = epoch >= epochs
        host = runner.host_state(state)
        if last or epoch % max(int(cfg.eval.every), 1) == 0:
            te = time.time()
            result, samples = _evaluate(host, val_loader, cfg, class_names,
                                        keep_images=16 if last else 0)
            last_eval_time = time.time() - te
            row.update({f"val/{k}": v for k, v in logs.summary(result).items()})
            row["eval_time_s"] = last_eval_time
            if is_main:
                print(f"epoch {epoch}/{epochs}: mAP50-95 {result['map']:.4f}  mAP50 "
                      f"{result['map50']:.4f}  ({last_eval_time:.1f}s eval)")
            if on_eval is not None and on_eval(epoch, result) and not last:
                print(f"on_eval stopped the run after epoch {epoch}")
                epochs, last = epoch, True
        log.write_epoch(row)
        improved = row["val/map"] != "" and float(result["map"]) > best_map
        if improved:
            best_map = float(result["map"])
        meta = {"epoch": epoch, "epochs": epochs, "loader": train_loader.state.to_dict(),
                "best_map": best_map, "train_time": train_time, "metrics": row,
                "class_names": class_names, "iters_per_epoch": nb}
        if last or epoch % max(int(cfg.checkpoint.every), 1) == 0:
            ckpt.save(epoch, _saved_part(host), meta)
        if improved and best_ckpt is not None:
            best_ckpt.save(epoch, _saved_part(host), meta)
        if stop_after_epochs is not None and epoch >= stop_after_epochs and not last:
            ckpt.save(epoch, _saved_part(host), meta)
            return {"stopped_at_epoch": epoch}

    if not result:  # resumed a finished run: report its numbers again
        print(f"{workdir} already holds a finished run ({epochs} epochs); evaluating it. "
              "Use another workdir or resume=false to train anew.")
        result, samples = _evaluate(runner.host_state(state), val_loader, cfg, class_names,
                                    keep_images=16)
    log.close()
    final = {**logs.summary(result), "epochs": epochs, "best_map": best_map,
             "train_time_s": train_time, "total_time_s": time.time() - t_start,
             "iterations": int(runner.host_state(state).iteration)}
    if cfg.log.plots and is_main and result:
        final["plots"] = logs.save_plots(workdir, result, samples, class_names)
    if is_main:
        print(f"done: mAP50-95 {final.get('map', float('nan')):.4f}, mAP50 "
              f"{final.get('map50', float('nan')):.4f} after {epochs} epochs, "
              f"{final['total_time_s'] / 60:.1f} min; results in {workdir}")
    ckpt.close()
    if best_ckpt is not None:
        best_ckpt.close()
    return final
