"""Float tolerances derived from the dtype and the size of the sums, not from one developer's CPU.

Two computations of the same quantity that differ only in the order of floating-point operations
(a masked one-pass forward against a per-state forward, a KV-cached step against a recomputation,
SDPA against eager attention, another thread count or SIMD width, an Intel against an AMD BLAS) differ
by rounding only. Higham, *Accuracy and Stability of Numerical Algorithms* (2nd ed., 2002), §3.1,
eq. (3.5): a sum of ``n`` terms evaluated in any order satisfies

    |fl(sum x_i) - sum x_i| <= gamma_{n-1} * sum |x_i|,    gamma_n = n u / (1 - n u),  u = eps / 2,

and a dot product of length ``n`` satisfies the same with ``gamma_n`` (§3.1, eq. 3.4). Both sides of a
comparison round, so their difference is at most twice the bound. A network output is a chain of such
reductions; to first order the relative errors along the chain add, so ``n`` is the sum of the
reduction lengths along the path from input to output (:func:`transformer_chain_length`). ``scale``
stands for ``sum |x_i|`` of the last reduction; the tests use the largest magnitude of the compared
values, which for the small random networks here is within a small factor of it (the worst-case bound
is already loose by ``~sqrt(n)`` against the typical, random-walk error, Higham & Mary 2019, so the
bound stays far above any measured difference: 4e-6 on an Intel Xeon and 1.24e-5 on an AMD EPYC for the
Llama test below, against a bound of ~5e-4, while a wrong attention mask moves logits by > 1e-2).
"""

from __future__ import annotations

import torch


def unit_roundoff(dtype: torch.dtype) -> float:
    """``u = eps / 2`` of a floating dtype (float32: 5.96e-8; float64: 1.11e-16)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``; raises ValueError when ``n u >= 1`` (no bound)."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"n = {n} terms is too many for {dtype}: n*u = {nu} >= 1, no rounding bound")
    return nu / (1 - nu)


def rounding_atol(dtype: torch.dtype, n: int, scale: float) -> float:
    """Absolute tolerance for comparing two evaluations of the same chain of reductions.

    :param dtype: the floating dtype both sides are computed in.
    :param n: total reduction length along the computation (terms summed, added up over the chain).
    :param scale: magnitude of the summed terms (``sum |x_i|``; the tests use ``max |value|``), float.
    :returns: ``2 * gamma_n * scale`` (both sides round), a float.
    """
    return 2 * gamma(n, dtype) * float(scale)


def transformer_chain_length(
    n_layer: int, d_model: int, d_ff: int, head_dim: int, seq_len: int, vocab_out: bool = True
) -> int:
    """Sum of the reduction lengths along one token's path through a pre-norm decoder.

    Per block: norm (``d_model``), q/k/v projection (``d_model``), scores (``head_dim``), softmax
    normaliser and attention-weighted values (``seq_len`` each), output projection (``d_model``),
    norm (``d_model``), MLP up/gate (``d_model``) and down (``d_ff``). After the blocks: the final
    norm and the output head (``d_model`` each) when ``vocab_out``.
    """
    per_block = 5 * d_model + head_dim + 2 * seq_len + d_ff
    return n_layer * per_block + (2 * d_model if vocab_out else 0)


def policy_atol(config, seq_len: int, scale: float, extra_terms: int = 0) -> float:
    """:func:`rounding_atol` for the outputs of a ``TransformerPolicy`` (``PolicyConfig``: ``n_layer``,
    ``n_embd``, ``n_head``; MLP width ``4 n_embd``) at ``seq_len`` positions, float32, plus
    ``extra_terms`` further summed terms (e.g. ``vocab_size`` for a log-softmax over the logits)."""
    n = (
        transformer_chain_length(
            config.n_layer, config.n_embd, 4 * config.n_embd, config.n_embd // config.n_head, seq_len
        )
        + extra_terms
    )
    return rounding_atol(torch.float32, n, scale)
