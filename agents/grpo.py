"""GRPO / Dr. GRPO / RLOO: group-relative policy gradients in SeqGen-v0, backspace included.

Sources: GRPO -- Shao et al., "DeepSeekMath: Pushing the Limits of Mathematical
Reasoning in Open Language Models", 2024, arXiv 2402.03300, §4.1 (eq. 3 with
outcome supervision); Dr. GRPO -- Liu et al., "Understanding R1-Zero-Like
Training: A Critical Perspective", 2025, arXiv 2503.20783 (no std division, no
per-sequence length normalisation); RLOO -- Ahmadian et al., "Back to Basics:
Revisiting REINFORCE Style Optimization for Learning from Human Feedback in
LLMs", ACL 2024, arXiv 2402.14740 (leave-one-out baseline); the ``k3`` KL
estimator -- Schulman, "Approximating KL divergence", 2020. Written from the
papers' formulas (METHODS.md §5); no code copied.

Each optimiser step works on a **rollout** of ``P = num_prompts`` prompts, each
repeated ``G = group_size`` times, played by the current policy through the
batched vector env (:func:`agents.common.rollout.rollout`): backspace is an
action like any other (``allow_backspace=False`` masks it off). Unconditional
tasks have one empty prompt: a group is then ``G`` free samples. Every
episode gets the env's terminal reward ``r_i`` (``reward="validity"``:
1 when the task's checker accepts the final text, :mod:`seqenv.rewards`;
``"oracle"``: ``log p(x, eos)``; ``"critic:PATH"``: an NCE critic's
``-E_ψ(x) - c``; a Python callable with :meth:`GRPOLearner.set_reward`);
truncated episodes earn 0, as in the env's ``reward_mode="terminal"``.

Advantages, per group ``g`` of rewards ``r_1..r_G`` (:func:`group_advantages`):

* ``grpo``: ``A_i = (r_i - mean_g r) / (std_g r + eps)`` (std with Bessel's
  correction, as ``torch.std``; ``eps = 1e-4``);
* ``dr_grpo``: ``A_i = r_i - mean_g r``;
* ``rloo``: ``A_i = r_i - mean_{j≠i} r_j = G/(G-1) (r_i - mean_g r)``.

Every action ``a_t`` of episode ``i`` (appends, backspaces, ``eos``) carries
``A_i``. The loss is the token-level clipped surrogate with a KL penalty to
the reference policy π_ref (the policy when the learner was built: the
``--init`` checkpoint), averaged over all actions of the rollout (DAPO's
token-level mean [recon: the choice of normaliser is ours; GRPO averages per
sequence first, Dr. GRPO divides by a constant])::

    L = -(1/|A|) Σ_{i,t} [ min(ρ_t A_i, clip(ρ_t, 1-ε, 1+ε) A_i) - β k3_t ]
    ρ_t = π_θ(a_t|s_t) / π_old(a_t|s_t),   k3_t = π_ref/π_θ - log(π_ref/π_θ) - 1   (at a_t)

with π_old the policy that sampled the rollout (its log-probabilities are
stored). A rollout is used for ``updates_per_rollout`` (μ) optimiser steps,
then a new one is drawn; with μ = 1 the ratio is 1 and the clip inactive.
All probabilities are over the env's legal actions (the masks of the rollout,
backspace removed when masked off). ``kl="none"`` or ``beta=0`` drops the
reference (no copy kept).

Logged (TensorBoard): ``rollout/reward_mean``, ``rollout/reward_std``,
``rollout/zero_variance_groups`` (fraction of groups whose rewards are all
equal: no signal), ``rollout/backspace_rate`` (backspaces per action),
``rollout/episode_actions``, ``train/kl`` (mean ``k3`` per action),
``train/clip_fraction``, ``loss/grpo``; the trainer adds its samples panel
at every evaluation.

Resume: the reference weights, the current rollout and its use count are in
the learner's state (the trainer checkpoints the random streams), so a resumed
run continues exactly.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from seqenv.rewards import StateScore, make_score
from seqenv.tokenizers import SpecialIds

from .common.cli import check_number
from .common.demos import Demos
from .common.learner import LearnerContext, register_learner
from .common.rollout import RolloutResult, make_vector_env, rollout
from .common.trajectory import TrajectoryBatch, sequence_batch
from .critic import load_critic

ADVANTAGES = ("grpo", "dr_grpo", "rloo")
STD_EPS = 1e-4


@dataclass
class GRPOConfig:
    """GRPO / RLOO hyperparameters (the ``--grpo.*`` flags).

    :param group_size: ``G`` completions per prompt (>= 2).
    :param num_prompts: prompts per rollout (episodes per rollout: ``num_prompts × group_size``).
    :param advantage: ``grpo`` (std-normalised), ``dr_grpo`` (no std) or ``rloo`` (leave-one-out).
    :param reward: ``validity`` (the task's checker), ``oracle``, or ``critic:PATH`` (an ``nce`` checkpoint).
    :param kl: ``k3`` (GRPO's estimator, to the reference policy) or ``none``.
    :param beta: KL coefficient β >= 0 (GRPO: 0.04).
    :param clip_eps: ε of the clipped ratio.
    :param updates_per_rollout: optimiser steps per rollout (μ).
    :param allow_backspace: False masks backspace off (the ablation).
    :param temperature: sampling temperature of the rollouts (> 0; π_old is the tempered policy).
    :raises ValueError: naming the bad field and value.
    """

    group_size: int = 8
    num_prompts: int = 8
    advantage: Literal["grpo", "dr_grpo", "rloo"] = "grpo"
    reward: str = "validity"
    kl: Literal["k3", "none"] = "k3"
    beta: float = 0.04
    clip_eps: float = 0.2
    updates_per_rollout: int = 1
    allow_backspace: bool = True
    temperature: float = 1.0

    def __post_init__(self):
        check_number("--grpo.group-size", self.group_size, ge=2, integer=True)  # a group needs a baseline
        check_number("--grpo.num-prompts", self.num_prompts, ge=1, integer=True)
        check_number("--grpo.updates-per-rollout", self.updates_per_rollout, ge=1, integer=True)
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"--grpo.advantage must be one of {', '.join(ADVANTAGES)}, got {self.advantage!r}")
        if self.kl not in ("k3", "none"):
            raise ValueError(f"--grpo.kl must be 'k3' or 'none', got {self.kl!r}")
        if not (self.reward in ("validity", "oracle") or (self.reward.startswith("critic:") and len(self.reward) > 7)):
            raise ValueError(f"--grpo.reward must be 'validity', 'oracle' or 'critic:PATH', got {self.reward!r}")
        check_number("--grpo.beta", self.beta, ge=0)
        check_number("--grpo.clip-eps", self.clip_eps, gt=0, lt=1)
        check_number("--grpo.temperature", self.temperature, gt=0)


def group_advantages(rewards: torch.Tensor, group_size: int, kind: str = "grpo") -> torch.Tensor:
    """Group-relative advantages (module docstring).

    :param rewards: FloatTensor ``[N]``, ``N = P × G``; rows ``g·G .. g·G + G - 1`` are group ``g``.
    :param group_size: ``G`` (>= 2).
    :param kind: ``grpo``, ``dr_grpo`` or ``rloo``.
    :return: FloatTensor ``[N]`` (same dtype). A group of equal rewards gets advantage 0.
    :raises ValueError: if ``N`` is not a multiple of ``G`` or ``kind`` is unknown.
    """
    if rewards.dim() != 1 or len(rewards) % group_size or group_size < 2:
        raise ValueError(f"rewards must be [P * G] with G = {group_size} >= 2, got shape {tuple(rewards.shape)}")
    r = rewards.reshape(-1, group_size)
    centred = r - r.mean(1, keepdim=True)
    if kind == "grpo":
        adv = centred / (r.std(1, keepdim=True) + STD_EPS)
    elif kind == "dr_grpo":
        adv = centred
    elif kind == "rloo":
        adv = centred * group_size / (group_size - 1)
    else:
        raise ValueError(f"unknown advantage {kind!r}; expected one of {ADVANTAGES}")
    return adv.reshape(-1)


def clipped_surrogate_loss(
    log_p: torch.Tensor,
    log_old: torch.Tensor,
    advantages: torch.Tensor,
    batch: TrajectoryBatch,
    clip_eps: float,
    log_ref: torch.Tensor | None = None,
    beta: float = 0.0,
) -> tuple[torch.Tensor, dict]:
    """The token-level clipped objective with a ``k3`` KL penalty (module docstring), as a loss.

    :param log_p: FloatTensor ``[N, T]``, ``log π_θ(a_t|s_t)`` (differentiable), columns as ``batch``'s.
    :param log_old: ``[N, T]``, ``log π_old(a_t|s_t)`` (no gradient).
    :param advantages: ``[N]``, one per episode.
    :param batch: the episodes ``[N, T]``; its ``is_action`` marks the actions.
    :param log_ref: ``[N, T]`` ``log π_ref(a_t|s_t)``, or None (no KL term).
    :return: ``(loss, {"kl": mean k3, "clip_fraction": fraction of actions whose ratio was clipped})``.
    """
    mask = batch.is_action
    n = mask.sum().clamp(min=1)
    ratio = torch.exp(torch.where(mask, log_p - log_old, torch.zeros_like(log_p)))
    adv = advantages[:, None].to(log_p.dtype)
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    objective = surrogate
    kl = torch.zeros((), dtype=log_p.dtype, device=log_p.device)
    if log_ref is not None:
        d = torch.where(mask, log_ref - log_p, torch.zeros_like(log_p))
        k3 = d.exp() - d - 1
        objective = surrogate - beta * k3
        kl = (k3.detach() * mask).sum() / n
    loss = -(objective * mask).sum() / n
    clipped = ((ratio.detach() - 1).abs() > clip_eps) & mask
    return loss, {"kl": float(kl), "clip_fraction": float(clipped.sum() / n)}


@torch.no_grad()
def episode_rewards(score: StateScore, res: RolloutResult) -> torch.Tensor:
    """The env's terminal reward of each episode: ``score.terminal(final state)`` if it ended with
    ``eos``, else 0 (``reward_mode="terminal"``). FloatTensor ``[N]`` (float32) on the rollout's device."""
    out = torch.zeros(len(res.lengths), dtype=torch.float64, device=res.lengths.device)
    rows = res.terminated.nonzero().squeeze(1)
    if len(rows):
        out[rows] = score.terminal(res.tokens[rows], res.lengths[rows]).to(out.device, torch.float64)
    return out.float()


class CriticScore(StateScore):
    """``r(x) = -E_ψ(x) - c`` of an NCE critic (``train.py --agent nce``) on the generated text of a state.

    :param path: the critic's checkpoint. :param task: the run's task. :param device: where it runs.
    """

    def __init__(self, path: str, task, device):
        self.critic, self.device = load_critic(path, device, task), device

    def terminal(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        seqs = [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
        toks, mask = sequence_batch(seqs, [True] * len(seqs), self.device)
        return (-self.critic(toks, mask).double() - self.critic.log_normalizer.double()).to(lengths.device)

    def potential(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.zeros(lengths.shape, dtype=torch.float64, device=lengths.device)


def _score(reward: str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | StateScore, task) -> StateScore:
    """:func:`~seqenv.rewards.make_score` for a reward that is never ``"none"`` (GRPOConfig checks the names)."""
    score = make_score(reward, task)
    if score is None:
        raise ValueError(f"GRPO needs a reward, got {reward!r}")
    return score


@register_learner
class GRPOLearner:
    """GRPO / Dr. GRPO / RLOO on the policy's own rollouts (``--agent grpo``; module docstring).

    The demonstrations the trainer hands :meth:`loss` are not used. The
    reference policy is a frozen copy of the policy as the learner is built
    (the ``--init`` checkpoint); it is stored in the learner's state for
    resuming (with an HF policy that is a second copy of the model's weights).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`GRPOConfig`.
    :raises ValueError: a reward the task cannot give (``validity`` without a
        checker, ``oracle`` without an oracle).
    """

    name = "grpo"
    config_class = GRPOConfig
    progress_keys = ("rollout/reward_mean", "train/kl")

    def __init__(self, ctx: LearnerContext, cfg: GRPOConfig):
        self.ctx, self.cfg, self.model = ctx, cfg, ctx.model
        if cfg.reward.startswith("critic:"):
            self.score: StateScore = CriticScore(cfg.reward[len("critic:") :], ctx.task, ctx.device)
        else:
            self.score = _score(cfg.reward, ctx.task)
        self.reference = None
        if cfg.kl != "none" and cfg.beta > 0:
            self.reference = copy.deepcopy(ctx.policy).eval().requires_grad_(False)
        G = cfg.group_size
        self.venv = make_vector_env(ctx.task, cfg.num_prompts * G, ctx.device)
        self.ids = SpecialIds.of(ctx.policy)
        self.batch: dict | None = None  # the current rollout (tensors), used updates_per_rollout times
        self.uses = 0

    def set_reward(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | StateScore) -> None:
        """Use a Python reward instead of ``cfg.reward``: ``fn(tokens LongTensor [B, L], lengths [B]) ->
        FloatTensor [B]`` on the final states (prompt + completion), paid on terminated episodes."""
        self.score = _score(fn, self.ctx.task)

    def parameters(self):
        return self.model.parameters()

    # ------------------------------------------------------------------
    def _new_rollout(self) -> dict:
        ctx, cfg, G = self.ctx, self.cfg, self.cfg.group_size
        noise = ctx.generators["noise"]
        options = None
        prompts = ctx.task.prompts
        if prompts is not None:
            picks = torch.randint(len(prompts), (cfg.num_prompts,), generator=noise).tolist()
            options = {"prompt": [prompts[i] for i in picks for _ in range(G)]}
        seed = int(torch.randint(2**31 - 1, (1,), generator=noise))
        res = rollout(
            ctx.policy,
            self.venv,
            seed=seed,
            generator=ctx.generators["sample"],
            temperature=cfg.temperature,
            store_masks=True,
            allow_backspace=cfg.allow_backspace,
            reset_options=options,
        )
        rewards = episode_rewards(self.score, res)
        assert res.action_masks is not None  # store_masks=True
        batch = res.to_batch()
        masks = torch.zeros(
            *batch.tokens.shape, res.action_masks.shape[-1], dtype=torch.bool, device=batch.tokens.device
        )
        S = res.actions.shape[1]
        masks[batch.is_action] = res.action_masks[torch.arange(S, device=masks.device)[None] < res.num_actions[:, None]]
        log_old = torch.zeros(batch.tokens.shape, device=batch.tokens.device)
        log_old[batch.is_action] = res.log_probs[torch.arange(S, device=masks.device)[None] < res.num_actions[:, None]]
        return {
            "tokens": batch.tokens,
            "is_action": batch.is_action,
            "terminated": batch.terminated,
            "masks": masks,
            "log_old": log_old,
            "rewards": rewards,
            "advantages": group_advantages(rewards, G, cfg.advantage),
            "backspace": (res.actions == res.ids.backspace).sum().float() / res.num_actions.sum(),
            "actions": res.num_actions.float().mean(),
        }

    def _log_probs(self, model, b: dict) -> torch.Tensor:
        """``log π(a_t|s_t)`` ``[N, T]`` over the rollout's legal actions (0 off the actions)."""
        logits = model(b["tokens"]).float()[:, :-1] / self.cfg.temperature  # [:, i-1] predicts tokens[:, i]
        logits = logits.masked_fill(~b["masks"][:, 1:], -math.inf)
        lp = torch.log_softmax(logits, -1).gather(-1, b["tokens"][:, 1:, None]).squeeze(-1)
        lp = torch.where(b["is_action"][:, 1:], lp, torch.zeros_like(lp))
        return torch.cat([torch.zeros_like(lp[:, :1]), lp], 1)

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        fresh = self.batch is None or self.uses >= cfg.updates_per_rollout
        if fresh:
            self.batch, self.uses = self._new_rollout(), 0
        self.uses += 1
        b = self.batch
        assert b is not None  # set above on the first step
        log_p = self._log_probs(self.model, b)
        log_ref = None
        if self.reference is not None:
            with torch.no_grad():
                log_ref = self._log_probs(self.reference, b)
        episodes = TrajectoryBatch(b["tokens"], b["is_action"], b["terminated"], self.ids)
        loss, stats = clipped_surrogate_loss(
            log_p, b["log_old"], b["advantages"], episodes, cfg.clip_eps, log_ref, cfg.beta
        )
        metrics = {
            "loss/grpo": loss.item(),
            "train/kl": stats["kl"],
            "train/clip_fraction": stats["clip_fraction"],
            "train/tokens": int(b["is_action"].sum()),
        }
        if fresh:  # rollout statistics once per rollout
            r = b["rewards"].reshape(-1, cfg.group_size)
            metrics.update(
                {
                    "rollout/reward_mean": float(r.mean()),
                    "rollout/reward_std": float(r.std()),
                    "rollout/zero_variance_groups": float((r.max(1).values == r.min(1).values).float().mean()),
                    "rollout/backspace_rate": float(b["backspace"]),
                    "rollout/episode_actions": float(b["actions"]),
                }
            )
        return loss, metrics

    # ------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "reference": None if self.reference is None else self.reference.state_dict(),
            "batch": self.batch,
            "uses": self.uses,
        }

    def load_state_dict(self, state: dict) -> None:
        if state.get("reference") is not None and self.reference is not None:
            self.reference.load_state_dict(state["reference"])
        self.batch, self.uses = state.get("batch"), int(state.get("uses", 0))
        if self.batch is not None and "terminated" not in self.batch:  # saved before the batch kept it
            b = self.batch
            last = b["is_action"].long().cumsum(1).argmax(1, keepdim=True)  # the last action of each row
            b["terminated"] = b["tokens"].gather(1, last).squeeze(1) == self.ids.eos
