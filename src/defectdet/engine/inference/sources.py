"""What ``defectdet predict SOURCE`` reads: one image, a folder (recursive), a glob pattern, or a
text file listing image paths (one per line, relative to the list file's folder).

Each input gets a display name (``file_name`` in every output file): its path relative to the
source's root folder, POSIX separators, so sub-folders stay visible and names stay unique.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from defectdet.data.images import is_image_file
from defectdet.errors import DataError

_GLOB_CHARS = frozenset("*?[")


@dataclass(frozen=True)
class SourceImage:
    """One input: ``path`` to read, ``name`` to report (relative to the source root)."""

    path: Path
    name: str


def list_sources(source: str | Path) -> list[SourceImage]:
    """Inputs of ``source`` in a stable (sorted) order.

    Raises:
        DataError: nothing matches, a missing path, or an empty list file.
    """
    text = str(source)
    path = Path(text)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and is_image_file(p))
        root = path
    elif path.is_file() and is_image_file(path):
        files, root = [path], path.parent
    elif path.is_file():
        files, root = _read_list(path), path.parent
    elif _GLOB_CHARS & set(text):
        files = sorted(
            Path(p)
            for p in glob.glob(text, recursive=True)
            if is_image_file(p) and Path(p).is_file()
        )
        root = _glob_root(text)
    else:
        raise DataError(f"{text}: no such image, folder, glob match or list file")
    if not files:
        raise DataError(f"{text}: no images found (looked for {_extensions()})")
    return [SourceImage(f, _display_name(f, root)) for f in files]


def _read_list(path: Path) -> list[Path]:
    """Paths in a list file; blank lines and ``#`` comments skipped. Missing files are kept (they
    are reported and skipped like unreadable images, so one typo does not stop a long run)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the list of images ({exc})") from exc
    entries = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not entries:
        raise DataError(f"{path}: the list of images is empty")
    return [p if p.is_absolute() else path.parent / p for p in map(Path, entries)]


def _glob_root(pattern: str) -> Path:
    """The folder before the first wildcard: names are reported relative to it."""
    parts = Path(pattern).parts
    fixed = parts[: next(i for i, p in enumerate(parts) if _GLOB_CHARS & set(p))]
    return Path(*fixed) if fixed else Path(".")


def _display_name(path: Path, root: Path) -> str:
    """Relative to ``root`` when inside it, else the absolute path (never ``..`` parts)."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root))
    if rel.startswith(".."):
        return Path(os.path.abspath(path)).as_posix()
    return Path(rel).as_posix()


def _extensions() -> str:
    from defectdet.data.images import IMAGE_EXTENSIONS

    return ", ".join(sorted(IMAGE_EXTENSIONS))
