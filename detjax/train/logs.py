"""What a training run writes while it runs: ``steps.csv`` (loss per logged iteration),
``metrics.csv`` (one row per epoch), TensorBoard events in ``tb/``, the progress bar, and the
PNG plots at the end (``results.png``, ``PR_curve.png``, ``val_batch.png``)."""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

# step metrics that are not loss components (not averaged into the epoch's train/ columns)
NON_LOSS = ("lr", "lr_bias", "momentum", "grad_norm", "optimizer_step", "finite", "loss_scale")


def append_csv_row(path: Path, row: dict[str, Any]) -> None:
    """Appends ``row`` to the CSV file ``path``, writing the header first for a new file."""
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path: Path, column: str, keep_below: float) -> None:
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


def summary(result: dict[str, Any]) -> dict[str, float]:
    """``map``, ``map50``, ``map75`` of a COCO result as floats."""
    return {k: float(result[k]) for k in ("map", "map50", "map75") if k in result}


def progress(total: int, desc: str, enabled: bool):
    """A tqdm bar on stdout (disabled: a silent one with the same methods)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True,
                leave=True, file=sys.stdout, mininterval=1.0)


class TrainLog:
    """``steps.csv``, ``metrics.csv`` and TensorBoard of one run folder.

    ``enabled=False`` (a non-main process) writes nothing. Step metrics stay on the device
    until :meth:`flush_steps`, so logging never waits for a step that is still running.
    """

    def __init__(self, workdir: Path, *, tensorboard: bool, enabled: bool = True):
        self.workdir, self.enabled = Path(workdir), enabled
        self.steps_csv, self.metrics_csv = self.workdir / "steps.csv", self.workdir / "metrics.csv"
        self.writer = None
        if tensorboard and enabled:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(str(self.workdir / "tb"))

    def start(self, iteration: int | None = None, epoch: int | None = None) -> None:
        """A new run clears the CSV files; a resumed one (``iteration``, ``epoch`` of the
        checkpoint) drops the rows written after it."""
        if not self.enabled:
            return
        if iteration is None:
            self.steps_csv.unlink(missing_ok=True)
            self.metrics_csv.unlink(missing_ok=True)
        else:
            truncate_csv(self.steps_csv, "iteration", iteration)
            truncate_csv(self.metrics_csv, "epoch", (epoch or 0) + 1)

    def flush_steps(self, pending: list, sums: dict[str, float], count: int, epoch: int, bar,
                    images: int, since: float) -> int:
        """Fetches the pending ``(iteration, metrics)`` (waiting for them), logs them and adds
        them to the running sums; returns the new count. images/s counts ``images`` over the
        time from ``since`` to the fetch."""
        if not pending:
            return count
        fetched = jax.device_get([m for _, m in pending])
        ips = images / max(time.time() - since, 1e-9)
        for (it, _), m in zip(pending, fetched):
            m = {k: float(np.asarray(v)) for k, v in m.items()}
            for k in ("loss", *sorted(k for k in m if k not in NON_LOSS and k != "loss")):
                sums[k] = sums.get(k, 0.0) + m[k]
            count += 1
            if self.enabled:
                append_csv_row(self.steps_csv, {"iteration": it, "epoch": epoch, **m})
            if self.writer is not None:
                for k, v in m.items():
                    self.writer.add_scalar(f"train/{k}", v, it)
        losses = {k: v / count for k, v in sums.items() if k != "loss"}
        last = {k: float(np.asarray(v)) for k, v in fetched[-1].items()}
        bar.set_postfix({**{k: f"{v:.3f}" for k, v in losses.items()},
                         "lr": f"{last['lr']:.2e}", "img/s": f"{ips:.1f}"}, refresh=False)
        return count

    def write_epoch(self, row: dict[str, Any]) -> None:
        """One ``metrics.csv`` row (and its TensorBoard scalars) for ``row['epoch']``."""
        if not self.enabled:
            return
        append_csv_row(self.metrics_csv, row)
        if self.writer is not None:
            for k, v in row.items():
                if k != "epoch" and v != "":
                    self.writer.add_scalar(f"epoch/{k}", v, row["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def save_plots(workdir: Path, result: dict, samples: list, class_names) -> list[str]:
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
