"""Token-level unlikelihood training (Welleck et al., ICLR 2020, "Neural Text Generation with Unlikelihood
Training", eq. 4).

At every target position ``t`` the negative candidates are the previous
context tokens that are not the target, ``C_t = {x_1, ..., x_{t-1}} \\ {x_t}``,
and the loss adds their unlikelihood to the likelihood [paper, eq. 4]:

    L_UL(t) = − log p(x_t | x_<t) − α Σ_{c ∈ C_t} log(1 − p(c | x_<t))

averaged over target tokens (the authors' fairseq criterion sums both terms
and divides by the number of target tokens; ``1 − p`` is clamped at 1e-5 as
there). α = 1.0 is the paper's token-level setting.

Our reconstructions [recon], where a backspace trajectory or a prompt has no
counterpart in the paper:

* the context of an action is the generated text of the state it is taken in
  (the tokens on the stack after backspaces; a deleted wrong token stops being
  a candidate once it is deleted), without the prompt (on ``arithmetic`` the
  prompt's digits are not repetitions of the answer);
* targets are masked as in :mod:`agents.mle`: the injected wrong tokens of
  "+ backspace" demonstrations are neither likelihood nor unlikelihood targets;
  ``backspace`` and ``eos`` are targets, but never candidates (they write
  nothing into the state).

Sequence-level unlikelihood (fine-tuning on the model's own greedy
continuations) is not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from .common.learner import register_learner
from .common.trajectory import TrajectoryBatch, action_log_softmax, token_log_probs
from .mle import TeacherForcedLearner, check_augmentation


@dataclass
class UnlikelihoodConfig:
    """Unlikelihood hyperparameters (the ``--unlikelihood.*`` flags).

    :param alpha: weight α of the unlikelihood term (Welleck et al. eq. 4; the
        paper's token-level runs use 1.0; 0 = MLE).
    :param backspace_p: rate of injected ``wrong token, backspace`` pairs in
        the demonstrations, as ``--mle.backspace-p`` (0 = none).
    :param wrong_tokens: where injected wrong tokens come from, as
        ``--mle.wrong-tokens``: ``"uniform"`` or ``"model"``.
    :raises ValueError: naming the bad field and value.
    """

    alpha: float = 1.0
    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if not self.alpha >= 0.0:
            raise ValueError(f"UnlikelihoodConfig.alpha must be >= 0, got {self.alpha}")
        check_augmentation("UnlikelihoodConfig", self.backspace_p, self.wrong_tokens)


def context_candidates(batch: TrajectoryBatch, vocab_size: int, target_mask: torch.Tensor) -> torch.Tensor:
    """Welleck's negative candidates ``C_t`` of every target position, on backspace trajectories [recon].

    ``C_t`` = the token ids present in the generated text of the state in
    which action ``t`` is taken (the stack after replaying the backspaces;
    prompt excluded), minus the target ``tokens[:, t]``.

    :param batch: the trajectories (``tokens`` ``[B, T]``).
    :param vocab_size: ``V``, the last dimension of the logits.
    :param target_mask: BoolTensor ``[B, T]``, the positions that are scored.
    :return: BoolTensor ``[B, T, V]``; all False outside ``target_mask``.
    """
    tokens, amask, ids = batch.tokens, batch.is_action, batch.ids
    B, T = tokens.shape
    dev = tokens.device
    cand = torch.zeros((B, T, vocab_size), dtype=torch.bool, device=dev)
    counts = torch.zeros((B, vocab_size), dtype=torch.long, device=dev)  # multiset of the stack's token ids
    stack = torch.zeros((B, T), dtype=torch.long, device=dev)
    depth = torch.zeros(B, dtype=torch.long, device=dev)
    rows = torch.arange(B, device=dev)
    for t in range(T):
        act, tok = amask[:, t], tokens[:, t]
        cand[:, t] = counts > 0
        pop = act & (tok == ids.backspace) & (depth > 0)
        top = stack[rows, (depth - 1).clamp(min=0)]
        counts[rows[pop], top[pop]] -= 1
        depth = depth - pop.long()
        push = act & (tok != ids.backspace) & (tok != ids.eos)
        stack[rows[push], depth[push]] = tok[push]
        counts[rows[push], tok[push]] += 1
        depth = depth + push.long()
    cand.scatter_(2, tokens[:, :, None], False)  # minus the target itself
    return cand & target_mask[:, :, None]


def unlikelihood_loss(
    logits: torch.Tensor,
    batch: TrajectoryBatch,
    target_mask: torch.Tensor,
    candidates: torch.Tensor,
    alpha: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token-level unlikelihood, Welleck et al. (ICLR 2020) eq. 4, averaged over target tokens.

    ``L = (1/|A|) Σ_{t ∈ A} [ −log p(x_t) − α Σ_{c ∈ C_t} log(1 − p(c)) ]`` with
    ``1 − p`` clamped at 1e-5 (the authors' code).

    :param logits: FloatTensor ``[B, T, V]`` on ``batch.tokens`` (``logits[:, t-1]`` predicts ``tokens[:, t]``).
    :param batch: the trajectories ``[B, T]``.
    :param target_mask: BoolTensor ``[B, T]``, the target positions ``A`` (``[:, 0]`` False).
    :param candidates: BoolTensor ``[B, T, V]``, ``C_t`` per position (see :func:`context_candidates`).
    :param alpha: α >= 0.
    :return: ``(loss, nll, ul)`` scalar float32 tensors: the loss, and its two
        terms per target token (``loss = nll + α·ul``), nats.
    """
    n = target_mask.sum().clamp(min=1)
    nll = -token_log_probs(logits, batch.tokens, target_mask).sum() / n
    logp = action_log_softmax(logits)
    one_minus_p = torch.clamp(-torch.expm1(logp), min=1e-5)
    ul = -(torch.log(one_minus_p) * candidates).sum() / n
    return nll + alpha * ul, nll, ul


@register_learner
class UnlikelihoodLearner(TeacherForcedLearner):
    """Token-level unlikelihood training on (optionally backspace-augmented) demonstrations (``--agent unlikelihood``).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`UnlikelihoodConfig`.
    """

    name = "unlikelihood"
    config_class = UnlikelihoodConfig
    progress_keys = ("loss/nll", "loss/ul")

    def token_loss(
        self, logits: torch.Tensor, batch: TrajectoryBatch, target: torch.Tensor
    ) -> tuple[torch.Tensor, dict]:
        cand = context_candidates(batch, logits.shape[-1], target)
        loss, nll, ul = unlikelihood_loss(logits, batch, target, cand, self.cfg.alpha)
        return loss, {
            "loss/unlikelihood": loss.item(),
            "loss/nll": nll.item(),
            "loss/ul": ul.item(),
            "ul/candidates_per_token": float(cand.sum() / target.sum().clamp(min=1)),
        }
