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

    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """Start incremental decoding (no gradients).

        :param tokens: LongTensor ``[B, T]``; row ``b``'s state is
            ``tokens[b, :lengths[b]]`` = ``[bos, ...]`` with no backspace.
        :param lengths: LongTensor ``[B]`` in ``[1, T]``.
        :return: ``(cache, logits FloatTensor[B, V])``; the cache is opaque.
        """

    def decode_step(self, cache: Any, actions: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Apply one action per row (in place; no gradients): ``backspace`` pops the
        row's top token (per-row KV rollback), any other id is pushed; rows with
        ``active[b] == False`` are unchanged.

        :return: FloatTensor ``[B, V]``, logits of each row's state after the step.
        """

    def policy_spec(self) -> dict:
        """JSON-able ``{"family": ..., "config": {...}}``; :func:`agents.policies.build_policy` rebuilds it."""

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def state_dict(self, *args, **kwargs) -> dict: ...
