"""detjax.export: jax.export and ONNX files equal the Python model; loading needs only jax."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from detjax import export as ex
from detjax.models.detector import Detector
from detjax.nms import non_max_suppression

IMGSZ = 64
CONF = 0.3  # the random detector's class probabilities spread around 0.5: some pass, not all
MAX_DET = 20
NAMES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def model() -> Detector:
    """A width-1/16 YOLOv8 with random BN statistics (so folding changes the weights) and
    class biases at 0 (so probabilities are not all below the threshold), eval mode."""
    m = Detector(depth=0.33, width=0.0625, max_channels=1024, num_classes=len(NAMES),
                 rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    for _, node in nnx.iter_graph(m):
        if isinstance(node, nnx.BatchNorm):
            c = node.mean.shape[0]
            node.mean[...] = rng.normal(0, 0.5, c).astype(np.float32)
            node.var[...] = rng.uniform(0.5, 2.0, c).astype(np.float32)
    for branch in m.head.cls_branches:
        branch.layers[-1].bias[...] = np.zeros(len(NAMES), np.float32)
    m.eval()
    return m


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).random((3, IMGSZ, IMGSZ, 3), np.float32)


@pytest.fixture(scope="module")
def reference(model, images) -> dict[str, np.ndarray]:
    """The Python model (not fused), jitted: ``predictions``, and detections by
    detjax.non_max_suppression (``boxes``, ``scores``, ``labels``, ``valid``) on request."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(x):
        m = nnx.merge(graphdef, state)
        return m.predict(m(x))

    return {"predictions": np.asarray(run(images))}


@pytest.fixture(scope="module")
def detections(reference) -> dict[str, np.ndarray]:
    det = jax.jit(lambda p: non_max_suppression(p, conf_thres=CONF, iou_thres=0.7,
                                                max_det=MAX_DET))(reference["predictions"])
    rows = np.asarray(det.detections)
    return {"boxes": rows[..., :4], "scores": rows[..., 4],
            "labels": rows[..., 5].astype(np.int32), "valid": np.asarray(det.valid)}


def assert_same_detections(out: dict[str, np.ndarray], ref: dict[str, np.ndarray],
                           n: int | None = None) -> None:
    n = len(ref["valid"]) if n is None else n
    np.testing.assert_array_equal(out["valid"], ref["valid"][:n])
    assert out["valid"].sum() > 0  # something was detected
    ok = out["valid"]
    np.testing.assert_array_equal(out["labels"][ok], ref["labels"][:n][ok])
    np.testing.assert_allclose(out["scores"][ok], ref["scores"][:n][ok], atol=1e-5)
    np.testing.assert_allclose(out["boxes"][ok], ref["boxes"][:n][ok], atol=1e-3)
    assert out["boxes"].dtype == np.float32 and out["labels"].dtype == np.int32


def test_bad_format_imgsz_and_batch_are_named(model, tmp_path):
    with pytest.raises(ValueError, match=r"format must be one of \('jax', 'onnx'\)"):
        ex.export(model, tmp_path / "m.tflite", format="tflite")
    with pytest.raises(ValueError, match="imgsz must be a positive multiple of 32"):
        ex.export(model, tmp_path / "m.jax", imgsz=100)
    with pytest.raises(ValueError, match="batch must be a positive int"):
        ex.export(model, tmp_path / "m.jax", imgsz=IMGSZ, batch=0)
    with pytest.raises(FileNotFoundError, match="sidecar"):
        ex.load(tmp_path / "missing.jax")


def test_cli_rejects_bad_arguments_before_restoring(capsys, monkeypatch):
    def fail(path):
        raise AssertionError("the run must not be restored for bad arguments")

    monkeypatch.setattr(ex, "restore_run", fail)
    assert ex.main(["runs/x", "--format", "tflite"]) == 2
    assert "format must be one of ('jax', 'onnx'), got 'tflite'" in capsys.readouterr().err
    assert ex.main(["runs/x", "--imgsz", "100"]) == 2
    assert "imgsz must be a positive multiple of 32" in capsys.readouterr().err
    assert ex.main([]) == 2
    assert ex.main(["--help"]) == 0


@pytest.mark.slow  # export + compile of network and NMS (~20 s idle, minutes when loaded)
def test_jax_export_with_nms_round_trip_and_cli(model, images, detections, tmp_path,
                                                monkeypatch, capsys):
    """`detjax export RUN --nms --dynamic-batch` (run restore stubbed with the model): the
    loaded file gives the Python model's detections at batch 3 and 1, and its sidecar says so."""
    monkeypatch.setattr(ex, "restore_run", lambda p: (model, NAMES, 96, tmp_path))
    out = tmp_path / "m.jax"
    argv = [str(tmp_path), "--imgsz", str(IMGSZ), "--nms", "--dynamic-batch", "--conf",
            str(CONF), "--max-det", str(MAX_DET), "--out", str(out)]
    assert ex.main(argv) == 0, capsys.readouterr().err
    meta = json.loads(ex.sidecar_path(out).read_text())
    assert meta["class_names"] == NAMES and meta["imgsz"] == IMGSZ
    assert meta["input"]["shape"] == ["batch", IMGSZ, IMGSZ, 3]
    assert [o["name"] for o in meta["outputs"]] == ["boxes", "scores", "labels", "valid"]
    assert meta["nms"] == {"conf_thres": CONF, "iou_thres": 0.7, "max_det": MAX_DET}
    detector = ex.load(out)
    assert detector.class_names == NAMES and detector.imgsz == IMGSZ
    assert_same_detections(detector(images), detections)
    one = detector(images[:1])
    assert one["boxes"].shape == (1, MAX_DET, 4)
    assert_same_detections(one, detections, n=1)
    with pytest.raises(ValueError, match="images must be float32"):
        detector(images[:, :32])


def test_jax_export_raw_fixed_batch(model, images, reference, tmp_path):
    path = ex.export(model, tmp_path / "raw.jax", imgsz=IMGSZ, batch=3, class_names=NAMES)
    detector = ex.load(path)
    out = detector(images)
    assert list(out) == ["predictions"]
    np.testing.assert_allclose(out["predictions"], reference["predictions"], rtol=1e-5,
                               atol=1e-4)
    with pytest.raises(ValueError, match=r"images must be float32 \[3, 64, 64, 3\]"):
        detector(images[:1])


FRESH = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax
    from detjax.export import load
    out = {}
    for path in sys.argv[2:]:
        detector = load(path)
        res = detector(np.load(sys.argv[1]))
        out[path] = {k: v.tolist() for k, v in res.items()}
        if path.endswith(".jax"):  # plain jax, as the sidecar documents it
            exp = jax.export.deserialize(bytearray(open(path, "rb").read()))
            plain = exp.call(np.load(sys.argv[1]))
            out[path + ":plain"] = {"boxes": np.asarray(plain[0]).tolist()}
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "optax", "orbax",
                   "torch") or m.startswith(("detjax.models", "detjax.train", "detjax.data")))
    print(json.dumps({"outputs": out, "heavy_modules": heavy}))
""")


def run_fresh(npy: Path, *paths: Path) -> dict:
    """Loads the exported files in a fresh interpreter that imports only jax and numpy
    (+ onnxruntime for ONNX) and detjax.export; returns its outputs and heavy imports."""
    proc = subprocess.run([sys.executable, "-c", FRESH, str(npy), *map(str, paths)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # a fresh interpreter loads and compiles the artifact (~10 s idle)
def test_jax_export_loads_in_a_fresh_process_without_detjax_model_code(model, images,
                                                                       detections, tmp_path):
    path = ex.export(model, tmp_path / "m.jax", imgsz=IMGSZ, batch=3, nms=True,
                     conf_thres=CONF, max_det=MAX_DET, class_names=NAMES)
    np.save(tmp_path / "x.npy", images)
    got = run_fresh(tmp_path / "x.npy", path)
    assert got["heavy_modules"] == []
    out = {k: np.asarray(v) for k, v in got["outputs"][str(path)].items()}
    assert_same_detections({**out, "boxes": out["boxes"].astype(np.float32),
                            "labels": out["labels"].astype(np.int32)}, detections)
    np.testing.assert_array_equal(got["outputs"][f"{path}:plain"]["boxes"], out["boxes"])


@pytest.mark.slow  # jax2onnx conversion of the network (~1-2 min on a loaded 2-core CPU)
def test_onnx_export_equals_python_model_in_process_and_fresh(model, images, reference,
                                                              detections, tmp_path):
    pytest.importorskip("jax2onnx")
    pytest.importorskip("onnxruntime")
    raw = ex.export(model, tmp_path / "raw.onnx", format="onnx", imgsz=IMGSZ,
                    dynamic_batch=True, class_names=NAMES)
    out = ex.load(raw)(images)
    np.testing.assert_allclose(out["predictions"], reference["predictions"], rtol=1e-5,
                               atol=1e-3)
    np.testing.assert_allclose(ex.load(raw)(images[:1])["predictions"],
                               reference["predictions"][:1], rtol=1e-5, atol=1e-3)
    nms = ex.export(model, tmp_path / "nms.onnx", format="onnx", imgsz=IMGSZ, batch=3,
                    nms=True, conf_thres=CONF, max_det=MAX_DET, class_names=NAMES)
    assert (tmp_path / "nms.onnx.nms.jax").is_file()
    assert json.loads(ex.sidecar_path(nms).read_text())["postprocess_file"] == "nms.onnx.nms.jax"
    assert_same_detections(ex.load(nms)(images), detections)
    np.save(tmp_path / "x.npy", images)
    got = run_fresh(tmp_path / "x.npy", raw, nms)
    assert got["heavy_modules"] == []
    np.testing.assert_allclose(got["outputs"][str(raw)]["predictions"], out["predictions"],
                               rtol=1e-6, atol=1e-6)
    fresh = {k: np.asarray(v) for k, v in got["outputs"][str(nms)].items()}
    np.testing.assert_array_equal(fresh["valid"], detections["valid"])


@pytest.mark.slow  # trains a one-epoch run first
def test_cli_exports_a_trained_run(tmp_path):
    pytest.importorskip("detjax.train.loop")
    from detjax import cli
    from detjax.config import load_config
    from detjax.infer.predict import make_postprocess
    from detjax.run import restore_run
    from detjax.train import train_and_evaluate

    run = tmp_path / "run"
    cfg = load_config(None, [f"workdir={run}", "epochs=1", "data.num_train=16",
                             "data.num_val=8", "data.imgsz=64", "train.batch=8",
                             "eval.batch=8", "data.synthetic_size=96", "train.time_limit=0"])
    train_and_evaluate(cfg, run)
    assert cli.main(["export", str(run), "--nms", "--conf", "0.001"]) == 0
    detector = ex.load(run / "export" / "model.jax")
    assert detector.imgsz == 64 and detector.class_names
    model = restore_run(run).model
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    graphdef, state = nnx.split(model)
    det, valid = jax.jit(lambda x: make_postprocess(conf_thres=0.001)(
        nnx.merge(graphdef, state).predict(nnx.merge(graphdef, state)(x))))(x)
    out = detector(x)
    det, valid = np.asarray(det)[0], np.asarray(valid)[0]
    assert out["valid"][0].sum() == valid.sum() > 0
    # near-equal scores of a one-epoch model may swap places: compare as sets
    ours = np.concatenate([out["boxes"][0], out["scores"][0][:, None],
                           out["labels"][0][:, None]], 1)[out["valid"][0]]
    theirs = det[valid]
    order = lambda rows: rows[np.lexsort((rows[:, 0].round(1), rows[:, 5], rows[:, 4].round(4)))]
    np.testing.assert_allclose(order(ours), order(theirs), atol=1e-3)
