import pytest

from seqenv.tokenizers import (
    BACKSPACE_ID,
    BOS_ID,
    EOS_ID,
    NUM_SPECIAL,
    PAD_ID,
    UNK_ID,
    BPETokenizer,
    CharTokenizer,
    apply_backspaces,
    tokenizer_from_dict,
)


def test_special_ids_fixed():
    tok = CharTokenizer("ab")
    assert (PAD_ID, BOS_ID, EOS_ID, BACKSPACE_ID, UNK_ID, NUM_SPECIAL) == (0, 1, 2, 3, 4, 5)
    assert tok.special_ids == {"pad": 0, "bos": 1, "eos": 2, "backspace": 3, "unk": 4}
    assert tok.eos_id == 2 and tok.backspace_id == 3
    assert tok.vocab_size == 7


def test_char_round_trip_and_ids():
    tok = CharTokenizer.from_corpus(["hello", "world!"])
    assert tok.chars == "!dehlorw"
    assert tok.encode("hold") == [5 + 3, 5 + 5, 5 + 4, 5 + 1]
    for s in ["hello", "world!", "", "dr!"]:
        assert tok.decode(tok.encode(s)) == s
    # specials are skipped in decode; backspaces are not applied by decode
    assert tok.decode([BOS_ID, 8, EOS_ID, PAD_ID]) == "h"


def test_char_unknown_policy():
    tok = CharTokenizer("ab")
    with pytest.raises(ValueError, match=r"'c' \(U\+0063\) at position 2"):
        tok.encode("abc")
    rep = CharTokenizer("ab", unk="replace")
    assert rep.encode("abc") == [5, 6, UNK_ID]
    assert rep.decode(rep.encode("abc")) == "ab\ufffd"
    with pytest.raises(ValueError, match="unk policy"):
        CharTokenizer("ab", unk="drop")
    with pytest.raises(ValueError, match="duplicate"):
        CharTokenizer("aba")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([7])


def test_bpe_lossless_and_specials():
    lines = ["def f(x): return x + 1", "x = f(2)  # comment", "print('héllo ☃')"] * 20
    tok = BPETokenizer.train(lines, vocab_size=300)
    assert tok.vocab_size <= 300 and tok.vocab_size > NUM_SPECIAL + 256
    for s in lines[:3] + ["completely unseen ∑ text\twith tabs"]:
        ids = tok.encode(s)
        assert all(i >= NUM_SPECIAL for i in ids)
        assert tok.decode(ids) == s
    assert tokenizer_from_dict(tok.to_dict()) == tok
    with pytest.raises(ValueError, match="vocab_size must be >= 261"):
        BPETokenizer.train(lines, vocab_size=100)


def test_serialisation_round_trip():
    tok = CharTokenizer("xyz", unk="replace")
    back = tokenizer_from_dict(tok.to_dict())
    assert back == tok and back.encode("zx?") == [7, 5, UNK_ID]
    assert CharTokenizer("xy") != tok
    with pytest.raises(ValueError, match="unknown tokenizer type 'wordpiece'"):
        tokenizer_from_dict({"type": "wordpiece"})


def test_apply_backspaces():
    assert apply_backspaces([5, 6, BACKSPACE_ID, 7, EOS_ID]) == [5, 7]
    assert apply_backspaces([BACKSPACE_ID, 5, BACKSPACE_ID, BACKSPACE_ID, 6]) == [6]
    # a protected prompt survives
    assert apply_backspaces([5, 6, BACKSPACE_ID, BACKSPACE_ID, BACKSPACE_ID, 7], protected=1) == [5, 7]
