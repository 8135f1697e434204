"""Genetic hyperparameter evolution, as ultralytics' classic ``Tuner`` (8.x ``_mutate``).

Each generation starts from a parent drawn from the best ``n = 5`` rows of the history, with
probability proportional to ``fitness - min(fitness) + 1e-6`` (``parent='single'``). Every numeric
key is multiplied by ``v = clip(1 + gain * [u < mutation] * randn * r * sigma, 0.3, 3.0)`` with
``mutation = 0.8``, ``sigma = 0.2``, ``u`` uniform per key and ``r`` uniform per generation, redrawn
until some key changes; then the value is clipped to its bounds and rounded (5 digits). A ``choice``
key is redrawn uniformly with probability ``mutation * gain``. With an empty history the first
generation is the base config's own values.

The history is a CSV (``evolve.csv``: ``fitness``, then one column per key), appended after every
generation, so a killed evolution resumes from it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from detjax.tune.space import SearchSpace


def read_history(path: Path, space: SearchSpace) -> list[tuple[float, dict[str, Any]]]:
    """``[(fitness, {key: value})]`` from an evolution CSV; rows of other keys are an error."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for i, row in enumerate(rows, start=2):
        missing = [k for k in ["fitness", *space.keys] if k not in row]
        if missing:
            raise ValueError(f"{path}:{i}: columns {missing} missing; the file was written for "
                             "another search space (use another --out folder)")
        values = {p.key: _parse(row[p.key], p.kind) for p in space.params}
        out.append((float(row["fitness"]), values))
    return out


def _parse(text: str, kind: str) -> Any:
    if kind == "choice":
        import yaml

        return yaml.safe_load(text)
    return int(float(text)) if kind == "int" else float(text)


def append_history(path: Path, space: SearchSpace, fitness: float,
                   values: Mapping[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["fitness", *space.keys])
        w.writerow([f"{fitness:.6g}", *(values[k] for k in space.keys)])


def mutate(history: list[tuple[float, Mapping[str, Any]]], space: SearchSpace,
           base: Mapping[str, Any], rng: np.random.Generator, *, n: int = 5,
           mutation: float = 0.8, sigma: float = 0.2) -> dict[str, Any]:
    """The next generation's values (see the module docstring); ``base`` = the config's own
    values, used when the history is empty."""
    if not history:
        start = space.start_values(base)
        return {p.key: start[p.key] if p.key in start else _mid(p) for p in space.params}
    ranked = sorted(history, key=lambda row: -row[0])[:n]
    fitness = np.array([row[0] for row in ranked])
    weights = fitness - fitness.min() + 1e-6
    parent = ranked[int(rng.choice(len(ranked), p=weights / weights.sum()))][1]
    numeric = [p for p in space.params if p.kind != "choice"]
    gains = np.array([p.gain for p in numeric])
    for _ in range(1000):
        v = np.ones(len(numeric))
        while len(numeric) and np.all(v == 1):
            v = (gains * (rng.random(len(numeric)) < mutation) * rng.standard_normal(len(numeric))
                 * rng.random() * sigma + 1).clip(0.3, 3.0)
        child = {p.key: p.clip(float(parent[p.key]) * vi) for p, vi in zip(numeric, v)}
        for p in space.params:
            if p.kind == "choice":
                redraw = rng.random() < mutation * p.gain
                child[p.key] = (p.choices[int(rng.integers(len(p.choices)))] if redraw
                                else parent[p.key])
        if all(child != dict(row[1]) for row in history):
            return child
    return child  # every draw was seen before (a tiny space): train it again


def _mid(p) -> Any:
    if p.kind == "choice":
        return p.choices[0]
    mid = math.sqrt(p.low * p.high) if p.kind == "log" else (p.low + p.high) / 2
    return p.clip(mid)
