"""ultralytics YOLOv8 detect checkpoints as detjax :class:`~detjax.models.Detector` weights.

A checkpoint's state dict names every tensor ``model.{i}.<path>`` after its module's index
``i`` in ``yolov8.yaml`` (``yolov8-p2.yaml`` for the P2 model); detjax names it after the
module tree (:mod:`detjax.models.variables`). With ``T`` top-down C2f blocks in the neck
(2 for YOLOv8, 3 for P2) the index map is::

    0 backbone.stem   1 backbone.down2  2 backbone.c2f2  3 backbone.down3  4 backbone.c2f3
    5 backbone.down4  6 backbone.c2f4   7 backbone.down5 8 backbone.c2f5   9 backbone.sppf
    12 + 3t      neck.top_down.t            (t = 0 .. T-1; 10, 11, 13, ... are Upsample
    10 + 3T + 3j neck.bottom_up_conv.j       and Concat, without weights)
    12 + 3T + 3j neck.bottom_up_c2f.j
    10 + 6T      head (Detect: model.22 for YOLOv8, model.28 for P2)

Inside a module the names agree (``cv1``, ``cv2``, ``m.0`` ...) except for::

    ultralytics                     detjax
    conv.weight [out, in, kh, kw]   conv.kernel [kh, kw, in, out]  (OIHW -> HWIO)
    bn.weight / bn.bias             bn.scale / bn.bias
    bn.running_mean / running_var   bn.mean / bn.var
    Detect cv2.{l}.{k}              head.box_branches.{l}.layers.{k}  (4 * reg_max DFL logits)
    Detect cv3.{l}.{k}              head.cls_branches.{l}.layers.{k}  (class logits)

Not carried over: ``bn.num_batches_tracked`` (a counter) and ``Detect.dfl.conv.weight``, the
fixed ``arange(reg_max)`` integral that :func:`detjax.coders.dfl_decode` computes itself (the
conversion checks that it is that arange).

The two networks then compute the same function: C2f splits ``cv1``'s output into halves in the
same channel order (torch ``chunk(2, 1)``, ``jnp.split(..., 2, -1)``); convolutions pad
``kernel // 2`` on every side as ultralytics ``autopad`` (``blocks.conv2d``, not flax's
``'SAME'``, which pads (0, 1) at stride 2); max-pooling pads with -inf as torch; BatchNorm
normalises with eps 1e-3 (``blocks.BN_EPS``) and PyTorch momentum 0.03 (flax 0.97). The state
dict is a plain ``{name: array}`` mapping, so this module never imports torch; only
:func:`read_ultralytics_checkpoint` (reading a ``.pt`` file) needs torch and ultralytics.

YOLO11 (C3k2 / C2PSA blocks, depthwise class branch) and end-to-end heads (YOLOv10, YOLO26)
have no detjax model and are refused with a message saying so.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from detjax.models.adapter import ADAPTER_ATTR
from detjax.models.backbone import scale_depth, scale_width
from detjax.models.detector import SCALES, Detector, create_model
from detjax.models.heads import DFLHead
from detjax.models.variables import assign_arrays, variable_shapes

BACKBONE_MODULES = ("stem", "down2", "c2f2", "down3", "c2f3", "down4", "c2f4", "down5", "c2f5",
                    "sppf")
_RENAME = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var",
           "box_branches": "cv2", "cls_branches": "cv3"}
_SUPPORTED = "YOLOv8 detect (yolov8{n,s,m,l,x}.yaml or yolov8-p2.yaml)"


def module_index(key: str, *, top_down: int) -> int:
    """ultralytics layer index ``i`` (``model.{i}``) of the detjax weight or module ``key``
    (a dotted path such as ``neck.top_down.1.cv1.conv.kernel``); ``top_down`` is the number of
    top-down C2f blocks of the neck (2 for YOLOv8, 3 for P2)."""
    parts = key.split(".")
    if parts[0] == "backbone" and len(parts) > 1 and parts[1] in BACKBONE_MODULES:
        return BACKBONE_MODULES.index(parts[1])
    if parts[0] == "neck" and len(parts) > 2 and parts[2].isdigit():
        j, t = int(parts[2]), top_down
        first = {"top_down": 12, "bottom_up_conv": 10 + 3 * t, "bottom_up_c2f": 12 + 3 * t}
        if parts[1] in first:
            return first[parts[1]] + 3 * j
    if parts[0] == "head":
        return 10 + 6 * top_down
    raise ValueError(f"{key!r} is not a weight of a detjax YOLOv8 detector")


def ultralytics_key(key: str, *, top_down: int) -> str:
    """The ultralytics state-dict name of the detjax weight ``key`` (see the module docstring),
    e.g. ``head.cls_branches.0.layers.2.kernel`` -> ``model.22.cv3.0.2.weight``."""
    index = module_index(key, top_down=top_down)
    parts = key.split(".")
    inner = parts[1:] if parts[0] == "head" else parts[2:] if parts[0] == "backbone" \
        else parts[3:]
    inner = [_RENAME.get(p, p) for p in inner if p != "layers"]
    return ".".join(["model", str(index), *inner])


def _shape(state_dict: Mapping[str, Any], key: str) -> tuple[int, ...]:
    return tuple(np.shape(state_dict[key]))


def _count_blocks(state_dict: Mapping[str, Any], prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def ultralytics_architecture(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    """``{'name', 'num_classes', 'p2', 'reg_max'}`` of a YOLOv8 detect state dict, read from
    the layer indices and tensor shapes (``name`` a key of :data:`detjax.models.SCALES`)."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"state_dict must be a mapping {{name: array}}, got {type(state_dict)}")
    indices = {int(k.split(".")[1]) for k in state_dict
               if k.startswith("model.") and k.split(".")[1].isdigit()}
    if not indices:
        raise ValueError("not an ultralytics state dict: no 'model.{i}.' keys; expected "
                         + _SUPPORTED)
    head = max(indices)
    top_down, rest = divmod(head - 10, 6)
    pre = f"model.{head}."
    if any(k.startswith(pre + "one2one") for k in state_dict):
        raise ValueError(f"model.{head} is an end-to-end head (YOLOv10 / YOLO26), which detjax "
                         f"does not have; expected {_SUPPORTED}")
    if rest or top_down not in (2, 3) or f"{pre}cv2.0.2.weight" not in state_dict \
            or f"{pre}cv3.0.2.weight" not in state_dict or f"{pre}cv3.0.0.0.conv.weight" \
            in state_dict:
        raise ValueError(f"unsupported checkpoint layout (last layer model.{head}); expected "
                         f"{_SUPPORTED} with the Detect head at model.22 (model.28 for P2). "
                         "YOLO11 and other architectures have no detjax model.")
    num_classes = _shape(state_dict, f"{pre}cv3.0.2.weight")[0]
    reg_max = _shape(state_dict, f"{pre}cv2.0.2.weight")[0] // 4
    found = (_shape(state_dict, "model.0.conv.weight")[0],
             _shape(state_dict, "model.9.cv2.conv.weight")[0],
             _count_blocks(state_dict, "model.2.m."), _count_blocks(state_dict, "model.4.m."))
    for name, (depth, width, max_channels) in SCALES.items():
        scale = (scale_width(64, width, max_channels), scale_width(1024, width, max_channels),
                 scale_depth(3, depth), scale_depth(6, depth))
        if scale == found:
            return {"name": name, "num_classes": num_classes, "p2": top_down == 3,
                    "reg_max": reg_max}
    raise ValueError("no YOLOv8 scale has (stem width, SPPF width, C2f repeats at layers 2 "
                     f"and 4) = {found}; known scales: {tuple(SCALES)}")


def abstract_model(name: str, *, num_classes: int, p2: bool = False,
                   reg_max: int = 16) -> Detector:
    """A shape-only detjax DFL detector (``nnx.eval_shape``: no weights are allocated)."""
    head_kwargs = None if reg_max == 16 else {"reg_max": reg_max}
    return nnx.eval_shape(lambda: create_model(name, num_classes=num_classes, p2=p2,
                                               head_kwargs=head_kwargs, rngs=nnx.Rngs(0)))


def ultralytics_to_detjax(state_dict: Mapping[str, Any], model: Detector | None = None
                          ) -> dict[str, np.ndarray]:
    """``{detjax key: float32 array}`` for every weight of ``model`` (its own architecture when
    None, :func:`ultralytics_architecture`), kernels transposed OIHW -> HWIO.

    ``ValueError`` names the tensor when one is missing, has another shape than the model's,
    or is left over (a layer detjax does not have).
    """
    if model is None:
        arch = ultralytics_architecture(state_dict)
        model = abstract_model(arch["name"], num_classes=arch["num_classes"], p2=arch["p2"],
                               reg_max=arch["reg_max"])
    if not isinstance(getattr(model, "head", None), DFLHead):
        raise ValueError("ultralytics YOLOv8 weights fit a detjax Detector with head='dfl'")
    top_down = len(model.neck.top_down)
    arrays, used = {}, set()
    for key, shape in variable_shapes(model).items():
        name = ultralytics_key(key, top_down=top_down)
        if name not in state_dict:
            raise ValueError(f"the checkpoint has no {name!r} (for detjax {key!r})")
        value = np.asarray(state_dict[name], dtype=np.float32)
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if value.shape != shape:
            raise ValueError(f"{name!r} has shape {value.shape} (HWIO for kernels), detjax "
                             f"{key!r} expects {shape}")
        arrays[key] = value
        used.add(name)
    dfl = f"model.{10 + 6 * top_down}.dfl.conv.weight"
    if dfl in state_dict:
        integral = np.asarray(state_dict[dfl], np.float32).ravel()
        if not np.array_equal(integral, np.arange(integral.size, dtype=np.float32)):
            raise ValueError(f"{dfl!r} is not arange(reg_max); detjax's DFL integral is fixed")
        used.add(dfl)
    left = sorted(k for k in state_dict if k not in used
                  and not k.endswith("num_batches_tracked"))
    if left:
        raise ValueError(f"{len(left)} checkpoint tensor(s) have no place in the detjax model, "
                         f"e.g. {left[:5]}; expected {_SUPPORTED}")
    return arrays


def from_ultralytics(state_dict: Mapping[str, Any], *, model: Detector | str | None = None
                     ) -> Detector:
    """A detjax YOLOv8 detector with the weights of an ultralytics YOLOv8 detect state dict.

    ``state_dict``: ``{name: array}`` as ``DetectionModel.state_dict()`` (NumPy arrays; see
    :func:`read_ultralytics_checkpoint` for a ``.pt`` file). ``model``: None builds the
    checkpoint's own scale, class count and P2 choice; a scale name (``'yolov8s'``) must be the
    checkpoint's; a :class:`Detector` (``head='dfl'``) is filled in place and returned. Every
    tensor must fit exactly (use :func:`detjax.models.load_pretrained` to change the class
    count). Raw outputs then equal ultralytics' in eval mode (``model.eval()``).

    Example::

        sd = {k: v.numpy() for k, v in DetectionModel("yolov8n.yaml").state_dict().items()}
        model = from_ultralytics(sd)          # Detector, 80 classes
    """
    arch = ultralytics_architecture(state_dict)
    if isinstance(model, str) and model != arch["name"]:
        raise ValueError(f"model={model!r} but the checkpoint is a {arch['name']}")
    if model is None or isinstance(model, str):
        head_kwargs = None if arch["reg_max"] == 16 else {"reg_max": arch["reg_max"]}
        model = create_model(arch["name"], num_classes=arch["num_classes"], p2=arch["p2"],
                             head_kwargs=head_kwargs, rngs=nnx.Rngs(0))
    elif not isinstance(model, Detector):
        raise TypeError(f"model must be None, a scale name or a Detector, got {type(model)}")
    assign_arrays(model, ultralytics_to_detjax(state_dict, model))
    return model


def read_ultralytics_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """``(state_dict, metadata)`` of an ultralytics ``.pt`` file: float32 NumPy arrays (the EMA
    weights when the file has them, as ultralytics loads it) and ``{'class_names', 'model',
    'p2', 'num_classes', 'source', 'license'}``. Needs torch and ultralytics (unpickling the file
    imports them); ``ImportError`` says so when they are missing."""
    path = Path(path)
    if not path.is_file():  # ultralytics would try to download a bare name
        raise FileNotFoundError(f"no checkpoint file {str(path)!r}")
    try:
        import torch  # noqa: F401
        import ultralytics
        from ultralytics.nn.tasks import load_checkpoint
    except ImportError as err:
        raise ImportError(f"reading {path.name} needs torch and ultralytics (pip install "
                          "ultralytics); convert it once where they are installed with "
                          "`detjax convert FILE.pt OUT.safetensors` and load the "
                          ".safetensors instead") from err
    net, _ = load_checkpoint(str(path))
    state_dict = {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
    names = getattr(net, "names", None) or {}
    if isinstance(names, Mapping):
        names = [names[i] for i in sorted(names)]
    arch = ultralytics_architecture(state_dict)
    meta = {"class_names": [str(n) for n in names] or None, "model": arch["name"],
            "p2": arch["p2"], "num_classes": arch["num_classes"],
            "source": f"ultralytics {ultralytics.__version__}: {path.name}",
            "license": "AGPL-3.0 (weights converted from ultralytics)"}
    return state_dict, meta


def freeze_mask(params: Any, n: int) -> Any:
    """ultralytics ``freeze: n``: ``True`` for every leaf of ``params`` (a tree keyed by module
    path: ``nnx.State`` of a Detector or its pure dict) in layers ``model.0 .. model.{n-1}``.

    ``n = 10`` freezes the backbone (stem .. SPPF), ``n = 22`` everything but the head (28 with
    P2), larger ``n`` up to the head's index + 1 everything; ``0`` nothing. The result has the
    structure of ``params``, for ``optax.masked(optax.set_to_zero(), mask)``. As in
    ultralytics, frozen BatchNorm layers still update their running statistics in training.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"freeze must be an int >= 0 (layers model.0 .. model.N-1), got {n!r}")
    paths = [_path_key(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    top_down = len({k.split(".")[2] for k in paths if k.startswith("neck.top_down.")})
    if top_down not in (2, 3):
        raise ValueError("params must be the weights of a detjax YOLOv8 Detector (keys "
                         f"backbone.* / neck.* / head.*), got keys like {paths[:3]}")
    if n > 11 + 6 * top_down:
        raise ValueError(f"freeze={n} but the model has layers model.0 .. "
                         f"model.{10 + 6 * top_down}")
    adapter = f"{ADAPTER_ATTR}."  # a distillation adapter is no layer of the model: it trains
    return jax.tree_util.tree_map_with_path(
        lambda p, _: not _path_key(p).startswith(adapter)
        and module_index(_path_key(p), top_down=top_down) < n, params)


def _path_key(path: tuple) -> str:
    names = []
    for k in path:
        name = getattr(k, "key", getattr(k, "name", getattr(k, "idx", None)))
        if name is not None and name != "value":
            names.append(str(name))
    return ".".join(names)
