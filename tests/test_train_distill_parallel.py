"""The distillation step (a frozen teacher in the state) on 8 simulated CPU devices: sharded
``jit`` equals ``jit`` on the same global batch; ``pmap`` equals ``jit`` on one device's shard.

Runs in a subprocess with ``--xla_force_host_platform_device_count=8`` so the main pytest
process keeps its single device. ``pmap`` normalises the YOLO loss and the distillation terms
per device shard, as ultralytics DDP does, and those normalisers are clamped at 1 (few
positives on tiny images), so ``pmap`` does not equal one device on the global batch. Here the
global batch is 8 copies of one 2-image batch and the loss is not multiplied by the batch size:
every device then computes exactly what one device computes on the 2-image batch (BatchNorm
statistics synced over identical shards are the shard's own), which is the comparison made.
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
    fresh = lambda: _state(loss_times_batch=False)
    single, shard = fresh(), fresh()  # one device on the global batch / on one shard
    pm, sh = S.prepare_pmap_state(fresh()), S.replicate_on_mesh(fresh(), mesh)
    teacher0 = [np.array(x) for x in jax.tree.leaves(fresh().teacher)]
    keys = ("loss", "kd", "ld", "feat")
    losses = {{"single": [], "shard": [], "pmap": [], "sharded": []}}
    for b in batches:
        single, m1 = S.jit_train_step(single, b)
        shard, m0 = S.jit_train_step(shard, {{k: v[:2] for k, v in b.items()}})
        pm, m2 = S.pmap_train_step(pm, S.shard_batch(b))
        sh, m3 = S.sharded_train_step(sh, S.global_batch(b, mesh), mesh)
        losses["single"].append([float(m1[k]) for k in keys])
        losses["shard"].append([float(m0[k]) for k in keys])
        losses["pmap"].append([float(m2[k][0]) for k in keys])
        losses["sharded"].append([float(m3[k]) for k in keys])
    pm = S.unreplicate(pm)
    def diff(a, b):
        return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
                   for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    trees = lambda s: (s.params, s.batch_stats, s.ema_params, s.ema_stats)
    out = {{"pmap": diff(trees(shard), trees(pm)), "sharded": diff(trees(single), trees(sh)),
           "moved": diff(single.params, fresh().params), "losses": losses,
           "teacher": {{k: diff(teacher0, jax.tree.leaves(s.teacher))
                        for k, s in (("single", single), ("pmap", pm), ("sharded", sh))}}}}
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_distillation_pmap_and_sharded_equal_one_device():
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
    for name, reference in (("pmap", "shard"), ("sharded", "single")):
        for got, want in zip(out["losses"][name], out["losses"][reference]):
            assert got == pytest.approx(want, rel=1e-4, abs=1e-6), (name, out["losses"])
