"""torch.distributed set-up for ``torchrun --nproc_per_node N -m defectdet train ...``.

NCCL on GPUs, gloo on CPU. Without torchrun's environment everything here is a no-op, so the
single-process path carries no distributed code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_spec: str) -> DistInfo:
    """Join the process group torchrun set up (if any). Returns this process's place in it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_spec != "cpu"
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank, world, local)


def device_for(info: DistInfo, device_spec: str) -> str:
    """Under torchrun each process takes the GPU of its local rank."""
    if info.enabled and torch.cuda.is_available() and device_spec in ("auto", "cuda"):
        return f"cuda:{info.local_rank}"
    return device_spec


def broadcast(info: DistInfo, value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run folder rank 0 chose)."""
    if not info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(info: DistInfo, values: dict[str, float]) -> dict[str, float]:
    """The mean of each value over all ranks, in one collective call."""
    if not info.enabled:
        return values
    # NCCL reduces only CUDA tensors (gloo takes CPU ones).
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor(list(values.values()), dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return dict(zip(values, (t / info.world_size).tolist(), strict=True))


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
