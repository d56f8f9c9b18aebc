"""E-ARM: the autoregressive policy read as an energy-based model (METHODS.md §2).

Source: Wang, Che, Li, Song, Pei, Bengio, Li, "Your Autoregressive Generative
Model Can be Better If You Treat It as an Energy-Based One", arXiv 2206.12840.

The module works on logits tensors only; it never calls a model. Whoever owns
the model runs the forward passes and hands the logits in.

Sequence batch layout (every function here)
--------------------------------------------
A :class:`~agents.common.trajectory.TrajectoryBatch` of final sequences
(:func:`~agents.common.trajectory.sequence_batch`): ``tokens: LongTensor[B, T]
= [bos, x_1, ..., x_n, eos, pad, ...]`` and ``is_action: BoolTensor[B, T]``,
True at the positions of predicted tokens (x_1..x_n and eos; never bos, pad
or a prompt). ``logits: FloatTensor[B, T, V]`` with ``logits[:, i]`` the
logits of the token after ``tokens[:, :i+1]``, so the token at position k
(``tokens[:, k]``) is predicted by ``l(x_<k) = logits[:, k-1]``.
Per-position outputs have shape ``[B, T]`` like every per-position tensor in
``agents``: column ``k`` belongs to position ``k`` (column 0, bos, is never
predicted). Unpredicted positions before a predicted one (bos, a prompt) are
conditioned on, never scored.

Quantities [paper]
------------------
- energy of token x_k: ``φ(x_k, x_<k) = −l(x_<k)[x_k]`` (nats).
- prefix distribution: ``q̃(x_<k) = Π_{j<k} p(x_j | x_<j)``, the AR model's own
  probability of the prefix (``p = softmax(l)``; the product runs over
  predicted positions j < k, i.e. it is conditional on bos and any prompt).
- joint EBM at step k: ``p_θ(x_≤k) ∝ q̃(x_<k) · exp(l(x_<k)[x_k])``, whose
  energy is ``E(x_≤k) = −log q̃(x_<k) − l(x_<k)[x_k]``.
- Sampling x ~ q (the AR model) and reweighting by ``p_θ/q ∝ exp(logsumexp
  l(x_<k))`` gives the self-normalised importance weights
  ``w̄_i = softmax_i(logsumexp l(x^i_<k))`` of the negative phase.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .common.cli import check_number
from .common.demos import Demos
from .common.learner import LearnerContext, register_learner
from .common.resampling import effective_sample_size, importance_resample
from .common.rollout import OnlineSampler
from .common.trajectory import TrajectoryBatch, collate, token_log_probs

__all__ = [
    "EARMConfig",
    "earm_loss",
    "token_energies",
    "prefix_log_prob",
    "joint_energy",
    "importance_weights",
    "sequence_energy",
    "energy_resample",
    "energy_rerank",
]


@dataclass
class EARMConfig:
    """Hyperparameters of the E-ARM objective.

    :param lam: λ, weight of the E-ARM term next to cross-entropy. 0.05 is the
        paper's best value on WikiText-103 (0.02 for Transformer-XL) [paper].
        Must be finite and >= 0.
    :param start_step: optimiser step at which the E-ARM term switches on;
        before it the loss is pure MLE (cross-entropy) [paper: the paper counts
        epochs, 15 of ~40; counting optimiser steps is ours]. Integer >= 0.
    :param n_grad_conditionals: gradients flow through only the most recent
        ``n_grad_conditionals`` conditionals ``p(x_j|x_<j)``, ``k−n <= j < k``, of
        ``log q̃(x_<k)``; older ones are detached [paper: 2]. 0 detaches q̃
        entirely. Integer >= 0.
    :raises ValueError: naming the bad field and value.
    """

    lam: float = 0.05
    start_step: int = 0
    n_grad_conditionals: int = 2

    def __post_init__(self) -> None:
        check_number("EARMConfig.lam", self.lam, ge=0)
        for name in ("start_step", "n_grad_conditionals"):
            check_number(f"EARMConfig.{name}", getattr(self, name), ge=0, integer=True)


# ---------------------------------------------------------------------------
# per-position quantities: FloatTensor[B, T], column k belongs to tokens[:, k] (0 where not predicted)


def token_energies(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """Energy of each predicted token, ``φ(x_k, x_<k) = −l(x_<k)[x_k]`` [paper].

    :param logits: FloatTensor[B, T, V] on ``batch`` (layout in the module docstring).
    :param batch: the sequences; ``is_action`` marks the predicted tokens.
    :return: FloatTensor[B, T], column k = energy of position k in nats;
        0 where position k is not predicted.
    :raises ValueError: on logits that do not fit the batch.
    """
    batch.check_logits(logits)
    return _token_energies(logits, batch)


def _token_energies(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    logit = F.pad(_float(logits[:, :-1]).gather(-1, batch.tokens[:, 1:, None]).squeeze(-1), (1, 0))
    return torch.where(batch.is_action, -logit, torch.zeros_like(logit))


def _token_log_probs(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    return token_log_probs(logits, batch.tokens, batch.is_action)  # the one gather, [B, T]


def prefix_log_prob(
    logits: torch.Tensor, batch: TrajectoryBatch, n_grad_conditionals: int | None = None
) -> torch.Tensor:
    """Log prefix probability ``log q̃(x_<k) = Σ_{j<k} log p(x_j | x_<j)`` [paper].

    The sum runs over predicted positions j < k (bos and any prompt are
    conditioned on). Its *value* is always the full sum; its *gradient* flows
    only through the most recent ``n_grad_conditionals`` terms,
    ``k − n <= j <= k − 1``; older terms are detached [paper: n = 2].

    :param logits: FloatTensor[B, T, V] on ``batch`` (layout in the module docstring).
    :param batch: the sequences; ``is_action`` marks the predicted tokens.
    :param n_grad_conditionals: integer >= 0, or None for gradients through
        every conditional.
    :return: FloatTensor[B, T], column k = log q̃(x_<k) in nats (0 for k <= 1).
        Values at unpredicted positions k are the log-probability of the
        predicted tokens before k and carry no meaning.
    :raises ValueError: on logits that do not fit the batch or a bad ``n_grad_conditionals``.
    """
    batch.check_logits(logits)
    _check_n_grad(n_grad_conditionals)
    return _prefix_log_prob(_token_log_probs(logits, batch), n_grad_conditionals)


def _check_n_grad(n):
    if n is not None:
        check_number("n_grad_conditionals", n, ge=0, integer=True)


def _prefix_log_prob(logp: torch.Tensor, n_grad: int | None) -> torch.Tensor:
    """Exclusive cumulative sum of ``logp`` [B, T] along positions, gradients windowed.

    Column 0 (bos) is never predicted, so a window of ``T - 1`` conditionals already holds them all.
    """
    T = logp.shape[1]
    if n_grad is None or n_grad >= T - 1:
        return torch.cumsum(logp, dim=1) - logp
    # recent[:, c] = Σ_{d=1..n} logp[:, c-d]: the conditionals that keep their gradient
    recent = torch.zeros_like(logp)
    for d in range(1, n_grad + 1):
        recent = recent + F.pad(logp[:, :-d], (d, 0))
    older = torch.cumsum(logp.detach(), dim=1) - logp.detach() - recent.detach()
    return older + recent


def joint_energy(logits: torch.Tensor, batch: TrajectoryBatch, n_grad_conditionals: int | None = 2) -> torch.Tensor:
    """Energy of the step-k joint EBM, ``E(x_≤k) = −log q̃(x_<k) − l(x_<k)[x_k]`` [paper].

    ``p_θ(x_≤k) = exp(−E(x_≤k)) / Z_k``; the partition function Z_k is never
    computed (it cancels in the gradient estimator of :func:`earm_loss`).

    :param logits: FloatTensor[B, T, V] on ``batch`` (layout in the module docstring).
    :param batch: the sequences; ``is_action`` marks the predicted tokens.
    :param n_grad_conditionals: gradient window of ``log q̃`` (see
        :func:`prefix_log_prob`); None for the full gradient.
    :return: FloatTensor[B, T], column k = E(x_≤k) in nats; 0 where
        position k is not predicted.
    :raises ValueError: on logits that do not fit the batch or a bad ``n_grad_conditionals``.
    """
    batch.check_logits(logits)
    _check_n_grad(n_grad_conditionals)
    return _joint_energy(logits, batch, n_grad_conditionals)


def _joint_energy(logits: torch.Tensor, batch: TrajectoryBatch, n_grad: int | None) -> torch.Tensor:
    log_q = _prefix_log_prob(_token_log_probs(logits, batch), n_grad)
    energy = -log_q + _token_energies(logits, batch)
    return torch.where(batch.is_action, energy, torch.zeros_like(energy))


def importance_weights(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """Self-normalised importance weights of AR samples for the step-k EBM [paper].

    For samples x^i ~ q (the AR model itself, ancestral sampling), the weight
    of sample i at position k is ``w̄_i = softmax_i(logsumexp l(x^i_<k))``,
    taken over the samples *alive* at k (``batch.is_action[i, k]``: the sample
    has a token at position k) [paper: softmax over the batch; restriction to
    alive samples: recon]. Detached: the weights carry no gradient.

    :param logits: FloatTensor[B, T, V] of the samples.
    :param batch: the samples; ``is_action`` marks their predicted positions.
    :return: FloatTensor[B, T], column k = w̄ at position k; each column sums
        to 1 over the alive samples, and is all 0 where no sample is alive (column 0).
    :raises ValueError: on logits that do not fit the batch.
    """
    batch.check_logits(logits)
    return _importance_weights(logits, batch)[0]


def _importance_weights(logits: torch.Tensor, batch: TrajectoryBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weights, log_tilt)``: :func:`importance_weights` and the log-normalisers
    ``logsumexp l(x_<k)`` they are the softmax of (``[B, T]``, -inf where the sample is dead)."""
    alive = batch.is_action
    log_tilt = F.pad(torch.logsumexp(_float(logits[:, :-1]).detach(), dim=-1), (1, 0))  # logsumexp l(x_<k)
    log_tilt = torch.where(alive, log_tilt, torch.full_like(log_tilt, -math.inf))
    w = torch.softmax(log_tilt, dim=0)  # NaN in all-dead columns
    return torch.where(alive, w, torch.zeros_like(w)), log_tilt


def _float(x: torch.Tensor) -> torch.Tensor:
    """Compute losses in float32 at least (bf16/fp16 logits are upcast)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ---------------------------------------------------------------------------
# the objective


def earm_loss(
    logits_data: torch.Tensor,
    data: TrajectoryBatch,
    logits_samples: torch.Tensor | None,
    samples: TrajectoryBatch | None,
    cfg: EARMConfig,
    step: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy plus λ × the E-ARM surrogate term (METHODS.md §2).

    Objective [paper]: ``Σ_k CE_k + λ Σ_k KL(p_data(x_≤k) || p_θ(x_≤k))`` with
    the EBM gradient (arXiv 2206.12840, Eq. 12)
    ``∂KL_k = E_data[∂E(x_≤k)] − E_{p_θ}[∂E(x_≤k)]``, the negative phase
    estimated by self-normalised importance sampling with the AR model itself as
    proposal, one generated sequence per data sequence:
    ``E_{p_θ}[∂E] ≈ Σ_i w̄_i ∂E(x^i_≤k)``, ``w̄_i = softmax_i(logsumexp l(x^i_<k))``.

    Surrogate written for autograd (weights detached) [recon from the gradient]::

        loss = CE + λ · Σ_k c_k { E_data[E(x_≤k)] − Σ_i w̄_i E(x^i_≤k) }
        E(x_≤k) = −log q̃(x_<k) − l(x_<k)[x_k],   q̃(x_<k) = Π_{j<k} p(x_j | x_<j)

    i.e. ``E_data[−log q̃(x_<k) − l(x_<k)[x_k]] + Σ_i w̄_i [log q̃(x^i_<k) + l(x^i_<k)[x^i_k]]``.
    Its gradient is exactly λ × the Eq. 12 estimator (plus the CE gradient).
    Gradients flow through only the most recent ``cfg.n_grad_conditionals``
    conditionals of log q̃ [paper: 2]; the older ones are detached.

    Choices of ours [recon]:

    - CE is the mean in nats per predicted data token. The E-ARM term is put on
      the same scale: ``c_k = n_k / N`` with n_k the number of data sequences
      alive at position k and N the number of predicted data tokens, so its
      positive phase is a per-token mean exactly like CE. For equal-length
      sequences this is the paper's ``Σ_k CE_k + λ Σ_k KL_k`` divided by the
      length, so λ keeps the paper's meaning.
    - Variable lengths: position k of a sequence is *alive* when the sequence
      predicts a token there (``is_action[:, k]``; eos included, pad not). At each k
      the data average runs over alive data sequences and the weights w̄ over
      alive samples only. A position enters the sum only when at least one data
      sequence *and* at least one sample are alive there (a positive phase with
      no negative phase would have no counterweight); the others are skipped.
    - The two batches may differ in B and T; positions are matched by index k.
    - Before ``cfg.start_step`` (``step < start_step``) the loss is CE exactly
      and the sample arguments may be None.

    :param logits_data: FloatTensor[B, T, V], model logits on the data batch (with grad).
    :param data: the data sequences ``[B, T]``.
    :param logits_samples: FloatTensor[Bs, Ts, V], model logits on its own samples
        (with grad), or None before ``start_step``.
    :param samples: the model's samples ``[Bs, Ts]``, or None before ``start_step``.
    :param cfg: EARMConfig.
    :param step: current optimiser step, integer >= 0.
    :return: ``(loss, metrics)``: loss a 0-dim float tensor (nats per token);
        metrics a dict of Python floats:
        ``loss/ce`` CE in nats per token; ``loss/earm`` the surrogate term's value
        before λ (the estimated energy gap ``E_data[E] − E_{p_θ}[E]``, summed with
        the weights c_k; only its gradient is meaningful); ``loss/total``;
        ``energy/data_mean`` mean token energy −l(x_<k)[x_k] over predicted data
        tokens; and, once the E-ARM term is on, ``energy/sample_mean`` (the same,
        unweighted, over predicted sample tokens) and ``earm/ess``: effective
        sample size of the weights, ``(Σw)²/Σw²`` at each used position,
        *normalised* by the number of alive samples there (so in (0, 1], 1 =
        uniform weights), averaged over used positions (NaN if none);
        ``earm/ess_min`` the smallest of those per-position values;
        ``earm/log_tilt_std`` the spread of the log-normalisers: the standard
        deviation over alive samples of ``logsumexp l(x^i_<k)`` (nats) at each
        used position with >= 2 alive samples, averaged over those positions --
        the weights are ``softmax`` of these, so a spread near 0 means uniform
        weights and a negative phase equal to the plain sample average
        (``earm/log_tilt_range``: the mean max - min, nats).
    :raises ValueError: on logits that do not fit their batch, a bad ``step``,
        or missing samples once the E-ARM term is on.
    """
    if not isinstance(cfg, EARMConfig):
        raise ValueError(f"cfg must be an EARMConfig, got {type(cfg).__name__}")
    check_number("step", step, ge=0, integer=True)
    data.check_logits(logits_data, "logits_data")
    n_tokens = int(data.is_action.sum())  # >= 1: a TrajectoryBatch row has an action

    # cross-entropy, nats per predicted token
    ce = -_token_log_probs(logits_data, data).sum() / n_tokens
    metrics = {
        "loss/ce": ce.item(),
        "energy/data_mean": (_token_energies(logits_data, data).sum() / n_tokens).item(),
    }
    if step < cfg.start_step:  # pure MLE warm start [paper]
        metrics.update({"loss/earm": 0.0, "loss/total": metrics["loss/ce"]})
        return ce, metrics

    if logits_samples is None or samples is None:
        raise ValueError(
            f"E-ARM term is on at step {step} (start_step={cfg.start_step}): "
            "logits_samples and samples are required, got None"
        )
    samples.check_logits(logits_samples, "logits_samples")
    if logits_samples.shape[2] != logits_data.shape[2]:
        raise ValueError(
            f"samples: vocabulary size {logits_samples.shape[2]} differs from the data's {logits_data.shape[2]}"
        )
    n = cfg.n_grad_conditionals

    # positive phase: E_data[E(x_≤k)] over alive data, per position k
    n_data = data.is_action.sum(0)  # n_k
    energy_data = _joint_energy(logits_data, data, n)
    positive = energy_data.sum(0) / n_data.clamp(min=1)

    # negative phase: Σ_i w̄_i E(x^i_≤k), AR samples as proposal, weights detached
    alive_samples = samples.is_action
    n_samples = alive_samples.sum(0)
    weights, log_tilt = _importance_weights(logits_samples, samples)
    energy_samples = _joint_energy(logits_samples, samples, n)
    negative = (weights * energy_samples).sum(0)

    # match positions k across the two batches (pad the shorter with dead positions)
    K = max(positive.shape[0], negative.shape[0])
    positive, n_data = F.pad(positive, (0, K - positive.shape[0])), F.pad(n_data, (0, K - n_data.shape[0]))
    negative, n_samples = F.pad(negative, (0, K - negative.shape[0])), F.pad(n_samples, (0, K - n_samples.shape[0]))
    used = (n_data > 0) & (n_samples > 0)
    c = torch.where(used, n_data / n_tokens, torch.zeros_like(positive))  # c_k = n_k / N

    earm = (c * (positive - negative)).sum()
    loss = ce + cfg.lam * earm

    with torch.no_grad():
        log_w = torch.where(alive_samples, weights, torch.zeros_like(weights)).log()
        ess = effective_sample_size(log_w, dim=0) / alive_samples.sum(0).clamp(min=1)  # in (0, 1]
        ess = F.pad(ess, (0, K - ess.shape[0]))[used]
        # spread of the log-normalisers logsumexp l(x_<k) over alive samples, per position (-inf when dead)
        n_alive = alive_samples.sum(0)
        dev = torch.where(alive_samples, log_tilt, 0.0)
        dev = torch.where(alive_samples, dev - dev.sum(0) / n_alive.clamp(min=1), 0.0)
        var_lt = (dev**2).sum(0) / (n_alive - 1).clamp(min=1)
        lt_max = log_tilt.max(0).values
        lt_min = torch.where(alive_samples, log_tilt, math.inf).min(0).values
        multi = n_alive >= 2
        tilt_std = var_lt.sqrt()[multi]
        tilt_range = (lt_max - lt_min)[multi]
        n_sample_tokens = int(alive_samples.sum())
        sample_energy = _token_energies(logits_samples, samples).sum()
    metrics.update(
        {
            "loss/earm": earm.item(),
            "loss/total": loss.item(),
            "earm/ess": ess.mean().item() if ess.numel() else math.nan,
            "earm/ess_min": ess.min().item() if ess.numel() else math.nan,
            "earm/log_tilt_std": tilt_std.mean().item() if tilt_std.numel() else math.nan,
            "earm/log_tilt_range": tilt_range.mean().item() if tilt_range.numel() else math.nan,
            "energy/sample_mean": sample_energy.item() / n_sample_tokens if n_sample_tokens else math.nan,
        }
    )
    return loss, metrics


# ---------------------------------------------------------------------------
# inference: energy re-sampling of candidates


def sequence_energy(logits: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """E-ARM joint energy of each complete sequence.

    With K the last predicted position of a row (its eos, or its last token if
    it was truncated), the energy is the step-K joint energy of the E-ARM EBM
    [paper: the EBM; applying it to the complete sequence is recon]::

        E(x) = −log q̃(x_<K) − l(x_<K)[x_K] = −log q(x) − logsumexp l(x_<K)

    with q(x) the AR model's probability of the whole sequence. So
    ``p_θ(x) ∝ exp(−E(x)) = q(x) · exp(logsumexp l(x_<K))``: the EBM tilts the AR
    model by the log-normaliser of the last conditional, which is exactly the
    importance weight the training objective uses.
    [recon] We do not use ``−Σ_k l(x_<k)[x_k]`` (sum of token energies): that is
    the energy of a different EBM, ``q(x) · Π_k exp(logsumexp l(x_<k))``, which
    E-ARM does not train.

    :param logits: FloatTensor[B, T, V] on ``batch`` (layout in the module docstring).
    :param batch: the sequences (every row has a predicted token).
    :return: FloatTensor[B], energies in nats (with gradient if the logits have one).
    :raises ValueError: on logits that do not fit the batch.
    """
    batch.check_logits(logits)
    last = batch.last_action_index()[:, None]  # column of x_K
    logp = _token_log_probs(logits, batch)
    log_q_prefix = logp.sum(1) - logp.gather(1, last).squeeze(1)  # log q̃(x_<K)
    return -log_q_prefix + _token_energies(logits, batch).gather(1, last).squeeze(1)


def energy_resample(
    energies: torch.Tensor,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    temperature: float = 1.0,
    proposal_log_prob: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pick one of K candidates per output by their energy.

    Target over the K candidates of a row: ``∝ exp(−E/τ)``.

    - ``greedy=True``: the argmin of the energy (the target's mode; τ and the
      proposal are irrelevant).
    - otherwise, if ``proposal_log_prob`` is None: draw an index with probability
      ``softmax(−E/τ)`` over the row (the candidates are treated as a fixed pool).
    - otherwise: sampling-importance-resampling [recon]: the candidates were
      drawn from a proposal q with log-probability ``proposal_log_prob``, so the
      index is drawn with probability ``softmax(−E/τ − log q)``; as K grows the
      chosen candidate is distributed as ``exp(−E/τ)`` normalised.

    :param energies: FloatTensor[N, K] in nats, K >= 1. +inf marks an impossible
        candidate; each row needs one finite energy; NaN and −inf are rejected.
    :param generator: torch.Generator on the energies' device for sampling
        (None: global RNG). Unused when greedy.
    :param greedy: take the argmin instead of sampling.
    :param temperature: τ > 0, finite.
    :param proposal_log_prob: FloatTensor[N, K] of finite log q (nats), or None.
    :return: LongTensor[N], indices in [0, K).
    :raises ValueError: on a bad shape, dtype, value or temperature.
    """
    if not isinstance(energies, torch.Tensor) or energies.dim() != 2 or not energies.is_floating_point():
        raise ValueError(
            f"energies must be a floating tensor [N, K], got "
            f"{getattr(energies, 'dtype', type(energies))} of shape {tuple(getattr(energies, 'shape', ()))}"
        )
    N, K = energies.shape
    if N < 1 or K < 1:
        raise ValueError(f"energies must have N >= 1 rows and K >= 1 candidates, got shape {(N, K)}")
    if bool(torch.isnan(energies).any()) or bool((energies == -math.inf).any()):
        raise ValueError("energies must not contain NaN or -inf")
    if not bool(torch.isfinite(energies).any(1).all()):
        bad = (~torch.isfinite(energies).any(1)).nonzero().flatten().tolist()
        raise ValueError(f"energies: rows {bad} have no finite energy (every candidate is +inf)")
    check_number("temperature", temperature, gt=0)
    if proposal_log_prob is not None:
        if not isinstance(proposal_log_prob, torch.Tensor) or proposal_log_prob.shape != energies.shape:
            raise ValueError(
                f"proposal_log_prob must be a tensor of shape {(N, K)}, got "
                f"{tuple(getattr(proposal_log_prob, 'shape', ()))}"
            )
        if not bool(torch.isfinite(proposal_log_prob).all()):
            raise ValueError("proposal_log_prob must be finite (the candidates were drawn from it)")
    energies = energies.detach()
    if greedy:
        return energies.argmin(1)
    log_w = -energies.double() / temperature
    if proposal_log_prob is not None:
        log_w = log_w - proposal_log_prob.detach().double()
    return importance_resample(log_w, generator)[0]


@torch.no_grad()
def energy_rerank(
    logits: torch.Tensor,
    batch: TrajectoryBatch,
    num_candidates: int,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    temperature: float = 1.0,
    importance_correction: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-K energy re-sampling of AR candidates (``generate.py --rerank energy``).

    [paper] mentions optional "top-K energy re-sampling" of generated
    candidates at inference (small gains). [recon] Our reading: draw K
    candidates per output from the AR model, score each with the E-ARM energy
    of the complete sequence (:func:`sequence_energy`), and keep one per output:
    the minimum-energy one (``greedy``), or one drawn by sampling-importance-
    resampling towards ``p_θ(x) ∝ exp(−E(x)/τ)`` with the AR model's own
    ``log q(x)`` (from the same logits) as proposal (``importance_correction``;
    at τ = 1 the weights reduce to ``exp(logsumexp l(x_<K))``), or drawn
    ∝ ``softmax(−E/τ)`` over the pool (``importance_correction=False``).

    The logits must come from a forward pass over the *final* candidates (the
    layout in the module docstring, backspaces already applied). The proposal
    correction is exact only if the candidates were sampled from this same
    model at temperature 1 without backspace; otherwise call
    :func:`energy_resample` with your own proposal log-probabilities.

    :param logits: FloatTensor[N*K, T, V] on ``batch``.
    :param batch: the N*K candidates; rows ``n*K .. n*K+K-1`` are the K
        candidates of output n.
    :param num_candidates: K >= 1, dividing the batch size.
    :param generator, greedy, temperature: as in :func:`energy_resample`.
    :param importance_correction: subtract the AR log-probability (see above).
    :return: ``(choice, energies)``: LongTensor[N] in [0, K) and FloatTensor[N, K]
        in nats; the chosen rows are ``batch.tokens.view(N, K, T)[torch.arange(N), choice]``.
    :raises ValueError: on logits that do not fit the batch or a K that does not divide the batch.
    """
    batch.check_logits(logits)
    B = batch.tokens.shape[0]
    check_number("num_candidates", num_candidates, ge=1, integer=True)
    if B % num_candidates:
        raise ValueError(f"num_candidates must divide the batch size {B}, got {num_candidates!r}")
    N = B // num_candidates
    energies = sequence_energy(logits, batch).view(N, num_candidates)
    log_q = None
    if importance_correction and not greedy:
        log_q = _token_log_probs(logits, batch).sum(1).view(N, num_candidates)
    choice = energy_resample(energies, generator, greedy=greedy, temperature=temperature, proposal_log_prob=log_q)
    return choice, energies


# ---------------------------------------------------------------------------
# The learner: data batch + one model sample per data sequence, every step


@register_learner
class EARMLearner:
    """Trains the policy with :func:`earm_loss` (``scripts/train.py --agent earm``).

    Each step from ``cfg.start_step`` on generates one sequence per data
    sequence with the current policy, in batch, through the vector env on the
    training device (:class:`~agents.common.rollout.OnlineSampler`, seeded;
    backspace disabled, so that the samples are exact ancestral samples of the
    AR model q, the importance-sampling proposal), and scores data and samples
    with one forward pass each. Before ``start_step`` it is plain MLE (no
    sampling cost). On a prompted task the samples keep their prompts (scored
    conditionally, like the data).

    :param ctx: :class:`~agents.common.learner.LearnerContext`.
    :param cfg: :class:`EARMConfig`.
    """

    name = "earm"
    config_class = EARMConfig
    progress_keys = ("loss/ce", "earm/ess")

    def __init__(self, ctx: LearnerContext, cfg: EARMConfig):
        self.model, self.cfg, self.device = ctx.model, cfg, ctx.device
        self.sampler = OnlineSampler(
            ctx.task,
            ctx.batch_size,
            ctx.device,
            ctx.generators["noise"],
            ctx.generators["sample"],
            allow_backspace=False,
        )

    def parameters(self):
        return self.model.parameters()

    def loss(self, demos: Demos, step: int) -> tuple[torch.Tensor, dict]:
        data = collate(demos.actions, demos.prompts, device=self.device, ids=demos.ids)
        logits_data = self.model(data.tokens)
        logits_s = samples = None
        metrics: dict[str, float] = {}
        if step >= self.cfg.start_step:
            res = self.sampler.sample(self.model)
            samples = TrajectoryBatch.of_sequences(
                res.sequences(), res.terminated.tolist(), self.device, prompts=res.prompts(), ids=res.ids
            )
            logits_s = self.model(samples.tokens)
            metrics["rollout/mean_length"] = float(res.lengths.float().mean())
            metrics["rollout/terminated"] = float(res.terminated.float().mean())
        loss, m = earm_loss(logits_data, data, logits_s, samples, self.cfg, step)
        metrics.update(m)
        metrics["train/tokens"] = int(data.is_action.sum())
        return loss, metrics

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
