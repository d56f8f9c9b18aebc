"""MixCE (Zhang et al., ACL 2023, "MixCE: Training Autoregressive Language Models by Mixing Forward and
Reverse Cross-Entropies").

MixCE mixes the forward cross-entropy (MLE, recall-seeking) with the reverse
cross-entropy ``−E_{x∼q_θ}[log p_data(x)]`` (precision-seeking):
``η·CE(p_data, q_θ) + (1 − η)·CE(q_θ, p_data)``. ``p_data`` is unknown, so the
paper approximates the reverse term's gradient on the data samples
themselves, weighting each sample's log-likelihood by the detached model
probability; at token level, as the authors' code implements it
(``bloomberg/MixCE-acl2023``, ``gpt2.py``):

    L_MixCE = (1/|A|) Σ_{t ∈ A} [ η + (1 − η)·sg(q_θ(x_t | x_<t)) ] · (−log q_θ(x_t | x_<t))

i.e. ``η·NLL + (1 − η)·(−sg(q)·log q)``: the sign is positive (both terms
raise the data's likelihood; the second more where the model already agrees
with the data). η = 1 is MLE. We implement the released code's form
exactly: the weight uses the token's conditional probability
``q_θ(x_t | x_<t)`` (not a sequence probability, which underflows) and is
**not** self-normalised over the batch or the sequence (the code has no
normaliser). The paper's text was not at hand when this was written; where
its equation differs from the authors' code, this module follows the code
[recon]. The paper's best η on GPT-2 ranges over 0.1-0.7 by model size and
data; our default 0.5 is the middle of that range [recon].

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
class MixCEConfig:
    """MixCE hyperparameters (the ``--mixce.*`` flags).

    :param eta: mixing ratio η in [0, 1] of the forward cross-entropy (the
        authors' ``mixing_ratio``; 1 = MLE, 0 = the reverse term alone).
    :param backspace_p: rate of injected ``wrong token, backspace`` pairs in
        the demonstrations, as ``--mle.backspace-p`` (0 = none).
    :param wrong_tokens: where injected wrong tokens come from, as
        ``--mle.wrong-tokens``: ``"uniform"`` or ``"model"``.
    :raises ValueError: naming the bad field and value.
    """

    eta: float = 0.5
    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if not 0.0 <= self.eta <= 1.0:
            raise ValueError(f"MixCEConfig.eta must be in [0, 1], got {self.eta}")
        check_augmentation("MixCEConfig", self.backspace_p, self.wrong_tokens)


def mixce_loss(
    logits: torch.Tensor, batch: TrajectoryBatch, target_mask: torch.Tensor, eta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """MixCE's token-level loss (Zhang et al., ACL 2023; the authors' code): mean of ``(η + (1−η)·sg(q))·(−log q)``.

    :param logits: FloatTensor ``[B, T, V]`` on ``batch.tokens`` (``logits[:, t-1]`` predicts ``tokens[:, t]``).
    :param batch: the trajectories ``[B, T]``.
    :param target_mask: BoolTensor ``[B, T]``, the target positions ``A``.
    :param eta: η in [0, 1].
    :return: ``(loss, mean NLL)`` over target tokens, scalar float32 tensors, nats.
    """
    n = target_mask.sum().clamp(min=1)
    logp = token_log_probs(logits, batch.tokens, target_mask)
    q = logp.detach().exp()
    loss = -((eta + (1.0 - eta) * q) * logp).sum() / n
    return loss, -logp.detach().sum() / n


@register_learner
class MixCELearner(TeacherForcedLearner):
    """MixCE on (optionally backspace-augmented) demonstrations (``--agent mixce``).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`MixCEConfig`.
    """

    name = "mixce"
    config_class = MixCEConfig
    progress_keys = ("loss/mixce", "loss/nll")

    def token_loss(
        self, logits: torch.Tensor, batch: TrajectoryBatch, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        loss, nll = mixce_loss(logits, batch, target, self.cfg.eta)
        return loss, {"loss/mixce": loss.item(), "loss/nll": nll.item()}
