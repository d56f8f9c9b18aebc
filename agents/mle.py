"""MLE / behaviour cloning, optionally on backspace-augmented demonstrations.

Loss: teacher-forced cross-entropy of the demonstrated actions,

    L_MLE = - (1 / |A|) Σ_{(s, a) ∈ A} log π(a | s)        (nats per action)

with ``A`` the demonstrated actions. Plain MLE sees the task's sequences
followed by ``eos``. "MLE + backspace" (the SequenceMatch paper's baseline,
Cundy & Ermon ICLR 2024 §5) trains on demonstrations augmented with a wrong
token followed by ``backspace`` at rate ``p`` (:mod:`agents.common.demos`). The
wrong tokens themselves are *not* targets [recon: the paper does not say;
learning to emit errors would defeat the purpose]: the model learns to press
backspace after an error, never to make one.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch

from .common.demos import Demos, augment_with_backspace, model_wrong_token_fn
from .common.distributed import gathered_params
from .common.learner import LearnerContext, register_learner
from .common.trajectory import TrajectoryBatch, collate, token_log_probs, wrong_token_mask


@dataclass
class MLEConfig:
    """MLE hyperparameters (the ``--mle.*`` flags).

    :param backspace_p: rate of injected ``wrong token, backspace`` pairs per
        position (0 = plain MLE; 0.05 = "MLE + backspace").
    :param wrong_tokens: where wrong tokens come from: ``"uniform"`` over
        ordinary tokens or ``"model"`` (sampled from the current policy:
        plausible errors).
    :raises ValueError: naming the bad field and value.
    """

    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if not 0.0 <= self.backspace_p < 1.0:
            raise ValueError(f"MLEConfig.backspace_p must be in [0, 1), got {self.backspace_p}")
        if self.wrong_tokens not in ("uniform", "model"):
            raise ValueError(f"MLEConfig.wrong_tokens must be 'uniform' or 'model', got {self.wrong_tokens!r}")


def mle_loss(logits: torch.Tensor, batch: TrajectoryBatch, target_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy ``-(1/|A|) Σ_{(s,a) ∈ A} log π(a|s)`` (nats per target action).

    :param logits: FloatTensor ``[B, T, V]`` from the policy on ``batch.tokens``.
    :param batch: the trajectories.
    :param target_mask: BoolTensor ``[B, T]``, the actions ``A`` to imitate
        (default: ``batch.is_action``).
    :return: scalar float32 tensor.
    """
    mask = batch.is_action if target_mask is None else target_mask
    return -token_log_probs(logits, batch.tokens, mask).sum() / mask.sum().clamp(min=1)


def backspace_actions(demos: Demos, p: float, wrong_tokens: str, ctx: LearnerContext) -> list[list[int]]:
    """The demonstrated actions, augmented with ``wrong token, backspace`` pairs at rate ``p`` (``p = 0``: as
    they are). Shared by MLE + backspace and SequenceMatch; uses ``ctx.generators["noise"]``."""
    if p == 0:
        return demos.actions
    fn = model_wrong_token_fn(ctx.model, ctx.generators["noise"], ctx.device) if wrong_tokens == "model" else None
    # FSDP: the model's proposals are as many forward passes as this rank's batch needs, so they run on the
    # gathered parameters (every rank enters once per step); a no-op otherwise
    with gathered_params(ctx.policy) if fn is not None else contextlib.nullcontext():
        return augment_with_backspace(
            demos.actions,
            p,
            ctx.task.tokenizer.vocab_size,
            ctx.generators["noise"],
            wrong_tokens=wrong_tokens,
            wrong_token_fn=fn,
            prompts=demos.prompts,
            ids=demos.ids,
        )


def check_augmentation(owner: str, backspace_p: float, wrong_tokens: str) -> None:
    """Validate the ``backspace_p`` / ``wrong_tokens`` fields that every teacher-forced learner shares.

    :param owner: the config class name, for the message.
    :raises ValueError: naming the bad field and value.
    """
    if not 0.0 <= backspace_p < 1.0:
        raise ValueError(f"{owner}.backspace_p must be in [0, 1), got {backspace_p}")
    if wrong_tokens not in ("uniform", "model"):
        raise ValueError(f"{owner}.wrong_tokens must be 'uniform' or 'model', got {wrong_tokens!r}")


def demo_batch(
    demos: Demos, backspace_p: float, wrong_tokens: str, ctx: LearnerContext
) -> tuple[TrajectoryBatch, torch.Tensor]:
    """The (optionally backspace-augmented) demonstrations as a batch, and the actions to imitate.

    The target mask is ``is_action`` without the injected wrong tokens (see
    the module docstring); prompts are never targets. Shared by MLE and the
    token-level baselines (unlikelihood, TaiLr, MixCE, EMO, scheduled sampling).

    :return: ``(batch, target)``, ``target`` BoolTensor ``[B, T]`` on ``ctx.device``.
    """
    actions = backspace_actions(demos, backspace_p, wrong_tokens, ctx)
    batch = collate(actions, demos.prompts, device=ctx.device, ids=demos.ids)
    target = batch.is_action & ~wrong_token_mask(batch) if backspace_p > 0 else batch.is_action
    return batch, target


class TeacherForcedLearner:
    """Base of the learners whose loss is a function of the policy's logits on one teacher-forced pass.

    Collates (optionally backspace-augmented, :func:`demo_batch`) demonstrations, runs the policy once
    over them and hands the logits to :meth:`token_loss`; holds no state of its own (an empty
    ``state_dict``), so resume is exact through the trainer's model, optimiser and RNG state. Used by
    MLE and the token-level baselines (unlikelihood, TaiLr, MixCE). Subclasses set ``name``,
    ``config_class`` and ``progress_keys``, and their config has ``backspace_p`` and ``wrong_tokens``.

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: the subclass's config dataclass.
    """

    def __init__(self, ctx: LearnerContext, cfg):
        self.ctx, self.cfg, self.model = ctx, cfg, ctx.model

    def parameters(self):
        return self.model.parameters()

    def token_loss(
        self, logits: torch.Tensor, batch: TrajectoryBatch, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        """The objective on one pass: ``logits`` FloatTensor ``[B, T, V]`` over ``batch.tokens``, ``target``
        BoolTensor ``[B, T]`` (the imitated positions). Returns ``(scalar loss, scalars to log)``."""
        raise NotImplementedError

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        batch, target = demo_batch(demos, self.cfg.backspace_p, self.cfg.wrong_tokens, self.ctx)
        loss, logs = self.token_loss(self.model(batch.tokens), batch, target)
        return loss, {**logs, "train/tokens": int(batch.is_action.sum())}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@register_learner
class MLELearner(TeacherForcedLearner):
    """Behaviour cloning on (optionally backspace-augmented) demonstrations (``--agent mle``).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`MLEConfig`.
    """

    name = "mle"
    config_class = MLEConfig
    progress_keys = ("loss/mle",)

    def token_loss(
        self, logits: torch.Tensor, batch: TrajectoryBatch, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        loss = mle_loss(logits, batch, target)
        return loss, {"loss/mle": loss.item()}
