"""The command-line scripts end to end on a tiny model: train, generate, evaluate, on a file: task."""

import json

import pytest

from agents.common.checkpoint import CheckpointError
from scripts import evaluate, generate, train

TINY = ["--model.n-layer", "1", "--model.n-head", "2", "--model.n-embd", "32", "--no-progress", "--device", "cpu"]


def _script(name):
    return {"train": train, "generate": generate, "evaluate": evaluate}[name]


@pytest.fixture(scope="module")
def file_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scripts")
    corpus = tmp / "corpus.txt"
    corpus.write_text("".join(f"{w} = {w}{i % 7} + {i}\n" for i, w in enumerate(["alpha", "beta", "gamma", "delta"] * 30)),
                      encoding="utf-8")
    logdir = tmp / "run"
    metrics = _script("train").main(["--task", f"file:{corpus}", "--max-steps", "4", "--batch-size", "8",
                                     "--eval-samples", "8", "--logdir", str(logdir), *TINY])
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
    texts = gen.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "12", "--out", str(out),
                      "--seed", "1", "--device", "cpu"])
    lines = out.read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and lines[:-1] == texts and len(texts) == 12
    allowed = set(corpus.read_text(encoding="utf-8")) - {"\n"}
    assert all(set(t) <= allowed | {"\ufffd"} for t in texts)
    # same seed, same samples; energy reranking returns one of its candidates per output
    assert gen.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "12", "--seed", "1",
                     "--device", "cpu", "--out", str(tmp / "again.txt")]) == texts
    reranked = gen.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "5", "--rerank", "energy",
                         "--candidates", "3", "--device", "cpu", "--out", str(tmp / "r.txt")])
    assert len(reranked) == 5
    with pytest.raises(ValueError, match="--rerank critic needs --critic"):
        gen.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--rerank", "critic", "--device", "cpu"])
    with pytest.raises(ValueError, match="--num-samples must be >= 1, got 0"):
        gen.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "0", "--device", "cpu"])


def test_evaluate_writes_metrics_json(file_run, tmp_path):
    _, _, logdir, _ = file_run
    out = tmp_path / "m.json"
    metrics = _script("evaluate").main(["--checkpoint", str(logdir / "checkpoint.pt"), "--out", str(out),
                                        "--num-samples", "16", "--device", "cpu"])
    saved = json.loads(out.read_text())
    assert saved == metrics
    for key in ("validity", "nll", "perplexity", "oracle_nll", "bleu4", "self_bleu4", "distinct_2", "mean_length",
                "backspace_rate"):
        assert key in saved
    assert saved["perplexity"] == pytest.approx(2.718281828 ** saved["nll"], rel=1e-6)


def test_scripts_reject_bad_checkpoints(file_run, tmp_path):
    _, _, logdir, _ = file_run
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _script("evaluate").main(["--checkpoint", str(tmp_path / "none.pt"), "--device", "cpu"])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        _script("generate").main(["--checkpoint", str(bad), "--device", "cpu"])
    with pytest.raises(CheckpointError, match="different tokenizer"):
        _script("evaluate").main(["--checkpoint", str(logdir / "checkpoint.pt"), "--task", "oracle-hmm",
                                  "--device", "cpu"])
