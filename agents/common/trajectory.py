"""Trajectories as policy input: :class:`TrajectoryBatch`, collation, one log-probability gather.

A trajectory is laid out as in docs/internals.md: ``tokens[b] = [bos,
prompt..., a_1..a_n, pad...]``; the policy's ``logits[:, i]`` are those of the
state reached after ``tokens[:, :i+1]`` (backspaces applied), so the action at
index ``i`` is taken in the state whose logits are ``logits[:, i-1]`` and
leads to the state whose logits are ``logits[:, i]``.

Every per-position quantity in ``agents`` uses this ``[B, T]`` convention:
column ``i`` belongs to the token at index ``i`` (0 where it is not an action).
:func:`token_log_probs` is the one gather of ``log π(a_i | s_i)``; learners
sum or mask it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from seqenv.oracle import pad_sequences
from seqenv.tokenizers import DEFAULT_SPECIAL_IDS, SpecialIds


@dataclass
class TrajectoryBatch:
    """A batch of trajectories laid out as policy input (docs/internals.md).

    :param tokens: LongTensor[B, T], rows ``[bos, prompt..., a_1..a_n, pad...]``.
    :param is_action: BoolTensor[B, T], True at index ``i`` iff ``tokens[:, i]``
        is an action the agent took (not bos, prompt or pad). The actions of a
        row are one contiguous run starting at index >= 1. (Not to be confused
        with the env's legal-action mask, ``info["action_mask"]``.)
    :param terminated: BoolTensor[B], True iff the row's last action is ``eos``
        (an absorbing state follows); False = truncated.
    :param ids: the vocabulary's special ids (default: the fixed ids of our
        char/BPE tokenizers; an HF policy's come from its tokenizer).
    :raises ValueError: on wrong shapes/dtypes, an action at index 0, a row with
        no action, non-contiguous actions, an ``eos`` action before the last
        action, or ``terminated`` disagreeing with "last action is eos".
    """

    tokens: torch.Tensor
    is_action: torch.Tensor
    terminated: torch.Tensor
    ids: SpecialIds = field(default=DEFAULT_SPECIAL_IDS)

    def __post_init__(self) -> None:
        tokens, mask, term = self.tokens, self.is_action, self.terminated
        eos_id = self.ids.eos
        for name in ("tokens", "is_action", "terminated"):
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if tokens.dim() != 2 or tokens.dtype != torch.long or tokens.shape[0] < 1:
            raise ValueError(
                f"tokens must be a LongTensor [B, T] with B >= 1, got {tokens.dtype} {tuple(tokens.shape)}"
            )
        if mask.shape != tokens.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"is_action must be a BoolTensor of shape {tuple(tokens.shape)}, got {mask.dtype} {tuple(mask.shape)}"
            )
        if term.shape != tokens.shape[:1] or term.dtype != torch.bool:
            raise ValueError(
                f"terminated must be a BoolTensor of shape ({tokens.shape[0]},), got {term.dtype} {tuple(term.shape)}"
            )
        if mask[:, 0].any():
            raise ValueError("is_action[:, 0] must be False: index 0 holds bos, not an action")
        n = mask.sum(1)
        if (n == 0).any():
            b = int((n == 0).nonzero()[0])
            raise ValueError(f"row {b} has no action; every trajectory needs at least one action")
        first, last = self.first_action_index(), self.last_action_index()
        idx = torch.arange(tokens.shape[1], device=tokens.device)
        if not torch.equal(mask, (idx >= first[:, None]) & (idx <= last[:, None])):
            raise ValueError("the actions of each row must be one contiguous run of indices")
        is_eos = (tokens == eos_id) & mask
        ends_eos = tokens.gather(1, last[:, None]).squeeze(1) == eos_id
        if (is_eos.sum(1) > ends_eos.long()).any():
            raise ValueError(f"eos (id {eos_id}) may only be the last action of a row")
        if not torch.equal(term, ends_eos):
            b = int((term != ends_eos).nonzero()[0])
            raise ValueError(
                f"row {b}: terminated={bool(term[b])} but its last action is "
                f"{int(tokens[b, last[b]])}; expected terminated == (last action is eos={eos_id})"
            )

    @property
    def num_actions(self) -> torch.Tensor:
        """LongTensor[B]: number of actions ``N`` of each row."""
        return self.is_action.sum(1)

    def first_action_index(self) -> torch.Tensor:
        """LongTensor[B]: index of each row's first action (its state s_0 has logits at index - 1)."""
        return self.is_action.long().argmax(1)

    def last_action_index(self) -> torch.Tensor:
        """LongTensor[B]: index of each row's last action."""
        return self.first_action_index() + self.num_actions - 1

    def check_logits(self, logits: torch.Tensor, name: str = "logits") -> None:
        """Raise unless ``logits`` are a policy's output on this batch.

        :param logits: FloatTensor ``[B, T, V]`` (any floating dtype) with ``[B, T]`` = ``tokens.shape``.
        :raises ValueError: on another shape or dtype, or a token id outside ``[0, V)``.
        """
        B, T = self.tokens.shape
        if not isinstance(logits, torch.Tensor) or logits.dim() != 3 or not logits.is_floating_point():
            raise ValueError(
                f"{name} must be a floating tensor [B, T, V] with [B, T] = {(B, T)}, got "
                f"{getattr(logits, 'dtype', type(logits))} {tuple(getattr(logits, 'shape', ()))}"
            )
        if logits.shape[:2] != self.tokens.shape:
            raise ValueError(f"{name} must have shape [{B}, {T}, V], got {logits.dtype} {tuple(logits.shape)}")
        V = logits.shape[2]
        lo, hi = int(self.tokens.min()), int(self.tokens.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"{name}: token ids must lie in [0, {V}) (V = logits.shape[-1]), got range [{lo}, {hi}]")

    def to(self, device: torch.device | str) -> TrajectoryBatch:
        """Return a copy with every tensor on ``device``."""
        return TrajectoryBatch(self.tokens.to(device), self.is_action.to(device), self.terminated.to(device), self.ids)

    @classmethod
    def from_actions(
        cls,
        actions: Sequence[Sequence[int]],
        prompts: Sequence[Sequence[int]] | None = None,
        device: torch.device | str | None = None,
        ids=None,
    ) -> TrajectoryBatch:
        """Same as :func:`collate` (kept as the constructor spelling).

        :raises ValueError: if ``actions`` is empty, or as :func:`collate`.
        """
        if not actions:
            raise ValueError("actions is empty; a batch needs at least one trajectory")
        return collate(actions, prompts, device=device if device is not None else "cpu", ids=ids)

    @classmethod
    def of_sequences(
        cls,
        sequences: Sequence[Sequence[int]],
        terminated: Sequence[bool],
        device: torch.device | str = "cpu",
        prompts: Sequence[Sequence[int]] | None = None,
        ids=None,
    ) -> TrajectoryBatch:
        """Final sequences (no backspaces) laid out for teacher-forced scoring.

        :param sequences: generated tokens of each row (no bos, no prompt, no eos).
        :param terminated: per row, whether an ``eos`` follows.
        :param prompts: optional prompt ids per row (conditioned on, never scored).
        :param ids: special ids (as :func:`collate`).
        :return: a batch whose ``tokens`` LongTensor ``[B, T]`` = ``[bos,
            prompt..., x..., eos?, pad...]`` and whose ``is_action`` BoolTensor
            ``[B, T]`` marks the scored (predicted) positions (``x`` and
            ``eos``; truncated rows have no ``eos``). Empty truncated rows keep
            one scored position (a pad) so that every row is scored.
        :raises ValueError: on an empty list of sequences.

        Used by E-ARM, NCE, GRPO's critic reward and reranking.
        """
        if len(sequences) == 0:
            raise ValueError("sequences is empty; a batch needs at least one sequence")
        ids = SpecialIds.of(ids)
        if prompts is None:
            prompts = [()] * len(sequences)
        rows = [[ids.bos, *p, *s] + ([ids.eos] if t else []) for p, s, t in zip(prompts, sequences, terminated)]
        starts = [1 + len(p) for p in prompts]
        rows = [r if len(r) > s else r + [ids.pad] for r, s in zip(rows, starts)]
        tokens, lengths = pad_sequences(rows, pad_id=ids.pad)
        idx = torch.arange(tokens.shape[1])[None]
        mask = (idx < lengths[:, None]) & (idx >= torch.tensor(starts)[:, None])
        term = torch.tensor([bool(t) for t in terminated], dtype=torch.bool)
        return cls(tokens.to(device), mask.to(device), term.to(device), ids)


def collate(
    actions: Sequence[Sequence[int]],
    prompts: Sequence[Sequence[int]] | None = None,
    device: torch.device | str = "cpu",
    width: int | None = None,
    ids=None,
) -> TrajectoryBatch:
    """Lay out action histories (with their prompts) as a :class:`TrajectoryBatch`.

    :param actions: per row, the agent's actions (may contain ``backspace``;
        a row ending in ``eos`` is terminated, otherwise truncated).
    :param prompts: per row, prompt token ids (never actions), or ``None``.
    :param width: pad every row to this many positions (default: the longest
        row, ``1 + len(prompt) + len(actions)``).
    :param ids: special ids, anything :meth:`seqenv.tokenizers.SpecialIds.of`
        takes (a tokenizer, a policy, a task; default: the fixed ids).
    :return: batch with ``tokens`` LongTensor ``[B, T]``, ``is_action``
        BoolTensor ``[B, T]`` and ``terminated`` BoolTensor ``[B]`` on ``device``.
    :raises ValueError: on an empty row, prompts of the wrong count, or rows
        longer than ``width``.
    """
    ids = SpecialIds.of(ids)
    if prompts is None:
        prompts = [()] * len(actions)
    if len(prompts) != len(actions):
        raise ValueError(f"got {len(actions)} action rows but {len(prompts)} prompts")
    rows = [[ids.bos, *p, *a] for p, a in zip(prompts, actions)]
    empty = [i for i, a in enumerate(actions) if len(a) == 0]
    if empty:
        raise ValueError(f"row {empty[0]} has no action; every trajectory needs at least one action")
    T = max(map(len, rows)) if width is None else width
    if max(map(len, rows)) > T:
        raise ValueError(f"a trajectory has {max(map(len, rows))} positions, more than width={T}")
    tokens = torch.full((len(rows), T), ids.pad, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.bool)
    for i, (row, p) in enumerate(zip(rows, prompts)):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, 1 + len(p) : len(row)] = True
    terminated = torch.tensor([len(a) > 0 and a[-1] == ids.eos for a in actions], dtype=torch.bool)
    return TrajectoryBatch(tokens.to(device), mask.to(device), terminated.to(device), ids)


def wrong_token_mask(batch: TrajectoryBatch) -> torch.Tensor:
    """BoolTensor ``[B, T]``: actions that a later ``backspace`` deletes (injected wrong tokens).

    A token is deleted iff the stack of its row pops it; computed by replaying
    the backspaces (vectorised over rows, a loop over positions).
    """
    tokens, amask = batch.tokens, batch.is_action
    backspace_id, eos_id = batch.ids.backspace, batch.ids.eos
    B, T = tokens.shape
    deleted = torch.zeros_like(amask)
    stack = torch.zeros((B, T), dtype=torch.long, device=tokens.device)  # positions on the stack
    depth = torch.zeros(B, dtype=torch.long, device=tokens.device)
    rows = torch.arange(B, device=tokens.device)
    for t in range(T):
        act, tok = amask[:, t], tokens[:, t]
        pop = act & (tok == backspace_id) & (depth > 0)
        top = stack[rows, (depth - 1).clamp(min=0)]
        deleted[rows[pop], top[pop]] = True
        depth = depth - pop.long()
        push = act & (tok != backspace_id) & (tok != eos_id)
        stack[rows[push], depth[push]] = t
        depth = depth + push.long()
    return deleted & amask


def sequence_batch(
    sequences: Sequence[Sequence[int]],
    terminated: Sequence[bool],
    device: torch.device | str = "cpu",
    prompts: Sequence[Sequence[int]] | None = None,
    ids=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch.tokens, batch.is_action)`` of :meth:`TrajectoryBatch.of_sequences` (same arguments).

    For the callers not yet moved to the batch type (the NCE critic's inputs); new code
    takes the :class:`TrajectoryBatch`.
    """
    batch = TrajectoryBatch.of_sequences(sequences, terminated, device, prompts, ids)
    return batch.tokens, batch.is_action


def token_log_probs(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log π(tokens[:, i] | state before i)`` at every predicted position: the one gather.

    :param logits: FloatTensor ``[B, T, V]`` from the policy on ``tokens``
        (``logits[:, i-1]`` predicts ``tokens[:, i]``); bf16/fp16 are upcast
        to float32.
    :param tokens: LongTensor ``[B, T]``.
    :param mask: BoolTensor ``[B, T]``, True where ``tokens[:, i]`` is scored
        (a :class:`TrajectoryBatch`'s ``is_action``, or a sequence batch's
        predicted positions); ``mask[:, 0]`` must be False.
    :return: FloatTensor ``[B, T]`` (float32 or wider), nats; column ``i``
        belongs to ``tokens[:, i]``; 0 where ``mask`` is False.
    :raises ValueError: on mismatched shapes or ``mask[:, 0]`` True.
    """
    if logits.dim() != 3 or logits.shape[:2] != tokens.shape or mask.shape != tokens.shape:
        raise ValueError(
            f"expected logits [B, T, V] with tokens and mask [B, T]; got {tuple(logits.shape)}, "
            f"{tuple(tokens.shape)}, {tuple(mask.shape)}"
        )
    if mask[:, 0].any():
        raise ValueError("mask[:, 0] must be False: index 0 holds bos, which no logits predict")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = logits[:, :-1].to(dtype).log_softmax(-1).gather(-1, tokens[:, 1:, None]).squeeze(-1)
    logp = F.pad(logp, (1, 0))
    return torch.where(mask, logp, torch.zeros_like(logp))


def action_log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """The full action distribution of the state in which each column's token is taken.

    :param logits: FloatTensor ``[B, T, V]`` from the policy on ``tokens``
        (``logits[:, i-1]`` predicts ``tokens[:, i]``); bf16/fp16 are upcast to float32.
    :return: FloatTensor ``[B, T, V]``, nats: column ``i`` holds
        ``log π(· | state before tokens[:, i])``; column 0 (bos, predicted by
        nothing) is all zeros. ``action_log_softmax(l).gather(-1, tokens[..., None])``
        equals :func:`token_log_probs` where the mask is True.
    :raises ValueError: if ``logits`` is not 3-D.
    """
    if logits.dim() != 3:
        raise ValueError(f"expected logits [B, T, V], got {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    return F.pad(logits[:, :-1].to(dtype).log_softmax(-1), (0, 0, 1, 0))
