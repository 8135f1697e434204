"""detjax._malloc: the glibc arena cap of training processes."""

import subprocess
import sys

CODE = ("import detjax._malloc as m; a = m.limit_arenas(); b = m.limit_arenas(); "
        "print(a, b)")


def _run(env_extra):
    import os

    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                         env=env, check=True)
    return out.stdout.split()


def test_limit_arenas_sets_once_on_glibc():
    import platform

    first, second = _run({})
    assert second == "False"  # once per process
    if platform.libc_ver()[0] == "glibc":
        assert first == "True"


def test_user_setting_wins():
    assert _run({"MALLOC_ARENA_MAX": "4"}) == ["False", "False"]
