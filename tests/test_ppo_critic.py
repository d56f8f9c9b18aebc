"""agents/sb3/critic_reward.py (scripts/ppo_critic.py) and agents/sb3/policy.py: MaskablePPO with our transformer actor, critic reward + KL."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tiny import make_tiny_policy
from tolerances import policy_atol

from agents.common.checkpoint import CheckpointError, load_policy, save_checkpoint
from agents.common.learner import LearnerContext
from agents.common.rollout import make_vector_env
from agents.common.trajectory import sequence_batch
from agents.critic import CriticConfig, SequenceCritic
from agents.nce import NCEConfig, NCELearner
from agents.policies.transformer import TransformerPolicy
from agents.sb3 import critic_reward
from agents.sb3.policy import TransformerMaskablePolicy
from scripts import ppo_critic as ppo_critic_script
from seqenv.sb3 import SB3VecEnv
from seqenv.tasks import make_task
from seqenv.tokenizers import BACKSPACE_ID, BOS_ID, EOS_ID, PAD_ID

TASK = make_task("oracle-hmm")
V = TASK.tokenizer.vocab_size
BS = BACKSPACE_ID


def _script():
    return critic_reward


def _policy(seed=0) -> TransformerPolicy:
    return make_tiny_policy(TASK, seed).eval()


def _critic(seed=0) -> SequenceCritic:
    torch.manual_seed(seed)
    critic = SequenceCritic(CriticConfig(vocab_size=V, block_size=TASK.max_length + 1, n_layer=1, n_head=2, n_embd=32))
    torch.nn.init.normal_(critic.head.weight, std=1.0)  # a non-trivial energy
    with torch.no_grad():
        critic.log_normalizer.fill_(0.25)
    return critic.eval()


def test_actor_is_the_transformer_policy_at_the_current_state():
    policy = _policy()
    env = SB3VecEnv(make_vector_env(TASK, 4, "cpu"))
    sb3 = TransformerMaskablePolicy(
        env.observation_space, env.action_space, lambda _: 1e-3, policy_config=policy.config.to_dict()
    )
    sb3.actor.load_state_dict(policy.state_dict())
    obs = env.reset()
    for a in ([5, 6, 7, 5], [8, 9, EOS_ID, BS], [10, BS, 11, EOS_ID]):
        obs, *_ = env.step(np.array(a))
    states = [[5, 8, 10], [6], [11], []]  # env 2 restarted after eos; env 3 backspaced, then restarted
    np.testing.assert_array_equal(obs["length"], [len(s) for s in states])
    masks = env.action_masks()
    assert masks[:, BS].tolist() == [True, True, True, False]
    obs_t, _ = sb3.obs_to_tensor(obs)
    probs = sb3.get_distribution(obs_t, masks).distribution.probs
    for b, s in enumerate(states):
        with torch.no_grad():
            logits = policy(torch.tensor([[BOS_ID, *s]]))[0, -1]
        logits = logits.masked_fill(~torch.as_tensor(masks[b]), -math.inf)
        # batched vs one state: logits within the rounding bound d (tests/tolerances.py); softmax moves each
        # probability by a factor within exp(+-2d), so a relative tolerance of 2d (+ the softmax's own rounding)
        d = policy_atol(policy.config, obs_t["tokens"].shape[1], logits[masks[b]].abs().max().item(), extra_terms=V)
        torch.testing.assert_close(probs[b], logits.softmax(-1), atol=0, rtol=2 * d)
    # evaluate_actions on rollout-buffer samples (length stored as [B, 1], one-hot [B, 1, L+1]): same log-probs
    actions = torch.tensor([5, 6, 7, 8])
    buffer_obs = {**obs_t, "length": obs_t["length"][:, None]}
    values, log_prob, _ = sb3.evaluate_actions(buffer_obs, actions, torch.as_tensor(masks))
    torch.testing.assert_close(log_prob, probs[torch.arange(4), actions].log())
    values.sum().backward()  # the value head's gradient stops at the transformer
    assert all(p.grad is None for p in sb3.actor.parameters())
    assert sb3.value_net.net[0].weight.grad is not None
    assert sb3.action_net is sb3.actor.lm_head


def _expected_log_ref(policy, trajectory):
    """log π0(a_t|s_t) along one episode's actions, π0 masked like the env (independent of the wrapper)."""
    tokens = torch.tensor([[BOS_ID, *trajectory]])
    with torch.no_grad():
        logits = policy(tokens)[0, :-1]  # logits of the state before each action (backspace layout)
    out, depth = [], 0
    for t, a in enumerate(trajectory):
        mask = torch.ones(V, dtype=torch.bool)
        mask[[PAD_ID, BOS_ID]] = False
        mask[BS] = depth > 0
        out.append(float(F.log_softmax(logits[t].masked_fill(~mask, -math.inf), -1)[a]))
        depth += -1 if a == BS else (0 if a == EOS_ID else 1)
    return out


def test_critic_kl_reward_hand_checked():
    ppo_critic = _script()
    policy, critic, beta = _policy(1), _critic(2), 0.5
    env = ppo_critic.CriticKLReward(
        SB3VecEnv(make_vector_env(TASK, 2, "cpu", max_length=3)), critic, policy, beta, "cpu"
    )
    env.reset()
    # env 0: "5 6 eos" terminates at step 3, then a new episode "5 5"; env 1: "7 bs 8 9 10" is truncated
    # at step 5 (3 tokens = max_length)
    actions = [[5, 7], [6, BS], [EOS_ID, 8], [5, 9], [5, 10]]
    rewards, infos = [], []
    for a in actions:
        _, r, dones, info = env.step(np.array(a))
        rewards.append(r)
        infos.append(info)
    ref0, ref0b, ref1 = (_expected_log_ref(policy, t) for t in ([5, 6, EOS_ID], [5, 5], [7, BS, 8, 9, 10]))
    r_x = -critic(*sequence_batch([[5, 6], [8, 9, 10]], [True, False], "cpu")).detach() - 0.25  # eos only if terminated
    expected0 = [beta * v for v in ref0 + ref0b]
    expected0[2] += float(r_x[0])
    expected1 = [beta * v for v in ref1]
    expected1[4] += float(r_x[1])
    np.testing.assert_allclose([r[0] for r in rewards], expected0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r[1] for r in rewards], expected1, rtol=1e-5, atol=1e-5)
    assert infos[2][0]["critic_reward"] == pytest.approx(float(r_x[0]), abs=1e-5)
    assert infos[2][0]["kl_to_init"] == pytest.approx(-sum(ref0), abs=1e-5)  # no policy attached: -Σ log π0
    assert infos[4][1]["critic_reward"] == pytest.approx(float(r_x[1]), abs=1e-5)
    assert infos[4][1]["TimeLimit.truncated"] is False  # the critic's reward is final: no bootstrapping
    assert "critic_reward" not in infos[3][0]
    # with the live policy π attached, each step pays β (log π0 - log π)
    pi = _policy(4)
    env.policy = pi
    env.reset()
    _, r, _, _ = env.step(np.array([5, 7]))
    log_pi = [_expected_log_ref(pi, [a])[0] for a in (5, 7)]
    log_ref = [_expected_log_ref(policy, [a])[0] for a in (5, 7)]
    np.testing.assert_allclose(r, [beta * (log_ref[i] - log_pi[i]) for i in range(2)], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="beta must be a finite number > 0, got 0"):
        ppo_critic.CriticKLReward(env.venv, critic, policy, 0, "cpu")


def _checkpoints(tmp_path):

    policy = _policy()
    base = {"task": TASK.spec(), "policy": policy.policy_spec(), "model": policy.state_dict(), "step": 0}
    gens = {"noise": torch.Generator().manual_seed(0), "sample": torch.Generator().manual_seed(1)}
    ctx = LearnerContext(policy, policy, TASK, torch.device("cpu"), gens, 4)
    learner = NCELearner(ctx, NCEConfig(critic_n_layer=1, critic_n_head=2, critic_n_embd=32))
    torch.nn.init.normal_(learner.critic.head.weight, std=0.5)
    save_checkpoint({"agent": "mle", **base}, tmp_path / "mle.pt")
    save_checkpoint({"agent": "nce", **base, "learner": learner.state_dict()}, tmp_path / "nce.pt")
    return str(tmp_path / "mle.pt"), str(tmp_path / "nce.pt")


@pytest.mark.slow
def test_ppo_script_fine_tunes_and_saves_a_loadable_checkpoint(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mle, nce = _checkpoints(tmp_path)
    logdir = tmp_path / "ppo"
    metrics = ppo_critic_script.main(
        [
            "--checkpoint",
            mle,
            "--critic",
            nce,
            "--total-timesteps",
            "384",
            "--beta",
            "0.5",
            "--num-envs",
            "8",
            "--logdir",
            str(logdir),
            "--device",
            "cpu",
            "--seed",
            "3",
            "--n-steps",
            "16",
            "--batch-size",
            "64",
            "--n-epochs",
            "2",
            "--eval-samples",
            "32",
            "--no-progress",
        ]
    )
    assert abs(metrics["before"]["kl_to_init"]) < 1e-4  # π = π0 at the start: the KL estimate is exactly 0
    assert metrics["before"]["objective"] == pytest.approx(metrics["before"]["critic_reward"], abs=1e-4)
    assert "| start (π0) |" in capsys.readouterr().out
    policy, task, state = load_policy(logdir / "checkpoint.pt")
    assert state["agent"] == "ppo" and state["step"] == 384 and task.name == "oracle-hmm"
    start = _policy()
    assert not torch.equal(policy.wte.weight, start.wte.weight)  # PPO moved the actor
    assert (logdir / "metrics.json").is_file()
    events = list(logdir.glob("ppo_*"))
    assert len(events) == 1
    ea = EventAccumulator(str(events[0]))
    ea.Reload()
    tags = set(ea.Tags()["scalars"])
    assert {
        "rollout/ep_rew_mean",
        "rollout/ep_len_mean",
        "train/approx_kl",
        "train/entropy_loss",
        "train/value_loss",
        "rollout/critic_reward_mean",
        "rollout/kl_to_init_mean",
        "rollout/objective_mean",
        "train/beta",
    } <= tags


def test_ppo_bad_input(tmp_path, capsys):
    ppo_critic = _script()
    mle, _ = _checkpoints(tmp_path)
    with pytest.raises(ValueError, match=r"--beta must be a finite number > 0, got -1"):
        ppo_critic.PPOCriticConfig(checkpoint=mle, critic=mle, beta=-1.0)
    with pytest.raises(ValueError, match=r"--num-envs must be an integer >= 1 and <= 1000000, got 0"):
        ppo_critic.PPOCriticConfig(checkpoint=mle, critic=mle, num_envs=0)
    for flag, value, expected in (
        ("--max-grad-norm", "0", "--max-grad-norm must be a finite number > 0, got 0.0"),
        ("--learning-rate", "inf", "--learning-rate must be a finite number > 0, got inf"),
        ("--vf-coef", "-1", "--vf-coef must be a finite number >= 0, got -1.0"),
        ("--gae-lambda", "nan", "--gae-lambda must be a finite number >= 0 and <= 1, got nan"),
    ):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            ppo_critic_script.main(["--checkpoint", mle, "--critic", mle, "--device", "cpu", flag, value])
        assert exc.value.code == 2 and capsys.readouterr().err == f"error: {expected}\n"
    with pytest.raises(CheckpointError, match="is not an nce checkpoint"):
        ppo_critic.run(
            ppo_critic.PPOCriticConfig(
                checkpoint=mle, critic=mle, device="cpu", eval_samples=4, logdir=str(tmp_path / "x")
            )
        )


def test_validity_score_is_the_env_reward_hand_checked():
    """critic=None (``--critic validity``): the score is the env's reward="validity", 1 on an accepted final
    text, 0 otherwise, rescaled by (r - shift)/scale at the step that ends the episode, beside β·k_t."""
    task = make_task("python-lines")
    tok, beta = task.tokenizer, 0.5
    policy = make_tiny_policy(task).eval()
    venv = make_vector_env(task, 2, "cpu", reward="validity")
    env = critic_reward.CriticKLReward(SB3VecEnv(venv), None, policy, beta, "cpu", score_shift=0.5, score_scale=2.0)
    env.reset()
    good, bad = tok.encode("x = 1"), tok.encode("x = (")  # a valid line and an unclosed bracket, same length
    assert task.is_valid("x = 1") and not task.is_valid("x = (") and len(good) == len(bad)
    rewards, infos = [], []
    for a in zip([*good, EOS_ID], [*bad, EOS_ID]):
        _, r, _, info = env.step(np.array(a))
        rewards.append(r)
        infos.append(info)
    log_ref = [_expected_log_ref_for(policy, task, t) for t in ([*good, EOS_ID], [*bad, EOS_ID])]
    for b, valid in ((0, 1.0), (1, 0.0)):
        expected = [beta * v for v in log_ref[b]]
        expected[-1] += (valid - 0.5) / 2.0  # the validity score, shifted and scaled
        np.testing.assert_allclose([r[b] for r in rewards], expected, rtol=1e-5, atol=1e-5)
        assert infos[-1][b]["critic_reward"] == valid  # logged before shift/scale
    with pytest.raises(ValueError, match="needs the task"):
        critic_reward.critic_reward(None, [good], [True], "cpu")
    scores = critic_reward.critic_reward(None, [good, bad, good], [True, True, False], "cpu", task)
    assert scores.tolist() == [1.0, 0.0, 0.0]  # a truncated text earns nothing, as in the env


def _expected_log_ref_for(policy, task, trajectory):
    """log π0(a_t|s_t) along one episode with no backspace, masked like the env (pad and bos off, backspace
    legal once there is text)."""
    V = task.tokenizer.vocab_size
    with torch.no_grad():
        logits = policy(torch.tensor([[BOS_ID, *trajectory]]))[0, :-1]
    out = []
    for t, a in enumerate(trajectory):
        mask = torch.ones(V, dtype=torch.bool)
        mask[[PAD_ID, BOS_ID]] = False
        mask[BS] = t > 0
        out.append(float(F.log_softmax(logits[t].masked_fill(~mask, -math.inf), -1)[a]))
    return out


@pytest.mark.slow
def test_ppo_script_with_the_verifiable_reward(tmp_path, capsys):
    """``--critic validity`` runs without a critic checkpoint: the score is the task's validity (arithmetic:
    a conditional task, the prompt counted in the checked text), before = the start policy's."""
    task = make_task("arithmetic")
    policy = make_tiny_policy(task)
    mle = tmp_path / "mle.pt"
    save_checkpoint(
        {"agent": "mle", "task": task.spec(), "policy": policy.policy_spec(), "model": policy.state_dict(), "step": 0},
        mle,
    )
    metrics = ppo_critic_script.main(
        ["--checkpoint", str(mle), "--critic", "validity", "--total-timesteps", "128", "--num-envs", "8"]
        + ["--n-steps", "16", "--batch-size", "64", "--n-epochs", "1", "--eval-samples", "32", "--no-progress"]
        + ["--logdir", str(tmp_path / "ppo"), "--device", "cpu"]
    )
    for when in ("before", "after"):
        assert 0.0 <= metrics[when]["critic_reward"] <= 1.0
    assert abs(metrics["before"]["kl_to_init"]) < 1e-4
    assert load_policy(tmp_path / "ppo" / "checkpoint.pt")[2]["config"]["critic"] == "validity"
