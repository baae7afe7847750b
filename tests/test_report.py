"""One self-contained HTML report per run, evaluation and study: the numbers it shows are those
of metrics.csv, the evaluate JSON and compare.csv, it fetches nothing, and it opens in a real
headless browser without errors."""

from __future__ import annotations

import html
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import TINY_MODEL_ARGS
from defectdet.cli import app
from defectdet.engine.compare import run as cmp
from defectdet.engine.compare.variants import parse_variant
from test_train import make_easy_dataset

runner = CliRunner()


class Tables(HTMLParser):
    """Every table of a report: name -> rows of {column: data-value}; also <img> sources,
    <script> tags and links."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[dict[str, str]]] = {}
        self.images: list[str] = []
        self.scripts = 0
        self.links: list[str] = []
        self._table: str | None = None
        self._best: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self._table = a["data-table"]
            self.tables.setdefault(self._table, [])
        elif tag == "tr" and self._table is not None:
            self.tables[self._table].append({})
        elif tag == "td" and self._table is not None:
            row = self.tables[self._table][-1]
            row[a["data-column"]] = a["data-value"]
            if a.get("class") == "best":
                self._best.append(f"{self._table}:{a['data-column']}:{a['data-value']}")
        elif tag == "img":
            self.images.append(a["src"])
        elif tag == "script":
            self.scripts += 1
        elif tag in ("link", "a") and (a.get("href") or ""):
            self.links.append(a["href"])

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None


def parse(path: Path) -> Tables:
    t = Tables()
    t.feed(path.read_text(encoding="utf-8"))
    for name in t.tables:
        t.tables[name] = [r for r in t.tables[name] if r]  # the header row has no cells
    return t


def number(text: str) -> float | None:
    return None if text == "" else float(text)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A 2-epoch CLI run on tiny data (so the report is written automatically)."""
    tmp = tmp_path_factory.mktemp("run")
    data = make_easy_dataset(tmp / "data")
    args = [
        "train",
        str(data),
        "--project",
        str(tmp),
        "--name",
        "r",
        "--epochs",
        "2",
        "--batch-size",
        "4",
        *TINY_MODEL_ARGS,
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    return tmp / "r"


def test_train_report_numbers_are_metrics_csv(run: Path) -> None:
    page = parse(run / "report.html")
    assert page.scripts == 0 and page.links == []  # nothing to run, nothing to fetch
    assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
    history = pd.read_csv(run / "metrics.csv")
    rows = page.tables["metrics.csv"]
    assert len(rows) == len(history) == 2
    for row, (_, expected) in zip(rows, history.iterrows(), strict=True):
        for column, value in row.items():
            want = expected[column]
            assert number(value) == (None if pd.isna(want) else want), column
    op = page.tables["operating point"]
    assert [r["threshold"] for r in op[:-1]]  # one row per class, then the image level
    text = (run / "report.html").read_text()
    for heading in ("Configuration", "Data", "Training curves", "Operating point", "Confusion"):
        assert heading in text
    assert text.count('class="how"') >= 5  # every section says how to read it


def test_evaluate_report_numbers_are_the_json(run: Path, tmp_path: Path) -> None:
    data = run.parent / "data"
    args = [
        "evaluate",
        str(data),
        "-w",
        str(run / "weights" / "best.pt"),
        "--workers",
        "0",
        "--plots",
        str(tmp_path / "ev"),
    ]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    page = parse(tmp_path / "ev" / "report.html")
    for row, c in zip(page.tables["per class"], report["metrics"]["classes"], strict=True):
        for column, key in (
            ("AP50", "ap50"),
            ("AP", "ap"),
            ("threshold", "threshold"),
            ("recall", "recall"),
            ("precision", "precision"),
        ):
            assert number(row[column]) == c[key], (c["name"], column)
    (image,) = page.tables["image level"]
    assert number(image["AUROC"]) == report["metrics"]["image_level"]["auroc"]
    promise = page.tables["calibrated thresholds"]  # best.pt was calibrated on the val split
    assert len(promise) == len(report["promise"]) > 0
    for row, c in zip(promise, report["promise"], strict=True):
        assert number(row["here"]) == c["count"] / c["of"] and number(row["p"]) == c["p_value"]
    text = (tmp_path / "ev" / "report.html").read_text()
    verdicts = ["worse" if c["worse"] else "holds" for c in report["promise"]]
    assert "Calibrated thresholds on this data" in text and f">{verdicts[0]}<" in text


def test_compare_report_marks_the_best_and_never_overwrites(tmp_path: Path, monkeypatch) -> None:
    def fake_score(run_dir, points):
        k = 0.1 if "ce" in run_dir.name else 0.3
        scores = {
            "pooled_ap50": k,
            "map50": k / 2,
            "mean_class_ap50": k / 2,
            "rarest_ap50": k / 3,
            "recall_at_far": k,
            "far_at_recall": 1 - k,
            "auroc": 0.5 + k,
            "train_minutes": 1.0,
            "best_epoch": 2,
            "ap50_a": k,
            "map": k / 4,
        }
        return scores, [cmp.ClassCount("a", 3, 1)]

    monkeypatch.setattr(cmp, "_train_or_resume", lambda cfg, run_dir: run_dir)
    monkeypatch.setattr(cmp, "_score", fake_score)
    from defectdet.config import TrainConfig

    variants = [parse_variant("loss=ce"), parse_variant("loss=focal")]
    cmp.run_compare(TrainConfig(), variants, tmp_path / "study")
    res = runner.invoke(app, ["report", str(tmp_path / "study")])
    assert res.exit_code == 0, res.output
    table = pd.read_csv(tmp_path / "study" / "compare.csv")
    page = parse(tmp_path / "study" / "report.html")
    rows = page.tables["compare.csv"]
    for row, (_, expected) in zip(rows, table.iterrows(), strict=True):
        assert number(row["pooled_ap50"]) == pytest.approx(expected["pooled_ap50"])
    assert "compare.csv:pooled_ap50:0.3" in page._best
    assert "compare.csv:far_at_recall:0.7" in page._best
    again = runner.invoke(app, ["report", str(tmp_path / "study")])
    assert again.exit_code == 4 and "--exist-ok" in again.output
    assert runner.invoke(app, ["report", str(tmp_path)]).exit_code == 2  # not a run or study


def test_compare_report_shows_the_spread_across_seeds(tmp_path: Path, monkeypatch) -> None:
    from defectdet.config import TrainConfig
    from defectdet.engine.compare.table import seed_verdict
    from defectdet.engine.compare.variants import with_seeds

    def fake_score(run_dir, points):
        k = 0.1 * int(run_dir.name.rsplit("=", 1)[1]) + (0.0 if "ce" in run_dir.name else 0.4)
        return {"pooled_ap50": k, "mean_class_ap50": k, "ap50_a": k}, [cmp.ClassCount("a", 3, 1)]

    monkeypatch.setattr(cmp, "_train_or_resume", lambda cfg, run_dir: run_dir)
    monkeypatch.setattr(cmp, "_score", fake_score)
    variants = with_seeds([parse_variant("loss=ce"), parse_variant("loss=focal")], [1, 3])
    cmp.run_compare(TrainConfig(), variants, tmp_path / "study")
    assert runner.invoke(app, ["report", str(tmp_path / "study")]).exit_code == 0
    page = parse(tmp_path / "study" / "report.html")
    rows = page.tables["summary across seeds: mean (min-max)"]
    summary = pd.read_csv(tmp_path / "study" / "compare-seeds.csv")
    assert len(rows) == 2 and len(page.tables["compare.csv"]) == 4
    for row, (_, expected) in zip(rows, summary.iterrows(), strict=True):
        assert number(row["mean per-class AP50"]) == pytest.approx(expected["mean_class_ap50_mean"])
    assert number(rows[1]["mean per-class AP50"]) == pytest.approx(0.6)  # focal: 0.5, 0.7
    marked = "summary across seeds: mean (min-max):mean per-class AP50:0.6"
    assert any(b.startswith(marked) for b in page._best)
    # the one-line verdict the console and compare.md print under those tables, here too
    text = html.unescape((tmp_path / "study" / "report.html").read_text(encoding="utf-8"))
    verdict = seed_verdict(pd.read_csv(tmp_path / "study" / "compare.csv"))
    assert verdict and "loss=focal" in verdict and "the seeds agree on" in verdict
    assert f"<p>{verdict}</p>" in text


def _browser():
    """A headless Chromium driven by Selenium, or a reason to skip."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install 'defectdet[test]')")
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chrome or not driver:
        pytest.skip(
            "no Chromium/chromedriver on this machine (apt-get install chromium "
            "chromium-driver; .ci/run installs them)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chrome
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,2000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_report_opens_in_a_real_browser(run: Path, tmp_path: Path) -> None:
    browser = _browser()
    try:
        browser.get((run / "report.html").as_uri())
        images = browser.execute_script(
            "return [...document.images].map(i => [i.complete, i.naturalWidth])"
        )
        assert images and all(done and width > 0 for done, width in images)  # every one decodes
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert errors == []
        requests = []
        for entry in browser.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                requests.append(message["params"]["request"]["url"])
        assert requests and all(u.startswith(("file:", "data:")) for u in requests), requests
        shot = tmp_path / "report.png"
        assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000
        width = browser.execute_script("return document.body.scrollWidth")
        browser.set_window_size(390, 844)  # a phone: the page reflows, tables scroll inside
        assert browser.execute_script("return document.body.scrollWidth") <= max(width, 420)
    finally:
        browser.quit()
