"""Shared test settings: hypothesis profiles sized for a 2-core CPU. On accelerators: full
float32 matmul and convolution precision (XLA's GPU/TPU default rounds their inputs to TF32 /
bfloat16, which the 1e-5 parity tests against NumPy and torch are not meant to measure) and
deterministic GPU reductions (the resume tests compare loss trajectories bit for bit)."""

import os

# must precede the first use of a backend; the flag is ignored off GPU
os.environ["XLA_FLAGS"] = " ".join(
    f for f in (os.environ.get("XLA_FLAGS", ""), "--xla_gpu_deterministic_ops=true") if f)

import zlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")

settings.register_profile(
    "default", max_examples=25, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                           HealthCheck.function_scoped_fixture])  # _per_test_rng: once a test
settings.register_profile("thorough", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture])
# CI: the same examples on every run (a fresh example database each time), so a red CI is a
# regression and not a new draw; local runs keep exploring, and `thorough` explores more.
settings.register_profile("ci", parent=settings.get_profile("default"), derandomize=True,
                          database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else
                                     "default"))


@pytest.fixture(autouse=True)
def _per_test_rng(request, monkeypatch):
    """A module's ``RNG`` (a numpy Generator that tests draw from) is reseeded for each test
    from the test's id, so a test's inputs do not depend on which tests the same xdist worker
    ran before it."""
    module = request.module
    if isinstance(getattr(module, "RNG", None), np.random.Generator):
        seed = zlib.crc32(request.node.nodeid.encode())
        monkeypatch.setattr(module, "RNG", np.random.default_rng(seed))
