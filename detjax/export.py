"""Exported detectors that run without detjax: ``jax.export`` (StableHLO) and ONNX files.

``export(model, path, format=...)`` folds BatchNorm (:func:`detjax.models.fuse`), traces the
eval-mode network with its weights as constants and writes

- ``format='jax'``: the bytes of a serialised :class:`jax.export.Exported` (StableHLO plus
  calling convention), read back by ``jax.export.deserialize`` in any process with a
  compatible jax, on any platform it was exported for (``platforms``, default: this one);
- ``format='onnx'``: an ONNX model converted by ``jax2onnx``, run by ``onnxruntime``;

and a JSON sidecar ``<path>.json`` that says how to call it: ``class_names``, ``imgsz``,
``input`` (name, shape, dtype, layout, preprocessing) and ``outputs`` (names, shapes,
meaning), plus the NMS settings when the postprocess is inside.

Input: ``images`` float32 ``[B, S, S, 3]`` (NHWC, RGB, 0..1; letterboxed as
:func:`detjax.infer.predict.letterbox_image`), ``B`` fixed or, with ``dynamic_batch``, any
size (a ``jax.export`` symbolic dimension / an ONNX dynamic axis). Outputs:

- without NMS: ``predictions [B, 4 + C, A]``: ``cxcywh`` input pixels and class
  probabilities (ultralytics ``Detect`` inference format);
- with NMS (:func:`detjax.non_max_suppression`, fixed size ``max_det``): ``boxes
  [B, max_det, 4]`` ``xyxy`` input pixels, ``scores [B, max_det]``, ``labels [B, max_det]``
  int32, ``valid [B, max_det]`` bool (the valid rows come first, in descending score order).

ONNX and the postprocess: jax2onnx 0.17 cannot convert the NMS (its ``fori_loop`` lowering
rejects loop bodies that close over traced arrays; traced ahead into a plain jaxpr, the
scatter inside the NMS rounds is a pattern it does not lower), so ``format='onnx',
nms=True`` writes the network to ONNX and the postprocess to a second, ``jax.export`` file
``<path>.nms.jax`` that :func:`load` chains after the ONNX session. The network's 5x5
max-pools (SPPF) are converted as shifted-slice maxima: jax2onnx maps a 4-d
``reduce_window`` to a 4-d ``MaxPool``, which onnxruntime does not implement.

:func:`load` needs only jax and NumPy (and onnxruntime for ONNX): importing this module
imports no flax, optax or detjax model code.

Example::

    export(model, "yolo.jax", imgsz=320, nms=True, class_names=names)
    detector = load("yolo.jax")
    out = detector(images)          # {'boxes': [B, 300, 4], 'scores', 'labels', 'valid'}
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

FORMATS = ("jax", "onnx")
MAX_STRIDE = 32
INPUT_NAME = "images"
RAW_OUTPUTS = ("predictions",)
NMS_OUTPUTS = ("boxes", "scores", "labels", "valid")
PREPROCESS = ("RGB, letterboxed to imgsz x imgsz (aspect kept, grey 114 padding, centred), "
              "divided by 255")


# ----------------------------------------------------------------------------- checks


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    return fmt


def check_imgsz(imgsz: int) -> int:
    if isinstance(imgsz, bool) or not isinstance(imgsz, (int, np.integer)) or imgsz <= 0 \
            or imgsz % MAX_STRIDE:
        raise ValueError(f"imgsz must be a positive multiple of {MAX_STRIDE} (the largest "
                         f"stride), got {imgsz!r}")
    return int(imgsz)


# ----------------------------------------------------------------------------- functions


def network_function(model: Any) -> Callable[[jax.Array], jax.Array]:
    """``images [B, S, S, 3] -> predictions [B, 4 + C, A]`` of ``model`` (a detjax
    ``Detector`` or any NNX module with ``__call__`` and ``predict``) BatchNorm-fused and in
    eval mode, its weights closed over (constants when traced)."""
    from flax import nnx

    from detjax.models.fuse import fuse

    graphdef, state = nnx.split(fuse(model))

    def network(images: jax.Array) -> jax.Array:
        net = nnx.merge(graphdef, state)
        return net.predict(net(images)).astype(jnp.float32)

    return network


def postprocess_function(*, conf_thres: float = 0.25, iou_thres: float = 0.7,
                         max_det: int = 300) -> Callable[[jax.Array], tuple[jax.Array, ...]]:
    """``predictions [B, 4 + C, A] -> (boxes [B, max_det, 4] xyxy, scores, labels int32,
    valid bool)`` through :func:`detjax.non_max_suppression` (defaults: ultralytics predict)."""
    from detjax.nms import non_max_suppression

    def postprocess(predictions: jax.Array) -> tuple[jax.Array, ...]:
        det = non_max_suppression(predictions, conf_thres=conf_thres, iou_thres=iou_thres,
                                  max_det=max_det)
        rows = det.detections  # [B, max_det, 6] (x1, y1, x2, y2, score, class)
        return rows[..., :4], rows[..., 4], rows[..., 5].astype(jnp.int32), det.valid

    return postprocess


# ----------------------------------------------------------------------------- writers


def _spec(batch: int | None, shape: tuple[int, ...]) -> jax.ShapeDtypeStruct:
    """float32 ``[batch, *shape]``; ``batch`` None is the symbolic dimension 'batch'."""
    lead = jax.export.symbolic_shape("batch") if batch is None else (batch,)
    return jax.ShapeDtypeStruct((*lead, *shape), jnp.float32)


def _write_jax(fn: Callable, spec: jax.ShapeDtypeStruct, path: Path,
               platforms: Sequence[str] | None) -> None:
    exported = jax.export.export(jax.jit(fn), platforms=platforms)(spec)
    path.write_bytes(exported.serialize())


def _max_pool_by_slices(x: jax.Array, window: Sequence[int],
                        padding: Sequence[tuple[int, int]]) -> jax.Array:
    """Stride-1 window maximum as ``-inf`` padding and maxima of shifted slices, one axis at a
    time (equal to ``lax.reduce_window(x, -inf, max, window, 1, padding)``)."""
    x = jnp.pad(x, padding, constant_values=-jnp.inf)
    for axis, k in enumerate(window):
        n = x.shape[axis] - k + 1
        y = lax.slice_in_dim(x, 0, n, axis=axis)
        for i in range(1, k):
            y = jnp.maximum(y, lax.slice_in_dim(x, i, i + n, axis=axis))
        x = y
    return x


def _eval_onnx_friendly(jaxpr, consts: Sequence[Any], *args: Any) -> list[Any]:
    """``jax.core.eval_jaxpr`` with stride-1 ``reduce_window_max`` replaced by
    :func:`_max_pool_by_slices` (onnxruntime's ``MaxPool`` has at most 3 spatial axes)."""
    from jax.extend import core as jex_core

    env: dict[Any, Any] = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, jex_core.Literal) else env[v]
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        params = eqn.params
        if eqn.primitive is lax.reduce_window_max_p and set(params["window_strides"]) == {1} \
                and set(params["base_dilation"]) == {1} \
                and set(params["window_dilation"]) == {1}:
            outs = [_max_pool_by_slices(invals[0], params["window_dimensions"],
                                        params["padding"])]
        else:
            outs = eqn.primitive.bind(*invals, **eqn.primitive.get_bind_params(params))
            outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def _write_onnx(fn: Callable, batch: int | None, imgsz: int, path: Path,
                output_names: Sequence[str]) -> None:
    try:
        import jax2onnx
        import onnx
    except ImportError as e:
        raise ImportError("format='onnx' needs jax2onnx and onnx (pip install jax2onnx "
                          "onnxruntime)") from e

    def rewritten(images):
        closed = jax.make_jaxpr(fn)(images)
        return tuple(_eval_onnx_friendly(closed.jaxpr, closed.consts, images))

    shape = ("batch" if batch is None else batch, imgsz, imgsz, 3)
    ir_log = logging.getLogger("onnx_ir")  # one "value type not known" warning per shape
    level = ir_log.level
    ir_log.setLevel(logging.ERROR)
    try:
        proto = jax2onnx.to_onnx(rewritten, [shape], model_name=path.stem,
                                 input_names=[INPUT_NAME], output_names=list(output_names))
    finally:
        ir_log.setLevel(level)
    onnx.save_model(proto, str(path))


def export(model: Any, path: str | os.PathLike, *, format: str = "jax", imgsz: int = 640,
           batch: int = 1, dynamic_batch: bool = False, nms: bool = False,
           conf_thres: float = 0.25, iou_thres: float = 0.7, max_det: int = 300,
           class_names: Sequence[str] | None = None,
           platforms: Sequence[str] | None = None) -> Path:
    """Writes ``model`` (BatchNorm fused, eval mode) to ``path`` as ``format`` ('jax' or
    'onnx') for ``[batch, imgsz, imgsz, 3]`` float32 images (any batch with
    ``dynamic_batch``), with the fixed-size NMS inside when ``nms`` (``conf_thres``,
    ``iou_thres``, ``max_det``: ultralytics predict defaults), and the JSON sidecar
    ``<path>.json``; returns ``path``. See the module docstring for the layouts.
    ``platforms`` (jax only): e.g. ``('cpu', 'cuda')``; default the current backend."""
    check_format(format)
    imgsz = check_imgsz(imgsz)
    if not dynamic_batch and (not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    names = None if class_names is None else [str(n) for n in class_names]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lead = None if dynamic_batch else int(batch)
    network = network_function(model)
    post = postprocess_function(conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det) \
        if nms else None
    outputs = NMS_OUTPUTS if nms else RAW_OUTPUTS
    raw_shape = jax.eval_shape(network, _spec(1, (imgsz, imgsz, 3))).shape  # [1, 4 + C, A]
    postprocess_file = None
    if format == "jax":
        fn = (lambda x: post(network(x))) if nms else network
        _write_jax(fn, _spec(lead, (imgsz, imgsz, 3)), path, platforms)
    else:
        _write_onnx(network, lead, imgsz, path, RAW_OUTPUTS)
        if nms:  # jax2onnx cannot convert the NMS loops: a jax.export file runs them
            postprocess_file = path.with_name(path.name + ".nms.jax")
            _write_jax(post, _spec(lead, raw_shape[1:]), postprocess_file, platforms)
    meta = _sidecar(format, imgsz, lead, names, outputs, raw_shape, nms=nms,
                    conf_thres=conf_thres, iou_thres=iou_thres, max_det=max_det,
                    postprocess_file=postprocess_file)
    sidecar_path(path).write_text(json.dumps(meta, indent=2))
    return path


def sidecar_path(path: str | os.PathLike) -> Path:
    """``<path>.json``: the sidecar of an exported file."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _sidecar(fmt: str, imgsz: int, batch: int | None, class_names: list[str] | None,
             outputs: Sequence[str], raw_shape: tuple[int, ...], *, nms: bool,
             conf_thres: float, iou_thres: float, max_det: int,
             postprocess_file: Path | None) -> dict[str, Any]:
    b = "batch" if batch is None else batch
    rows, anchors = int(raw_shape[1]), int(raw_shape[2])
    layout = {
        "predictions": {"shape": [b, rows, anchors], "dtype": "float32",
                        "meaning": "cxcywh boxes in input pixels, then class probabilities"},
        "boxes": {"shape": [b, max_det, 4], "dtype": "float32",
                  "meaning": "xyxy boxes in input pixels"},
        "scores": {"shape": [b, max_det], "dtype": "float32", "meaning": "class score"},
        "labels": {"shape": [b, max_det], "dtype": "int32", "meaning": "class index"},
        "valid": {"shape": [b, max_det], "dtype": "bool",
                  "meaning": "row holds a detection (valid rows first, by descending score)"},
    }
    from detjax import __version__

    return {
        "format": fmt, "detjax_version": __version__, "imgsz": imgsz,
        "num_classes": rows - 4, "class_names": class_names,
        "input": {"name": INPUT_NAME, "shape": [b, imgsz, imgsz, 3], "dtype": "float32",
                  "layout": "NHWC", "range": [0.0, 1.0], "preprocess": PREPROCESS},
        "outputs": [{"name": n, **layout[n]} for n in outputs],
        "nms": ({"conf_thres": conf_thres, "iou_thres": iou_thres, "max_det": max_det}
                if nms else None),
        "postprocess_file": None if postprocess_file is None else postprocess_file.name,
    }


# ----------------------------------------------------------------------------- loading


class ExportedDetector:
    """An exported detector: ``detector(images) -> {output name: np.ndarray}`` for float32
    ``images [B, S, S, 3]`` (0..1); ``meta`` is the sidecar, ``class_names`` and ``imgsz``
    come from it. Made by :func:`load`."""

    def __init__(self, run: Callable[[np.ndarray], Sequence[Any]], meta: dict[str, Any]):
        self._run, self.meta = run, meta
        self.class_names = meta.get("class_names")
        self.imgsz = int(meta["imgsz"])
        self.output_names = tuple(o["name"] for o in meta["outputs"])

    def __call__(self, images: Any) -> dict[str, np.ndarray]:
        x = np.asarray(images, np.float32)
        want = self.meta["input"]["shape"]
        if x.ndim != 4 or list(x.shape[1:]) != want[1:] \
                or (isinstance(want[0], int) and x.shape[0] != want[0]):
            raise ValueError(f"images must be float32 {want} (NHWC, 0..1), got {x.shape}")
        return {n: np.asarray(v) for n, v in zip(self.output_names, self._run(x))}


def _jax_runner(path: Path) -> Callable[[np.ndarray], Sequence[Any]]:
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    call = jax.jit(exported.call)
    return lambda x: jax.tree.leaves(call(x))


def _onnx_runner(path: Path, postprocess: Path | None) -> Callable[[np.ndarray], Sequence[Any]]:
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise ImportError("loading an ONNX export needs onnxruntime (pip install "
                          "onnxruntime)") from e
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    post = None if postprocess is None else _jax_runner(postprocess)

    def run(x: np.ndarray) -> Sequence[Any]:
        outs = session.run(None, {INPUT_NAME: x})
        return outs if post is None else post(outs[0])

    return run


def load(path: str | os.PathLike) -> ExportedDetector:
    """Loads a file written by :func:`export` (and its ``<path>.json`` sidecar); needs jax and
    NumPy, and onnxruntime for ONNX."""
    path = Path(path)
    meta_file = sidecar_path(path)
    if not path.is_file() or not meta_file.is_file():
        raise FileNotFoundError(f"{path}: need the exported file and its sidecar {meta_file}")
    meta = json.loads(meta_file.read_text())
    fmt = check_format(meta.get("format"))
    if fmt == "jax":
        return ExportedDetector(_jax_runner(path), meta)
    post = meta.get("postprocess_file")
    return ExportedDetector(_onnx_runner(path, path.with_name(post) if post else None), meta)


# ----------------------------------------------------------------------------- CLI

USAGE = """usage: detjax export RUN_DIR [--format jax|onnx] [--imgsz N] [--batch 1]
                     [--dynamic-batch] [--nms [--conf 0.25] [--iou 0.7] [--max-det 300]]
                     [--out FILE]

Writes the run's EMA weights, BatchNorm fused, as a jax.export (StableHLO) or ONNX file plus
FILE.json (class names, image size, input and output layout); `detjax.export.load(FILE)`
runs it with jax (and onnxruntime) only. --imgsz defaults to the run's data.imgsz, --out to
RUN_DIR/export/model.jax|onnx. Examples:
  detjax export runs/train --nms
  detjax export runs/train --format onnx --imgsz 640 --dynamic-batch"""


def restore_run(path: str | os.PathLike) -> tuple[Any, list[str], int, Path]:
    """``(eval-mode EMA model, class names, imgsz, run folder)`` of a run folder."""
    from detjax.run import restore_run as restore

    run = restore(path)
    if run.config.model.get("quantize") is not None:
        raise ValueError(f"{run.run_dir} is an int8 (qwix) run; export supports float runs "
                         "only: export the float run it was quantised from "
                         f"({run.config.model.quantize.get('source')})")
    return run.model, list(run.class_names), int(run.image_size), run.run_dir


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="detjax export", usage=USAGE, add_help=False)
    p.add_argument("run", nargs="?")
    p.add_argument("--format", default="jax")
    p.add_argument("--imgsz", type=int, default=None)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--dynamic-batch", action="store_true")
    p.add_argument("--nms", action="store_true")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--iou", type=float, default=0.7)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--out", default=None)
    p.add_argument("-h", "--help", action="store_true")
    return p


def main(argv: list[str]) -> int:
    """Entry point of ``detjax export`` (see ``USAGE``); returns the exit code."""
    try:
        args = _parser().parse_args(list(argv))
    except SystemExit:
        print(USAGE, file=sys.stderr)
        return 2
    if args.help or not args.run:
        print(USAGE)
        return 0 if args.help else 2
    try:
        check_format(args.format)
        if args.imgsz is not None:
            check_imgsz(args.imgsz)
        model, names, run_imgsz, run_dir = restore_run(args.run)
        imgsz = args.imgsz or run_imgsz
        out = Path(args.out) if args.out else run_dir / "export" / f"model.{args.format}"
        export(model, out, format=args.format, imgsz=imgsz, batch=args.batch,
               dynamic_batch=args.dynamic_batch, nms=args.nms, conf_thres=args.conf,
               iou_thres=args.iou, max_det=args.max_det, class_names=names)
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        print(f"detjax export: {e}", file=sys.stderr)
        return 2
    print(f"exported {out} ({args.format}, {imgsz} px, "
          f"{'dynamic' if args.dynamic_batch else args.batch} batch"
          f"{', NMS inside' if args.nms else ''}); layout in {sidecar_path(out)}")
    return 0
