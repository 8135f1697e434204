"""detjax.run: a run restored from its folder alone; `detjax val` / `detjax predict` on a VOC run
whose training split list is gone; the package's import layers."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx
from PIL import Image
from train_toys import ToyDetector

from detjax import run as run_lib
from detjax.config import load_config

NAMES = ["cat", "dog"]
TINY = ["data.format=voc", f"data.class_names={NAMES}", "data.imgsz=64", "train.batch=4",
        "eval.batch=4", "train.epochs=1", "train.time_limit=0", "log.progress=false",
        "log.tensorboard=false", "log.plots=false", "train.warmup_min_iters=0",
        "data.max_boxes=4", "compile_cache=false", "data.augment.mosaic=0.0"]


def _toy(cfg, n, **kw):
    return ToyDetector(n, rngs=nnx.Rngs(cfg.seed))


def _write_voc(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    """A tiny VOC folder: one cat or dog rectangle per 64 x 80 image."""
    rng = np.random.default_rng(0)
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    stems = [f"im{i:02d}" for i in range(n_train + n_val)]
    for i, stem in enumerate(stems):
        img = np.full((64, 80, 3), 90, np.uint8)
        x1, y1 = rng.integers(2, 30, 2)
        x2, y2 = x1 + rng.integers(15, 40), y1 + rng.integers(15, 30)
        img[y1:y2, x1:x2] = (230, 40, 40) if i % 2 else (40, 40, 230)
        Image.fromarray(img).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><size><width>80</width>"
            f"<height>64</height><depth>3</depth></size><object><name>{NAMES[i % 2]}</name>"
            f"<difficult>0</difficult><bndbox><xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin>"
            f"<xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object></annotation>")
    (root / "ImageSets/Main/train.txt").write_text("\n".join(stems[:n_train]) + "\n")
    (root / "ImageSets/Main/val.txt").write_text("\n".join(stems[n_train:]) + "\n")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A one-epoch toy-detector run on a tiny VOC folder: ``(run_dir, data_dir)``."""
    from detjax.train import train_and_evaluate

    base = tmp_path_factory.mktemp("voc_run")
    data = _write_voc(base / "voc")
    cfg = load_config(None, [*TINY, f"data.path={data}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_lib, "build_model", _toy)
        train_and_evaluate(cfg, base / "run")
    return base / "run", data


@pytest.fixture
def run_copy(trained, tmp_path, monkeypatch):
    """A copy of the trained run and its data whose config points at the copied data."""
    monkeypatch.setattr(run_lib, "build_model", _toy)
    run_dir, data = trained
    shutil.copytree(data, tmp_path / "voc")
    shutil.copytree(run_dir, tmp_path / "run")
    cfg = tmp_path / "run" / "config.yaml"
    cfg.write_text(cfg.read_text().replace(str(data), str(tmp_path / "voc")))
    return tmp_path / "run", tmp_path / "voc"


def test_restore_run_needs_only_the_run_folder(run_copy):
    run_dir, data = run_copy
    shutil.rmtree(data)  # no data set at all
    run = run_lib.restore_run(run_dir)
    assert run.class_names == NAMES and run.image_size == 64
    assert run.run_dir == run_dir and run.checkpoint_dir.parent == run_dir / "best"
    assert run.meta["epoch"] == 1 and run.config.data.class_names == NAMES
    assert json.loads((run_dir / "run.json").read_text())["class_names"] == NAMES
    out = run.model(np.zeros((1, 64, 64, 3), np.float32))
    assert run.model.predict(out).shape[:2] == (1, 4 + 2)
    assert run.model.bn.use_running_average  # eval mode
    again = run_lib.restore_run(run.checkpoint_dir)  # one numbered save
    np.testing.assert_array_equal(again.model.head.kernel[...], run.model.head.kernel[...])


def test_val_and_predict_without_the_training_split(run_copy, tmp_path):
    from detjax.eval.cli import val_main
    from detjax.infer.cli import predict_main

    run_dir, data = run_copy
    (data / "ImageSets/Main/train.txt").unlink()
    with pytest.raises(Exception, match="train.txt"):  # the data set is really gone
        run_lib.build_datasets(run_lib.restore_run(run_dir).config)
    assert val_main([str(run_dir), "--no-plots"]) == 0
    metrics = json.loads((run_dir / "val" / "metrics.json").read_text())
    assert metrics["num_images"] == 4 and set(metrics["per_class_ap"]) == set(NAMES)
    images = tmp_path / "images"
    images.mkdir()
    for p in sorted((data / "JPEGImages").glob("*.jpg"))[:3]:
        shutil.copy(p, images / p.name)
    shutil.rmtree(data)  # predict needs the run folder and the images only
    assert predict_main([str(run_dir), str(images), "--conf", "0.0", "--save-txt"]) == 0
    assert sorted(p.name for p in (run_dir / "predict").glob("*.jpg")) == sorted(
        p.name for p in images.iterdir())


def test_old_run_folder_takes_class_names_from_checkpoint_meta(run_copy):
    run_dir, _ = run_copy
    (run_dir / "run.json").unlink()
    assert run_lib.restore_run(run_dir).class_names == NAMES


def test_restore_errors_say_what_is_wrong(run_copy, tmp_path):
    run_dir, _ = run_copy
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        run_lib.restore_run(tmp_path / "voc")
    info = json.loads((run_dir / "run.json").read_text())
    (run_dir / "run.json").write_text(json.dumps({**info, "class_names": ["a", "b", "c"]}))
    with pytest.raises(ValueError, match="expects"):
        run_lib.restore_run(run_dir)
    shutil.rmtree(run_dir / "best")
    shutil.rmtree(run_dir / "checkpoints")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_lib.restore_run(run_dir)


def test_build_datasets_loads_only_the_splits_asked_for(tmp_path):
    data = _write_voc(tmp_path / "voc", n_train=2, n_val=2)
    (data / "ImageSets/Main/train.txt").unlink()
    cfg = load_config(None, [*TINY, f"data.path={data}"])
    ds = run_lib.build_datasets(cfg, splits=("val",))
    assert ds.train is None and len(ds.val) == 2 and list(ds.val.class_names) == NAMES
    loaders = run_lib.build_loaders(cfg, val_ds=ds.val)
    assert loaders.train is None and loaders.val.num_batches(0) == 1
    with pytest.raises(ValueError, match="splits"):
        run_lib.build_datasets(cfg, splits=("test",))


# ----------------------------------------------------------------------------- layers

PKG = Path(run_lib.__file__).parent
# detjax's floors (docs: "Layers"); a `cli` module of any package is at the edge
LAYERS = {"_lazy": 0, "_malloc": 0, "config": 0, "boxes": 1, "coders": 1, "anchors": 1, "nms": 2,
          "assign": 2, "losses": 2, "models": 3, "data": 3, "run": 4, "train": 5, "eval": 5,
          "infer": 5, "plots": 5, "compress": 5, "export": 5, "tune": 5, "cli": 6, "demo": 6,
          "convert": 6,
          "__main__": 6}
# within floor 5: eval < plots (draws eval's PR curves) < train, infer (write plots, use eval);
# tune runs training trials, compress fine-tunes and evaluates pruned runs; and one known
# reach-up: `detjax anchors DATA` reads a data set
ALLOWED = {("train", "eval"), ("infer", "eval"), ("plots", "eval"), ("train", "plots"),
           ("infer", "plots"), ("tune", "train"), ("compress", "train"), ("compress", "eval"),
           ("anchors", "data")}


def _imports(path: Path) -> set[str]:
    """Every detjax module ``path`` imports, at the top or inside a function."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("detjax")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("detjax"):
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                is_module = (PKG.parent / (sub.replace(".", "/") + ".py")).exists() or (
                    PKG.parent / sub.replace(".", "/")).is_dir()
                out.add(sub if is_module else node.module)
    return out


def _modules() -> dict[str, Path]:
    mods = {}
    for p in PKG.rglob("*.py"):
        parts = p.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        mods[name] = p
    return mods


def _layer(module: str) -> int:
    parts = module.split(".")
    return 6 if parts[-1] == "cli" else LAYERS[parts[1]] if len(parts) > 1 else 0


def test_imports_point_down_only():
    bad = []
    for name, path in _modules().items():
        if name == "detjax":
            continue
        top = name.split(".")[1]
        for target in _imports(path):
            if target == "detjax" or target.split(".")[1] == top:
                continue
            t_top = target.split(".")[1]
            lateral = _layer(target) == _layer(name) == 5
            if (_layer(target) > _layer(name) or lateral) and (top, t_top) not in ALLOWED:
                bad.append(f"{name} -> {target}")
    assert not bad, bad


def test_no_import_cycles():
    mods = _modules()
    graph = {m: {t for t in _imports(p) if t in mods and t != m and t != "detjax"}
             for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in graph[m]:
            if state.get(t) == 1:
                raise AssertionError(f"import cycle: {' -> '.join([*stack, m, t])}")
            if t not in state:
                visit(t, [*stack, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_restoring_and_evaluating_import_neither_train_nor_pyplot():
    code = ("import sys, detjax.run, detjax.eval.validation, detjax.eval.cli, detjax.infer.cli,"
            " detjax.anchors, detjax.plots\n"
            "bad = [m for m in sys.modules if m.startswith(('detjax.train', 'matplotlib'))]\n"
            "assert not bad, bad\n"
            "import detjax\n"
            "missing = [n for n in detjax._SUBMODULES if not __import__('importlib').util"
            ".find_spec(f'detjax.{n}')]\n"
            "assert not missing, missing\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=PKG.parent)
    assert out.returncode == 0, out.stderr


def test_restore_run_reads_the_ema_of_a_real_detector(tmp_path):
    """The YOLOv8n train state saved by the train layer comes back as the EMA model, by name."""
    import jax

    from detjax.config import dump_config
    from detjax.train.checkpoint import Checkpointer
    from detjax.train.loop import step_config
    from detjax.train.state import create_train_state

    cfg = load_config(None, ["data.imgsz=64"])
    state = create_train_state(run_lib.build_model(cfg, 2), step_config(cfg, 4))
    shifted = lambda tree: jax.tree.map(lambda x: x + 0.5, tree)  # EMA != raw weights
    state = state.replace(ema_params=shifted(state.params), ema_stats=shifted(state.batch_stats))
    dump_config(cfg, tmp_path / "config.yaml")
    run_lib.write_run_info(tmp_path, cfg, ["a", "b"])
    ckpt = Checkpointer(tmp_path / "checkpoints")
    ckpt.save(3, state, {"epoch": 3})
    ckpt.close()
    run = run_lib.restore_run(tmp_path)
    assert run.checkpoint_dir == tmp_path / "checkpoints" / "3" and run.meta == {"epoch": 3}
    for kind, want in ((nnx.Param, state.ema_params), (nnx.BatchStat, state.ema_stats)):
        got = jax.tree.leaves(nnx.state(run.model, kind))
        assert len(got) == len(jax.tree.leaves(want)) > 0
        for g, w in zip(got, jax.tree.leaves(want)):
            np.testing.assert_array_equal(g, w)
    # evaluation jits the restored detector (its graph definition is not hashable)
    from detjax.eval.validation import _predict, predict_batch

    images = np.zeros((1, 32, 32, 3), np.uint8)
    det, valid = predict_batch(run.model, images, max_det=10)
    assert det.shape == (1, 10, 6) and valid.shape == (1, 10)
    size = _predict._cache_size()
    predict_batch(run_lib.restore_run(tmp_path).model, images, max_det=10)
    assert _predict._cache_size() == size  # an equal model reuses the compiled call
