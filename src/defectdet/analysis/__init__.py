"""Dataset analysis: counts, imbalance, box sizes, and the remedies ``train`` offers for them.

- :mod:`~defectdet.analysis.stats`: pure, vectorised statistics of a catalogue.
- :mod:`~defectdet.analysis.recommend`: repeat factors, class weights, plain-language advice.
- :mod:`~defectdet.analysis.report`: the report dict (JSON-serialisable).
- :mod:`~defectdet.analysis.render` / :mod:`~defectdet.analysis.plots`: tables and a PNG.
"""

from defectdet.analysis.plots import plot_report
from defectdet.analysis.recommend import (
    advice,
    choose_repeat_threshold,
    class_weights,
    effective_number_weights,
    inverse_weights,
    repeat_factors,
)
from defectdet.analysis.render import render_report
from defectdet.analysis.report import build_report

__all__ = [
    "advice",
    "build_report",
    "choose_repeat_threshold",
    "class_weights",
    "effective_number_weights",
    "inverse_weights",
    "plot_report",
    "render_report",
    "repeat_factors",
]
