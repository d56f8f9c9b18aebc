"""Backspace demonstrations: expert sequences with injected mistakes and their corrections.

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
* ``noise="uniform"``: ``w`` uniform over the ordinary tokens other than the
  true next one;
* ``noise="model"``: ``w`` drawn by a caller-supplied sampler (e.g. the
  current policy), rejecting draws that equal the true next token or are not
  ordinary tokens.

Applying the backspaces to an augmented sequence gives back the original
exactly (:func:`apply_backspaces`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from seqenv.tokenizers import BACKSPACE_ID, EOS_ID, NUM_SPECIAL, UNK_ID

NOISE_TYPES = ("uniform", "model")
MODEL_NOISE_TRIES = 8  # rounds of rejection before falling back to uniform noise

NoiseFn = Callable[[list[list[int]]], "torch.Tensor | Sequence[int]"]


def apply_backspaces(actions: Sequence[int], backspace_id: int = BACKSPACE_ID) -> list[int]:
    """Reduce an action sequence to the token sequence it produces.

    Every ``backspace_id`` deletes the last token kept so far; a backspace
    with nothing to delete does nothing (the env masks it there). Every other
    id, ``eos`` included, is appended as is.

    :param actions: action ids (ints).
    :param backspace_id: the backspace id (3, docs/internals.md).
    :return: the reduced sequence, a new list.
    """
    out: list[int] = []
    for a in actions:
        if a == backspace_id:
            if out:
                out.pop()
        else:
            out.append(a)
    return out


def _check_sequence(j: int, seq: Sequence[int], vocab_size: int) -> None:
    """Raise ValueError unless ``seq`` holds ordinary/unk ids with at most a final eos."""
    body = seq[:-1] if seq and seq[-1] == EOS_ID else seq
    for k, tok in enumerate(body):
        if not (tok == UNK_ID or NUM_SPECIAL <= tok < vocab_size):
            raise ValueError(
                f"sequences[{j}][{k}] = {tok!r}: expected an ordinary token id in "
                f"[{NUM_SPECIAL}, {vocab_size}) or unk ({UNK_ID}); eos ({EOS_ID}) is allowed "
                f"only as the last token and other special ids not at all"
            )


def augment_with_backspace(
    sequences: list[list[int]],
    p: float,
    vocab_size: int,
    generator: torch.Generator,
    noise: str = "uniform",
    noise_fn: NoiseFn | None = None,
    prompts: list[list[int]] | None = None,
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
        deterministic ``noise_fn``) the result is the same.
    :param noise: ``"uniform"`` or ``"model"``.
    :param noise_fn: required for ``noise="model"`` (and only then):
        ``noise_fn(prefixes: list[list[int]]) -> LongTensor[M] | Sequence[int]``
        gets the ``M`` states in which wrong tokens are to be emitted -- each
        ``prompt + x_1..x_k`` (backspaces already applied, no bos) -- all in
        one call, and returns one token per state, e.g. a sample from the
        current policy at that state. Draws equal to the true next token, or
        that are not ordinary tokens (id < 5 or >= vocab_size), are redrawn
        by calling ``noise_fn`` again on just those prefixes, at most
        ``MODEL_NOISE_TRIES`` rounds; slots still without a valid draw get
        uniform noise. Seed its randomness yourself for determinism.
    :param prompts: optional prompt per sequence; only prepended to the
        prefixes passed to ``noise_fn`` (never augmented, never returned).
    :return: the augmented sequences, new lists; ``apply_backspaces(out[j]) ==
        sequences[j]`` for every ``j``. Each pair lengthens a sequence by 2.
    :raises ValueError: on ``p`` outside ``[0, 1)``; ``vocab_size <= 5``; an
        unknown ``noise``; ``noise_fn`` missing for ``"model"`` or given for
        ``"uniform"``; ``prompts`` of the wrong length; a sequence holding a
        special id other than unk or a final eos, or an id >= vocab_size; a
        ``noise_fn`` answer of the wrong length.
    """
    if not (isinstance(p, (int, float)) and 0.0 <= p < 1.0):
        raise ValueError(f"p must be a probability in [0, 1), got {p!r}")
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size <= NUM_SPECIAL:
        raise ValueError(f"vocab_size must be an int > {NUM_SPECIAL} (the special ids), got {vocab_size!r}")
    if noise not in NOISE_TYPES:
        raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}")
    if noise == "model" and not callable(noise_fn):
        raise ValueError(f'noise="model" needs a callable noise_fn, got {noise_fn!r}')
    if noise == "uniform" and noise_fn is not None:
        raise ValueError('noise_fn is only used with noise="model"; got one with noise="uniform"')
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if prompts is not None and len(prompts) != len(sequences):
        raise ValueError(f"got {len(prompts)} prompts for {len(sequences)} sequences")
    for j, seq in enumerate(sequences):
        _check_sequence(j, seq, vocab_size)

    # Every slot of every sequence, flattened: (sequence j, slot k, true next token).
    bodies = [seq[:-1] if seq and seq[-1] == EOS_ID else list(seq) for seq in sequences]
    slots = [(j, k) for j, body in enumerate(bodies) for k in range(len(body) + 1)]
    true_next = torch.tensor(
        [bodies[j][k] if k < len(bodies[j]) else EOS_ID for j, k in slots], dtype=torch.long
    )
    num_slots = len(slots)

    # Random numbers for every slot, drawn up front (the same seed gives the same draws).
    insert = torch.rand(num_slots, generator=generator) < p
    u = torch.rand(num_slots, generator=generator)
    # Uniform noise: an ordinary token != the true next one (all of them if the next is eos/unk).
    num_ordinary = vocab_size - NUM_SPECIAL
    next_is_ordinary = true_next >= NUM_SPECIAL
    choices = num_ordinary - next_is_ordinary.long()
    wrong = NUM_SPECIAL + torch.minimum((u * choices).long(), (choices - 1).clamp(min=0))
    wrong = wrong + (next_is_ordinary & (wrong >= true_next)).long()  # skip over the true token
    insert &= choices > 0  # vocab_size 6: no wrong token exists before the only ordinary token

    if noise == "model":
        chosen = insert.nonzero().squeeze(1).tolist()
        prefixes = {}  # slot -> the state the wrong token is emitted in
        for i in chosen:
            j, k = slots[i]
            prefixes[i] = [*(prompts[j] if prompts is not None else []), *bodies[j][:k]]
        pending = chosen
        for _ in range(MODEL_NOISE_TRIES):
            if not pending:
                break
            drawn = torch.as_tensor(noise_fn([prefixes[i] for i in pending]), dtype=torch.long)
            drawn = drawn.reshape(-1).cpu()
            if drawn.numel() != len(pending):
                raise ValueError(f"noise_fn returned {drawn.numel()} tokens for {len(pending)} prefixes")
            idx = torch.tensor(pending, dtype=torch.long)
            ok = (drawn >= NUM_SPECIAL) & (drawn < vocab_size) & (drawn != true_next[idx])
            wrong[idx[ok]] = drawn[ok]
            pending = idx[~ok].tolist()  # the rest keep their uniform draw if rounds run out

    out: list[list[int]] = [[] for _ in sequences]
    for (j, k), ins, w in zip(slots, insert.tolist(), wrong.tolist()):
        if ins:
            out[j] += [w, BACKSPACE_ID]
        if k < len(bodies[j]):
            out[j].append(bodies[j][k])
    for j, seq in enumerate(sequences):
        if seq and seq[-1] == EOS_ID:
            out[j].append(EOS_ID)
    return out
