"""Remedies for class imbalance: repeat factors, loss weights, and plain-language advice.

The numbers here are shared with training: ``defectdet train --sampler repeat-factor`` uses
:func:`repeat_factors` (implemented once, in :mod:`defectdet.data.repeat_factors`, and
re-exported here) and ``--class-weights SPEC`` uses :func:`class_weights`, so what
``defectdet analyze`` prints is exactly what training will do.
"""

from __future__ import annotations

import math
import shlex

import numpy as np

from defectdet.config.presets import PRESETS
from defectdet.config.values import parse_class_weights
from defectdet.data.repeat_factors import repeat_factors as repeat_factors  # re-exported
from defectdet.errors import ConfigError

DEFAULT_REPEAT_THRESHOLD = 0.1
DEFAULT_BETA = 0.999

# Advice thresholds (images holding a class; imbalance ratio; shares of images or boxes).
FEW_IMAGES = 10  # below this no remedy makes a detector reliable on the class
SOME_IMAGES = 30  # below this per-class AP is noisy and the class stays fragile
IMBALANCE_WORTH_FIXING = 5.0
MOSTLY_BACKGROUND = 0.5
SMALL_BOX_SHARE = 0.3


# ---------------------------------------------------------------------------- sampling
def choose_repeat_threshold(image_freq: np.ndarray) -> float:
    """The repeat threshold ``t``: 0.1, lowered to the commonest class's image frequency when
    even that class is in fewer than 10% of images.

    With ``t`` = 0.1 and every class rarer than that (usual when most images are defect-free),
    every defect image would be repeated and the factors would mostly re-weight defect vs.
    background images, which ``--background-fraction`` does more directly. Capping ``t`` at the
    commonest class keeps that class at factor 1, so the factors express only between-class
    imbalance.
    """
    f = np.asarray(image_freq, dtype=np.float64)
    f = f[f > 0]
    if len(f) == 0:
        return DEFAULT_REPEAT_THRESHOLD
    return float(min(DEFAULT_REPEAT_THRESHOLD, f.max()))


# ---------------------------------------------------------------------------- loss weights
def _normalise(raw: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Zero the weights of absent classes; scale the rest to mean 1 (sum = classes present).

    Mean 1 over the classes that occur keeps the loss on the same scale as unweighted training,
    so the learning rate need not change.
    """
    present = np.asarray(counts) > 0
    out = np.zeros(len(raw), dtype=np.float64)
    if present.any():
        out[present] = raw[present] * present.sum() / raw[present].sum()
    return out


def effective_number_weights(counts: np.ndarray, beta: float = DEFAULT_BETA) -> np.ndarray:
    """Class-balanced weights (1 - β) / (1 - β^n) (Cui et al. 2019), normalised to mean 1 over
    the classes with n > 0; classes with n = 0 get 0. β = 0 gives equal weights, β → 1 tends to
    inverse frequency.
    """
    if not 0.0 <= beta < 1.0:
        raise ConfigError(f"effective-number beta must be in [0, 1), got {beta}")
    n = np.asarray(counts, dtype=np.float64)
    present = n > 0
    raw = np.zeros_like(n)
    if beta == 0.0:
        raw[present] = 1.0
    else:
        # 1 - β^n computed as -expm1(n log β): exact even when β^n is close to 1.
        raw[present] = (1.0 - beta) / -np.expm1(n[present] * math.log(beta))
    return _normalise(raw, n)


def inverse_weights(counts: np.ndarray, power: float = 1.0) -> np.ndarray:
    """Weights n^-power (power 0.5 = sqrt-inverse), normalised like the effective-number ones."""
    n = np.asarray(counts, dtype=np.float64)
    raw = np.zeros_like(n)
    present = n > 0
    raw[present] = n[present] ** -power
    return _normalise(raw, n)


def class_weights(spec: str, counts: np.ndarray, class_names: list[str]) -> np.ndarray:
    """Per-class loss weights from the ``--class-weights`` spec.

    ``none`` (all 1) | ``inverse`` | ``sqrt-inverse`` | ``effective[:BETA]`` (default β 0.999) |
    ``name=W,name=W,...`` (unlisted classes 1.0). Raises ConfigError on anything else.
    """
    counts = np.asarray(counts)
    if len(counts) != len(class_names):
        raise ValueError(f"{len(counts)} counts for {len(class_names)} classes")
    try:
        kind, beta, manual = parse_class_weights(spec or "none")
    except ValueError as exc:
        text = str(exc)
        raise ConfigError(text if text.startswith("--") else f"--class-weights: {text}") from None
    if kind == "inverse":
        return inverse_weights(counts, 1.0)
    if kind == "sqrt-inverse":
        return inverse_weights(counts, 0.5)
    if kind == "effective":
        return effective_number_weights(counts, DEFAULT_BETA if beta is None else beta)
    weights = np.ones(len(class_names), dtype=np.float64)
    for name, w in manual.items():
        if name not in class_names:
            valid = ", ".join(class_names) or "(none)"
            raise ConfigError(f"--class-weights: unknown class {name!r}; classes are: {valid}")
        weights[class_names.index(name)] = w
    return weights


# ---------------------------------------------------------------------------- advice
def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _n(count: int, word: str) -> str:
    """'1 image', '3 images'."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _names(classes: list[dict], limit: int = 8) -> str:
    """'a' (3), 'b' (5), ... and N more: image counts in brackets."""
    shown = ", ".join(f"'{c['name']}' ({c['images']})" for c in classes[:limit])
    return shown + (f" and {len(classes) - limit} more" if len(classes) > limit else "")


MAX_CLASS_LINES = 3  # beyond this many classes in one tier, advise once for the tier


def _class_advice(report: dict) -> list[str]:
    classes = report["classes"]
    none = [c for c in classes if c["images"] == 0]
    few = [c for c in classes if 0 < c["images"] < FEW_IMAGES]
    some = [c for c in classes if FEW_IMAGES <= c["images"] < SOME_IMAGES]
    out = []
    if none:
        names = ", ".join(f"'{c['name']}'" for c in none)
        out.append(f"No annotations of {names}: annotate examples or drop from the class list")
    remedy = "no sampling or loss remedy will make a detector reliable on so few; "
    remedy += "collect more examples (aim for 50+)"
    if len(few) > MAX_CLASS_LINES:
        out.append(
            f"{len(few)} classes have fewer than {FEW_IMAGES} images ({_names(few)}): {remedy}"
        )
    else:
        out += [
            f"Class '{c['name']}' has {_n(c['instances'], 'instance')} in "
            f"{_n(c['images'], 'image')}: {remedy}"
            for c in few
        ]
    milder = "expect noisy per-class AP; the remedies below help, but more examples help most"
    if len(some) > MAX_CLASS_LINES:
        out.append(
            f"{len(some)} classes have fewer than {SOME_IMAGES} images ({_names(some)}): {milder}"
        )
    else:
        out += [f"Class '{c['name']}' has only {c['images']} images: {milder}" for c in some]
    return out


def _imbalance_advice(report: dict) -> list[str]:
    ratio = report.get("imbalance_ratio")
    if ratio is None or ratio < IMBALANCE_WORTH_FIXING:
        return []
    t = report["repeat_threshold"]
    if _repeat_worth_it(report):
        grow = ""
        after = round(report.get("repeat_epoch_images") or 0)
        if after > report["num_images"]:
            grow = f"; an epoch grows from {report['num_images']} to ~{after} images"
        return [
            f"Imbalance ratio {ratio:.0f}x: try `--sampler repeat-factor --repeat-threshold "
            f"{t:.3g}` (repeat factors in the table{grow}) or `--class-weights effective`"
        ]
    return [f"Imbalance ratio {ratio:.0f}x: try `--class-weights effective` (weights in the table)"]


def _background_keep(report: dict) -> float | None:
    """The --background-fraction worth setting (None: keep them all)."""
    share = report.get("background_share")
    if share is None or report["num_images"] == 0 or share < MOSTLY_BACKGROUND:
        return None
    # Keep about as many background images per epoch as there are defect images.
    keep = min(1.0, max(0.1, round((1 - share) / share, 1)))
    return None if keep >= 1.0 else keep


def _repeat_worth_it(report: dict) -> bool:
    ratio = report.get("imbalance_ratio")
    return (
        ratio is not None
        and ratio >= IMBALANCE_WORTH_FIXING
        and any(c["repeat_factor"] > 1.0 for c in report["classes"])
    )


def _background_advice(report: dict) -> list[str]:
    share = report.get("background_share")
    if share == 0 and report["num_images"]:
        return [
            "No defect-free images: the model never sees a good part and will raise false "
            "alarms; add images without defects"
        ]
    keep = _background_keep(report)
    if keep is None:
        return []
    return [
        f"{_pct(share)} of images are defect-free: `--background-fraction {keep:g}` keeps a "
        f"fresh {_pct(keep)} of them each epoch (about one per defect image; all take turns), so "
        "each minute of training sees more defects: at equal time it beat keeping them all, "
        "with fewer false alarms, not more (docs/benchmarks.md)"
    ]


def _size_advice(report: dict) -> list[str]:
    b = report["box_sizes"]
    total = b["small"] + b["medium"] + b["large"]
    if total == 0 or b["small"] / total < SMALL_BOX_SHARE:
        return []
    size = report.get("suggested_image_size")
    at = f" (`--image-size {size}` is the native size)" if size else ""
    return [
        f"{_pct(b['small'] / total)} of boxes are small (under 32x32 px): use `--anchors auto` "
        f"(anchors fitted to your boxes; every preset sets it), and every pixel of shrinking "
        f"costs them{at}"
    ]


SMALL_AT_INPUT = 12.0
"""Median box side (px at the model's input) below which small defects are hard to learn."""
P2_BELOW = 24.0
"""Median box side (px at the input) below which the recipe adds the P2 level (stride 4, three
P3 strides) and the GroupNorm head: measured on generated data (docs/benchmarks.md, recipe
options at equal time)."""
COPY_PASTE = 0.5


def recipe(
    report: dict,
    preset: str,
    image_size: int,
    box_fraction: float | None,
    source: str | None = None,
    time_budget: float = 0.0,
) -> dict:
    """The ``defectdet train`` command the advice ends in: ``preset`` for ``time_budget``
    minutes (0: none) with the remedies this data calls for (the same rules as the advice
    lines), the input size the preset's rule gives on this data, and the median box side there
    (px)."""
    data = shlex.quote(str(source or report["root"]))
    args = ["defectdet", "train", data, "--preset", preset]
    if time_budget > 0:
        args += ["--time-budget", f"{time_budget:g}"]
    for folder in report.get("negatives") or {}:
        args += ["--negatives", shlex.quote(str(folder))]
    ratio = report.get("imbalance_ratio")
    if _repeat_worth_it(report):
        args += [
            "--sampler",
            "repeat-factor",
            "--repeat-threshold",
            f"{report['repeat_threshold']:.3g}",
        ]
    if ratio is not None and ratio >= IMBALANCE_WORTH_FIXING:
        args += ["--copy-paste", f"{COPY_PASTE:g}"]  # pastes rare defects onto other parts
    keep = _background_keep(report)
    if keep is not None:
        args += ["--background-fraction", f"{keep:g}"]
    box = None if box_fraction is None else box_fraction * image_size
    native = report.get("suggested_image_size") or image_size
    tile = 0
    if box is not None and box < SMALL_AT_INPUT and native > image_size:
        # Shrinking loses them: train on native-resolution tiles the size of the input.
        tile, box = image_size, box_fraction * native
        args += ["--train-tile", str(tile)]
    levels = ""
    if box is not None and box < P2_BELOW:  # stride 8 is coarse for them: add P2 (stride 4)
        high = str(PRESETS[preset].values["levels"] if preset in PRESETS else "3-7")[-1]
        levels = f"2-{high}"
        args += ["--levels", levels, "--head", "v2"]  # with the GroupNorm head, as measured
    return {
        "preset": preset,
        "time_budget": time_budget,
        "image_size": image_size,
        "train_tile": tile,
        "levels": levels,
        "median_box_px": None if box is None else round(box, 1),
        "command": " ".join(args),
    }


def _recipe_advice(report: dict) -> list[str]:
    r = report.get("recipe")
    if not r:
        return []
    where = f"{r['train_tile']} px tiles at native resolution" if r["train_tile"] else "input"
    line = (
        f"Recipe for this machine: `{r['command']}` (preset {r['preset']}; {where} "
        f"{'' if r['train_tile'] else str(r['image_size']) + ' px '}on this data"
    )
    if r["median_box_px"] is not None:
        line += f", where the median box is {r['median_box_px']:g} px"
    out = [line + ")"]
    if r["median_box_px"] is not None and r["median_box_px"] < SMALL_AT_INPUT:
        out.append(
            f"Boxes are tiny ({r['median_box_px']:g} px) even so: expect the smallest defects to "
            "be missed; a higher-resolution image of the part helps more than any option"
        )
    return out


def _split_advice(report: dict) -> list[str]:
    """Classes that exist in the data but not in a split cannot be learned or measured there."""
    out = []
    for split, s in report.get("splits", {}).items():
        missing = [
            f"'{c['name']}'"
            for c, total in zip(s["classes"], report["classes"], strict=True)
            if c["instances"] == 0 and total["instances"] > 0
        ]
        if missing:
            why = "cannot be learned" if split in ("train", "trainval") else "AP is not measured"
            out.append(f"Split '{split}' has no {', '.join(missing)}: {why} there")
    return out


def advice(report: dict) -> list[str]:
    """Plain-language recommendations that map onto ``defectdet train`` options.

    Only advice the data warrants is given: each rule checks its own threshold.
    """
    if report["num_annotations"] == 0:
        return ["No boxes at all: there is nothing to train a detector on"]
    out = _class_advice(report)
    out += _imbalance_advice(report)
    out += _background_advice(report)
    out.append(
        "Keep `--loss focal --gamma 2` (the default): it down-weights the many easy background "
        "anchors, the largest imbalance in any detector"
    )
    out += _size_advice(report)
    acc = report.get("always_ok_accuracy")
    if acc is not None and acc >= MOSTLY_BACKGROUND:
        out.append(
            f"A model that always answers 'no defect' scores {_pct(acc)} image accuracy here: "
            "judge models by per-class AP and defect recall, not accuracy"
        )
    out += _split_advice(report)
    out += _recipe_advice(report)
    problems = report.get("problems") or {}
    if problems:
        kinds = ", ".join(f"{k}: {n}" for k, n in problems.items())
        out.append(
            f"{_n(sum(problems.values()), 'record')} skipped or repaired while loading "
            f"({kinds}); `--strict` lists them and stops"
        )
    return out
