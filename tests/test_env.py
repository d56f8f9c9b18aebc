"""SeqGenEnv: exact dynamics, masks, rewards, seeding, errors, and both env checkers."""

import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import seqenv
from seqenv.env import SeqGenEnv, TokenActionSpace, mix32, prompt_index, seed_key
from seqenv.rewards import ORACLE_LOG_PROB_FLOOR
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID

# oracle-hmm: vocab 21, letters a..p are ids 5..20
A, B_, C, D = 5, 6, 7, 8


def hmm_env(**kw) -> SeqGenEnv:
    kw.setdefault("max_length", 4)
    return SeqGenEnv(task="oracle-hmm", **kw)


def toks(obs):
    return obs["tokens"].tolist(), int(obs["length"]), int(obs["prompt_length"])


def test_append_backspace_eos_exact_states():
    env = hmm_env()
    obs, info = env.reset(seed=0)
    assert toks(obs) == ([0, 0, 0, 0], 0, 0)
    assert info["action_mask"].dtype == np.int8
    assert info["action_mask"].tolist() == [0, 0, 1, 0] + [1] * 17  # no backspace on an empty state
    obs, r, term, trunc, info = env.step(A)
    assert toks(obs) == ([A, 0, 0, 0], 1, 0) and (r, term, trunc) == (0.0, False, False)
    assert info["action_mask"][BACKSPACE_ID] == 1
    obs, *_ = env.step(B_)
    assert toks(obs) == ([A, B_, 0, 0], 2, 0)
    obs, r, term, trunc, info = env.step(BACKSPACE_ID)
    assert toks(obs) == ([A, 0, 0, 0], 1, 0) and not (term or trunc)
    obs, r, term, trunc, info = env.step(EOS_ID)
    assert toks(obs) == ([A, 0, 0, 0], 1, 0)  # eos does not change the state
    assert (r, term, trunc) == (0.0, True, False)
    assert type(term) is bool and type(trunc) is bool and type(r) is float


def test_truncation_when_the_state_is_full():
    env = hmm_env(max_length=3)
    env.reset(seed=0)
    assert env.step(A)[3] is False
    assert env.step(B_)[3] is False
    obs, r, term, trunc, _ = env.step(C)  # the state reaches max_length tokens
    assert toks(obs) == ([A, B_, C], 3, 0) and term is False and trunc is True
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(EOS_ID)


def test_every_token_is_legal_one_below_max_length():
    env = hmm_env(max_length=2)
    _, info = env.reset(seed=0)
    _, _, _, _, info = env.step(A)
    assert info["action_mask"].tolist() == [0, 0, 1, 1] + [1] * 17


def test_step_limit_ends_backspace_loops():
    env = hmm_env(max_episode_steps=4)
    env.reset(seed=0)
    flags = [env.step(a)[2:4] for a in (A, BACKSPACE_ID, A, BACKSPACE_ID)]
    assert flags == [(False, False)] * 3 + [(False, True)]
    assert toks(env._obs()) == ([0, 0, 0, 0], 0, 0)


def test_eos_on_the_last_allowed_step_sets_both_flags():
    env = hmm_env(max_episode_steps=2)
    env.reset(seed=0)
    env.step(A)
    assert env.step(EOS_ID)[2:4] == (True, True)


def test_default_step_limit_is_twice_max_length():
    assert hmm_env(max_length=7).max_episode_steps == 14
    assert SeqGenEnv(task="oracle-hmm").max_length == seqenv.make_task("oracle-hmm").max_length


def test_prompt_is_protected_from_backspace():
    env = hmm_env(max_length=5, prompts=["ab"])
    obs, info = env.reset(seed=0)
    assert toks(obs) == ([A, B_, 0, 0, 0], 2, 2)
    assert info["action_mask"][BACKSPACE_ID] == 0
    with pytest.raises(ValueError, match=r"action 3 \('<bksp>'\) is masked: nothing has been generated"):
        env.step(BACKSPACE_ID)
    obs, *_ = env.step(C)
    assert toks(obs) == ([A, B_, C, 0, 0], 3, 2)
    obs, _, _, _, info = env.step(BACKSPACE_ID)
    assert toks(obs) == ([A, B_, 0, 0, 0], 2, 2) and info["action_mask"][BACKSPACE_ID] == 0


def test_reset_option_prompt_and_prompt_too_long():
    env = hmm_env(max_length=3, render_mode="ansi")
    obs, _ = env.reset(seed=0, options={"prompt": "ab"})
    assert toks(obs) == ([A, B_, 0], 2, 2)
    env.step(C)
    assert env.render() == "ab|c\u258c [truncated]"
    with pytest.raises(ValueError, match="has 3 tokens but max_length=3"):
        env.reset(options={"prompt": "abc"})
    with pytest.raises(ValueError, match="has 4 tokens but max_length=3"):
        hmm_env(max_length=3, prompts=["a", "abcd"])
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(options={"promt": "a"})


def test_render_ansi():
    env = hmm_env(render_mode="ansi")
    env.reset(seed=0)
    assert env.render() == "\u258c"
    env.step(A)
    env.step(B_)
    assert env.render() == "ab\u258c"
    env.step(EOS_ID)
    assert env.render() == "ab\u258c [eos]"


def test_render_without_render_mode_warns():
    env = hmm_env()
    env.reset(seed=0)
    with pytest.warns(UserWarning, match="without a render_mode"):
        assert env.render() is None


def test_conditional_prompt_draws_follow_the_counter_based_hash():
    prompts = ["a", "b", "c", "d", "ab", "ba", "cd"]
    env = hmm_env(prompts=prompts)
    ids = {p: seqenv.make_task("oracle-hmm").tokenizer.encode(p) for p in prompts}
    drawn = [env.reset(seed=11)[0]] + [env.reset()[0] for _ in range(9)]
    expected = [prompts[prompt_index(seed_key(11), k, len(prompts))] for k in range(10)]
    assert [o["tokens"][: o["prompt_length"]].tolist() for o in drawn] == [ids[p] for p in expected]
    assert len(set(expected)) > 2  # the draws vary
    # the same seed gives the same prompts; another seed other prompts
    again = [env.reset(seed=11)[0]["prompt_length"]] + [env.reset()[0]["prompt_length"] for _ in range(9)]
    assert again == [o["prompt_length"] for o in drawn]
    other = [prompt_index(seed_key(12), k, len(prompts)) for k in range(10)]
    assert other != [prompt_index(seed_key(11), k, len(prompts)) for k in range(10)]


def test_mix32_agrees_on_ints_and_tensors():
    xs = [0, 1, 2, 12345, 2**31, 2**32 - 1]
    assert mix32(0) == 0
    assert mix32(1) == 0x31251BA7  # pins the hash (it decides every prompt draw)
    assert mix32(torch.tensor(xs)).tolist() == [mix32(x) for x in xs]
    assert all(0 <= mix32(x) < 2**32 for x in xs)


def test_seeded_trajectories_are_deterministic():
    def run(seed):
        env = hmm_env(max_length=6, prompts=["a", "bc", ""])
        rng = np.random.default_rng(seed)
        obs, info = env.reset(seed=seed)
        out = [obs["tokens"].tolist()]
        for _ in range(40):
            a = rng.choice(np.flatnonzero(info["action_mask"]))
            obs, r, term, trunc, info = env.step(int(a))
            out.append((obs["tokens"].tolist(), term, trunc))
            if term or trunc:
                obs, info = env.reset()
                out.append(obs["tokens"].tolist())
        return out

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_action_space_samples_only_always_legal_actions():
    space = TokenActionSpace(21, seed=0)
    assert space == gym.spaces.Discrete(21)
    drawn = {int(space.sample()) for _ in range(3000)}
    assert drawn == {2, 4} | set(range(5, 21))
    mask = np.zeros(21, dtype=np.int8)
    mask[BACKSPACE_ID] = 1
    assert space.sample(mask=mask) == BACKSPACE_ID


def test_action_masks_method():
    env = hmm_env()
    env.reset(seed=0)
    m = env.action_masks()
    assert m.dtype == np.bool_ and m.tolist() == [False, False, True, False] + [True] * 17
    env.step(A)
    assert env.action_masks()[BACKSPACE_ID]


@pytest.mark.parametrize(
    "action, match",
    [
        (21, r"action 21 is out of range: expected a token id in \[0, 20\]"),
        (-1, r"action -1 is out of range"),
        (0, r"action 0 \('<pad>'\) is never a legal action; allowed now: eos \(2\), token ids 4..20"),
        (1, r"action 1 \('<bos>'\) is never a legal action"),
        (3, r"action 3 \('<bksp>'\) is masked"),
        (1.5, r"action must be an integer token id, got 1.5"),
    ],
)
def test_bad_actions_raise(action, match):
    env = hmm_env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match=match):
        env.step(action)


def test_numpy_integer_actions_are_accepted():
    env = hmm_env()
    env.reset(seed=0)
    obs, *_ = env.step(np.int64(A))
    assert int(obs["length"]) == 1
    obs, *_ = env.step(np.array(B_))
    assert int(obs["length"]) == 2


def test_step_before_reset_and_after_end():
    env = hmm_env()
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(A)
    env.reset(seed=0)
    env.step(EOS_ID)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step(A)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_length=0), "max_length must be an integer >= 1"),
        (dict(max_episode_steps=0), "max_episode_steps must be an integer >= 1"),
        (dict(reward="likelihood"), "unknown reward 'likelihood'"),
        (dict(reward=3), "reward must be one of"),
        (dict(reward_mode="sometimes"), "unknown reward_mode 'sometimes'"),
        (dict(render_mode="human"), "unknown render_mode 'human'"),
        (dict(prompts="ab"), "prompts must be a list of strings"),
        (dict(prompts=[]), "prompts is an empty list"),
        (dict(task="no-such-task"), "unknown task 'no-such-task'; valid tasks: "),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    kwargs = {"task": "oracle-hmm", **kwargs}
    with pytest.raises(ValueError, match=match):
        SeqGenEnv(**kwargs)


def test_oracle_reward_needs_an_oracle():
    with pytest.raises(ValueError, match="reward='oracle' needs a task with an oracle; task 'python-lines' has none"):
        SeqGenEnv(task="python-lines", reward="oracle")


# -- rewards --------------------------------------------------------------
def oracle_logp(ids, prefix=False):
    oracle = seqenv.make_task("oracle-hmm").oracle
    t = torch.tensor([ids])
    n = torch.tensor([len(ids)])
    return float((oracle.prefix_log_prob if prefix else oracle.log_prob)(t, n)[0])


def test_oracle_terminal_reward_is_the_sequence_log_likelihood():
    env = hmm_env(max_length=6, reward="oracle")
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (A, B_, BACKSPACE_ID, C, EOS_ID)]
    assert rewards[:4] == [0.0] * 4
    assert rewards[4] == oracle_logp([A, C]) and rewards[4] < 0


def test_oracle_step_rewards_telescope_to_the_log_likelihood():
    env = hmm_env(max_length=6, reward="oracle", reward_mode="step")
    env.reset(seed=0)
    rewards = [env.step(a)[1] for a in (A, B_, BACKSPACE_ID, C, EOS_ID)]
    assert rewards[0] == pytest.approx(oracle_logp([A], prefix=True), abs=1e-12)
    assert rewards[1] == pytest.approx(oracle_logp([A, B_], prefix=True) - oracle_logp([A], prefix=True), abs=1e-12)
    assert rewards[2] == pytest.approx(-rewards[1], abs=1e-12)  # backspace undoes the append's reward
    assert rewards[4] == pytest.approx(oracle_logp([A, C]) - oracle_logp([A, C], prefix=True), abs=1e-12)
    assert sum(rewards) == pytest.approx(oracle_logp([A, C]), abs=1e-9)


def test_oracle_reward_of_impossible_sequences_is_the_floor():
    env = hmm_env(reward="oracle")
    env.reset(seed=0)
    assert env.step(EOS_ID)[1] == ORACLE_LOG_PROB_FLOOR  # the oracle never emits the empty sequence
    env.reset(seed=0)
    env.step(4)  # unk is no oracle symbol
    assert env.step(EOS_ID)[1] == ORACLE_LOG_PROB_FLOOR


def test_terminal_mode_pays_nothing_on_truncation():
    env = hmm_env(max_length=2, reward="oracle")
    env.reset(seed=0)
    assert [env.step(a)[1] for a in (A, B_)] == [0.0, 0.0]


def test_callable_reward_terminal_and_step():
    def length_score(tokens, lengths):
        return lengths.double() * 10

    env = hmm_env(reward=length_score)
    env.reset(seed=0)
    assert [env.step(a)[1] for a in (A, B_, BACKSPACE_ID, EOS_ID)] == [0.0, 0.0, 0.0, 10.0]
    env = hmm_env(reward=length_score, reward_mode="step")
    env.reset(seed=0)
    assert [env.step(a)[1] for a in (A, B_, BACKSPACE_ID, EOS_ID)] == [10.0, 10.0, -10.0, 0.0]


def test_callable_reward_with_a_wrong_shape_raises():
    env = hmm_env(reward=lambda tokens, lengths: tokens.float())
    env.reset(seed=0)
    with pytest.raises(
        ValueError,
        match=r"must return a float tensor of shape \(1,\) \(one score per state\), "
        r"got Tensor of shape \(1, 4\)",
    ):
        env.step(A)


def test_mask_in_observation():
    env = gym.make("SeqGen-v0", task="oracle-hmm", max_length=3, prompts=["a"], mask_in_observation=True)
    assert env.observation_space["action_mask"] == gym.spaces.MultiBinary(21)
    assert "action_mask" not in hmm_env().observation_space.spaces
    obs, info = env.reset(seed=0)
    assert obs["action_mask"].dtype == np.int8 and obs["action_mask"].tolist() == [0, 0, 1, 0] + [1] * 17
    for a, can_backspace in ((A, 1), (BACKSPACE_ID, 0), (B_, 1)):
        obs, *_, info = env.step(a)
        assert obs["action_mask"].tolist() == info["action_mask"].tolist() == [0, 0, 1, can_backspace] + [1] * 17
        assert env.observation_space.contains(obs)


# -- registration and checkers -----------------------------------------------
def test_registration():
    env = gym.make("SeqGen-v0", task="oracle-hmm")
    assert isinstance(env.unwrapped, SeqGenEnv)
    env2 = gym.make("seqenv:SeqGen-v0", task="oracle-hmm", max_length=5)
    assert env2.unwrapped.max_length == 5
    assert gym.spec("SeqGen-v0").vector_entry_point == "seqenv.vector_env:SeqGenVectorEnv"


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(task="oracle-hmm", reward="oracle", reward_mode="step", render_mode="ansi"),
        dict(task="oracle-hmm", prompts=["a", "bc"], max_length=6),
        dict(mask_in_observation=True),
        dict(task="oracle-hmm", prompts=["a", "bc"], max_length=6, mask_in_observation=True),
    ],
)
def test_env_checkers_pass_without_warnings(kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        env = gym.make("SeqGen-v0", **kwargs)
        gym_check_env(env.unwrapped)
        sb3_check_env(env)
        for seed in range(5):  # the checkers draw random actions: a few more draws
            env.action_space.seed(seed)
            sb3_check_env(env)
