"""Do calibrated thresholds keep their promise on data no run has seen?

``train`` (and ``calibrate``) choose each class's threshold on the validation split and store,
beside it, what it achieved there: boxes found of boxes, defective images caught, good parts
flagged. ``evaluate --json`` on held-out data measures the same rates at the same thresholds
and sets them side by side (``promise``: :mod:`defectdet.engine.calibrate.promise`, Fisher's
exact test, 5 %). This script tabulates that for several saved reports, recomputing it so
reports written before ``evaluate`` did so can be read too.

Run: .venv/bin/python benchmarks/threshold_transfer.py REPORT.json [REPORT.json ...] [--json]
where each REPORT is ``defectdet evaluate HELDOUT -w best.pt --json REPORT.json`` of a
calibrated checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from defectdet.engine.calibrate.promise import RATE_NAMES, check_promise


def table(name: str, checks: list[dict]) -> str:
    lines = [
        f"## {name}",
        "",
        "| rate | threshold | when chosen (val) | held out | Fisher p | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for c in checks:
        verdict = "**worse**" if c["worse"] else c["verdict"]
        lines.append(
            f"| {c['label']} | {c['threshold']:.3f} "
            f"| {c['promised']:.1%} ({c['promised_count']}/{c['promised_of']}) "
            f"| {c['rate']:.1%} ({c['count']}/{c['of']}) | {c['p_value']:.2g} | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", type=Path, help="evaluate --json reports")
    parser.add_argument("--json", action="store_true", help="print the checks as JSON")
    args = parser.parse_args(argv)
    result = {}
    for path in args.reports:
        report = json.loads(path.read_text())
        if not report.get("operating_point"):
            raise SystemExit(f"{path}: the checkpoint has no calibrated thresholds")
        checks = check_promise(report["operating_point"], report["metrics"])
        result[str(path)] = [c.to_dict() for c in checks]
    if args.json:
        json.dump(result, sys.stdout, indent=2)
        print()
        return 0
    print("\n\n".join(table(name, checks) for name, checks in result.items()))
    boxes = [c for cs in result.values() for c in cs if c["name"] not in RATE_NAMES]
    worse = sum(c["verdict"] == "worse" for c in boxes)
    better = sum(c["verdict"] == "better" for c in boxes)
    print(f"\n{len(boxes)} class thresholds: worse beyond chance {worse}, better {better}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
