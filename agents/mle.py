"""MLE / behaviour cloning, optionally on backspace-augmented demonstrations.

Loss: teacher-forced cross-entropy of the demonstrated actions,

    L_MLE = - (1 / |A|) Σ_{(s, a) ∈ A} log π(a | s)        (nats per action)

with ``A`` the demonstrated actions. Plain MLE sees the task's sequences
followed by ``eos``. "MLE + backspace" (the SequenceMatch paper's baseline,
Cundy & Ermon ICLR 2024 §5) trains on demonstrations augmented with a wrong
token followed by ``backspace`` at rate ``p`` (:mod:`agents.augment`). The
wrong tokens themselves are *not* targets [recon: the paper does not say;
learning to emit errors would defeat the purpose]: the model learns to press
backspace after an error, never to make one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from seqenv.oracle import pad_sequences
from seqenv.tokenizers import BOS_ID, NUM_SPECIAL

from .augment import augment_with_backspace
from .data import collate, noise_token_mask
from .sequencematch import TrajectoryBatch


@dataclass
class MLEConfig:
    """MLE hyperparameters.

    :param backspace_p: rate of injected ``wrong token, backspace`` pairs per
        position (0 = plain MLE).
    :param noise: where wrong tokens come from: ``"uniform"`` over ordinary
        tokens or ``"model"`` (sampled from the current policy: plausible errors).
    """

    backspace_p: float = 0.0
    noise: Literal["uniform", "model"] = "uniform"

    def __post_init__(self):
        if not 0.0 <= self.backspace_p < 1.0:
            raise ValueError(f"backspace_p must be in [0, 1), got {self.backspace_p}")
        if self.noise not in ("uniform", "model"):
            raise ValueError(f"noise must be 'uniform' or 'model', got {self.noise!r}")


def action_log_probs(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """``log π(a_i | s_i)`` at every position: FloatTensor ``[B, T]`` (0 where not an action).

    The action at index ``i`` is ``tokens[:, i]``, taken in the state whose
    logits are ``logits[:, i-1]`` (docs/internals.md).
    """
    logp = logits[:, :-1].float().log_softmax(-1).gather(-1, batch.tokens[:, 1:, None]).squeeze(-1)
    logp = F.pad(logp, (1, 0))
    return logp.masked_fill(~batch.action_mask, 0.0)


def mle_loss(logits: torch.Tensor, batch: TrajectoryBatch, target_mask: "torch.Tensor | None" = None) -> torch.Tensor:
    """Mean cross-entropy (nats per target action).

    :param logits: FloatTensor ``[B, T, V]`` from the policy on ``batch.tokens``.
    :param target_mask: BoolTensor ``[B, T]``, the actions to imitate
        (default: ``batch.action_mask``).
    """
    mask = batch.action_mask if target_mask is None else target_mask
    return -(action_log_probs(logits, batch) * mask).sum() / mask.sum().clamp(min=1)


def model_noise_fn(policy, generator: torch.Generator, device):
    """``noise_fn`` for :func:`augment_with_backspace` that samples from ``policy``.

    Given a batch of prefixes it returns one sampled ordinary token per prefix
    (specials excluded) from the current policy.
    """
    @torch.no_grad()
    def noise_fn(prefixes: list[list[int]]) -> list[int]:
        module = getattr(policy, "module", policy)
        tokens, lengths = pad_sequences([[BOS_ID, *p] for p in prefixes])
        tokens, lengths = tokens.to(device), lengths.to(device)
        logits = module(tokens)[torch.arange(len(prefixes), device=device), lengths - 1].float()
        logits[:, :NUM_SPECIAL] = float("-inf")
        return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(-1).tolist()

    return noise_fn


class MLELearner:
    """Behaviour cloning on (optionally backspace-augmented) demonstrations.

    :param model: the policy (possibly wrapped in DDP) -- called on tokens.
    :param cfg: :class:`MLEConfig`.
    :param vocab_size: for uniform noise tokens.
    :param generator: CPU ``torch.Generator`` for the augmentation.
    """

    name = "mle"

    def __init__(self, model, cfg: MLEConfig, vocab_size: int, device, generator: torch.Generator):
        self.model, self.cfg, self.vocab_size, self.device, self.generator = model, cfg, vocab_size, device, generator

    def parameters(self):
        return self.model.parameters()

    def demonstrations(self, demos: list[list[int]]) -> TrajectoryBatch:
        """Augment (if ``backspace_p > 0``) and collate a list of demonstrations."""
        if self.cfg.backspace_p > 0:
            noise_fn = model_noise_fn(self.model, self.generator, self.device) if self.cfg.noise == "model" else None
            demos = augment_with_backspace(demos, self.cfg.backspace_p, self.vocab_size, self.generator,
                                           noise=self.cfg.noise, noise_fn=noise_fn)
        return collate(demos, device=self.device)

    def loss(self, demos: list[list[int]], step: int) -> tuple[torch.Tensor, dict]:
        batch = self.demonstrations(demos)
        logits = self.model(batch.tokens)
        target = batch.action_mask & ~noise_token_mask(batch) if self.cfg.backspace_p > 0 else batch.action_mask
        loss = mle_loss(logits, batch, target)
        return loss, {"loss/mle": loss.item(), "train/tokens": int(batch.action_mask.sum())}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
