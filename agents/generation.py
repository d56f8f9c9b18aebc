"""Generation with optional reranking among K candidates: energy (E-ARM) or critic (NCE).

``scripts/generate.py --rerank {energy,critic} --candidates K`` draws ``N*K``
episodes from the policy, lays the final sequences out as
``[bos, x..., eos, pad...]`` and keeps one candidate per output:

* ``energy``: :func:`agents.earm.energy_rerank` -- importance resampling
  towards the E-ARM EBM ``p(x) ∝ q(x)·exp(logsumexp l(x_<K))`` (METHODS.md §2,
  "top-K energy re-sampling").
* ``critic``: sampling-importance-resampling ∝ ``exp(−E_ψ(x))`` with a trained
  :class:`~agents.critic.SequenceCritic`
  (:func:`agents.common.resampling.importance_resample`), i.e. samples from the
  residual EBM ``p_policy(x)·exp(−E_ψ(x))`` (Deng et al., ICLR 2020; METHODS.md §3).
"""

from __future__ import annotations

from typing import Literal, Optional

import torch

from seqenv.tasks import Task

from .common.resampling import importance_resample
from .common.rollout import generate
from .common.trajectory import sequence_batch
from .critic import SequenceCritic
from .earm import energy_rerank
from .policies import Policy


@torch.no_grad()
def rerank_energy(policy, sequences, terminated, num_candidates: int, generator: torch.Generator, device):
    """Indices ``[N]`` of the chosen candidates by E-ARM energy, and the energies ``[N, K]``."""
    tokens, mask = sequence_batch(sequences, terminated, device, ids=policy)
    logits = getattr(policy, "module", policy)(tokens)
    choice, energies = energy_rerank(logits.float(), tokens, mask, num_candidates, generator=generator)
    return choice, energies


@torch.no_grad()
def rerank_critic(critic, sequences, terminated, num_candidates: int, generator: torch.Generator, device,
                  temperature: float = 1.0, ids=None):
    """Indices ``[N]`` of the chosen candidates by SIR with weights ``exp(−E_ψ/τ)``, and the ESS ``[N]``.

    ``ids``: the special ids of the critic's vocabulary (default the fixed ids).

    :raises ValueError: on ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    tokens, mask = sequence_batch(sequences, terminated, device, ids=ids)
    energies = critic(tokens, mask).float().view(-1, num_candidates)
    return importance_resample(-energies / temperature, generator)


def generate_texts(
    policy: Policy,
    task: Task,
    num_samples: int,
    *,
    rerank: Literal["none", "energy", "critic"] = "none",
    candidates: int = 8,
    critic: Optional[SequenceCritic] = None,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    seed: int = 0,
    batch_size: int = 256,
    device: "torch.device | str" = "cpu",
) -> list[str]:
    """Generate ``num_samples`` texts (prompt + generation, decoded; newlines escaped).

    :param rerank: ``"none"``, ``"energy"`` or ``"critic"`` (needs ``critic``).
    :param candidates: K candidates per output when reranking (>= 1).
    :raises ValueError: on ``num_samples < 1``, ``candidates < 1``, or
        ``rerank="critic"`` without a critic.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if rerank == "critic" and critic is None:
        raise ValueError("rerank='critic' needs a critic (a checkpoint written by train.py --agent nce)")
    k = 1 if rerank == "none" else candidates
    results = generate(policy, task, num_samples * k, batch_size=batch_size * k if k > 1 else batch_size,
                       device=device, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p)
    seqs = [s for r in results for s in r.sequences()]
    prompts = [p for r in results for p in r.prompts()]
    if k > 1:
        terminated = [bool(t) for r in results for t in r.terminated.tolist()]
        gen = torch.Generator(device=device).manual_seed(seed)
        if rerank == "energy":
            choice, _ = rerank_energy(policy, seqs, terminated, k, gen, device)
        else:
            choice, _ = rerank_critic(critic, seqs, terminated, k, gen, device, ids=task)
        idx = (torch.arange(num_samples, device=choice.device) * k + choice).tolist()
        seqs, prompts = [seqs[i] for i in idx], [prompts[i] for i in idx]
    tok = task.tokenizer
    return [(tok.decode(p) + tok.decode(s)).replace("\n", "\\n") for p, s in zip(prompts, seqs)]
