"""Reading YAML safely: configs, ``compare`` grids and ``data.yaml`` files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from defectdet.errors import ConfigError


class _SafeLoader(yaml.SafeLoader):
    """``yaml.safe_load`` without aliases: ``*name`` references make "billion laughs" files
    (a few hundred bytes that expand to 10⁹ values when printed or walked), and configs and
    data.yaml files do not need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, f"aliases (*{event.anchor}) are not allowed", event.start_mark
            )
        return super().compose_node(parent, index)


def safe_yaml(text: str) -> Any:
    """Parse YAML text into plain data (no Python objects, no aliases); raises yaml.YAMLError."""
    return yaml.load(text, Loader=_SafeLoader)  # a SafeLoader subclass


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML file whose top level is a mapping.

    Raises:
        ConfigError: unreadable, not UTF-8, not YAML, or not a mapping.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file ({exc.reason})") from exc
    try:
        data = safe_yaml(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return data


def to_yaml(data: dict[str, Any]) -> str:
    return yaml.safe_dump(data, sort_keys=False)
