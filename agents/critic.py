"""The sequence critic: a scalar energy ``E_psi(x)`` per sequence (Residual EBM).

Deng, Bakhtin, Ott, Szlam, Ranzato, "Residual Energy-Based Models for Text
Generation", ICLR 2020: ``p(x) ∝ p_LM(x) exp(-E(x))`` with ``E`` a
bidirectional transformer, mean-pooled. Trained by :mod:`agents.nce`; used by
reranking (:mod:`agents.generation`) and as a reward (:mod:`agents.sb3.critic_reward`),
which read it back from an ``nce`` checkpoint with :func:`load_critic`.

Batch convention (docs/internals.md): ``tokens: LongTensor[B, T]`` is
``[bos, x_1..x_n, eos, pad...]`` and ``mask: BoolTensor[B, T]`` is True at the
predicted positions ``x_1..x_n, eos``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn as nn

from .common.checkpoint import CheckpointError, checkpoint_task, load_checkpoint
from .common.cli import check_number
from .common.trajectory import sequence_batch
from .policies.transformer import Block, PolicyConfig, TransformerPolicy

POOLINGS = ("mean", "first")

#: the critic's size fields: declared (with their defaults) by :class:`CriticConfig` only, checked by
#: :func:`check_critic_size`; ``NCEConfig``'s ``critic_*`` flags take their defaults from here
CRITIC_SIZE_FIELDS = ("n_layer", "n_head", "n_embd", "dropout", "pooling")


def check_critic_size(prefix: str, n_layer, n_head, n_embd, dropout, pooling) -> None:
    """Raise unless the size fields make a valid critic (used by :class:`CriticConfig` and ``NCEConfig``).

    :param prefix: how the fields are named in the message (``"CriticConfig."``,
        ``"NCEConfig.critic_"``: the CLI shows the latter as ``--nce.critic-*``).
    :raises ValueError: naming the field, e.g. ``"CriticConfig.n_layer must be an integer >= 1, got 0"``:
        a size below 1, ``n_embd`` not divisible by ``n_head``, a dropout outside ``[0, 1)`` or an
        unknown pooling.
    """
    for name, value in (("n_layer", n_layer), ("n_head", n_head), ("n_embd", n_embd)):
        check_number(f"{prefix}{name}", value, ge=1, integer=True)
    if n_embd % n_head:
        raise ValueError(f"{prefix}n_embd ({n_embd}) must be divisible by {prefix}n_head ({n_head})")
    check_number(f"{prefix}dropout", dropout, ge=0, lt=1)
    if pooling not in POOLINGS:
        raise ValueError(f"{prefix}pooling must be one of {POOLINGS}, got {pooling!r}")


@dataclass
class CriticConfig:
    """Hyperparameters of :class:`SequenceCritic`.

    :param vocab_size: number of token ids, specials included.
    :param block_size: maximum sequence length ``T`` (bos, tokens, eos).
    :param n_layer: number of transformer encoder blocks.
    :param n_head: attention heads; must divide ``n_embd``.
    :param n_embd: width of the residual stream.
    :param dropout: dropout probability in ``[0, 1)``.
    :param pooling: how token features become one sequence feature:
        ``"mean"`` over non-pad positions (bos and eos included), or
        ``"first"`` (the bos position, BERT-style).
    :raises ValueError: on a non-positive size, ``n_embd % n_head != 0``, a
        dropout outside ``[0, 1)`` or an unknown pooling (:func:`check_critic_size`).
    """

    vocab_size: int
    block_size: int
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    pooling: str = "mean"

    def __post_init__(self):
        for name in ("vocab_size", "block_size"):
            check_number(f"CriticConfig.{name}", getattr(self, name), ge=1, integer=True)
        check_critic_size("CriticConfig.", **{name: getattr(self, name) for name in CRITIC_SIZE_FIELDS})

    def to_dict(self) -> dict:
        """Return the config as a JSON-able dict (inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> CriticConfig:
        """Build a config from :meth:`to_dict` output.

        :raises ValueError: on unknown keys (or any invalid value, see the class).
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown CriticConfig keys {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def critic_batch(
    prompts, sequences, terminated, device: torch.device | str = "cpu", ids=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lay out (prompt, completion) pairs as the critic's input.

    The critic reads the prompt and the completion as one sequence
    ``[bos, prompt..., x..., eos?, pad...]`` (a conditional critic
    ``E(prompt, x)``: Deng et al.'s residual EBM conditioned on a prefix); on an
    unconditional task the prompts are empty and this is the batch convention.

    :param prompts: per row the prompt ids (``[]`` or None for none), or None for all rows.
    :param sequences: per row the generated / data tokens (no bos, no eos).
    :param terminated: per row whether an ``eos`` follows.
    :param ids: special ids (as :func:`agents.common.trajectory.sequence_batch`; default the fixed ids).
    :returns: ``tokens LongTensor[B, T]`` and ``mask BoolTensor[B, T]``, True at
        every position after the bos up to the row's end (prompt included).
    :raises ValueError: on rows of different counts.
    """
    if prompts is None:
        prompts = [[]] * len(sequences)
    if not len(prompts) == len(sequences) == len(terminated):
        raise ValueError(
            f"need one prompt and one terminated flag per sequence, got {len(prompts)} prompts, "
            f"{len(sequences)} sequences, {len(terminated)} flags"
        )
    return sequence_batch([[*(p or []), *s] for p, s in zip(prompts, sequences)], list(terminated), device, ids=ids)


class SequenceCritic(nn.Module):
    """Sequence-level energy ``E_psi(x)``: a bidirectional transformer encoder
    pooled to one scalar per sequence.

    Used residually on top of the policy: ``p(x) ∝ p_policy(x) exp(-E_psi(x))``
    (Residual EBM: Deng, Bakhtin, Ott, Szlam, Ranzato, "Residual Energy-Based
    Models for Text Generation", ICLR 2020).
    Low energy = more data-like. ``log_normalizer`` is the learned scalar ``c``
    of binary NCE (:func:`residual_nce_loss`), an estimate of
    ``log E_{x~p_policy}[exp(-E_psi(x))]``.

    :meth:`init_from_policy` copies a trained policy's trunk (embeddings,
    blocks, final LayerNorm) into the critic: the same parameter names, read
    bidirectionally (Deng et al. initialise from a pretrained LM) [recon].

    [recon] Architecture (the policy's pre-LayerNorm blocks,
    :class:`agents.policies.transformer.Block`, with a bidirectional
    padding mask instead of the causal one, learned position embeddings, mean pooling over non-pad positions,
    linear head) and the zero-initialised head -- so that ``E_psi == 0`` and
    the residual model equals the policy at initialisation -- are ours; Deng
    et al. use pretrained bidirectional transformers.

    :param config: a :class:`CriticConfig`.
    """

    def __init__(self, config: CriticConfig):
        super().__init__()
        if not isinstance(config, CriticConfig):
            raise ValueError(f"config must be a CriticConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        block_config = PolicyConfig(
            vocab_size=config.vocab_size,
            block_size=config.block_size,
            n_layer=config.n_layer,
            n_head=config.n_head,
            n_embd=config.n_embd,
            dropout=config.dropout,
        )
        self.blocks = nn.ModuleList([Block(block_config) for _ in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.head = nn.Linear(config.n_embd, 1)
        self.log_normalizer = nn.Parameter(torch.zeros(()))
        self.apply(self._init_weights)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    @torch.no_grad()
    def init_from_policy(self, policy: object) -> None:
        """Copy the trunk of a :class:`~agents.policies.transformer.TransformerPolicy`
        (``wte``, ``wpe``, ``blocks``, ``ln_f``) into this critic; the head and
        ``log_normalizer`` keep their values (zero at initialisation, so the
        residual model still equals the policy).

        Position embeddings: the first ``min(block sizes)`` rows are copied.
        The blocks then run with a bidirectional mask instead of the causal one.

        :raises ValueError: if ``policy`` lacks those modules or their sizes
            (vocabulary, ``n_layer``, ``n_embd``, ``n_head``, LayerNorm/Linear
            biases) differ from this critic's.
        """
        if not isinstance(policy, TransformerPolicy):
            raise ValueError(
                f"init_from_policy needs a transformer policy with wte, wpe, blocks, ln_f; got {type(policy).__name__}"
            )
        pc = policy.config
        c = self.config
        mine = (c.vocab_size, c.n_layer, c.n_head, c.n_embd)
        theirs = (pc.vocab_size, pc.n_layer, pc.n_head, pc.n_embd)
        if mine != theirs:
            raise ValueError(
                f"critic (vocab_size, n_layer, n_head, n_embd) = {mine} differs from the policy's "
                f"{theirs}: cannot initialise the critic from the policy"
            )
        try:
            self.wte.load_state_dict(policy.wte.state_dict())
            self.blocks.load_state_dict(policy.blocks.state_dict())
            self.ln_f.load_state_dict(policy.ln_f.state_dict())
        except RuntimeError as e:
            raise ValueError(f"policy trunk does not fit the critic (bias setting?): {e}") from None
        n = min(self.wpe.weight.shape[0], policy.wpe.weight.shape[0])
        self.wpe.weight[:n].copy_(policy.wpe.weight[:n])

    def valid_positions(self, tokens: torch.Tensor, mask_or_lengths: torch.Tensor) -> torch.Tensor:
        """Return ``BoolTensor[B, T]``, True at the positions the critic reads.

        :param tokens: ``LongTensor[B, T]``, ``[bos, x_1..x_n, eos, pad...]``,
            ``1 <= T <= block_size``, ids in ``[0, vocab_size)``.
        :param mask_or_lengths: either the batch convention's
            ``BoolTensor[B, T]`` (True at ``x_1..x_n, eos``; column 0, the bos,
            is always added, so a full non-pad mask works too) or
            ``LongTensor[B]`` of lengths, ``tokens[b, :lengths[b]]`` being
            valid (bos and eos included), ``1 <= lengths[b] <= T``.
        :raises ValueError: on a bad shape, dtype, length or token id.
        """
        if tokens.dim() != 2 or tokens.dtype != torch.long:
            raise ValueError(f"tokens must be a LongTensor[B, T], got {tokens.dtype} of shape {tuple(tokens.shape)}")
        B, T = tokens.shape
        if not 1 <= T <= self.config.block_size:
            raise ValueError(f"sequence length T={T} must be in [1, block_size={self.config.block_size}]")
        if tokens.numel() and (tokens.min() < 0 or tokens.max() >= self.config.vocab_size):
            raise ValueError(
                f"token ids must be in [0, {self.config.vocab_size}), got range "
                f"[{int(tokens.min())}, {int(tokens.max())}]"
            )
        positions = torch.arange(T, device=tokens.device)
        if mask_or_lengths.dtype == torch.bool:
            if mask_or_lengths.shape != tokens.shape:
                raise ValueError(
                    f"mask must have the shape of tokens {tuple(tokens.shape)}, got {tuple(mask_or_lengths.shape)}"
                )
            return mask_or_lengths | (positions == 0)[None, :]
        if mask_or_lengths.dtype != torch.long or mask_or_lengths.shape != (B,):
            raise ValueError(
                f"mask_or_lengths must be a BoolTensor[B, T] or LongTensor[B] with B={B}, got "
                f"{mask_or_lengths.dtype} of shape {tuple(mask_or_lengths.shape)}"
            )
        if B and (mask_or_lengths.min() < 1 or mask_or_lengths.max() > T):
            raise ValueError(
                f"lengths must be in [1, T={T}], got range [{int(mask_or_lengths.min())}, {int(mask_or_lengths.max())}]"
            )
        return positions[None, :] < mask_or_lengths[:, None]

    def forward(self, tokens: torch.Tensor, mask_or_lengths: torch.Tensor) -> torch.Tensor:
        """Return the energies ``E_psi(x)``, ``FloatTensor[B]`` in nats.

        :param tokens: ``LongTensor[B, T]``, see :meth:`valid_positions`.
        :param mask_or_lengths: ``BoolTensor[B, T]`` or ``LongTensor[B]``, see
            :meth:`valid_positions`. Pad positions are neither attended to nor
            pooled, so the energy does not depend on the amount of padding.
        :raises ValueError: see :meth:`valid_positions`.
        """
        valid = self.valid_positions(tokens, mask_or_lengths)
        T = tokens.shape[1]
        pos = torch.arange(T, device=tokens.device)
        x = self.drop(self.wte(tokens) + self.wpe(pos)[None])
        attn_mask = valid[:, None, :].expand(-1, T, -1)  # bidirectional: every query sees every valid key
        for block in self.blocks:
            x, _, _ = block(x, attn_mask)
        x = self.ln_f(x)  # (B, T, C)
        if self.config.pooling == "mean":
            w = valid.to(x.dtype)[:, :, None]
            pooled = (x * w).sum(1) / w.sum(1)
        else:  # "first"
            pooled = x[:, 0]
        return self.head(pooled).squeeze(-1)


def load_critic(path: str | os.PathLike, device: str | torch.device = "cpu", task=None) -> SequenceCritic:
    """The trained critic of a ``train.py --agent nce`` checkpoint, in eval mode.

    :param path: the run's ``checkpoint.pt``.
    :param device: where to put the critic.
    :param task: a task name or :class:`~seqenv.tasks.Task` the critic will
        score sequences of (its tokenizer must be the checkpoint's); None =
        the checkpoint's own task.
    :returns: :class:`SequenceCritic` with ``requires_grad=False``; its
        ``log_normalizer`` is the learned ``c``.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises agents.common.checkpoint.CheckpointError: (a ValueError) if the file is
        not a seqenv checkpoint, is not an ``nce`` checkpoint (no critic), was
        trained with another tokenizer than ``task``'s, or ``task`` has longer
        sequences than the critic reads.
    """
    state = load_checkpoint(path, map_location=device)
    learner = state.get("learner")
    if state["agent"] != "nce" or not isinstance(learner, dict) or "critic" not in learner:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is not an nce checkpoint (agent {state['agent']!r}, no critic); "
            "train a critic with scripts/train.py --agent nce"
        )
    task = checkpoint_task(state, task, path=f"critic checkpoint {str(path)!r}")
    config = CriticConfig.from_dict(learner["critic_config"])
    if task.max_length + 1 > config.block_size:
        raise CheckpointError(
            f"task {task.name!r} has max_length {task.max_length} but the critic in {str(path)!r} reads "
            f"sequences of at most {config.block_size - 1} tokens"
        )
    critic = SequenceCritic(config).to(device)
    try:
        critic.load_state_dict(learner["critic"])
    except RuntimeError as e:
        raise CheckpointError(f"critic checkpoint {str(path)!r}: weights do not match its critic_config: {e}") from None
    critic.eval().requires_grad_(False)
    return critic
