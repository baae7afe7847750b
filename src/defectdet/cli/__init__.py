"""The ``defectdet`` command line: a thin layer of Typer commands that parse options and call
into the library. ``app`` holds every command; ``main`` is the console script."""

# Registration order is the order --help lists the commands in: the pipeline's.
from defectdet.cli import cmd_data, cmd_train, cmd_infer, cmd_compare  # noqa: F401, I001
from defectdet.cli.app import app, handle_errors, main

__all__ = ["app", "handle_errors", "main"]
