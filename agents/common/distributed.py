"""PyTorch DDP and FSDP2 helpers shared by the trainer and the learners that own extra modules,
and :func:`resolve_device` (``--device auto|cpu|cuda[:N]``, the local rank's GPU under ``torchrun``).

DDP (``--dist ddp``, the default) replicates the policy on every rank. FSDP2
(``--dist fsdp``, Hugging Face policies only) shards it with
:func:`torch.distributed.fsdp.fully_shard`: each decoder layer is one FSDP
unit, the causal LM around them (embeddings, final norm, LM head) the root
unit; parameters, gradients and AdamW state live as 1/world-size shards
(``DTensor``) and each unit is all-gathered for its forward and backward only
(Zhao et al. 2023, "PyTorch FSDP"; the FSDP2 API of torch >= 2.6).

Decoding (rollouts, evaluation) runs inside :func:`gathered_params`: every
rank gathers the whole model once, decodes with no collective per step (ranks
may take different numbers of steps), and reshards on exit.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.nn as nn

from ..policies.base import Policy

if TYPE_CHECKING:  # imported where used: torch.distributed.fsdp needs a build with distributed support
    from torch.distributed.fsdp import FSDPModule

#: the modules whose FSDP2 units :func:`gathered_params` holds gathered now (a nested call is a no-op)
_GATHERED: weakref.WeakSet[nn.Module | Policy] = weakref.WeakSet()


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA (this process's local rank) when available, else CPU.

    :raises ValueError: if CUDA is requested but not available, or for a device
        name torch does not know or this build cannot use (``tpu``, ``mps`` without MPS).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device: expected auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r} is not supported: expected auto, cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


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


def init_single_process_group(device: torch.device) -> None:
    """A one-rank process group (``gloo`` on CPU, ``nccl`` on CUDA) for FSDP outside ``torchrun``.

    FSDP needs a process group even on one rank; this one uses an in-memory
    store (no port). Leave it with ``torch.distributed.destroy_process_group()``.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    # HashStore is public (torch.distributed's docs) but missing from its stub's re-exports
    store = dist.HashStore()  # pyright: ignore[reportPrivateImportUsage]
    dist.init_process_group(backend, store=store, rank=0, world_size=1)


def fsdp_modules(module: nn.Module | Policy) -> list[FSDPModule]:
    """The FSDP2 units inside ``module`` (``FSDPModule`` instances), root last; empty if not sharded."""
    from torch.distributed.fsdp import FSDPModule

    units: list[FSDPModule] = []
    for m in module.modules():
        if isinstance(m, FSDPModule):
            units.append(m)
    return units[::-1]


def is_sharded(module: nn.Module | Policy) -> bool:
    """Whether ``module`` holds FSDP2 units (a policy sharded by :func:`shard_hf_policy`)."""
    return bool(fsdp_modules(module))


def shard_hf_policy(policy: nn.Module, device: torch.device, compute_dtype: torch.dtype | None = None) -> None:
    """Shard an :class:`~agents.policies.hf.HFPolicy` in place with FSDP2 over the default process group.

    ``fully_shard`` on every decoder layer (``lm.model.layers[i]``), then on
    the causal LM (``policy.lm``: the root unit, which holds the embeddings,
    the final norm, the LM head and, with LoRA, the adapters' base model; peft
    and activation checkpointing must already be applied). ``policy.forward``,
    ``prefill`` and ``decode_step`` all call ``policy.lm``, so each call
    gathers what it needs.

    :param device: the rank's device; parameters move there as shards.
    :param compute_dtype: ``None`` computes in the parameters' dtype; a
        lower precision (``torch.bfloat16``) keeps the sharded parameters
        (master weights), gradients and optimiser state in their dtype (float32)
        and gathers parameters in ``compute_dtype`` for compute, reducing
        gradients in float32 (``MixedPrecisionPolicy(param_dtype=compute_dtype,
        reduce_dtype=torch.float32)``).
    :raises ValueError: if the model has no ``model.layers`` list of decoder layers.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    lm = getattr(policy, "lm", None)
    if not isinstance(lm, nn.Module):
        raise ValueError(f"--dist fsdp shards Hugging Face policies (with an .lm), got {type(policy).__name__}")
    layers = getattr(getattr(lm, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not len(layers):
        raise ValueError(
            f"--dist fsdp needs a decoder with model.layers (Llama, Qwen2, Mistral, ...); {type(lm).__name__} has none"
        )
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy()
    if compute_dtype is not None and compute_dtype != lm.dtype:
        mp = MixedPrecisionPolicy(param_dtype=compute_dtype, reduce_dtype=torch.float32)
    for layer in layers:
        fully_shard(layer, mesh=mesh, mp_policy=mp)
    fully_shard(lm, mesh=mesh, mp_policy=mp)
    # nn.Module.__setattr__ is typed for tensors and modules; this is a plain attribute of HFPolicy
    setattr(policy, "compute_dtype", mp.param_dtype or lm.dtype)  # noqa: B010


@contextlib.contextmanager
def gathered_params(module: nn.Module | Policy) -> Iterator[None]:
    """Hold ``module``'s FSDP2 units all-gathered (unsharded) inside the block; a no-op if it is not sharded
    or already gathered.

    Entering and leaving are collective (every rank must enter, in the same
    order); inside, forward passes make no collective call, so one rank may
    decode more steps than another, or rank 0 alone may evaluate. Costs the
    full model's parameters (in the compute dtype) on every rank while held.
    For no-grad use (rollouts, evaluation).
    """
    units = fsdp_modules(module)
    if not units or module in _GATHERED:
        yield
        return
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)
        unit.unshard()
    _GATHERED.add(module)
    try:
        yield
    finally:
        _GATHERED.discard(module)
        for unit in units:
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)


def _full_options():
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_state_dicts(module: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """The full (unsharded) model and optimiser state dicts of a sharded module, on rank 0's CPU (collective).

    ``get_model_state_dict`` / ``get_optimizer_state_dict`` with
    ``StateDictOptions(full_state_dict=True, cpu_offload=True)``: rank 0 gets
    the same keys as the unsharded module's ``state_dict()`` and an optimiser
    state keyed by parameter name; other ranks get empty dicts.
    """
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    opts = _full_options()
    return get_model_state_dict(module, options=opts), get_optimizer_state_dict(module, optimizer, options=opts)


def load_full_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a full optimiser state dict from :func:`full_state_dicts` into a sharded module's optimiser
    (collective; every rank passes the same full dict). Works at any world size: each rank keeps its shard."""
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=_full_options())
