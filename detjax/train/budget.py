"""``train.time_limit``: the number of epochs that fits a wall-clock budget.

The loop re-fits the schedule after every epoch, so the default run fits its budget on any
machine instead of running a fixed number of epochs, and grows back when epochs get faster.
An epoch's cost is estimated per pixel, so multi-scale training and
``data.multi_scale_mode=progressive`` (sizes ascending over the epochs) are priced at each
epoch's own image sizes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def schedule_fit(time_limit_min: float, epochs: int, done: int, elapsed: float,
                 epoch_time: float | Callable[[int, int], float], eval_time: float) -> int:
    """Epochs that fit ``time_limit_min`` minutes given ``elapsed`` seconds so far: at most
    ``epochs`` (the configured upper bound); ``done`` (stop now) when no further epoch fits;
    ``epochs`` when the limit is 0 (off).

    ``epoch_time``: seconds per epoch, or ``epoch_time(e, total)``, the seconds of epoch ``e``
    in a schedule of ``total`` epochs (with progressive resizing the split point, and so the
    cost of an epoch, depends on the schedule length). ``eval_time``: seconds still to spend
    outside training (the final evaluation)."""
    limit = float(time_limit_min) * 60.0
    if limit <= 0 or (not callable(epoch_time) and epoch_time <= 0):
        return epochs
    left = limit - elapsed - eval_time
    cost = epoch_time if callable(epoch_time) else (lambda e, total: epoch_time)
    fit = done
    for total in range(done + 1, epochs + 1):
        if sum(cost(e, total) for e in range(done, total)) <= left:
            fit = total
    return int(max(fit, 1))


def epoch_pixels(loader_config, epoch: int, epochs: int | None = None) -> float:
    """Mean pixels per image of ``epoch``'s batches in a schedule of ``epochs`` (default: the
    loader's) epochs; the unit of the epoch-time estimate."""
    return float(np.mean([s * s for s in loader_config.epoch_sizes(epoch, epochs)]))


def epoch_cost(per_pixel: float, loader_config, epoch: int, total: int) -> float:
    """Estimated seconds of ``epoch`` in a schedule of ``total`` epochs."""
    return per_pixel * epoch_pixels(loader_config, epoch, total)
