"""Tests for agents/common/demos.py: backspace demonstrations."""

from __future__ import annotations

import math

import pytest
import torch

from agents.common.demos import MODEL_DRAW_TRIES, augment_with_backspace
from seqenv.tokenizers import apply_backspaces

EOS, BS, UNK = 2, 3, 4


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _corpus(n=400, vocab=12, seed=1):
    g = _gen(seed)
    lengths = torch.randint(0, 20, (n,), generator=g).tolist()
    return [torch.randint(5, vocab, (m,), generator=g).tolist() for m in lengths]


def _pairs(aug):
    """(wrong token, true next token or None at the end) for every [w, bs] pair."""
    out = []
    for i in range(len(aug) - 1):
        if aug[i + 1] == BS:
            out.append((aug[i], aug[i + 2] if i + 2 < len(aug) else None))
    return out


def test_apply_backspaces():
    # one apply_backspaces for the project (seqenv.tokenizers): eos and pad are dropped
    assert apply_backspaces([5, 6, BS, 7]) == [5, 7]
    assert apply_backspaces([5, BS, BS, 6]) == [6]  # a backspace on nothing does nothing
    assert apply_backspaces([5, 6, BS, BS, EOS]) == []
    assert apply_backspaces([9, 8, BS, 7], protected=1) == [9, 7]
    assert apply_backspaces([9, BS, 7], protected=1) == [9, 7]  # the protected prompt is never deleted
    assert apply_backspaces([]) == []


def _strip_eos(seqs):
    return [s[:-1] if s and s[-1] == EOS else s for s in seqs]


def test_reduction_equals_original():
    seqs = _corpus() + [[], [UNK, 5, UNK], [5, 6, EOS], [EOS]]
    aug = augment_with_backspace(seqs, 0.3, 12, _gen())
    assert [apply_backspaces(a) for a in aug] == _strip_eos(seqs)
    assert sum(len(a) for a in aug) > sum(len(s) for s in seqs)  # something was inserted
    assert aug[-2][-1] == EOS and aug[-1][-1] == EOS


def test_p_zero_is_identity():
    seqs = _corpus()
    assert augment_with_backspace(seqs, 0.0, 12, _gen()) == seqs


def test_insertion_rate_close_to_p():
    seqs = _corpus(n=2000)
    p = 0.1
    aug = augment_with_backspace(seqs, p, 12, _gen())
    slots = sum(len(s) + 1 for s in seqs)  # one slot per token plus the one before the end
    inserted = sum(a.count(BS) for a in aug)
    assert slots > 15000
    assert abs(inserted - p * slots) < 5 * math.sqrt(slots * p * (1 - p))
    # each pair is exactly [wrong, bs]: the length grows by two per backspace
    assert sum(len(a) for a in aug) - sum(len(s) for s in seqs) == 2 * inserted


def test_noise_token_never_the_true_next_and_uniform():
    vocab = 9  # ordinary tokens 5..8
    seqs = _corpus(n=500, vocab=vocab) + [[5, 6, EOS]] * 50
    aug = augment_with_backspace(seqs, 0.9, vocab, _gen())
    pairs = [pr for a in aug for pr in _pairs(a)]
    assert len(pairs) > 4000
    counts = {t: 0 for t in range(5, vocab)}
    for wrong, nxt in pairs:
        assert 5 <= wrong < vocab and wrong != nxt
        if nxt is not None and nxt != EOS and nxt == 5:
            counts[wrong] += 1
    # before a true 5 the wrong token is uniform over 6, 7, 8
    n5 = sum(counts.values())
    assert counts[5] == 0
    for t in (6, 7, 8):
        assert abs(counts[t] - n5 / 3) < 5 * math.sqrt(n5 * (1 / 3) * (2 / 3))


def test_same_seed_same_result():
    seqs = _corpus()
    a = augment_with_backspace(seqs, 0.2, 12, _gen(7))
    b = augment_with_backspace(seqs, 0.2, 12, _gen(7))
    c = augment_with_backspace(seqs, 0.2, 12, _gen(8))
    assert a == b and a != c


def test_vocab_six_skips_impossible_slots():
    seqs = [[5, 5, 5], [UNK, EOS]]
    aug = augment_with_backspace(seqs, 0.99, 6, _gen())
    assert [apply_backspaces(a) for a in aug] == _strip_eos(seqs)
    for a in aug:
        for wrong, nxt in _pairs(a):
            assert wrong == 5 and nxt != 5


def test_model_noise_batched_with_prefixes_and_rejection():
    seqs = [[5, 6, 7], [8, 9], [6]]
    prompts = [[10], [], [11, 11]]
    calls = []

    def noise_fn(prefixes):
        calls.append([list(p) for p in prefixes])
        if len(calls) == 1:  # propose the true next token for some states (must be rejected), else 9
            return torch.tensor([{(10,): 5, (10, 5): 6, (): 8}.get(tuple(p), 9) for p in prefixes])
        return [7] * len(prefixes)

    aug = augment_with_backspace(
        seqs, 0.999999, 12, _gen(), wrong_tokens="model", wrong_token_fn=noise_fn, prompts=prompts
    )
    assert [apply_backspaces(a) for a in aug] == _strip_eos(seqs)
    # one batched call with every slot's state (prompt + reduced prefix), in slot order
    assert calls[0] == [[10], [10, 5], [10, 5, 6], [10, 5, 6, 7], [], [8], [8, 9], [11, 11], [11, 11, 6]]
    # then one call for the rejected draws only: 5 before 5, 6 before 6, 8 before 8, 9 before 9
    assert calls[1:] == [[[10], [10, 5], [], [8]]]
    assert aug[0] == [7, BS, 5, 7, BS, 6, 9, BS, 7, 9, BS]
    assert aug[1] == [7, BS, 8, 7, BS, 9, 9, BS]
    assert aug[2] == [9, BS, 6, 9, BS]


def test_model_noise_falls_back_to_uniform():
    calls = []

    def always_true_next(prefixes):
        calls.append(len(prefixes))
        return [5] * len(prefixes)  # always the true next token: rejected every round

    seqs = [[5] * 30]
    aug = augment_with_backspace(seqs, 0.5, 8, _gen(), wrong_tokens="model", wrong_token_fn=always_true_next)
    assert apply_backspaces(aug[0]) == _strip_eos(seqs)[0]
    assert len(calls) == MODEL_DRAW_TRIES
    assert all(w in (6, 7) for w, nxt in _pairs(aug[0]) if nxt == 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(p=1.0), "p must"),
        (dict(p=-0.1), "p must"),
        (dict(p=float("nan")), "p must"),
        (dict(vocab_size=5), "vocab_size"),
        (dict(wrong_tokens="typo"), "'typo'"),
        (dict(wrong_tokens="model"), "wrong_token_fn"),
        (dict(wrong_token_fn=lambda p: [5] * len(p)), "wrong_token_fn"),
        (dict(sequences=[[5, BS, 6]]), r"sequences\[0\]\[1\] = 3"),
        (dict(sequences=[[5, EOS, 6]]), r"sequences\[0\]\[1\] = 2"),
        (dict(sequences=[[5, 12]]), r"sequences\[0\]\[1\] = 12"),
        (dict(prompts=[[5], [6]]), "prompts"),
        (dict(generator=0), "generator"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(sequences=[[5, 6]], p=0.5, vocab_size=12, generator=_gen())
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        augment_with_backspace(**args)


def test_wrong_token_fn_wrong_length_raises():
    with pytest.raises(ValueError, match="wrong_token_fn returned 1 tokens for 3 prefixes"):
        augment_with_backspace([[5, 6]], 0.999999, 12, _gen(), wrong_tokens="model", wrong_token_fn=lambda p: [7])
