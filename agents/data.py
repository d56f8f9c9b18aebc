"""Demonstrations as policy input: sampling from a task split and collating.

A trajectory is laid out as in docs/internals.md: ``[bos, prompt...,
a_1..a_n, pad...]``. Demonstrations are the task's sequences followed by
``eos`` (so they terminate: the absorbing state follows).
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from seqenv.oracle import pad_sequences
from seqenv.tasks import Task
from seqenv.tokenizers import BACKSPACE_ID, BOS_ID, EOS_ID, PAD_ID

from .sequencematch import TrajectoryBatch


def collate(
    actions: Sequence[Sequence[int]],
    prompts: Optional[Sequence[Sequence[int]]] = None,
    device: "torch.device | str" = "cpu",
    width: Optional[int] = None,
) -> TrajectoryBatch:
    """Lay out action histories (with their prompts) as a :class:`TrajectoryBatch`.

    :param actions: per row, the agent's actions (may contain ``backspace``;
        a row ending in ``eos`` is terminated, otherwise truncated).
    :param prompts: per row, prompt token ids (never actions), or ``None``.
    :param width: pad every row to this many positions (default: the longest
        row, ``1 + len(prompt) + len(actions)``).
    :return: batch with ``tokens`` LongTensor ``[B, T]``, ``action_mask``
        BoolTensor ``[B, T]`` and ``terminated`` BoolTensor ``[B]`` on ``device``.
    :raises ValueError: on an empty row, or rows longer than ``width``.
    """
    if prompts is None:
        prompts = [()] * len(actions)
    if len(prompts) != len(actions):
        raise ValueError(f"got {len(actions)} action rows but {len(prompts)} prompts")
    rows = [[BOS_ID, *p, *a] for p, a in zip(prompts, actions)]
    if any(len(a) == 0 for a in actions):
        raise ValueError("every trajectory needs at least one action; got an empty row")
    T = max(map(len, rows)) if width is None else width
    if max(map(len, rows)) > T:
        raise ValueError(f"a trajectory has {max(map(len, rows))} positions, more than width={T}")
    tokens = torch.full((len(rows), T), PAD_ID, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (row, p) in enumerate(zip(rows, prompts)):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, 1 + len(p) : len(row)] = True
    terminated = torch.tensor([len(a) > 0 and a[-1] == EOS_ID for a in actions], dtype=torch.bool)
    return TrajectoryBatch(tokens.to(device), mask.to(device), terminated.to(device))


def noise_token_mask(batch: TrajectoryBatch) -> torch.Tensor:
    """BoolTensor ``[B, T]``: actions that a later ``backspace`` deletes (injected errors).

    A token is deleted iff the stack of its row pops it; computed by replaying
    the backspaces (vectorised over rows, a loop over positions).
    """
    tokens, amask = batch.tokens, batch.action_mask
    B, T = tokens.shape
    deleted = torch.zeros_like(amask)
    stack = torch.zeros((B, T), dtype=torch.long, device=tokens.device)  # positions on the stack
    depth = torch.zeros(B, dtype=torch.long, device=tokens.device)
    rows = torch.arange(B, device=tokens.device)
    for t in range(T):
        act, tok = amask[:, t], tokens[:, t]
        pop = act & (tok == BACKSPACE_ID) & (depth > 0)
        top = stack[rows, (depth - 1).clamp(min=0)]
        deleted[rows[pop], top[pop]] = True
        depth = depth - pop.long()
        push = act & (tok != BACKSPACE_ID) & (tok != EOS_ID)
        stack[rows[push], depth[push]] = t
        depth = depth + push.long()
    return deleted & amask


def sequence_batch(sequences: list[list[int]], terminated: list[bool], device) -> tuple[torch.Tensor, torch.Tensor]:
    """Complete sequences (no backspaces) laid out for scoring: ``tokens`` LongTensor
    ``[B, T]`` = ``[bos, x..., eos?, pad...]`` and the predicted-position ``mask``
    BoolTensor ``[B, T]`` (``x`` and ``eos``; truncated rows have no ``eos``).

    Used by E-ARM, NCE and reranking (teacher-forced scoring of final
    sequences). Empty truncated rows keep one predicted position (a pad) so that every row is scored.
    """
    rows = [[BOS_ID, *s] + ([EOS_ID] if t else []) for s, t in zip(sequences, terminated)]
    rows = [r if len(r) > 1 else r + [0] for r in rows]
    tokens, lengths = pad_sequences(rows)
    mask = torch.arange(tokens.shape[1])[None] < lengths[:, None]
    mask[:, 0] = False
    return tokens.to(device), mask.to(device)


class DemoSampler:
    """Uniform minibatches of demonstrations from a task split, reproducibly.

    :param task: the task; its ``split`` sequences are the demonstrations.
    :param generator: ``torch.Generator`` owning the sampling stream (its state
        goes into checkpoints so a resumed run draws the same batches).
    :raises ValueError: if the split is empty.
    """

    def __init__(self, task: Task, split: str = "train", generator: Optional[torch.Generator] = None):
        self.sequences = [s for s in task.encoded(split) if len(s) + 1 < task.max_length + 1]
        if not self.sequences:
            raise ValueError(f"task {task.name!r} has no {split!r} sequences that fit max_length={task.max_length}")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)

    def sample(self, batch_size: int) -> list[list[int]]:
        """``batch_size`` demonstrations, each ending in ``eos``."""
        idx = torch.randint(len(self.sequences), (batch_size,), generator=self.generator).tolist()
        return [self.sequences[i] + [EOS_ID] for i in idx]
