"""Training: state, optimiser recipe (one ``optax.GradientTransformation``), EMA, pure train
step (single / pmap / sharded), checkpoints and the ``train_and_evaluate`` loop behind
``detjax train`` (logging in ``train.logs``, the time budget in ``train.budget``, the command
in ``train.cli``, distillation from a teacher run in ``train.distill``, quantisation-aware
training in ``train.qat``).

Names resolve lazily, so ``import detjax.train`` does no work.
"""

from detjax._lazy import lazy_getattr

_LAZY = {
    "train_and_evaluate": "detjax.train.loop",
    "step_config": "detjax.train.loop",
    "Runner": "detjax.train.runner",
    "TrainState": "detjax.train.state",
    "StepConfig": "detjax.train.state",
    "create_train_state": "detjax.train.state",
    "ema_model": "detjax.train.state",
    "train_step": "detjax.train.step",
    "eval_forward": "detjax.train.step",
    "jit_train_step": "detjax.train.step",
    "pmap_train_step": "detjax.train.step",
    "sharded_train_step": "detjax.train.step",
    "make_optimizer": "detjax.train.optim",
    "recipe": "detjax.train.optim",
    "OptimConfig": "detjax.train.optim",
    "schedule": "detjax.train.optim",
    "ema_update": "detjax.train.ema",
    "ema_decay": "detjax.train.ema",
    "Checkpointer": "detjax.train.checkpoint",
    "DistillConfig": "detjax.train.distill",
    "load_teacher": "detjax.train.distill",
    "prepare_qat": "detjax.train.qat",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = list(_LAZY)
