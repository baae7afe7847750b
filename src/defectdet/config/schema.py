"""The option schema: every option is a dataclass field whose metadata holds its :class:`Spec`
(help, allowed values, CLI panel). One table of options serves the CLI (options are generated
from it), YAML files, ``compare`` variants and resumed runs, and :func:`validate` checks them all
the same way, before any data is read.

Names are flat and unique across sections, so ``--background-fraction`` on the command line,
``background_fraction:`` in YAML (inside its ``sampler:`` section, or at the top level) and
``background_fraction=0.3`` in a ``compare`` variant are the same option.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import types
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from defectdet.errors import ConfigError

Check = Callable[[Any], None]
"""Raises ``ValueError(reason)`` for a value of the right type that is still not allowed."""


@dataclass(frozen=True)
class Spec:
    """What one option allows, and how the CLI shows it.

    Args:
        help: one line for ``--help`` (the default is appended by the CLI).
        choices: allowed values, or ``"module:NAME"`` naming a registry whose keys are allowed
            (imported when validating, so registries may live in heavy modules).
        low, high: numeric bounds; ``low_open``/``high_open`` exclude them.
        check: extra syntax check (e.g. ``levels`` must read ``3-7``).
        allowed: how the allowed values are described in errors (default: from the above).
        panel: ``--help`` section.
        flag: CLI declaration when it is not ``--name`` (e.g. ``--rotate90/--no-rotate90``).
        cli: False = YAML only.
    """

    help: str
    choices: tuple[Any, ...] | str | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    check: Check | None = None
    allowed: str = ""
    panel: str = ""
    flag: str | None = None
    cli: bool = True

    def choice_values(self) -> tuple[Any, ...] | None:
        if isinstance(self.choices, str):
            module, _, name = self.choices.partition(":")
            return tuple(getattr(importlib.import_module(module), name))
        return self.choices

    def describe(self) -> str:
        """The allowed values in words, for error messages."""
        if self.allowed:
            return self.allowed
        choices = self.choice_values()
        if choices:
            return "one of " + ", ".join(map(str, choices))
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '≥'} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '≤'} {self.high:g}")
        return "a number " + " and ".join(parts) if parts else "any value of its type"

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not allowed, or None."""
        if value is None:
            return None
        if isinstance(value, list):
            return next(filter(None, map(self.problem, value)), None)
        choices = self.choice_values()
        if choices is not None and value not in choices:
            return "is not allowed"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return "is too small"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return "is too large"
        if self.check is not None:
            try:
                self.check(value)
            except ValueError as exc:
                return f"is invalid ({exc})"
        return None


def opt(default: Any, help: str, **spec: Any) -> Any:
    """A config field with its :class:`Spec` (lists get a default factory)."""
    meta = {"spec": Spec(help, **spec)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def spec_of(f: dataclasses.Field) -> Spec:
    return f.metadata.get("spec") or Spec(f.name)


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Option:
    """One option of a sectioned config: ``section.name``, its field, type and spec."""

    section: str
    name: str
    type: Any
    default: Any
    spec: Spec

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name

    @property
    def cli(self) -> str:
        return cli_name(self.name)


def options(cls: type) -> dict[str, Option]:
    """Flat name -> :class:`Option` for a config class (sections are dataclass fields whose type
    is a dataclass; a class without sections is its own single, unnamed section)."""
    table: dict[str, Option] = {}
    for section, sub in _sections(cls):
        hints = typing.get_type_hints(sub)
        for f in dataclasses.fields(sub):
            if f.name in table:
                raise AssertionError(f"option name {f.name!r} is used twice in {cls.__name__}")
            default = (
                f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            )
            table[f.name] = Option(section, f.name, hints[f.name], default, spec_of(f))
    return table


def _sections(cls: type) -> Iterator[tuple[str, type]]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if fields and all(dataclasses.is_dataclass(hints[f.name]) for f in fields):
        for f in fields:
            yield f.name, hints[f.name]
    else:
        yield "", cls


def values(cfg: Any) -> Iterator[tuple[Option, Any]]:
    """Each option of ``cfg`` with its current value."""
    for name, option in options(type(cfg)).items():
        holder = getattr(cfg, option.section) if option.section else cfg
        yield option, getattr(holder, name)


def validate(cfg: Any) -> Any:
    """Check every option's value against its spec; return ``cfg``.

    Raises:
        ConfigError: naming the option (as on the command line) and its allowed values.
    """
    for option, value in values(cfg):
        why = option.spec.problem(value)
        if why is not None:
            raise ConfigError(
                f"{option.cli} (config key {option.key}): {value!r} {why}; "
                f"allowed: {option.spec.describe()}"
            )
    cross_check = getattr(cfg, "cross_check", None)
    if cross_check is not None:  # rules between options (e.g. COCO weights need resnet50)
        cross_check()
    return cfg


# ---------------------------------------------------------------------------- building
def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build config class ``cls`` from a mapping: sectioned (``{"loss": {"gamma": 2}}``), flat
    (``{"gamma": 2}``) or mixed; checks names and types (not ranges: see :func:`validate`)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {type(data).__name__}")
    return apply(cls(), data, where, file_keys=True)


def apply(cfg: Any, data: dict[str, Any], where: str = "", file_keys: bool = False) -> Any:
    """A copy of ``cfg`` with the options in ``data`` set (None values mean "not given").

    Type errors name the option as the source does: ``optim.lr`` for files (``file_keys``),
    ``--lr`` for the command line and variants."""
    table = options(type(cfg))
    flat = _flatten(type(cfg), table, data, where)
    nested = {s: dataclasses.asdict(getattr(cfg, s)) for s, _ in _sections(type(cfg)) if s}
    plain = dataclasses.asdict(cfg) if not nested else {}
    for name, value in flat.items():
        if value is None:
            continue
        option = table[name]
        if file_keys:
            at = f"{where}.{option.key}" if where else option.key
        else:
            at = f"{where}: {option.cli}" if where else option.cli
        coerced = _coerce(option.type, value, at)
        (nested[option.section] if option.section else plain)[name] = coerced
    if not nested:
        return type(cfg)(**plain)
    hints = typing.get_type_hints(type(cfg))
    return type(cfg)(**{s: hints[s](**v) for s, v in nested.items()})


def given_names(cls: type, data: dict[str, Any]) -> set[str]:
    """The option names a mapping sets (sectioned, flat or mixed; None values are "not given")."""
    return {k for k, v in _flatten(cls, options(cls), data, "").items() if v is not None}


def _flatten(cls: type, table: dict[str, Option], data: dict[str, Any], where: str) -> dict:
    """Flat name -> value of a sectioned, flat or mixed mapping (names checked)."""
    sections = {o.section for o in table.values() if o.section}
    flat: dict[str, Any] = {}
    for key, value in data.items():
        key = str(key)
        # ``loss``, ``sampler`` and ``augment`` are sections and options: a mapping is the section.
        if key in sections and (isinstance(value, dict) or key not in table):
            if not isinstance(value, dict):
                at = f"{where}: {key}" if where else key
                raise ConfigError(f"{at}: expected a mapping, got {type(value).__name__}")
            for sub_key, sub_value in value.items():
                flat[_known(str(sub_key), table, where, key)] = sub_value
        else:
            flat[_known(key, table, where, "", cls.__name__)] = value
    return flat


def _known(
    key: str, table: dict[str, Option], where: str, section: str = "", owner: str = ""
) -> str:
    name = key.strip().replace("-", "_")
    if name in table and (not section or table[name].section == section):
        return name
    prefix = f"{where}: " if where else ""
    known = sorted(n for n in table if not section or table[n].section == section)
    raise ConfigError(
        f"{prefix}unknown option(s) {key} in {section or owner}; known: {', '.join(known)}"
    )


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        return _coerce(next(a for a in args if a is not type(None)), value, where)
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)
        return [_coerce(item, v, where) for v in value]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # YAML .nan / .inf
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected a whole number, got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, str | int | float):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)
