"""The Policy protocol: what rollout, evaluation and every learner need from a policy.

Nothing in ``agents`` outside ``agents/policies/`` depends on a concrete policy
class; a new family (e.g. a Hugging Face causal LM) plugs in by satisfying
this protocol and registering a builder in :mod:`agents.policies`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class Policy(Protocol):
    """A backspace-aware autoregressive policy whose logits are soft Q-values.

    Implementations are ``torch.nn.Module``\\ s (``parameters()``,
    ``state_dict()``, ``load_state_dict()``, ``to()``, ``train()``/``eval()``).

    :ivar family: registry name of the policy family (``"transformer"``, ``"hf"``).
    :ivar special_ids: ids of ``pad``, ``bos``, ``eos``, ``backspace`` (and
        more) in the policy's vocabulary.
    :ivar vocab_size: number of action ids, the last dimension of the logits.
    :ivar max_state_length: the longest state (bos + prompt + generated) the
        policy reads.
    """

    family: str
    special_ids: dict[str, int]
    vocab_size: int
    max_state_length: int

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits of every state along a batch of trajectories, in ONE pass.

        :param tokens: LongTensor ``[B, T]``, rows ``[bos, prompt..., a_1..a_n,
            pad...]`` whose actions may contain ``backspace`` (pads only at the end).
        :return: FloatTensor ``[B, T, V]``; ``[:, i]`` = logits of the state
            reached after ``tokens[:, :i+1]`` with backspaces applied
            (METHODS.md §1 layout).
        """
        ...

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Start incremental decoding (no gradients).

        :param tokens: LongTensor ``[B, T]``; row ``b``'s state is
            ``tokens[b, :lengths[b]]`` = ``[bos, ...]`` with no backspace.
        :param lengths: LongTensor ``[B]`` in ``[1, T]``.
        :return: ``(cache, logits FloatTensor[B, V])``; the cache is opaque.
        """
        ...

    def decode_step(self, cache: Any, actions: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Apply one action per row (in place; no gradients): ``backspace`` pops the
        row's top token (per-row KV rollback), any other id is pushed; rows with
        ``active[b] == False`` are unchanged.

        :return: FloatTensor ``[B, V]``, logits of each row's state after the step.
        """
        ...

    def policy_spec(self) -> dict:
        """JSON-able ``{"family": ..., "config": {...}}``; :func:`agents.policies.build_policy` rebuilds it."""
        ...

    # the torch.nn.Module methods that rollout, the learners and the checkpoints call
    def __call__(self, tokens: torch.Tensor) -> torch.Tensor: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def modules(self) -> Iterator[torch.nn.Module]: ...

    def state_dict(self, *args, **kwargs) -> dict: ...

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any: ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...

    def requires_grad_(self, requires_grad: bool = True) -> Any: ...


# ---------------------------------------------------------------------------
# the argument checks every policy's forward / prefill / decode_step runs (one message format)


def check_token_ids(tokens: torch.Tensor, vocab_size: int, name: str = "tokens") -> None:
    """Raise unless every id in ``tokens`` (LongTensor, any shape) lies in ``[0, vocab_size)``.

    :raises ValueError: ``"tokens[0, 3] = 70 is not a token id in [0, 64)"`` (the first bad entry).
    """
    bad = (tokens < 0) | (tokens >= vocab_size)
    if bad.any():
        idx = tuple(bad.nonzero()[0].tolist())
        raise ValueError(f"{name}{list(idx)} = {int(tokens[idx])} is not a token id in [0, {vocab_size})")


def check_prefill(
    policy: Policy, tokens: torch.Tensor, lengths: torch.Tensor, limit: str = "max_state_length"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``policy.prefill``'s arguments; return them normalised.

    :param policy: its ``vocab_size``, ``max_state_length`` and ``special_ids``
        (``"pad"``, ``"backspace"``) are used.
    :param tokens: LongTensor ``[B, T]``; row ``b``'s state is ``tokens[b, :lengths[b]]``.
    :param lengths: LongTensor ``[B]`` in ``[1, T]``.
    :param limit: the name of ``max_state_length`` in messages (``"block_size"``).
    :return: ``(tokens, lengths, in_state)``: tokens with every entry past a row's
        length set to pad (LongTensor ``[B, T]``), lengths as LongTensor ``[B]`` on
        the tokens' device, and BoolTensor ``[B, T]`` (True inside the state).
    :raises ValueError: on bad shapes, ``T > max_state_length``, lengths outside ``[1, T]``,
        ids outside the vocabulary, or a backspace inside a state.
    """
    max_len, ids = policy.max_state_length, policy.special_ids
    if tokens.dim() != 2 or lengths.shape != tokens.shape[:1]:
        raise ValueError(
            f"expected tokens [B, T] and lengths [B], got {tuple(tokens.shape)} and {tuple(lengths.shape)}"
        )
    T = tokens.shape[1]
    if T > max_len:
        raise ValueError(f"prefill length T={T} exceeds {limit}={max_len}")
    if ((lengths < 1) | (lengths > T)).any():
        raise ValueError(f"lengths must be in [1, {T}], got {lengths.tolist()}")
    lengths = lengths.to(device=tokens.device, dtype=torch.long)
    in_state = torch.arange(T, device=tokens.device)[None, :] < lengths[:, None]
    tokens = torch.where(in_state, tokens, ids["pad"])
    check_token_ids(tokens, policy.vocab_size)
    if ((tokens == ids["backspace"]) & in_state).any():
        raise ValueError("prefill states must not contain backspace; reduce the trajectories first")
    return tokens, lengths, in_state


def check_decode_step(
    policy: Policy,
    lengths: torch.Tensor,
    actions: torch.Tensor,
    active: torch.Tensor | None,
    limit: str = "max_state_length",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check ``policy.decode_step``'s arguments before any change to the cache (one host sync).

    :param policy: its ``vocab_size``, ``max_state_length`` and ``special_ids["backspace"]`` are used.
    :param lengths: LongTensor ``[B]``, each row's state length in the cache.
    :param actions: LongTensor ``[B]``.
    :param active: BoolTensor ``[B]`` or None (all rows active).
    :param limit: the name of ``max_state_length`` in messages (``"block_size"``).
    :return: ``(actions, active, pop, push)``, all ``[B]`` on ``lengths``' device:
        actions as LongTensor, active as BoolTensor, and the BoolTensors of the
        active rows that pop (backspace) and push (any other id).
    :raises ValueError: on bad shapes, ids outside the vocabulary, a push beyond
        ``max_state_length`` or a pop of bos (the first bad row named).
    """
    vocab_size, max_len, backspace_id = policy.vocab_size, policy.max_state_length, policy.special_ids["backspace"]
    B = lengths.shape[0]
    if actions.shape != (B,) or (active is not None and active.shape != (B,)):
        raise ValueError(
            f"actions and active must have shape ({B},), got {tuple(actions.shape)} and "
            f"{None if active is None else tuple(active.shape)}"
        )
    device = lengths.device
    actions = actions.to(device=device, dtype=torch.long)
    active = torch.ones(B, dtype=torch.bool, device=device) if active is None else active.to(device, torch.bool)
    pop = active & (actions == backspace_id)
    push = active & ~pop
    bad_id = active & ((actions < 0) | (actions >= vocab_size))
    bad_pop = pop & (lengths <= 1)
    bad_push = push & (lengths >= max_len)
    if (bad_id | bad_pop | bad_push).any():
        for bad, what in (
            (bad_id, f"action id outside [0, {vocab_size})"),
            (bad_pop, "backspace would delete bos (state length 1)"),
            (bad_push, f"push would exceed {limit}={max_len}"),
        ):
            if bad.any():
                b = int(bad.nonzero()[0])
                raise ValueError(f"row {b}: {what}; action {int(actions[b])}, length {int(lengths[b])}")
    return actions, active, pop, push
