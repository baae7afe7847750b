"""The CLI through Typer's runner: reports, JSON for scripts, and exit codes for bad input."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from defectdet import __version__
from defectdet.cli import app

runner = CliRunner()
SAMPLES = Path(__file__).resolve().parents[1] / "data_samples"


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_analyze_json_matches_independent_counts(tmp_path: Path):
    out = tmp_path / "report.json"
    plot = tmp_path / "report.png"
    result = runner.invoke(app, ["analyze", str(SAMPLES), "--json", str(out), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    doc_images, doc_anns = [], []
    for f in sorted((SAMPLES / "annotations").glob("*.json")):
        doc = json.loads(f.read_text())
        doc_images += doc["images"]
        doc_anns += doc["annotations"]
        names = {c["id"]: c["name"] for c in doc["categories"]}
    with_boxes = {a["image_id"] for a in doc_anns}
    assert report["num_images"] == len(doc_images)
    assert report["num_annotations"] == len(doc_anns)
    assert report["num_background_images"] == len(doc_images) - len(with_boxes)
    by_class = {c["name"]: c for c in report["classes"]}
    for cid, name in names.items():
        anns = [a for a in doc_anns if a["category_id"] == cid]
        assert by_class[name]["instances"] == len(anns)
        assert by_class[name]["images"] == len({a["image_id"] for a in anns})
    counts = [len([a for a in doc_anns if a["category_id"] == c]) for c in names]
    assert report["imbalance_ratio"] == max(counts) / min(counts)
    assert "always answers 'no defect'" in result.output
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_analyze_json_to_stdout_is_pure_json():
    result = runner.invoke(app, ["analyze", str(SAMPLES), "--json", "-"])
    assert result.exit_code == 0
    assert json.loads(result.stdout)["num_images"] > 0


def test_bad_input_exit_codes(tmp_path: Path):
    missing = runner.invoke(app, ["analyze", str(tmp_path / "nothing")])
    assert missing.exit_code == 2 and "no such file" in missing.output
    (tmp_path / "broken.json").write_text('{"images": [')
    broken = runner.invoke(app, ["analyze", str(tmp_path / "broken.json")])
    assert broken.exit_code == 2 and "not valid JSON" in broken.output
    assert "Traceback" not in broken.output


def test_strict_turns_problems_into_failure(tmp_path: Path):
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((20, 20, 3), np.uint8))
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 20}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]}],
        "categories": [{"id": 1, "name": "x"}],
    }
    (tmp_path / "a.json").write_text(json.dumps(doc))
    lenient = runner.invoke(app, ["analyze", str(tmp_path / "a.json")])
    assert lenient.exit_code == 0 and "unknown class" in lenient.output
    strict = runner.invoke(app, ["analyze", str(tmp_path / "a.json"), "--strict"])
    assert strict.exit_code == 2 and "annotation id 1" in strict.output


def test_synth_then_convert_round_trip(tmp_path: Path):
    result = runner.invoke(
        app, ["synth", str(tmp_path / "d"), "-n", "12", "--size", "64", "--seed", "3"]
    )
    assert result.exit_code == 0, result.output
    again = runner.invoke(app, ["synth", str(tmp_path / "d"), "-n", "12", "--size", "64"])
    assert again.exit_code == 4 and "--overwrite" in again.output
    out = tmp_path / "d" / "all.json"
    conv = runner.invoke(app, ["convert", str(tmp_path / "d"), str(out)])
    assert conv.exit_code == 0, conv.output
    merged = json.loads(out.read_text())
    parts = [json.loads(p.read_text()) for p in (tmp_path / "d" / "annotations").glob("*.json")]
    assert len(merged["images"]) == sum(len(p["images"]) for p in parts) == 12
    assert len(merged["annotations"]) == sum(len(p["annotations"]) for p in parts)
    refuse = runner.invoke(app, ["convert", str(tmp_path / "d"), str(out)])
    assert refuse.exit_code == 4


def test_help_prose_reflows_but_examples_keep_their_lines():
    from defectdet.cli.app import reflow_help

    doc = """Summary line.

    Prose wrapped
    in the source.

    Examples:
      defectdet train a
      defectdet train b
    """
    assert reflow_help(doc) == (
        "Summary line.\n\nProse wrapped in the source.\n\n"
        "Examples:\n  defectdet train a\n  defectdet train b"
    )
    # Narrow terminal: a paragraph wraps by width, not at the source's line ends.
    result = runner.invoke(app, ["compare", "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Does focal loss"))
    end = next(i for i, line in enumerate(lines) if line.endswith("resumes."))
    prose = " ".join(lines[start : end + 1])
    # ~390 characters fill 6 lines of 78; source-wrapped lines each wrapped again took 10.
    assert end - start + 1 <= len(prose) // 70 + 1
