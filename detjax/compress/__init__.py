"""Model compression: magnitude pruning (an Optax transformation), structured channel pruning
into a physically smaller network, the network-slimming L1 term on BatchNorm scales, and int8
post-training quantisation with qwix and the int8 fake quantisation of ``train.qat``
(:mod:`detjax.models.quantize`, where ``restore_run`` can re-apply it).

Names resolve lazily, so ``import detjax.compress`` does no work.
"""

from detjax._lazy import lazy_getattr

_LAZY = {
    "polynomial_sparsity": "detjax.compress.sparsity",
    "magnitude_masks": "detjax.compress.sparsity",
    "prune_by_magnitude": "detjax.compress.sparsity",
    "apply_masks": "detjax.compress.sparsity",
    "sparsity": "detjax.compress.sparsity",
    "bn_scale_l1": "detjax.compress.sparsity",
    "channel_groups": "detjax.models.channels",
    "channel_scores": "detjax.models.channels",
    "prune_channels": "detjax.models.channels",
    "get_widths": "detjax.models.channels",
    "set_widths": "detjax.models.channels",
    "quantize_ptq": "detjax.models.quantize",
    "calibrate": "detjax.models.quantize",
    "quantize_from_stats": "detjax.models.quantize",
    "quantized_kernels": "detjax.models.quantize",
    "fake_quantize": "detjax.models.quantize",
    "fake_quantized": "detjax.models.quantize",
}


__getattr__ = lazy_getattr(__name__, _LAZY, globals())


__all__ = list(_LAZY)
