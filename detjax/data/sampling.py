"""Epoch orders: shuffling and LVIS repeat-factor sampling, deterministic by (seed, epoch).

Reference: Gupta et al. 2019 (LVIS), section 3; detectron2 ``RepeatFactorTrainingSampler``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def repeat_factors(labels_per_image: Sequence[np.ndarray], num_classes: int, *,
                   threshold: float = 0.001) -> np.ndarray:
    """Per-image repeat factors float64 ``[N]`` (LVIS repeat-factor sampling).

    ``f_c`` is the fraction of images that contain class ``c``; the class factor is
    ``r_c = max(1, sqrt(threshold / f_c))`` and an image's factor is the largest ``r_c``
    over the classes it contains (1 for images without objects).
    """
    n = len(labels_per_image)
    if n == 0:
        return np.zeros(0)
    present = np.zeros((n, num_classes), bool)
    for i, labels in enumerate(labels_per_image):
        labels = np.asarray(labels, np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"image {i}: labels must be in [0, {num_classes}), got "
                             f"{labels.min()}..{labels.max()}")
        present[i, labels] = True
    freq = present.mean(0)
    r_c = np.maximum(1.0, np.sqrt(threshold / np.maximum(freq, 1e-12)))
    r_i = np.where(present, r_c[None, :], 1.0).max(1) if num_classes else np.ones(n)
    return r_i


def epoch_indices(num_images: int, *, epoch: int, seed: int, shuffle: bool = True,
                  factors: np.ndarray | None = None) -> np.ndarray:
    """The data set indices int64 ``[L]`` visited in ``epoch``.

    With ``factors`` (from :func:`repeat_factors`), image ``i`` appears
    ``floor(r_i) + Bernoulli(frac(r_i))`` times (stochastic rounding, redrawn each
    epoch), so ``L`` varies around ``sum(r_i)``. Same (seed, epoch), same order.
    """
    rng = np.random.default_rng([seed, epoch, 0x5EED])
    idx = np.arange(num_images)
    if factors is not None:
        factors = np.asarray(factors, np.float64)
        if factors.shape != (num_images,):
            raise ValueError(f"factors must have shape [{num_images}], got {factors.shape}")
        whole = np.floor(factors)
        reps = whole.astype(np.int64) + (rng.uniform(size=num_images) < factors - whole)
        idx = np.repeat(idx, reps)
    return rng.permutation(idx) if shuffle else idx
