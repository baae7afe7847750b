"""Do a checkpoint's calibrated thresholds still deliver, on the data being scored, what they
achieved on the split they were chosen on?

Calibration stores each threshold with its evidence (boxes found of boxes, good parts flagged
of good parts). ``evaluate`` measures the same rates at the same thresholds on new data; this
module sets the two side by side and marks a rate that is worse beyond chance: Fisher's exact
test on the two pairs of counts, two-sided, 5 %. A drop there means the scores have shifted
(new parts, lighting, a new defect look): the thresholds need calibrating on data like this.

Both sides are read from the JSON-ready dicts ``evaluate`` writes (``operating_point`` and
``metrics``), so ``benchmarks/threshold_transfer.py`` checks saved reports the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ALPHA = 0.05
"""Significance of the test that marks a rate as worse than its promise."""

RATE_NAMES = {"image level": "defect recall (images)", "good parts flagged": "good parts flagged"}
"""How tables name the image-level rates; a class's row is its box recall."""


@dataclass
class PromiseCheck:
    """One rate at a calibrated threshold: on the calibration split and here."""

    name: str  # a class (box recall), "image level" (defect recall) or "good parts flagged"
    threshold: float
    promised_count: int
    promised_of: int
    count: int
    of: int
    p_value: float
    worse: bool  # recall lower / false-alarm rate higher, beyond chance
    lower_is_better: bool = False  # True for the false-alarm rate

    @property
    def promised(self) -> float:
        return self.promised_count / self.promised_of

    @property
    def rate(self) -> float:
        return self.count / self.of

    @property
    def verdict(self) -> str:
        """worse or better beyond chance, else holds."""
        if self.p_value >= ALPHA:
            return "holds"
        return "worse" if self.worse else "better"

    @property
    def label(self) -> str:
        return RATE_NAMES.get(self.name, f"{self.name} box recall")

    def to_dict(self) -> dict[str, Any]:
        extra = {"promised": self.promised, "rate": self.rate, "verdict": self.verdict}
        return asdict(self) | extra | {"label": self.label}


def check_promise(op: dict[str, Any], metrics: dict[str, Any]) -> list[PromiseCheck]:
    """Each calibrated rate against the one measured here, where both have examples.

    ``op`` is a stored operating point (:meth:`OperatingPoint.to_dict`), ``metrics`` a
    :meth:`MetricsResult.to_dict`. A class scored at a threshold other than its calibrated
    one (``--class-conf``) is left out.
    """
    checks = []
    here = {c["name"]: c for c in metrics["classes"]}
    for ev in op["classes"]:
        c = here.get(ev["name"])
        if c is None or c["recall"] is None or abs(c["threshold"] - ev["threshold"]) > 1e-9:
            continue
        found = c.get("found", round(c["recall"] * c["instances"]))  # reports before "found"
        pair = (ev["found"], ev["examples"]), (found, c["instances"])
        checks += _check(ev["name"], ev["threshold"], *pair)
    calibrated = op["thresholds"]
    if any(abs(c["threshold"] - calibrated.get(c["name"], -1)) > 1e-9 for c in here.values()):
        return checks  # overridden thresholds: the image-level promise was for other ones
    image, il = op["image"], metrics["image_level"]
    lowest = min(calibrated.values(), default=image["threshold"])
    if il.get("defect_recall") is not None:
        n = il["defect_images"]
        found = round(il["defect_recall"] * n)
        checks += _check("image level", lowest, (image["found"], image["examples"]), (found, n))
    good = image.get("good_images")
    if good and image.get("false_alarm_rate") is not None and il.get("ok_images"):
        flagged, n = round(image["false_alarm_rate"] * good), il["ok_images"]
        here_flagged = round(il["false_alarm_rate"] * n)
        pair = (flagged, good), (here_flagged, n)
        checks += _check("good parts flagged", lowest, *pair, lower_is_better=True)
    return checks


def _check(
    name: str,
    threshold: float,
    promised: tuple[int, int],
    here: tuple[int, int],
    lower_is_better: bool = False,
) -> list[PromiseCheck]:
    """A one-item list for (count, of) pairs, or none where either side has no examples."""
    if promised[1] <= 0 or here[1] <= 0:
        return []
    from scipy.stats import fisher_exact

    table = [[promised[0], promised[1] - promised[0]], [here[0], here[1] - here[0]]]
    p = float(fisher_exact(table).pvalue)
    gap = here[0] / here[1] - promised[0] / promised[1]
    worse = (gap > 0 if lower_is_better else gap < 0) and p < ALPHA
    return [PromiseCheck(name, float(threshold), *promised, *here, p, worse, lower_is_better)]
