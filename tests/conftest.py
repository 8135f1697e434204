"""Shared test settings: hypothesis profiles sized for a 2-core CPU; full float32 matmul and
convolution precision on accelerators (XLA's GPU/TPU default rounds their inputs to TF32 /
bfloat16, which the 1e-5 parity tests against NumPy and torch are not meant to measure)."""

import os

import jax
from hypothesis import HealthCheck, settings

if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile(
    "default", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("thorough", max_examples=300, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
