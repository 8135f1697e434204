"""`detjax val` / `detjax predict`: argument handling, run lookup, metric report; one slow
end-to-end run (tiny training, then val and predict on it); the threshold sweep and run
ensembles on two toy-detector runs trained once per module."""

from __future__ import annotations

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from train_toys import ToyDetector

from detjax import cli
from detjax import run as run_lib
from detjax.config import load_config
from detjax.eval import coco_evaluate
from detjax.eval.cli import format_metrics, val_main
from detjax.infer.cli import predict_main


def test_commands_registered_and_help(capsys):
    assert cli.COMMANDS["val"][0] == "detjax.eval.cli:val_main"
    assert cli.COMMANDS["predict"][0] == "detjax.infer.cli:predict_main"
    assert cli.main(["val", "--help"]) == 0
    assert "detjax val RUN_DIR" in capsys.readouterr().out
    assert cli.main(["predict", "--help"]) == 0
    assert "detjax predict RUN_DIR" in capsys.readouterr().out


def test_missing_arguments_and_bad_paths_exit_2(tmp_path, capsys):
    assert val_main([]) == 2
    assert predict_main([str(tmp_path)]) == 2
    assert val_main([str(tmp_path)]) == 2
    assert "no config.yaml" in capsys.readouterr().err
    assert val_main([str(tmp_path), "--bogus"]) == 2
    assert "unknown arguments" in capsys.readouterr().err


def test_format_metrics_lists_every_number_and_class():
    box = np.array([[0.0, 0, 40, 40]])
    res = coco_evaluate([(box, [0.9], [0])], [(box, [0])], class_names=["cat", "dog"])
    text = format_metrics(res)
    assert "mAP50-95" in text and "AR 100" in text
    cat = next(line for line in text.splitlines() if line.strip().startswith("cat"))
    dog = next(line for line in text.splitlines() if line.strip().startswith("dog"))
    assert "1.0000" in cat and dog.split()[1:] == ["-", "-"]


@pytest.mark.slow
def test_train_then_val_and_predict_end_to_end(tmp_path):
    pytest.importorskip("detjax.train.loop")
    from PIL import Image

    from detjax.config import load_config
    from detjax.train import train_and_evaluate

    run = tmp_path / "run"
    cfg = load_config(None, [f"workdir={run}", "epochs=1", "data.num_train=16",
                             "data.num_val=8", "data.imgsz=64", "train.batch=8",
                             "eval.batch=8", "data.synthetic_size=96", "train.time_limit=0"])
    train_and_evaluate(cfg, run)
    assert val_main([str(run), "eval.conf_thres=0.001"]) == 0
    metrics = json.loads((run / "val" / "metrics.json").read_text())
    assert -1 <= metrics["map"] <= 1 and "per_class_ap" in metrics
    assert (run / "val" / "PR_curve.png").exists()
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(src / "x.png")
    assert predict_main([str(run), str(src), "--conf", "0.01", "--save-txt"]) == 0
    assert (run / "predict" / "x.png").exists()
    assert predict_main([str(run), str(src / "x.png"), "--slice", "64", "--out",
                         str(tmp_path / "sl")]) == 0
    assert (tmp_path / "sl" / "x.png").exists()


class BoxToy(ToyDetector):
    """The toy detector decoded like a YOLO head: ``cxcywh`` pixels around its stride-4 grid
    cells and sigmoid class scores, so NMS and fusion see overlapping, scored boxes."""

    def predict(self, outputs):
        b, h, w, c = outputs.shape
        ys, xs = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
        size = 16.0 * jnp.exp(jnp.clip(outputs[..., 2:4], -2, 2))  # [B, h, w, 2]
        cxcy = (jnp.stack([xs, ys], -1) + 0.5 + jnp.tanh(outputs[..., :2])) * 4.0
        pred = jnp.concatenate([cxcy, size, jax.nn.sigmoid(outputs[..., 4:])], -1)
        return pred.reshape(b, h * w, c).transpose(0, 2, 1)  # [B, 4 + C, A]


def _box_toy(cfg, n, **kw):
    return BoxToy(n, rngs=nnx.Rngs(cfg.seed))


TOY = ["epochs=1", "data.num_train=8", "data.num_val=6", "data.synthetic_size=96",
       "train.batch=4", "eval.batch=4", "train.time_limit=0", "log.progress=false",
       "log.tensorboard=false", "log.plots=false", "train.warmup_min_iters=0",
       "data.max_boxes=8", "compile_cache=false"]


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory):
    """Two toy runs on the same synthetic data: ``(run_64, run_96)`` (image sizes 64 and 96,
    different seeds)."""
    from detjax.train import train_and_evaluate

    base = tmp_path_factory.mktemp("toy_runs")
    runs = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(run_lib, "build_model", _box_toy)
        for seed, size in ((0, 64), (1, 96)):
            cfg = load_config(None, [*TOY, f"seed={seed}", f"data.imgsz={size}",
                                     f"workdir={base / str(size)}"])
            train_and_evaluate(cfg, base / str(size))
            runs.append(base / str(size))
    return tuple(runs)


@pytest.fixture
def runs(toy_runs, monkeypatch):
    monkeypatch.setattr(run_lib, "build_model", _box_toy)
    return toy_runs


def _val_map(path, out, *extra) -> float:
    assert val_main([str(path), "--out", str(out), "--no-plots", *extra]) == 0
    return json.loads((out / "metrics.json").read_text())["map"]


@pytest.mark.slow  # two toy runs trained once (~60 s), then ~20 s
def test_sweep_grid_points_equal_separate_val_runs(runs, tmp_path, capsys):
    run = runs[0]
    assert val_main([str(run), "--sweep", "--sweep-iou", "0.5,0.7", "--sweep-conf",
                     "0.001:0.301:0.3", "--out", str(tmp_path / "sweep")]) == 0
    text = capsys.readouterr().out
    assert "best NMS IoU" in text and "best-F1 confidence" in text
    sweep = json.loads((tmp_path / "sweep" / "sweep.json").read_text())
    assert sweep["conf_grid"] == pytest.approx([0.001, 0.301])
    assert sweep["iou_grid"] == pytest.approx([0.5, 0.7])
    assert (tmp_path / "sweep" / "F1_curve.png").exists()
    for c, t in ((0, 1), (1, 0)):
        conf, iou = sweep["conf_grid"][c], sweep["iou_grid"][t]
        expect = _val_map(run, tmp_path / f"val{c}{t}", f"eval.conf_thres={conf}",
                          f"eval.iou_thres={iou}")
        assert sweep["map"][c][t] == pytest.approx(expect, abs=1e-9)
    best = int(np.argmax(sweep["map"][0]))
    assert sweep["best_iou"] == sweep["iou_grid"][best]
    assert set(sweep["f1"]["per_class"]) == set(sweep["metrics_at_best"]["per_class_ap"])


@pytest.mark.slow  # two toy runs trained once (~60 s), then ~20 s
def test_ensemble_of_a_run_with_itself_under_nms_is_the_run(runs, tmp_path):
    run = runs[0]
    single = _val_map(run, tmp_path / "single")
    # each detection meets only its own copy (IoU 1): the run's own survivors overlap less
    # than 0.99, also after the clip to the original image
    twice = _val_map(run, tmp_path / "twice", str(run), "--ensemble", "nms",
                     "--ensemble-iou", "0.99")
    assert twice == pytest.approx(single, abs=1e-12)
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), np.uint8)).save(src / "x.png")
    assert predict_main([str(run), str(src), "--conf", "0.3", "--save-txt", "--out",
                         str(tmp_path / "p1")]) == 0
    assert predict_main([str(run), str(run), str(src), "--conf", "0.3", "--save-txt", "--out",
                         str(tmp_path / "p2"), "--ensemble", "nms", "--ensemble-iou",
                         "0.99"]) == 0
    one = (tmp_path / "p1" / "x.txt").read_text()
    assert one.strip() and (tmp_path / "p2" / "x.txt").read_text() == one


@pytest.mark.slow  # two toy runs trained once (~60 s), then ~20 s
def test_wbf_ensemble_of_two_image_sizes_end_to_end(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "wbf"
    assert val_main([str(a), str(b), "--ensemble", "wbf", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 <= metrics["map"] <= 1 and np.isfinite(metrics["map50"])
    assert metrics["ensemble"]["method"] == "wbf" and len(metrics["ensemble"]["runs"]) == 2
    assert metrics["num_images"] == 6 and (out / "PR_curve.png").exists()
    assert "(64 px)" in capsys.readouterr().out
    src = tmp_path / "imgs"
    src.mkdir()
    Image.fromarray(np.full((80, 120, 3), 128, np.uint8)).save(src / "x.png")
    assert predict_main([str(a), str(b), str(src), "--ensemble", "soft", "--conf", "0.01",
                         "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "x.png").exists()


@pytest.mark.slow  # two toy runs trained once (~60 s), then ~20 s
def test_ensemble_of_runs_with_other_class_names_fails_clearly(runs, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(runs[1], other)
    info = json.loads((other / "run.json").read_text())
    renamed = [f"x{k}" for k in range(len(info["class_names"]))]
    (other / "run.json").write_text(json.dumps({**info, "class_names": renamed}))
    assert val_main([str(runs[0]), str(other), "--ensemble", "wbf"]) == 2
    err = capsys.readouterr().err
    assert "share their class names" in err and str(renamed) in err
    assert predict_main([str(runs[0]), str(other), str(tmp_path), "--ensemble", "nms"]) == 2
    assert str(renamed) in capsys.readouterr().err


def test_several_runs_need_ensemble_and_sweep_needs_one_run(tmp_path, capsys):
    assert val_main([str(tmp_path), str(tmp_path)]) == 2
    assert "need --ensemble" in capsys.readouterr().err
    assert val_main([str(tmp_path), str(tmp_path), "--ensemble", "wbf", "--sweep"]) == 2
    assert "not on an --ensemble" in capsys.readouterr().err


def test_parse_grid():
    from detjax.eval.cli import parse_grid

    assert parse_grid("0.5:0.8:0.05") == pytest.approx([0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8])
    assert parse_grid("0.6,0.7") == (0.6, 0.7)
    with pytest.raises(ValueError, match="start:stop:step"):
        parse_grid("0.5:0.8")


def test_class_names_must_match_and_ensemble_predictor_fuses_members():
    from detjax.infer.ensemble import EnsemblePredictor, check_class_names
    from detjax.infer.predict import Prediction

    assert check_class_names([["a", "b"], ["a", "b"]], ["r1", "r2"]) == ["a", "b"]
    with pytest.raises(ValueError, match=r"r1 has \['a', 'b'\], r2 has \['b', 'a'\]"):
        check_class_names([["a", "b"], ["b", "a"]], ["r1", "r2"])

    class Member:
        batch_size = 4

        def __init__(self, shift):
            self.shift = shift

        def __call__(self, images):
            box = np.array([[10.0 + self.shift, 10, 30, 30]])
            return [Prediction(box, np.array([0.8]), np.array([1])) for _ in images]

    [pred] = EnsemblePredictor([Member(0.0), Member(2.0)], method="wbf")([np.zeros((40, 40, 3))])
    np.testing.assert_allclose(pred.boxes, [[11.0, 10, 30, 30]])
    assert pred.scores.tolist() == [pytest.approx(0.8)] and pred.labels.tolist() == [1]
    with pytest.raises(ValueError, match="ensemble method"):
        EnsemblePredictor([Member(0.0)], method="mean")
