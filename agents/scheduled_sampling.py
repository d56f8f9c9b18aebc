"""Scheduled sampling for transformers (Bengio et al., NeurIPS 2015; the two-pass form of Mihaylova &
Martins, ACL SRW 2019, "Scheduled Sampling for Transformers").

A recurrent decoder can feed its own previous prediction at each step; a
transformer computes all positions in parallel, so Mihaylova & Martins run
two passes:

1. teacher-forced pass on the gold inputs, **without gradient**, giving the
   model's distribution ``q(· | x_<t)`` at every position;
2. each gold input token ``x_t`` is replaced, with probability ``p``, by a
   token sampled from pass 1's ``q(· | x_<t)``; the second pass runs on these
   mixed inputs and is trained with cross-entropy against the **gold**
   targets (gradients flow through pass 2 only):

       L_SS = −(1/|A|) Σ_{t ∈ A} log π(x_t | x̃_<t),   x̃_s = x_s w.p. 1 − p, else x̃_s ∼ q(· | x_<s)

``p`` follows a schedule over optimiser steps (Bengio et al. §2.4 schedule
the teacher-forcing probability ``ε_i``; here ``p = 1 − ε_i``, capped at
``p_max``): constant ``p = p_max``; linear ``p = min(p_max, step/ramp_steps)``
(Bengio's linear decay with ``k = 1``, ``c = 1/ramp_steps``, ``ε = 1 − p_max``);
inverse sigmoid ``p = min(p_max, 1 − k/(k + exp(step/k)))``.
Mihaylova & Martins report transformer scheduled sampling close to teacher
forcing on translation.

Our choices [recon]:

* only ordinary-token actions are replaced (never the prompt, ``bos``,
  ``backspace``, ``eos`` or pads), and the samples are ordinary tokens (the
  specials' probabilities are masked and the rest renormalised), so a mixed
  trajectory keeps the gold trajectory's backspace structure and length;
* the targets are the gold trajectory's, masked as in :mod:`agents.mle` (on
  "+ backspace" demonstrations the injected wrong tokens may be replaced as
  inputs but are never targets);
* pass 1 uses the unwrapped policy in its current (train) mode; the random
  draws use the run's checkpointed ``"sample"`` stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from .common.cli import check_number
from .common.demos import Demos
from .common.learner import LearnerContext, register_learner
from .common.trajectory import TrajectoryBatch
from .mle import check_augmentation, demo_batch, mle_loss

SCHEDULES = ("constant", "linear", "inverse_sigmoid")


@dataclass
class ScheduledSamplingConfig:
    """Scheduled-sampling hyperparameters (the ``--scheduled_sampling.*`` flags).

    :param schedule: how the sampling probability ``p`` grows over optimiser
        steps: ``"constant"`` (``p_max`` from step 0), ``"linear"``
        (``min(p_max, step/ramp_steps)``) or ``"inverse_sigmoid"``
        (``min(p_max, 1 − k/(k + exp(step/k)))``; Bengio et al. 2015 §2.4).
    :param p_max: the largest probability in [0, 1] of replacing a gold input
        token by a model sample (0 = teacher forcing, i.e. MLE).
    :param ramp_steps: steps for the linear schedule to reach ``p_max`` (> 0).
    :param k: the inverse-sigmoid schedule's ``k`` (>= 1, in steps; ``p`` is
        ½ at step ``k·ln k``).
    :param backspace_p: rate of injected ``wrong token, backspace`` pairs in
        the demonstrations, as ``--mle.backspace-p`` (0 = none).
    :param wrong_tokens: where injected wrong tokens come from, as
        ``--mle.wrong-tokens``: ``"uniform"`` or ``"model"``.
    :raises ValueError: naming the bad field and value.
    """

    schedule: Literal["constant", "linear", "inverse_sigmoid"] = "linear"
    p_max: float = 0.25
    ramp_steps: int = 1000
    k: float = 100.0
    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if self.schedule not in SCHEDULES:
            raise ValueError(f"ScheduledSamplingConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if not 0.0 <= self.p_max <= 1.0:
            raise ValueError(f"ScheduledSamplingConfig.p_max must be in [0, 1], got {self.p_max}")
        check_number("ScheduledSamplingConfig.ramp_steps", self.ramp_steps, gt=0, integer=True)
        if not self.k >= 1.0:
            raise ValueError(f"ScheduledSamplingConfig.k must be >= 1, got {self.k}")
        check_augmentation("ScheduledSamplingConfig", self.backspace_p, self.wrong_tokens)


def sampling_probability(step: int, schedule: str, p_max: float, ramp_steps: int = 1000, k: float = 100.0) -> float:
    """The probability ``p`` of replacing a gold input token at optimiser step ``step`` (Bengio et al. 2015 §2.4).

    :return: ``p`` in ``[0, p_max]``.
    :raises ValueError: on an unknown schedule.
    """
    if schedule == "constant":
        p = p_max
    elif schedule == "linear":
        p = step / ramp_steps
    elif schedule == "inverse_sigmoid":
        z = step / k
        p = 1.0 if z > 700 else 1.0 - k / (k + math.exp(z))  # exp overflows past ~709
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return float(min(p_max, max(0.0, p)))


def mix_inputs(
    batch: TrajectoryBatch, pass1_logits: torch.Tensor, p: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pass 2's inputs: each replaceable gold token swapped, w.p. ``p``, for a pass-1 sample (Mihaylova & Martins).

    The token at index ``i`` is replaced by a draw from pass 1's
    ``softmax(logits[:, i-1])`` over ordinary tokens (specials masked,
    renormalised). Replaceable: actions that are ordinary tokens (not
    ``backspace``/``eos``; never prompt, ``bos`` or pad) [recon].

    :param batch: the gold trajectories, ``tokens`` LongTensor ``[B, T]``.
    :param pass1_logits: FloatTensor ``[B, T, V]``, the teacher-forced pass on
        ``batch.tokens`` (no gradient needed).
    :param p: replacement probability in [0, 1].
    :param generator: a ``torch.Generator`` on the logits' device.
    :return: ``(mixed tokens LongTensor [B, T], replaced BoolTensor [B, T])``.
    """
    tokens, ids = batch.tokens, batch.ids
    V = pass1_logits.shape[-1]
    eligible = batch.is_action & (tokens != ids.backspace) & (tokens != ids.eos)
    coin = torch.rand(tokens.shape, generator=generator, device=tokens.device)
    replace = eligible & (coin < p)
    mixed = tokens.clone()
    if not replace.any():
        return mixed, replace
    logits = pass1_logits.detach()[:, :-1].float()  # [:, i-1] predicts index i
    specials = torch.tensor(sorted(i for i in ids.all if i < V), dtype=torch.long, device=logits.device)
    logits = logits.index_fill(-1, specials, float("-inf"))
    rows, cols = replace.nonzero(as_tuple=True)
    probs = logits[rows, cols - 1].softmax(-1)
    mixed[rows, cols] = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return mixed, replace


def scheduled_sampling_loss(
    pass2_logits: torch.Tensor, batch: TrajectoryBatch, target_mask: torch.Tensor
) -> torch.Tensor:
    """Pass 2's loss: cross-entropy of the **gold** actions under the logits on the mixed inputs (nats per target).

    :param pass2_logits: FloatTensor ``[B, T, V]`` from the policy on the mixed tokens.
    :param batch: the gold trajectories (their tokens are the targets).
    :param target_mask: BoolTensor ``[B, T]``, the target positions.
    :return: scalar float32 tensor.
    """
    return mle_loss(pass2_logits, batch, target_mask)


@register_learner
class ScheduledSamplingLearner:
    """Two-pass scheduled sampling on (optionally backspace-augmented) demonstrations (``--agent scheduled_sampling``).

    :param ctx: :class:`~agents.common.learner.LearnerContext` (uses ``generators["sample"]``).
    :param cfg: :class:`ScheduledSamplingConfig`.
    """

    name = "scheduled_sampling"
    config_class = ScheduledSamplingConfig
    progress_keys = ("loss/ss", "ss/p")

    def __init__(self, ctx: LearnerContext, cfg: ScheduledSamplingConfig):
        self.ctx, self.cfg, self.model = ctx, cfg, ctx.model

    def parameters(self):
        return self.model.parameters()

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        batch, target = demo_batch(demos, cfg.backspace_p, cfg.wrong_tokens, self.ctx)
        p = sampling_probability(step, cfg.schedule, cfg.p_max, cfg.ramp_steps, cfg.k)
        with torch.no_grad():
            pass1 = self.ctx.policy(batch.tokens)
        mixed, replaced = mix_inputs(batch, pass1, p, self.ctx.generators["sample"])
        loss = scheduled_sampling_loss(self.model(mixed), batch, target)
        n_elig = (batch.is_action & (batch.tokens != batch.ids.backspace) & (batch.tokens != batch.ids.eos)).sum()
        return loss, {
            "loss/ss": loss.item(),
            "ss/p": p,
            "ss/replaced": float(replaced.sum() / n_elig.clamp(min=1)),
            "ss/changed": float((mixed != batch.tokens).sum() / n_elig.clamp(min=1)),
            "train/tokens": int(batch.is_action.sum()),
        }

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
