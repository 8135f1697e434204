"""`detjax val` / `detjax predict`: argument handling, run lookup, metric report; one slow
end-to-end run (tiny training, then val and predict on it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detjax import cli
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
