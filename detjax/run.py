"""A run: what a config builds (data sets, loaders, model) and what a run folder restores.

This is the one module where config, data and model meet. ``detjax train`` builds from a
config here; ``detjax val``, ``detjax predict`` and Python users restore a trained run here,
with nothing but its folder.

A run folder written by :func:`detjax.train.train_and_evaluate`::

    <run>/config.yaml              the exact config of the run
    <run>/run.json                 {"class_names": [...], "image_size": S, "num_classes": C}
    <run>/checkpoints/<step>/      periodic + final saves: items ``state`` and ``meta``
    <run>/best/<step>/             the best-by-mAP save
    <run>/metrics.csv, steps.csv, tb/, *.png

A quantised run (``detjax quantize``) is a run folder whose ``config.yaml`` sets
``model.quantize`` (``{weight_qtype, act_qtype, act_ranges}``; ``act_ranges`` names a JSON file
in the folder with each convolution input's calibrated range): :func:`restore_run` restores the
float weights, then quantises them again with those ranges
(:func:`detjax.models.quantize.quantize_from_stats`), so the model is the one that was
calibrated.

:func:`restore_run` needs no data set and does not import the training code. It builds the
model from ``config.yaml`` and the class count, then reads the EMA weights out of the saved
train state *by name*: each array of a save is stored under ``NNNNN_<path>`` where ``NNNNN``
is the leaf's position in the train state and ``<path>`` its key path with every run of
non-alphanumeric characters replaced by ``_`` (``ema_params_backbone_stem_conv_kernel_value``).
The position depends on the optimiser state's layout; the name does not, so only the
``ema_params``, ``ema_stats`` and ``other`` entries are matched, by name. Run folders without
``run.json`` (older runs) take the class names from the checkpoint's ``meta``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from detjax.config import Config, load_config

SPLITS = ("train", "val")
RUN_INFO = "run.json"


class Datasets(NamedTuple):
    """The data sets of a run; a split that was not asked for is ``None``."""

    train: Any
    val: Any


class Loaders(NamedTuple):
    """The loaders of a run (``detjax.data.Loader``); ``None`` for a missing data set."""

    train: Any
    val: Any


# ----------------------------------------------------------------------------- build


def build_datasets(cfg: Config, splits: Sequence[str] = SPLITS) -> Datasets:
    """The data sets of ``cfg.data`` for ``splits`` (a subset of ``('train', 'val')``, read
    from ``data.train_split`` / ``data.val_split``); the others are ``None``, so
    ``splits=('val',)`` evaluates a run where only the validation split exists."""
    from detjax import data as data_lib

    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}, got {tuple(splits)}")
    d = cfg.data
    names = {"train": d.train_split, "val": d.val_split}
    if d.format == "synthetic":
        kw = dict(num_train=d.num_train, num_val=d.num_val, seed=d.synthetic_seed,
                  image_size=d.synthetic_size, difficulty=d.difficulty)
        load = lambda split: data_lib.synthetic_dataset(split, **kw)
    else:
        if d.path is None:
            raise ValueError(f"data.path is required for data.format={d.format!r}")
        kw = {"class_names": list(d.class_names)} if d.class_names and d.format == "voc" else {}
        load = lambda split: data_lib.load_dataset(d.path, format=d.format, split=split,
                                                   on_error=d.on_error, **kw)
    return Datasets(*(load(names[s]) if s in splits else None for s in SPLITS))


def build_loaders(cfg: Config, train_ds=None, val_ds=None) -> Loaders:
    """``Loaders(train, val)``: the training loader (augmented, multi-scale, ``train.batch``)
    and the validation loader (letterbox only, every image once, ``eval.batch``); a loader
    whose data set is ``None`` is ``None``."""
    from detjax.data.loader import Loader, LoaderConfig
    from detjax.data.ops import AugmentConfig

    d = cfg.data
    common = dict(max_boxes=d.max_boxes, seed=cfg.seed)
    train = val = None
    if train_ds is not None:
        train = Loader(train_ds, LoaderConfig(
            batch_size=cfg.train.batch, image_size=d.imgsz, multi_scale=tuple(d.multi_scale),
            multi_scale_mode=d.multi_scale_mode, augment=True,
            aug=AugmentConfig(**d.augment.to_dict()), epochs=cfg.train.epochs,
            workers=d.workers, repeat_threshold=d.repeat_threshold, **common))
    if val_ds is not None:
        val = Loader(val_ds, LoaderConfig(
            batch_size=cfg.eval.batch, image_size=d.imgsz, augment=False, shuffle=False,
            drop_remainder=False, epochs=1, **common))
    return Loaders(train, val)


def build_model(cfg: Config, num_classes: int, *, pretrained: bool = False):
    """The NNX detector of ``cfg.model`` with ``num_classes`` classes, initialised from
    ``cfg.seed`` (train mode). Every model of a run is made here. ``model.channels`` (the widths
    of a channel-pruned run, :func:`detjax.compress.prune_channels`) shrinks it; with
    ``pretrained``, ``model.weights`` (a ``.safetensors`` or ultralytics ``.pt`` file) is
    loaded into it (:func:`detjax.models.load_pretrained`)."""
    from flax import nnx

    from detjax.models import create_model

    m = cfg.model
    head_kwargs = m.head_kwargs.to_dict() if isinstance(m.head_kwargs, Config) else None
    model = create_model(m.name, num_classes=num_classes, head=m.head, p2=m.p2,
                         head_kwargs=head_kwargs, rngs=nnx.Rngs(cfg.seed))
    if m.channels:
        from detjax.models.channels import set_widths

        set_widths(model, dict(m.channels))
    if pretrained and m.weights:
        from detjax.models import load_pretrained

        load_pretrained(model, m.weights, log=print)
    return model


def calibration_images(cfg: Config, class_names: Sequence[str]):
    """Float 0..1 ``[B, S, S, 3]`` batches (``eval.batch``, side ``data.imgsz``) of the
    training split, letterboxed only: the images int8 activation ranges are calibrated on."""
    train_ds = build_datasets(cfg, splits=("train",)).train
    if len(train_ds.class_names) != len(class_names):
        raise ValueError(f"the training split has {len(train_ds.class_names)} classes, the run "
                         f"was trained on {len(class_names)} {list(class_names)}")
    for batch in build_loaders(cfg, val_ds=train_ds).val:
        yield batch["images"].astype("float32") / 255.0


def write_run_info(workdir: str | os.PathLike, cfg: Config, class_names: Sequence[str]) -> Path:
    """Writes ``run.json`` (class names, image size, class count) into ``workdir``."""
    info = {"class_names": [str(n) for n in class_names], "num_classes": len(class_names),
            "image_size": int(cfg.data.imgsz)}
    path = Path(workdir) / RUN_INFO
    path.write_text(json.dumps(info, indent=1))
    return path


# ----------------------------------------------------------------------------- restore


@dataclasses.dataclass
class RestoredRun:
    """A trained run restored from its folder.

    ``model``: the NNX detector with the EMA weights, in eval mode (``model(images)`` takes
    float ``[B, S, S, 3]`` in 0..1; ``model.predict`` gives ``[B, 4 + C, A]`` ``cxcywh``
    pixels + class probabilities); ``config``: the run's config (with overrides);
    ``class_names``; ``image_size``: the training side ``S`` in pixels; ``run_dir``;
    ``checkpoint_dir``: the save the weights came from (``<run>/best/<step>`` or
    ``<run>/checkpoints/<step>``); ``meta``: that save's metadata (epoch, metrics, ...).
    """

    model: Any
    config: Config
    class_names: list[str]
    image_size: int
    run_dir: Path
    checkpoint_dir: Path
    meta: dict[str, Any]


def find_run_dir(path: str | os.PathLike) -> Path:
    """The run folder (holding ``config.yaml``) of ``path``: itself or up to 3 parents."""
    p = Path(path).absolute()
    for candidate in (p, *list(p.parents)[:3]):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no config.yaml here or in its parents (not a run folder)")


def _steps(folder: Path) -> list[int]:
    """Complete saves of a checkpoint folder (orbax renames a save to its number only once
    every file is written)."""
    if not folder.is_dir():
        return []
    return sorted(int(c.name) for c in folder.iterdir() if c.name.isdigit() and c.is_dir())


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The save to restore for ``path``: a numbered save itself; the latest save of a
    checkpoint folder; for a run folder, the latest of ``best/``, else of ``checkpoints/``."""
    p = Path(path).absolute()
    if p.name.isdigit() and (p / "state").is_dir():
        return p
    run_dir = find_run_dir(p)
    folders = [p] if p != run_dir else [run_dir / "best", run_dir / "checkpoints"]
    for folder in folders:
        steps = _steps(folder)
        if steps:
            return folder / str(steps[-1])
    raise FileNotFoundError(f"{p}: no checkpoint (expected numbered saves under "
                            f"{' or '.join(str(f) for f in folders)})")


def _read_meta(save: Path) -> dict[str, Any]:
    path = save / "meta" / "metadata"
    return json.loads(path.read_text()) if path.is_file() else {}


def _run_info(run_dir: Path, meta: dict[str, Any], cfg: Config) -> tuple[list[str], int]:
    info_path = run_dir / RUN_INFO
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    names = info.get("class_names") or meta.get("class_names")
    if not names:
        raise ValueError(f"{run_dir}: no class names in {RUN_INFO} or in the checkpoint's "
                         "meta; this run folder was written by an older detjax, retrain it")
    return [str(n) for n in names], int(info.get("image_size", cfg.data.imgsz))


def checkpoint_name(path: Sequence[Any]) -> str:
    """The name part of a saved array's key: the key path with every run of
    non-alphanumeric characters replaced by ``_`` (``.ema_params['head']`` ->
    ``ema_params_head``)."""
    import jax

    return re.sub(r"[^A-Za-z0-9]+", "_", jax.tree_util.keystr(tuple(path))).strip("_")


def _by_name(arrays: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in arrays.items():
        out[re.sub(r"^\d+_", "", key)] = value
    return out


def _fill(tree, field: str, saved: dict[str, Any], source: Path):
    """``tree`` (an ``nnx.State``) with each leaf replaced by the saved array named
    ``<field>_<leaf path>``."""
    import jax
    import jax.numpy as jnp

    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    values = []
    for path, leaf in leaves:
        name = checkpoint_name((jax.tree_util.GetAttrKey(field), *path))
        if name not in saved:
            raise ValueError(f"{source}: no saved array {name!r}; the checkpoint was written "
                             "for a different model (check config.yaml's model section)")
        value = saved[name]
        if value.shape != leaf.shape:
            raise ValueError(f"{source}: {name!r} has shape {value.shape}, the model built "
                             f"from config.yaml expects {leaf.shape}")
        values.append(jnp.asarray(value, leaf.dtype))
    return jax.tree_util.tree_unflatten(treedef, values)


def _quantized(model, settings: Config, run_dir: Path, image_size: int):
    """``model`` quantised as ``model.quantize`` says (ranges read from its JSON file)."""
    import jax.numpy as jnp

    from detjax.models.quantize import quantize_from_stats

    ranges = None
    if settings.get("act_qtype") is not None:
        path = run_dir / str(settings.act_ranges)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the activation ranges named by "
                                    "model.quantize.act_ranges are missing")
        ranges = json.loads(path.read_text())
    example = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    return quantize_from_stats(model, ranges, example, weight_qtype=settings.weight_qtype,
                               act_qtype=settings.get("act_qtype"))


def restore_run(path: str | os.PathLike, overrides: Sequence[str] = ()) -> RestoredRun:
    """Restores a trained run from ``path`` (a run folder, its ``best`` / ``checkpoints``
    folder, or one numbered save in them) with no data set: the model with the EMA weights in
    eval mode, the config (``overrides``: ``key=value`` strings applied on top of
    ``config.yaml``), class names and image size. For VOC runs ``data.class_names`` is set to
    the run's names, so a data set built from the restored config keeps the model's label ids.

    Example::

        run = restore_run("runs/train")
        preds = run.model.predict(run.model(images))   # [B, 4 + C, A] cxcywh pixels
    """
    import orbax.checkpoint as ocp
    from flax import nnx

    save = find_checkpoint(path)
    run_dir = find_run_dir(save)
    cfg = load_config(str(run_dir / "config.yaml"), list(overrides))
    meta = _read_meta(save)
    names, image_size = _run_info(run_dir, meta, cfg)
    if cfg.data.format == "voc":
        cfg.data.class_names = list(names)
    model = build_model(cfg, len(names))
    model.eval()
    graphdef, params, stats, other = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    saved = _by_name(ocp.StandardCheckpointer().restore(save / "state"))
    params = _fill(params, "ema_params", saved, save)
    stats = _fill(stats, "ema_stats", saved, save)
    other = _fill(other, "other", saved, save)
    model = nnx.merge(graphdef, params, stats, other)
    if cfg.model.get("quantize") is not None:
        model = _quantized(model, cfg.model.quantize, run_dir, image_size)
    return RestoredRun(model=model, config=cfg, class_names=names, image_size=image_size,
                       run_dir=run_dir, checkpoint_dir=save, meta=meta)
