"""Sampling-importance-resampling (SIR) and the effective sample size: written once.

Used by E-ARM's energy reranking and importance weights, NCE's critic
reranking and noise-sample weights.
"""

from __future__ import annotations

import math

import torch


def effective_sample_size(log_weights: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Kish's effective sample size ``(Σ w)² / Σ w²`` of unnormalised log-weights.

    :param log_weights: FloatTensor, any shape; ``-inf`` = weight 0.
    :param dim: the dimension the weights of one set run along.
    :return: FloatTensor with ``dim`` removed, in ``[1, n]`` for ``n`` weights
        (NaN where every weight is 0).
    """
    lw = log_weights.double()
    return torch.exp(2 * torch.logsumexp(lw, dim) - torch.logsumexp(2 * lw, dim)).to(log_weights.dtype)


def importance_resample(
    log_weights: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one of C candidates per row with probability ``softmax(log_weights)`` (SIR).

    With candidates drawn from a proposal ``q`` and ``log_weights = log p̃ -
    log q`` for an unnormalised target ``p̃``, the chosen candidate is
    distributed as ``p̃`` normalised as ``C -> ∞`` (Rubin 1987; the generation
    procedure of Residual EBMs, Deng et al., ICLR 2020).

    :param log_weights: FloatTensor ``[N, C]``, nats; ``-inf`` = weight 0, each
        row needs one finite value; NaN and ``+inf`` are rejected.
    :param generator: ``torch.Generator`` on the weights' device, or None.
    :return: ``(indices LongTensor[N], ess FloatTensor[N])``, the effective
        sample size of each row's weights (:func:`effective_sample_size`).
    :raises ValueError: on a non-2-D, non-float or empty tensor, NaN or
        ``+inf``, or a row with no finite weight.
    """
    if log_weights.dim() != 2 or log_weights.numel() == 0 or not log_weights.is_floating_point():
        raise ValueError(
            f"log_weights must be a float tensor [N, C] with N, C >= 1, got {log_weights.dtype} "
            f"of shape {tuple(log_weights.shape)}"
        )
    if torch.isnan(log_weights).any() or (log_weights == math.inf).any():
        raise ValueError("log_weights must not contain NaN or +inf")
    if not torch.isfinite(log_weights).any(dim=1).all():
        bad = (~torch.isfinite(log_weights).any(1)).nonzero().flatten().tolist()
        raise ValueError(f"log_weights rows {bad} have no finite value (every candidate has weight 0)")
    lw = log_weights.detach().double()
    indices = torch.multinomial(torch.softmax(lw, dim=1), 1, generator=generator).squeeze(1)
    return indices, effective_sample_size(log_weights.detach(), dim=1)
