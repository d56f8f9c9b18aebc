import itertools
import math
import warnings
from collections import Counter

import pytest
import torch

from seqenv.oracle import HMMOracle, pad_sequences
from seqenv.tasks import _parses_as_statement, hash_splits, list_tasks, make_task, oracle_hmm, python_is_valid, split_of


def test_python_lines_task():
    task = make_task("python-lines")
    assert task.name == "python-lines" and task.max_length == 64
    assert task.tokenizer.vocab_size == 100
    sizes = {k: len(v) for k, v in task.splits.items()}
    assert sizes["train"] > 10000 and sizes["valid"] > 500 and sizes["test"] > 500
    assert not set(task.splits["train"]) & set(task.splits["test"])
    for line in task.splits["valid"][:200]:
        assert task.is_valid(line) and 8 <= len(line) <= 60
    assert task.is_valid("x = f(1)") and not task.is_valid("x = f(1") and not task.is_valid("else:")
    # encoded + eos fit max_length
    assert max(len(s) for s in task.encoded("train")) < task.max_length


# texts whose parse makes Python 3.11's compiler emit a SyntaxWarning/DeprecationWarning
# ("invalid decimal literal", "invalid escape sequence", "invalid hexadecimal literal")
NOISY_SAMPLES = {"1_a = 0x": False, "x = 1if y else 2": True, "'\\d'": True, "x = 1if": False,
                 'y = "\\d" +': False, "a = 0x1for": False, "print(1if x)": False}


def test_python_validity_check_is_silent():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = {t: python_is_valid(t) for t in NOISY_SAMPLES}
        statements = [_parses_as_statement(t) for t in NOISY_SAMPLES]  # the corpus builder's filter
    assert [str(w.message) for w in caught] == []
    assert results == NOISY_SAMPLES  # the verdicts are those of ast.parse
    assert statements == [False, True, False, False, False, False, False]  # a bare literal is no statement


def test_splits_deterministic_and_stable():
    texts = [f"line {i}" for i in range(300)]
    a = hash_splits(texts)
    b = hash_splits(list(reversed(texts)))
    for s in ("train", "valid", "test"):
        assert sorted(a[s]) == sorted(b[s])  # split depends on the text only
    assert split_of("line 7") == split_of("line 7")
    assert sum(map(len, a.values())) == 300 and len(a["test"]) > 0


def test_pydoc_text_task():
    task = make_task("pydoc-text")
    assert len(task.splits["train"]) > 300
    assert all(task.is_valid(s) for s in task.splits["test"])
    assert not task.is_valid("the lowercase start is invalid.")
    assert not task.is_valid("Qwxzzy frobnicates the zorblax.")


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown task 'nope'; valid tasks: arithmetic, oracle-hmm, pydoc-text, python-lines, file:PATH"):
        make_task("nope")
    assert list_tasks() == ["arithmetic", "oracle-hmm", "pydoc-text", "python-lines", "file:PATH"]


def test_file_task(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("alpha\n\nbeta gamma\r\ndelta\n  \nepsilon\nzeta\n", encoding="utf-8")
    task = make_task(f"file:{p}")
    all_lines = sorted(t for v in task.splits.values() for t in v)
    assert all_lines == ["alpha", "beta gamma", "delta", "epsilon", "zeta"]
    assert all(task.splits[s] for s in ("train", "valid", "test"))
    assert task.max_length == len("beta gamma") + 1
    assert task.validity is None
    with pytest.raises(ValueError, match="has no validity checker"):
        task.is_valid("x")


def test_file_task_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_task(f"file:{tmp_path / 'missing.txt'}")
    empty = tmp_path / "e.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty"):
        make_task(f"file:{empty}")
    bad = tmp_path / "b.txt"
    bad.write_bytes(b"ok line\nbad \xff byte\n")
    with pytest.raises(ValueError, match=r"not valid UTF-8: byte 12"):
        make_task(f"file:{bad}")
    with pytest.raises(ValueError, match="needs a path"):
        make_task("file:")


def test_max_length_validation():
    with pytest.raises(ValueError, match="needs max_length >= 25"):
        make_task("oracle-hmm", max_length=10)


def _enumerate(oracle):
    seqs = [list(s) for n in range(1, oracle.max_length + 1) for s in itertools.product(range(5, 5 + oracle.num_symbols), repeat=n)]
    return seqs, pad_sequences(seqs)


def test_oracle_log_prob_is_a_distribution():
    o = HMMOracle(num_symbols=2, num_states=3, max_length=5, mean_length=2.0, seed=3)
    seqs, (tok, lens) = _enumerate(o)
    p = o.log_prob(tok, lens).exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12)
    # prefix probability = sum of the probabilities of all completions
    for prefix in ([5], [6, 5], [5, 5, 6]):
        expect = sum(p[i].item() for i, s in enumerate(seqs) if s[: len(prefix)] == prefix)
        got = o.prefix_log_prob(torch.tensor([prefix]), torch.tensor([len(prefix)])).exp().item()
        assert got == pytest.approx(expect, rel=1e-10)
    assert o.prefix_log_prob(torch.tensor([[5]]), torch.tensor([0])).item() == 0.0


def test_oracle_sampler_matches_log_prob():
    o = HMMOracle(num_symbols=2, num_states=3, max_length=4, mean_length=2.0, seed=1)
    seqs, (tok, lens) = _enumerate(o)
    p = o.log_prob(tok, lens).exp()
    samples = o.sample(20000, torch.Generator().manual_seed(0))
    assert max(map(len, samples)) <= 4
    counts = Counter(map(tuple, samples))
    tv = 0.5 * sum(abs(counts[tuple(s)] / 20000 - p[i].item()) for i, s in enumerate(seqs))
    assert tv < 0.03  # 30 outcomes, 20000 draws: expected TV ~ 0.01


def test_oracle_task_and_errors():
    task = make_task("oracle-hmm")
    assert task.tokenizer.vocab_size == 21 and task.max_length == 25
    assert task.oracle is not None and len(task.splits["train"]) == 20000
    tok, lens = pad_sequences(task.encoded("valid")[:100])
    lp = task.oracle.log_prob(tok, lens)
    assert torch.isfinite(lp).all() and (lp < 0).all()
    with pytest.raises(ValueError, match=r"token id 2 at row 0, position 1 is not an oracle symbol"):
        task.oracle.log_prob(torch.tensor([[5, 2]]), torch.tensor([2]))
    with pytest.raises(ValueError, match="num_symbols must be >= 2"):
        HMMOracle(num_symbols=1)
    # same seed, same oracle and same data
    a = oracle_hmm(num_train=50, num_eval=10)
    b = oracle_hmm(num_train=50, num_eval=10)
    assert a.splits == b.splits and len(set(a.splits["train"])) > 10
    assert math.isclose(a.oracle.log_z, task.oracle.log_z)
