"""Demonstrations: sampling them from a task, and backspace augmentation.

:class:`Demos` is what the trainer hands every learner: per row a prompt (empty
for an unconditional task) and the expert's actions, ending in ``eos``.
:class:`DemoSampler` draws them reproducibly from a task split; for a *paired*
conditional task (``task.split_prompts``, e.g. ``arithmetic``) each target
comes with its own prompt.

Backspace demonstrations: expert sequences with injected mistakes and their corrections.

Source: SequenceMatch (Cundy & Ermon, ICLR 2024, arXiv 2306.05426), "backspace
demonstrations" [paper]: expert sequences are augmented with noise -- at
random positions a wrong token is inserted, immediately followed by
``backspace`` -- so that the learner sees how to recover from an error. The
paper uses random tokens from the vocabulary or task-specific plausible
errors and does not give the noise rate; here it is the parameter ``p``
(sweep it). The exact scheme below is [recon]:

* every *slot* -- before each token of the sequence and before the end
  (``eos``) -- independently receives, with probability ``p``, one pair
  ``[w, backspace]`` with ``w`` a wrong token: an ordinary token
  (id >= ``NUM_SPECIAL``) different from the true next token at that slot;
* ``wrong_tokens="uniform"``: ``w`` uniform over the ordinary tokens other than the
  true next one;
* ``wrong_tokens="model"``: ``w`` drawn by a caller-supplied sampler (e.g. the
  current policy), rejecting draws that equal the true next token or are not
  ordinary tokens.

Applying the backspaces to an augmented sequence gives back the original
exactly (:func:`seqenv.tokenizers.apply_backspaces`, which drops the final
``eos``). We call the inserted tokens *wrong tokens*; "noise distribution"
is reserved for NCE.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from seqenv.checks import check_number
from seqenv.oracle import pad_sequences
from seqenv.tasks import Task
from seqenv.tokenizers import DEFAULT_SPECIAL_IDS, NUM_SPECIAL, SpecialIds

WRONG_TOKEN_SOURCES = ("uniform", "model")
MODEL_DRAW_TRIES = 8  # rounds of rejection before falling back to a uniform wrong token

WrongTokenFn = Callable[[list[list[int]]], "torch.Tensor | Sequence[int]"]


def _check_sequence(j: int, seq: Sequence[int], vocab_size: int, ids: SpecialIds = DEFAULT_SPECIAL_IDS) -> None:
    """Raise ValueError unless ``seq`` holds ordinary/unk ids with at most a final eos."""
    body = seq[:-1] if seq and seq[-1] == ids.eos else seq
    special = set(ids.non_writing)
    for k, tok in enumerate(body):
        if not (tok == ids.unk or (0 <= tok < vocab_size and tok not in special)):
            where = f"[{NUM_SPECIAL}, {vocab_size})" if ids == DEFAULT_SPECIAL_IDS else f"[0, {vocab_size})"
            raise ValueError(
                f"sequences[{j}][{k}] = {tok!r}: expected an ordinary token id in "
                f"{where} or unk ({ids.unk}); eos ({ids.eos}) is allowed "
                f"only as the last token and other special ids not at all"
            )


def augment_with_backspace(
    sequences: list[list[int]],
    p: float,
    vocab_size: int,
    generator: torch.Generator,
    wrong_tokens: str = "uniform",
    wrong_token_fn: WrongTokenFn | None = None,
    prompts: list[list[int]] | None = None,
    ids=None,
) -> list[list[int]]:
    """Insert ``[wrong token, backspace]`` pairs into expert sequences (module docstring).

    Slot ``k`` of a sequence ``x_1..x_n`` (``k = 0..n``) lies before ``x_{k+1}``
    (slot ``n``: before ``eos``/the end); its true next token is ``x_{k+1}``,
    or ``eos`` at slot ``n``. Each slot independently gets one pair with
    probability ``p`` (with ``vocab_size == 6`` a slot before the only
    ordinary token has no wrong token and is skipped). A trailing ``eos`` in
    the input is kept as the last token; none is added.

    :param sequences: token id lists (ordinary ids or unk; optionally ending in
        ``eos``), without bos or prompt.
    :param p: insertion probability per slot, in ``[0, 1)``.
    :param vocab_size: size of the vocabulary, specials included.
    :param generator: CPU ``torch.Generator``; with the same seed (and a
        deterministic ``wrong_token_fn``) the result is the same.
    :param wrong_tokens: ``"uniform"`` or ``"model"``.
    :param wrong_token_fn: required for ``wrong_tokens="model"`` (and only then):
        ``wrong_token_fn(prefixes: list[list[int]]) -> LongTensor[M] | Sequence[int]``
        gets the ``M`` states in which wrong tokens are to be emitted -- each
        ``prompt + x_1..x_k`` (backspaces already applied, no bos) -- all in
        one call, and returns one token per state, e.g. a sample from the
        current policy at that state. Draws equal to the true next token, or
        that are not ordinary tokens (id < 5 or >= vocab_size), are redrawn
        by calling ``wrong_token_fn`` again on just those prefixes, at most
        ``MODEL_DRAW_TRIES`` rounds; slots still without a valid draw get
        a uniform wrong token. Seed its randomness yourself for determinism.
    :param prompts: optional prompt per sequence; only prepended to the
        prefixes passed to ``wrong_token_fn`` (never augmented, never returned).
    :param ids: special ids (anything :meth:`seqenv.tokenizers.SpecialIds.of`
        takes; default the fixed ids). Ordinary tokens are the ids in
        ``[0, vocab_size)`` that are not special; with the default ids they are
        ``5..vocab_size-1`` and the draws are the same as before.
    :return: the augmented sequences, new lists; ``apply_backspaces(out[j]) ==
        sequences[j]`` (minus a final ``eos``) for every ``j``. Each pair lengthens a sequence by 2.
    :raises ValueError: on ``p`` outside ``[0, 1)``; ``vocab_size <= 5``; an
        unknown ``wrong_tokens``; ``wrong_token_fn`` missing for ``"model"`` or given for
        ``"uniform"``; ``prompts`` of the wrong length; a sequence holding a
        special id other than unk or a final eos, or an id >= vocab_size; a
        ``wrong_token_fn`` answer of the wrong length.
    """
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    ids = SpecialIds.of(ids)
    check_number("vocab_size", vocab_size, gt=NUM_SPECIAL, integer=True)  # room for a data token beyond the specials
    if wrong_tokens not in WRONG_TOKEN_SOURCES:
        raise ValueError(f"wrong_tokens must be one of {WRONG_TOKEN_SOURCES}, got {wrong_tokens!r}")
    if wrong_tokens == "model" and not callable(wrong_token_fn):
        raise ValueError(f'wrong_tokens="model" needs a callable wrong_token_fn, got {wrong_token_fn!r}')
    if wrong_tokens == "uniform" and wrong_token_fn is not None:
        raise ValueError('wrong_token_fn is only used with wrong_tokens="model"; got one with wrong_tokens="uniform"')
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if prompts is not None and len(prompts) != len(sequences):
        raise ValueError(f"got {len(prompts)} prompts for {len(sequences)} sequences")
    for j, seq in enumerate(sequences):
        _check_sequence(j, seq, vocab_size, ids)

    # Every slot of every sequence, flattened: (sequence j, slot k, true next token).
    eos_id, backspace_id = ids.eos, ids.backspace
    bodies = [seq[:-1] if seq and seq[-1] == eos_id else list(seq) for seq in sequences]
    slots = [(j, k) for j, body in enumerate(bodies) for k in range(len(body) + 1)]
    true_next = torch.tensor([bodies[j][k] if k < len(bodies[j]) else eos_id for j, k in slots], dtype=torch.long)
    num_slots = len(slots)

    # Random numbers for every slot, drawn up front (the same seed gives the same draws).
    insert = torch.rand(num_slots, generator=generator) < p
    u = torch.rand(num_slots, generator=generator)
    # Uniform wrong tokens: an ordinary token != the true next one (all of them if the next is eos/unk).
    # (ordinary ids as a table: rank r -> id; the fixed ids give ordinary[r] = NUM_SPECIAL + r)
    ordinary = torch.tensor(ids.ordinary_ids(vocab_size), dtype=torch.long)
    is_ordinary = torch.zeros(vocab_size + 1, dtype=torch.bool)
    is_ordinary[ordinary] = True
    rank = torch.cumsum(is_ordinary.long(), 0) - 1  # rank of an ordinary id among the ordinary ids
    num_ordinary = len(ordinary)
    next_is_ordinary = is_ordinary[true_next.clamp(0, vocab_size)]
    choices = num_ordinary - next_is_ordinary.long()
    r = torch.minimum((u * choices).long(), (choices - 1).clamp(min=0))
    r = r + (next_is_ordinary & (r >= rank[true_next.clamp(0, vocab_size)])).long()  # skip over the true token
    wrong = ordinary[r.clamp(max=max(num_ordinary - 1, 0))] if num_ordinary else r
    insert &= choices > 0  # vocab_size 6: no wrong token exists before the only ordinary token

    if wrong_tokens == "model":
        assert wrong_token_fn is not None  # checked at the top
        chosen = insert.nonzero().squeeze(1).tolist()
        prefixes = {}  # slot -> the state the wrong token is emitted in
        for i in chosen:
            j, k = slots[i]
            prefixes[i] = [*(prompts[j] if prompts is not None else []), *bodies[j][:k]]
        pending = chosen
        for _ in range(MODEL_DRAW_TRIES):
            if not pending:
                break
            drawn = torch.as_tensor(wrong_token_fn([prefixes[i] for i in pending]), dtype=torch.long)
            drawn = drawn.reshape(-1).cpu()
            if drawn.numel() != len(pending):
                raise ValueError(f"wrong_token_fn returned {drawn.numel()} tokens for {len(pending)} prefixes")
            idx = torch.tensor(pending, dtype=torch.long)
            ok = (drawn >= 0) & (drawn < vocab_size) & (drawn != true_next[idx])
            ok &= is_ordinary[drawn.clamp(0, vocab_size)]
            wrong[idx[ok]] = drawn[ok]
            pending = idx[~ok].tolist()  # the rest keep their uniform draw if rounds run out

    out: list[list[int]] = [[] for _ in sequences]
    for (j, k), ins, w in zip(slots, insert.tolist(), wrong.tolist()):
        if ins:
            out[j] += [w, backspace_id]
        if k < len(bodies[j]):
            out[j].append(bodies[j][k])
    for j, seq in enumerate(sequences):
        if seq and seq[-1] == eos_id:
            out[j].append(eos_id)
    return out


def model_wrong_token_fn(policy, generator: torch.Generator, device) -> WrongTokenFn:
    """``wrong_token_fn`` for :func:`augment_with_backspace` that samples from ``policy``.

    Given a batch of prefixes (prompt + tokens, no bos) it returns one ordinary
    token per prefix (specials excluded), sampled from the policy's
    distribution in that state: the model's own plausible errors.

    :param policy: a policy (Policy protocol; possibly DDP-wrapped).
    :param generator: CPU ``torch.Generator`` for the draws.
    """

    @torch.no_grad()
    def wrong_token_fn(prefixes: list[list[int]]) -> list[int]:
        module = getattr(policy, "module", policy)
        ids = SpecialIds.of(module)
        tokens, lengths = pad_sequences([[ids.bos, *p] for p in prefixes], pad_id=ids.pad)
        tokens, lengths = tokens.to(device), lengths.to(device)
        logits = module(tokens)[torch.arange(len(prefixes), device=device), lengths - 1].float()
        logits[:, sorted(ids.all)] = float("-inf")
        return torch.multinomial(logits.softmax(-1).cpu(), 1, generator=generator).squeeze(-1).tolist()

    return wrong_token_fn


@dataclass
class Demos:
    """A minibatch of demonstrations: what every learner's ``loss`` receives.

    :param prompts: per row, the prompt's token ids (``[]`` for an
        unconditional task); never actions.
    :param actions: per row, the expert's actions (ordinary tokens), ending in ``eos``.
    :param ids: the vocabulary's special ids (the task's tokenizer's; default the fixed ids).
    :raises ValueError: on rows of different counts, an empty batch, or a row
        not ending in ``eos``.
    """

    prompts: list[list[int]]
    actions: list[list[int]]
    ids: SpecialIds = DEFAULT_SPECIAL_IDS

    def __post_init__(self) -> None:
        eos_id = self.ids.eos
        if not self.actions or len(self.prompts) != len(self.actions):
            raise ValueError(
                f"Demos needs >= 1 row and one prompt per row, got {len(self.actions)} action rows "
                f"and {len(self.prompts)} prompts"
            )
        bad = [i for i, a in enumerate(self.actions) if not a or a[-1] != eos_id]
        if bad:
            raise ValueError(f"Demos rows {bad[:5]} do not end with eos ({eos_id})")

    def __len__(self) -> int:
        return len(self.actions)

    @classmethod
    def unconditional(cls, actions: list[list[int]], ids=None) -> Demos:
        """Demos with empty prompts (each row must end in ``eos``)."""
        return cls(prompts=[[] for _ in actions], actions=[list(a) for a in actions], ids=SpecialIds.of(ids))


class DemoSampler:
    """Uniform minibatches of demonstrations from a task split, reproducibly.

    For a paired conditional task (``task.split_prompts`` not None) row ``i``
    of the split comes with its own prompt; otherwise the prompt is empty.

    :param task: the task; its ``split`` sequences are the demonstrations.
    :param generator: ``torch.Generator`` owning the sampling stream (its state
        goes into checkpoints so a resumed run draws the same batches).
    :raises ValueError: if the split has no sequence that fits ``max_length``.
    """

    def __init__(self, task: Task, split: str = "train", generator: torch.Generator | None = None):
        pairs = task.encoded_pairs(split)  # (prompt ids, target ids); prompts are [] unless the task is paired
        self.pairs = [(p, s) for p, s in pairs if len(p) + len(s) + 1 <= task.max_length]
        if not self.pairs:
            raise ValueError(f"task {task.name!r} has no {split!r} sequences that fit max_length={task.max_length}")
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.ids = SpecialIds.of(task)

    def sample(self, batch_size: int) -> Demos:
        """``batch_size`` demonstrations (uniform with replacement), each ending in ``eos``."""
        idx = torch.randint(len(self.pairs), (batch_size,), generator=self.generator).tolist()
        return Demos(
            prompts=[list(self.pairs[i][0]) for i in idx],
            actions=[list(self.pairs[i][1]) + [self.ids.eos] for i in idx],
            ids=self.ids,
        )
