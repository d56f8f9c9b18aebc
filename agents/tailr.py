"""TaiLr (Ji et al., ICLR 2023, "Tailoring Language Generation Models under Total Variation Distance").

TaiLr minimises a total-variation-distance bound; its token-level gradient is
MLE's, weighted per target token by the detached density ratio against the
proxy distribution ``γ·p_data + (1 − γ)·p_θ`` [paper, §3.3]:

    w_t = sg( p_θ(x_t) / (γ + (1 − γ)·p_θ(x_t)) ),   clipped to [w_min, 1]  [paper, §3.4]
    L_TaiLr = −(1/|A|) Σ_{t ∈ A} w_t · log p_θ(x_t | x_<t)

γ → 0 gives ``w = 1`` (MLE); larger γ down-weights the tokens the model finds
unlikely (the outliers that MLE's zero-avoiding KL chases). The lower bound
``w_min`` keeps those tokens from being ignored early in training. This is the
authors' fairseq criterion (``thu-coai/TaiLr``, ``fairseq/criterions/tailr.py``:
``clamp(exp(log p − log(γ + (1 − γ) p)), min=min_weight, max=1) · nll``,
summed and divided by the target-token count), without label smoothing.
Defaults: γ = 0.1 and ``w_min`` = 0.3, the authors' IWSLT14 transformer
script (their synthetic-data LSTM script uses γ = 1e-7, ``w_min`` = 0.2).

Backspace trajectories and prompts [recon]: the weight applies to every
target as in :mod:`agents.mle` (``backspace`` and ``eos`` included; injected
wrong tokens and prompts are not targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .common.learner import register_learner
from .common.trajectory import TrajectoryBatch, token_log_probs
from .mle import TeacherForcedLearner, check_augmentation


@dataclass
class TaiLrConfig:
    """TaiLr hyperparameters (the ``--tailr.*`` flags).

    :param gamma: γ in (0, 1], the proxy distribution's data share (the
        authors' ``--density-ratio-threshold``; paper §3.3): the larger, the
        more low-probability targets are down-weighted.
    :param min_weight: lower bound ``w_min`` in [0, 1] on the token weight
        (the authors' ``--density-min-weight``; paper §3.4).
    :param backspace_p: rate of injected ``wrong token, backspace`` pairs in
        the demonstrations, as ``--mle.backspace-p`` (0 = none).
    :param wrong_tokens: where injected wrong tokens come from, as
        ``--mle.wrong-tokens``: ``"uniform"`` or ``"model"``.
    :raises ValueError: naming the bad field and value.
    """

    gamma: float = 0.1
    min_weight: float = 0.3
    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"TaiLrConfig.gamma must be in (0, 1], got {self.gamma}")
        if not 0.0 <= self.min_weight <= 1.0:
            raise ValueError(f"TaiLrConfig.min_weight must be in [0, 1], got {self.min_weight}")
        check_augmentation("TaiLrConfig", self.backspace_p, self.wrong_tokens)


def tailr_weights(logp: torch.Tensor, gamma: float, min_weight: float) -> torch.Tensor:
    """``clip(p / (γ + (1 − γ)·p), w_min, 1)`` from ``logp = log p``, detached (Ji et al. §3.3-3.4).

    :param logp: FloatTensor of target log-probabilities, any shape, nats.
    :return: FloatTensor of the same shape, no gradient.
    """
    with torch.no_grad():
        w = torch.exp(logp - torch.log(gamma + (1.0 - gamma) * logp.exp()))
        return w.clamp(min=min_weight, max=1.0)


def tailr_loss(
    logits: torch.Tensor, batch: TrajectoryBatch, target_mask: torch.Tensor, gamma: float, min_weight: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """TaiLr, Ji et al. (ICLR 2023) §3.3-3.4: ``−(1/|A|) Σ_t w_t log p(x_t)`` with detached weights.

    :param logits: FloatTensor ``[B, T, V]`` on ``batch.tokens`` (``logits[:, t-1]`` predicts ``tokens[:, t]``).
    :param batch: the trajectories ``[B, T]``.
    :param target_mask: BoolTensor ``[B, T]``, the target positions ``A``.
    :param gamma: γ in (0, 1].
    :param min_weight: ``w_min`` in [0, 1].
    :return: ``(loss, mean weight over targets)``, scalar float32 tensors.
    """
    n = target_mask.sum().clamp(min=1)
    logp = token_log_probs(logits, batch.tokens, target_mask)
    w = tailr_weights(logp, gamma, min_weight)
    return -(w * logp).sum() / n, (w * target_mask).sum() / n


@register_learner
class TaiLrLearner(TeacherForcedLearner):
    """TaiLr on (optionally backspace-augmented) demonstrations (``--agent tailr``).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`TaiLrConfig`.
    """

    name = "tailr"
    config_class = TaiLrConfig
    progress_keys = ("loss/tailr", "tailr/weight")

    def token_loss(
        self, logits: torch.Tensor, batch: TrajectoryBatch, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        loss, weight = tailr_loss(logits, batch, target, self.cfg.gamma, self.cfg.min_weight)
        nll = -token_log_probs(logits.detach(), batch.tokens, target).sum() / target.sum().clamp(min=1)
        return loss, {"loss/tailr": loss.item(), "tailr/weight": weight.item(), "loss/nll": nll.item()}
