"""Run configuration: ``configs/default.yaml`` + an optional YAML file + ``key=value`` overrides.

Contract (TRAIN helper, issue 6): ``load_config(path: str | None, overrides: list[str]) -> Config``.
``Config`` is a nested mapping with both attribute and item access (``cfg.train.lr0 ==
cfg["train"]["lr0"]``). ``configs/default.yaml`` lists every valid key with a one-line comment;
any other key, in a file or an override, is a ``ValueError`` naming the nearest valid key (the
way ultralytics answers ``lr=0.1`` with ``lr0``).

Overrides are ``dotted.key=value`` with the value parsed as YAML (``train.epochs=5``,
``data.flip_lr=0.0``, ``model.name=yolov8s``, ``data.multi_scale_sizes=[256,320]``). A bare
leaf name is accepted when it is unique across sections (``epochs=5``, ``imgsz=320``) or,
when several sections have it, names the ``train`` one (``batch=8`` is ``train.batch``).

A config file may name another with ``base: other.yaml`` (resolved next to it, then in
``configs/``); it is applied first. Example::

    cfg = load_config("configs/yolov8s.yaml", ["epochs=3", "train.batch=8"])
    cfg.train.epochs   # 3
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

# A wheel ships configs/ as the package detjax.configs; a source checkout has it at the top.
_PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"
CONFIG_DIR = (_PACKAGED_CONFIGS if _PACKAGED_CONFIGS.is_dir()
              else Path(__file__).resolve().parent.parent / "configs")
DEFAULT_CONFIG = CONFIG_DIR / "default.yaml"


class Config(dict):
    """A nested ``dict`` with attribute access; sub-mappings are ``Config`` too.

    ``cfg.a.b`` is ``cfg["a"]["b"]``; a missing attribute raises ``AttributeError`` naming the
    nearest key. ``to_dict()`` gives plain nested dicts (for YAML / JSON dumps).
    """

    def __init__(self, data: Mapping[str, Any] | None = None):
        super().__init__()
        for key, value in (data or {}).items():
            self[key] = Config(value) if isinstance(value, Mapping) else value

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise AttributeError(f"config has no key {name!r}{hint}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = Config(value) if isinstance(value, Mapping) else value

    def __deepcopy__(self, memo: dict) -> Config:
        return Config(copy.deepcopy(self.to_dict(), memo))

    def to_dict(self) -> dict[str, Any]:
        return {k: v.to_dict() if isinstance(v, Config) else v for k, v in self.items()}

    def flat(self, prefix: str = "") -> dict[str, Any]:
        """``{"train.lr0": 0.01, ...}``: every leaf under its dotted key."""
        out: dict[str, Any] = {}
        for key, value in self.items():
            dotted = f"{prefix}{key}"
            if isinstance(value, Config):
                out.update(value.flat(dotted + "."))
            else:
                out[dotted] = value
        return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config file must hold a mapping, got {type(data).__name__}")
    return data


def resolve_config_path(path: str | Path, relative_to: Path | None = None) -> Path:
    """Finds ``path`` as given, next to ``relative_to``, or in ``configs/`` (``.yaml`` optional)."""
    name = str(path)
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    candidates.append(CONFIG_DIR / name)
    if not name.endswith((".yaml", ".yml")):
        candidates += [Path(c.as_posix() + ".yaml") for c in list(candidates)]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    shipped = sorted(p.name for p in CONFIG_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"config file {name!r} not found (shipped configs: {shipped})")


def _nearest_hint(key: str, valid: Iterable[str]) -> str:
    """``"; nearest valid key: 'train.lrf' (or 'train.lr0')"``: up to three close keys."""
    valid = list(valid)
    leaves: dict[str, list[str]] = {}
    for v in valid:
        leaves.setdefault(v.rsplit(".", 1)[-1], []).append(v)
    close = difflib.get_close_matches(key, valid, n=3, cutoff=0.5)
    if not close:
        for leaf in difflib.get_close_matches(key.rsplit(".", 1)[-1], list(leaves), n=3,
                                              cutoff=0.5):
            close += leaves[leaf]
    if not close:
        return ""
    more = f" (or {', '.join(repr(c) for c in close[1:3])})" if len(close) > 1 else ""
    return f"; nearest valid key: {close[0]!r}{more}"


def _check_type(key: str, default: Any, value: Any) -> None:
    if default is None or value is None:
        return
    numeric = (int, float)
    if isinstance(default, bool) or isinstance(value, bool):
        ok = isinstance(default, bool) and isinstance(value, bool)
    elif isinstance(default, numeric):
        ok = isinstance(value, numeric)
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise TypeError(f"config key {key!r} expects {type(default).__name__} (default "
                        f"{default!r}), got {type(value).__name__} {value!r}")


def _merge(base: Config, update: Mapping[str, Any], *, source: str, prefix: str = "") -> None:
    """Merges ``update`` into ``base`` in place; keys must already exist in ``base``."""
    for key, value in update.items():
        dotted = f"{prefix}{key}"
        if key not in base:
            valid = [f"{prefix}{k}" for k in base]
            hint = _nearest_hint(dotted, valid)
            raise ValueError(f"{source}: unknown config key {dotted!r}{hint}")
        if isinstance(base[key], Config):
            if not isinstance(value, Mapping):
                raise TypeError(f"{source}: config key {dotted!r} is a section; expected a "
                                f"mapping, got {value!r}")
            _merge(base[key], value, source=source, prefix=dotted + ".")
        else:
            if isinstance(value, Mapping) and base[key] is not None:
                raise TypeError(f"{source}: config key {dotted!r} is a value, not a section")
            _check_type(dotted, base[key], value)
            base[key] = Config(value) if isinstance(value, Mapping) else value


def _load_file_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[Path, dict]]:
    if path.resolve() in seen:
        raise ValueError(f"{path}: circular 'base:' chain")
    data = _read_yaml(path)
    base = data.pop("base", None)
    chain: list[tuple[Path, dict]] = []
    if base is not None:
        base_path = resolve_config_path(base, relative_to=path.parent)
        chain = _load_file_chain(base_path, (*seen, path.resolve()))
    return [*chain, (path, data)]


def parse_override(text: str, valid_keys: Iterable[str]) -> tuple[str, Any]:
    """``"train.lr0=0.02"`` -> ``("train.lr0", 0.02)``; bare unique leaf names are expanded."""
    if "=" not in text:
        raise ValueError(f"override {text!r} must look like key=value (e.g. train.epochs=5)")
    key, raw = text.split("=", 1)
    key = key.strip().lstrip("-")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    valid = list(valid_keys)
    if key in valid:
        return key, value
    matches = [v for v in valid if v.rsplit(".", 1)[-1] == key]
    preferred = [m for m in matches if m.startswith("train.")]
    if len(matches) == 1 or len(preferred) == 1:
        return (matches if len(matches) == 1 else preferred)[0], value
    if len(matches) > 1:
        raise ValueError(f"override key {key!r} is ambiguous; use one of {matches}")
    raise ValueError(f"unknown config key {key!r}{_nearest_hint(key, valid)}")


def _set_dotted(cfg: Config, dotted: str, value: Any) -> dict[str, Any]:
    update: dict[str, Any] = {}
    node = update
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return update


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Default config, then ``path`` (and its ``base:`` chain), then ``key=value`` overrides.

    Raises ``ValueError`` for an unknown key (naming the nearest valid one), ``TypeError`` for a
    value whose type does not fit the key's default, ``FileNotFoundError`` for a missing file.
    """
    cfg = Config(_read_yaml(DEFAULT_CONFIG))
    if path is not None:
        for file_path, data in _load_file_chain(resolve_config_path(path)):
            if file_path.resolve() != DEFAULT_CONFIG.resolve():
                _merge(cfg, data, source=str(file_path))
    valid = list(cfg.flat())
    # sections may be overridden whole with a YAML mapping, e.g. data.augment={...}
    for text in overrides:
        key, value = parse_override(text, valid)
        _merge(cfg, _set_dotted(cfg, key, value), source=f"override {text!r}")
    return cfg


def dump_config(cfg: Config, path: str | Path) -> None:
    """Writes ``cfg`` as YAML (the run folder keeps the exact config it ran with)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)
