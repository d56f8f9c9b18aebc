"""SB3 adapter: same-step reset semantics, masks for MaskablePPO, PPO/MaskablePPO smoke runs."""

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.utils import get_action_masks, is_masking_supported
from stable_baselines3 import PPO

from seqenv.sb3 import SB3VecEnv, TokenSequenceExtractor, make_sb3_vec_env
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID
from seqenv.vector_env import SeqGenVectorEnv

A, B_, C = 5, 6, 7


def test_same_step_reset_terminal_observation_and_time_limit_flag():
    venv = make_sb3_vec_env(
        task="oracle-hmm",
        num_envs=3,
        max_length=3,
        max_episode_steps=3,
        reward=lambda tokens, lengths: lengths.double(),
    )
    obs = venv.reset()
    assert obs["tokens"].tolist() == [[0, 0, 0]] * 3 and obs["length"].dtype == np.int64
    assert [i["action_mask"][BACKSPACE_ID] for i in venv.reset_infos] == [False] * 3

    obs, rew, dones, infos = venv.step(np.array([A, A, A]))
    assert dones.tolist() == [False] * 3 and "terminal_observation" not in infos[0]

    # env 0: eos (terminated); env 1: fills the state (truncated); env 2: backspace
    obs, rew, dones, infos = venv.step(np.array([EOS_ID, B_, BACKSPACE_ID]))
    assert rew.dtype == np.float32 and rew.tolist() == [1.0, 0.0, 0.0]  # terminal reward = final length
    assert dones.tolist() == [True, False, False]
    assert obs["tokens"].tolist() == [[0, 0, 0], [A, B_, 0], [0, 0, 0]]  # env 0 already restarted
    term = infos[0]["terminal_observation"]
    assert term["tokens"].tolist() == [A, 0, 0] and int(term["length"]) == 1 and int(term["prompt_length"]) == 0
    assert infos[0]["TimeLimit.truncated"] is False
    assert infos[0]["action_mask"][BACKSPACE_ID] == False  # noqa: E712  (mask of the restarted state)

    obs, rew, dones, infos = venv.step(np.array([A, C, A]))  # env 1 full; env 2 hits the step limit (3 steps)
    assert dones.tolist() == [False, True, True]
    assert obs["tokens"].tolist() == [[A, 0, 0], [0, 0, 0], [0, 0, 0]]
    assert infos[1]["terminal_observation"]["tokens"].tolist() == [A, B_, C]
    assert infos[2]["terminal_observation"]["tokens"].tolist() == [A, 0, 0]
    assert infos[1]["TimeLimit.truncated"] is True and infos[2]["TimeLimit.truncated"] is True
    assert "terminal_observation" not in infos[0]


def test_action_masks_for_maskable_ppo():
    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=2, max_length=4)
    venv.reset()
    venv.step(np.array([A, EOS_ID]))
    masks = venv.action_masks()
    assert masks.dtype == np.bool_ and masks.shape == (2, 21)
    assert masks[:, BACKSPACE_ID].tolist() == [True, False]
    assert is_masking_supported(venv)
    assert np.array_equal(get_action_masks(venv), masks)
    rows = venv.env_method("action_masks", indices=[1])
    assert len(rows) == 1 and rows[0].tolist() == masks[1].tolist()


def test_seed_attrs_and_errors():
    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=4, max_length=4, prompts=["a", "b", "c", "ab", "bc"])
    assert venv.seed(7) == [7, 8, 9, 10]
    obs = venv.reset()
    prompts = ["a", "b", "c", "ab", "bc"]
    ref, _ = SeqGenVectorEnv(num_envs=4, task="oracle-hmm", max_length=4, prompts=prompts).reset(seed=7)
    assert obs["tokens"].tolist() == ref["tokens"].tolist()
    assert venv.get_attr("max_length", indices=[0, 2]) == [4, 4]
    assert venv.env_is_wrapped(object) == [False] * 4
    venv.set_attr("validate_actions", False)
    assert venv.venv.validate_actions is False
    with pytest.raises(ValueError, match="needs all indices"):
        venv.set_attr("validate_actions", True, indices=[0])
    with pytest.raises(ValueError, match="copy_obs=True"):
        SB3VecEnv(SeqGenVectorEnv(num_envs=2, task="oracle-hmm", copy_obs=False))
    with pytest.raises(ValueError, match="autoreset_mode NEXT_STEP or DISABLED, got SAME_STEP"):
        SB3VecEnv(SeqGenVectorEnv(num_envs=2, task="oracle-hmm", autoreset_mode="SameStep"))
    disabled = SB3VecEnv(SeqGenVectorEnv(num_envs=2, task="oracle-hmm", max_length=4, autoreset_mode="Disabled"))
    disabled.reset()
    obs, _, dones, infos = disabled.step(np.array([EOS_ID, 5]))  # the adapter resets env 0 itself
    assert dones.tolist() == [True, False] and obs["length"].tolist() == [0, 1]
    obs, _, dones, _ = disabled.step(np.array([5, 5]))  # and DISABLED then lets env 0 step again
    assert obs["length"].tolist() == [1, 2]


def test_token_sequence_extractor_reads_the_state_at_its_last_token():
    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=2, max_length=4)
    torch.manual_seed(0)
    ext = TokenSequenceExtractor(venv.observation_space, features_dim=8)
    tokens = torch.tensor([[A, B_, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)
    one_hot = torch.nn.functional.one_hot
    obs = {
        "tokens": tokens,
        "length": one_hot(torch.tensor([2, 0]), 5).float(),
        "prompt_length": one_hot(torch.tensor([0, 0]), 5).float(),
    }
    out = ext(obs)
    assert out.shape == (2, 8)
    as_index = ext({**obs, "length": torch.tensor([2, 0]), "prompt_length": torch.tensor([[0], [0]])})
    assert torch.equal(out, as_index)
    # the empty state reads no token: its features do not depend on the tokens tensor
    other = ext({**obs, "tokens": torch.tensor([[A, B_, 0, 0], [C, C, C, C]], dtype=torch.float32)})
    assert torch.equal(out[1], other[1])
    # tokens after the length do not matter; tokens before do
    after = ext({**obs, "tokens": torch.tensor([[A, B_, C, C], [0, 0, 0, 0]], dtype=torch.float32)})
    before = ext({**obs, "tokens": torch.tensor([[C, B_, 0, 0], [0, 0, 0, 0]], dtype=torch.float32)})
    assert torch.equal(out[0], after[0]) and not torch.equal(out[0], before[0])


#: a tiny PPO / MaskablePPO over the adapter: one 32-step rollout per update, a 16-wide token extractor
TINY_PPO = dict(
    n_steps=32,
    batch_size=32,
    n_epochs=1,
    seed=0,
    device="cpu",
    policy_kwargs=dict(
        features_extractor_class=TokenSequenceExtractor,
        features_extractor_kwargs=dict(features_dim=16),
        net_arch=[16],
    ),
)


def test_ppo_smoke_runs_and_predicts_one_action_per_env():
    """Smoke test: PPO over the adapter runs and predicts; it checks shapes, not learning."""
    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=4, max_length=6, reward="oracle", validate_actions=False)
    model = PPO("MultiInputPolicy", venv, **TINY_PPO)
    model.learn(total_timesteps=256)
    assert model.num_timesteps == 256
    action, _ = model.predict(venv.reset(), deterministic=True)
    assert action.shape == (4,)


def test_maskable_ppo_learns_with_validation_on():
    venv = make_sb3_vec_env(task="oracle-hmm", num_envs=4, max_length=6, reward="oracle", reward_mode="step")
    model = MaskablePPO("MultiInputPolicy", venv, **TINY_PPO)
    model.learn(total_timesteps=256)  # any masked action would raise in the env
    assert model.num_timesteps == 256
    obs = venv.reset()
    action, _ = model.predict(obs, action_masks=venv.action_masks(), deterministic=True)
    assert venv.action_masks()[np.arange(4), action].all()
