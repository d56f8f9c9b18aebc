"""SequenceMatch: occupancy-measure imitation with backtracking, as a loss on logits.

Source: Cundy & Ermon, "SequenceMatch: Imitation Learning for Autoregressive
Sequence Modelling with Backtracking", ICLR 2024, arXiv 2306.05426; built on
IQ-Learn (Garg et al., "Inverse soft-Q Learning for Imitation", NeurIPS 2021,
arXiv 2106.12142). Written from the formulas in ``shared/METHODS.md`` §1; no
code is copied from either paper's repository.

The policy's logits are read as soft Q-values, ``Q(s, a) = l(s, a)``, with
value function ``V(s) = logsumexp_a l(s, a)`` and implicit reward
``r(s, a, s') = Q(s, a) - γ V(s')``. The loss (METHODS.md §1, "SequenceMatch-χ²";
the divergence is named by the paper, the exact equation is [recon])::

    L = - E_data[Σ_i w_i r_i]                                        loss/reward_data
        + 1/(4α) (E_data[Σ_i w_i r_i²] + E_model[Σ_i w_i r_i²])      loss/chi2_penalty
        + E_{data ∪ model}[Σ_i w_i (V(u_i) - γ V(u_{i+1}))]           loss/value
        + terminal terms (absorbing state, below)                   loss/terminal
        + η · BC cross-entropy on the data actions                  loss/bc

with ``w_i = γ^i`` (``i`` = index of the action in its episode, 0 first),
``u_i`` the state (prefix, backspaces applied) the action ``a_i`` is taken in
and ``u_{i+1}`` the state it leads to (after a backspace: the shorter prefix).

Normalisation [recon]: ``E_data`` / ``E_model`` = mean over the sequences of
the batch of the per-sequence discounted sums; ``E_{data ∪ model}`` = mean over
the sequences of both batches pooled (equal batch sizes give IQ-Learn's 50/50
mixture). The BC term is the mean cross-entropy per data action (nats/token).
The χ² here is the Pearson χ² to the data/model *mixture*: the r² penalty sits
on data and model samples both (IQ-Learn's ``regularize`` option; penalising
data only is reported to diverge).

Absorbing state [recon] (LS-IQ, Al-Hafez et al., ICLR 2023, fixes the
``(1 - done)`` masking that IQ-Learn uses): after ``eos`` the episode enters
an absorbing state ``s_⊥`` that loops on itself forever. Its value ``V_⊥`` is
``logsumexp`` of the logits the policy outputs at the ``eos`` position (its
state after consuming ``eos``), so the ``eos`` action's implicit reward is
``Q(s, eos) - γ V_⊥`` -- no special case. Its self-loop's implicit reward is
``r_⊥ = V_⊥ - γ V_⊥ = (1 - γ) V_⊥``; a per-step term ``f`` of the loss, summed
over the infinite tail after an episode of ``N`` actions, is
``Σ_{i≥N} γ^i f = γ^N / (1 - γ) · f`` (:func:`absorbing_tail`). It enters the
data reward term (``f = φ(r_⊥)``), the r² penalty (``f = r_⊥²``) and the value
term (``f = (1 - γ) V_⊥``). With it the value term of a terminated episode
telescopes to exactly ``V(s_0)``, as IQ-Learn's identity
``E_μ[Σ γ^i (V(s_i) - γ V(s_{i+1}))] = V(s_0)`` requires.

Truncated episodes (``terminated`` False: step or length limit) simply stop
after their last action: no tail. This is biased: the states after the
truncation point are missing, so the value term is ``V(s_0) - γ^N V(s_N)``
instead of ``V(s_0)`` and the reward/penalty terms miss ``Σ_{i≥N}``. The bias
is ``O(γ^N)`` and vanishes only when ``γ^N`` is small.

Divergences (``SequenceMatchConfig.divergence``), φ in the convention of
IQ-Learn, ``φ(x) = -f*(-x)`` with ``f*`` the convex conjugate of the
f-divergence generator (conjugates from f-GAN, Nowozin, Cseke & Tomioka,
NeurIPS 2016, Table 2):

* ``"chi2_mixture"`` (default) [paper: IQ-Learn χ² φ; mixture penalty recon]:
  ``φ(x) = x - x²/(4α)`` (``f(u) = α (u - 1)²``) on data, plus the r² penalty
  on model samples.
* ``"kl"`` [recon]: ``f(u) = u log u``, ``f*(t) = exp(t - 1)``, so
  ``φ(x) = -exp(-(x + 1))``. In IQ-Learn's saddle point
  ``max_r E_data[φ(r)] - E_π[r]`` this is ``KL(ρ_π ‖ ρ_data)``.
* ``"js"`` [recon]: f-GAN's Jensen-Shannon ``f*(t) = -log(2 - exp(t))`` gives
  ``φ(x) = log(2 - exp(-x))``, defined only for ``x > -log 2``, while implicit
  rewards are unbounded. We evaluate it at ``x = softplus(r) - log 2`` (f-GAN's
  JS output activation, a bijection ℝ → (-log 2, ∞)), which simplifies to
  ``φ_JS(r) = log 2 + log σ(r)``: concave, increasing, finite on all of ℝ.

For ``kl`` and ``js`` the loss is ``-E_data[Σ w_i φ(r_i)]`` + value term +
terminal terms + η·BC, with no r² penalty (``loss/chi2_penalty`` = 0).

Defaults and which reading of the paper they are [recon, measured]
--------------------------------------------------------------------
With whole trajectories from one start state and the absorbing tail, the
data reward term plus the value term telescope (METHODS.md §1, "What the loss
reduces to"; derivation in ``benchmarks/results/main_job.md``)::

    L = Σ_data w_i (−log π(a_i|u_i))                  discounted data NLL
        + 1/(4α) (E_data[Σ w r²] + E_model[Σ w r²])   the χ²-mixture penalty
        + η · BC

so the wrong tokens of backspace demonstrations, if they are expert actions,
are *imitated* by the first term, and model samples act only through the r²
penalty, which pulls the implicit reward of model transitions to 0 and so
routes value through ``backspace`` back to the in-data parent state. The
defaults are the variant that ``benchmarks/sequencematch_hypotheses.py``
measured best (results: ``benchmarks/results/sequencematch_hypotheses*.md``):
wrong tokens excluded from the data term (``imitate_wrong_tokens=False``; the
transition wrong token → ``backspace`` stays expert), α = 100, wrong tokens
drawn from the model (``wrong_tokens="model"``), ``SM + η·BC`` with η = 0.001.
On python-lines (3 seeds) it removes the old default's loss of validity
(0.643 ± 0.034 vs 0.407 ± 0.013, continued MLE 0.678 ± 0.018) but does not beat
MLE beyond the seed spread; on arithmetic every variant is within the spread
of continued MLE. The other readings stay options: ``imitate_wrong_tokens``,
``alpha``/``alpha_model``, ``mix="convex"`` (``(1 − η)·BC + η·SM``) and
``normalize="token"`` (a no-op under Adam with gradient clipping, measured).

Trajectory layout (docs/internals.md): ``tokens[b] = [bos, prompt...,
a_1..a_n, pad...]``; ``logits[:, i]`` are the logits of the state reached
after ``tokens[:, :i+1]``. An action at index ``i`` is taken in the state
with logits ``[:, i-1]`` and leads to the state with logits ``[:, i]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import torch
import torch.nn.functional as F


from .common.demos import Demos
from .common.evaluation import backspace_rate, validity_rate
from .common.learner import LearnerContext, register_learner
from .common.rollout import OnlineSampler
from .common.trajectory import TrajectoryBatch, collate, wrong_token_mask
from .mle import backspace_actions

DIVERGENCES = ("chi2_mixture", "kl", "js")


# ----------------------------------------------------------------------------
# Config


@dataclass
class SequenceMatchConfig:
    """Hyperparameters of the SequenceMatch loss.

    :param alpha: χ² regulariser scale α > 0 (penalty weight 1/(4α), IQ-Learn's
        convention; IQ-Learn's default is 0.5). The paper reports α = 0.01
        [paper], but does not say whether α scales the r² penalty as 1/(4α) or
        multiplies it. Read as 1/(4α) = 25, the penalty drives the implicit
        reward to 0 everywhere -- a maximum-entropy policy: in
        ``tests/test_sequencematch.py``'s tabular MDP the occupancy distance to
        the expert *grows* (0.32 -> 0.51 after 150 steps), while α = 10 brings
        it to 0.04. Read as "α multiplies r²", the paper's 0.01 is α = 25
        here; IQ-Learn's discrete agent (V = T·logsumexp(Q/T), T = 0.01,
        α = 0.5) has an r² coefficient of about T/(4α) = 0.005 in logit units,
        α = 50 here. Our default α = 100 (coefficient 0.0025) [recon: chosen by
        ``benchmarks/sequencematch_hypotheses.py``; α = 10 was the old default].
    :param gamma: discount γ in (0, 1); 0.998 in the paper [paper]. γ = 1 is
        rejected: the absorbing-state tail γ^N/(1-γ) would diverge.
    :param eta: weight η >= 0 of the behaviour-cloning cross-entropy added to
        the loss; 0.001 in the paper [paper; what η multiplies is recon].
    :param divergence: ``"chi2_mixture"`` (default), ``"kl"`` or ``"js"``
        (see the module docstring for φ and sources).
    :param alpha_model: α of the r² penalty on *model* samples (None = ``alpha``)
        [recon: separate coefficients for the two halves of the mixture].
    :param mix: how BC and SequenceMatch combine [paper: "a convex combination
        of BC and SequenceMatch", η = 0.001; which term η weighs is recon]:
        ``"add"`` = ``SM + η·BC``; ``"convex"`` = ``(1 − η)·BC + η·SM``.
    :param imitate_wrong_tokens: True = the paper's recipe as we read it: the
        injected wrong tokens of backspace demonstrations are expert actions in
        the data reward term. False (the default) [recon]: they are excluded from the data reward
        term ``−E_data[Σ w r]`` (and from BC, always); the transition
        ``wrong token → backspace`` stays expert and the r² penalty is unchanged.
    :param normalize: ``"sequence"``: the SM terms are per-sequence discounted
        sums averaged over sequences; ``"token"`` [recon]: divided further by
        the mean number of data actions per sequence, so that the SM terms are
        on MLE's per-token scale (the step size right after the fork matches).
    :param backspace_p: rate of ``wrong token, backspace`` pairs inserted into
        the demonstrations (METHODS.md §1, "Backspace demonstrations").
    :param wrong_tokens: ``"model"`` (the default: wrong tokens sampled from
        the current policy, its own plausible errors -- the paper's largest
        gains came from "ground-truth", i.e. plausible, noise) or ``"uniform"``
        over the ordinary tokens.
    :param buffer_size: model-generated episodes kept (oldest dropped).
    :param refresh_every: steps between rollouts that refresh the buffer.
    :param rollout_batch_size: episodes generated per refresh.
    :param model_batch_ratio: model episodes per data sequence in a step
        (1.0 = IQ-Learn's 50/50).
    :param rollout_temperature: sampling temperature of the rollouts.
    :raises ValueError: naming the bad field and value.
    """

    alpha: float = 100.0
    gamma: float = 0.998
    eta: float = 0.001
    divergence: Literal["chi2_mixture", "kl", "js"] = "chi2_mixture"
    alpha_model: Optional[float] = None
    mix: Literal["add", "convex"] = "add"
    imitate_wrong_tokens: bool = False
    normalize: Literal["sequence", "token"] = "sequence"
    # --- the online learner (SequenceMatchLearner); the loss ignores these ---
    backspace_p: float = 0.05
    wrong_tokens: Literal["uniform", "model"] = "model"
    buffer_size: int = 1024
    refresh_every: int = 10
    rollout_batch_size: int = 128
    model_batch_ratio: float = 1.0
    rollout_temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"SequenceMatchConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"SequenceMatchConfig.gamma must be in (0, 1), got {self.gamma!r}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"SequenceMatchConfig.eta must be a finite number >= 0, got {self.eta!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(
                f"SequenceMatchConfig.divergence must be one of {DIVERGENCES}, got {self.divergence!r}"
            )
        if not 0.0 <= self.backspace_p < 1.0:
            raise ValueError(f"SequenceMatchConfig.backspace_p must be in [0, 1), got {self.backspace_p!r}")
        if self.wrong_tokens not in ("uniform", "model"):
            raise ValueError(
                f"SequenceMatchConfig.wrong_tokens must be 'uniform' or 'model', got {self.wrong_tokens!r}")
        for name in ("buffer_size", "refresh_every", "rollout_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceMatchConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.alpha_model is not None and not (math.isfinite(self.alpha_model) and self.alpha_model > 0):
            raise ValueError(f"SequenceMatchConfig.alpha_model must be None or a finite number > 0, got "
                             f"{self.alpha_model!r}")
        if self.mix not in ("add", "convex"):
            raise ValueError(f"SequenceMatchConfig.mix must be 'add' or 'convex', got {self.mix!r}")
        if self.mix == "convex" and not self.eta <= 1:
            raise ValueError(f"SequenceMatchConfig.eta must be in [0, 1] with mix='convex', got {self.eta!r}")
        if self.normalize not in ("sequence", "token"):
            raise ValueError(f"SequenceMatchConfig.normalize must be 'sequence' or 'token', got {self.normalize!r}")
        if not self.model_batch_ratio > 0 or not self.rollout_temperature > 0:
            raise ValueError(
                f"SequenceMatchConfig.model_batch_ratio and rollout_temperature must be > 0, got "
                f"{self.model_batch_ratio!r}, {self.rollout_temperature!r}"
            )


# ----------------------------------------------------------------------------
# φ: the concave function of the implicit reward, one per divergence


def phi_chi2(x: torch.Tensor, alpha: float) -> torch.Tensor:
    """Pearson χ² φ: ``x - x²/(4α)`` (IQ-Learn, Garg et al. 2021, χ² choice [paper]).

    :param x: implicit rewards (nats), any shape, float.
    :return: same shape and dtype.
    """
    return x - x.square() / (4 * alpha)


def phi_kl(x: torch.Tensor) -> torch.Tensor:
    """KL φ: ``-exp(-(x + 1))`` = ``-f*(-x)`` with ``f(u) = u log u`` (f-GAN Table 2) [recon].

    Overflows to ``-inf`` for ``x`` below about -89 in float32.

    :param x: implicit rewards (nats), any shape, float.
    :return: same shape and dtype.
    """
    return -torch.exp(-(x + 1))


def phi_js(x: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon φ: ``log 2 + log σ(x)`` [recon].

    Equals f-GAN's JS ``-f*(-y) = log(2 - exp(-y))`` at ``y = softplus(x) - log 2``
    (f-GAN's JS output activation), so it is finite for every real ``x``.

    :param x: implicit rewards (nats), any shape, float.
    :return: same shape and dtype.
    """
    return math.log(2.0) + F.logsigmoid(x)


def phi(x: torch.Tensor, cfg: SequenceMatchConfig) -> torch.Tensor:
    """The φ of ``cfg.divergence`` applied elementwise to ``x`` (same shape and dtype)."""
    if cfg.divergence == "chi2_mixture":
        return phi_chi2(x, cfg.alpha)
    if cfg.divergence == "kl":
        return phi_kl(x)
    return phi_js(x)


# ----------------------------------------------------------------------------
# Soft values, implicit rewards, discount weights, absorbing tail


def soft_values(logits: torch.Tensor) -> torch.Tensor:
    """Value function ``V(s) = logsumexp_a l(s, a)`` of every state [paper].

    :param logits: FloatTensor[B, T, V] (any float dtype), soft Q-values.
    :return: FloatTensor[B, T] in float32 (nats).
    """
    return torch.logsumexp(logits.float(), dim=-1)


def discount_weights(batch: TrajectoryBatch, gamma: float) -> torch.Tensor:
    """Per-position weights ``w_i = γ^t`` with ``t`` the action's index in its episode.

    :return: FloatTensor[B, T] (float32): ``γ^t`` at action positions (``t = 0``
        for the first action), 0 elsewhere.
    """
    t = batch.is_action.long().cumsum(1) - 1
    w = torch.pow(torch.tensor(gamma, dtype=torch.float32, device=t.device), t.clamp(min=0).float())
    return torch.where(batch.is_action, w, torch.zeros_like(w))


def _shift_right(x: torch.Tensor) -> torch.Tensor:
    """``y[:, i] = x[:, i-1]``, ``y[:, 0] = 0`` for a [B, T] tensor."""
    return torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)


def soft_q_of_actions(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """Soft Q-value ``Q(u_i, a_i) = logits[:, i-1, tokens[:, i]]`` of every action taken.

    :param logits: FloatTensor[B, T, V].
    :return: FloatTensor[B, T] (float32); 0 where ``action_mask`` is False.
    """
    q_next = logits[:, :-1].gather(-1, batch.tokens[:, 1:, None]).squeeze(-1).float()
    q = torch.cat([torch.zeros_like(q_next[:, :1]), q_next], dim=1)  # q[:, i] = logits[:, i-1, tokens[:, i]]
    return torch.where(batch.is_action, q, torch.zeros_like(q))


def implicit_rewards(
    logits: torch.Tensor,
    batch: TrajectoryBatch,
    gamma: float,
    values: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Implicit rewards ``r_i = Q(u_i, a_i) - γ V(u_{i+1})`` of every action [paper].

    ``V(u_{i+1}) = logsumexp(logits[:, i])``: after a backspace that is the
    value of the shorter prefix, because the policy's output at a backspace
    position is that state's logits. After ``eos`` it is ``V_⊥``, the
    absorbing state's value (module docstring) [recon].

    :param logits: FloatTensor[B, T, V], soft Q-values along ``batch``.
    :param batch: the trajectories ``logits`` were computed on.
    :param gamma: discount γ.
    :param values: optional precomputed :func:`soft_values` of ``logits``.
    :return: ``(r, mask)``: FloatTensor[B, T] (float32, nats), 0 where
        ``mask`` is False; ``mask = batch.is_action``.
    :raises ValueError: if ``logits`` is not [B, T, V] matching ``batch.tokens``.
    """
    _check_logits(logits, batch)
    v = soft_values(logits) if values is None else values
    r = soft_q_of_actions(logits, batch) - gamma * v
    return torch.where(batch.is_action, r, torch.zeros_like(r)), batch.is_action


def absorbing_tail(per_step: torch.Tensor, num_steps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Discounted sum of a constant per-step term over the absorbing state's infinite tail.

    ``Σ_{i ≥ N} γ^i f = γ^N / (1 - γ) · f`` [recon; the closed form of LS-IQ's
    absorbing-state treatment, Al-Hafez et al. 2023].

    :param per_step: FloatTensor[B], the term ``f`` the absorbing state
        contributes at every step.
    :param num_steps: LongTensor[B], ``N``: the index of the first absorbing
        step (the number of actions of the episode, ``eos`` included).
    :param gamma: discount γ in (0, 1).
    :return: FloatTensor[B].
    """
    g = torch.tensor(gamma, dtype=per_step.dtype, device=per_step.device)
    discount = torch.pow(g, num_steps.to(per_step.dtype))
    return discount / (1 - gamma) * per_step


def absorbing_values(
    logits: torch.Tensor, batch: TrajectoryBatch, values: torch.Tensor | None = None
) -> torch.Tensor:
    """``V_⊥`` of every row: ``logsumexp`` of the logits at its last action's index [recon].

    Meaningful for terminated rows only (their last action is ``eos``);
    callers mask the others out.

    :param logits: FloatTensor[B, T, V].
    :param values: optional precomputed :func:`soft_values` of ``logits``.
    :return: FloatTensor[B] (float32, nats).
    """
    v = soft_values(logits) if values is None else values
    return v.gather(1, batch.last_action_index()[:, None]).squeeze(1)


def _check_logits(logits: torch.Tensor, batch: TrajectoryBatch) -> None:
    if logits.dim() != 3 or logits.shape[:2] != batch.tokens.shape or not logits.is_floating_point():
        raise ValueError(
            f"logits must be a float tensor [B, T, V] with [B, T] = {tuple(batch.tokens.shape)}, "
            f"got {logits.dtype} {tuple(logits.shape)}"
        )


# ----------------------------------------------------------------------------
# The loss


def _per_sequence_terms(logits: torch.Tensor, batch: TrajectoryBatch, cfg: SequenceMatchConfig,
                        reward_mask: torch.Tensor | None = None) -> dict:
    """Per-sequence discounted sums of the loss ingredients (FloatTensor[B] unless noted).

    Keys: ``phi`` = Σ w φ(r), ``r`` = Σ w r (both over ``reward_mask``, default
    every action), ``r2`` = Σ w r², ``value`` =
    Σ w (V(u_i) - γ V(u_{i+1})); ``tail_phi``, ``tail_r``, ``tail_r2``,
    ``tail_value``: the same for the absorbing state's tail (0 when truncated);
    ``v0`` = V(s_0); ``ce`` = V(u_i) - Q(u_i, a_i) = -log π(a_i|u_i) per
    position (FloatTensor[B, T], 0 off actions; for BC);
    ``r_mean_sum`` = Σ r (undiscounted, for metrics).
    """
    _check_logits(logits, batch)
    g = cfg.gamma
    v = soft_values(logits)
    q = soft_q_of_actions(logits, batch)
    r, mask = implicit_rewards(logits, batch, g, values=v)
    w = discount_weights(batch, g)
    rmask = mask if reward_mask is None else reward_mask & mask
    v_state = torch.where(mask, _shift_right(v), torch.zeros_like(v))  # V(u_i)
    v_next = torch.where(mask, v, torch.zeros_like(v))  # V(u_{i+1})

    n = batch.num_actions
    done = batch.terminated
    zero = torch.zeros_like(v[:, 0])
    v_abs = absorbing_values(logits, batch, values=v)
    r_abs = (1 - g) * v_abs  # self-loop implicit reward r_⊥ = V_⊥ - γ V_⊥
    first = batch.first_action_index()
    return {
        "phi": (w * torch.where(rmask, phi(r, cfg), torch.zeros_like(r))).sum(1),
        "r": (w * torch.where(rmask, r, torch.zeros_like(r))).sum(1),
        "r2": (w * r.square()).sum(1),
        "value": (w * (v_state - g * v_next)).sum(1),
        "tail_phi": torch.where(done, absorbing_tail(phi(r_abs, cfg), n, g), zero),
        "tail_r": torch.where(done, absorbing_tail(r_abs, n, g), zero),
        "tail_r2": torch.where(done, absorbing_tail(r_abs.square(), n, g), zero),
        "tail_value": torch.where(done, absorbing_tail((1 - g) * v_abs, n, g), zero),
        "v0": v.gather(1, (first - 1)[:, None]).squeeze(1),
        "ce": torch.where(mask, v_state - q, torch.zeros_like(q)),
        "r_mean_sum": r.sum(1),
    }


def sequencematch_loss(
    logits_data: torch.Tensor,
    data: TrajectoryBatch,
    logits_model: torch.Tensor,
    model: TrajectoryBatch,
    cfg: SequenceMatchConfig,
    bc_mask: torch.Tensor | None = None,
    reward_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """SequenceMatch loss on a data batch and a model-sample batch (module docstring).

    For ``divergence="chi2_mixture"`` (METHODS.md §1; exact equation [recon])::

        L = - E_data[Σ w r] + 1/(4α) (E_data[Σ w r²] + E_model[Σ w r²])
            + E_{data∪model}[Σ w (V(u_i) - γ V(u_{i+1}))] + terminal + η · BC

    and for ``"kl"``/``"js"``: ``L = -E_data[Σ w φ(r)] + value + terminal + η·BC``.
    ``terminal`` holds the absorbing state's tails of the same terms [recon].
    Minimise ``L`` with respect to the policy parameters (gradients flow
    through both logits tensors; model samples need no gradient of their
    sampling).

    :param logits_data: FloatTensor[B_d, T_d, V], policy output on ``data``.
    :param data: demonstrations (possibly backspace-augmented).
    :param logits_model: FloatTensor[B_m, T_m, V], policy output on ``model``.
    :param model: trajectories sampled from the policy (possibly stale, from
        a buffer: IQ-Learn's identity makes the value term valid for any
        occupancy).
    :param cfg: hyperparameters.
    :param bc_mask: optional BoolTensor[B_d, T_d], the data actions the BC
        term imitates (default: all of ``data.is_action``); e.g. exclude
        the injected wrong tokens of backspace demonstrations with
        ``data.is_action & ~agents.common.trajectory.wrong_token_mask(data)``. The
        SequenceMatch terms use every data action, except:
    :param reward_mask: optional BoolTensor[B_d, T_d], the data actions of the
        data reward term ``−E_data[Σ w r]`` (default: every data action);
        ``cfg.imitate_wrong_tokens=False`` passes ``bc_mask`` here [recon].
        The r², value and terminal terms always use every action.
    :return: ``(loss, metrics)``: a scalar float32 tensor (nats) and floats
        ``loss/reward_data``, ``loss/chi2_penalty``, ``loss/value``,
        ``loss/terminal``, ``loss/bc``, ``loss/sm`` (= reward_data +
        chi2_penalty + value + terminal, divided by the mean number of data
        actions when ``cfg.normalize="token"``), ``loss/total`` (= sm + η·bc,
        or (1 − η)·bc + η·sm with ``cfg.mix="convex"``),
        ``reward/data_mean``, ``reward/model_mean`` (mean implicit reward per
        action, nats) and ``value/v0`` (mean V(s_0) on data).
    :raises ValueError: if a logits tensor does not match its batch, the
        two logits tensors have different vocabulary sizes, or ``bc_mask`` is
        not a BoolTensor of ``data``'s shape inside ``data.is_action``.
    """
    if logits_data.shape[-1:] != logits_model.shape[-1:]:
        raise ValueError(
            f"logits_data and logits_model must share the vocabulary size, "
            f"got {logits_data.shape[-1]} and {logits_model.shape[-1]}"
        )
    if bc_mask is None:
        bc_mask = data.is_action
    bad_shape = bc_mask.shape != data.is_action.shape or bc_mask.dtype != torch.bool
    if bad_shape or (bc_mask & ~data.is_action).any():
        raise ValueError(
            f"bc_mask must be a BoolTensor of shape {tuple(data.is_action.shape)} that is True only "
            f"at data actions, got {bc_mask.dtype} {tuple(bc_mask.shape)}"
        )
    d = _per_sequence_terms(logits_data, data, cfg, reward_mask)
    m = _per_sequence_terms(logits_model, model, cfg)
    inv4a = 1.0 / (4 * cfg.alpha)
    inv4a_model = 1.0 / (4 * (cfg.alpha if cfg.alpha_model is None else cfg.alpha_model))

    if cfg.divergence == "chi2_mixture":
        reward_data = -d["r"].mean()
        chi2_penalty = inv4a * d["r2"].mean() + inv4a_model * m["r2"].mean()
        terminal = -d["tail_r"].mean() + inv4a * d["tail_r2"].mean() + inv4a_model * m["tail_r2"].mean()
    else:
        reward_data = -d["phi"].mean()
        chi2_penalty = torch.zeros((), device=reward_data.device)
        terminal = -d["tail_phi"].mean()
    value = torch.cat([d["value"], m["value"]]).mean()
    terminal = terminal + torch.cat([d["tail_value"], m["tail_value"]]).mean()
    bc = torch.where(bc_mask, d["ce"], torch.zeros_like(d["ce"])).sum() / bc_mask.sum().clamp(min=1)

    sm = reward_data + chi2_penalty + value + terminal
    if cfg.normalize == "token":  # per-sequence sums -> MLE's per-token scale [recon]
        sm = sm / data.num_actions.float().mean()
    loss = (1 - cfg.eta) * bc + cfg.eta * sm if cfg.mix == "convex" else sm + cfg.eta * bc

    metrics = {
        "loss/reward_data": reward_data.item(),
        "loss/chi2_penalty": chi2_penalty.item(),
        "loss/value": value.item(),
        "loss/terminal": terminal.item(),
        "loss/bc": bc.item(),
        "loss/sm": sm.item(),
        "loss/total": loss.item(),
        "reward/data_mean": (d["r_mean_sum"].sum() / data.num_actions.sum()).item(),
        "reward/model_mean": (m["r_mean_sum"].sum() / model.num_actions.sum()).item(),
        "value/v0": d["v0"].mean().item(),
    }
    return loss, metrics


# ----------------------------------------------------------------------------
# The online learner: demonstrations with backspaces + a buffer of model samples


@register_learner
class SequenceMatchLearner:
    """SequenceMatch trained online through the vector env (``train.py --agent sequencematch``).

    Every step uses a data batch (demonstrations with their prompts, augmented
    with ``wrong token, backspace`` pairs at rate ``cfg.backspace_p``) and a
    model batch drawn uniformly from a buffer of episodes the policy generated
    (with backspace) through :class:`~seqenv.vector_env.SeqGenVectorEnv` on
    the training device (:class:`~agents.common.rollout.OnlineSampler`: seeded
    resets, so runs and resumes are reproducible on prompted tasks too).
    Every ``cfg.refresh_every`` steps a rollout of ``cfg.rollout_batch_size``
    episodes is appended and the oldest beyond ``cfg.buffer_size`` dropped
    (METHODS.md §1, "Online samples"; stale samples are allowed in the value
    term by IQ-Learn's identity). Both batches go through ONE forward pass
    (padded to a common width). The BC term imitates the demonstrated actions
    except the injected wrong tokens.

    Warm start (METHODS.md §1 [paper]): ``train.py --init`` an MLE checkpoint.
    The paper gives none of the online learner's numbers (``backspace_p`` to
    ``rollout_temperature`` in :class:`SequenceMatchConfig`) [recon].

    :param ctx: :class:`~agents.common.learner.LearnerContext` (``"noise"``
        stream: augmentation, buffer indices, reset seeds; ``"sample"``: rollouts).
    :param cfg: :class:`SequenceMatchConfig`.
    """

    name = "sequencematch"
    config_class = SequenceMatchConfig
    progress_keys = ("loss/bc", "rollout/validity")

    def __init__(self, ctx: LearnerContext, cfg: SequenceMatchConfig):
        self.ctx, self.model, self.cfg, self.task, self.device = ctx, ctx.model, cfg, ctx.task, ctx.device
        self.noise_gen = ctx.generators["noise"]
        self.model_batch_size = max(1, round(ctx.batch_size * cfg.model_batch_ratio))
        self.sampler = OnlineSampler(ctx.task, cfg.rollout_batch_size, ctx.device, ctx.generators["noise"],
                                     ctx.generators["sample"], temperature=cfg.rollout_temperature)
        self.buffer: list[tuple[list[int], list[int]]] = []  # (prompt, actions)
        self.born: list[int] = []  # step each buffered episode was generated at

    def parameters(self):
        return self.model.parameters()

    def refresh(self, step: int) -> dict:
        """Generate ``rollout_batch_size`` episodes with the current policy into the buffer."""
        res = self.sampler.sample(self.model)
        actions, prompts = res.action_lists(), res.prompts()
        self.buffer.extend(zip(prompts, actions))
        self.born.extend([step] * len(actions))
        del self.buffer[: -self.cfg.buffer_size], self.born[: -self.cfg.buffer_size]
        tok = self.task.tokenizer
        texts = [tok.decode(p) + tok.decode(s) for p, s in zip(prompts, res.sequences())]
        out = {"rollout/backspace_rate": backspace_rate(actions) or 0.0,
               "rollout/mean_length": float(res.lengths.float().mean()),
               "rollout/terminated": float(res.terminated.float().mean())}
        validity = validity_rate(self.task, texts)
        if validity is not None:
            out["rollout/validity"] = validity
        return out

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        metrics: dict = {}
        if step % self.cfg.refresh_every == 0 or not self.buffer:
            metrics.update(self.refresh(step))
        actions = backspace_actions(demos, self.cfg.backspace_p, self.cfg.wrong_tokens, self.ctx)
        idx = torch.randint(len(self.buffer), (self.model_batch_size,), generator=self.noise_gen).tolist()
        prompts, acts = zip(*(self.buffer[i] for i in idx))
        width = max(1 + len(p) + len(a) for p, a in [*zip(demos.prompts, actions), *zip(prompts, acts)])
        data = collate(actions, demos.prompts, device=self.device, width=width, ids=demos.ids)
        sampled = collate(list(acts), list(prompts), device=self.device, width=width, ids=demos.ids)
        logits = self.model(torch.cat([data.tokens, sampled.tokens]))
        B = data.tokens.shape[0]
        bc_mask = data.is_action & ~wrong_token_mask(data)
        reward_mask = None if self.cfg.imitate_wrong_tokens else bc_mask
        loss, m = sequencematch_loss(logits[:B], data, logits[B:], sampled, self.cfg, bc_mask=bc_mask,
                                     reward_mask=reward_mask)
        metrics.update(m)
        metrics["buffer/age"] = step - sum(self.born[i] for i in idx) / len(idx)
        metrics["buffer/size"] = len(self.buffer)
        metrics["train/tokens"] = int(data.is_action.sum() + sampled.is_action.sum())
        return loss, metrics

    def state_dict(self) -> dict:
        """The buffer (plain lists), so that a resumed run samples the same model batches."""
        return {"buffer_prompts": [p for p, _ in self.buffer], "buffer_actions": [a for _, a in self.buffer],
                "born": list(self.born)}

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.buffer = list(zip(state["buffer_prompts"], state["buffer_actions"]))
            self.born = list(state["born"])
