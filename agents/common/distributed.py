"""PyTorch DDP helpers shared by the trainer and the learners that own extra modules."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn


def is_distributed() -> bool:
    """Whether a process group is initialised (``torchrun`` with ``WORLD_SIZE > 1``)."""
    return dist.is_available() and dist.is_initialized()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` when a
    process group is initialised, else ``module`` itself.

    :param device: the module's device (``device_ids=[index]`` on CUDA, none on CPU/gloo).
    """
    if not is_distributed():
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)
