"""Parsers for option values written as text (``3-5``, ``name=0.2,name=0.5``, ...): one of
each, used by the schema's checks and by the code that reads the values."""

from __future__ import annotations

import math
import re


def parse_pairs(text: str, option: str, what: str = "VALUE") -> list[tuple[str, str]]:
    """``"a=1,b=2"`` -> ``[("a", "1"), ("b", "2")]`` (spaces trimmed, empty items skipped).

    Raises:
        ValueError: an item without ``=`` or with an empty name (message names ``option``).
    """
    pairs = []
    for part in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"{option}: expected name={what},..., got {part!r}")
        pairs.append((name.strip(), value.strip()))
    return pairs


def parse_number(text: str, option: str, what: str = "value") -> float:
    """A finite float, or ValueError naming ``option``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{option}: {what} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{option}: {what} {text!r} is not a finite number")
    return value


def parse_number_map(
    text: str,
    option: str,
    low: float = -math.inf,
    high: float = math.inf,
    what: str = "VALUE",
) -> dict[str, float]:
    """``"crack=0.15,scratch=0.4"`` -> ``{name: value}`` with each value in [low, high]; a name
    given twice is an error. Used for ``--class-conf``, ``--class-weights`` and synth's
    ``--classes``."""
    out: dict[str, float] = {}
    for name, raw in parse_pairs(text, option, what):
        if name in out:
            raise ValueError(f"{option}: {name!r} is given twice")
        value = parse_number(raw, option, f"{what.lower()} of {name!r}")
        if not low <= value <= high:
            bound = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise ValueError(f"{option}: {what.lower()} of {name!r} must be {bound}, got {value:g}")
        out[name] = value
    return out


def parse_targets(text: str) -> dict[str, float] | float | None:
    """``--target-recall``: ``""`` -> None, ``"0.9"`` -> 0.9, ``"crack=0.99,..."`` -> a map; every
    target in (0, 1]."""
    text = str(text).strip()
    if not text:
        return None
    if "=" not in text:
        value = parse_number(text, "--target-recall")
        if not 0 < value <= 1:
            raise ValueError(f"--target-recall must be in (0, 1], got {value:g}")
        return value
    targets = parse_number_map(text, "--target-recall", 0.0, 1.0, what="RECALL")
    if any(t <= 0 for t in targets.values()):
        raise ValueError("--target-recall: every recall must be > 0")
    return targets


def parse_levels(text: str) -> tuple[int, int]:
    """``"3-7"`` -> (3, 7); ``"5"`` -> (5, 5)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", str(text))
    if not match:
        raise ValueError(f"expected e.g. 3-7, got {text!r}")
    lo, hi = int(match.group(1)), int(match.group(2) or match.group(1))
    if lo not in (2, 3) or hi not in (5, 6, 7):
        raise ValueError(f"{text!r}: the lowest level must be 2 or 3 and the highest 5, 6 or 7")
    return lo, hi


CLASS_WEIGHT_KINDS = ("none", "inverse", "sqrt-inverse", "effective")


def parse_class_weights(text: str) -> tuple[str, float | None, dict[str, float]]:
    """``--class-weights`` -> (kind, beta, manual): ``kind`` one of :data:`CLASS_WEIGHT_KINDS`
    or ``"manual"``; ``beta`` for ``effective:BETA``; ``manual`` for ``name=W,...`` (W ≥ 0)."""
    spec = (str(text) or "none").strip()
    key, colon, arg = spec.partition(":")
    key = key.strip().lower()
    if key in CLASS_WEIGHT_KINDS and not colon:
        return key, None, {}
    if key == "effective":
        if not arg.strip():
            return key, None, {}
        beta = parse_number(arg.strip(), "--class-weights", "beta")
        if not 0 <= beta < 1:
            raise ValueError(f"--class-weights: beta must be in [0, 1), got {beta:g}")
        return key, beta, {}
    if "=" in spec:
        return "manual", None, parse_number_map(spec, "--class-weights", low=0, what="WEIGHT")
    raise ValueError(
        f"{spec!r} is not one of none, inverse, sqrt-inverse, effective[:BETA] or name=WEIGHT,..."
    )


def parse_device(text: str) -> str:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` (syntax only; availability is checked when the
    device is opened)."""
    value = str(text).strip().lower()
    if value in ("auto", "cpu") or re.fullmatch(r"cuda(:\d+)?", value):
        return value
    raise ValueError(f"unknown device {text!r}")
