"""The command-line scripts end to end on a tiny model: train, generate, evaluate, on a file: task."""

import json
import os

import pytest

from agents.common.checkpoint import CheckpointError, load_checkpoint
from scripts import evaluate, generate, train

TINY = ["--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--no-progress", "--device", "cpu"]


def _script(name):
    return {"train": train, "generate": generate, "evaluate": evaluate}[name]


def _error_line(capsys, main, argv) -> str:
    """Run a script's ``main(argv)``, expect exit status 2 and exactly one stderr line ``error: ...``; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scripts")
    corpus = tmp / "corpus.txt"
    corpus.write_text(
        "".join(f"{w} = {w}{i % 7} + {i}\n" for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 30)),
        encoding="utf-8",
    )
    logdir = tmp / "run"
    metrics = _script("train").main(
        [
            "--task",
            f"file:{corpus}",
            "--max-steps",
            "4",
            "--batch-size",
            "8",
            "--eval-samples",
            "8",
            "--logdir",
            str(logdir),
            *TINY,
        ]
    )
    return tmp, corpus, logdir, metrics


def test_train_on_a_file_task_writes_the_run_directory(file_run):
    _, corpus, logdir, metrics = file_run
    assert {"config.json", "checkpoint.pt", "metrics.json"} <= {p.name for p in logdir.iterdir()}
    assert json.loads((logdir / "config.json").read_text())["task"] == f"file:{corpus}"
    assert metrics["num_samples"] == 8 and metrics["validity"] is None  # a file task has no checker


def test_generate_writes_one_decoded_sequence_per_line(file_run):
    tmp, corpus, logdir, _ = file_run
    out = tmp / "samples.txt"
    gen = _script("generate")
    texts = gen.main(
        [
            "--checkpoint",
            str(logdir / "checkpoint.pt"),
            "--num-samples",
            "12",
            "--out",
            str(out),
            "--seed",
            "1",
            "--device",
            "cpu",
        ]
    )
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[:-1] == texts and len(texts) == 12
    allowed = set(corpus.read_text(encoding="utf-8")) - {"\n"}
    assert all(set(t) <= allowed | {"\ufffd"} for t in texts)
    # same seed, same samples; energy reranking returns one of its candidates per output
    assert (
        gen.main(
            [
                "--checkpoint",
                str(logdir / "checkpoint.pt"),
                "--num-samples",
                "12",
                "--seed",
                "1",
                "--device",
                "cpu",
                "--out",
                str(tmp / "again.txt"),
            ]
        )
        == texts
    )
    reranked = gen.main(
        [
            "--checkpoint",
            str(logdir / "checkpoint.pt"),
            "--num-samples",
            "5",
            "--rerank",
            "energy",
            "--candidates",
            "3",
            "--device",
            "cpu",
            "--out",
            str(tmp / "r.txt"),
        ]
    )
    assert len(reranked) == 5


def test_scripts_reject_bad_flags_with_one_line(file_run, tmp_path, capsys):
    _, _, logdir, _ = file_run
    ckpt = ["--checkpoint", str(logdir / "checkpoint.pt"), "--device", "cpu"]
    cases = [
        (generate.main, [*ckpt, "--rerank", "critic"], "error: --rerank critic needs --critic"),
        (
            generate.main,
            [*ckpt, "--num-samples", "0"],
            "error: --num-samples must be an integer >= 1 and <= 1000000, got 0",
        ),
        (
            generate.main,
            [*ckpt, "--temperature", "inf"],
            "error: --temperature must be a finite number >= 0.001, got inf",
        ),
        (
            generate.main,
            [*ckpt, "--temperature", "0"],
            "error: --temperature must be a finite number >= 0.001, got 0.0",
        ),
        (generate.main, [*ckpt, "--top-k", "0"], "error: --top-k must be an integer >= 1, got 0"),
        (generate.main, [*ckpt, "--top-p", "1.5"], "error: --top-p must be a finite number > 0 and <= 1, got 1.5"),
        (generate.main, [*ckpt, "--top-p", "nan"], "error: --top-p must be a finite number > 0 and <= 1, got nan"),
        (
            generate.main,
            [*ckpt, "--batch-size", "0"],
            "error: --batch-size must be an integer >= 1 and <= 1000000, got 0",
        ),
        (
            generate.main,
            [*ckpt, "--candidates", "0"],
            "error: --candidates must be an integer >= 1 and <= 1000000, got 0",
        ),
        (
            evaluate.main,
            [*ckpt, "--num-samples", "-3"],
            "error: --num-samples must be an integer >= 1 and <= 1000000, got -3",
        ),
        (
            evaluate.main,
            [*ckpt, "--temperature", "-1"],
            "error: --temperature must be a finite number >= 0.001, got -1.0",
        ),
        (train.main, [*TINY, "--grad-clip", "-1"], "error: --grad-clip must be a finite number > 0, got -1.0"),
        (train.main, [*TINY, "--grad-clip", "0"], "error: --grad-clip must be a finite number > 0, got 0.0"),
        (train.main, [*TINY, "--lr", "inf"], "error: --lr must be a finite number > 0 and <= 1e+06, got inf"),
        (
            train.main,
            [*TINY, "--max-steps", "0"],
            "error: --max-steps must be an integer >= 1 and <= 1000000000, got 0",
        ),
        (train.main, [*TINY, "--seed", "-1"], "error: --seed must be an integer >= 0 and <= 2147483647, got -1"),
        (train.main, [*TINY, "--weight-decay", "nan"], "error: --weight-decay must be a finite number >= 0, got nan"),
        (train.main, [*TINY, "--min-lr-ratio", "2"], "error: --min-lr-ratio must be a finite number >= 0 and <= 1"),
        (
            train.main,
            [*TINY, "--model.n-head", "3"],
            "error: --model.n-embd (32) must be divisible by --model.n-head (3)",
        ),
        (
            train.main,
            [*TINY, "--model.dropout", "1"],
            "error: --model.dropout must be a finite number >= 0 and < 1, got 1.0",
        ),
        (train.main, [*TINY, "--mle.backspace-p", "1.5"], "error: --mle.backspace-p must be in [0, 1), got 1.5"),
        (
            train.main,
            [*TINY, "--sequencematch.rollout-temperature", "inf"],
            "error: --sequencematch.rollout-temperature must be a finite number, got inf",
        ),
        (
            train.main,
            [*TINY, "--nce.critic-n-layer", "0"],
            "error: --nce.critic-n-layer must be an integer >= 1, got 0",
        ),
        (train.main, [*TINY, "--lr", "abc"], "error: --lr: could not convert string to float: 'abc'"),
        (train.main, [*TINY, "--resume", "--overwrite"], "error: --resume continues the run in --logdir"),
    ]
    safe = ["--max-steps", "1", "--logdir", str(tmp_path / "never"), "--eval-samples", "1"]  # if a check were missing
    for main, argv, expected in cases:
        line = _error_line(capsys, main, [*safe, *argv] if main is train.main else argv)
        assert line.startswith(expected), (argv, line)
    # --debug: the same error with its traceback
    with pytest.raises(ValueError, match="--grad-clip must be a finite number > 0, got -1.0"):
        train.main(["--grad-clip", "-1", "--debug", *TINY])


def test_output_paths_are_checked_before_the_work(file_run, tmp_path, capsys, monkeypatch):
    _, _, logdir, _ = file_run
    ckpt = ["--checkpoint", str(logdir / "checkpoint.pt"), "--device", "cpu"]

    def no_work(*a, **k):
        raise AssertionError("work started before --out was checked")

    monkeypatch.setattr(generate, "load_policy", no_work)
    monkeypatch.setattr(evaluate, "load_policy", no_work)
    missing = tmp_path / "no" / "such" / "dir" / "out.txt"
    assert (
        _error_line(capsys, generate.main, [*ckpt, "--out", str(missing)])
        == f"error: --out {str(missing)!r}: directory {str(missing.parent)!r} does not exist"
    )
    assert (
        _error_line(capsys, evaluate.main, [*ckpt, "--out", str(tmp_path)])
        == f"error: --out {str(tmp_path)!r} is a directory; give a file path"
    )
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "ro"
        locked.mkdir()
        locked.chmod(0o500)
        try:
            line = _error_line(capsys, generate.main, [*ckpt, "--out", str(locked / "x.txt")])
            assert line.endswith("is not writable")
        finally:
            locked.chmod(0o700)


def test_evaluate_writes_metrics_json(file_run, tmp_path):
    _, _, logdir, _ = file_run
    out = tmp_path / "m.json"
    metrics = _script("evaluate").main(
        ["--checkpoint", str(logdir / "checkpoint.pt"), "--out", str(out), "--num-samples", "16", "--device", "cpu"]
    )
    saved = json.loads(out.read_text())
    assert saved == metrics
    for key in (
        "validity",
        "nll",
        "perplexity",
        "oracle_nll",
        "bleu4",
        "self_bleu4",
        "distinct_2",
        "mean_length",
        "backspace_rate",
    ):
        assert key in saved
    assert saved["perplexity"] == pytest.approx(2.718281828 ** saved["nll"], rel=1e-6)


def test_scripts_reject_bad_checkpoints(file_run, tmp_path, capsys):
    _, _, logdir, _ = file_run
    none = tmp_path / "none.pt"
    assert (
        _error_line(capsys, evaluate.main, ["--checkpoint", str(none), "--device", "cpu"])
        == f"error: checkpoint {str(none)!r} does not exist"
    )
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    assert "corrupt" in _error_line(capsys, generate.main, ["--checkpoint", str(bad), "--device", "cpu"])
    # a text file: the unpickler raised a raw KeyError before
    text = tmp_path / "notes.txt"
    text.write_text("effective notes\n")
    line = _error_line(capsys, train.main, ["--init", str(text), "--logdir", str(tmp_path / "t"), *TINY])
    assert line.startswith(f"error: checkpoint {str(text)!r} is corrupt or not a torch file")
    with pytest.raises(CheckpointError, match="corrupt or not a torch file"):
        load_checkpoint(text)
    assert (
        _error_line(capsys, generate.main, ["--checkpoint", str(logdir), "--device", "cpu"])
        == f"error: checkpoint {str(logdir)!r} is a directory, not a checkpoint file (did you mean its checkpoint.pt?)"
    )
    assert "different tokenizer" in _error_line(
        capsys,
        evaluate.main,
        ["--checkpoint", str(logdir / "checkpoint.pt"), "--task", "oracle-hmm", "--device", "cpu"],
    )
    with pytest.raises(CheckpointError, match="different tokenizer"):
        evaluate.main(
            ["--checkpoint", str(logdir / "checkpoint.pt"), "--task", "oracle-hmm", "--device", "cpu", "--debug"]
        )
