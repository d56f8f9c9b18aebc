"""Choose among K generated candidates per output: energy (E-ARM) or critic (NCE).

``scripts/generate.py --rerank {energy,critic} --candidates K`` draws ``N*K``
episodes from the policy, lays the final sequences out as
``[bos, x..., eos, pad...]`` and keeps one candidate per output:

* ``energy``: :func:`agents.earm.energy_rerank` -- importance resampling
  towards the E-ARM EBM ``p(x) ∝ q(x)·exp(logsumexp l(x_<K))`` (METHODS.md §2,
  "top-K energy re-sampling").
* ``critic``: :func:`agents.nce.importance_resample` -- sampling-importance-
  resampling ∝ ``exp(−E_ψ(x))`` with a trained :class:`~agents.nce.SequenceCritic`,
  i.e. samples from the residual EBM ``p_policy(x)·exp(−E_ψ(x))`` (Deng et al.,
  ICLR 2020; METHODS.md §3).
"""

from __future__ import annotations

import torch

from .data import sequence_batch


@torch.no_grad()
def rerank_energy(policy, sequences, terminated, num_candidates: int, generator: torch.Generator, device):
    """Indices ``[N]`` of the chosen candidates by E-ARM energy (see module docstring)."""
    from .earm import energy_rerank

    tokens, mask = sequence_batch(sequences, terminated, device)
    logits = getattr(policy, "module", policy)(tokens)
    choice, energies = energy_rerank(logits.float(), tokens, mask, num_candidates, generator=generator)
    return choice, energies


@torch.no_grad()
def rerank_critic(critic, sequences, terminated, num_candidates: int, generator: torch.Generator, device):
    """Indices ``[N]`` of the chosen candidates by SIR with a critic's energies, and the ESS ``[N]``."""
    from .nce import importance_resample

    tokens, mask = sequence_batch(sequences, terminated, device)
    energies = critic(tokens, mask).float().view(-1, num_candidates)
    choice, ess = importance_resample(energies, generator)
    return choice, ess
