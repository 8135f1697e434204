"""The distillation step (a frozen teacher in the state) on 8 simulated CPU devices equals one
device: ``pmap`` and sharded ``jit`` against ``jit``.

Runs in a subprocess with ``--xla_force_host_platform_device_count=8`` so the main pytest
process keeps its single device. ``pmap`` normalises the YOLO loss (and the distillation
normaliser) per device shard, as ultralytics DDP does; the global batch here is 8 copies of
one 2-image batch, so every shard's normaliser is the global one over 8 and the per-shard
losses equal the global loss: the comparison is exact for all three paths.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import jax, numpy as np
    from train_toys import toy_batch
    from test_train_distill import _state
    from detjax.train import step as S

    assert jax.device_count() == 8, jax.devices()
    batches = [{{k: np.concatenate([v] * 8) for k, v in toy_batch(i, batch=2, size=64).items()}}
               for i in range(2)]
    mesh = S.make_mesh()
    single, pm, sh = _state(), S.prepare_pmap_state(_state()), S.replicate_on_mesh(_state(), mesh)
    teacher0 = [np.array(x) for x in jax.tree.leaves(_state().teacher)]
    losses = {{"single": [], "pmap": [], "sharded": []}}
    for b in batches:
        single, m1 = S.jit_train_step(single, b)
        pm, m2 = S.pmap_train_step(pm, S.shard_batch(b))
        sh, m3 = S.sharded_train_step(sh, S.global_batch(b, mesh), mesh)
        losses["single"].append([float(m1[k]) for k in ("loss", "kd", "ld", "feat")])
        losses["pmap"].append([float(m2[k][0]) for k in ("loss", "kd", "ld", "feat")])
        losses["sharded"].append([float(m3[k]) for k in ("loss", "kd", "ld", "feat")])
    pm = S.unreplicate(pm)
    def diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    trees = lambda s: (s.params, s.batch_stats, s.ema_params, s.ema_stats)
    out = {{"pmap": diff(trees(single), trees(pm)), "sharded": diff(trees(single), trees(sh)),
           "moved": diff(single.params, _state().params), "losses": losses,
           "teacher": {{k: diff(teacher0, jax.tree.leaves(s.teacher))
                        for k, s in (("single", single), ("pmap", pm), ("sharded", sh))}}}}
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_distillation_pmap_and_sharded_equal_single_device():
    tests = str(Path(__file__).parent)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], env=env,
                          capture_output=True, text=True, timeout=1500,
                          cwd=str(Path(__file__).parent.parent))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    out = json.loads(line[len("RESULT"):])
    assert out["moved"] > 1e-6  # training changed the student
    assert out["teacher"] == {"single": 0.0, "pmap": 0.0, "sharded": 0.0}  # bit-identical
    assert out["pmap"] < 1e-4, out
    assert out["sharded"] < 1e-4, out
    for name in ("pmap", "sharded"):
        for got, want in zip(out["losses"][name], out["losses"]["single"]):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (name, out["losses"])
