"""The self-adapting noise distribution of NCE: a frozen snapshot of the policy.

Xu, "Self-Adapting Noise-Contrastive Estimation for Energy-Based Models"
(arXiv 2211.02650): the noise distribution of NCE is a copy of the model
being trained, refreshed every K steps. :class:`SnapshotNoise` holds that
copy and its refresh schedule; :class:`agents.nce.NCELearner` samples the
noise from it through the vector env (:class:`~agents.common.rollout.OnlineSampler`)
and scores it exactly (:func:`agents.nce.no_backspace_log_prob`).
"""

from __future__ import annotations

import copy

import torch.nn as nn

from .common.cli import check_number


def _check_step(step) -> None:
    check_number("step", step, ge=0, integer=True)


class SnapshotNoise:
    """The self-adapting noise distribution: a frozen deep copy of the policy,
    refreshed every ``refresh_every`` (K) training steps (Xu, arXiv
    2211.02650 [paper]; shorter K gave better samples).

    Refresh rule [recon]: the first call to :meth:`maybe_refresh` always takes
    a snapshot; afterwards one is taken whenever ``step`` reaches a new multiple
    of K (``step // K > last_refresh_step // K``). Called at steps 0, 1, 2, ...
    this refreshes at 0, K, 2K, ...; skipped steps do not shift the schedule.

    The snapshot is in eval mode (dropout off, so its log-probabilities are the
    exact ``log q``) with ``requires_grad=False`` on every parameter. Pass the
    bare policy, not a DDP wrapper (``ddp_model.module``).

    :param refresh_every: K >= 1 (K = 1: the snapshot is the current policy).
    :raises ValueError: if ``refresh_every`` is not an int >= 1.
    """

    def __init__(self, refresh_every: int):
        check_number("refresh_every (K)", refresh_every, ge=1, integer=True)
        self.refresh_every = refresh_every
        self._module: nn.Module | None = None
        self._last_refresh_step: int | None = None

    @property
    def module(self) -> nn.Module:
        """The frozen snapshot ``nn.Module`` (eval mode, no gradients).

        :raises RuntimeError: before the first refresh.
        """
        if self._module is None:
            raise RuntimeError("SnapshotNoise has no snapshot yet: call maybe_refresh(model, step) first")
        return self._module.eval()

    @property
    def last_refresh_step(self) -> int | None:
        """Training step of the current snapshot, or None before the first."""
        return self._last_refresh_step

    def refresh(self, model: nn.Module, step: int) -> None:
        """Replace the snapshot by a frozen deep copy of ``model`` now.

        :raises ValueError: if ``model`` is not an ``nn.Module`` or ``step`` is
            negative or earlier than the last refresh.
        """
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be an nn.Module, got {type(model).__name__}")
        _check_step(step)
        if self._last_refresh_step is not None and step < self._last_refresh_step:
            raise ValueError(f"step {step} is earlier than the last refresh step {self._last_refresh_step}")
        snapshot = copy.deepcopy(model)
        snapshot.eval()
        for p in snapshot.parameters():
            p.requires_grad_(False)
            p.grad = None
        self._module = snapshot
        self._last_refresh_step = step

    def maybe_refresh(self, model: nn.Module, step: int) -> bool:
        """Refresh the snapshot if the schedule says so; return whether it did.

        :param model: the current policy.
        :param step: the current training step, non-decreasing across calls.
        :raises ValueError: on a negative or decreasing ``step`` or a non-module.
        """
        _check_step(step)
        last = self._last_refresh_step
        if last is not None and step < last:
            raise ValueError(f"step {step} is earlier than the last refresh step {last}")
        if last is None or step // self.refresh_every > last // self.refresh_every:
            self.refresh(model, step)
            return True
        return False

    def age(self, step: int) -> int:
        """Number of steps since the snapshot was taken (0 right after a refresh).

        :raises RuntimeError: before the first refresh.
        :raises ValueError: on a negative step or one before the last refresh.
        """
        _check_step(step)
        if self._last_refresh_step is None:
            raise RuntimeError("SnapshotNoise has no snapshot yet: call maybe_refresh(model, step) first")
        if step < self._last_refresh_step:
            raise ValueError(f"step {step} is earlier than the last refresh step {self._last_refresh_step}")
        return step - self._last_refresh_step

    def state_dict(self) -> dict:
        """Checkpointable state: K, the refresh step and the snapshot's weights."""
        return {
            "refresh_every": self.refresh_every,
            "last_refresh_step": self._last_refresh_step,
            "module": None if self._module is None else self._module.state_dict(),
        }

    def load_state_dict(self, state: dict, model: nn.Module) -> None:
        """Restore from :meth:`state_dict`, so that a resumed run keeps the same
        noise distribution. ``model`` is any module of the policy's
        architecture; it is copied, not modified.

        :raises ValueError: if ``state`` lacks a key or has a bad K.
        """
        missing = {"refresh_every", "last_refresh_step", "module"} - set(state)
        if missing:
            raise ValueError(f"SnapshotNoise state is missing keys {sorted(missing)}")
        check_number("refresh_every (K)", state["refresh_every"], ge=1, integer=True)
        self.refresh_every = state["refresh_every"]
        self._module, self._last_refresh_step = None, None
        if state["module"] is not None:
            self.refresh(model, state["last_refresh_step"])
            snapshot = self._module
            assert snapshot is not None, "refresh sets the snapshot module"
            snapshot.load_state_dict(state["module"])
