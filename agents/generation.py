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

On a task with prompts the ``K`` candidates of one output share its prompt
(conditional reranking: the critic reads prompt + completion, the policy's
energy is conditional on the prompt): prompts are drawn first (paired tasks:
the ``test`` split's questions, as :func:`agents.common.evaluation.evaluate_policy`;
other prompted tasks: ``task.prompts``), then each is played ``K`` times.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from seqenv.tasks import Task

from .common.resampling import importance_resample
from .common.rollout import generate
from .common.trajectory import TrajectoryBatch
from .critic import SequenceCritic, critic_batch
from .earm import energy_rerank
from .policies import Policy

SCORE_CHUNK = 4096  # rows per forward pass when scoring candidates (bounds the activation memory)


def _in_chunks(fn, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn`` applied to :data:`SCORE_CHUNK` rows of ``tensors`` at a time, outputs concatenated (float32)."""
    n = len(tensors[0])
    return torch.cat([fn(*(t[i : i + SCORE_CHUNK] for t in tensors)).float() for i in range(0, n, SCORE_CHUNK)])


@torch.no_grad()
def rerank_energy(policy, sequences, terminated, num_candidates: int, generator: torch.Generator, device, prompts=None):
    """Indices ``[N]`` of the chosen candidates by E-ARM energy, and the energies ``[N, K]``
    (``prompts``: per row the prompt ids the policy conditions on, or None)."""
    batch = TrajectoryBatch.of_sequences(sequences, terminated, device, prompts=prompts, ids=policy)
    logits = _in_chunks(getattr(policy, "module", policy), batch.tokens)
    choice, energies = energy_rerank(logits, batch, num_candidates, generator=generator)
    return choice, energies


@torch.no_grad()
def rerank_critic(
    critic,
    sequences,
    terminated,
    num_candidates: int,
    generator: torch.Generator,
    device,
    temperature: float = 1.0,
    prompts=None,
    ids=None,
):
    """Indices ``[N]`` of the chosen candidates by SIR with weights ``exp(−E_ψ/τ)``, and the ESS ``[N]``.

    Rows ``i·K .. i·K + K − 1`` are the candidates of output ``i``; with
    ``prompts`` (per row the prompt ids) the critic reads prompt + completion.
    ``ids``: the special ids of the critic's vocabulary (default the fixed ids).

    :raises ValueError: on ``temperature <= 0``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    tokens, mask = critic_batch(prompts, sequences, terminated, device, ids=ids)
    energies = _in_chunks(critic, tokens, mask).view(-1, num_candidates)
    return importance_resample(-energies / temperature, generator)


@dataclass
class Generation:
    """Outputs of :func:`generate_reranked`.

    :param sequences: chosen generated tokens per output (no prompt, no eos).
    :param prompts: prompt ids per output (``[]`` on unconditional tasks).
    :param terminated: per output, whether it ended with ``eos``.
    :param ess: FloatTensor ``[N]``: effective sample size of each output's
        reranking weights (``K`` = uniform, 1 = one candidate takes all), or
        None without reranking.
    """

    sequences: list[list[int]]
    prompts: list[list[int]]
    terminated: list[bool]
    ess: torch.Tensor | None = None

    def texts(self, tokenizer) -> list[str]:
        """Prompt + generation per output, decoded; newlines escaped as ``\\n``."""
        return [
            (tokenizer.decode(p) + tokenizer.decode(s)).replace("\n", "\\n")
            for p, s in zip(self.prompts, self.sequences)
        ]


def generation_prompts(task: Task, num_samples: int, seed: int) -> list[str] | None:
    """The prompt of each output on a task with prompts (None on an unconditional task):
    drawn uniformly with replacement (``torch.Generator`` seeded with ``seed``) from the
    ``test`` split's questions on a paired task, else from ``task.prompts``."""
    if task.prompts is None:
        return None
    pool = task.split_prompt_texts("test") if task.paired else list(task.prompts)
    idx = torch.randint(len(pool), (num_samples,), generator=torch.Generator().manual_seed(seed)).tolist()
    return [pool[i] for i in idx]


def generate_reranked(
    policy: Policy,
    task: Task,
    num_samples: int,
    *,
    rerank: Literal["none", "energy", "critic"] = "none",
    candidates: int = 8,
    critic: SequenceCritic | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> Generation:
    """``num_samples`` outputs, each one of ``candidates`` policy samples chosen by ``rerank``.

    Unconditional task and no reranking: :func:`agents.common.rollout.generate`.
    With prompts, every output's candidates share its prompt
    (:func:`generation_prompts`; rows are played with forced prompts, so
    ``candidates=1`` is the raw baseline of the same prompts).

    :raises ValueError: on ``num_samples < 1``, ``candidates < 1``, or
        ``rerank="critic"`` without a critic.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    if rerank not in ("none", "energy", "critic"):
        raise ValueError(f"rerank must be 'none', 'energy' or 'critic', got {rerank!r}")
    if rerank == "critic" and critic is None:
        raise ValueError("rerank='critic' needs a critic (a checkpoint written by train.py --agent nce)")
    k = 1 if rerank == "none" else candidates
    prompts = generation_prompts(task, num_samples, seed)
    results = generate(
        policy,
        task,
        num_samples * k,
        prompts=None if prompts is None else [p for p in prompts for _ in range(k)],
        batch_size=batch_size * k if k > 1 else batch_size,
        device=device,
        seed=seed,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
    )
    seqs = [s for r in results for s in r.sequences()]
    prompt_ids = [p for r in results for p in r.prompts()]
    terminated = [bool(t) for r in results for t in r.terminated.tolist()]
    ess = None
    if k > 1:
        gen = torch.Generator(device=device).manual_seed(seed)
        row_prompts = prompt_ids if prompts is not None else None
        if rerank == "energy":
            choice, _ = rerank_energy(policy, seqs, terminated, k, gen, device, prompts=row_prompts)
        else:
            choice, ess = rerank_critic(critic, seqs, terminated, k, gen, device, prompts=row_prompts, ids=task)
        idx = (torch.arange(num_samples, device=choice.device) * k + choice).tolist()
        seqs, prompt_ids, terminated = (
            [seqs[i] for i in idx],
            [prompt_ids[i] for i in idx],
            [terminated[i] for i in idx],
        )
    return Generation(seqs, prompt_ids, terminated, ess)


def generate_texts(policy: Policy, task: Task, num_samples: int, **kwargs) -> list[str]:
    """Generate ``num_samples`` texts (prompt + generation, decoded; newlines escaped).

    Keyword arguments are :func:`generate_reranked`'s (``rerank``,
    ``candidates``, ``critic``, ``temperature``, ``top_k``, ``top_p``,
    ``seed``, ``batch_size``, ``device``).

    :raises ValueError: as :func:`generate_reranked`.
    """
    return generate_reranked(policy, task, num_samples, **kwargs).texts(task.tokenizer)
