"""Checkpoint files: written atomically, read without unpickling code. Only file I/O: building
a model from one is :mod:`defectdet.model.restore`.

A checkpoint is a ``torch.save``d dict of tensors and plain Python data only: ``torch.load`` runs
with ``weights_only=True``, so a file carrying pickled objects (which could run code when
unpickled) is refused rather than executed. ``save_checkpoint`` checks the payload first, so a
run cannot write a checkpoint that it would later refuse to load.
"""

from __future__ import annotations

import io
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from defectdet.errors import CheckpointError
from defectdet.io import atomic_open

_PLAIN = (
    Tensor,
    type(None),
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    torch.dtype,
    torch.device,
    torch.Size,
)


# ---------------------------------------------------------------------------- checkpoints
def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, then rename).

    Expected keys: ``model`` (state dict), ``config`` (``TrainConfig.to_dict()``), ``classes``,
    ``epoch``, and any optimizer / scheduler / scaler state dicts and RNG states. Only tensors
    and plain data are allowed (numpy arrays: convert with ``torch.from_numpy`` or ``.tolist()``).
    """
    _check_plain(payload, "payload")
    buf = io.BytesIO()  # serialise first: a failing disk write is then a plain OSError
    torch.save(payload, buf)
    with atomic_open(path, "wb") as fh:
        fh.write(buf.getbuffer())


def _check_plain(obj: Any, where: str) -> None:
    """Raise CheckpointError naming the first value ``weights_only`` loading would refuse."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise CheckpointError(f"checkpoint {where} has a {type(key).__name__} key {key!r}")
            _check_plain(value, f"{where}[{key!r}]")
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for i, value in enumerate(obj):
            _check_plain(value, f"{where}[{i}]")
        return
    raise CheckpointError(
        f"checkpoint {where} is a {type(obj).__module__}.{type(obj).__qualname__}; "
        "checkpoints hold only tensors and plain data (convert it first)"
    )


def _safe_load(path: str | Path, map_location: Any, what: str) -> Any:
    """``torch.load(weights_only=True)`` with each failure turned into a CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    kind = _file_kind(path)
    if kind:
        raise CheckpointError(f"{path} is not a readable defectdet {what}: {kind}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's pickle-protocol notes: the error says it
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found:
            raise CheckpointError(
                f"{what} {path} carries pickled Python objects beyond tensors and plain data "
                f"({found.group(1)}); refusing to load it (it could run code)"
            ) from None
        raise CheckpointError(
            f"{path} is not a readable defectdet {what}: not a PyTorch file, or pickle data "
            f"beyond tensors and plain data ({_first_line(exc)})"
        ) from None
    except (RuntimeError, OSError, EOFError, KeyError, ValueError, IndexError) as exc:
        reason = "empty or truncated file" if isinstance(exc, EOFError) else _first_line(exc)
        raise CheckpointError(f"{path} is not a readable defectdet {what}: {reason}") from None


# A torch.save file is a zip archive (PK) or, in the legacy format, a pickle (protocol byte 0x80).
_MAGIC = (b"PK\x03\x04", b"\x80")


def _file_kind(path: Path) -> str:
    """Why ``path`` cannot be a torch.save file, judged from its first bytes ("" = it may be)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    if not head:
        return "empty or truncated file"
    if head.startswith(_MAGIC):
        return ""
    printable = all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    return "a text file, not a PyTorch checkpoint" if printable else "not a PyTorch file"


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return lines[-1][:200] if lines else type(exc).__name__


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; never unpickles code.

    Raises:
        CheckpointError: missing file, unreadable/truncated file, pickled objects, or a file
            that is not a defectdet checkpoint (no ``model`` state dict).
    """
    ckpt = _safe_load(path, map_location, "checkpoint")
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), Mapping):
        raise CheckpointError(
            f"{path} is not a readable defectdet checkpoint: expected a dict with a 'model' "
            "state dict (is it a bare state dict? pass it as --backbone-weights instead)"
        )
    return ckpt


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """A bare state dict, or the ``model`` / ``state_dict`` entry of a checkpoint file."""
    obj = _safe_load(path, "cpu", "weights file")
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a readable state dict (name -> tensor)")
    return dict(obj)
