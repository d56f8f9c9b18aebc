"""Trainer: resume equals an uninterrupted run, non-finite loss, bad input, DDP."""

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny import tiny_train_config

from agents.common.checkpoint import CheckpointError, load_checkpoint, load_policy
from agents.common.evaluation import heldout_nll
from agents.earm import EARMConfig
from agents.mle import MLEConfig
from agents.nce import NCEConfig
from agents.sequencematch import SequenceMatchConfig
from agents.trainer import (
    RESUME_FLAGS,
    NonFiniteLossError,
    TrainConfig,
    Trainer,
    merge_resumed_config,
    resolve_run_config,
)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(tmp_path, name, **kw):
    """The tiny training config with 16 evaluation samples."""
    return tiny_train_config(tmp_path, name, **{"eval_samples": 16, **kw})


def _params(trainer):
    return {k: v.clone() for k, v in trainer.policy.state_dict().items()}


@pytest.mark.parametrize(
    "agent, task",
    [
        ("mle", "oracle-hmm"),
        ("sequencematch", "oracle-hmm"),
        ("earm", "oracle-hmm"),
        ("nce", "oracle-hmm"),
        # a prompted task: the online samplers' env resets must be seeded too
        ("sequencematch", "arithmetic"),
        ("earm", "arithmetic"),
        ("mle", "arithmetic"),
    ],
)
@pytest.mark.slow
def test_resume_reaches_the_same_final_state(tmp_path, agent, task):
    extra = {
        "earm": {"earm": EARMConfig(start_step=2)},
        "sequencematch": {"sequencematch": SequenceMatchConfig(refresh_every=2, rollout_batch_size=8)},
        "mle": {"mle": MLEConfig(backspace_p=0.1)},
        # K = 2: the run is killed at step 4 with the snapshot of step 2 in the step-3 checkpoint
        "nce": {
            "nce": NCEConfig(
                refresh_every=2,
                policy_objective="self_adapting_nce",
                ce_weight=0.5,
                critic_n_layer=1,
                critic_n_head=2,
                critic_n_embd=32,
            )
        },
    }[agent]
    full = Trainer(_cfg(tmp_path, "full", agent=agent, task=task, **extra))
    m_full = full.train()
    full.close()

    killed = Trainer(_cfg(tmp_path, "killed", agent=agent, task=task, **extra))
    assert killed.train(stop_at=4) is None  # "killed" after step 4; last checkpoint at step 3
    killed.close()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 3

    resumed = Trainer(TrainConfig(logdir=str(tmp_path / "killed"), resume=True, device="cpu", progress=False))
    assert resumed.step == 3 and resumed.cfg.max_steps == 6 and resumed.cfg.agent == agent
    m_resumed = resumed.train()
    resumed.close()
    for k, v in _params(full).items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    assert m_full == m_resumed
    saved = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    assert saved["nll"] == pytest.approx(m_full["nll"])


def test_fork_from_continues_model_optimiser_step_and_random_streams(tmp_path):
    """A fork with the same config is the uninterrupted run; another learner starts at the fork's step."""
    full = Trainer(_cfg(tmp_path, "full"))
    full.train()
    full.close()
    base = Trainer(_cfg(tmp_path, "base"))
    base.train(stop_at=3)  # checkpoint at step 3 (ckpt_every=3)
    base.close()
    fork = Trainer(_cfg(tmp_path, "fork", fork_from=str(tmp_path / "base" / "checkpoint.pt")))
    assert fork.step == 3 and fork.optimizer.state_dict()["state"]  # AdamW moments carried
    assert fork.optimizer.param_groups[0]["lr"] == pytest.approx(
        2e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    )  # cosine 1/4 done
    fork.train()
    fork.close()
    for k, v in _params(full).items():
        assert torch.equal(v, fork.policy.state_dict()[k]), k  # moments, schedule, data/sample streams all carried
    sm = Trainer(
        _cfg(
            tmp_path,
            "sm",
            agent="sequencematch",
            fork_from=str(tmp_path / "base" / "checkpoint.pt"),
            lr=1e-3,
            sequencematch=SequenceMatchConfig(refresh_every=2, rollout_batch_size=8),
        )
    )
    assert sm.step == 3 and sm.optimizer.param_groups[0]["lr"] == pytest.approx(
        1e-3 * (0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    )
    sm.close()
    with pytest.raises(CheckpointError, match="optimiser state does not fit the 'nce' learner"):
        Trainer(
            _cfg(
                tmp_path,
                "nce",
                agent="nce",
                fork_from=str(tmp_path / "base" / "checkpoint.pt"),
                nce=NCEConfig(critic_n_layer=1, critic_n_head=2, critic_n_embd=32),
            )
        )
    with pytest.raises(CheckpointError, match="at step 3, not below --max-steps 3"):
        Trainer(_cfg(tmp_path, "short", max_steps=3, fork_from=str(tmp_path / "base" / "checkpoint.pt")))
    with pytest.raises(ValueError, match="pass one of them"):
        _cfg(tmp_path, "both", init="a.pt", fork_from="b.pt")


def test_run_directory_contents(tmp_path):
    t = Trainer(_cfg(tmp_path, "run", max_steps=2, ckpt_every=1))
    t.train()
    t.close()
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"config.json", "checkpoint.pt", "metrics.json"} <= files
    assert any(f.startswith("events.out.tfevents") for f in files)
    cfg = json.loads((tmp_path / "run" / "config.json").read_text())
    assert cfg["agent"] == "mle" and cfg["model"]["n_embd"] == 32
    policy, task, state = load_policy(tmp_path / "run" / "checkpoint.pt")
    assert state["step"] == 2 and task.name == "oracle-hmm" and not policy.training


@pytest.mark.slow
def test_training_lowers_heldout_nll(tmp_path):
    t = Trainer(_cfg(tmp_path, "learn", max_steps=40, batch_size=32, lr=3e-3))

    before = heldout_nll(t.policy, t.task, "valid")["nll"]
    t.train()
    t.close()
    after = heldout_nll(t.policy, t.task, "valid")["nll"]
    assert after < before - 0.5  # log(21) = 3.04 nats at init; the oracle's entropy rate is far lower


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    t = Trainer(_cfg(tmp_path, "nan", ckpt_every=2))
    real = t.learner.loss

    def loss(demos, step):
        value, metrics = real(demos, step)
        return (value * float("nan") if step == 3 else value), metrics

    monkeypatch.setattr(t.learner, "loss", loss)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at step 3.*checkpoint.*is kept"):
        t.train()
    t.close()
    state = load_checkpoint(tmp_path / "nan" / "checkpoint.pt")
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"unknown agent 'gail'; valid agents: mle"):
        TrainConfig(agent="gail")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(_cfg(tmp_path, "r", resume=True))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Trainer(_cfg(tmp_path, "i", init=str(tmp_path / "missing.pt")))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="corrupt"):
        Trainer(_cfg(tmp_path, "c", init=str(corrupt)))
    # a checkpoint from another tokenizer / task
    t = Trainer(_cfg(tmp_path, "hmm", max_steps=1))
    t.save()
    t.close()
    with pytest.raises(
        CheckpointError, match="trained on task 'oracle-hmm' with a different tokenizer than task 'python-lines'"
    ):
        Trainer(_cfg(tmp_path, "py", task="python-lines", init=str(tmp_path / "hmm" / "checkpoint.pt")))
    with pytest.raises(ValueError, match="--max-steps must be an integer >= 1 and <= 1000000000, got 0"):
        _cfg(tmp_path, "z", max_steps=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ddp_two_cpu_processes_gloo(tmp_path):
    logdir = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(ROOT / "scripts" / "train.py"),
        "--device",
        "cpu",
        "--task",
        "oracle-hmm",
        "--max-steps",
        "4",
        "--batch-size",
        "8",
        "--eval-samples",
        "16",
        "--logdir",
        str(logdir),
        "--no-progress",
        "--model.n-layer",
        "1",
        "--model.n-embd",
        "32",
        "--model.n-head",
        "2",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))  # this checkout's packages
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = load_checkpoint(logdir / "checkpoint.pt")
    assert state["step"] == 4
    assert json.loads((logdir / "metrics.json").read_text())["nll"] > 0


def test_a_resumed_config_is_merged_in_one_place(tmp_path):
    """merge_resumed_config: the saved run's config, with exactly the resume flags taken from the request."""
    saved = TrainConfig(task="oracle-hmm", max_steps=100, lr=1e-3, device="cpu", log_every=10)
    requested = TrainConfig(task="python-lines", max_steps=250, lr=5e-3, device="auto", log_every=7, resume=True)
    requested.eval.max_sequences = 64
    merged = merge_resumed_config(saved, requested, RESUME_FLAGS)
    assert (merged.task, merged.lr) == ("oracle-hmm", 1e-3)  # what the run computes: the saved run's
    assert (merged.max_steps, merged.device, merged.log_every, merged.eval.max_sequences) == (250, "auto", 7, 64)
    assert merged.resume and not saved.resume and saved.max_steps == 100  # a new config; saved is untouched
    with pytest.raises(ValueError, match="--max-steps 50 is below the run's max_steps 100"):
        merge_resumed_config(saved, TrainConfig(max_steps=50), RESUME_FLAGS)
    fresh = TrainConfig(logdir=str(tmp_path / "run"))
    assert resolve_run_config(fresh, tmp_path / "run" / "checkpoint.pt") == (fresh, None)
    with pytest.raises(FileNotFoundError, match="checkpoint.pt"):
        resolve_run_config(TrainConfig(resume=True), tmp_path / "run" / "checkpoint.pt")
