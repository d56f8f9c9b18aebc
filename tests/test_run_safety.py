"""Never lose or corrupt a run, part 2 (issue 19): one test per reported defect, numbered as in the issue."""

import gc
import json
import os
import signal
import stat
import sys
from pathlib import Path

import pytest
import torch
from tiny import TINY_FLAGS, TINY_RUN, corpus_run_flags, error_line, snapshot, tiny_train_config

from agents.common import rundir
from agents.common.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from agents.common.cli import TrainingInterrupted, run_cli
from agents.common.rundir import MARKER, RunDirectory, RunLock
from agents.trainer import Callback, NonFiniteLossError, Trainer
from scripts import evaluate, generate, ppo_critic, train
from seqenv.tasks import make_task


def _cfg(tmp_path, name, **kw):
    """The tiny training config with batch 4, 4 evaluation samples and 1 warmup step (callers set the steps)."""
    return tiny_train_config(tmp_path, name, **{"batch_size": 4, "eval_samples": 4, "warmup_steps": 1, **kw})


# 1 ---------------------------------------------------------------------------------------------------------
def test_1_ppo_critic_refuses_a_directory_holding_a_run_and_overwrite_reads_inputs_first(finished_run, capsys):
    before = snapshot(finished_run, lock=False)
    ckpt = str(finished_run / "checkpoint.pt")
    line = error_line(
        capsys,
        ppo_critic.main,
        ["--checkpoint", ckpt, "--critic", ckpt, "--logdir", str(finished_run), "--device", "cpu"],
    )
    assert line.startswith(f"error: run directory {str(finished_run)!r} already holds a run (checkpoint.pt, ")
    assert snapshot(finished_run, lock=False) == before
    # --overwrite: the inputs are read (and here rejected: an mle checkpoint is no critic) before anything is deleted
    line = error_line(
        capsys,
        ppo_critic.main,
        ["--checkpoint", ckpt, "--critic", ckpt, "--logdir", str(finished_run), "--device", "cpu", "--overwrite"],
    )
    assert "is not an nce checkpoint" in line
    assert snapshot(finished_run, lock=False) == before
    # it takes the lock: a second process on the directory is refused
    lock = RunLock(finished_run)
    try:
        line = error_line(
            capsys,
            ppo_critic.main,
            ["--checkpoint", ckpt, "--critic", ckpt, "--logdir", str(finished_run), "--device", "cpu", "--overwrite"],
        )
        assert "is in use by another run" in line
    finally:
        lock.release()


# 2 ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_2_overwrite_reads_the_init_checkpoint_before_deleting_it(finished_run):
    old = load_checkpoint(finished_run / "checkpoint.pt")
    train.main(
        [
            *TINY_RUN,
            "--max-steps",
            "1",
            "--init",
            str(finished_run / "checkpoint.pt"),
            "--logdir",
            str(finished_run),
            "--overwrite",
            "--lr",
            "1e-9",
        ]
    )
    new = load_checkpoint(finished_run / "checkpoint.pt")
    assert new["step"] == 1 and new["config"]["init"] == str(finished_run / "checkpoint.pt")
    # warm-started from the old weights (lr 1e-9: one AdamW step moves each weight by at most ~1e-9)
    assert torch.allclose(new["model"]["wte.weight"], old["model"]["wte.weight"], atol=1e-6)
    assert len(list(finished_run.glob("events.out.tfevents.*"))) == 1  # the old run's events were deleted
    assert not (finished_run / "checkpoint.prev.pt").exists()  # a finished run keeps no rollback copy


# 3 ---------------------------------------------------------------------------------------------------------
def test_3_resume_and_evaluate_refuse_an_edited_corpus(tmp_path, capsys):
    corpus = tmp_path / "data.txt"
    corpus.write_text("".join(f"ab{i % 7} = c{i % 5}\n" for i in range(80)), encoding="utf-8")
    logdir = tmp_path / "run"
    train.main(corpus_run_flags(corpus, logdir))
    state = load_checkpoint(logdir / "checkpoint.pt")
    saved_hash = make_task(f"file:{corpus}").corpus_hash
    assert state["corpus_sha256"] == saved_hash
    before = snapshot(logdir, lock=False)
    # an edit that keeps the same characters: the tokenizer matches, the texts do not
    corpus.write_text("".join(f"ba{i % 7} = c{i % 5}\n" for i in range(80)), encoding="utf-8")
    new_hash = make_task(f"file:{corpus}").corpus_hash
    assert new_hash != saved_hash
    line = error_line(capsys, train.main, ["--logdir", str(logdir), "--resume", "--max-steps", "2", *TINY_FLAGS])
    assert saved_hash in line and new_hash in line and "--allow-corpus-mismatch" in line
    line = error_line(
        capsys, evaluate.main, ["--checkpoint", str(logdir / "checkpoint.pt"), "--device", "cpu", "--num-samples", "2"]
    )
    assert line.startswith("error: the corpus of task") and saved_hash in line and new_hash in line
    assert snapshot(logdir, lock=False) == before
    # --init on the same task: refused too (another task over the same characters would be allowed)
    line = error_line(
        capsys,
        train.main,
        [
            "--task",
            f"file:{corpus}",
            "--init",
            str(logdir / "checkpoint.pt"),
            "--max-steps",
            "1",
            "--logdir",
            str(tmp_path / "init"),
            *TINY_FLAGS,
        ],
    )
    assert line.startswith(f"error: the corpus of task 'file:{corpus}' differs from the one --init checkpoint")
    assert not (tmp_path / "init").exists()
    # an edit with new characters: another tokenizer, refused in one line too (no shape-mismatch traceback)
    corpus.write_text("".join(f"xyz{i % 7} = q{i % 5}\n" for i in range(80)), encoding="utf-8")
    line = error_line(capsys, train.main, ["--logdir", str(logdir), "--resume", "--max-steps", "2", *TINY_FLAGS])
    assert "with a different tokenizer" in line
    assert snapshot(logdir, lock=False) == before
    # overridden: the run goes on and says so in metrics.json (and evaluate.py's output)
    corpus.write_text("".join(f"ba{i % 7} = c{i % 5}\n" for i in range(80)), encoding="utf-8")
    metrics = train.main(
        ["--logdir", str(logdir), "--resume", "--max-steps", "2", "--allow-corpus-mismatch", *TINY_FLAGS]
    )
    assert metrics["corpus_mismatch"] is True
    assert json.loads((logdir / "metrics.json").read_text())["corpus_mismatch"] is True
    out = tmp_path / "m.json"
    evaluate.main(
        [
            "--checkpoint",
            str(logdir / "checkpoint.pt"),
            "--device",
            "cpu",
            "--num-samples",
            "2",
            "--allow-corpus-mismatch",
            "--out",
            str(out),
        ]
    )
    # the resumed run saved the new corpus' hash: evaluating on it is no mismatch any more
    assert load_checkpoint(logdir / "checkpoint.pt")["corpus_sha256"] == new_hash
    assert "corpus_mismatch" not in json.loads(out.read_text())
    # an old checkpoint without the hash still loads and evaluates
    del state["corpus_sha256"]
    state.pop("format")
    save_checkpoint(state, tmp_path / "old.pt")
    evaluate.main(["--checkpoint", str(tmp_path / "old.pt"), "--device", "cpu", "--num-samples", "2"])


# 4 ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_4_divergence_never_replaces_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    # the command: lr 1e6 diverges at once; the only checkpoint (step 1) holds the diverged state
    logdir = tmp_path / "lr"
    line = error_line(
        capsys,
        train.main,
        [*TINY_RUN, "--lr", "1e6", "--warmup-steps", "0", "--max-steps", "6", "--logdir", str(logdir)],
    )
    assert line == (
        f"error: loss became nan at step 1; stopped. The only checkpoint (step 1) held the diverged "
        f"state: moved to {str(logdir / 'checkpoint.diverged.pt')!r}. No good checkpoint remains; start "
        "again with --overwrite (lower --lr or check the data)"
    )
    assert not (logdir / "checkpoint.pt").exists()
    # a loss that turns non-finite at step 3, right after the step-3 checkpoint: step 2's is restored
    t = Trainer(_cfg(tmp_path, "nan", ckpt_every=1, max_steps=10))
    real = t.learner.loss
    monkeypatch.setattr(
        t.learner, "loss", lambda demos, step: (real(demos, step)[0] * (float("nan") if step == 3 else 1.0), {})
    )
    with pytest.raises(NonFiniteLossError) as exc:
        t.train()
    t.close()
    path = tmp_path / "nan" / "checkpoint.pt"
    assert str(exc.value) == (
        f"loss became nan at step 3; stopped. The checkpoint of step 3 held the diverged state: "
        f"moved to {str(path.parent / 'checkpoint.diverged.pt')!r}. The last good checkpoint "
        f"{str(path)!r} (step 2) is kept (lower --lr or check the data)"
    )
    assert load_checkpoint(path)["step"] == 2
    assert load_checkpoint(path.parent / "checkpoint.diverged.pt")["step"] == 3
    # weights that become non-finite are caught before they are saved
    t = Trainer(_cfg(tmp_path, "inf", ckpt_every=2, max_steps=10))
    t.train(stop_at=2)

    class Poison(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 4:
                with torch.no_grad():
                    trainer.policy.lm_head.weight[0, 0] = float("inf")  # tied to wte.weight

    t.callbacks.append(Poison())
    with pytest.raises(
        NonFiniteLossError,
        match=r"training diverged at step 4: weight 'wte.weight' became "
        r"non-finite; stopped without saving it\. The last good checkpoint .* "
        r"\(step 2\) is kept",
    ):
        t.train()
    t.close()
    assert load_checkpoint(tmp_path / "inf" / "checkpoint.pt")["step"] == 2
    generate.main(
        [
            "--checkpoint",
            str(tmp_path / "inf" / "checkpoint.pt"),
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "g.txt"),
        ]
    )


# 5 ---------------------------------------------------------------------------------------------------------
class _Signal(Callback):
    def __init__(self, at: int, times: int = 1, sig=signal.SIGINT):
        self.at, self.times, self.sig = at, times, sig

    def on_step_end(self, trainer, metrics):
        if trainer.step == self.at:
            for _ in range(self.times):
                os.kill(os.getpid(), self.sig)


def test_5_ctrl_c_finishes_the_step_writes_a_checkpoint_and_exits_130(tmp_path, capsys):
    t = Trainer(_cfg(tmp_path, "int", ckpt_every=100, max_steps=50), callbacks=[_Signal(at=3)])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(TrainingInterrupted) as exc:
        t.train()
    t.close()
    assert signal.getsignal(signal.SIGINT) is handler  # restored
    path = tmp_path / "int" / "checkpoint.pt"
    assert str(exc.value) == (
        f"interrupted (SIGINT) at step 3: checkpoint {str(path)!r} written (step 3); continue "
        f"with: python scripts/train.py --logdir {str(path.parent)!r} --resume"
    )
    assert load_checkpoint(path)["step"] == 3
    RunLock(path.parent).release()  # the lock was released
    # run_cli: the message on one line, exit status 130; SIGTERM alike
    t = Trainer(_cfg(tmp_path, "term", ckpt_every=100, max_steps=50), callbacks=[_Signal(at=2, sig=signal.SIGTERM)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as sysexit:
        run_cli(lambda argv: t.train(), [])
    t.close()
    assert sysexit.value.code == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[-1].startswith("interrupted (SIGTERM) at step 2: checkpoint")
    assert load_checkpoint(tmp_path / "term" / "checkpoint.pt")["step"] == 2
    # a second Ctrl-C stops at once (KeyboardInterrupt -> exit 130, one line)
    t = Trainer(_cfg(tmp_path, "twice", ckpt_every=100, max_steps=50), callbacks=[_Signal(at=2, times=2)])
    with pytest.raises(KeyboardInterrupt):
        t.train()
    t.close()
    assert not (tmp_path / "twice" / "checkpoint.pt").exists()


# 6 ---------------------------------------------------------------------------------------------------------
def test_6_the_main_job_reuses_a_stage_only_if_its_config_is_the_stage_s(tmp_path, monkeypatch, capsys):
    other = tmp_path / "runs" / "main" / "mle"
    train.main([*TINY_RUN, "--max-steps", "1", "--logdir", str(other)])  # an oracle-hmm run where the MLE stage goes
    before = snapshot(other, lock=False)
    monkeypatch.setattr(train, "MAIN_JOB_DIR", tmp_path / "runs" / "main")
    line = error_line(capsys, lambda argv: run_cli(lambda a: train.main_job(device="cpu"), argv), [])
    assert line.startswith(f"error: main job stage 'mle': {other} holds another run (")
    assert "--task 'oracle-hmm' (the main job's: 'python-lines')" in line and "--overwrite" in line
    assert snapshot(other, lock=False) == before
    # the same config is reused as is
    cfg = train.saved_config(other)
    cfg.device = "auto"
    metrics, reused = train._finished_or_run("mle", cfg, "cpu")
    assert reused and metrics == json.loads((other / "metrics.json").read_text())


# 7 ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_7_an_output_never_overwrites_an_input(finished_run, tmp_path, capsys):
    ckpt = finished_run / "checkpoint.pt"
    before = ckpt.read_bytes()
    line = error_line(capsys, evaluate.main, ["--checkpoint", str(ckpt), "--out", str(ckpt), "--device", "cpu"])
    assert line == f"error: --out {str(ckpt)!r} would overwrite the input {str(ckpt)!r}; give another path"
    line = error_line(capsys, generate.main, ["--checkpoint", str(ckpt), "--out", str(ckpt), "--device", "cpu"])
    assert "would overwrite the input" in line
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc\n")
    line = error_line(
        capsys,
        generate.main,
        ["--checkpoint", str(ckpt), "--out", str(corpus), "--device", "cpu", "--task", f"file:{corpus}"],
    )
    assert line == f"error: --out {str(corpus)!r} would overwrite the input 'file:{corpus}'; give another path"
    assert ckpt.read_bytes() == before and corpus.read_text() == "abc\n"
    # nor over the corpus a file: checkpoint was trained on, though no --task names it
    data = tmp_path / "data.txt"
    data.write_text("".join(f"ab{i % 7} = c{i % 5}\n" for i in range(40)))
    train.main(
        [
            "--task",
            f"file:{data}",
            "--max-steps",
            "1",
            "--batch-size",
            "4",
            "--eval-samples",
            "2",
            "--logdir",
            str(tmp_path / "f"),
            *TINY_FLAGS,
        ]
    )
    for main in (generate.main, evaluate.main):
        line = error_line(
            capsys,
            main,
            [
                "--checkpoint",
                str(tmp_path / "f" / "checkpoint.pt"),
                "--out",
                str(data),
                "--device",
                "cpu",
                "--num-samples",
                "2",
            ],
        )
        assert line == f"error: --out {str(data)!r} would overwrite the input {str(data)!r}; give another path"
    assert data.read_text().startswith("ab0 = c0\n")


# 8 ---------------------------------------------------------------------------------------------------------
def test_8_resume_purges_the_events_logged_after_the_checkpoint(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = Trainer(_cfg(tmp_path, "tb", ckpt_every=2, log_every=1, max_steps=4))
    t.train(stop_at=3)  # checkpoint at step 2; events at steps 1, 2, 3; then "killed"
    t.writer.flush()
    t.close()
    t = Trainer(_cfg(tmp_path, "tb", ckpt_every=2, log_every=1, max_steps=4, resume=True))
    t.train()
    t.close()
    ea = EventAccumulator(str(tmp_path / "tb"))
    ea.Reload()
    steps = [e.step for e in ea.Scalars("train/loss")]
    assert steps == [1, 2, 3, 4]
    assert [e.step for e in ea.Scalars("train/loss")][1:] == [
        2,
        3,
        4,
    ]  # step 3 once: the first run's step-3 event was purged


# 9 ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_9_overwrite_never_deletes_files_no_run_of_ours_wrote(tmp_path, capsys):
    model_dir = tmp_path / "hf-model"
    model_dir.mkdir()
    (model_dir / "config.json").write_text('{"model_type": "llama"}')
    (model_dir / "model.safetensors").write_bytes(b"weights")
    line = error_line(capsys, train.main, [*TINY_RUN, "--max-steps", "1", "--logdir", str(model_dir), "--overwrite"])
    assert line.startswith(
        f"error: directory {str(model_dir)!r} holds files that no seqenv run wrote there "
        f"(config.json; no {MARKER} marker); nothing was deleted"
    )
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]
    # a train.py run written before the marker existed is recognised by its config.json's content
    legacy = tmp_path / "legacy"
    train.main([*TINY_RUN, "--max-steps", "1", "--logdir", str(legacy)])
    (legacy / MARKER).unlink()
    train.main([*TINY_RUN, "--max-steps", "2", "--logdir", str(legacy), "--overwrite"])
    assert load_checkpoint(legacy / "checkpoint.pt")["step"] == 2
    assert (legacy / MARKER).is_file()
    # our run: the marker names the script; --overwrite deletes only our files
    run = tmp_path / "ours"
    train.main([*TINY_RUN, "--max-steps", "1", "--logdir", str(run)])
    assert json.loads((run / MARKER).read_text()) == {"writer": "seqenv", "script": "train.py"}
    (run / "notes.txt").write_text("mine")
    RunDirectory(run, overwrite=True).start()
    assert sorted(p.name for p in run.iterdir()) == [".lock", MARKER, "notes.txt"]


# 10 --------------------------------------------------------------------------------------------------------
def test_10_an_empty_logdir_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = error_line(capsys, train.main, [*TINY_RUN, "--max-steps", "1", "--logdir", ""])
    assert line == "error: --logdir must name a directory, got ''"
    line = error_line(capsys, ppo_critic.main, ["--checkpoint", "a", "--critic", "b", "--logdir", " "])
    assert line == "error: --logdir must name a directory, got ' '"
    assert list(tmp_path.iterdir()) == []


# 11 --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_11_init_keeps_the_checkpoint_s_architecture_in_config_json(finished_run, tmp_path, capsys):
    init = str(finished_run / "checkpoint.pt")
    line = error_line(
        capsys,
        train.main,
        [*TINY_RUN, "--max-steps", "1", "--init", init, "--logdir", str(tmp_path / "a"), "--model.n-layer", "3"],
    )
    assert line == (
        f"error: --init {init!r} keeps the checkpoint's architecture; these flags would change it: "
        "--model.n-layer 3 (the checkpoint's: 1). Drop them (--model.* sizes a fresh policy)"
    )
    assert not (tmp_path / "a").exists()  # the guard removes a directory it created for a run that never started
    # without --model.* flags, config.json states the checkpoint's sizes (not the defaults)
    train.main(
        [
            "--task",
            "oracle-hmm",
            "--batch-size",
            "4",
            "--eval-samples",
            "2",
            "--no-progress",
            "--device",
            "cpu",
            "--max-steps",
            "1",
            "--init",
            init,
            "--logdir",
            str(tmp_path / "b"),
        ]
    )
    model = json.loads((tmp_path / "b" / "config.json").read_text())["model"]
    assert (model["n_layer"], model["n_head"], model["n_embd"]) == (1, 2, 32)


# 12 --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_12_unwritable_logdir_and_full_disk_end_in_one_line(finished_run, tmp_path, monkeypatch, capsys):
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    real_access = os.access
    monkeypatch.setattr(rundir.os, "access", lambda p, mode: False if Path(p) == finished_run else real_access(p, mode))
    before = snapshot(finished_run, lock=False)
    line = error_line(capsys, train.main, ["--logdir", str(finished_run), "--resume", "--max-steps", "3", *TINY_FLAGS])
    assert line == f"error: --logdir {str(finished_run)!r} is not writable"
    assert snapshot(finished_run, lock=False) == before  # config.json not rewritten
    monkeypatch.setattr(rundir.os, "access", real_access)

    def no_lock(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(rundir.os, "open", no_lock)
    with pytest.raises(PermissionError, match="its lock file .* is not writable"):
        RunLock(tmp_path / "ro")
    gc.collect()
    assert unraisable == []  # no "Exception ignored in RunLock.__del__"
    monkeypatch.undo()
    # disk full during a save: one line, the previous checkpoint kept
    t = Trainer(_cfg(tmp_path, "full", ckpt_every=1, max_steps=5))
    t.train(stop_at=1)

    def full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:858] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"could not write checkpoint .* the previous checkpoint is kept"):
        t.train()
    t.close()
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "full" / "checkpoint.pt")["step"] == 1
    assert not list((tmp_path / "full").glob("*.tmp"))


# 13 --------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_13_user_errors_are_one_line_not_tracebacks(finished_run, tmp_path, capsys):
    ckpt = finished_run / "checkpoint.pt"
    state = load_checkpoint(ckpt)
    state.pop("format")
    # --init with weights that do not match the policy spec
    bad = dict(state, model={**state["model"], "wte.weight": torch.zeros(3, 3)})
    save_checkpoint(bad, tmp_path / "shapes.pt")
    line = error_line(
        capsys,
        train.main,
        [*TINY_RUN, "--max-steps", "1", "--init", str(tmp_path / "shapes.pt"), "--logdir", str(tmp_path / "s")],
    )
    assert line.startswith(f"error: --init checkpoint {str(tmp_path / 'shapes.pt')!r}: its weights do not match")
    # --resume on a checkpoint without optimiser state
    nopt = tmp_path / "nopt"
    nopt.mkdir()
    save_checkpoint({k: v for k, v in state.items() if k not in ("optimizer", "scheduler")}, nopt / "checkpoint.pt")
    line = error_line(capsys, train.main, ["--logdir", str(nopt), "--resume", *TINY_FLAGS])
    assert "it has no training state (optimizer, scheduler missing" in line and "--init" in line
    # crafted entries: one line each, for generate, --init and --resume
    crafted = {"model": [1, 2], "step": "x", "task": {**state["task"], "tokenizer": None}}
    for key, value in crafted.items():
        path = tmp_path / f"crafted-{key}" / "checkpoint.pt"
        save_checkpoint({**state, key: value}, path)
        expected = f"error: checkpoint {str(path)!r} has a malformed '{key}'"
        assert error_line(capsys, generate.main, ["--checkpoint", str(path), "--device", "cpu"]).startswith(expected)
        assert error_line(
            capsys, train.main, [*TINY_RUN, "--init", str(path), "--logdir", str(tmp_path / "s")]
        ).startswith(expected)
        assert error_line(
            capsys, train.main, ["--logdir", str(path.parent), "--resume", "--max-steps", "3", *TINY_FLAGS]
        ).startswith(expected)
    save_checkpoint({**state, "rng": {}}, tmp_path / "rng" / "checkpoint.pt")
    line = error_line(
        capsys, train.main, ["--logdir", str(tmp_path / "rng"), "--resume", "--max-steps", "3", *TINY_FLAGS]
    )
    assert "its training state (scheduler, learner or random streams) is malformed (KeyError: 'torch')" in line
    # NaN weights: generate and evaluate refuse the checkpoint in one line
    nan = dict(
        state,
        model={
            k: v * float("nan") if k == "lm_head.weight" else v  # tied: reported as wte.weight
            for k, v in state["model"].items()
        },
    )
    save_checkpoint(nan, tmp_path / "nan.pt")
    for main in (generate.main, evaluate.main):
        line = error_line(capsys, main, ["--checkpoint", str(tmp_path / "nan.pt"), "--device", "cpu"])
        assert line == (
            f"error: checkpoint {str(tmp_path / 'nan.pt')!r} holds non-finite weights ('wte.weight' "
            "has NaN or inf): the run that wrote it diverged; use an earlier checkpoint"
        )
    # --resume in a ppo_critic.py run directory
    ppo = tmp_path / "ppo"
    ppo.mkdir()
    (ppo / MARKER).write_text(json.dumps({"writer": "seqenv", "script": "ppo_critic.py"}))
    save_checkpoint({**state, "config": {"checkpoint": "x", "critic": "y"}}, ppo / "checkpoint.pt")
    line = error_line(capsys, train.main, ["--logdir", str(ppo), "--resume"])
    assert line == f"error: run directory {str(ppo)!r} holds a ppo_critic.py run, not a train.py run"
    (ppo / MARKER).unlink()  # an older PPO run without the marker: its config is recognised as foreign
    line = error_line(capsys, train.main, ["--logdir", str(ppo), "--resume"])
    assert "is not the config of a train.py run" in line
    # bad devices, HF paths, huge numbers, tyro's own parse errors
    (tmp_path / "file.txt").write_text("x")
    cases = [
        (["--device", "tpu"], "error: --device 'tpu' is not a device: expected auto, cpu, cuda or cuda:N"),
        (["--policy", "hf:/nonexistent"], "error: --policy 'hf:/nonexistent': directory '/nonexistent' does not exist"),
        (["--policy", f"hf:{tmp_path / 'file.txt'}"], f"error: --policy 'hf:{tmp_path / 'file.txt'}': "),
        (["--batch-size", "1e20"], "error: --batch-size: invalid literal for int() with base 10: '1e20'"),
        (["--batch-size", "100000000000000000000"], "error: --batch-size must be an integer >= 1 and <= 1000000"),
        (["--seed", "99999999999999999999"], "error: --seed must be an integer >= 0 and <= 2147483647"),
        (["--eval-samples", "100000000000000000000"], "error: --eval-samples must be an integer >= 1 and <= 1000000"),
        (["--lr", "1e300"], "error: --lr must be a finite number > 0 and <= 1e+06, got 1e+300"),
        (["--eval-temperature", "1e-300"], "error: --eval-temperature must be a finite number >= 0.001, got 1e-300"),
        (
            ["--agent", "sequencematch", "--sequencematch.rollout-temperature", "1e-45"],
            "error: --sequencematch.rollout-temperature must be a finite number >= 0.001, got 1e-45",
        ),
        (["--agent", "gail"], "error: --agent: invalid choice 'gail'; expected one of mle, sequencematch"),
        (["--no-such-flag", "1"], "error: unrecognized arguments: --no-such-flag 1 (see --help for the flags)"),
    ]
    for argv, expected in cases:
        line = error_line(capsys, train.main, [*argv, "--logdir", str(tmp_path / "never"), "--no-progress"])
        assert line.startswith(expected), (argv, line)
    # a nucleus below float32's smallest number keeps the most likely token (it dropped every token before)
    texts = generate.main(
        [
            "--checkpoint",
            str(ckpt),
            "--top-p",
            "1e-300",
            "--num-samples",
            "2",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "g.txt"),
        ]
    )
    assert len(texts) == 2 and texts[0] == texts[1]  # greedy: the same text twice
    line = error_line(capsys, generate.main, ["--seed", "99999999999999999999", "--checkpoint", str(ckpt)])
    assert line.startswith("error: --seed must be an integer >= 0 and <= 2147483647")
    assert error_line(capsys, evaluate.main, []) == "error: missing required flags: --checkpoint (see --help)"
    assert not (tmp_path / "never").exists()


# 14 --------------------------------------------------------------------------------------------------------
def test_14_evaluate_checks_every_input_before_the_work(finished_run, tmp_path, monkeypatch, capsys):
    def no_work(*a, **k):
        raise AssertionError("the evaluation ran before the inputs were checked")

    monkeypatch.setattr(evaluate, "evaluate_policy", no_work)
    monkeypatch.setattr(evaluate, "load_policy", no_work)
    ckpt = ["--checkpoint", str(finished_run / "checkpoint.pt"), "--device", "cpu"]
    line = error_line(capsys, evaluate.main, [*ckpt, "--mauve-model", "/nonexistent"])
    assert line == (
        "error: --mauve-model '/nonexistent' is not a Hugging Face model directory (no config.json "
        "there); give a local causal LM directory"
    )
    line = error_line(capsys, evaluate.main, [*ckpt, "--mauve-pooling", "max"])
    assert line == "error: --mauve-pooling: invalid choice 'max'; expected one of mean, last"
    line = error_line(capsys, evaluate.main, [*ckpt, "--out", str(tmp_path / "missing" / "m.json")])
    assert "does not exist" in line


# 15 --------------------------------------------------------------------------------------------------------
def test_15_bom_warnings_pickle_message_and_file_modes(tmp_path, capsys):
    corpus = tmp_path / "bom.txt"
    corpus.write_bytes("\ufeffab = 1\ncd = 2\n".encode("utf-8"))
    task = make_task(f"file:{corpus}")
    assert "\ufeff" not in task.tokenizer.to_dict().get("chars", "") and task.splits["train"][0].startswith(
        ("ab", "cd")
    )
    # a warning (2 distinct lines: held-out = training data) is one "warning: ..." line, no source line
    logdir = tmp_path / "run"
    capsys.readouterr()
    train.main(corpus_run_flags(corpus, logdir, batch_size=2))
    err = capsys.readouterr().err
    warned = [line for line in err.splitlines() if "distinct texts" in line]
    assert warned and all(line.startswith("warning: task ") for line in warned)
    assert "UserWarning" not in err and "warnings.warn" not in err
    # the checkpoint has the mode of the run's other files (0666 & ~umask), not mkstemp's 0600
    mode = stat.S_IMODE((logdir / "checkpoint.pt").stat().st_mode)
    assert mode == stat.S_IMODE((logdir / "config.json").stat().st_mode)
    # a crafted pickle's error is not cut mid-word
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": "seqenv-checkpoint-v2", "x": Path("/etc")}, crafted)
    line = error_line(capsys, generate.main, ["--checkpoint", str(crafted), "--device", "cpu"])
    assert line.startswith(f"error: checkpoint {str(crafted)!r} is corrupt or not a torch file (")
    assert line.endswith(")") and (len(line) < 600 or line.endswith(" ...)"))
