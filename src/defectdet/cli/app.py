"""The ``defectdet`` app: error handling, warnings and options shared by the commands.

The ``defectdet`` command line: a thin layer of Typer commands that parse options and call
into the library. Every failure the tool can name is one message on stderr and a non-zero exit:

==  =====================================================
0   success
1   a failure the tool names (see the message)
2   unusable input data or options (``--strict`` problems too)
3   a checkpoint that cannot or must not be loaded
4   an output that would be overwritten
130 interrupted (Ctrl-C); resumable runs were saved first
==  =====================================================
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.markup import escape

from defectdet import __version__
from defectdet.console import err, out, print_problems
from defectdet.errors import DefectdetError

F = TypeVar("F", bound=Callable[..., Any])
_default_showwarning = warnings.showwarning

app = typer.Typer(
    name="defectdet",
    help="Train and run object detectors on industrial defect images with imbalanced classes.\n\n"
    "Typical flow: [bold]analyze[/] your data, [bold]train[/] a RetinaNet with focal loss and "
    "imbalance remedies, [bold]evaluate[/] it per class, [bold]predict[/] on new images.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        out.print(f"defectdet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """defectdet command line."""
    warnings.showwarning = _show_warning


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The tool's own warnings as one plain line (no source location); others as usual."""
    from defectdet.console import warn
    from defectdet.data.dataset import BadImageWarning

    ours = issubclass(category, UserWarning) and "defectdet" in str(filename)
    if issubclass(category, BadImageWarning) or ours:
        warn(str(message))
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def handle_errors(fn: F) -> F:
    """Turn the tool's own errors into one clear message and its exit code; never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DefectdetError as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("[yellow]interrupted[/]")
            raise typer.Exit(130) from None

    wrapper.__doc__ = reflow_help(fn.__doc__)
    return wrapper  # type: ignore[return-value]


def reflow_help(doc: str | None) -> str | None:
    """Join each prose paragraph of a docstring into one line, so Rich wraps it to the terminal.

    Typer keeps single line breaks in ``rich`` markup mode: source-wrapped docstrings would
    print ragged on a terminal narrower than the source. Paragraphs with indented lines
    (examples) keep their breaks.
    """
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(
        p if any(line.startswith(" ") for line in p.splitlines()) else " ".join(p.split("\n"))
        for p in paragraphs
    )


FormatOpt = Annotated[
    str, typer.Option("--format", "-f", help="Annotation format: auto, coco, voc, yolo or csv.")
]
StrictOpt = Annotated[
    bool, typer.Option("--strict", help="Fail on any problem in the data instead of skipping it.")
]


NegativesOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--negatives",
        help="A folder of good parts (every image under it is defect-free, no annotations "
        "needed); repeat for several.",
    ),
]


def _load(
    data: Path, fmt: str, strict: bool, check_images: bool = True, negatives: list | None = None
):
    from defectdet.data.formats import load_dataset

    catalog = load_dataset(
        data, fmt=fmt, strict=strict, check_images=check_images, negatives=negatives or ()
    )
    print_problems(catalog.problems)
    return catalog


def main() -> None:
    import defectdet.cli  # noqa: F401  (registers every command on ``app``)

    app(prog_name="defectdet")
