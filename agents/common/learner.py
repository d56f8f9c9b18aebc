"""The Learner protocol and the registry of learners (one module per method).

A learner is one module (``agents/mle.py``, ``agents/sequencematch.py``, ...)
holding its hyperparameter dataclass, its loss written out as the paper
writes it, and a class that implements :class:`Learner`. The module
registers the class with :func:`register_learner`; the trainer, the
``--agent`` choices of ``scripts/train.py`` and the ``--<name>.*`` flag
sections are derived from :data:`LEARNERS`. Adding a method = one new module
(plus its import in :mod:`agents.learners`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch

from seqenv.tasks import Task

from ..policies import Policy
from .demos import Demos


@dataclass
class LearnerContext:
    """What the trainer hands every learner's constructor.

    :param model: the policy as the optimiser sees it (a DDP wrapper under
        ``torchrun``; call it for forward passes so gradients synchronise).
    :param policy: the unwrapped :class:`~agents.policies.Policy` (rollouts,
        snapshots, special ids).
    :param task: the task (env, prompts, validity checker, oracle).
    :param device: the training device.
    :param generators: the run's random streams, all checkpointed: ``"data"``
        (CPU, demonstrations; owned by the trainer), ``"noise"`` (CPU:
        augmentation, buffer indices, env reset seeds) and ``"sample"`` (on
        ``device``: rollout actions).
    :param batch_size: demonstrations per step.
    """

    model: torch.nn.Module
    policy: Policy
    task: Task
    device: torch.device
    generators: dict[str, torch.Generator]
    batch_size: int


@runtime_checkable
class Learner(Protocol):
    """One training method: ``Learner(ctx, cfg)``, then ``loss(demos, step)`` every step.

    :cvar name: the registry name (``--agent NAME``).
    :cvar config_class: its hyperparameter dataclass (the ``--NAME.*`` flags).
    :cvar progress_keys: metric keys the progress bar shows (readable
        quantities, not necessarily the loss; every metric goes to TensorBoard).
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    progress_keys: ClassVar[tuple[str, ...]]

    def __init__(self, ctx: LearnerContext, cfg: Any) -> None: ...

    def parameters(self) -> Iterable[torch.nn.Parameter]:
        """Exactly what the optimiser trains and clips."""
        ...

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """A scalar loss (nats) for ``demos`` at optimiser step ``step``, and metrics.

        Metric keys go to TensorBoard under ``train/`` unless they start with
        ``train/``, ``rollout/`` or ``eval/``; ``"train/tokens"`` is popped by
        the trainer for ``train/tokens_per_s``.
        """
        ...

    def state_dict(self) -> dict:
        """Extra state for checkpoints (plain tensors, lists, numbers: ``weights_only`` loads)."""
        ...

    def load_state_dict(self, state: dict) -> None: ...


#: name -> learner class, filled by :func:`register_learner` as learner modules are imported
LEARNERS: dict[str, type] = {}


def register_learner(cls: type) -> type:
    """Class decorator: add a :class:`Learner` to :data:`LEARNERS` under ``cls.name``.

    :raises ValueError: if the name is taken or the class lacks ``name``/``config_class``.
    """
    name = getattr(cls, "name", None)
    if not isinstance(name, str) or not isinstance(getattr(cls, "config_class", None), type):
        raise ValueError(f"{cls.__name__} needs class attributes name (str) and config_class (a dataclass)")
    if name in LEARNERS and LEARNERS[name] is not cls:
        raise ValueError(f"a learner named {name!r} is already registered ({LEARNERS[name].__name__})")
    LEARNERS[name] = cls
    return cls
