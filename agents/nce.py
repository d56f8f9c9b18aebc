"""NCE critics with a self-adapting noise distribution (METHODS.md §3).

Noise-contrastive estimation (NCE) trains an energy-based model (EBM) by
telling data samples apart from samples of a noise distribution. Here the
noise distribution is a frozen snapshot of the policy, refreshed every K
steps (Xu, "Self-Adapting Noise-Contrastive Estimation for Energy-Based
Models", arXiv 2211.02650). Because the policy is autoregressive, snapshot
samples come from ancestral sampling and their exact log-probabilities from
ancestral scoring (:func:`sequence_log_prob`): no MCMC.

Contents, in the order of METHODS.md §3 (the critic itself,
:class:`~agents.critic.SequenceCritic`, a bidirectional transformer giving a
scalar energy ``E_psi(x)`` per sequence used residually on top of the policy,
``p(x) ∝ p_policy(x) exp(-E_psi(x))``, lives in :mod:`agents.critic` with
its loader :func:`~agents.critic.load_critic`; the noise distribution, a
frozen snapshot of the policy refreshed every K steps, is
:class:`agents.noise.SnapshotNoise`; the held-out evaluation and early
stopping run as :class:`agents.common.callbacks.CriticEvalCallback`):

- :func:`binary_nce_loss` -- the NCE loss with snapshot noise and noise ratio nu.
- :func:`residual_nce_loss` -- the same loss for the residual critic, whose
  model and noise share the same policy snapshot.
- :func:`ranking_nce_loss` -- ranking NCE (Ma & Collins, EMNLP 2018).
- :func:`self_adapting_nce_loss` -- self-adapting NCE for the policy read as
  an EBM, energy ``-log p_theta(x)``.
- :func:`sequence_log_prob` -- exact ``log p(x)`` of an AR policy by ancestral
  scoring.
- :class:`NCEConfig`, :class:`NCELearner` -- ``scripts/train.py --agent
  nce``: the residual critic trained by binary or ranking NCE against noise
  sampled through the vector env from the policy's snapshot, optionally with
  the policy itself trained by self-adapting NCE; :func:`no_backspace_log_prob`
  (exact ``log q`` of those samples).

Batch convention (docs/internals.md): ``tokens: LongTensor[B, T]`` is
``[bos, x_1..x_n, eos, pad...]`` and ``mask: BoolTensor[B, T]`` is True at the
predicted positions ``x_1..x_n, eos``. All log-probabilities and energies are
in nats. The losses work on tensors; only the learner calls models (the
policy, its snapshot, the critic) and the vector env.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F

from seqenv.tokenizers import SpecialIds

from .common.callbacks import CriticEvalCallback
from .common.cli import check_number
from .common.demos import Demos
from .common.distributed import wrap_ddp
from .common.learner import LearnerContext, register_learner
from .common.resampling import effective_sample_size
from .common.rollout import OnlineSampler, generate
from .common.trajectory import token_log_probs
from .critic import CRITIC_SIZE_FIELDS, CriticConfig, SequenceCritic, check_critic_size, critic_batch
from .noise import SnapshotNoise

# ---------------------------------------------------------------------------
# Exact log q by ancestral scoring
# ---------------------------------------------------------------------------


def sequence_log_prob(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Exact log-probability of each sequence under an AR policy (ancestral
    scoring): ``log p(x) = Σ_{k: mask[:, k]} log_softmax(logits[:, k-1])[tokens[:, k]]``.

    :param logits: ``FloatTensor[B, T, V]``; ``logits[:, k]`` is the next-token
        distribution after ``tokens[:, :k+1]`` (a causal policy's output).
    :param tokens: ``LongTensor[B, T]``, ``[bos, x_1..x_n, eos, pad...]``.
    :param mask: ``BoolTensor[B, T]``, True at predicted positions
        (``x_1..x_n, eos``); column 0 must be False (nothing predicts the bos).
    :returns: ``FloatTensor[B]`` in nats (float32 or wider), differentiable
        w.r.t. ``logits``.
    :raises ValueError: on mismatched shapes, wrong dtypes or a True mask at
        column 0.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    if tokens.shape != logits.shape[:2] or tokens.dtype != torch.long:
        raise ValueError(
            f"tokens must be a LongTensor of shape {tuple(logits.shape[:2])}, got {tokens.dtype} "
            f"of shape {tuple(tokens.shape)}"
        )
    if mask.shape != tokens.shape or mask.dtype != torch.bool:
        raise ValueError(
            f"mask must be a BoolTensor of shape {tuple(tokens.shape)}, got {mask.dtype} of shape {tuple(mask.shape)}"
        )
    if mask[:, 0].any():
        raise ValueError("mask[:, 0] must be False: position 0 holds bos, which no logits predict")
    return token_log_probs(logits, tokens, mask).sum(dim=1)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def _check_1d(name: str, x: torch.Tensor) -> None:
    if not torch.is_tensor(x) or x.dim() != 1 or not x.is_floating_point():
        shape = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"{name} must be a 1-D float tensor, got {shape}")


def _expectation(values: torch.Tensor, weights: torch.Tensor | None, name: str) -> torch.Tensor:
    """Mean of ``values`` (Monte Carlo) or ``Σ weights * values`` (exact)."""
    if weights is None:
        return values.mean()
    if weights.shape != values.shape:
        raise ValueError(f"{name} must have shape {tuple(values.shape)}, got {tuple(weights.shape)}")
    total = float(weights.sum())
    if (weights < 0).any() or abs(total - 1.0) > 1e-4:
        raise ValueError(f"{name} must be non-negative and sum to 1, got sum {total:.6f}")
    return (weights.to(values.dtype) * values).sum()


def binary_nce_loss(
    energy_data: torch.Tensor,
    energy_noise: torch.Tensor,
    energy_snapshot_data: torch.Tensor,
    energy_snapshot_noise: torch.Tensor,
    c: torch.Tensor | float,
    nu: float,
    data_weights: torch.Tensor | None = None,
    noise_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary NCE loss with a snapshot noise distribution (METHODS.md §3)::

        h(x) = -E_theta(x) + E_theta_s(x) - c - log nu
        L    = -E_{x~data}[log σ(h(x))] - nu · E_{x~p_theta_s}[log(1 - σ(h(x)))]

    ``σ(h)`` is the posterior probability that ``x`` is data when data and noise
    are mixed 1 : nu; ``E_theta_s = -log p_theta_s + const`` is the energy of
    the noise distribution and ``c`` the learned log-normaliser difference
    (``log Z_theta - log Z_theta_s``). ``log(1 - σ(h)) = logsigmoid(-h)``.

    Source: Gutmann & Hyvärinen, "Noise-contrastive estimation of unnormalized
    statistical models", JMLR 2012 (the objective with noise ratio nu); with the noise a
    frozen snapshot of the model, Xu, arXiv 2211.02650 -- [recon, standard]:
    the formula is METHODS.md's reconstruction.

    Estimator: each expectation is a mean over the samples given (or a weighted
    sum, see ``*_weights``). With ``M = nu·B`` noise samples this equals the
    classical sum form ``-(1/B)[Σ_data log σ(h) + Σ_noise log(1-σ(h))]``; any
    other ``M`` estimates the same objective. The snapshot energies are
    detached (the noise distribution is fixed by definition).

    :param energy_data: ``FloatTensor[B]``, ``E_theta`` on data samples (nats).
    :param energy_noise: ``FloatTensor[M]``, ``E_theta`` on noise samples.
    :param energy_snapshot_data: ``FloatTensor[B]``, ``E_theta_s`` on data samples.
    :param energy_snapshot_noise: ``FloatTensor[M]``, ``E_theta_s`` on noise samples.
    :param c: scalar tensor (learnable) or float, nats.
    :param nu: noise ratio, ``nu > 0``.
    :param data_weights: optional ``FloatTensor[B]`` of probabilities (>= 0,
        sum 1): the data expectation becomes ``Σ w·(...)`` -- for exact
        expectations by enumeration, or importance weights. [recon]
    :param noise_weights: optional ``FloatTensor[M]``, the same for noise.
    :returns: ``(loss, metrics)``: scalar loss tensor (nats) and floats
        ``loss``, ``accuracy`` (fraction of all B + M samples classified
        correctly: data ``h > 0``, noise ``h < 0``), ``accuracy_data``,
        ``accuracy_noise``, ``energy_data``, ``energy_noise`` (mean ``E_theta``).
    :raises ValueError: on non-1-D or mismatched shapes, ``nu <= 0``, empty
        batches, a non-scalar ``c`` or bad weights.
    """
    for name, x in (
        ("energy_data", energy_data),
        ("energy_noise", energy_noise),
        ("energy_snapshot_data", energy_snapshot_data),
        ("energy_snapshot_noise", energy_snapshot_noise),
    ):
        _check_1d(name, x)
    if energy_snapshot_data.shape != energy_data.shape:
        raise ValueError(
            f"energy_snapshot_data shape {tuple(energy_snapshot_data.shape)} must equal "
            f"energy_data shape {tuple(energy_data.shape)}"
        )
    if energy_snapshot_noise.shape != energy_noise.shape:
        raise ValueError(
            f"energy_snapshot_noise shape {tuple(energy_snapshot_noise.shape)} must equal "
            f"energy_noise shape {tuple(energy_noise.shape)}"
        )
    if energy_data.numel() == 0 or energy_noise.numel() == 0:
        raise ValueError(
            f"need at least one data and one noise sample, got {energy_data.numel()} and {energy_noise.numel()}"
        )
    if not nu > 0:
        raise ValueError(f"noise ratio nu must be > 0, got {nu!r}")
    if torch.is_tensor(c) and c.numel() != 1:
        raise ValueError(f"c must be a scalar, got shape {tuple(c.shape)}")

    log_nu = math.log(nu)
    h_data = -energy_data + energy_snapshot_data.detach() - c - log_nu
    h_noise = -energy_noise + energy_snapshot_noise.detach() - c - log_nu
    loss = -_expectation(F.logsigmoid(h_data), data_weights, "data_weights") - nu * _expectation(
        F.logsigmoid(-h_noise), noise_weights, "noise_weights"
    )

    with torch.no_grad():
        correct_data = (h_data > 0).float()
        correct_noise = (h_noise < 0).float()
        metrics = {
            "loss": float(loss),
            "accuracy": float((correct_data.sum() + correct_noise.sum()) / (h_data.numel() + h_noise.numel())),
            "accuracy_data": float(correct_data.mean()),
            "accuracy_noise": float(correct_noise.mean()),
            "energy_data": float(energy_data.mean()),
            "energy_noise": float(energy_noise.mean()),
        }
    return loss, metrics


def residual_nce_loss(
    critic_energy_data: torch.Tensor,
    critic_energy_noise: torch.Tensor,
    c: torch.Tensor | float,
    nu: float,
    data_weights: torch.Tensor | None = None,
    noise_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Binary NCE for the residual critic, noise = the policy snapshot itself.

    The residual model is ``p_theta(x) = p_s(x) exp(-E_psi(x)) / Z_psi`` with
    ``p_s`` the (frozen) policy snapshot, i.e. energy
    ``E_theta(x) = -log p_s(x) + E_psi(x)``; the noise distribution is the
    same ``p_s``, energy ``E_theta_s(x) = -log p_s(x)``. In
    :func:`binary_nce_loss` the policy terms cancel exactly::

        h(x) = -E_theta(x) + E_theta_s(x) - c - log nu
             = (log p_s(x) - E_psi(x)) - log p_s(x) - c - log nu
             = -E_psi(x) - c - log nu

    so neither sample needs ``log p_s``. At the optimum (enough capacity,
    consistent NCE) ``exp(-E_psi(x) - c) = p_data(x) / p_s(x)`` and
    ``c = log Z_psi = log E_{p_s}[exp(-E_psi)]``. With ``c = 0, nu = 1`` this
    is Deng et al.'s classifier loss
    ``-E_data[log σ(-E)] - E_LM[log σ(E)]`` (Residual EBM, ICLR 2020) [paper],
    where ``E`` absorbs the constant.

    [recon] The reduction and the learned ``c`` / noise ratio ``nu`` are ours;
    ``p_s`` must be the same snapshot that drew the noise samples.

    :param critic_energy_data: ``FloatTensor[B]``, ``E_psi`` on data (nats).
    :param critic_energy_noise: ``FloatTensor[M]``, ``E_psi`` on snapshot samples.
    :param c: scalar tensor or float (``SequenceCritic.log_normalizer``).
    :param nu: noise ratio, ``nu > 0``.
    :param data_weights: optional probabilities, see :func:`binary_nce_loss`.
    :param noise_weights: optional probabilities, see :func:`binary_nce_loss`.
    :returns: ``(loss, metrics)`` as :func:`binary_nce_loss`; the energy metrics
        are the critic energies ``E_psi``.
    :raises ValueError: as :func:`binary_nce_loss`.
    """
    _check_1d("critic_energy_data", critic_energy_data)
    _check_1d("critic_energy_noise", critic_energy_noise)
    return binary_nce_loss(
        critic_energy_data,
        critic_energy_noise,
        torch.zeros_like(critic_energy_data),
        torch.zeros_like(critic_energy_noise),
        c,
        nu,
        data_weights,
        noise_weights,
    )


def ranking_nce_loss(
    scores_data: torch.Tensor,
    scores_noise: torch.Tensor,
    log_q_data: torch.Tensor,
    log_q_noise: torch.Tensor,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Ranking NCE: pick the data sample out of ``K + 1`` candidates.

    With ``y_0`` from data and ``y_1..y_K`` from the noise distribution ``q``::

        L = -E[ log softmax_k( s(y_k) - log q(y_k) )[0] ]

    ``s(y) = -E(y)`` is the model's unnormalised log-probability (score). The
    objective is consistent without self-normalisation: no ``c`` is needed
    (Ma & Collins, "Noise Contrastive Estimation and Negative Sampling for
    Conditional Models: Consistency and Statistical Efficiency", EMNLP 2018,
    the ranking objective) [paper]. For the residual critic
    (``s = log p_s - E_psi``, ``q = p_s``) pass ``scores = -E_psi`` and
    ``log_q = 0``, since only ``s - log q`` enters.

    :param scores_data: ``FloatTensor[B]``, ``s(y_0)`` in nats.
    :param scores_noise: ``FloatTensor[B, K]``, ``s(y_k)``, K >= 1.
    :param log_q_data: ``FloatTensor[B]``, ``log q(y_0)`` (exact, by ancestral
        scoring of the snapshot).
    :param log_q_noise: ``FloatTensor[B, K]``, ``log q(y_k)``.
    :returns: ``(loss, metrics)``: scalar loss (nats, mean over B) and floats
        ``loss`` and ``accuracy`` (fraction of rows where the data sample has
        the strictly largest ``s - log q``).
    :raises ValueError: on mismatched shapes or ``K < 1``.
    """
    _check_1d("scores_data", scores_data)
    _check_1d("log_q_data", log_q_data)
    B = scores_data.shape[0]
    if B == 0:
        raise ValueError("need at least one data sample, got B=0")
    if log_q_data.shape != (B,):
        raise ValueError(f"log_q_data must have shape ({B},), got {tuple(log_q_data.shape)}")
    if scores_noise.dim() != 2 or scores_noise.shape[0] != B or scores_noise.shape[1] < 1:
        raise ValueError(f"scores_noise must have shape ({B}, K) with K >= 1, got {tuple(scores_noise.shape)}")
    if log_q_noise.shape != scores_noise.shape:
        raise ValueError(
            f"log_q_noise must have the shape of scores_noise {tuple(scores_noise.shape)}, got {tuple(log_q_noise.shape)}"
        )
    logits = torch.cat(
        [(scores_data - log_q_data)[:, None], scores_noise - log_q_noise], dim=1
    )  # (B, K+1), column 0 is the data sample
    loss = -F.log_softmax(logits, dim=1)[:, 0].mean()
    with torch.no_grad():
        best_noise = logits[:, 1:].max(dim=1).values
        metrics = {"loss": float(loss), "accuracy": float((logits[:, 0] > best_noise).float().mean())}
    return loss, metrics


def self_adapting_nce_loss(
    logp_model_data: torch.Tensor,
    logp_model_noise: torch.Tensor,
    logp_snapshot_data: torch.Tensor,
    logp_snapshot_noise: torch.Tensor,
    c: torch.Tensor | float,
    nu: float,
    data_weights: torch.Tensor | None = None,
    noise_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Self-adapting NCE for the AR policy read as an EBM (Xu, arXiv 2211.02650).

    Energy ``E_theta(x) = -log p_theta(x)`` (exact, :func:`sequence_log_prob`);
    noise = a frozen snapshot ``theta_s`` of the same policy, refreshed every K
    steps (:class:`~agents.noise.SnapshotNoise`), with samples by ancestral sampling and
    exact ``log q = log p_theta_s`` by ancestral scoring. Then
    :func:`binary_nce_loss` reads::

        h(x) = log p_theta(x) - log p_theta_s(x) - c - log nu

    Snapshot log-probabilities are detached. [paper] algorithm; the loss is
    METHODS.md's [recon, standard] form. Since ``p_theta`` is normalised, the
    optimal ``c`` is 0; keeping it learnable is harmless.

    **K = 1 gives half the maximum-likelihood gradient** [paper: claim;
    derivation and conditions recon]. With ``θ_s = θ`` (snapshot values equal
    to the current ones, detached), ``h(x) = -c - log nu =: a`` is a constant.
    Using ``d/dh log σ(h) = 1 - σ(h)`` and ``d/dh log(1 - σ(h)) = -σ(h)``::

        ∇_θ L = -(1 - σ(a)) E_data[∇ log p_θ(x)] + nu σ(a) E_{p_θ}[∇ log p_θ(x)]

    For a normalised model the score has zero mean under its own samples,
    ``E_{p_θ}[∇ log p_θ] = ∇ Σ_x p_θ(x) = 0``, so
    ``∇_θ L = (1 - σ(a)) ∇_θ NLL`` with ``NLL = -E_data[log p_θ]``:

    - ``c = 0, nu = 1``: ``a = 0``, ``σ(a) = 1/2`` -> exactly half the ML gradient;
    - in general the factor is ``1 - σ(-c - log nu) = nu e^c / (1 + nu e^c)``:
      half iff ``c + log nu = 0``; ``nu/(1+nu)`` at ``c = 0``.

    For an unnormalised EBM (``∇ log p̃ = -∇E``) the same algebra gives
    ``(1-σ(a)) E_data[∇E] - nu σ(a) E_{p_θ}[∇E]``, proportional to the ML
    gradient ``E_data[∇E] - E_{p_θ}[∇E]`` iff ``nu σ(a) = 1 - σ(a)``, i.e.
    ``c = 0``; the factor is then ``nu/(1+nu)`` (half at ``nu = 1``). The
    identity holds for exact expectations; with samples the noise term is a
    zero-mean estimate that adds variance.

    :param logp_model_data: ``FloatTensor[B]``, ``log p_theta`` on data (nats).
    :param logp_model_noise: ``FloatTensor[M]``, ``log p_theta`` on snapshot samples.
    :param logp_snapshot_data: ``FloatTensor[B]``, ``log p_theta_s`` on data.
    :param logp_snapshot_noise: ``FloatTensor[M]``, ``log p_theta_s`` on snapshot samples.
    :param c: scalar tensor or float (nats).
    :param nu: noise ratio, ``nu > 0``.
    :param data_weights: optional probabilities, see :func:`binary_nce_loss`.
    :param noise_weights: optional probabilities, see :func:`binary_nce_loss`.
    :returns: ``(loss, metrics)`` as :func:`binary_nce_loss`; ``energy_data``
        and ``energy_noise`` are the mean NLLs ``-log p_theta`` (nats per sequence).
    :raises ValueError: as :func:`binary_nce_loss`.
    """
    for name, x in (
        ("logp_model_data", logp_model_data),
        ("logp_model_noise", logp_model_noise),
        ("logp_snapshot_data", logp_snapshot_data),
        ("logp_snapshot_noise", logp_snapshot_noise),
    ):
        _check_1d(name, x)
    return binary_nce_loss(
        -logp_model_data,
        -logp_model_noise,
        -logp_snapshot_data,
        -logp_snapshot_noise,
        c,
        nu,
        data_weights,
        noise_weights,
    )


# ---------------------------------------------------------------------------
# The learner: scripts/train.py --agent nce
# ---------------------------------------------------------------------------

NCE_LOSSES = ("binary", "ranking")
POLICY_OBJECTIVES = ("none", "self_adapting_nce")


def no_backspace_log_prob(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, ids=None) -> torch.Tensor:
    """Exact ``log q(x)`` of a sequence drawn by ``rollout(..., allow_backspace=False)``.

    The rollout samples each action from the softmax of the policy's logits
    over the env's legal actions minus ``backspace``, i.e. with ``pad``,
    ``bos`` and ``backspace`` removed (docs/internals.md); this scores a
    complete sequence under that same distribution (ancestral scoring,
    :func:`sequence_log_prob` on the masked logits). A truncated row (no
    ``eos``) gets the probability of its tokens only, which is the
    probability of the episode ending that way. [recon] Reading the policy
    without backspace as the noise distribution is ours; it makes ``log q``
    exact.

    :param logits: ``FloatTensor[B, T, V]``, the policy's output on ``tokens``.
    :param tokens: ``LongTensor[B, T]``, ``[bos, x_1..x_n, eos?, pad...]``.
    :param mask: ``BoolTensor[B, T]``, True at ``x_1..x_n`` (and ``eos``).
    :param ids: special ids (anything ``SpecialIds.of`` takes; default the fixed ids).
    :returns: ``FloatTensor[B]`` in nats (float32 or wider), differentiable;
        ``-inf`` if a row contains ``pad``, ``bos`` or ``backspace`` at a
        predicted position.
    :raises ValueError: as :func:`sequence_log_prob`.
    """
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    illegal = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
    sp = SpecialIds.of(ids)
    illegal[[*sp.never_legal, sp.backspace]] = True
    return sequence_log_prob(logits.float().masked_fill(illegal, -math.inf), tokens, mask)


#: the critic's size defaults (``--nce.critic-*``): :class:`~agents.critic.CriticConfig`'s
_CRITIC_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(CriticConfig) if f.name in CRITIC_SIZE_FIELDS
}


@dataclass
class NCEConfig:
    """Hyperparameters of :class:`NCELearner` (the ``nce`` section of
    ``TrainConfig``; flags ``--nce.loss``, ``--nce.nu``, ...).

    :param loss: ``"binary"``: binary NCE with noise ratio ``nu`` and the
        learned log-normaliser ``c`` (:func:`binary_nce_loss`); ``"ranking"``:
        ranking NCE, ``nu`` noise candidates per data sample, no ``c``
        (:func:`ranking_nce_loss`).
    :param nu: noise samples per data sample, an int >= 1: binary NCE's noise
        ratio ν (``M = ν·B`` noise samples per step, the classical sum form) or
        the number of noise candidates of ranking NCE.
    :param refresh_every: K >= 1, steps between refreshes of the noise
        distribution, a frozen snapshot of the policy (:class:`~agents.noise.SnapshotNoise`);
        1 = the current policy. Only matters when the policy is trained.
    :param critic_n_layer: transformer blocks of the :class:`SequenceCritic` (its :class:`CriticConfig`).
    :param critic_n_head: the critic's attention heads (must divide ``critic_n_embd``).
    :param critic_n_embd: the critic's width.
    :param critic_dropout: the critic's dropout probability in [0, 1).
    :param critic_pooling: ``mean`` over the sequence's positions or ``first`` (the bos position).
    :param policy_objective: ``"none"``: the policy is frozen and only the
        critic (and ``c``) learn; ``"self_adapting_nce"``: the policy is
        trained too, by :func:`self_adapting_nce_loss` (energy
        ``-log p_theta``, noise = its own snapshot).
    :param policy_weight: weight of the policy's self-adapting NCE loss.
    :param ce_weight: weight of the cross-entropy (nats per data token) mixed
        into the policy loss (MLE regulariser; 0 = none).
    :param noise_pool: 0: fresh noise samples every step; N >= 1: a fixed set
        of N snapshot samples drawn once (on a paired task, one per training
        prompt, cycling the train split's prompts) and minibatches of ``nu·B``
        drawn from it with replacement -- the residual-EBM recipe's "fixed set
        of generator samples" [paper: Deng et al.'s demo]. With the policy
        trained, the set is redrawn at every snapshot refresh.
    :param init_from_policy: initialise the critic's trunk (embeddings,
        blocks, final LayerNorm) from the policy's
        (:meth:`SequenceCritic.init_from_policy`); the critic then takes the
        policy's ``n_layer``, ``n_head`` and ``n_embd`` (the ``critic_*`` size
        fields are ignored). Deng et al. initialise from a pretrained LM.
    :param eval_every: steps between held-out evaluations of the critic
        (:meth:`NCELearner.evaluate_critic`: the task's ``valid`` split
        against as many fresh policy samples, logged as
        ``eval/critic_accuracy``, ``eval/critic_loss``, ``eval/critic_auc``,
        ``eval/critic_weight_ess``); 0 = never.
    :param eval_size: held-out real sequences (and as many samples) per evaluation.
    :param patience: early stopping: stop the run after this many held-out
        evaluations without a lower ``critic_loss`` and keep the best critic
        (also restored at the last step); 0 = off.
    :param keep_best: end the run with the critic of the lowest held-out
        ``critic_loss`` (restored at the last step; needs ``eval_every``),
        without stopping early. On by default: at the demo's batch size the
        held-out loss turns up after 250-1000 steps while the training loss
        keeps falling (``benchmarks/results/critic_rerank_gpu.md``), and a
        critic's energies are used as calibrated log-weights by reranking
        and the PPO reward. Implied by ``patience``. Ignored while the policy
        is trained (``policy_objective``): an earlier critic would not match
        the final policy.
    :raises ValueError: naming the bad field and value.
    """

    loss: Literal["binary", "ranking"] = "binary"
    nu: int = 1
    refresh_every: int = 1
    critic_n_layer: int = _CRITIC_DEFAULTS["n_layer"]
    critic_n_head: int = _CRITIC_DEFAULTS["n_head"]
    critic_n_embd: int = _CRITIC_DEFAULTS["n_embd"]
    critic_dropout: float = _CRITIC_DEFAULTS["dropout"]
    critic_pooling: Literal["mean", "first"] = _CRITIC_DEFAULTS["pooling"]
    policy_objective: Literal["none", "self_adapting_nce"] = "none"
    policy_weight: float = 1.0
    ce_weight: float = 0.0
    noise_pool: int = 0
    init_from_policy: bool = False
    eval_every: int = 50
    eval_size: int = 512
    patience: int = 0
    keep_best: bool = True

    def __post_init__(self):
        if self.loss not in NCE_LOSSES:
            raise ValueError(f"NCEConfig.loss must be one of {NCE_LOSSES}, got {self.loss!r}")
        if self.policy_objective not in POLICY_OBJECTIVES:
            raise ValueError(
                f"NCEConfig.policy_objective must be one of {POLICY_OBJECTIVES}, got {self.policy_objective!r}"
            )
        for name in ("nu", "refresh_every", "eval_size"):
            check_number(f"NCEConfig.{name}", getattr(self, name), ge=1, integer=True)
        for name in ("noise_pool", "eval_every", "patience"):
            check_number(f"NCEConfig.{name}", getattr(self, name), ge=0, integer=True)
        if self.patience and not self.eval_every:
            raise ValueError(
                f"NCEConfig.patience={self.patience} needs eval_every >= 1 (early stopping reads the "
                "held-out evaluation), got eval_every=0"
            )
        for name in ("policy_weight", "ce_weight"):
            check_number(f"NCEConfig.{name}", getattr(self, name), ge=0)
        check_critic_size("NCEConfig.critic_", **{name: getattr(self, f"critic_{name}") for name in CRITIC_SIZE_FIELDS})

    def critic_config(self, vocab_size: int, block_size: int) -> CriticConfig:
        """The :class:`CriticConfig` of these fields for a task's vocabulary and length."""
        sizes = {name: getattr(self, f"critic_{name}") for name in CRITIC_SIZE_FIELDS}
        return CriticConfig(vocab_size=vocab_size, block_size=block_size, **sizes)


@register_learner
class NCELearner:
    """NCE critic with a self-adapting noise distribution (``scripts/train.py
    --agent nce [--init MLE_CKPT]``; METHODS.md §3).

    Trains a residual critic ``E_psi`` so that ``p(x) ∝ p_theta(x)
    exp(-E_psi(x))`` models the data, ``p_theta`` being the policy (Residual
    EBM, Deng et al., ICLR 2020). Each step:

    1. the noise distribution, a frozen snapshot ``p_s`` of the policy, is
       refreshed if the schedule says so (every ``refresh_every`` = K steps,
       :class:`~agents.noise.SnapshotNoise`; Xu, arXiv 2211.02650 [paper]);
    2. ``M = nu·B`` noise sequences are sampled from ``p_s`` in batch through
       the vector env on the training device, backspace disabled, so that
       they are exact ancestral samples with exact ``log p_s``
       (:func:`no_backspace_log_prob`);
    3. data (the demonstrations) and noise are scored in one forward pass of
       the critic (and of the policy and the snapshot when the policy is
       trained), and the loss is

       - binary NCE (:func:`binary_nce_loss`) between the residual model,
         energy ``E_psi(x) - log p_theta(x)``, and the noise, energy
         ``-log p_s(x)``: ``h(x) = -E_psi(x) + log p_theta(x) - log p_s(x) - c
         - log nu``. With the policy frozen ``p_theta = p_s`` and this is
         :func:`residual_nce_loss`, ``h = -E_psi - c - log nu``;
       - or ranking NCE (:func:`ranking_nce_loss`) with scores ``s = log
         p_theta - E_psi`` and ``log q = log p_s``, the data sample against
         its ``nu`` noise candidates.

       ``log p_theta`` is detached in the critic loss, so the critic learns
       the residual ``log p_data - log p_theta - c`` of the *current* policy
       (the one saved in the checkpoint and reranked at generation) even
       when the snapshot lags it [recon].
    4. with ``policy_objective="self_adapting_nce"`` the policy is trained as
       well, by ``policy_weight`` × :func:`self_adapting_nce_loss` (energy
       ``-log p_theta``, noise its snapshot, ``c = 0`` because both are
       normalised [recon]) plus ``ce_weight`` × cross-entropy on the data
       (nats per token) [recon: the mix]. Otherwise the policy is frozen
       (``requires_grad=False``) and not among :meth:`parameters`; K then
       changes nothing, since the snapshot always equals the policy.

       What this policy objective is, plainly: the policy is a *normalised*
       autoregressive model, so reading it as an EBM with energy
       ``-log p_theta`` adds nothing MLE lacks. At K = 1 its gradient is
       exactly half the MLE gradient in expectation (plus sampling noise from
       the noise term, see :func:`self_adapting_nce_loss`); at K > 1 it is a
       ratio-matching objective against a stale copy. The thesis's claims
       (Xu, arXiv 2211.02650) concern *unnormalised* EBMs, where NCE replaces
       an intractable partition function; they do not predict a gain over
       MLE here, and our benchmarks measured none
       (``benchmarks/results/quality.md``: worse than MLE at equal steps).
       Kept for the comparison of K, not as a recommended way to train a policy.

    The residual EBM's recipe (Deng et al., ICLR 2020, and the authors'
    public demo) [paper] is available as options: a frozen generator
    (``policy_objective="none"``, the default), a fixed set of generator
    samples (``noise_pool``; K = ∞ for the critic's noise), a critic
    initialised from the generator's trunk (``init_from_policy``), held-out
    real-vs-sample accuracy monitored (``eval_every``, on by default) and
    early stopping (``patience``), and the best held-out critic kept
    (``keep_best``, on by default). Defaults and why: at the demo's batch
    size on a GPU (``benchmarks/results/critic_rerank_gpu.md``: 2-layer
    critics, ~1650 steps × (512 + 512), lr 6e-4) the critic reached held-out
    accuracy 0.82 against a weak ``python-lines`` policy and 0.62 against a
    full-budget one, but its fixed pool of 10 000 samples was seen ~80 times
    and the held-out loss rose from step 250-500 on; on a CPU at batch 64 + 64
    (``critic_pool_vs_fresh.md``) fresh samples reached 0.81 where a pool of
    1000 peaked at 0.64: hence fresh noise (``noise_pool=0``) and
    ``keep_best``. Trunk init against scratch made no measured difference (``critic_rerank.md``, CPU; both at chance against a
    full-budget arithmetic policy on the GPU), and it needs a transformer
    policy, so it stays off. ``patience`` stays off: on flat critics at CPU
    budgets (``critic_rerank.md``) it stopped runs on noise.

    Conditional (paired) tasks, e.g. ``arithmetic``: the critic reads prompt +
    completion (:func:`agents.critic.critic_batch`); fresh noise rows are the
    snapshot's completions of the batch's own prompts (``nu`` per data row),
    a fixed pool holds one completion per training prompt. ``c`` is then one
    scalar for all prompts (a per-prompt normaliser is not modelled [recon]);
    reranking compares candidates of one prompt, where ``c`` cancels.

    Held-out evaluation (``eval_every``; :meth:`evaluate_critic`,
    :class:`~agents.common.callbacks.CriticEvalCallback`, which the trainer runs as a callback):
    ``eval/critic_accuracy``, ``eval/critic_loss``, ``eval/critic_auc``,
    ``eval/critic_weight_ess``; with ``patience``, early stopping on
    ``critic_loss`` (the trainer's :meth:`~agents.trainer.Trainer.request_stop`).

    Metrics (TensorBoard ``train/...``): ``nce/loss``, ``nce/accuracy``
    (``accuracy_data``, ``accuracy_noise`` for binary NCE), ``critic/c``,
    ``critic/energy_data``, ``critic/energy_noise`` (mean ``E_psi``, nats),
    ``noise/snapshot_age`` (steps), ``noise/refreshed``; with the policy
    trained also ``policy/nce_loss``, ``policy/nce_accuracy``, ``policy/ce``,
    ``policy/nll_data``, ``policy/nll_noise`` (mean ``-log p_theta``, nats per
    sequence) and ``noise/ess``: the effective sample size of the importance
    weights ``w ∝ p_theta(x)/p_s(x)`` on the noise samples divided by ``M``
    (1 = the snapshot is the policy; small = it lags far behind);
    ``rollout/mean_length`` and ``rollout/terminated`` of the noise samples.

    Checkpoint (:meth:`state_dict`, saved under ``"learner"``): the critic's
    config dict and weights (``c`` is its ``log_normalizer``) and the
    snapshot's state, so that a resumed run has the same noise distribution;
    :func:`agents.critic.load_critic` reads the critic back.

    :param ctx: :class:`~agents.common.learner.LearnerContext` (an
        unconditional or paired task; ``"noise"`` stream: env reset seeds and
        pool indices; ``"sample"``: the noise samples; ``batch_size``
        demonstrations per step ``B``, ``nu·B`` noise rows).
    :param cfg: :class:`NCEConfig`.
    :raises ValueError: on a bad ``cfg``; a task with prompts that is not
        paired; on a paired task, ``policy_objective != "none"`` or ranking
        NCE with a fixed pool.
    """

    name = "nce"
    config_class = NCEConfig
    progress_keys = ("nce/loss", "nce/accuracy")

    def __init__(self, ctx: LearnerContext, cfg: NCEConfig):
        if not isinstance(cfg, NCEConfig):
            raise ValueError(f"cfg must be an NCEConfig, got {type(cfg).__name__}")
        task = ctx.task
        self.conditional = task.prompts is not None
        if self.conditional and not task.paired:
            raise ValueError(
                f"NCELearner: task {task.name!r} has prompts but no prompt per training text (not "
                "paired), so the data has no prompt to contrast the noise's with"
            )
        if self.conditional and cfg.policy_objective != "none":
            raise ValueError(
                f"NCELearner: policy_objective={cfg.policy_objective!r} needs an unconditional task; "
                f"task {task.name!r} has prompts (train the critic only: policy_objective='none')"
            )
        if self.conditional and cfg.loss == "ranking" and cfg.noise_pool:
            raise ValueError(
                "NCELearner: ranking NCE on a prompted task needs noise candidates of the data's own "
                "prompt: use noise_pool=0 (fresh samples)"
            )
        self.model, self.cfg, self.task, self.device = ctx.model, cfg, task, torch.device(ctx.device)
        self.policy = ctx.policy
        self.train_policy = cfg.policy_objective != "none"
        if not self.train_policy:
            self.policy.requires_grad_(False)
        critic_config = cfg.critic_config(task.tokenizer.vocab_size, task.max_length + 1)  # bos + max_length
        if cfg.init_from_policy:
            pc = getattr(self.policy, "config", None)
            if pc is None or not hasattr(pc, "n_layer"):
                raise ValueError(f"init_from_policy needs a transformer policy, got {type(self.policy).__name__}")
            critic_config = dataclasses.replace(critic_config, n_layer=pc.n_layer, n_head=pc.n_head, n_embd=pc.n_embd)
        self.critic = SequenceCritic(critic_config).to(self.device)
        if cfg.init_from_policy:
            self.critic.init_from_policy(self.policy)
        if cfg.loss == "ranking":  # ranking NCE needs no c
            self.critic.log_normalizer.requires_grad_(False)
        self.critic_model = wrap_ddp(self.critic, self.device)
        self.snapshot = SnapshotNoise(cfg.refresh_every)
        self.batch_size = ctx.batch_size
        self.noise_generator, self.sample_generator = ctx.generators["noise"], ctx.generators["sample"]
        self.sampler = OnlineSampler(
            task,
            cfg.nu * ctx.batch_size,
            self.device,
            ctx.generators["noise"],
            ctx.generators["sample"],
            allow_backspace=False,
        )
        self.pool: dict | None = None  # {"prompts", "sequences", "terminated"}: the fixed noise set
        self.early_stop = {"best_loss": None, "best_step": None, "bad_evals": 0, "best_critic": None}
        self.last_eval: dict = {}
        self.eval_history: list[dict] = []  # {"step", critic_* ...} per held-out evaluation (not checkpointed)
        self._eval_noise = None  # held-out noise samples (fixed while the policy is frozen)
        self.callbacks = [CriticEvalCallback(self)] if cfg.eval_every else []

    def parameters(self):
        """The critic's parameters (with ``c`` for binary NCE), plus the policy's if it is trained."""
        params = [p for p in self.critic.parameters() if p.requires_grad]
        if self.train_policy:
            params += list(self.model.parameters())
        return params

    def sample_noise(self):
        """``nu·B`` sequences from the snapshot, backspace disabled (a
        :class:`~agents.common.rollout.RolloutResult`; unconditional tasks: the env's default draws)."""
        return self.sampler.sample(self.snapshot.module)

    def _fresh_noise(self, prompts: list[list[int]]):
        """``nu·B`` fresh snapshot samples as ``(prompts, sequences, terminated)`` lists; on a paired
        task each data prompt is repeated ``nu`` times (row ``i·nu + j``: the j-th sample of prompt ``i``)."""
        if not self.conditional:
            r = self.sample_noise()
            return [[] for _ in range(r.tokens.shape[0])], r.sequences(), r.terminated.tolist()
        rep = [p for p in prompts for _ in range(self.cfg.nu)]
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.noise_generator))
        return self._sample(rep, seed, self.sample_generator)

    def _sample(self, prompts: list[list[int]], seed, generator, policy=None):
        """Samples of ``policy`` (default: the snapshot), one per prompt of ``prompts`` (prompt ids; their
        count alone matters on an unconditional task)."""
        tok = self.task.tokenizer
        texts = None if prompts is None or not self.conditional else [tok.decode(p) for p in prompts]
        n = len(prompts)
        results = generate(
            policy if policy is not None else self.snapshot.module,
            self.task,
            n,
            prompts=texts,
            device=self.device,
            seed=seed,
            generator=generator,
            allow_backspace=False,
            batch_size=256 if self.device.type == "cpu" else 2048,
        )
        return (
            [p for r in results for p in r.prompts()],
            [s for r in results for s in r.sequences()],
            [bool(t) for r in results for t in r.terminated.tolist()],
        )

    def _draw_pool(self) -> None:
        """Draw the fixed noise set (:attr:`NCEConfig.noise_pool` samples of the snapshot)."""
        n = self.cfg.noise_pool
        if self.conditional:
            train = self.task.encoded_pairs("train")
            prompts = [train[i % len(train)][0] for i in range(n)]
        else:
            prompts = [[] for _ in range(n)]
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.noise_generator))
        p, seqs, term = self._sample(prompts, seed, self.sample_generator)
        self.pool = {"prompts": p, "sequences": seqs, "terminated": term}

    def _noise_batch(self, demos: Demos, refreshed: bool):
        """This step's noise rows: fresh samples, or ``nu·B`` rows of the fixed set."""
        if not self.cfg.noise_pool:
            return self._fresh_noise(demos.prompts)
        if self.pool is None or (refreshed and self.train_policy):
            self._draw_pool()
        pool = self.pool
        assert pool is not None, "_draw_pool sets the noise pool"
        idx = torch.randint(
            len(pool["sequences"]), (self.cfg.nu * len(demos),), generator=self.noise_generator
        ).tolist()
        return (
            [pool["prompts"][i] for i in idx],
            [pool["sequences"][i] for i in idx],
            [pool["terminated"][i] for i in idx],
        )

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        """One step's loss (nats) and metrics; see the class docstring.

        :param demos: ``B`` demonstrations (unconditional: empty prompts).
        :param step: the optimiser step (drives the snapshot refresh).
        :raises ValueError: (ranking NCE) a batch whose size is not the learner's ``batch_size``.
        """
        cfg, B = self.cfg, len(demos)
        if cfg.loss == "ranking" and B != self.batch_size:
            raise ValueError(
                f"ranking NCE pairs each demonstration with nu={cfg.nu} noise samples: expected "
                f"{self.batch_size} demonstrations (the batch size), got {B}"
            )
        refreshed = self.snapshot.maybe_refresh(cast(torch.nn.Module, self.policy), step)
        noise_prompts, noise_seqs, noise_term = self._noise_batch(demos, refreshed)
        M = len(noise_seqs)
        # data and noise in one batch: [bos, prompt..., x..., eos?, pad...] (prompts empty if unconditional)
        tokens, mask = critic_batch(
            list(demos.prompts) + noise_prompts,
            [d[:-1] for d in demos.actions] + noise_seqs,
            [True] * B + noise_term,
            self.device,
            ids=demos.ids,
        )
        energy = self.critic_model(tokens, mask).float()  # E_psi, [B + M]
        e_data, e_noise = energy[:B], energy[B:]
        c = self.critic.log_normalizer
        metrics: dict = {}

        if self.train_policy:
            log_p = no_backspace_log_prob(self.model(tokens), tokens, mask, demos.ids)  # log p_theta, with grad
            with torch.no_grad():
                log_q = no_backspace_log_prob(self.snapshot.module(tokens), tokens, mask, demos.ids)  # log p_s
            lp_data, lp_noise, lq_data, lq_noise = log_p[:B], log_p[B:], log_q[:B], log_q[B:]
            # the critic's residual model p_theta·exp(-E_psi) (p_theta detached) against the noise p_s
            if cfg.loss == "binary":
                critic_loss, m = binary_nce_loss(
                    e_data - lp_data.detach(), e_noise - lp_noise.detach(), -lq_data, -lq_noise, c, cfg.nu
                )
            else:
                critic_loss, m = ranking_nce_loss(
                    lp_data.detach() - e_data, (lp_noise.detach() - e_noise).view(B, -1), lq_data, lq_noise.view(B, -1)
                )
            # the policy as an EBM, energy -log p_theta, noise its own snapshot; c = 0 (both normalised)
            policy_nce, pm = self_adapting_nce_loss(lp_data, lp_noise, lq_data, lq_noise, 0.0, cfg.nu)
            ce = -lp_data.sum() / mask[:B].sum()
            loss = critic_loss + cfg.policy_weight * policy_nce + cfg.ce_weight * ce
            with torch.no_grad():
                log_w = (lp_noise - lq_noise).detach()  # importance weights p_theta / p_s of the noise samples
                ess = effective_sample_size(log_w, dim=0) / M
            metrics.update(
                {
                    "policy/nce_loss": pm["loss"],
                    "policy/nce_accuracy": pm["accuracy"],
                    "policy/ce": float(ce.detach()),
                    "policy/nll_data": pm["energy_data"],
                    "policy/nll_noise": pm["energy_noise"],
                    "noise/ess": float(ess),
                }
            )
        else:
            # frozen policy: p_theta = p_s, the policy terms cancel
            if cfg.loss == "binary":
                critic_loss, m = residual_nce_loss(e_data, e_noise, c, cfg.nu)
            else:
                zeros = torch.zeros_like(e_noise)
                critic_loss, m = ranking_nce_loss(-e_data, -e_noise.view(B, -1), zeros[:B], zeros.view(B, -1))
            loss = critic_loss

        metrics.update({f"nce/{k}": v for k, v in m.items() if not k.startswith("energy")})
        metrics.update(
            {
                "critic/c": float(c.detach()),
                "critic/energy_data": float(e_data.detach().mean()),
                "critic/energy_noise": float(e_noise.detach().mean()),
                "noise/snapshot_age": self.snapshot.age(step),
                "noise/refreshed": float(refreshed),
                "rollout/mean_length": sum(map(len, noise_seqs)) / M,
                "rollout/terminated": sum(noise_term) / M,
                "train/tokens": int(mask.sum()),
            }
        )
        return loss, metrics

    @torch.no_grad()
    def evaluate_critic(self) -> dict:
        """Held-out real-vs-sample evaluation of the critic (the residual-EBM classifier).

        Real: the first ``eval_size`` texts of the task's ``valid`` split (with
        their prompts on a paired task). Samples: as many fresh samples of the
        current policy (backspace disabled; on a paired task one per real
        text, with its prompt), drawn with a fixed seed, so that while the
        policy is frozen every evaluation sees the same set; redrawn at every
        evaluation when the policy is trained. The classifier is
        ``h(x) = -E_psi(x) - c``: "real" iff ``h > 0`` (the Bayes rule for a
        balanced mix when the critic is consistent; meaningful for binary NCE,
        where ``c`` is learned).

        :returns: floats ``critic_accuracy`` (fraction of the ``2n`` held-out
            sequences classified correctly), ``critic_loss`` (the balanced
            binary loss ``mean softplus(-h_real) + mean softplus(h_sample)``,
            nats; ``2 log 2 = 1.386`` for a flat critic), ``critic_auc``
            (probability that a real text has lower energy than a sample; ties
            count 1/2; threshold-free, also meaningful for ranking NCE),
            ``critic_weight_ess`` (effective sample size of the reranking
            weights ``exp(-E_psi)`` over the held-out samples, divided by
            their number: 1 = a flat critic, reranking is a no-op),
            ``critic_energy_real``, ``critic_energy_sample`` (mean ``E_psi``, nats).
        """
        cfg = self.cfg
        pairs = self.task.encoded_pairs("valid")[: cfg.eval_size]
        real_prompts = [p for p, _ in pairs]
        real_seqs = [x for _, x in pairs]
        if self._eval_noise is None or self.train_policy:
            gen = torch.Generator(device=self.device).manual_seed(987654321)
            self._eval_noise = self._sample(real_prompts, 987654321, gen, policy=self.policy)
        noise_prompts, noise_seqs, noise_term = self._eval_noise
        was_training = self.critic.training
        self.critic.eval()
        try:
            energies = []
            prompts = real_prompts + noise_prompts
            seqs, term = real_seqs + noise_seqs, [True] * len(real_seqs) + noise_term
            for i in range(0, len(seqs), 256):
                tokens, mask = critic_batch(
                    prompts[i : i + 256], seqs[i : i + 256], term[i : i + 256], self.device, ids=self.task
                )
                energies.append(self.critic(tokens, mask).float())
            energy = torch.cat(energies)
        finally:
            self.critic.train(was_training)
        n = len(real_seqs)
        e_real, e_noise = energy[:n], energy[n:]
        c = float(self.critic.log_normalizer)
        h_real, h_noise = -e_real - c, -e_noise - c
        accuracy = float(((h_real > 0).float().sum() + (h_noise < 0).float().sum()) / (2 * n))
        loss = float(F.softplus(-h_real).mean() + F.softplus(h_noise).mean())
        diff = e_real[:, None] - e_noise[None, :]
        auc = float((diff < 0).float().mean() + 0.5 * (diff == 0).float().mean())
        ess = float(effective_sample_size(-e_noise, dim=0)) / len(e_noise)
        self.last_eval = {
            "critic_accuracy": accuracy,
            "critic_loss": loss,
            "critic_auc": auc,
            "critic_weight_ess": ess,
            "critic_energy_real": float(e_real.mean()),
            "critic_energy_sample": float(e_noise.mean()),
        }
        return dict(self.last_eval)

    def state_dict(self) -> dict:
        """``critic_config`` (dict), ``critic`` (state_dict; ``c`` = ``log_normalizer``),
        ``snapshot`` (:meth:`agents.noise.SnapshotNoise.state_dict`), ``pool`` (the fixed
        noise set as id lists, or None) and ``early_stop`` (best held-out
        loss, its step, evaluations without improvement, the best critic's
        state_dict): tensors, dicts, lists, numbers only."""
        return {
            "critic_config": self.critic.config.to_dict(),
            "critic": self.critic.state_dict(),
            "snapshot": self.snapshot.state_dict(),
            "pool": self.pool,
            "early_stop": dict(self.early_stop),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` output (``{}``: nothing to restore;
        ``pool`` and ``early_stop`` may be absent: older checkpoints).

        :raises ValueError: if keys are missing or the critic's config differs from this run's.
        """
        if not state:
            return
        missing = {"critic_config", "critic", "snapshot"} - set(state)
        if missing:
            raise ValueError(f"NCE learner state is missing keys {sorted(missing)}")
        if state["critic_config"] != self.critic.config.to_dict():
            raise ValueError(
                f"saved critic config {state['critic_config']} differs from this run's {self.critic.config.to_dict()}"
            )
        self.critic.load_state_dict(state["critic"])
        self.snapshot.load_state_dict(state["snapshot"], cast(torch.nn.Module, self.policy))
        self.pool = state.get("pool")
        if state.get("early_stop"):
            self.early_stop = dict(state["early_stop"])
