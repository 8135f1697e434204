"""Orbax checkpoints of a ``TrainState`` plus JSON metadata (epoch, loader state, best mAP).

Layout of a run folder::

    <workdir>/checkpoints/<step>/   periodic + final saves (the last ``max_to_keep``)
    <workdir>/best/<step>/          the best-by-mAP save (one kept)
    <workdir>/config.yaml           the exact config of the run

Each save holds two items: ``state`` (every array leaf of the ``TrainState`` under a flat,
stable key, so any pytree layout round-trips exactly) and ``meta`` (JSON: ``epoch``,
``loader`` = ``Loader.state.to_dict()``, ``best_map``, last metrics, ...). The optimiser state
is Optax's own pytree and is saved leaf by leaf like the rest. Restoring needs a template state
with the same structure (built from the same config and optimiser), which also restores the
static parts (graph definitions, step config).

Crash safety: orbax writes a save into a temporary folder and renames it into place only
after every file is written (``AtomicRenameTemporaryPath``); a save killed half way leaves
only the temporary folder, which ``latest_step`` ignores and the next save cleans up, so
the last complete checkpoint stays the one restored.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from detjax.train.state import TrainState


def _key(i: int, path) -> str:
    return f"{i:05d}_" + re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(path)).strip("_")


def state_to_arrays(state: TrainState) -> dict[str, np.ndarray]:
    """Every array leaf of ``state`` under a stable flat key (host NumPy copies)."""
    leaves = jax.tree_util.tree_flatten_with_path(state)[0]
    return {_key(i, p): np.asarray(jax.device_get(x)) for i, (p, x) in enumerate(leaves)}


def arrays_to_state(template: TrainState, arrays: dict[str, Any]) -> TrainState:
    """Inverse of ``state_to_arrays`` given a template with the same structure."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    values = []
    for i, (path, leaf) in enumerate(leaves):
        key = _key(i, path)
        if key not in arrays:
            raise ValueError(f"checkpoint has no entry {key!r}: it was written for a different "
                             "model or config")
        value = np.asarray(arrays[key])
        if value.shape != np.shape(leaf):
            raise ValueError(f"checkpoint entry {key!r} has shape {value.shape}, the state "
                             f"expects {np.shape(leaf)}")
        values.append(jax.numpy.asarray(value, dtype=leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


class Checkpointer:
    """A thin wrapper around ``ocp.CheckpointManager`` for one folder of saves."""

    def __init__(self, directory: str | os.PathLike, *, max_to_keep: int | None = 2):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=False)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def save(self, step: int, state: TrainState, meta: dict[str, Any]) -> None:
        """Writes ``state`` and ``meta`` as checkpoint ``step`` (overwrites an equal step)."""
        if step in self._manager.all_steps():
            self._manager.delete(step)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state_to_arrays(state)),
                                  meta=ocp.args.JsonSave(_jsonable(meta)))
        self._manager.save(step, args=args, force=True)
        self._manager.wait_until_finished()

    def latest_step(self) -> int | None:
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def restore(self, template: TrainState, step: int | None = None
                ) -> tuple[TrainState, dict[str, Any]]:
        """``(state, meta)`` of ``step`` (default: the latest complete save)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                    for k, v in state_to_arrays(template).items()}
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                  meta=ocp.args.JsonRestore())
        out = self._manager.restore(step, args=args)
        return arrays_to_state(template, out["state"]), dict(out["meta"])

    def restore_meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        out = self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def close(self) -> None:
        self._manager.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)) or hasattr(value, "__array__"):
        arr = np.asarray(value)
        return arr.item() if arr.ndim == 0 else arr.tolist()
    return value
