"""The wheel: every detjax subpackage and the shipped configs (configs/ -> detjax/configs)."""

import importlib.metadata
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_pyproject_lists_every_subpackage():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(p.parent.relative_to(ROOT).parts)
             for p in (ROOT / "detjax").rglob("__init__.py")}
    assert set(meta["packages"]) == found | {"detjax.configs"}
    assert meta["package-dir"]["detjax.configs"] == "configs"


def _setuptools_major() -> int:
    try:
        return int(importlib.metadata.version("setuptools").split(".")[0])
    except importlib.metadata.PackageNotFoundError:
        return 0


@pytest.mark.skipif(_setuptools_major() < 77, reason="building offline needs setuptools>=77 "
                    "(pyproject's build requirement) in this environment")
def test_wheel_ships_configs_and_finds_them_installed(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path / "dist"), str(ROOT)], check=True,
                   capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("detjax-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        z.extractall(site)
    shipped = {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert {f"detjax/configs/{n}" for n in shipped} <= names
    code = ("import detjax.config as c; cfg = c.load_config('yolov8s', []); "
            "print(c.CONFIG_DIR); print(cfg.model.name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True,
                         capture_output=True, text=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out == [str(site / "detjax" / "configs"), "yolov8s"]
