"""Rendering a report: the context of :mod:`.sources` through a Jinja2 template into one HTML
file with everything inline (figures as PNG data URIs, styles in the page, no scripts, fonts or
requests), readable offline, on a phone and in print.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from defectdet import __version__
from defectdet.engine.report import sources
from defectdet.errors import OutputExistsError
from defectdet.io import write_text

REPORT = "report.html"
_READERS = {
    "train": sources.train_context,
    "evaluate": sources.evaluate_context,
    "compare": sources.compare_context,
}


def data_uri(figure: Any) -> str:
    """A matplotlib figure (or PNG bytes) as a ``data:image/png;base64,...`` URI."""
    if isinstance(figure, bytes | bytearray):
        png = bytes(figure)
    else:
        buf = io.BytesIO()
        figure.savefig(buf, format="png", dpi=90)
        png = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def render_html(context: dict) -> str:
    """The report page for ``context`` (title, sections)."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("defectdet.engine.report", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data_uri"] = data_uri
    env.filters["raw_value"] = lambda v: "" if v is None else repr(v)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template("report.html.j2").render(
        **context, version=__version__, created=created
    )


def write_report(path: str | Path, exist_ok: bool = False) -> Path:
    """Write ``PATH/report.html`` for a train run, an evaluate --plots folder or a compare
    study; refuse to replace one unless ``exist_ok``."""
    path = Path(path)
    kind = sources.kind_of(path)
    target = path / REPORT
    if target.exists() and not exist_ok:
        raise OutputExistsError(f"{target} exists; pass --exist-ok to replace it")
    context = _READERS[kind](path)
    write_text(target, render_html(context | {"kind": kind}))
    return target
