"""``train_and_evaluate(config, workdir)`` and the ``detjax train`` command.

Contract (TRAIN helper, issue 6): ``train_and_evaluate(config: Config, workdir: str) -> dict``
of final metrics (``map``, ``map50``, ``map75``, ``epochs``, ``train_time_s``, ...). It builds
the data sets and loaders (``detjax.data``), the model (``detjax.models.create_model``), the
train state, runs epochs of ``train_step`` on one device, with ``jax.pmap`` or with ``jax.jit``
over a device mesh (``train.parallel``), evaluates the EMA weights with
``detjax.eval.Evaluator`` through the jitted ``detjax.non_max_suppression``, and writes to
``workdir``: ``config.yaml``, ``metrics.csv`` (one row per epoch), ``steps.csv`` (loss per
logged iteration), TensorBoard events in ``tb/``, orbax checkpoints (``checkpoints/``,
``best/``) and, at the end, PNG plots (``results.png``, ``PR_curve.png``, ``val_batch.png``).

Multi-scale training draws one size per batch from ``data.multi_scale``; each size compiles
once and is cached, so the step never recompiles after the sizes have been seen. Mosaic turns
off for the last ``data.augment.close_mosaic`` epochs. ``train.time_limit`` (minutes) sets the
schedule length after each epoch (at most ``train.epochs``) so that training plus the final
evaluation fit the limit; the length is part of the state, so this does not recompile.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from detjax.config import Config, dump_config, load_config
from detjax.train import optim
from detjax.train import step as step_lib
from detjax.train.checkpoint import Checkpointer
from detjax.train.state import StepConfig, TrainState, create_train_state

MODEL_KEYS = ("images", "boxes", "labels", "gt_mask")


# ----------------------------------------------------------------------------- builders


def build_datasets(cfg: Config):
    """``(train, val)`` :class:`detjax.data.DetectionDataset` from ``cfg.data``."""
    from detjax import data as data_lib

    d = cfg.data
    if d.format == "synthetic":
        kw = dict(num_train=d.num_train, num_val=d.num_val, seed=d.synthetic_seed,
                  image_size=d.synthetic_size, difficulty=d.difficulty)
        return (data_lib.synthetic_dataset(d.train_split, **kw),
                data_lib.synthetic_dataset(d.val_split, **kw))
    if d.path is None:
        raise ValueError(f"data.path is required for data.format={d.format!r}")
    kw = {"class_names": list(d.class_names)} if d.class_names and d.format == "voc" else {}
    return (data_lib.load_dataset(d.path, format=d.format, split=d.train_split, **kw),
            data_lib.load_dataset(d.path, format=d.format, split=d.val_split, **kw))


def build_loaders(cfg: Config, train_ds, val_ds):
    from detjax.data.loader import Loader, LoaderConfig
    from detjax.data.ops import AugmentConfig

    d = cfg.data
    aug = AugmentConfig(**d.augment.to_dict())
    common = dict(max_boxes=d.max_boxes, seed=cfg.seed)
    train = Loader(train_ds, LoaderConfig(
        batch_size=cfg.train.batch, image_size=d.imgsz, multi_scale=tuple(d.multi_scale),
        multi_scale_mode=d.multi_scale_mode,
        augment=True, aug=aug, epochs=cfg.train.epochs, workers=d.workers,
        repeat_threshold=d.repeat_threshold, **common))
    val = Loader(val_ds, LoaderConfig(
        batch_size=cfg.eval.batch, image_size=d.imgsz, augment=False, shuffle=False,
        drop_remainder=False, epochs=1, **common))
    return train, val


def build_model(cfg: Config, num_classes: int):
    from flax import nnx

    from detjax.models import create_model

    m = cfg.model
    head_kwargs = m.head_kwargs.to_dict() if isinstance(m.head_kwargs, Config) else None
    return create_model(m.name, num_classes=num_classes, head=m.head, p2=m.p2,
                        head_kwargs=head_kwargs, rngs=nnx.Rngs(cfg.seed))


def step_config(cfg: Config, iters_per_epoch: int, num_classes: int = 10, *,
                tx=None) -> StepConfig:
    """The step settings of ``cfg``; ``tx`` (an ``optax.GradientTransformation``) replaces the
    recipe of ``train.*`` (``optim.make_optimizer``; ``num_classes`` matters to ``auto`` only,
    ultralytics assumes 10 when the data does not say)."""
    t = cfg.train
    if tx is None:
        tx = optim.make_optimizer(cfg, iters_per_epoch=iters_per_epoch, num_classes=num_classes)
    loss = tuple(sorted(t.loss.to_dict().items())) if isinstance(t.loss, Config) else ()
    return StepConfig(tx=tx, precision=t.precision, ema_decay=t.ema_decay,
                      ema_tau=t.ema_tau, loss_hyp=loss, loss_times_batch=t.loss_times_batch)


# ----------------------------------------------------------------------------- parallel


class Runner:
    """Holds the state in the layout of one parallel mode and steps it.

    ``mode``: ``single`` (``jax.jit``), ``pmap`` (replicated state, batch split per device)
    or ``sharded`` (``jax.jit`` over a 1-D mesh, batch ``NamedSharding``-ed). ``host_state``
    gives the plain single-copy state for evaluation and checkpoints.
    """

    def __init__(self, mode: str, batch_size: int):
        n = jax.device_count()
        if mode == "auto":
            mode = "single" if n == 1 else "sharded"
        if mode not in ("single", "pmap", "sharded"):
            raise ValueError(f"train.parallel must be auto|single|pmap|sharded, got {mode!r}")
        if mode != "single" and batch_size % n:
            raise ValueError(f"train.batch={batch_size} must be divisible by the {n} devices")
        self.mode = mode
        self.mesh = step_lib.make_mesh() if mode == "sharded" else None

    def put(self, state: TrainState) -> step_lib.FlatState:
        """The state laid out for this mode, held flat (``step_lib.FlatState``)."""
        if self.mode == "pmap":
            state = step_lib.prepare_pmap_state(state)
        elif self.mode == "sharded":
            state = step_lib.replicate_on_mesh(state, self.mesh)
        flat = step_lib.FlatState.of(state)
        self._step = step_lib.make_flat_step(flat.treedef, self.mode, self.mesh)
        return flat

    def step(self, state: step_lib.FlatState, batch: dict):
        if self.mode == "pmap":
            leaves, metrics = self._step(state.leaves, step_lib.shard_batch(batch))
            metrics = jax.tree.map(lambda x: x[0], metrics)
        elif self.mode == "sharded":
            leaves, metrics = self._step(state.leaves, step_lib.global_batch(batch, self.mesh))
        else:
            leaves, metrics = self._step(state.leaves, batch)
        return step_lib.FlatState(leaves, state.treedef), metrics

    def set_epochs(self, state: step_lib.FlatState, epochs: int) -> step_lib.FlatState:
        value = np.int32(epochs)
        if self.mode == "pmap":
            value = step_lib.replicate(value)
        elif self.mode == "sharded":
            value = step_lib.replicate_on_mesh(value, self.mesh)
        return step_lib.FlatState.of(state.unflatten().replace(epochs=value))

    def host_state(self, state: step_lib.FlatState) -> TrainState:
        """The plain single-copy ``TrainState`` (evaluation, checkpoints)."""
        tree = state.unflatten()
        if self.mode == "pmap":
            from detjax.train.state import with_batchnorm_axis

            return with_batchnorm_axis(step_lib.unreplicate(tree), None)
        return tree


# ----------------------------------------------------------------------------- evaluation


@functools.partial(jax.jit, static_argnames=("conf_thres", "max_det", "use_ema", "multi_label"))
def predict_batch(state: TrainState, images, iou_thres, *, conf_thres: float, max_det: int,
                  use_ema: bool = True, multi_label: bool = True):
    """EMA forward + ultralytics postprocess: ``([B, max_det, 6], valid [B, max_det])``.
    ``multi_label`` (one candidate per anchor and class above ``conf_thres``) is what
    ultralytics' ``DetectionValidator`` uses."""
    from detjax.nms import non_max_suppression

    preds = step_lib.eval_forward(state, images, use_ema=use_ema)
    out = non_max_suppression(preds, conf_thres=conf_thres, iou_thres=iou_thres,
                              max_det=max_det, multi_label=multi_label)
    return out.detections, out.valid


def evaluate(state: TrainState, loader, cfg: Config, class_names=None,
             keep_images: int = 0) -> tuple[dict[str, Any], list]:
    """COCO metrics of ``state`` on one pass of ``loader``; also up to ``keep_images`` samples
    ``(image, (boxes, scores, labels), (gt_boxes, gt_labels))`` for the validation grid."""
    from detjax.eval import Evaluator

    e = cfg.eval
    ev = Evaluator(num_classes=len(class_names) if class_names else None,
                   class_names=class_names)
    # Ground truth from the data set itself (every box, in original pixels) when the loader
    # letterboxes without augmenting; the batch's copy is capped at data.max_boxes.
    records = getattr(getattr(loader, "dataset", None), "records", None)
    if getattr(getattr(loader, "config", None), "augment", True):
        records = None
    samples: list = []
    for batch in loader.epoch():
        det, valid = jax.device_get(predict_batch(
            state, batch["images"], np.float32(e.iou_thres), conf_thres=float(e.conf_thres),
            max_det=int(e.max_det), use_ema=bool(e.use_ema),
            multi_label=bool(e.multi_label)))
        ev.update_batch(det, valid, batch,
                        records=records if records is not None and "index" in batch else None)
        for i in range(len(det)):
            if len(samples) >= keep_images or not batch["image_mask"][i]:
                break
            box = det[i, :, :4]
            k = valid[i] & (det[i, :, 4] > 0.25) & np.all(box[:, 2:] > box[:, :2], axis=-1)
            g = batch["gt_mask"][i]
            samples.append((batch["images"][i], (det[i, k, :4], det[i, k, 4], det[i, k, 5]),
                            (batch["boxes"][i][g], batch["labels"][i][g])))
    return ev.compute(), samples


# ----------------------------------------------------------------------------- logging


class _CSV:
    def __init__(self, path: Path):
        self.path = path

    def write(self, row: dict[str, Any]) -> None:
        new = not self.path.exists()
        with open(self.path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(row))
            if new:
                w.writeheader()
            w.writerow(row)


def _truncate_csv(path: Path, column: str, keep_below: float) -> None:
    """Drops rows whose ``column`` >= ``keep_below`` (rows written after the checkpoint)."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if float(r[column]) < keep_below)


def _summary(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(result[k]) for k in ("map", "map50", "map75") if k in result}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True,
                leave=True, file=sys.stdout, mininterval=1.0)


# ----------------------------------------------------------------------------- main loop


def _schedule_fit(cfg: Config, epochs: int, done: int, elapsed: float, epoch_time,
                  eval_time: float) -> int:
    """Epochs that fit ``train.time_limit`` given the time so far: at most ``epochs`` (the
    configured upper bound); ``done`` (stop now) when no further epoch fits. Re-evaluated
    after every epoch, so the schedule also grows back when epochs get faster.

    ``epoch_time``: seconds per epoch, or ``epoch_time(e, total)``, the seconds of epoch ``e``
    in a schedule of ``total`` epochs (with progressive resizing the split point, and so the
    cost of an epoch, depends on the schedule length)."""
    limit = float(cfg.train.time_limit) * 60.0
    if limit <= 0 or (not callable(epoch_time) and epoch_time <= 0):
        return epochs
    left = limit - elapsed - eval_time
    cost = epoch_time if callable(epoch_time) else (lambda e, total: epoch_time)
    fit = done
    for total in range(done + 1, epochs + 1):
        if sum(cost(e, total) for e in range(done, total)) <= left:
            fit = total
    return int(max(fit, 1))


def train_and_evaluate(config: Config, workdir: str | os.PathLike, *, tx=None,
                       stop_after_epochs: int | None = None) -> dict[str, Any]:
    """Trains ``config`` in ``workdir`` (resuming from its latest checkpoint when
    ``config.resume``) and returns the final metrics. ``tx``: any ``optax.GradientTransformation``
    in place of the ``train.*`` recipe (its schedule is the caller's; it is called once per
    batch). ``stop_after_epochs`` ends this call early after that many epochs in total (used to
    test resume)."""
    t_start = time.time()
    cfg = config
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if cfg.distributed:
        jax.distributed.initialize()
    is_main = jax.process_index() == 0
    dump_config(cfg, workdir / "config.yaml")

    train_ds, val_ds = build_datasets(cfg)
    class_names = list(train_ds.class_names)
    train_loader, val_loader = build_loaders(cfg, train_ds, val_ds)
    nb = train_loader.num_batches(0)
    if nb < 1:
        raise ValueError(f"{len(train_ds)} training images < train.batch={cfg.train.batch}")
    model = build_model(cfg, len(class_names))
    state = create_train_state(model, step_config(cfg, nb, len(class_names), tx=tx))
    del model

    ckpt = Checkpointer(workdir / "checkpoints", max_to_keep=cfg.checkpoint.keep)
    best_ckpt = Checkpointer(workdir / "best", max_to_keep=1) if cfg.checkpoint.save_best else None
    epochs, start_epoch, best_map, train_time = int(cfg.train.epochs), 0, -1.0, 0.0
    metrics_csv, steps_csv = _CSV(workdir / "metrics.csv"), _CSV(workdir / "steps.csv")
    if cfg.resume and ckpt.latest_step() is not None:
        state, meta = ckpt.restore(state)
        train_loader.restore(meta["loader"])
        start_epoch, best_map = int(meta["epoch"]), float(meta["best_map"])
        epochs, train_time = int(meta["epochs"]), float(meta.get("train_time", 0.0))
        _truncate_csv(workdir / "steps.csv", "iteration", int(state.iteration))
        _truncate_csv(workdir / "metrics.csv", "epoch", start_epoch + 1)
        print(f"resumed from {ckpt.directory} at epoch {start_epoch} "
              f"(iteration {int(state.iteration)})")
    else:
        for f in ("steps.csv", "metrics.csv"):
            (workdir / f).unlink(missing_ok=True)
    state = state.replace(epochs=np.int32(epochs))
    train_loader.config = dataclasses.replace(train_loader.config, epochs=epochs)

    writer = None
    if cfg.log.tensorboard and is_main:
        from tensorboardX import SummaryWriter

        writer = SummaryWriter(str(workdir / "tb"))
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

    result: dict[str, Any] = {}
    last_eval_time, epoch_times, compile_time = 0.0, [], None
    epoch = start_epoch
    samples: list = []
    while epoch < epochs:
        t0 = time.time()
        bar = _progress(nb - train_loader.state.position, f"{epoch + 1}/{epochs}",
                        cfg.log.progress and is_main)
        sums: dict[str, float] = {}
        count, pending, images_seen, window = 0, [], 0, (time.time(), 0)
        it = int(runner.host_state(state).iteration)
        for batch in train_loader.epoch():
            state, m = runner.step(state, {k: batch[k] for k in MODEL_KEYS})
            if compile_time is None:  # the first step compiles: time it apart from training
                jax.block_until_ready(m)
                compile_time = time.time() - t0
                if is_main:
                    bar.write(f"train step compiled and ran once in {compile_time:.1f}s")
            pending.append((it, m))
            it += 1
            images_seen += len(batch["images"])
            bar.update(1)
            if len(pending) >= cfg.log.every:
                count = _flush(pending, sums, count, steps_csv, writer, epoch, bar,
                               images_seen - window[1], window[0])
                pending, window = [], (time.time(), images_seen)
        count = _flush(pending, sums, count, steps_csv, writer, epoch, bar,
                       images_seen - window[1], window[0])
        bar.close()
        epoch += 1
        epoch_time = time.time() - t0
        first = len(epoch_times) == 0
        steady_time = epoch_time - (compile_time or 0.0) if first else epoch_time
        steady_time *= nb / max(nb - 1, 1) if first else 1.0
        epoch_times.append(steady_time / _pixels(train_loader.config, epoch - 1))
        train_time += epoch_time
        row = {"epoch": epoch, "iteration": it, "time_s": train_time,
               "images_per_s": images_seen / epoch_time,
               **{f"train/{k}": v / max(count, 1) for k, v in sums.items()},
               "val/map": "", "val/map50": "", "val/map75": "", "eval_time_s": ""}

        # shorten the schedule to the time limit (the first epoch includes compilation);
        # epoch cost = seconds per pixel x the epoch's pixels (sizes vary when multi-scale)
        per_pixel = float(np.median(epoch_times))
        eval_estimate = (1.3 * last_eval_time if last_eval_time else 30.0 + 0.5 * per_pixel
                         * cfg.data.imgsz ** 2 * len(val_ds) / (nb * cfg.train.batch))
        cost = functools.partial(_epoch_cost, per_pixel, train_loader.config)
        new_epochs = _schedule_fit(cfg, int(cfg.train.epochs), epoch, time.time() - t_start,
                                   cost, eval_estimate + 5.0)
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
            result, samples = evaluate(host, val_loader, cfg, class_names,
                                       keep_images=16 if last else 0)
            last_eval_time = time.time() - te
            row.update({f"val/{k}": v for k, v in _summary(result).items()})
            row["eval_time_s"] = last_eval_time
            if is_main:
                print(f"epoch {epoch}/{epochs}: mAP50-95 {result['map']:.4f}  mAP50 "
                      f"{result['map50']:.4f}  ({last_eval_time:.1f}s eval)")
        if is_main:
            metrics_csv.write(row)
            if writer is not None:
                for k, v in row.items():
                    if k != "epoch" and v != "":
                        writer.add_scalar(f"epoch/{k}", v, epoch)
                writer.flush()
        improved = row["val/map"] != "" and float(result["map"]) > best_map
        if improved:
            best_map = float(result["map"])
        meta = {"epoch": epoch, "epochs": epochs, "loader": train_loader.state.to_dict(),
                "best_map": best_map, "train_time": train_time, "metrics": row,
                "class_names": class_names, "iters_per_epoch": nb}
        if last or epoch % max(int(cfg.checkpoint.every), 1) == 0:
            ckpt.save(epoch, host, meta)
        if improved and best_ckpt is not None:
            best_ckpt.save(epoch, host, meta)
        if stop_after_epochs is not None and epoch >= stop_after_epochs and not last:
            ckpt.save(epoch, host, meta)
            return {"stopped_at_epoch": epoch}

    if not result:  # resumed a finished run: report its numbers again
        print(f"{workdir} already holds a finished run ({epochs} epochs); evaluating it. "
              "Use another workdir or resume=false to train anew.")
        result, samples = evaluate(runner.host_state(state), val_loader, cfg, class_names,
                                   keep_images=16)
    if writer is not None:
        writer.close()
    final = {**_summary(result), "epochs": epochs, "best_map": best_map,
             "train_time_s": train_time, "total_time_s": time.time() - t_start,
             "iterations": int(runner.host_state(state).iteration)}
    if cfg.log.plots and is_main and result:
        final["plots"] = _plots(workdir, result, samples, class_names)
    if is_main:
        print(f"done: mAP50-95 {final.get('map', float('nan')):.4f}, mAP50 "
              f"{final.get('map50', float('nan')):.4f} after {epochs} epochs, "
              f"{final['total_time_s'] / 60:.1f} min; results in {workdir}")
    ckpt.close()
    if best_ckpt is not None:
        best_ckpt.close()
    return final


def _pixels(loader_config, epoch: int, epochs: int | None = None) -> float:
    """Mean pixels per image of ``epoch``'s batches in a schedule of ``epochs`` (default: the
    loader's) epochs; the unit of the epoch-time estimate."""
    return float(np.mean([s * s for s in loader_config.epoch_sizes(epoch, epochs)]))


def _epoch_cost(per_pixel: float, loader_config, epoch: int, total: int) -> float:
    """Estimated seconds of ``epoch`` in a schedule of ``total`` epochs."""
    return per_pixel * _pixels(loader_config, epoch, total)


def _flush(pending, sums, count, steps_csv, writer, epoch, bar, images, since) -> int:
    """Fetches the pending step metrics (waiting for them), logs them, updates the running
    means; images/s counts ``images`` over the time from ``since`` to the fetch."""
    if not pending:
        return count
    fetched = jax.device_get([m for _, m in pending])
    ips = images / max(time.time() - since, 1e-9)
    for (it, _), m in zip(pending, fetched):
        m = {k: float(np.asarray(v)) for k, v in m.items()}
        for k in ("loss", *sorted(k for k in m if k not in _NON_LOSS and k != "loss")):
            sums[k] = sums.get(k, 0.0) + m[k]
        count += 1
        steps_csv.write({"iteration": it, "epoch": epoch, **m})
        if writer is not None:
            for k, v in m.items():
                writer.add_scalar(f"train/{k}", v, it)
    losses = {k: v / count for k, v in sums.items() if k != "loss"}
    last = {k: float(np.asarray(v)) for k, v in fetched[-1].items()}
    bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()}, "lr": f"{last['lr']:.2e}",
                     "img/s": f"{ips:.1f}"}, refresh=False)
    return count


_NON_LOSS = ("lr", "lr_bias", "momentum", "grad_norm", "optimizer_step", "finite", "loss_scale")


def _plots(workdir: Path, result: dict, samples: list, class_names) -> list[str]:
    """``results.png``, ``PR_curve.png`` and ``val_batch.png`` via ``detjax.plots``; a failing
    plot is reported and skipped (never lose a finished run to a figure)."""
    from detjax import plots

    with open(workdir / "metrics.csv", newline="") as f:
        header = next(csv.reader(f))
    columns = [c for c in header if c.startswith(("train/", "val/"))] + ["images_per_s"]
    jobs = [("results.png", lambda p: plots.plot_metrics(str(workdir / "metrics.csv"), p,
                                                         columns=columns)),
            ("PR_curve.png", lambda p: plots.plot_pr_curve(result, p))]
    if samples:
        jobs.append(("val_batch.png", lambda p: plots.plot_val_grid(
            [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples], p,
            class_names=class_names)))
    out = []
    for name, make in jobs:
        try:
            out.append(make(str(workdir / name)))
        except Exception as e:  # noqa: BLE001
            print(f"warning: {name} failed: {e!r}")
    return out


# ----------------------------------------------------------------------------- CLI


USAGE = """usage: detjax train [config.yaml] [key=value ...]

Trains a detector. With no arguments: the nano model on the embedded synthetic data set
(configs/default.yaml). Examples:
  detjax train                                  # the default run
  detjax train configs/yolov8s.yaml epochs=50   # another config, with an override
  detjax train data.format=yolo data.path=data/my.yaml workdir=runs/mine
Every key is listed with a comment in configs/default.yaml; results go to `workdir`."""


def enable_compile_cache(path: str | None = None) -> str:
    """Persistent XLA compilation cache (``$DETJAX_CACHE/xla``, default ``~/.cache/detjax/xla``):
    a second run with the same shapes loads the compiled step instead of compiling it."""
    root = os.environ.get("DETJAX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                           "detjax")
    path = path or os.path.join(root, "xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    path = None
    if argv and "=" not in argv[0]:
        path, argv = argv[0], argv[1:]
    try:
        cfg = load_config(path, argv)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"detjax train: {e}", file=sys.stderr)
        return 2
    if cfg.compile_cache:
        enable_compile_cache()
    final = train_and_evaluate(cfg, cfg.workdir)
    ok = all(math.isfinite(v) for v in final.values() if isinstance(v, float))
    return 0 if ok else 1
