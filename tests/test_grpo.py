"""GRPO / Dr. GRPO / RLOO (agents/grpo.py): hand-computed advantages and loss, rewards from the env,
resume equals an uninterrupted run, train.py --agent grpo with --init and with a tiny HF Llama (LoRA)."""

import math

import pytest
import torch
from tiny import make_tiny_policy

from agents.common.checkpoint import load_checkpoint
from agents.common.rollout import make_vector_env, rollout
from agents.common.trajectory import TrajectoryBatch
from agents.grpo import GRPOConfig, clipped_surrogate_loss, episode_rewards, group_advantages
from agents.trainer import ModelConfig, TrainConfig, Trainer
from scripts import train
from seqenv.rewards import make_score
from seqenv.tasks import make_task
from seqenv.tokenizers import SpecialIds

TINY = ModelConfig(n_layer=1, n_head=2, n_embd=32, dropout=0.0)


def test_advantages_match_a_hand_computed_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])  # G = 4, three groups
    std = math.sqrt((4 * 0.25) / 3)  # group 1: mean 0.5, Bessel-corrected std sqrt(1/3)
    std3 = math.sqrt((3 * 0.0625 + 0.5625) / 3)  # group 3: mean 0.25
    grpo = group_advantages(rewards, 4, "grpo")
    expected = [
        0.5 / (std + 1e-4),
        -0.5 / (std + 1e-4),
        -0.5 / (std + 1e-4),
        0.5 / (std + 1e-4),
        0,
        0,
        0,
        0,
        -0.25 / (std3 + 1e-4),
        -0.25 / (std3 + 1e-4),
        -0.25 / (std3 + 1e-4),
        0.75 / (std3 + 1e-4),
    ]
    torch.testing.assert_close(grpo, torch.tensor(expected), atol=1e-6, rtol=1e-6)  # float32 of O(1) values
    dr = group_advantages(rewards, 4, "dr_grpo")
    torch.testing.assert_close(dr, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0, -0.25, -0.25, -0.25, 0.75]))
    rloo = group_advantages(rewards, 4, "rloo")  # r_i minus the mean of the other three
    torch.testing.assert_close(
        rloo,
        torch.tensor([1 - 1 / 3, 0 - 2 / 3, 0 - 2 / 3, 1 - 1 / 3, 0, 0, 0, 0, 0 - 1 / 3, 0 - 1 / 3, 0 - 1 / 3, 1 - 0]),
    )
    with pytest.raises(ValueError, match="rewards must be"):
        group_advantages(rewards[:5], 4)


def test_clipped_loss_hand_checked():
    # two episodes, two actions and one action; ratios e^0.5 and 1 (A = 2), e^-0.5 (A = -1)
    log_old = torch.zeros(2, 3)
    log_p = torch.tensor([[0.0, 0.5, 0.0], [0.0, -0.5, 0.0]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    episodes = TrajectoryBatch(torch.tensor([[1, 5, 2], [1, 6, 0]]), mask, torch.tensor([True, False]))
    log_p[0, 2] = 0.0
    adv = torch.tensor([2.0, -1.0])
    loss, stats = clipped_surrogate_loss(log_p, log_old, adv, episodes, 0.2)
    # episode 0: min(e^.5 * 2, 1.2 * 2) = 2.4; min(1 * 2, 1 * 2) = 2; episode 1: min(e^-.5 * -1, .8 * -1) = -.8
    assert float(loss) == pytest.approx(-(2.4 + 2.0 - 0.8) / 3)
    assert stats["clip_fraction"] == pytest.approx(2 / 3)
    log_ref = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]])
    loss_kl, stats = clipped_surrogate_loss(log_p, log_old, adv, episodes, 0.2, log_ref, beta=0.5)
    k3 = [math.exp(-0.5) + 0.5 - 1, 2 - math.log(2) - 1, math.exp(0.5) - 0.5 - 1]
    assert stats["kl"] == pytest.approx(sum(k3) / 3)
    assert float(loss_kl) == pytest.approx(float(loss) + 0.5 * sum(k3) / 3)


def test_episode_rewards_are_the_env_terminal_rewards():
    """The learner's reward of each episode = what SeqGen-v0 with reward="validity" pays over the episode."""
    task = make_task("arithmetic")
    policy = make_tiny_policy(task)
    prompt = "In base 2, what is 1 + 0? "
    venv = make_vector_env(task, 64, "cpu")
    res = rollout(policy, venv, seed=0, reset_options={"prompt": prompt}, generator=torch.Generator().manual_seed(0))
    ok = torch.tensor(
        [
            task.is_valid(prompt + task.tokenizer.decode(s)) and bool(t)
            for s, t in zip(res.sequences(), res.terminated.tolist())
        ],
        dtype=torch.float32,
    )
    torch.testing.assert_close(episode_rewards(make_score("validity", task), res), ok)
    # the env itself, replaying the actions with reward="validity": the same returns
    env = make_vector_env(task, 64, "cpu", reward="validity", autoreset_mode="Disabled")
    env.reset(seed=0, options={"prompt": prompt})
    returns = torch.zeros(64)
    for t in range(res.actions.shape[1]):
        active = t < res.num_actions
        _, r, *_ = env.step(torch.where(active, res.actions[:, t], SpecialIds.of(task).eos))
        returns += torch.where(active, r, 0.0)
    torch.testing.assert_close(returns, ok)


def _mle_checkpoint(tmp_path, task="arithmetic"):
    trainer = Trainer(
        TrainConfig(
            agent="mle",
            task=task,
            logdir=str(tmp_path / "mle"),
            max_steps=2,
            batch_size=8,
            eval_samples=8,
            progress=False,
            device="cpu",
            model=TINY,
            warmup_steps=0,
        )
    )
    trainer.train()
    trainer.close()
    return str(tmp_path / "mle" / "checkpoint.pt")


def _grpo_cfg(tmp_path, name, init, **kw):
    grpo = GRPOConfig(group_size=4, num_prompts=2, updates_per_rollout=2, beta=0.1, **kw)
    return TrainConfig(
        agent="grpo",
        task="arithmetic",
        init=init,
        logdir=str(tmp_path / name),
        max_steps=6,
        ckpt_every=3,
        log_every=1,
        eval_samples=8,
        progress=False,
        device="cpu",
        lr=1e-3,
        warmup_steps=0,
        grpo=grpo,
    )


@pytest.mark.slow
def test_grpo_resume_equals_uninterrupted(tmp_path):
    init = _mle_checkpoint(tmp_path)
    full = Trainer(_grpo_cfg(tmp_path, "full", init))
    m_full = full.train()
    full.close()
    killed = Trainer(_grpo_cfg(tmp_path, "killed", init))
    assert killed.train(stop_at=4) is None  # the checkpoint of step 3 holds a half-used rollout (μ = 2)
    killed.close()
    state = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")
    assert state["step"] == 3 and state["learner"]["uses"] == 1 and state["learner"]["reference"] is not None
    resumed = Trainer(TrainConfig(logdir=str(tmp_path / "killed"), resume=True, device="cpu", progress=False))
    m_resumed = resumed.train()
    resumed.close()
    for k, v in full.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    start = load_checkpoint(init)["model"]
    assert any(not torch.equal(v, start[k]) for k, v in full.policy.state_dict().items())  # GRPO moved it
    for k, v in full.learner.reference.state_dict().items():  # the reference stays the --init policy
        assert torch.equal(v, start[k]) and torch.equal(resumed.learner.reference.state_dict()[k], v), k
    assert m_full == m_resumed


def test_train_script_grpo_with_init_on_cpu(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    init = _mle_checkpoint(tmp_path)
    logdir = tmp_path / "grpo"
    train.main(
        [
            "--agent",
            "grpo",
            "--task",
            "arithmetic",
            "--init",
            init,
            "--max-steps",
            "2",
            "--device",
            "cpu",
            "--logdir",
            str(logdir),
            "--lr",
            "1e-4",
            "--warmup-steps",
            "0",
            "--log-every",
            "1",
            "--eval-samples",
            "8",
            "--no-progress",
            "--grpo.group-size",
            "4",
            "--grpo.num-prompts",
            "2",
            "--grpo.no-allow-backspace",
            "--grpo.advantage",
            "rloo",
        ]
    )
    assert "grpo (step 2)" in capsys.readouterr().out
    ea = EventAccumulator(str(logdir))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {
        "rollout/reward_mean",
        "rollout/reward_std",
        "rollout/zero_variance_groups",
        "rollout/backspace_rate",
        "train/kl",
        "train/clip_fraction",
        "train/loss",
    } <= tags
    assert all(e.value == 0 for e in ea.Scalars("rollout/backspace_rate"))  # masked off
    assert any(t.startswith("samples/episodes") for t in ea.Tags()["tensors"])  # the samples panel


def test_grpo_bad_flags(capsys):
    for flags, expected in (
        (["--grpo.group-size", "1"], "--grpo.group-size must be an integer >= 2"),
        (["--grpo.reward", "bleu"], "--grpo.reward must be 'validity', 'oracle' or 'critic:PATH'"),
        (["--grpo.beta", "-1"], "--grpo.beta must be a finite number >= 0"),
    ):
        with pytest.raises(SystemExit) as exc:
            train.main(["--agent", "grpo", "--task", "arithmetic", "--device", "cpu", *flags])
        assert exc.value.code == 2 and expected in capsys.readouterr().err
