"""Model weights in safetensors files, and starting a model from pretrained weights.

A weights file holds every ``nnx.Param`` and ``nnx.BatchStat`` of a model under its dotted
path (:mod:`detjax.models.variables`; kernels HWIO, float32) and string metadata whose values
are JSON: ``format`` (``"detjax"``), ``num_classes``, and, when known, ``model`` (a scale name),
``p2``, ``class_names``, ``source`` and ``license``. safetensors is plain tensors, so a file
loads without unpickling code, and without torch.

:func:`load_pretrained` is how training starts from someone else's weights: it also reads an
ultralytics ``.pt`` file (converting it on the fly where torch and ultralytics are installed) and
tolerates a different class count by keeping the model's fresh class branch, as ultralytics does
(it copies only the tensors whose shapes agree).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from detjax.models.ultralytics import read_ultralytics_checkpoint, ultralytics_to_detjax
from detjax.models.variables import assign_arrays, variable_arrays, variable_shapes

CLASS_BRANCH = "head.cls_branches."


def save_arrays(arrays: Mapping[str, np.ndarray], path: str | Path, *,
                metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``{key: array}`` to a safetensors file with JSON-valued ``metadata``."""
    from safetensors.numpy import save_file

    meta = {"format": "detjax", **dict(metadata or {})}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(path),
              metadata={k: json.dumps(v) for k, v in meta.items()})
    return path


def save_weights(model: nnx.Module, path: str | Path, *,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s weights (Params and BatchNorm statistics) to ``path`` (safetensors);
    ``num_classes`` is added to ``metadata`` when the model has it. Returns the path."""
    meta = dict(metadata or {})
    if hasattr(model, "num_classes"):
        meta.setdefault("num_classes", int(model.num_classes))
    return save_arrays(variable_arrays(model), path, metadata=meta)


def read_weights(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """``(arrays, metadata)`` of a safetensors file; metadata values JSON-decoded (a value that
    is not JSON, written by another tool, stays a string)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file {str(path)!r}")
    with safe_open(str(path), framework="numpy") as f:
        arrays = {k: f.get_tensor(k) for k in f.keys()}
        raw = f.metadata() or {}
    meta = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except ValueError:
            meta[k] = v
    return arrays, meta


def load_weights(model: nnx.Module, path: str | Path) -> dict[str, Any]:
    """Load a file written by :func:`save_weights` into ``model`` in place; every weight must
    be there with the same shape (``ValueError`` names the key). Returns the metadata."""
    arrays, meta = read_weights(path)
    assign_arrays(model, arrays, strict=True)
    return meta


def _read_any(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    if path.suffix == ".safetensors":
        return read_weights(path)
    if path.suffix == ".pt":
        state_dict, meta = read_ultralytics_checkpoint(path)
        return ultralytics_to_detjax(state_dict), meta
    raise ValueError(f"weights must be a .safetensors file (detjax convert) or an ultralytics "
                     f".pt file, got {str(path)!r}")


def _num_classes(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> int | None:
    if isinstance(meta.get("num_classes"), int):
        return meta["num_classes"]
    last = f"{CLASS_BRANCH}0.layers.2.kernel"
    return int(arrays[last].shape[-1]) if last in arrays else None


def load_pretrained(model: nnx.Module, path: str | Path, *,
                    log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Start ``model`` from the weights in ``path`` (in place); returns the file's metadata.

    ``path``: ``.safetensors`` (:func:`save_weights`, ``detjax convert``) or an ultralytics
    YOLOv8 ``.pt`` file (needs torch and ultralytics). When the file's class count differs
    from ``model.num_classes``, the class-branch tensors (``head.cls_branches.*``) whose shapes
    differ keep the model's initialisation and ``log`` says which; the others load (ultralytics
    ``intersect_dicts``). Any other missing key or shape difference is a ``ValueError`` naming
    the key and both shapes.
    """
    path = Path(path)
    arrays, meta = _read_any(path)
    shapes = variable_shapes(model)
    ours, theirs = getattr(model, "num_classes", None), _num_classes(arrays, meta)
    fresh = []
    if ours is not None and theirs is not None and ours != theirs:
        fresh = sorted(k for k in shapes if k.startswith(CLASS_BRANCH)
                       and (k not in arrays or np.shape(arrays[k]) != shapes[k]))
    for key, shape in shapes.items():
        if key in fresh:
            continue
        if key not in arrays:
            raise ValueError(f"{path.name} has no {key!r} (shape {shape}); is it the same "
                             f"architecture (model name, head, p2)?")
        if np.shape(arrays[key]) != shape:
            raise ValueError(f"{path.name}: {key!r} has shape {np.shape(arrays[key])}, the "
                             f"model expects {shape}")
    extra = sorted(set(arrays) - set(shapes))
    if extra and not all(k.startswith(CLASS_BRANCH) for k in extra):
        raise ValueError(f"{path.name} has {len(extra)} tensor(s) the model does not, e.g. "
                         f"{extra[:5]}")
    assign_arrays(model, {k: arrays[k] for k in shapes if k not in fresh}, strict=False)
    log(f"weights: {len(shapes) - len(fresh)}/{len(shapes)} tensors from {path}")
    if fresh:
        log(f"weights: {theirs} classes in the file, {ours} in the model: the class branch "
            f"keeps its initialisation in {len(fresh)} tensor(s) ({', '.join(fresh[:3])}"
            f"{', ...' if len(fresh) > 3 else ''})")
    return meta
