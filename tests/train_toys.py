"""Small stand-in detector for the train tests (MODELS contract, a few hundred parameters)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class ToyDetector(nnx.Module):
    """conv(s2) -> [BN] -> SiLU -> conv(s2) -> 1x1 head with 4 + C channels.

    ``loss``: per image, squared error between the mean head output and a target built from the
    image's first valid box (normalised) and label; averaged over images (so the mean of
    per-device losses equals the global one).
    """

    def __init__(self, num_classes: int = 3, *, batchnorm: bool = True, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.c1 = nnx.Conv(3, 8, (3, 3), strides=2, use_bias=not batchnorm, rngs=rngs)
        self.bn = nnx.BatchNorm(8, momentum=0.97, epsilon=1e-3, rngs=rngs) if batchnorm else None
        self.c2 = nnx.Conv(8, 8, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Conv(8, 4 + num_classes, (1, 1), rngs=rngs)

    def __call__(self, images):
        x = self.c1(images)
        if self.bn is not None:
            x = self.bn(x)
        x = nnx.silu(x)
        return self.head(nnx.silu(self.c2(x)))

    def loss(self, outputs, batch, *, gain: float = 1.0):
        h, w = batch["images"].shape[1:3]
        box = batch["boxes"][:, 0] / jnp.asarray([w, h, w, h], jnp.float32)
        onehot = jax.nn.one_hot(batch["labels"][:, 0], self.num_classes)
        target = jnp.concatenate([box, onehot], -1) * batch["gt_mask"][:, :1]
        pred = outputs.mean(axis=(1, 2))
        per_image = jnp.sum((pred - target) ** 2, -1)
        box_l, cls_l = per_image.mean(), jnp.sum((pred[:, 4:] - target[:, 4:]) ** 2, -1).mean()
        return gain * per_image.mean(), {"box": box_l, "cls": cls_l}

    def predict(self, outputs):
        b = outputs.shape[0]
        return outputs.reshape(b, -1, outputs.shape[-1]).transpose(0, 2, 1)


# a one-epoch synthetic run small enough for a test (the tiny detector is patched in by the test)
TINY_RUN = ["data.num_train=16", "data.num_val=8", "data.imgsz=64", "train.batch=8",
            "eval.batch=8", "train.epochs=1", "train.time_limit=0", "log.progress=false",
            "log.every=1", "train.warmup_min_iters=0", "data.max_boxes=16",
            "compile_cache=false", "log.tensorboard=false", "log.plots=false"]


def toy_batch(seed: int = 0, batch: int = 8, size: int = 32, max_boxes: int = 4,
              num_classes: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, size / 2, (batch, max_boxes, 2))
    wh = rng.uniform(2, size / 2, (batch, max_boxes, 2))
    return {
        "images": rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8),
        "boxes": np.concatenate([xy, xy + wh], -1).astype(np.float32),
        "labels": rng.integers(0, num_classes, (batch, max_boxes)).astype(np.int32),
        "gt_mask": rng.uniform(size=(batch, max_boxes)) < 0.8,
    }
