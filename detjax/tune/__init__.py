"""Hyperparameter tuning over ordinary training runs: optuna TPE with median pruning, or
ultralytics-style evolution; ``detjax tune`` on the command line.

Names resolve lazily, so ``import detjax.tune`` does no work (optuna loads only for ``tpe``).
"""

from detjax._lazy import lazy_getattr

_LAZY = {
    "tune": "detjax.tune.tuner",
    "TuneResult": "detjax.tune.tuner",
    "SearchSpace": "detjax.tune.space",
    "Param": "detjax.tune.space",
    "load_space": "detjax.tune.space",
    "parse_space": "detjax.tune.space",
    "apply_params": "detjax.tune.space",
    "mutate": "detjax.tune.evolve",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = list(_LAZY)
