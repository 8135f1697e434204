"""The notebooks in colab/: each runs top to bottom (QUICK, CPU, local data) without an error,
writes nothing into the repository, and is stored without outputs."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
# notebooks that need a real data set (found by walking up from the repository: shared/data/)
NEEDS_DATA = {"anchors.ipynb": "raccoon", "finetune_your_data.ipynb": "raccoon"}
SKIP_DIRS = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}


def _find_data(name: str) -> Path | None:
    for parent in (ROOT, *ROOT.parents):
        path = parent / "shared" / "data" / name
        if path.is_dir():
            return path
    return None


def _repo_files() -> set[str]:
    files = set()
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS and not d.startswith(".")]
        files.update(os.path.relpath(os.path.join(dirpath, f), ROOT) for f in filenames)
    return files


def _kernel_env(tmp_path: Path) -> str:
    """A kernel spec for this interpreter in a temporary Jupyter path; returns its name."""
    spec = tmp_path / "jupyter" / "kernels" / "detjax-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "detjax test kernel", "language": "python"}))
    return "detjax-test"


def test_notebooks_exist():
    names = {p.name for p in NOTEBOOKS}
    assert {"quickstart.ipynb", "vmap_losses.ipynb", "anchors.ipynb", "train_tpu.ipynb",
            "finetune_your_data.ipynb"} <= names, names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stripped(path):
    """Stored without outputs or execution counts, so that diffs show only source changes."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{path.name} stores widget state"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_install_cell(path):
    """The first code cell installs detjax from DETJAX_SOURCE unless it is importable, and a
    QUICK flag follows that the tests switch on with DETJAX_QUICK=1."""
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(path, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert "DETJAX_SOURCE = " in code[0] and "pip" in code[0] and "find_spec" in code[0]
    assert any("DETJAX_QUICK" in c for c in code[:3]), f"{path.name}: no QUICK flag up front"


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    data = NEEDS_DATA.get(path.name)
    if data is not None:
        found = _find_data(data)
        if found is None:
            pytest.skip(f"{path.name} needs shared/data/{data}")
        monkeypatch.setenv("DETJAX_DATA", str(found))
    kernel = _kernel_env(tmp_path)
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("DETJAX_QUICK", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's inline backend
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setenv("DETJAX_CACHE", os.environ.get("DETJAX_CACHE")
                       or str(tmp_path / "cache"))
    nb = nbformat.read(path, as_version=4)
    before = _repo_files()
    start = time.perf_counter()
    client = nbclient.NotebookClient(nb, kernel_name=kernel, timeout=1800,
                                     resources={"metadata": {"path": str(COLAB)}})
    client.execute()  # raises CellExecutionError naming the cell on any error
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
    assert _repo_files() == before, f"{path.name} wrote {_repo_files() - before}"
