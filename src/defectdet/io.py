"""Atomic file writing: write to a temporary file beside the target, then rename.

A crash or Ctrl-C mid-write leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from defectdet.errors import DefectdetError


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temp file next to ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise DefectdetError(f"cannot write {path}: {exc.strerror or exc}") from exc
    try:
        with os.fdopen(fd, mode, **kwargs) as fh:
            # mkstemp makes 0600 files; give the result the permissions a plain open() would
            # (inside the with: the descriptor is closed whatever happens).
            os.chmod(tmp, 0o666 & ~_umask())
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise DefectdetError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def ensure_dir(path: str | Path) -> Path:
    """``mkdir -p`` that fails with one clear message (a file in the way, no permission...)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DefectdetError(f"cannot create folder {path}: {exc.strerror or exc}") from exc
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: str | Path, data: Any, indent: int | None = 2) -> None:
    with atomic_open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=indent, default=_json_default)


def _json_default(obj: Any) -> Any:
    """numpy scalars/arrays and paths, which reports are full of."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def unique_dir(parent: str | Path, name: str, exist_ok: bool = False) -> Path:
    """``parent/name``, or ``name2``, ``name3``... when it exists (Ultralytics' convention).

    With ``exist_ok`` the existing folder is reused.
    """
    parent = Path(parent)
    candidate = parent / name
    if exist_ok or not candidate.exists():
        return candidate
    n = 2
    while (parent / f"{name}{n}").exists():
        n += 1
    return parent / f"{name}{n}"
