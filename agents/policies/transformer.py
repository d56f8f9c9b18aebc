"""The backspace-aware causal transformer policy (a nanoGPT-sized GPT).

The policy reads a trajectory ``[bos, prompt..., a_1, ..., a_n]`` whose
actions may include ``backspace`` and, in ONE forward pass, outputs at every
index ``i`` the logits ``l(s_i, .)`` of the state ``s_i`` reached after
consuming ``tokens[:, :i+1]`` with the backspaces applied (METHODS.md §1,
"One forward pass over a trajectory with backspaces"; SequenceMatch,
Cundy & Ermon, ICLR 2024, arXiv 2306.05426, "Algorithm A").
The logits are read as soft Q-values ``Q(s, a) = l(s, a)`` by the learners.

Backspace layout [paper: exists as Algorithm A; the exact layout is recon]
-----------------------------------------------------------------------
Walk the trajectory left to right keeping a stack: the current state.
A normal token is pushed; a backspace pops the top; a pad changes nothing.

=================  ===============  =====================  ==========================
position holds     input id         position id            attends to (mask row)
=================  ===============  =====================  ==========================
normal token       the token        its index in the       the stack after the push
                                    current state          (itself included)
backspace          the new top      the new top's          the stack after the pop
                   (bos if the      position id            MINUS its top, plus itself
                   state is empty)
pad                pad              0                      itself only
=================  ===============  =====================  ==========================

Deleted tokens and backspaces are never on the stack, so later positions do
not attend to them. A backspace position has the same input embedding as the
new top and attends to the same keys (with itself standing in for the top),
so by induction over layers its hidden states, and hence its logits, equal
those the new top had when it was pushed. Attending to both the top and
itself would double-count that key, hence "minus its top".

Example (``bs`` = backspace, ``.`` = pad)::

    t          0    1   2   3    4   5    6    7   8
    tokens     bos  x   y   bs   z   bs   bs   w   .
    input_ids  bos  x   y   x    z   x    bos  w   .
    positions  0    1   2   1    2   1    0    1   0
    attends    0    01  012 03   014 05   6    07  8

Generation uses a KV-cache; a backspace there is a KV-cache rollback: the
row's length drops by one and the stored logits of the new top are returned
with no compute (:meth:`TransformerPolicy.decode_step`).

Architecture (nanoGPT, Karpathy): pre-LayerNorm blocks, GELU MLP with 4x
expansion, learned absolute position embeddings, token embedding tied to the
LM head, init N(0, 0.02) with residual projections scaled by
``1/sqrt(2 n_layer)``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from seqenv.checks import check_number
from seqenv.tokenizers import EOS_ID, UNK_ID

from .base import check_decode_step, check_prefill, check_token_ids


@dataclass
class PolicyConfig:
    """Hyperparameters of :class:`TransformerPolicy`.

    :param vocab_size: number of token ids, specials included (actions are
        ids ``0 .. vocab_size-1``).
    :param block_size: largest state length, bos and prompt included; the size
        of the position embedding and of the KV-cache. A trajectory may be
        longer than this as long as no state reached along it is.
    :param n_layer: transformer blocks.
    :param n_head: attention heads; must divide ``n_embd``.
    :param n_embd: width of the residual stream.
    :param dropout: dropout probability in ``[0, 1)`` (embeddings, attention,
        residual branches); active only in ``train()`` mode.
    :param bias: biases in Linear layers and LayerNorms.
    :param bos_id, backspace_id, pad_id: special ids (docs/internals.md).
    :raises ValueError: on non-positive sizes, ``n_embd % n_head != 0``,
        dropout outside ``[0, 1)``, special ids outside the vocabulary or equal
        to each other.
    """

    vocab_size: int
    block_size: int
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    bos_id: int = 1
    backspace_id: int = 3
    pad_id: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            check_number(f"PolicyConfig.{name}", getattr(self, name), ge=1, integer=True)
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"PolicyConfig.n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"PolicyConfig.dropout must be in [0, 1), got {self.dropout!r}")
        specials = {"bos_id": self.bos_id, "backspace_id": self.backspace_id, "pad_id": self.pad_id}
        for name, value in specials.items():
            check_number(
                f"PolicyConfig.{name} (vocab_size={self.vocab_size})", value, ge=0, lt=self.vocab_size, integer=True
            )
        if len(set(specials.values())) != 3:
            raise ValueError(f"PolicyConfig special ids must be distinct, got {specials}")

    def to_dict(self) -> dict:
        """Return the config as a JSON-able dict (for checkpoints)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PolicyConfig:
        """Rebuild a config from :meth:`to_dict` output.

        :raises ValueError: on unknown keys, or any invalid value (see class).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PolicyConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def backspace_layout(
    tokens: torch.Tensor, backspace_id: int = 3, pad_id: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Turn trajectories with backspaces into transformer inputs (see module doc).

    :param tokens: LongTensor[B, T], each row ``[bos, prompt..., a_1..a_n,
        pad...]``; pads only at the end of a row.
    :return: ``(input_ids, position_ids, attn_mask)``: LongTensor[B, T],
        LongTensor[B, T], BoolTensor[B, T, T] with ``attn_mask[b, i, j]`` True
        when query ``i`` may attend to key ``j`` (always ``j <= i``; every row
        has at least one True, itself). All on ``tokens.device``.
    :raises ValueError: if ``tokens`` is not a 2-D integer tensor, if a
        non-pad token follows a pad, or if a backspace would delete the first
        token of its row (bos) -- the message names row and position.

    Vectorised over the batch; loops over time (O(T) small tensor ops).
    """
    if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"tokens must be an integer tensor [B, T], got dtype {tokens.dtype} shape {tuple(tokens.shape)}"
        )
    tokens = tokens.long()
    B, T = tokens.shape
    device = tokens.device
    _check_pads_at_end(tokens, pad_id)
    rows = torch.arange(B, device=device)

    stack = torch.zeros(B, T, dtype=torch.long, device=device)  # original positions of the state's tokens
    depth = torch.zeros(B, dtype=torch.long, device=device)  # current state length
    alive = torch.zeros(B, T, dtype=torch.bool, device=device)  # alive[b, j]: position j is in the state
    eye = torch.eye(T, dtype=torch.bool, device=device)
    input_ids = torch.empty_like(tokens)
    position_ids = torch.empty_like(tokens)
    attn_mask = torch.empty(B, T, T, dtype=torch.bool, device=device)
    bad_pop = torch.zeros(B, T, dtype=torch.bool, device=device)

    for t in range(T):
        tok = tokens[:, t]
        is_pad = tok == pad_id
        is_bs = tok == backspace_id
        is_push = ~is_pad & ~is_bs
        bad_pop[:, t] = is_bs & (depth <= 1)
        pop = is_bs & (depth > 1)

        # Backspace: drop the top of the stack.
        top = stack[rows, (depth - 1).clamp(min=0)]
        alive[rows, top] = alive[rows, top] & ~pop
        depth = depth - pop.long()
        # Normal token: push position t.
        slot = depth.clamp(max=T - 1)
        stack[rows, slot] = torch.where(is_push, t, stack[rows, slot])
        alive[:, t] = is_push
        depth = depth + is_push.long()

        new_top = stack[rows, (depth - 1).clamp(min=0)]
        input_ids[:, t] = torch.where(is_pad, pad_id, tokens[rows, new_top])
        position_ids[:, t] = torch.where(is_pad, 0, (depth - 1).clamp(min=0))
        row = alive.clone()
        row[rows, new_top] = row[rows, new_top] & ~is_bs  # a backspace stands in for the top
        row[:, t] |= is_bs
        attn_mask[:, t] = torch.where(is_pad[:, None], eye[t], row)

    if bad_pop.any():
        b, t = bad_pop.nonzero()[0].tolist()
        raise ValueError(
            f"backspace at row {b}, position {t} would delete the first token (bos) of the row; "
            f"a backspace may only delete tokens after bos"
        )
    return input_ids, position_ids, attn_mask


def _check_pads_at_end(tokens: torch.Tensor, pad_id: int) -> None:
    """Raise ValueError if a non-pad token follows a pad in some row of ``tokens`` [B, T]."""
    is_pad = tokens == pad_id
    bad = is_pad[:, :-1] & ~is_pad[:, 1:]
    if bad.any():
        b, t = bad.nonzero()[0].tolist()
        raise ValueError(
            f"row {b} has pad (id {pad_id}) at position {t} followed by token "
            f"{int(tokens[b, t + 1])}; pads are allowed only at the end of a row"
        )


@dataclass
class KVCache:
    """Per-row decoding state of :class:`TransformerPolicy` (mutated in place).

    :param k, v: FloatTensor[n_layer, B, n_head, block_size, head_dim], keys and
        values of the state's tokens; slots ``>= lengths[b]`` are stale.
    :param lengths: LongTensor[B], current state length of each row (bos
        included, so ``>= 1``).
    :param logits: FloatTensor[B, block_size, V], ``logits[b, i]`` = logits of
        the state ``tokens[b, :i+1]`` (a stack, so a backspace is a lookup).
    """

    k: torch.Tensor
    v: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention using ``F.scaled_dot_product_attention``."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        shape = (B, T, self.n_head, C // self.n_head)
        return tuple(z.view(shape).transpose(1, 2) for z in (q, k, v))  # each [B, H, T, D]

    def _out(self, y: torch.Tensor) -> torch.Tensor:
        B, H, T, D = y.shape
        return self.resid_dropout(self.c_proj(y.transpose(1, 2).reshape(B, T, H * D)))

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attend over a whole sequence.

        :param x: FloatTensor[B, T, C].
        :param attn_mask: BoolTensor[B, T, T] (True = may attend) or None for
            plain causal attention.
        :return: ``(y [B, T, C], k [B, H, T, D], v [B, H, T, D])``.
        """
        q, k, v = self._qkv(x)
        dropout_p = self.dropout if self.training else 0.0
        if attn_mask is None:
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask[:, None], dropout_p=dropout_p)
        return self._out(y), k, v

    def decode(
        self,
        x: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        pos: torch.Tensor,
        write: torch.Tensor,
    ) -> torch.Tensor:
        """Attend from one new token per row to the cached keys.

        :param x: FloatTensor[B, 1, C], the new tokens.
        :param k_cache, v_cache: FloatTensor[B, H, S, D]; the new key/value is
            written in place at slot ``pos[b]`` for rows with ``write[b]``.
        :param pos: LongTensor[B], slot of the new token (< S); it attends to
            slots ``0 .. pos[b]``.
        :param write: BoolTensor[B].
        :return: FloatTensor[B, 1, C].
        """
        q, k, v = self._qkv(x)
        rows = torch.arange(x.shape[0], device=x.device)
        keep = write[:, None, None]
        k_cache[rows, :, pos] = torch.where(keep, k[:, :, 0], k_cache[rows, :, pos])
        v_cache[rows, :, pos] = torch.where(keep, v[:, :, 0], v_cache[rows, :, pos])
        key_mask = torch.arange(k_cache.shape[2], device=x.device)[None, :] <= pos[:, None]  # [B, S]
        y = F.scaled_dot_product_attention(q, k_cache, v_cache, attn_mask=key_mask[:, None, None, :])
        return self._out(y)


class MLP(nn.Module):
    """Position-wise feed-forward: Linear(C, 4C), GELU, Linear(4C, C), dropout."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """:param x: FloatTensor[..., C]. :return: FloatTensor[..., C]."""
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:param x: FloatTensor[B, T, C]; attn_mask as in :meth:`CausalSelfAttention.forward`.
        :return: ``(x [B, T, C], k, v)`` with this layer's keys/values [B, H, T, D]."""
        y, k, v = self.attn(self.ln_1(x), attn_mask)
        x = x + y
        return x + self.mlp(self.ln_2(x)), k, v

    def decode(self, x, k_cache, v_cache, pos, write) -> torch.Tensor:
        """One-token step; arguments as in :meth:`CausalSelfAttention.decode`. :return: [B, 1, C]."""
        x = x + self.attn.decode(self.ln_1(x), k_cache, v_cache, pos, write)
        return x + self.mlp(self.ln_2(x))


class TransformerPolicy(nn.Module):
    """Backspace-aware causal transformer policy; logits are soft Q-values.

    Implements the :class:`agents.policies.Policy` protocol (family ``"transformer"``).

    Training: :meth:`forward` over whole trajectories (one pass, backspaces
    handled by :func:`backspace_layout`). Generation: :meth:`prefill` then
    :meth:`decode_step` per action with a :class:`KVCache`; a backspace rolls
    the cache back by one token. Call ``eval()`` before decoding if
    ``dropout > 0``.
    """

    family = "transformer"

    def __init__(self, config: PolicyConfig):
        super().__init__()
        self.config = config
        self.vocab_size = config.vocab_size
        self.max_state_length = config.block_size
        self.special_ids = {
            "pad": config.pad_id,
            "bos": config.bos_id,
            "eos": EOS_ID,
            "backspace": config.backspace_id,
            "unk": UNK_ID,
        }
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight  # weight tying (nanoGPT)

        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def policy_spec(self) -> dict:
        """``{"family": "transformer", "config": PolicyConfig.to_dict()}`` (see :class:`agents.policies.Policy`)."""
        return {"family": self.family, "config": self.config.to_dict()}

    def num_parameters(self) -> int:
        """Number of trainable parameters (the tied embedding counted once)."""
        return sum(p.numel() for p in self.parameters())

    def _run(self, input_ids, position_ids, attn_mask):
        """Embeddings and blocks. :return: ``(hidden [B, T, C], keys, values)`` (lists per layer)."""
        x = self.drop(self.wte(input_ids) + self.wpe(position_ids))
        ks, vs = [], []
        for block in self.blocks:
            x, k, v = block(x, attn_mask)
            ks.append(k)
            vs.append(v)
        return self.ln_f(x), ks, vs

    def forward(self, tokens: torch.Tensor, fast_path: bool = True) -> torch.Tensor:
        """Logits of every state along a batch of trajectories, in one pass.

        :param tokens: LongTensor[B, T], rows ``[bos, prompt..., a_1..a_n,
            pad...]`` that may contain backspaces (pads only at the end).
        :param fast_path: if True and the batch has no backspace (and
            ``T <= block_size``), use plain causal attention; set False to
            force the backspace layout (same logits at non-pad positions).
        :return: FloatTensor[B, T, V]; ``[:, i]`` = logits (soft Q-values, nats
            up to a shift) of the state reached after ``tokens[:, :i+1]`` with
            backspaces applied. Values at pad positions are unspecified.
        :raises ValueError: on ids outside ``[0, vocab_size)``, a pad followed
            by a non-pad, a backspace deleting bos, or a state longer than
            ``block_size``.
        """
        c = self.config
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [B, T], got shape {tuple(tokens.shape)}")
        check_token_ids(tokens, c.vocab_size)
        T = tokens.shape[1]
        if fast_path and T <= c.block_size and not (tokens == c.backspace_id).any():
            _check_pads_at_end(tokens, c.pad_id)
            position_ids = torch.arange(T, device=tokens.device)[None, :]
            x, _, _ = self._run(tokens, position_ids, None)
        else:
            input_ids, position_ids, attn_mask = backspace_layout(tokens, c.backspace_id, c.pad_id)
            longest = int(position_ids.max()) + 1
            if longest > c.block_size:
                raise ValueError(f"a state of length {longest} exceeds block_size={c.block_size}")
            x, _, _ = self._run(input_ids, position_ids, attn_mask)
        return self.lm_head(x)

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[KVCache, torch.Tensor]:
        """Start incremental decoding from a batch of states (no gradients).

        :param tokens: LongTensor[B, T], ``T <= block_size``; row ``b`` holds
            the state ``tokens[b, :lengths[b]]`` = ``[bos, ...]`` with no
            backspace; entries after it are ignored.
        :param lengths: LongTensor[B], in ``[1, T]``.
        :return: ``(cache, logits)``: a new :class:`KVCache` on the model's
            device with room for ``block_size`` tokens per row, and
            FloatTensor[B, V], the logits of each row's state.
        :raises ValueError: on bad shapes, lengths outside ``[1, T]``,
            ``T > block_size``, ids outside the vocabulary, or a backspace
            inside a state.
        """
        c = self.config
        tokens, lengths, _ = check_prefill(self, tokens, lengths, "block_size")
        B, T = tokens.shape

        position_ids = torch.arange(T, device=tokens.device)[None, :]
        x, ks, vs = self._run(tokens, position_ids, None)
        logits = self.lm_head(x)  # [B, T, V]
        k = ks[0].new_zeros(c.n_layer, B, c.n_head, c.block_size, c.n_embd // c.n_head)
        v = torch.zeros_like(k)
        k[:, :, :, :T] = torch.stack(ks)
        v[:, :, :, :T] = torch.stack(vs)
        stack = logits.new_zeros(B, c.block_size, c.vocab_size)
        stack[:, :T] = logits
        cache = KVCache(k=k, v=v, lengths=lengths.clone(), logits=stack)
        rows = torch.arange(B, device=tokens.device)
        return cache, logits[rows, lengths - 1]

    @torch.no_grad()
    def decode_step(self, cache: KVCache, actions: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
        """Apply one action per row to the cache (in place) and return logits.

        A backspace pops the row's top token: ``lengths[b] -= 1`` and the stored
        logits of the new top state are returned, no compute (KV-cache
        rollback). Any other id is pushed at slot ``lengths[b]``; all pushes
        are computed in one batched forward (other rows compute a throwaway
        value that is not written). Rows with ``active[b] == False`` are left
        unchanged. No gradients.

        :param cache: from :meth:`prefill`; mutated in place.
        :param actions: LongTensor[B].
        :param active: BoolTensor[B] or None (all rows active).
        :return: FloatTensor[B, V], logits of each row's state after the step
            (an inactive row: its current state).
        :raises ValueError: on bad shapes, ids outside the vocabulary, a push
            beyond ``block_size`` or a pop of bos (checked before any change;
            one host sync per step).
        """
        c = self.config
        lengths = cache.lengths
        B = lengths.shape[0]
        actions, active, pop, push = check_decode_step(self, lengths, actions, active, "block_size")

        rows = torch.arange(B, device=actions.device)
        pos = lengths.clamp(max=c.block_size - 1)  # slot of the pushed token (throwaway for other rows)
        ids = torch.where(push, actions, c.pad_id)
        x = self.drop(self.wte(ids) + self.wpe(pos))[:, None, :]  # [B, 1, C]
        for layer, block in enumerate(cast("list[Block]", self.blocks)):
            x = block.decode(x, cache.k[layer], cache.v[layer], pos, push)
        new_logits = self.lm_head(self.ln_f(x[:, 0]))  # [B, V]
        cache.logits[rows, pos] = torch.where(push[:, None], new_logits, cache.logits[rows, pos])
        cache.lengths = lengths + push.long() - pop.long()
        return cache.logits[rows, cache.lengths - 1]
