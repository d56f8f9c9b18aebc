"""EMO: Earth Mover Distance Optimization (Ren et al., ICLR 2024, "EMO: Earth Mover Distance Optimization
for Auto-regressive Language Modeling").

EMO replaces (part of) the forward cross-entropy by the earth mover distance
between the model's next-token distribution ``q_θ(·|x_<t)`` and the one-hot
data distribution, with the transport cost between two tokens taken as the
cosine distance of their rows in the LM head, ``C(i, j) = 1 − cos(e_i, e_j)``.
Against a one-hot target the optimal transport is trivial, and the paper's
differentiable bound (DEMD) per target token is the expected cost

    DEMD_t = Σ_j q_θ(j | x_<t) · C(j, x_t) = 1 − ⟨ê_{x_t}, Σ_j q_θ(j | x_<t) ê_j⟩

(``ê`` = unit-normalised rows). The trained loss combines it with MLE; we use
the authors' package ``emoloss`` 0.0.3 (PyPI, MIT licence; its ``EMOLoss``):

    mode 1 (default):  L_t = ½ (NLL_t + min(sg(NLL_t / DEMD_t), 3) · DEMD_t)
    mode 2:            L_t = sg(DEMD_t / NLL_t) · NLL_t + DEMD_t

averaged over target tokens. The dynamic weight ``sg(NLL/DEMD)`` scales the
EMO term to MLE's magnitude; the cap at 3 is the package's (the authors'
``language_modeling/gpt2.py`` has no cap). ``emoloss`` is pure torch with no
dependencies: ``pip download --no-deps emoloss==0.0.3`` gives a 3.4 kB wheel
with no ``Requires-Dist``, so it installs beside torch 2.13 without touching
it; it is a project dependency (pyproject.toml).

The cost embedding is the LM head's weight **frozen at the start of the run**
(the authors' ``self.cost_embedding = lm_head.weight.data.clone()`` at model
construction, i.e. the pre-trained or ``--init`` model's head); it is saved
in the learner's state, so a resumed run keeps the original costs (a
float32 ``[V, d]`` copy in every checkpoint: 0.4 GB for a 50k × 2048 head).
For the tied-embedding transformer policy the head is the token embedding.

Backspace trajectories and prompts [recon]: every target as in
:mod:`agents.mle` (``backspace`` and ``eos`` included, their costs from their
own head rows; injected wrong tokens and prompts are not targets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from emo import EMOLoss

from .common.demos import Demos
from .common.learner import LearnerContext, register_learner
from .common.trajectory import TrajectoryBatch, token_log_probs
from .mle import check_augmentation, demo_batch
from .policies.base import Policy


@dataclass
class EMOConfig:
    """EMO hyperparameters (the ``--emo.*`` flags).

    :param mode: ``emoloss``'s combination of MLE and the EMO term: 1 =
        ``½(NLL + min(sg(NLL/DEMD), 3)·DEMD)`` (the package default), 2 =
        ``sg(DEMD/NLL)·NLL + DEMD`` (more weight on EMO).
    :param backspace_p: rate of injected ``wrong token, backspace`` pairs in
        the demonstrations, as ``--mle.backspace-p`` (0 = none).
    :param wrong_tokens: where injected wrong tokens come from, as
        ``--mle.wrong-tokens``: ``"uniform"`` or ``"model"``.
    :raises ValueError: naming the bad field and value.
    """

    mode: int = 1
    backspace_p: float = 0.0
    wrong_tokens: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if self.mode not in (1, 2):
            raise ValueError(f"EMOConfig.mode must be 1 or 2, got {self.mode}")
        check_augmentation("EMOConfig", self.backspace_p, self.wrong_tokens)


def output_embedding(policy: Policy | torch.nn.Module) -> torch.Tensor:
    """The LM head's weight, rows ``[:vocab_size]``: FloatTensor ``[V, d]`` (a view; detach/clone it).

    :param policy: a policy (possibly DDP-wrapped or FSDP-sharded: then a
        gathered copy, not a view): an HF policy (``.lm``'s output embeddings)
        or one with an ``lm_head`` linear layer.
    :raises ValueError: if the policy has neither.
    """
    policy = getattr(policy, "module", policy)
    lm = getattr(policy, "lm", None)
    head = lm.get_output_embeddings() if lm is not None and hasattr(lm, "get_output_embeddings") else None
    if head is None:
        head = getattr(policy, "lm_head", None)
    if head is None or not isinstance(getattr(head, "weight", None), torch.Tensor):
        raise ValueError(f"cannot find the LM head of {type(policy).__name__}; EMO needs its output embedding")
    weight = head.weight
    if hasattr(weight, "full_tensor"):  # FSDP: a sharded DTensor; gathered whole (collective: every rank calls this)
        weight = weight.full_tensor()
    return weight[: policy.vocab_size]


def emo_loss(
    logits: torch.Tensor,
    batch: TrajectoryBatch,
    target_mask: torch.Tensor,
    cost_embedding: torch.Tensor,
    mode: int = 1,
) -> torch.Tensor:
    """EMO, Ren et al. (ICLR 2024): ``emoloss.EMOLoss`` on our layout, averaged over target tokens.

    :param logits: FloatTensor ``[B, T, V]`` on ``batch.tokens`` (``logits[:, t-1]``
        predicts ``tokens[:, t]``, the package's shift too); upcast to float32.
    :param batch: the trajectories ``[B, T]``.
    :param target_mask: BoolTensor ``[B, T]``, the target positions ``A``.
    :param cost_embedding: FloatTensor ``[V, d]``, rows whose cosine distances
        are the transport costs (no gradient flows into it).
    :param mode: 1 or 2 (see :class:`EMOConfig`).
    :return: scalar float32 tensor.
    """
    tokens = batch.tokens
    labels = torch.where(target_mask, tokens, torch.full_like(tokens, -100))
    return EMOLoss(logits.float(), labels, cost_embedding.detach().float(), ignore_index=-100, mode=mode)


@register_learner
class EMOLearner:
    """EMO on (optionally backspace-augmented) demonstrations (``--agent emo``).

    :param ctx: :class:`~agents.common.learner.LearnerContext`; the cost
        embedding is the policy's LM head as it is now (the ``--init`` model's).
    :param cfg: :class:`EMOConfig`.
    """

    name = "emo"
    config_class = EMOConfig
    progress_keys = ("loss/emo", "loss/nll")

    def __init__(self, ctx: LearnerContext, cfg: EMOConfig):
        self.ctx, self.cfg, self.model = ctx, cfg, ctx.model
        self.cost_embedding = output_embedding(ctx.policy).detach().float().clone()

    def parameters(self):
        return self.model.parameters()

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        batch, target = demo_batch(demos, self.cfg.backspace_p, self.cfg.wrong_tokens, self.ctx)
        logits = self.model(batch.tokens)
        loss = emo_loss(logits, batch, target, self.cost_embedding, self.cfg.mode)
        nll = -token_log_probs(logits.detach(), batch.tokens, target).sum() / target.sum().clamp(min=1)
        return loss, {"loss/emo": loss.item(), "loss/nll": nll.item(), "train/tokens": int(batch.is_action.sum())}

    def state_dict(self) -> dict:
        return {"cost_embedding": self.cost_embedding.cpu()}

    def load_state_dict(self, state: dict) -> None:
        if "cost_embedding" in state:
            self.cost_embedding = state["cost_embedding"].to(self.ctx.device, torch.float32)
