"""Sampling that can start mid-epoch, and Ctrl-C that finishes the step and saves."""

from __future__ import annotations

import signal
import threading

import torch

from defectdet.console import err
from defectdet.data.sampling import EpochSampler


class ResumableSampler(torch.utils.data.Sampler[int]):
    """An :class:`EpochSampler` whose epoch can start ``skip`` indices in (mid-epoch resume)."""

    def __init__(self, inner: EpochSampler):
        self.inner, self.skip = inner, 0

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self):
        return iter(self.inner.indices[self.skip :].tolist())

    def __len__(self) -> int:
        return max(len(self.inner) - self.skip, 0)

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


class _GracefulInterrupt:
    """First Ctrl-C: finish the step, save, stop. Second: stop at once."""

    def __init__(self, trainer):
        self.trainer, self.previous = trainer, None

    def _handler(self, signum, frame) -> None:
        if self.trainer._stop_requested:
            raise KeyboardInterrupt
        self.trainer._stop_requested = True
        err.print(
            "[yellow]interrupt: finishing this step and saving a resumable checkpoint "
            "(Ctrl-C again to stop at once)[/]"
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)
