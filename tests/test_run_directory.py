"""Run directories are never lost or mixed (issue 13): refused second runs, the lock, --resume checks,
--max-steps extension, stale temp files, non-finite loss message, generation without a file: corpus."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_RUN, corpus_run_flags, error_line, snapshot

from agents.common.checkpoint import load_checkpoint
from agents.common.cli import RunDirectoryError
from agents.common.rundir import RunLock
from agents.trainer import RESUME_FLAGS, NonFiniteLossError, TrainConfig, Trainer, lr_lambda
from scripts import evaluate, generate, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_fresh_run_in_a_run_directory_is_refused_and_leaves_it_intact(finished_run, capsys):
    before = snapshot(finished_run)
    assert {"checkpoint.pt", "config.json", "metrics.json", ".lock"} <= set(before)
    line = error_line(capsys, train.main, [*TINY_RUN, "--max-steps", "3", "--logdir", str(finished_run)])
    assert line.startswith(
        f"error: run directory {str(finished_run)!r} already holds a run (checkpoint.pt, config.json, "
    )
    assert "pass --resume to continue it, --overwrite to delete it" in line
    assert snapshot(finished_run) == before  # byte-identical, event files included
    # --overwrite: the old run's files are deleted first, so events never mix
    train.main([*TINY_RUN, "--max-steps", "1", "--logdir", str(finished_run), "--overwrite"])
    assert len(list(finished_run.glob("events.out.tfevents.*"))) == 1
    assert load_checkpoint(finished_run / "checkpoint.pt")["step"] == 1
    assert json.loads((finished_run / "config.json").read_text())["max_steps"] == 1


@pytest.mark.slow
def test_a_second_process_on_the_same_directory_fails_at_once(tmp_path, capsys):
    logdir = tmp_path / "busy"
    lock = RunLock(logdir)  # this process holds the run directory
    try:
        assert (logdir / ".lock").read_text() == f"{os.getpid()}\n"
        cmd = [
            sys.executable,
            str(ROOT / "scripts" / "train.py"),
            *TINY_RUN,
            "--max-steps",
            "1",
            "--logdir",
            str(logdir),
        ]
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=ROOT,
            env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT)),
        )
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == (
            f"error: run directory {str(logdir)!r} is in use by another run (process "
            f"{os.getpid()}, lock file {str(logdir / '.lock')!r}); wait for it to "
            f"finish or use another --logdir"
        )
        # in-process too (another open file description): a Trainer is refused and touches nothing
        with pytest.raises(RunDirectoryError, match=f"in use by another run \\(process {os.getpid()}"):
            Trainer(TrainConfig(logdir=str(logdir), task="oracle-hmm", device="cpu", progress=False))
        assert sorted(p.name for p in logdir.iterdir()) == [".lock"]
    finally:
        lock.release()
    t = Trainer(TrainConfig(logdir=str(logdir), task="oracle-hmm", device="cpu", progress=False, max_steps=1))
    with pytest.raises(RunDirectoryError, match="in use"):  # held for the run's life
        RunLock(logdir)
    t.close()
    RunLock(logdir).release()  # released by close()


@pytest.mark.slow
def test_resume_removes_stale_temp_files(finished_run, tmp_path):
    stale = finished_run / "checkpoint.pt.x1y2z3.tmp"  # a kill during a save leaves these
    stale.write_bytes(b"\0" * 1000)
    train.main([*TINY_RUN, "--logdir", str(finished_run), "--resume", "--max-steps", "3"])
    assert not list(finished_run.glob("*.tmp"))
    other = tmp_path / "fresh"
    other.mkdir()
    (other / "checkpoint.pt.abc.tmp").write_bytes(b"\0")
    Trainer(TrainConfig(logdir=str(other), task="oracle-hmm", device="cpu", progress=False)).close()
    assert not list(other.glob("*.tmp"))


def test_resume_refuses_flags_that_change_the_run(finished_run, capsys):
    before = snapshot(finished_run)
    line = error_line(
        capsys,
        train.main,
        [
            *TINY_RUN,
            "--logdir",
            str(finished_run),
            "--resume",
            "--lr",
            "0.01",
            "--seed",
            "3",
            "--mle.backspace-p",
            "0.1",
        ],
    )
    assert line == (
        f"error: --resume continues the run in {str(finished_run)!r} as it was configured; these flags "
        "would change it: --lr 0.01 (the run's: 0.002); --mle.backspace-p 0.1 (the run's: 0.0); "
        "--seed 3 (the run's: 0). Drop them, or start a new run (another --logdir, or --overwrite)"
    )
    line = error_line(capsys, train.main, [*TINY_RUN, "--logdir", str(finished_run), "--resume", "--max-steps", "1"])
    assert "--max-steps 1 (the run's: 2; --max-steps can only be raised)" in line
    assert snapshot(finished_run) == before
    missing = finished_run.parent / "nothing"
    assert error_line(capsys, train.main, [*TINY_RUN, "--logdir", str(missing), "--resume"]) == (
        f"error: cannot resume: {str(missing / 'checkpoint.pt')!r} does not exist (drop --resume to start a new run)"
    )


@pytest.mark.slow
def test_max_steps_extends_a_finished_run(finished_run):
    step2 = load_checkpoint(finished_run / "checkpoint.pt")
    # the same flags (device, sizes, progress) are accepted; --max-steps 4 trains steps 3 and 4
    metrics = train.main([*TINY_RUN, "--logdir", str(finished_run), "--resume", "--max-steps", "4"])
    state = load_checkpoint(finished_run / "checkpoint.pt")
    assert state["step"] == 4 and state["config"]["max_steps"] == 4
    assert json.loads((finished_run / "config.json").read_text())["max_steps"] == 4
    assert json.loads((finished_run / "metrics.json").read_text()) == metrics
    assert not torch.equal(state["model"]["wte.weight"], step2["model"]["wte.weight"])
    # the lr follows the cosine recomputed over the new max_steps (documented in lr_lambda): extended to 6,
    # the finished run (lr at its minimum, 0.1 x peak) continues at 0.1 + 0.9 * (1 + cos(0.6 pi)) / 2 of the peak
    t = Trainer(
        TrainConfig(logdir=str(finished_run), resume=True, max_steps=6, device="cpu", progress=False),
        resume_overrides=RESUME_FLAGS,
    )
    assert t.step == 4 and t.cfg.max_steps == 6
    assert lr_lambda(t.cfg)(4) == pytest.approx(0.1 + 0.45 * (1 + math.cos(0.6 * math.pi)))
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * lr_lambda(t.cfg)(4))
    t.close()


def test_non_finite_loss_does_not_claim_a_checkpoint_that_was_never_written(tmp_path, monkeypatch):
    t = Trainer(
        TrainConfig(
            logdir=str(tmp_path / "nan"), task="oracle-hmm", device="cpu", progress=False, batch_size=4, ckpt_every=5
        )
    )
    real = t.learner.loss
    monkeypatch.setattr(t.learner, "loss", lambda demos, step: (real(demos, step)[0] * float("nan"), {}))
    with pytest.raises(NonFiniteLossError) as exc:
        t.train()
    t.close()
    assert str(exc.value) == (
        "loss became nan at step 0; stopped. No checkpoint was written (the first is due at "
        "step 5) (lower --lr or check the data)"
    )
    assert not (tmp_path / "nan" / "checkpoint.pt").exists()


def test_generate_from_a_moved_file_corpus(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"x{i % 9} = y{i % 5}\n" for i in range(60)), encoding="utf-8")
    logdir = tmp_path / "run"
    train.main(corpus_run_flags(corpus, logdir))
    corpus.rename(tmp_path / "elsewhere.txt")
    out = tmp_path / "samples.txt"
    texts = generate.main(
        ["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "5", "--device", "cpu", "--out", str(out)]
    )
    assert len(texts) == 5 and out.read_text(encoding="utf-8").count("\n") == 5
    assert all(set(t) <= set("xy0123456789 =") | {"\ufffd"} for t in texts)
    # held-out metrics need the texts: one line naming the file
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        evaluate.main(["--checkpoint", str(logdir / "checkpoint.pt"), "--num-samples", "2", "--device", "cpu"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: task ") and repr(str(corpus)) in err
