"""Named, registered augmentation ops (big_vision ``pp/registry`` style) and the
ultralytics-like training pipeline built from an :class:`AugmentConfig`.

An op is built by name with keyword arguments, ``get_op("hsv", h=0.015)``, and called as
``op(sample, rng, ctx) -> sample``: ``rng`` is a ``numpy.random.Generator`` (all the
randomness), ``ctx`` an :class:`OpContext` giving the target size and a way to fetch
other samples (mosaic, mixup). Every op takes a probability where that makes sense.

Order of the default pipeline (ultralytics ``v8_transforms``): mosaic (or letterbox)
-> copy_paste -> affine -> mixup -> albu_geometric -> albu_color -> hsv -> hflip -> cutout.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from detjax.data import transforms as T
from detjax.data.mosaic import box_copy_paste, copy_paste, mixup, mosaic4
from detjax.data.transforms import Sample


class OpContext(Protocol):
    """What an op may ask of the loader: the target size and other samples."""

    size: int

    def fetch(self, rng: np.random.Generator) -> Sample:
        """A random other sample, long side resized to ``size``."""
        ...


Op = Callable[[Sample, np.random.Generator, OpContext], Sample]
OPS: dict[str, Callable[..., Op]] = {}


def register_op(name: str) -> Callable[[Callable[..., Op]], Callable[..., Op]]:
    """Decorator registering an op factory under ``name``."""

    def wrap(factory):
        if name in OPS:
            raise ValueError(f"op {name!r} is already registered")
        OPS[name] = factory
        return factory

    return wrap


def get_op(name: str, **params: Any) -> Op:
    """Builds the registered op ``name`` with ``params``; unknown names get a hint."""
    if name not in OPS:
        close = difflib.get_close_matches(name, OPS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown op {name!r}.{hint} Registered: {sorted(OPS)}")
    return OPS[name](**params)


def build_ops(specs: Sequence[str | tuple[str, Mapping[str, Any]]]) -> list[Op]:
    """Ops from specs: a name or a ``(name, params)`` pair each."""
    out = []
    for spec in specs:
        name, params = (spec, {}) if isinstance(spec, str) else spec
        out.append(get_op(name, **dict(params)))
    return out


def _maybe(p: float, rng: np.random.Generator) -> bool:
    """Draws once (always, for a stable random stream) and returns whether to apply."""
    return bool(rng.uniform() < p)


@register_op("letterbox")
def _letterbox_op(*, fill: int = T.FILL) -> Op:
    def op(s, rng, ctx):
        return T.letterbox(s, ctx.size, fill=fill)[0]
    return op


@register_op("mosaic")
def _mosaic_op(*, p: float = 1.0, min_area_frac: float = 0.1) -> Op:
    """With prob p a 2-size mosaic canvas (follow with "affine"), else letterbox to size."""
    def op(s, rng, ctx):
        if _maybe(p, rng):
            others = [ctx.fetch(rng) for _ in range(3)]
            return mosaic4([T.resize_long_side(s, ctx.size), *others], rng, size=ctx.size,
                           min_area_frac=min_area_frac, refit=s.instance_map is None)
        return T.letterbox(s, ctx.size)[0]
    return op


@register_op("copy_paste")
def _copy_paste_op(*, p: float = 0.5, max_ioa: float = 0.3) -> Op:
    """Pastes objects of the horizontally flipped sample itself (ultralytics 'flip' mode),
    each with probability p; needs instance masks (a no-op without)."""
    def op(s, rng, ctx):
        if p <= 0 or s.instance_map is None:
            return s
        return copy_paste(s, T.horizontal_flip(s), rng, p=p, max_ioa=max_ioa)
    return op


@register_op("box_copy_paste")
def _box_copy_paste_op(*, p: float = 0.5, class_p: float | Sequence[float] = 1.0,
                       max_ioa: float = 0.3) -> Op:
    """With prob p pastes box crops of a random other sample's objects (each of class c with
    probability ``class_p[c]``) at free places (:func:`detjax.data.box_copy_paste`); needs no
    instance masks."""
    def op(s, rng, ctx):
        if not _maybe(p, rng):
            return s
        return box_copy_paste(s, ctx.fetch(rng), rng, class_p=class_p, max_ioa=max_ioa)
    return op


@register_op("affine")
def _affine_op(*, degrees: float = 0.0, translate: float = 0.1, scale: float = 0.5,
               shear: float = 0.0) -> Op:
    """ultralytics RandomPerspective (affine part) into a ``size`` x ``size`` output."""
    def op(s, rng, ctx):
        return T.random_affine(s, rng, out_size=(ctx.size, ctx.size), degrees=degrees,
                               translate=translate, scale=scale, shear=shear)
    return op


@register_op("mixup")
def _mixup_op(*, p: float = 0.0, alpha: float = 32.0) -> Op:
    """With prob p blends in a random other sample, letterboxed to the same size."""
    def op(s, rng, ctx):
        if not _maybe(p, rng):
            return s
        other = T.letterbox(ctx.fetch(rng), s.size)[0]
        return mixup(s, other, rng, alpha=alpha, beta=alpha)
    return op


@register_op("albu_geometric")
def _albu_geometric_op(*, p: float = 1.0, **params: float) -> Op:
    """albumentations geometric set with prob p; letterboxed back if the size changed."""
    compose = T.albu_geometric(**params)

    def op(s, rng, ctx):
        if not _maybe(p, rng):
            return s
        out = T.apply_albumentations(s, compose, rng)
        return out if out.size == s.size else T.letterbox(out, s.size)[0]
    return op


@register_op("albu_color")
def _albu_color_op(*, p: float = 1.0, **params: float) -> Op:
    compose = T.albu_color(**params)

    def op(s, rng, ctx):
        return T.apply_albumentations(s, compose, rng) if _maybe(p, rng) else s
    return op


@register_op("hsv")
def _hsv_op(*, h: float = 0.015, s: float = 0.7, v: float = 0.4) -> Op:
    def op(smp, rng, ctx):
        return T.random_hsv(smp, rng, hgain=h, sgain=s, vgain=v)
    return op


@register_op("hflip")
def _hflip_op(*, p: float = 0.5) -> Op:
    def op(s, rng, ctx):
        return T.horizontal_flip(s) if _maybe(p, rng) else s
    return op


@register_op("cutout")
def _cutout_op(*, p: float = 0.5, num_holes: int = 1,
               scale: tuple[float, float] = (0.02, 0.2)) -> Op:
    def op(s, rng, ctx):
        return T.cutout(s, rng, num_holes=num_holes, scale=tuple(scale)) \
            if _maybe(p, rng) else s
    return op


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation knobs; defaults are ultralytics' ``cfg/default.yaml``
    (mosaic 1.0, mixup 0.0, copy_paste 0.0, degrees 0, translate 0.1, scale 0.5, shear 0,
    hsv 0.015/0.7/0.4, fliplr 0.5, close_mosaic 10), plus detjax extras (cutout and the
    albumentations sets, off by default)."""

    mosaic: float = 1.0
    mixup: float = 0.0
    copy_paste: float = 0.0
    degrees: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    shear: float = 0.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    fliplr: float = 0.5
    cutout: float = 0.0
    albu_geometric: float = 0.0
    albu_color: float = 0.0
    close_mosaic: int = 10
    box_copy_paste: float = 0.0
    box_copy_paste_class_p: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.box_copy_paste_class_p is not None:  # lists from YAML: keep the config hashable
            object.__setattr__(self, "box_copy_paste_class_p",
                               tuple(float(v) for v in self.box_copy_paste_class_p))

    def ops(self, *, mosaic_on: bool = True) -> list[tuple[str, dict[str, Any]]]:
        """The op specs of the training pipeline (mosaic off in the close-mosaic epochs)."""
        specs: list[tuple[str, dict[str, Any]]] = [
            ("mosaic", {"p": self.mosaic if mosaic_on else 0.0})]
        if self.copy_paste > 0:
            specs.append(("copy_paste", {"p": self.copy_paste}))
        if self.box_copy_paste > 0:
            class_p = self.box_copy_paste_class_p
            specs.append(("box_copy_paste", {"p": self.box_copy_paste,
                                             "class_p": 1.0 if class_p is None else class_p}))
        specs.append(("affine", {"degrees": self.degrees, "translate": self.translate,
                                 "scale": self.scale, "shear": self.shear}))
        if self.mixup > 0 and mosaic_on:
            specs.append(("mixup", {"p": self.mixup}))
        if self.albu_geometric > 0:
            specs.append(("albu_geometric", {"p": self.albu_geometric}))
        if self.albu_color > 0:
            specs.append(("albu_color", {"p": self.albu_color}))
        specs.append(("hsv", {"h": self.hsv_h, "s": self.hsv_s, "v": self.hsv_v}))
        specs.append(("hflip", {"p": self.fliplr}))
        if self.cutout > 0:
            specs.append(("cutout", {"p": self.cutout}))
        return specs
