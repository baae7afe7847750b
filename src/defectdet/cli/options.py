"""Typer options generated from the option schema (:mod:`defectdet.config.options`), so help
text, allowed values and defaults cannot drift between the CLI, YAML and ``compare``.

Every generated option defaults to None ("not given"): the config's own default (shown in
``--help``) or a YAML value then stays.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Annotated, Any

import typer

from defectdet.config import PRESETS, Option, TrainConfig, options


def _cli_type(tp: Any) -> Any:
    """The option's value type without ``None`` (``bool | None`` -> ``bool``)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0]
    return tp


def _help(option: Option) -> str:
    spec, default = option.spec, option.default
    shown = "auto" if default is None else ("''" if default == "" else default)
    if isinstance(default, bool):
        shown = "on" if default else "off"
    train = options(TrainConfig).get(option.name)
    preset_set = option.name in PRESETS["s"].values and train is not None
    if preset_set and train.section == option.section:  # a train option the presets set
        by_preset = " · ".join(f"{p.name} {p.values[option.name]}" for p in PRESETS.values())
        shown = f"by --preset: {by_preset}; none: {shown}"
    return f"{spec.help} [dim]\\[default: {shown}][/]"


def option_parameters(
    cls: type,
    skip: Iterable[str] = (),
    panel: str | None = None,
    only: Iterable[str] | None = None,
) -> list[inspect.Parameter]:
    """One keyword parameter per CLI option of config class ``cls`` (or of those in ``only``)."""
    params = []
    for name, option in options(cls).items():
        if not option.spec.cli or name in skip or (only is not None and name not in only):
            continue
        decl = option.spec.flag or option.cli
        info = typer.Option(
            decl,
            help=_help(option),
            rich_help_panel=panel or option.spec.panel or None,
            show_default=False,
        )
        annotation = Annotated[_cli_type(option.type) | None, info]
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
            )
        )
    return params


def schema_options(
    *classes: type,
    skip: Iterable[str] = (),
    panel: str | None = None,
    only: Iterable[str] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command one CLI option per schema option of ``classes`` (or of those in ``only``;
    received in its ``**options``), after its own parameters."""
    skip, only = tuple(skip), None if only is None else tuple(only)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [
            p
            for p in inspect.signature(fn, eval_str=True).parameters.values()
            if p.kind is not p.VAR_KEYWORD
        ]
        extra = [p for cls in classes for p in option_parameters(cls, skip, panel, only)]
        taken = {p.name for p in own}
        clash = [p.name for p in extra if p.name in taken]
        if clash:
            raise AssertionError(f"{fn.__name__}: options {clash} are defined twice")
        fn.__signature__ = inspect.Signature([*own, *extra])  # type: ignore[attr-defined]
        return fn

    return decorate


def given(values: dict[str, Any]) -> dict[str, Any]:
    """The options the user actually gave (Typer gives an empty list for an absent repeatable
    option)."""
    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in values.items()
        if v not in (None, [], ())
    }
