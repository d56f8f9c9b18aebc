"""Oracle sources whose distribution over token sequences is known exactly.

The SeqGAN / Texygen "oracle" setting: a fixed random generative model plays
the role of the true data distribution, so the quality of a learned generator
can be measured exactly -- the oracle NLL ``E_model[-log p_oracle(x)]`` of
model samples, and the held-out NLL of oracle samples under the model.

:class:`HMMOracle` is a random hidden Markov model with a stop probability per
hidden state, conditioned on length ``<= max_length`` (so that every sampled
sequence fits an environment of that ``max_length``). Both the likelihood and
the sampler are exact for that conditional distribution.
"""

from __future__ import annotations

import math

import torch

from .tokenizers import NUM_SPECIAL


class HMMOracle:
    """Random HMM over ``num_symbols`` ordinary tokens, conditioned on length.

    Generative process (one sequence): ``z_1 ~ pi``; at step ``t`` emit
    ``x_t ~ E[z_t]``; stop with probability ``stop[z_t]`` (the ``eos``), else
    ``z_{t+1} ~ A[z_t]``. Sequences longer than ``max_length`` are rejected, so
    the distribution is ``p(x) = p_HMM(x, eos) / Z`` with
    ``Z = P_HMM(len <= max_length)`` computed exactly.

    Token ids are ``NUM_SPECIAL + symbol`` (the task's tokenizer maps symbols
    to letters).

    :param num_symbols: number of ordinary tokens (>= 2).
    :param num_states: number of hidden states (>= 1).
    :param max_length: longest sequence (tokens, ``eos`` not counted), >= 1.
    :param mean_length: target mean length: stop probabilities are drawn
        around ``1 / mean_length``.
    :param concentration: Dirichlet concentration of the transition and
        emission rows; small values give peaky, learnable structure.
    :param seed: fixes the parameters.
    :raises ValueError: on out-of-range arguments.
    """

    def __init__(
        self,
        num_symbols: int = 16,
        num_states: int = 8,
        max_length: int = 24,
        mean_length: float = 10.0,
        concentration: float = 0.1,
        seed: int = 0,
    ):
        if num_symbols < 2:
            raise ValueError(f"num_symbols must be >= 2, got {num_symbols}")
        if num_states < 1:
            raise ValueError(f"num_states must be >= 1, got {num_states}")
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if not mean_length > 1.0:
            raise ValueError(f"mean_length must be > 1, got {mean_length}")
        if not concentration > 0:
            raise ValueError(f"concentration must be > 0, got {concentration}")
        self.num_symbols, self.num_states, self.max_length = num_symbols, num_states, max_length
        g = torch.Generator().manual_seed(seed)
        self.initial = _dirichlet(1, num_states, 1.0, g)[0]  # pi [H]
        self.transition = _dirichlet(num_states, num_states, concentration, g)  # A [H, H]
        self.emission = _dirichlet(num_states, num_symbols, concentration, g)  # E [H, S]
        u = torch.rand(num_states, generator=g, dtype=torch.float64)
        self.stop = (1.0 / mean_length) * (0.5 + u)  # stop [H], mean 1/mean_length
        # g_k(z): P(stop within k more emissions | at state z, current emission done)
        stop_within = [self.stop.clone()]
        for _ in range(max_length):
            prev = stop_within[-1]
            stop_within.append(self.stop + (1 - self.stop) * (self.transition @ prev))
        self._stop_within = torch.stack(stop_within)  # [max_length + 1, H]
        # Z = P(len <= max_length) = sum_z pi(z) g_{max_length - 1}(z)
        self.log_z = math.log(float(self.initial @ self._stop_within[max_length - 1]))

    # -- exact likelihood -------------------------------------------------
    def _forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled forward pass; returns (log-scale [B], alpha normalised [B, H]) at each row's last step."""
        tokens, lengths = self._check(tokens, lengths)
        B = tokens.shape[0]
        sym = (tokens - NUM_SPECIAL).clamp(min=0)
        E = self.emission
        alpha = self.initial.expand(B, -1) * E[:, sym[:, 0]].T  # [B, H]
        log_scale = torch.zeros(B, dtype=torch.float64)
        s = alpha.sum(-1, keepdim=True)
        alpha, log_scale = alpha / s, log_scale + s.squeeze(-1).log()
        T = int(lengths.max())
        for t in range(1, T):
            alive = (lengths > t).unsqueeze(-1)
            nxt = ((alpha * (1 - self.stop)) @ self.transition) * E[:, sym[:, t]].T
            s = nxt.sum(-1, keepdim=True)
            alpha = torch.where(alive, nxt / s, alpha)
            log_scale = log_scale + torch.where(alive.squeeze(-1), s.squeeze(-1).log(), torch.zeros_like(log_scale))
        return log_scale, alpha

    def log_prob(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x_1..x_n, eos)`` in nats under the length-conditioned oracle.

        :param tokens: LongTensor ``[B, L]``; ``tokens[b, :lengths[b]]`` are
            ordinary token ids (>= ``NUM_SPECIAL``); the rest is ignored.
        :param lengths: LongTensor ``[B]`` in ``[1, L]``.
        :return: float64 tensor ``[B]``; ``-inf`` for sequences longer than
            ``max_length`` (probability 0).
        :raises ValueError: on special ids inside a sequence, bad lengths.
        """
        log_scale, alpha = self._forward(tokens, lengths)
        out = log_scale + (alpha @ self.stop).log() - self.log_z
        return torch.where(lengths.cpu() > self.max_length, torch.full_like(out, -math.inf), out).to(tokens.device)

    def prefix_log_prob(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Exact ``log P(x starts with x_1..x_n)`` in nats under the oracle.

        Length 0 gives 0 (the empty prefix). Same shapes as :meth:`log_prob`.
        """
        lengths_cpu = lengths.detach().cpu()
        out = torch.zeros(tokens.shape[0], dtype=torch.float64)
        nz = lengths_cpu > 0
        if nz.any():
            toks = tokens.detach().cpu()[nz]
            lens = lengths_cpu[nz]
            log_scale, alpha = self._forward(toks, lens)
            remaining = (self.max_length - lens).clamp(min=0)
            stop_within = self._stop_within[remaining]  # [b, H]
            val = log_scale + (alpha * stop_within).sum(-1).log() - self.log_z
            val = torch.where(lens > self.max_length, torch.full_like(val, -math.inf), val)
            out[nz] = val
        return out.to(tokens.device)

    # -- exact sampling ---------------------------------------------------
    def sample(self, n: int, generator: torch.Generator) -> list[list[int]]:
        """Draw ``n`` sequences (token ids, no ``eos``) exactly from the oracle.

        Rejection of over-long sequences makes the sampler exact for the
        length-conditioned distribution.
        """
        out: list[list[int]] = []
        while len(out) < n:
            m = max(16, int((n - len(out)) * 1.2))
            out.extend(s for s in self._sample_unconditioned(m, generator) if len(s) <= self.max_length)
        return out[:n]

    def _sample_unconditioned(self, m: int, g: torch.Generator) -> list[list[int]]:
        z = torch.multinomial(self.initial.expand(m, -1), 1, generator=g).squeeze(-1)
        alive = torch.ones(m, dtype=torch.bool)
        steps = []
        for _ in range(self.max_length + 1):
            x = torch.multinomial(self.emission[z], 1, generator=g).squeeze(-1)
            steps.append(torch.where(alive, x + NUM_SPECIAL, torch.full_like(x, -1)))
            stop = torch.rand(m, generator=g, dtype=torch.float64) < self.stop[z]
            z = torch.multinomial(self.transition[z], 1, generator=g).squeeze(-1)
            alive = alive & ~stop
        seqs = torch.stack(steps, 1).tolist()
        # a sequence still alive after max_length + 1 emissions is too long: mark it so
        return [
            [t for t in row if t >= 0] if not a else [0] * (self.max_length + 1) for row, a in zip(seqs, alive.tolist())
        ]

    def entropy_estimate(self, samples: list[list[int]]) -> float:
        """Monte-Carlo entropy ``-mean log p(x)`` (nats per sequence) of ``samples``."""
        tokens, lengths = pad_sequences(samples)
        return float(-self.log_prob(tokens, lengths).mean())

    def _check(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.as_tensor(tokens).detach().cpu().long()
        lengths = torch.as_tensor(lengths).detach().cpu().long()
        if tokens.dim() != 2 or lengths.shape != (tokens.shape[0],):
            raise ValueError(
                f"expected tokens [B, L] and lengths [B], got {tuple(tokens.shape)} and {tuple(lengths.shape)}"
            )
        if (lengths < 1).any() or (lengths > tokens.shape[1]).any():
            raise ValueError(f"lengths must be in [1, {tokens.shape[1]}], got {lengths.tolist()[:8]}")
        pos = torch.arange(tokens.shape[1])
        inside = pos < lengths.unsqueeze(-1)
        bad = inside & ((tokens < NUM_SPECIAL) | (tokens >= NUM_SPECIAL + self.num_symbols))
        if bad.any():
            b, t = bad.nonzero()[0].tolist()
            raise ValueError(
                f"token id {int(tokens[b, t])} at row {b}, position {t} is not an oracle symbol "
                f"(expected ids in [{NUM_SPECIAL}, {NUM_SPECIAL + self.num_symbols}))"
            )
        return tokens, lengths


def _dirichlet(rows: int, cols: int, concentration: float, g: torch.Generator) -> torch.Tensor:
    """Rows ~ Dirichlet(concentration) drawn with ``g`` (float64 ``[rows, cols]``).

    ``torch.distributions`` samplers take no generator, so Gamma(a) is drawn
    as ``Gamma(a+1) * U^(1/a)`` with Gamma(a+1) by Marsaglia-Tsang rejection.
    """
    a = concentration + 1.0
    d = a - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    n = rows * cols
    out = torch.empty(0, dtype=torch.float64)
    while out.numel() < n:
        x = torch.randn(2 * n, generator=g, dtype=torch.float64)
        v = (1 + c * x) ** 3
        u = torch.rand(2 * n, generator=g, dtype=torch.float64)
        ok = (v > 0) & (u.log() < 0.5 * x**2 + d - d * v + d * v.clamp(min=1e-300).log())
        out = torch.cat([out, (d * v)[ok]])
    gamma_a1 = out[:n]
    u = torch.rand(n, generator=g, dtype=torch.float64)
    gam = gamma_a1 * u ** (1.0 / concentration)
    gam = gam.view(rows, cols) + 1e-12
    return gam / gam.sum(-1, keepdim=True)


def pad_sequences(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad id lists to LongTensor ``[B, max_len]``; returns (tokens, lengths)."""
    lengths = torch.tensor([len(s) for s in seqs], dtype=torch.long)
    L = max(1, int(lengths.max())) if len(seqs) else 1
    tokens = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return tokens, lengths
