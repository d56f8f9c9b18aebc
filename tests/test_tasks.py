import itertools
import json
import math
import warnings
from collections import Counter

import pytest
import torch

from seqenv.env import SeqGenEnv
from seqenv.oracle import HMMOracle, pad_sequences
from seqenv.tasks import (
    MIN_SPLIT_TEXTS,
    MissingTaskDataError,
    _parses_as_statement,
    hash_splits,
    list_tasks,
    make_task,
    oracle_hmm,
    python_is_valid,
    split_of,
    task_from_spec,
)
from seqenv.tokenizers import EOS_ID


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
NOISY_SAMPLES = {
    "1_a = 0x": False,
    "x = 1if y else 2": True,
    "'\\d'": True,
    "x = 1if": False,
    'y = "\\d" +': False,
    "a = 0x1for": False,
    "print(1if x)": False,
}


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
    with pytest.raises(
        ValueError,
        match=r"unknown task 'nope'; valid tasks: arithmetic, oracle-hmm, pydoc-text, python-lines, file:PATH",
    ):
        make_task("nope")
    assert list_tasks() == ["arithmetic", "oracle-hmm", "pydoc-text", "python-lines", "file:PATH"]


def test_file_task(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("alpha\n\nbeta gamma\r\ndelta\n  \nepsilon\nzeta\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=r"has only 5 distinct texts \(fewer than 10\): every split"):
        task = make_task(f"file:{p}")
    for s in ("train", "valid", "test"):
        assert task.splits[s] == ["alpha", "beta gamma", "delta", "epsilon", "zeta"]
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


# -- small corpora and file: task specs (issue 13, items 7 and 8) ----------------
def _write(path, lines):
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("n", [1, 2, 9])
def test_tiny_file_corpus_uses_every_line_in_every_split(tmp_path, n):
    lines = [f"line number {i}" for i in range(n)]
    p = _write(tmp_path / "tiny.txt", lines + lines[:1])  # a repeated line counts once
    with pytest.warns(
        UserWarning,
        match=rf"has only {n} distinct texts \(fewer than 10\): every split \(train, "
        r"valid, test\) is all",
    ):
        task = make_task(f"file:{p}")
    assert task.splits == {"train": lines, "valid": lines, "test": lines}


def test_file_corpus_from_ten_lines_has_every_split_nonempty(tmp_path):
    lines = [f"line number {i}" for i in range(MIN_SPLIT_TEXTS)]
    p = _write(tmp_path / "ten.txt", lines)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        task = make_task(f"file:{p}")
    assert all(task.splits[s] for s in ("train", "valid", "test"))
    assert sorted(t for v in task.splits.values() for t in v) == sorted(lines)  # each line in one split


def test_dropped_long_lines_are_counted_and_held_out_splits_stay_nonempty(tmp_path):
    # the only test-bucket lines are the long ones: dropping them must not leave the test split empty
    short = [f"s{i}" for i in range(400) if split_of(f"s{i}") != "test"][:30]
    long_ = [f"long line {i}" for i in range(400) if split_of(f"long line {i}") == "test"][:3]
    p = _write(tmp_path / "c.txt", short + long_)
    with pytest.warns(UserWarning, match=r"dropped 3 of 33 texts longer than 5 tokens \(max_length=6 keeps one step"):
        task = make_task(f"file:{p}", max_length=6)
    assert all(task.splits[s] for s in ("train", "valid", "test"))
    assert sorted(t for v in task.splits.values() for t in v) == sorted(short)


def test_file_task_on_a_directory_says_so(tmp_path):
    with pytest.raises(ValueError, match=r"is a directory; expected a UTF-8 text file"):
        make_task(f"file:{tmp_path}")


def _corpus(tmp_path):
    return _write(
        tmp_path / "corpus.txt", [f"{w} = {i}" for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 5)]
    )


def test_a_file_task_spec_generates_without_the_corpus(tmp_path):
    p = _corpus(tmp_path)
    task = make_task(f"file:{p}")
    spec = json.loads(json.dumps(task.spec()))  # as stored in a checkpoint
    assert spec["file"]["path"] == str(p.resolve()) and len(spec["file"]["sha256"]) == 64
    p.rename(tmp_path / "moved.txt")
    rebuilt = task_from_spec(spec)
    assert not rebuilt.has_data and rebuilt.name == task.name and rebuilt.spec() == spec
    assert rebuilt.tokenizer == task.tokenizer and rebuilt.max_length == task.max_length
    assert make_task(spec).tokenizer == task.tokenizer
    with pytest.raises(
        MissingTaskDataError,
        match=rf"its texts need the file '{p.resolve()}' \('.*' does not exist.*"
        r"\(needed: the 'test' split\)",
    ):
        rebuilt.encoded("test")
    with pytest.raises(FileNotFoundError, match="without its corpus file"):
        list(rebuilt.splits.values())
    # generation needs only the tokenizer and max_length: an episode runs
    env = SeqGenEnv(task=rebuilt)
    env.reset(seed=0)
    ids = rebuilt.tokenizer.encode("beta = 1")
    for a in ids + [EOS_ID]:
        obs, _, term, _, _ = env.step(a)
    assert term and rebuilt.tokenizer.decode(obs["tokens"][: int(obs["length"])]) == "beta = 1"


def test_a_relative_file_task_spec_finds_its_corpus_from_another_directory(tmp_path, monkeypatch):
    _corpus(tmp_path)
    monkeypatch.chdir(tmp_path)
    task = make_task("file:corpus.txt", max_length=20)
    spec = task.spec()
    assert spec["name"] == "file:corpus.txt" and spec["args"] == {"max_length": 20}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    rebuilt = task_from_spec(spec)
    assert rebuilt.has_data and rebuilt.splits == task.splits and rebuilt.spec() == spec


def test_a_changed_corpus_is_flagged(tmp_path):
    p = _corpus(tmp_path)
    task = make_task(f"file:{p}")
    spec = task.spec()
    lines = p.read_text(encoding="utf-8").splitlines()
    _write(p, lines[::-1])  # same lines and tokenizer, other bytes (and order)
    with pytest.warns(UserWarning, match="differs from the one the spec was made from"):
        changed = task_from_spec(spec)
    assert changed.has_data and sorted(
        changed.splits["train"] + changed.splits["valid"] + changed.splits["test"]
    ) == sorted(lines)
    _write(p, lines + ["a new character: Z"])  # another tokenizer: the file no longer serves the spec
    rebuilt = task_from_spec(spec)
    assert not rebuilt.has_data and rebuilt.tokenizer == task.tokenizer
    with pytest.raises(MissingTaskDataError, match="no longer matches: .*different tokenizer"):
        rebuilt.encoded("valid")


def test_malformed_specs():
    with pytest.raises(ValueError, match="a task spec is a dict with 'name'"):
        task_from_spec({"name": "python-lines"})
    spec = make_task("oracle-hmm").spec()
    with pytest.raises(ValueError, match="has max_length 25, the spec says 30"):
        task_from_spec({**spec, "max_length": 30})


@pytest.mark.slow
def test_max_length_validation():
    with pytest.raises(ValueError, match="needs max_length >= 25"):
        make_task("oracle-hmm", max_length=10)


def _enumerate(oracle):
    seqs = [
        list(s)
        for n in range(1, oracle.max_length + 1)
        for s in itertools.product(range(5, 5 + oracle.num_symbols), repeat=n)
    ]
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


def test_corpus_hash_identifies_the_texts():
    from seqenv.tasks import Task
    from seqenv.tokenizers import CharTokenizer

    tok = CharTokenizer("abc")
    base = dict(name="t", tokenizer=tok, max_length=8)
    a = Task(splits={"train": ["ab", "c"], "valid": ["a"], "test": ["b"]}, **base)
    same = Task(splits={"train": ["ab", "c"], "valid": ["a"], "test": ["b"]}, **base)
    moved = Task(splits={"train": ["a", "bc"], "valid": ["a"], "test": ["b"]}, **base)  # same characters, other texts
    resplit = Task(splits={"train": ["ab"], "valid": ["c", "a"], "test": ["b"]}, **base)
    assert len(a.corpus_hash) == 64 and a.corpus_hash == same.corpus_hash
    assert a.corpus_hash != moved.corpus_hash
    assert a.corpus_hash != resplit.corpus_hash
