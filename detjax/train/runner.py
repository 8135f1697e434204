"""The train state laid out for one data-parallel mode and stepped there.

``single`` (``jax.jit``), ``pmap`` (replicated state, batch split per device) or ``sharded``
(``jax.jit`` over a 1-D mesh, batch ``NamedSharding``-ed). The state is held as a flat leaf list
(``step.FlatState``) between steps: jitting on the ``TrainState`` itself rebuilt its ~1000
``nnx.Variable`` leaves in Python on every call.
"""

from __future__ import annotations

import jax
import numpy as np

from detjax.train import step as step_lib
from detjax.train.state import TrainState


class Runner:
    """Holds the state in the layout of one parallel mode and steps it; ``host_state`` gives
    the plain single-copy state for evaluation and checkpoints."""

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
        """One iteration: ``(new flat state, metrics)``; the input state is donated."""
        if self.mode == "pmap":
            leaves, metrics = self._step(state.leaves, step_lib.shard_batch(batch))
            metrics = jax.tree.map(lambda x: x[0], metrics)
        elif self.mode == "sharded":
            leaves, metrics = self._step(state.leaves, step_lib.global_batch(batch, self.mesh))
        else:
            leaves, metrics = self._step(state.leaves, batch)
        return step_lib.FlatState(leaves, state.treedef), metrics

    def set_epochs(self, state: step_lib.FlatState, epochs: int) -> step_lib.FlatState:
        """The state with the schedule length set to ``epochs`` (no recompilation)."""
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
