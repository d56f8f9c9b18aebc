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

Where the gradient goes (issue 26) [derivation; measurements below]. For
terminated episodes, ``cfg.estimator="trajectory"``, wrong tokens not imitated
(``R`` = the data actions of the reward term) and start states that differ
between the two halves (a prompted task: the data batch's prompts vs the
buffer's), the identity above generalises to::

    reward_data + tail_reward + value + tail_value
        = E_data[Σ_{i∈R} w_i (−log π(a_i|u_i))]                  discounted NLL of the imitated actions
        + E_data[Σ_{i wrong} w_i (V(u_i) − γ V(u_i + wrong))]    value routed around the wrong tokens
        + ½ (E_model[V(s_0)] − E_data[V(s_0)])                  start-state values of the two halves

The last two terms move only the logit *level* (``V = logsumexp l``), to
which the policy is invariant; the per-term diagnostics
(:func:`gradient_diagnostics`, ``diag/`` scalars) show the large reward, value
and tail terms (norms ~ tokens × MLE's) cancelling down to this sum. With
``model_samples="fresh"`` the model half starts from the data half's prompts
and the start-state term is exactly 0.

The level is not free for the *gradient*, though: ``∂V(u)/∂l = π(·|u)``, not
the constant direction the policy is invariant to, so descending ``+V(u)``
lowers the likely logits and flattens ``π(·|u)``. Measured on base-10
``arithmetic`` (``benchmarks/results/sequencematch_gradients.md``; 4 batches
of 64 at the fork from a 1000-step MLE base, defaults): gradient norms
(cosine with MLE + backspace) imitated NLL 6.41 (+1.00), **routing 7.70
(−0.48)**, start values 1.99 (+0.06), χ² data 2.17 (+0.09), χ² model 2.03
(+0.05), total 10.2 (+0.37). The routing term lowers ``V`` at the parent state
of every injected wrong token -- the correct-prefix states MLE sharpens -- and
is the largest single part of the gradient. Over 400 steps (lr 2e-3, seed 0)
continued MLE goes from 0.098 to 0.252 exact answers, MLE + backspace 0.219,
SequenceMatch 0.109 (held-out NLL 0.886, worse than the base's 0.820; policy
entropy 0.84 → 0.93 nats), ``model_samples="fresh"`` 0.105 (NLL 1.115: its
χ² on model samples reaches gradient norm 60 at cosine −0.86 by step 400),
α = 1000 0.078, ``wrong_token_value="cancel"`` (no routing) 0.137 (NLL
0.829; cosine 0.83-0.99 throughout). Seed 1: MLE 0.078 → 0.273, MLE +
backspace 0.092, SequenceMatch 0.082, no routing 0.072. None of the options is the default:
none reached continued MLE (one or two seeds for the candidates).
Through the experiment runner (``benchmarks/experiments/sequencematch_arithmetic10.toml``, 5 seeds,
``benchmarks/results/sequencematch_arithmetic10_analysis.md``): these defaults end below continued MLE
beyond the paired interval (validity −0.105 [−0.199, −0.010], held-out NLL +0.210 [+0.137, +0.283]) while
still deleting 0.59 of injected wrong tokens; the routing term cancelled together with α = 1000 brings the
total gradient to cosine 0.86-0.96 with MLE + backspace at every logged step and is not better (−0.095
[−0.204, +0.014]): the per-batch gradient direction does not explain the gap; the policy entropy at data
states rises in the first 100 steps on every seed (0.85 → 1.06-1.16 nats).

Trajectory layout (docs/internals.md): ``tokens[b] = [bos, prompt...,
a_1..a_n, pad...]``; ``logits[:, i]`` are the logits of the state reached
after ``tokens[:, :i+1]``. An action at index ``i`` is taken in the state
with logits ``[:, i-1]`` and leads to the state with logits ``[:, i]``.
"""

from __future__ import annotations

import functools
import math
import operator
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F

from seqenv.vector_env import SeqGenVectorEnv

from .common.cli import check_number
from .common.demos import Demos
from .common.learner import LearnerContext, register_learner
from .common.metrics import backspace_rate, validity_rate
from .common.rollout import OnlineSampler
from .common.trajectory import TrajectoryBatch, collate, wrong_token_mask
from .mle import backspace_actions, mle_loss

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
    :param estimator: how the loss weighs transitions. ``"trajectory"`` (the
        default): per-sequence discounted sums ``Σ γ^i (·)`` with the absorbing
        state's closed-form tail ``γ^N/(1 − γ)`` (module docstring).
        ``"transition"`` [recon: IQ-Learn's online estimator, uniform
        transition sampling from the replay; absorbing state as in LS-IQ,
        Al-Hafez et al. ICLR 2023, §4.2: the absorbing self-loop is one more
        transition of the sample]: every term is a mean over transitions with
        weight 1 (no ``γ^i``, no ``1/(1 − γ)`` tail); a terminated episode
        contributes its actions plus one self-loop transition ``s_⊥ → s_⊥``
        with reward ``(1 − γ) V_⊥`` and value difference ``(1 − γ) V_⊥``.
    :param model_samples: where the model half of the batch comes from.
        ``"buffer"`` (the default): drawn uniformly from the buffer of past
        rollouts (they lag the policy by up to ``buffer_size /
        rollout_batch_size · refresh_every`` steps). ``"fresh"`` [recon, after
        IQ-Learn's ``regularize``, which samples the policy's action afresh
        at the batch's states]: a new rollout of the current policy every
        step, on the data batch's prompts (an unconditional task: from
        ``bos``), so the value terms of the two halves start from the same
        states; the buffer is not used.
    :param bc_warmup_steps: the paper's warm start [paper: "we first train with
        BC, then with a convex combination"; k is recon]: for the first ``k``
        optimiser steps of the run the loss is the BC term alone (MLE +
        backspace on the same augmented batch, no model samples), then the
        ``mix`` combination.
    :param wrong_token_value: what the value term does with the injected
        wrong tokens left out of the data reward term. ``"route"`` (the
        default): they stay in the value term, whose sum with the reward
        terms then holds ``E_data[Σ_{i wrong} w_i (V(u_i) − γ V(u_{i+1}))]``
        (the routing term of the module docstring). ``"cancel"`` [recon,
        issue 26]: ``reward_wrong`` subtracts exactly that, so the telescoped
        loss is the imitated NLL + start values + χ² (the wrong-token
        transitions still enter the χ² penalty, and ``wrong → backspace``
        stays imitated).
    :param diagnostics_every: on the learner's first SequenceMatch step (the
        fork) and every this many steps after (at steps ``s`` with
        ``(s + 1) % diagnostics_every == 0``) differentiate each loss term
        separately and log ``diag/grad_norm/<term>``, ``diag/cos_mle/<term>``
        (cosine with the MLE + backspace gradient of the same batch),
        the logit scale, ``|r|``, the policy entropy and the buffer's age
        (:func:`gradient_diagnostics`). One extra backward pass per term on
        those steps; 0 = off. Single-process runs only (skipped under
        ``torchrun``).
    :raises ValueError: naming the bad field and value.
    """

    alpha: float = 100.0
    gamma: float = 0.998
    eta: float = 0.001
    divergence: Literal["chi2_mixture", "kl", "js"] = "chi2_mixture"
    alpha_model: float | None = None
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
    estimator: Literal["trajectory", "transition"] = "trajectory"
    model_samples: Literal["buffer", "fresh"] = "buffer"
    bc_warmup_steps: int = 0
    diagnostics_every: int = 100
    wrong_token_value: Literal["route", "cancel"] = "route"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"SequenceMatchConfig.alpha must be a finite number > 0, got {self.alpha!r}")
        if not 0.0 < self.gamma < 1.0:
            raise ValueError(f"SequenceMatchConfig.gamma must be in (0, 1), got {self.gamma!r}")
        if not (math.isfinite(self.eta) and self.eta >= 0):
            raise ValueError(f"SequenceMatchConfig.eta must be a finite number >= 0, got {self.eta!r}")
        if self.divergence not in DIVERGENCES:
            raise ValueError(f"SequenceMatchConfig.divergence must be one of {DIVERGENCES}, got {self.divergence!r}")
        if not 0.0 <= self.backspace_p < 1.0:
            raise ValueError(f"SequenceMatchConfig.backspace_p must be in [0, 1), got {self.backspace_p!r}")
        if self.wrong_tokens not in ("uniform", "model"):
            raise ValueError(
                f"SequenceMatchConfig.wrong_tokens must be 'uniform' or 'model', got {self.wrong_tokens!r}"
            )
        for name in ("buffer_size", "refresh_every", "rollout_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SequenceMatchConfig.{name} must be >= 1, got {getattr(self, name)!r}")
        if self.alpha_model is not None and not (math.isfinite(self.alpha_model) and self.alpha_model > 0):
            raise ValueError(
                f"SequenceMatchConfig.alpha_model must be None or a finite number > 0, got {self.alpha_model!r}"
            )
        if self.mix not in ("add", "convex"):
            raise ValueError(f"SequenceMatchConfig.mix must be 'add' or 'convex', got {self.mix!r}")
        if self.mix == "convex" and not self.eta <= 1:
            raise ValueError(f"SequenceMatchConfig.eta must be in [0, 1] with mix='convex', got {self.eta!r}")
        if self.normalize not in ("sequence", "token"):
            raise ValueError(f"SequenceMatchConfig.normalize must be 'sequence' or 'token', got {self.normalize!r}")
        if self.estimator not in ("trajectory", "transition"):
            raise ValueError(
                f"SequenceMatchConfig.estimator must be 'trajectory' or 'transition', got {self.estimator!r}"
            )
        if self.model_samples not in ("buffer", "fresh"):
            raise ValueError(
                f"SequenceMatchConfig.model_samples must be 'buffer' or 'fresh', got {self.model_samples!r}"
            )
        if self.wrong_token_value not in ("route", "cancel"):
            raise ValueError(
                f"SequenceMatchConfig.wrong_token_value must be 'route' or 'cancel', got {self.wrong_token_value!r}"
            )
        for name in ("bc_warmup_steps", "diagnostics_every"):
            check_number(f"SequenceMatchConfig.{name}", getattr(self, name), ge=0, integer=True)
        if not self.model_batch_ratio > 0 or not self.rollout_temperature > 0:
            raise ValueError(
                f"SequenceMatchConfig.model_batch_ratio and rollout_temperature must be > 0, got "
                f"{self.model_batch_ratio!r}, {self.rollout_temperature!r}"
            )


# ----------------------------------------------------------------------------
# φ: the concave function of the implicit reward, one per divergence


def _total(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """The sum of loss terms, added left to right as the built-in ``sum`` does (typed as a tensor)."""
    return functools.reduce(operator.add, tensors)


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
    batch.check_logits(logits)
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


def absorbing_values(logits: torch.Tensor, batch: TrajectoryBatch, values: torch.Tensor | None = None) -> torch.Tensor:
    """``V_⊥`` of every row: ``logsumexp`` of the logits at its last action's index [recon].

    Meaningful for terminated rows only (their last action is ``eos``);
    callers mask the others out.

    :param logits: FloatTensor[B, T, V].
    :param values: optional precomputed :func:`soft_values` of ``logits``.
    :return: FloatTensor[B] (float32, nats).
    """
    v = soft_values(logits) if values is None else values
    return v.gather(1, batch.last_action_index()[:, None]).squeeze(1)


# ----------------------------------------------------------------------------
# The loss


def _per_sequence_terms(
    logits: torch.Tensor,
    batch: TrajectoryBatch,
    cfg: SequenceMatchConfig,
    reward_mask: torch.Tensor | None = None,
    wrong_mask: torch.Tensor | None = None,
) -> dict:
    """Per-sequence weighted sums of the loss ingredients (FloatTensor[B] unless noted).

    Weights: ``w_i = γ^i`` and the tail factor ``γ^N/(1 − γ)`` for
    ``cfg.estimator="trajectory"``; ``w_i = 1`` and one self-loop transition
    (factor 1) for ``"transition"``.

    Keys: ``phi`` = Σ w φ(r), ``r`` = Σ w r (both over ``reward_mask`` minus
    ``wrong_mask``, default every action), ``phi_wrong``, ``r_wrong``: the same
    over ``reward_mask ∩ wrong_mask`` (0 without ``wrong_mask``); ``r2`` = Σ w r²,
    ``value`` = Σ w (V(u_i) - γ V(u_{i+1})); ``tail_phi``, ``tail_r``,
    ``tail_r2``, ``tail_value``: the same for the absorbing state (0 when
    truncated); ``count``: transitions of the row (actions, plus the self-loop
    when terminated; for the ``"transition"`` means); ``v0`` = V(s_0);
    ``ce`` = V(u_i) - Q(u_i, a_i) = -log π(a_i|u_i) per position
    (FloatTensor[B, T], 0 off actions; for BC); ``r_mean_sum`` = Σ r
    (undiscounted, for metrics).
    """
    batch.check_logits(logits)
    g = cfg.gamma
    v = soft_values(logits)
    q = soft_q_of_actions(logits, batch)
    r, mask = implicit_rewards(logits, batch, g, values=v)
    if cfg.estimator == "trajectory":
        w = discount_weights(batch, g)
    else:
        w = mask.float()
    rmask = mask if reward_mask is None else reward_mask & mask
    wmask = torch.zeros_like(rmask) if wrong_mask is None else rmask & wrong_mask
    rmask = rmask & ~wmask
    v_state = torch.where(mask, _shift_right(v), torch.zeros_like(v))  # V(u_i)
    v_next = torch.where(mask, v, torch.zeros_like(v))  # V(u_{i+1})

    n = batch.num_actions
    done = batch.terminated
    zero = torch.zeros_like(v[:, 0])
    v_abs = absorbing_values(logits, batch, values=v)
    r_abs = (1 - g) * v_abs  # self-loop implicit reward r_⊥ = V_⊥ - γ V_⊥
    if cfg.estimator == "trajectory":

        def tail(f):
            return torch.where(done, absorbing_tail(f, n, g), zero)
    else:

        def tail(f):
            return torch.where(done, f, zero)

    first = batch.first_action_index()
    phi_r = phi(r, cfg)
    return {
        "phi": (w * torch.where(rmask, phi_r, torch.zeros_like(r))).sum(1),
        "r": (w * torch.where(rmask, r, torch.zeros_like(r))).sum(1),
        "phi_wrong": (w * torch.where(wmask, phi_r, torch.zeros_like(r))).sum(1),
        "r_wrong": (w * torch.where(wmask, r, torch.zeros_like(r))).sum(1),
        "r2": (w * r.square()).sum(1),
        "value": (w * (v_state - g * v_next)).sum(1),
        "tail_phi": tail(phi(r_abs, cfg)),
        "tail_r": tail(r_abs),
        "tail_r2": tail(r_abs.square()),
        "tail_value": tail((1 - g) * v_abs),
        "count": (n + done.long()).float(),
        "v0": v.gather(1, (first - 1)[:, None]).squeeze(1),
        "ce": torch.where(mask, v_state - q, torch.zeros_like(q)),
        "r_mean_sum": r.sum(1),
    }


#: The components of :func:`sequencematch_terms`, in the order the diagnostics log them.
TERMS = (
    "reward_data",
    "reward_wrong",
    "chi2_data",
    "chi2_model",
    "tail_reward",
    "tail_chi2",
    "value",
    "tail_value",
    "bc",
)


def sequencematch_terms(
    logits_data: torch.Tensor,
    data: TrajectoryBatch,
    logits_model: torch.Tensor,
    model: TrajectoryBatch,
    cfg: SequenceMatchConfig,
    bc_mask: torch.Tensor | None = None,
    reward_mask: torch.Tensor | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The SequenceMatch loss split into its terms, each already scaled so that they sum to the loss.

    Keys (:data:`TERMS`; scalar float32 tensors, nats): ``reward_data``
    (``−E_data[Σ w r]`` over the demonstrated actions, wrong tokens excluded;
    ``−E_data[Σ w φ(r)]`` for ``kl``/``js``), ``reward_wrong`` (the same over
    the injected wrong tokens of ``reward_mask``: 0 unless
    ``imitate_wrong_tokens``), ``chi2_data`` / ``chi2_model`` (the r² penalty
    on each half; 0 for ``kl``/``js``), ``tail_reward`` (the absorbing tail of
    the data reward term), ``tail_chi2`` (the tails of both r² penalties),
    ``value`` (``E_{data ∪ model}[Σ w (V(u_i) − γ V(u_{i+1}))]``),
    ``tail_value`` (its absorbing tail) and ``bc`` (η·BC, or (1 − η)·BC with
    ``mix="convex"``). The SequenceMatch terms carry the ``normalize="token"``
    factor and, with ``mix="convex"``, the factor η. The wrong tokens are the
    data actions outside ``bc_mask`` (default: none).

    ``E`` is the mean over sequences of the per-sequence sums for
    ``cfg.estimator="trajectory"``, and the total over the batch divided by
    its number of transitions (self-loops included) for ``"transition"``.

    Arguments, errors and the metrics: as :func:`sequencematch_loss`.
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
    d = _per_sequence_terms(logits_data, data, cfg, reward_mask, wrong_mask=data.is_action & ~bc_mask)
    m = _per_sequence_terms(logits_model, model, cfg)
    inv4a = 1.0 / (4 * cfg.alpha)
    inv4a_model = 1.0 / (4 * (cfg.alpha if cfg.alpha_model is None else cfg.alpha_model))
    if cfg.estimator == "trajectory":

        def e_d(x: torch.Tensor) -> torch.Tensor:
            return x.mean()

        def e_m(x: torch.Tensor) -> torch.Tensor:
            return x.mean()

        def e_dm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, y]).mean()
    else:  # uniform over transitions
        n_d, n_m = d["count"].sum().clamp(min=1), m["count"].sum().clamp(min=1)

        def e_d(x: torch.Tensor) -> torch.Tensor:
            return x.sum() / n_d

        def e_m(x: torch.Tensor) -> torch.Tensor:
            return x.sum() / n_m

        def e_dm(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (x.sum() + y.sum()) / (n_d + n_m)

    zero = torch.zeros((), device=logits_data.device)
    if cfg.divergence == "chi2_mixture":
        terms = {
            "reward_data": -e_d(d["r"]),
            "reward_wrong": -e_d(d["r_wrong"]),
            "chi2_data": inv4a * e_d(d["r2"]),
            "chi2_model": inv4a_model * e_m(m["r2"]),
            "tail_reward": -e_d(d["tail_r"]),
            "tail_chi2": inv4a * e_d(d["tail_r2"]) + inv4a_model * e_m(m["tail_r2"]),
        }
    else:
        terms = {
            "reward_data": -e_d(d["phi"]),
            "reward_wrong": -e_d(d["phi_wrong"]),
            "chi2_data": zero,
            "chi2_model": zero,
            "tail_reward": -e_d(d["tail_phi"]),
            "tail_chi2": zero,
        }
    if cfg.wrong_token_value == "cancel":  # minus the routing term: Σ over wrong tokens outside the reward of w Δ
        rm = data.is_action if reward_mask is None else reward_mask & data.is_action
        left_out = data.is_action & ~bc_mask & ~rm
        v_d = soft_values(logits_data)
        w_d = discount_weights(data, cfg.gamma) if cfg.estimator == "trajectory" else data.is_action.float()
        delta = torch.where(left_out, _shift_right(v_d) - cfg.gamma * v_d, torch.zeros_like(v_d))
        terms["reward_wrong"] = terms["reward_wrong"] - e_d((w_d * delta).sum(1))
    terms["value"] = e_dm(d["value"], m["value"])
    terms["tail_value"] = e_dm(d["tail_value"], m["tail_value"])
    bc = torch.where(bc_mask, d["ce"], torch.zeros_like(d["ce"])).sum() / bc_mask.sum().clamp(min=1)

    sm_raw = {k: terms[k] for k in TERMS[:-1]}
    sm_scale = 1.0
    if cfg.normalize == "token":  # per-sequence sums -> MLE's per-token scale [recon]
        sm_scale = 1.0 / data.num_actions.float().mean()
    mix_sm, mix_bc = (cfg.eta, 1 - cfg.eta) if cfg.mix == "convex" else (1.0, cfg.eta)
    out = {k: t * sm_scale * mix_sm for k, t in sm_raw.items()}
    out["bc"] = mix_bc * bc
    sm = _total(sm_raw.values()) * sm_scale

    metrics = {
        "loss/reward_data": (terms["reward_data"] + terms["reward_wrong"]).item(),
        "loss/chi2_penalty": (terms["chi2_data"] + terms["chi2_model"]).item(),
        "loss/value": terms["value"].item(),
        "loss/terminal": (terms["tail_reward"] + terms["tail_chi2"] + terms["tail_value"]).item(),
        "loss/bc": bc.item(),
        "loss/sm": sm.item(),
        "loss/total": _total(out.values()).item(),
        "reward/data_mean": (d["r_mean_sum"].sum() / data.num_actions.sum()).item(),
        "reward/model_mean": (m["r_mean_sum"].sum() / model.num_actions.sum()).item(),
        "value/v0": d["v0"].mean().item(),
    }
    return out, metrics


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
    sampling). ``L`` is the sum of :func:`sequencematch_terms`.

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
    terms, metrics = sequencematch_terms(logits_data, data, logits_model, model, cfg, bc_mask, reward_mask)
    return _total(terms.values()), metrics


def level_decomposition(
    logits_data: torch.Tensor,
    data: TrajectoryBatch,
    logits_model: torch.Tensor,
    model: TrajectoryBatch,
    cfg: SequenceMatchConfig,
    bc_mask: torch.Tensor | None = None,
    reward_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """``reward_data + reward_wrong + tail_reward + value + tail_value`` of :func:`sequencematch_terms`, regrouped.

    The module docstring's identity (``cfg.estimator="trajectory"``,
    ``cfg.divergence="chi2_mixture"``; scalar float32 tensors, nats, before
    the ``normalize``/``mix`` factors):

    * ``imitated_nll``: ``E_data[Σ_{i∈R} w_i (−log π(a_i|u_i))]``, ``R`` =
      the actions of the reward term (``reward_mask``);
    * ``routing``: ``E_data[Σ_{i∉R} w_i (V(u_i) − γ V(u_{i+1}))]`` (the
      data actions left out of the reward term: the injected wrong tokens);
    * ``start_values``: ``½ (E_model[V(s_0)] − E_data[V(s_0)])``;
    * ``truncation``: the rest (``½ E[−γ^N V(s_N)]`` of truncated rows; 0
      when every episode terminated).

    The four sum to the five terms exactly (up to float rounding).

    :raises ValueError: for ``estimator="transition"`` or a divergence other than ``chi2_mixture``.
    """
    if cfg.estimator != "trajectory" or cfg.divergence != "chi2_mixture":
        raise ValueError(
            f"level_decomposition needs estimator='trajectory' and divergence='chi2_mixture', got "
            f"{cfg.estimator!r}, {cfg.divergence!r}"
        )
    terms, _ = sequencematch_terms(logits_data, data, logits_model, model, cfg, bc_mask, reward_mask)
    scale = 1.0 / (
        (1.0 / data.num_actions.float().mean() if cfg.normalize == "token" else 1.0)
        * (cfg.eta if cfg.mix == "convex" else 1.0)
    )
    five = sum(terms[k] for k in ("reward_data", "reward_wrong", "tail_reward", "value", "tail_value")) * scale
    g = cfg.gamma
    w = discount_weights(data, g)
    rmask = data.is_action if reward_mask is None else reward_mask & data.is_action
    v = soft_values(logits_data)
    ce = torch.where(data.is_action, _shift_right(v) - soft_q_of_actions(logits_data, data), torch.zeros_like(v))
    routing_i = _shift_right(v) - g * v
    left_out = data.is_action & ~rmask
    vm = soft_values(logits_model)
    v0_d = v.gather(1, (data.first_action_index() - 1)[:, None]).squeeze(1)
    v0_m = vm.gather(1, (model.first_action_index() - 1)[:, None]).squeeze(1)
    out = {
        "imitated_nll": (w * torch.where(rmask, ce, torch.zeros_like(ce))).sum(1).mean(),
        "routing": (w * torch.where(left_out, routing_i, torch.zeros_like(v))).sum(1).mean(),
        "start_values": 0.5 * (v0_m.mean() - v0_d.mean()),
    }
    if cfg.wrong_token_value == "cancel":
        out["routing"] = out["routing"] * 0
    out["truncation"] = five - _total(out.values())
    return out


def per_term_gradients(terms: dict[str, torch.Tensor], params: list[torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    """The gradient of each term with respect to ``params``, flattened.

    :param terms: name -> scalar tensor (those without a graph get a zero gradient).
    :param params: the parameters (all of the same dtype and device).
    :return: name -> FloatTensor[P] (P = total number of parameters); the
        graph is retained, so the caller can still backpropagate the sum.
    """
    out = {}
    for name, t in terms.items():
        if not t.requires_grad:
            out[name] = torch.cat([torch.zeros_like(p).flatten() for p in params])
            continue
        grads = torch.autograd.grad(t, params, retain_graph=True, allow_unused=True)
        out[name] = torch.cat([(torch.zeros_like(p) if gr is None else gr).flatten() for p, gr in zip(params, grads)])
    return out


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    na, nb = a.norm(), b.norm()
    return float((a @ b) / (na * nb)) if na > 0 and nb > 0 else 0.0


def gradient_diagnostics(
    terms: dict[str, torch.Tensor],
    reference: torch.Tensor,
    params: list[torch.nn.Parameter],
    regrouped: dict[str, torch.Tensor] | None = None,
) -> dict[str, float]:
    """Where the gradient goes: each term's gradient norm and its cosine with a reference gradient.

    :param terms: name -> scalar tensor whose sum is the loss
        (:func:`sequencematch_terms`).
    :param reference: scalar tensor, the reference loss (the learner passes
        the MLE + backspace cross-entropy of the same augmented batch: the
        BC term before its weight).
    :param params: the trained parameters.
    :return: ``diag/grad_norm/<term>`` and ``diag/cos_mle/<term>`` for every
        term, ``total`` (the sum of the terms' gradients = the loss's
        gradient, before clipping) and ``mle_backspace`` (the reference);
        also for each entry of ``regrouped`` (e.g. :func:`level_decomposition`:
        other groupings of the same loss, logged beside the terms, not summed
        into ``total``).
    """
    grads = per_term_gradients({**terms, "mle_backspace": reference}, params)
    ref = grads.pop("mle_backspace")
    grads["total"] = torch.stack(list(grads.values())).sum(0)
    if regrouped:
        grads.update(per_term_gradients(regrouped, params))
    out = {"diag/grad_norm/mle_backspace": float(ref.norm())}
    for name, gr in grads.items():
        out[f"diag/grad_norm/{name}"] = float(gr.norm())
        out[f"diag/cos_mle/{name}"] = _cos(gr, ref)
    return out


def logit_diagnostics(logits: torch.Tensor, batch: TrajectoryBatch, cfg: SequenceMatchConfig, prefix: str) -> dict:
    """Logit scale, implicit-reward scale and policy entropy at a batch's action states (floats, nats).

    :return: ``diag/<prefix>_logit_abs`` (mean |l| over the vocabulary),
        ``diag/<prefix>_reward_abs`` (mean |r|), ``diag/<prefix>_entropy``
        (mean entropy of π(·|u_i)), ``diag/<prefix>_value`` (mean V(u_i)),
        each over the states the batch's actions are taken in.
    """
    with torch.no_grad():
        # the state of the action at index i has its logits at index i - 1
        states = torch.zeros_like(batch.is_action)
        states[:, :-1] = batch.is_action[:, 1:]
        lg = logits[states].float()  # [K, V]
        logp = torch.log_softmax(lg, -1)
        r, mask = implicit_rewards(logits, batch, cfg.gamma)
        return {
            f"diag/{prefix}_logit_abs": float(lg.abs().mean()),
            f"diag/{prefix}_reward_abs": float(r[mask].abs().mean()),
            f"diag/{prefix}_entropy": float(-(logp.exp() * logp).sum(-1).mean()),
            f"diag/{prefix}_value": float(torch.logsumexp(lg, -1).mean()),
        }


# ----------------------------------------------------------------------------
# The online learner: demonstrations with backspaces + a buffer of model samples


class PromptedReset:
    """A vector env whose ``reset`` starts every row on the prompts set in ``.prompts`` (``None``: its own draw).

    Lets :class:`~agents.common.rollout.OnlineSampler` roll out on given
    prompts (``model_samples="fresh"``); every other attribute is the env's.
    """

    def __init__(self, venv):
        self.venv = venv
        self.prompts: list[str] | None = None

    def reset(self, *, seed=None, options=None):
        options = dict(options or {})
        if self.prompts is not None:
            options["prompt"] = list(self.prompts)
        return self.venv.reset(seed=seed, options=options or None)

    def __getattr__(self, name):
        return getattr(self.venv, name)


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
        self.sampler = OnlineSampler(
            ctx.task,
            cfg.rollout_batch_size,
            ctx.device,
            ctx.generators["noise"],
            ctx.generators["sample"],
            temperature=cfg.rollout_temperature,
        )
        self.buffer: list[tuple[list[int], list[int]]] = []  # (prompt, actions)
        self.born: list[int] = []  # step each buffered episode was generated at
        self.fresh_sampler: OnlineSampler | None = None
        if cfg.model_samples == "fresh":
            self.fresh_sampler = OnlineSampler(
                ctx.task,
                self.model_batch_size,
                ctx.device,
                ctx.generators["noise"],
                ctx.generators["sample"],
                temperature=cfg.rollout_temperature,
            )
            # duck-typed: PromptedReset forwards every attribute but ``reset`` to the SeqGenVectorEnv it wraps
            self.fresh_sampler.venv = cast(SeqGenVectorEnv, PromptedReset(self.fresh_sampler.venv))
        # the diagnostics flatten whole gradients: one process only (FSDP shards them, DDP would all-reduce per term)
        self._distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        self._diagnosed = False  # diagnostics also run on this learner's first SequenceMatch step (the fork)
        self.diag_seconds = 0.0  # wall seconds spent in the diagnostics (benchmarks subtract them)

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
        out = {
            "rollout/backspace_rate": backspace_rate(actions) or 0.0,
            "rollout/mean_length": float(res.lengths.float().mean()),
            "rollout/terminated": float(res.terminated.float().mean()),
        }
        validity = validity_rate(self.task, texts)
        if validity is not None:
            out["rollout/validity"] = validity
        return out

    def _fresh_batch(self, demos: Demos) -> tuple[list[list[int]], list[list[int]]]:
        """``model_batch_size`` episodes of the current policy on the data batch's prompts (cycled)."""
        sampler = self.fresh_sampler
        assert sampler is not None, "_fresh_batch needs the fresh sampler (model_samples='fresh')"
        tok = self.task.tokenizer
        if self.task.prompts is not None or self.task.split_prompts is not None:
            texts = [tok.decode(demos.prompts[i % len(demos.prompts)]) for i in range(self.model_batch_size)]
            cast(PromptedReset, sampler.venv).prompts = texts
        res = sampler.sample(self.model)
        return res.prompts(), res.action_lists()

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        metrics: dict = {}
        actions = backspace_actions(demos, self.cfg.backspace_p, self.cfg.wrong_tokens, self.ctx)
        if step < self.cfg.bc_warmup_steps:  # the paper's warm start: BC (= MLE + backspace) alone
            data = collate(actions, demos.prompts, device=self.device, ids=demos.ids)
            bc_mask = data.is_action & ~wrong_token_mask(data)
            loss = mle_loss(self.model(data.tokens), data, bc_mask)
            return loss, {"loss/bc": loss.item(), "loss/total": loss.item(), "train/tokens": int(data.is_action.sum())}
        if self.cfg.model_samples == "fresh":
            prompts, acts = self._fresh_batch(demos)
            age = [0.0]
        else:
            if step % self.cfg.refresh_every == 0 or not self.buffer:
                metrics.update(self.refresh(step))
            idx = torch.randint(len(self.buffer), (self.model_batch_size,), generator=self.noise_gen).tolist()
            prompts, acts = zip(*(self.buffer[i] for i in idx))
            age = [step - self.born[i] for i in idx]
        width = max(1 + len(p) + len(a) for p, a in [*zip(demos.prompts, actions), *zip(prompts, acts)])
        data = collate(actions, demos.prompts, device=self.device, width=width, ids=demos.ids)
        sampled = collate(list(acts), list(prompts), device=self.device, width=width, ids=demos.ids)
        logits = self.model(torch.cat([data.tokens, sampled.tokens]))
        B = data.tokens.shape[0]
        bc_mask = data.is_action & ~wrong_token_mask(data)
        reward_mask = None if self.cfg.imitate_wrong_tokens else bc_mask
        terms, m = sequencematch_terms(
            logits[:B], data, logits[B:], sampled, self.cfg, bc_mask=bc_mask, reward_mask=reward_mask
        )
        loss = _total(terms.values())
        metrics.update(m)
        every = self.cfg.diagnostics_every
        if every and not self._distributed and ((step + 1) % every == 0 or not self._diagnosed):  # first: the fork
            t0 = time.perf_counter()
            params = [p for p in self.model.parameters() if p.requires_grad]
            extra = None
            if self.cfg.estimator == "trajectory" and self.cfg.divergence == "chi2_mixture":
                extra = level_decomposition(logits[:B], data, logits[B:], sampled, self.cfg, bc_mask, reward_mask)
            metrics.update(gradient_diagnostics(terms, mle_loss(logits[:B], data, bc_mask), params, extra))
            metrics.update(logit_diagnostics(logits[:B], data, self.cfg, "data"))
            metrics.update(logit_diagnostics(logits[B:], sampled, self.cfg, "model"))
            metrics["diag/buffer_age_max"] = float(max(age))
            self.diag_seconds += time.perf_counter() - t0
            self._diagnosed = True
        metrics["buffer/age"] = sum(age) / len(age)
        metrics["buffer/size"] = len(self.buffer)
        metrics["train/tokens"] = int(data.is_action.sum() + sampled.is_action.sum())
        return loss, metrics

    def state_dict(self) -> dict:
        """The buffer (plain lists), so that a resumed run samples the same model batches."""
        return {
            "buffer_prompts": [p for p, _ in self.buffer],
            "buffer_actions": [a for _, a in self.buffer],
            "born": list(self.born),
        }

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.buffer = list(zip(state["buffer_prompts"], state["buffer_actions"]))
            self.born = list(state["born"])
