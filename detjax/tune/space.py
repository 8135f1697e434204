"""A hyperparameter search space over config keys, and the fitness a tuner maximises.

A space file (``configs/tune.yaml``) maps dotted config keys to a distribution::

    fitness: {map50: 0.1, map: 0.9}          # ultralytics' fitness: 0.1 mAP50 + 0.9 mAP50-95
    space:
      train.lr0: {type: log, low: 1.0e-4, high: 1.0e-2}       # log-uniform
      train.momentum: {type: float, low: 0.6, high: 0.98, gain: 0.3}
      data.imgsz: {type: choice, choices: [128, 160, 192]}
      train.loss.box_gain: {type: float, low: 1.0, high: 20.0}

``type`` is ``float`` (uniform), ``log`` (log-uniform), ``int`` or ``choice``. ``gain`` (default 1)
scales the mutation strength of a key in ``detjax tune --method evolve`` (ultralytics' third entry
of a search-space tuple). Keys under a mapping-valued config key that defaults to null
(``train.loss``, ``model.head_kwargs``) are set inside that mapping, so ``train.loss.box_gain``
works.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from detjax.config import Config, load_config

KINDS = ("float", "log", "int", "choice")
DEFAULT_FITNESS = {"map50": 0.1, "map": 0.9}


@dataclasses.dataclass(frozen=True)
class Param:
    """One searched config key: ``kind`` in ``KINDS``; ``low``/``high`` for numbers,
    ``choices`` for ``choice``; ``gain`` scales its evolution mutation."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    gain: float = 1.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"search space {self.key!r}: type must be one of {KINDS}, "
                             f"got {self.kind!r}")
        if self.kind == "choice":
            if not self.choices:
                raise ValueError(f"search space {self.key!r}: type choice needs a non-empty "
                                 "'choices' list")
            return
        if self.low is None or self.high is None or not self.low <= self.high:
            raise ValueError(f"search space {self.key!r}: needs numbers low <= high, got "
                             f"low={self.low!r} high={self.high!r}")
        if self.kind == "log" and self.low <= 0:
            raise ValueError(f"search space {self.key!r}: type log needs low > 0, got {self.low}")

    def clip(self, value: Any) -> Any:
        """``value`` inside the bounds (ints rounded; floats rounded to 5 digits as ultralytics
        does); a choice outside ``choices`` is an error."""
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.key}: {value!r} is not one of {list(self.choices)}")
            return value
        value = min(max(float(value), self.low), self.high)
        if self.kind == "int":
            return int(round(value))
        return round(value, 5) if self.kind == "float" else float(f"{value:.5g}")


@dataclasses.dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]
    fitness_weights: tuple[tuple[str, float], ...] = tuple(DEFAULT_FITNESS.items())

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def start_values(self, base: Mapping[str, Any]) -> dict[str, Any]:
        """The config's own values (``base``: flat dotted keys) of the searched keys, inside
        the space: numbers clipped to their bounds; a key the config leaves unset (None) and
        a choice outside ``choices`` (e.g. ``imgsz: 640`` against ``[128, 160, 192]``) are
        left out. The first trial of every method trains these."""
        start = {}
        for p in self.params:
            value = base.get(p.key)
            if value is not None and (p.kind != "choice" or value in p.choices):
                start[p.key] = p.clip(value)
        return start

    def fitness(self, metrics: Mapping[str, Any]) -> float:
        """Weighted sum of metrics (default ``0.1 * map50 + 0.9 * map``, ultralytics
        ``Metric.fitness``); a missing or non-finite metric counts as 0."""
        total = 0.0
        for name, weight in self.fitness_weights:
            value = float(metrics.get(name, 0.0) or 0.0)
            total += weight * (value if math.isfinite(value) else 0.0)
        return total


def parse_space(data: Mapping[str, Any], *, source: str = "search space") -> SearchSpace:
    """A :class:`SearchSpace` from the mapping of a space file (see the module docstring)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("space"), Mapping):
        raise ValueError(f"{source}: expected a mapping with a 'space' section of "
                         "{config.key: {type, low, high | choices}}")
    params = []
    for key, spec in data["space"].items():
        if not isinstance(spec, Mapping):
            raise ValueError(f"{source}: {key!r} must map to {{type, low, high}} or "
                             f"{{type: choice, choices}}, got {spec!r}")
        unknown = set(spec) - {"type", "low", "high", "choices", "gain"}
        if unknown:
            raise ValueError(f"{source}: {key!r} has unknown fields {sorted(unknown)}; valid: "
                             "type, low, high, choices, gain")
        params.append(Param(key=str(key), kind=str(spec.get("type", "float")),
                            low=spec.get("low"), high=spec.get("high"),
                            choices=tuple(spec.get("choices") or ()),
                            gain=float(spec.get("gain", 1.0))))
    if not params:
        raise ValueError(f"{source}: the 'space' section is empty")
    weights = data.get("fitness") or DEFAULT_FITNESS
    if not isinstance(weights, Mapping):
        raise ValueError(f"{source}: 'fitness' must map metric names to weights, got {weights!r}")
    return SearchSpace(tuple(params), tuple((str(k), float(v)) for k, v in weights.items()))


def load_space(path: str | Path) -> SearchSpace:
    """Reads a space file; also checks that every key exists in the run config."""
    from detjax.config import resolve_config_path

    path = resolve_config_path(path)
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    space = parse_space(data, source=str(path))
    apply_params(load_config(None, []), {p.key: _example(p) for p in space.params})
    return space


def _example(p: Param) -> Any:
    return p.choices[0] if p.kind == "choice" else p.clip(p.low)


def apply_params(config: Config, params: Mapping[str, Any]) -> Config:
    """A copy of ``config`` with each dotted key of ``params`` set. A key below a config value
    that holds a mapping or null (``train.loss.box_gain``) is set inside that mapping.
    Unknown keys raise ``ValueError`` naming the nearest valid key."""
    import copy

    from detjax.config import _check_type, _nearest_hint

    out = copy.deepcopy(config)
    valid = list(config.flat())
    for key, value in params.items():
        node, parts = out, key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.get(part) if isinstance(node, Mapping) else None
            if child is None and isinstance(node, Mapping) and part in node:
                node[part] = Config({})  # a null mapping-valued key (train.loss: null)
                child = node[part]
            if not isinstance(child, Mapping):
                prefix = ".".join(parts[: i + 1])
                raise ValueError(f"unknown config key {key!r} (no section {prefix!r})"
                                 f"{_nearest_hint(key, valid)}")
            node = child
        leaf = parts[-1]
        if key in valid:
            _check_type(key, config.flat()[key], value)
        elif not any(key.startswith(v + ".") for v in valid):
            raise ValueError(f"unknown config key {key!r}{_nearest_hint(key, valid)}")
        node[leaf] = value
    return out
