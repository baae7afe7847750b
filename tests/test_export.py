"""defectdet export: ONNX (network + metadata, dynamic batch) and TorchScript, both checked
against PyTorch; predict --backend onnxruntime against --backend torch."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from defectdet import __version__
from defectdet.cli import app
from defectdet.engine.export import export
from defectdet.errors import ConfigError, OutputExistsError
from defectdet.model import PostprocessSettings, load_model
from detector_helpers import make_checkpoint, predict_options, run_predict, write_images

BOX_TOL = 0.5  # px, in original image pixels
SCORE_TOL = 1e-4  # absolute, on scores in 0..1


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return make_checkpoint(
        tmp_path_factory.mktemp("ckpt") / "best.pt", classes=("scratch", "crack")
    )


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_onnx_export_metadata_and_backend_parity(tmp_path: Path, weights: Path) -> None:
    import onnx

    info = export(weights, "onnx", tmp_path / "m.onnx")
    diffs = info["max_abs_diff"]  # every anchor, on a batch of 3 (exported with 2)
    assert diffs["scores"] < SCORE_TOL and diffs["boxes"] < BOX_TOL
    meta = {p.key: p.value for p in onnx.load(tmp_path / "m.onnx").metadata_props}
    assert json.loads(meta["class_names"]) == ["scratch", "crack"]
    assert meta["image_size"] == "64" and meta["defectdet_version"] == __version__
    with pytest.raises(OutputExistsError):
        export(weights, "onnx", tmp_path / "m.onnx")
    # Same detections from both backends, images of several sizes, batches of 2 and 1.
    write_images(tmp_path / "in", 2, width=96, height=72)
    write_images(tmp_path / "in" / "more", 1, width=50, height=120, seed=1)
    results = {}
    for backend, w in (("torch", weights), ("onnxruntime", tmp_path / "m.onnx")):
        o = predict_options(
            w,
            tmp_path / backend,
            backend=backend,
            conf=0.4,
            batch_size=2,
            workers=0,
            device="cpu",
            progress=False,
        )
        run_predict(tmp_path / "in", o)
        results[backend] = rows(tmp_path / backend / "predictions.csv")
    ref, got = results["torch"], results["onnxruntime"]
    assert len(ref) == len(got) > 0
    for r, g in zip(ref, got, strict=True):
        assert (r["file_name"], r["class"]) == (g["file_name"], g["class"])
        assert abs(float(r["score"]) - float(g["score"])) < SCORE_TOL
        for k in ("x1", "y1", "x2", "y2"):
            assert abs(float(r[k]) - float(g[k])) < BOX_TOL


def test_onnxruntime_backend_needs_an_onnx_file(tmp_path: Path, weights: Path) -> None:
    write_images(tmp_path / "in", 1)
    o = predict_options(
        weights, tmp_path / "o", backend="onnxruntime", workers=0, device="cpu", progress=False
    )
    with pytest.raises(ConfigError, match=r"exported \.onnx"):
        run_predict(tmp_path / "in", o)


def test_torchscript_export_matches_eager(tmp_path: Path, weights: Path) -> None:
    info = export(weights, "torchscript", check=False)  # default: next to the weights
    out = weights.with_name("best.torchscript.pt")
    assert info["out"] == str(out) and out.is_file()
    extra = {"defectdet.json": ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(str(out), _extra_files=extra)
    assert json.loads(extra["defectdet.json"])["class_names"] == ["scratch", "crack"]
    model, _ = load_model(weights)
    model.configure(PostprocessSettings(score_thresh=0.3))
    scripted.score_thresh = 0.3
    g = torch.Generator().manual_seed(1)
    images = [torch.rand(3, 64, 64, generator=g), torch.rand(3, 48, 64, generator=g)]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = model(images)
        _, got = scripted(images)
    for r, s in zip(ref, got, strict=True):
        assert len(r["boxes"]) == len(s["boxes"]) > 0
        np.testing.assert_allclose(s["boxes"], r["boxes"], atol=1e-3)
        np.testing.assert_allclose(s["scores"], r["scores"], atol=1e-5)
        assert torch.equal(s["labels"], r["labels"])
    out.unlink()


def test_cli_export(tmp_path: Path, weights: Path) -> None:
    runner = CliRunner()
    target = tmp_path / "cli.onnx"
    args = ["export", "-w", str(weights), "--format", "onnx", "--out", str(target), "--no-check"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert target.is_file() and "wrote" in first.stdout
    again = runner.invoke(app, args)
    assert again.exit_code == 4 and "--overwrite" in again.stderr
    bad = runner.invoke(app, ["export", "-w", str(weights), "--format", "tflite"])
    assert bad.exit_code == 2 and "onnx or torchscript" in bad.stderr


def _assert_close(a, b, path: str = "") -> None:
    """Nested JSON-like values equal, floats within 1e-3."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            _assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and b is not None:
        assert abs(a - b) < 1e-3, (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_evaluate_onnxruntime_backend_matches_torch(
    coco_dataset: Path, tmp_path_factory, weights: Path
) -> None:
    out = tmp_path_factory.mktemp("onnx-eval")
    export(weights, "onnx", out / "m.onnx", check=False)
    base = ["evaluate", str(coco_dataset), "--workers", "0", "--device", "cpu", "--conf", "0.3"]
    reports = {}
    for backend, w in (("torch", weights), ("onnxruntime", out / "m.onnx")):
        res = CliRunner().invoke(app, [*base, "-w", str(w), "--backend", backend, "--json", "-"])
        assert res.exit_code == 0, res.output
        reports[backend] = json.loads(res.stdout)
    ref, got = reports["torch"], reports["onnxruntime"]
    assert got["backend"] == "onnxruntime"
    # The random head fires: the comparison is over real detections, not two empty reports.
    level = ref["metrics"]["image_level"]
    assert level["defect_recall"] > 0 or level["false_alarm_rate"] > 0
    _assert_close(ref["metrics"], got["metrics"])
    _assert_close(ref["pr_curves"], got["pr_curves"])
    wrong = CliRunner().invoke(app, [*base, "-w", str(weights), "--backend", "onnxruntime"])
    assert wrong.exit_code == 2 and "exported .onnx" in wrong.stderr


def test_export_without_the_onnx_extra_is_one_line(tmp_path: Path, weights: Path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # as if the [onnx] extra were missing
    res = CliRunner().invoke(app, ["export", "-w", str(weights), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "pip install 'defectdet[onnx]'" in " ".join(res.output.split())
    assert not (tmp_path / "m.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    (tmp_path / "in").mkdir()
    write_images(tmp_path / "in", 1)
    onnx_file = tmp_path / "x.onnx"
    onnx_file.write_bytes(b"not used")
    res = CliRunner().invoke(
        app, ["predict", str(tmp_path / "in"), "-w", str(onnx_file), "--backend", "onnxruntime"]
    )
    assert res.exit_code == 2 and "defectdet[onnx]" in " ".join(res.output.split())


def test_export_is_refused_beyond_the_tolerances(tmp_path: Path, weights: Path, monkeypatch):
    from defectdet.engine import export as export_module

    write_images(tmp_path / "samples", 2, width=80, height=60)
    info = export(weights, "onnx", tmp_path / "ok.onnx", images=tmp_path / "samples")
    measured = info["max_abs_diff"]["scores"]
    assert 0 < measured < SCORE_TOL  # float32 differences: real, and tiny
    monkeypatch.setattr(export_module, "SCORE_TOL", measured / 2)  # now they are too large
    args = ["export", "-w", str(weights), "--out", str(tmp_path / "m.onnx")]
    res = CliRunner().invoke(app, [*args, "--images", str(tmp_path / "samples")])
    text = " ".join(res.output.split())
    assert res.exit_code == 1 and "does not reproduce PyTorch" in text and "scores" in text
    assert f"{measured:.3g}"[:4] in text  # the measured difference is named
    assert not (tmp_path / "m.onnx").exists()
    ts_args = ["export", "-w", str(weights), "-f", "torchscript", "--out", str(tmp_path / "t")]
    ts = CliRunner().invoke(app, ts_args)  # scripted = eager exactly: passes any tolerance
    assert ts.exit_code == 0 and (tmp_path / "t").exists(), ts.output
