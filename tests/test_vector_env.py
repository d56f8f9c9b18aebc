"""SeqGenVectorEnv: equal to N single envs, autoreset, options, errors, wrappers, devices."""

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers.vector import RecordEpisodeStatistics

import seqenv  # noqa: F401  (registers SeqGen-v0)
from seqenv.env import EnvConfig, SeqGenEnv
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID, PAD_ID
from seqenv.vector_env import SeqGenVectorEnv, ToNumpy

A, B_, C = 5, 6, 7  # oracle-hmm letters a, b, c
BACKENDS = ["numpy", "torch"]


def position_score(tokens, lengths):
    """A state score that sees every token and its position (float64 [B])."""
    weights = torch.arange(1, tokens.shape[1] + 1, device=tokens.device, dtype=torch.float64)
    return (tokens.double() * weights).sum(1) / 100 + lengths.double()


CONFIGS = {
    "prompts+oracle-step": dict(
        task="oracle-hmm",
        max_length=5,
        max_episode_steps=8,
        prompts=["a", "bc", "", "d"],
        reward="oracle",
        reward_mode="step",
    ),
    "callable-terminal": dict(task="oracle-hmm", max_length=5, max_episode_steps=8, reward=position_score),
}


def choose(mask: np.ndarray, rng: np.random.Generator) -> int:
    """A legal action, with many backspaces and eos."""
    u = rng.random()
    if mask[BACKSPACE_ID] and u < 0.3:
        return BACKSPACE_ID
    if u < 0.38:
        return EOS_ID
    return int(rng.choice(np.flatnonzero(mask[4:]) + 4))


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_vector_env_equals_single_envs(backend, config):
    kw, N, seed = CONFIGS[config], 5, 100
    venv = SeqGenVectorEnv(num_envs=N, backend=backend, **kw)
    envs = [SeqGenEnv(**kw) for _ in range(N)]
    vobs, vinfo = venv.reset(seed=seed)
    singles = [e.reset(seed=seed + i) for i, e in enumerate(envs)]
    for i, (obs, info) in enumerate(singles):
        _assert_same(vobs, vinfo, i, obs, info)

    rng = np.random.default_rng(0)
    done = [False] * N
    seen = Counter()
    for _ in range(250):
        mask = vinfo["action_mask"].numpy()
        actions = np.array([choose(mask[i], rng) for i in range(N)])
        vobs, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        assert vrew.dtype == torch.float32 and vterm.dtype == torch.bool and vtrunc.dtype == torch.bool
        for i, env in enumerate(envs):
            if done[i]:  # NEXT_STEP autoreset: the vector env restarts this env, the action is ignored
                (obs, info), rew, term, trunc = env.reset(), 0.0, False, False
                seen["restart"] += 1
            else:
                obs, rew, term, trunc, info = env.step(int(actions[i]))
                seen["backspace"] += int(actions[i]) == BACKSPACE_ID
                seen["eos"] += term
                seen["full"] += trunc and int(obs["length"]) == kw["max_length"]
                seen["step limit"] += trunc and int(obs["length"]) < kw["max_length"]
            _assert_same(vobs, vinfo, i, obs, info)
            assert (bool(vterm[i]), bool(vtrunc[i])) == (term, trunc)
            assert float(vrew[i]) == pytest.approx(rew, rel=1e-6, abs=1e-5)
            seen["nonzero reward"] += rew != 0.0
            done[i] = term or trunc
    assert min(seen[k] for k in ("restart", "backspace", "eos", "full", "step limit", "nonzero reward")) > 0, seen


MODES = [AutoresetMode.NEXT_STEP, AutoresetMode.SAME_STEP, AutoresetMode.DISABLED]


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.value)
@pytest.mark.parametrize("config,mask_in_obs", [("prompts+oracle-step", True), ("callable-terminal", False)])
def test_autoreset_modes_equal_sync_vector_env(backend, mode, config, mask_in_obs):
    """Every output equal to gymnasium's SyncVectorEnv over SeqGenEnv, in each autoreset mode."""
    kw, N, seed = dict(CONFIGS[config], mask_in_observation=mask_in_obs), 5, 7
    ours = SeqGenVectorEnv(num_envs=N, backend=backend, autoreset_mode=mode.value, **kw)  # the mode as a string
    ref = gym.vector.SyncVectorEnv([lambda: SeqGenEnv(**kw)] * N, autoreset_mode=mode)
    assert ours.autoreset_mode == ours.metadata["autoreset_mode"] == ref.metadata["autoreset_mode"] == mode
    assert ours.single_observation_space == ref.single_observation_space
    assert ours.observation_space == ref.observation_space and ours.action_space == ref.action_space
    _assert_equal(ours.reset(seed=seed), ref.reset(seed=seed))
    rng = np.random.default_rng(1)
    mask = ref.call("action_masks")
    seen = Counter()
    for _ in range(120):
        actions = np.array([choose(m, rng) for m in mask])
        out, expected = ours.step(actions), ref.step(actions)
        _assert_equal(out, expected)
        assert ours.observation_space.contains({k: v.numpy() for k, v in out[0].items()})
        ended = expected[2] | expected[3]
        seen["ended"] += ended.sum()
        seen["final_obs"] += "final_obs" in expected[4]
        if mode == AutoresetMode.DISABLED and ended.any():  # reset the ended envs, as the mode requires
            with pytest.raises(RuntimeError, match=r"episode ended \(first: \[\d+"):
                ours.step(actions)
            (obs, info), (ref_obs, ref_info) = (e.reset(options={"reset_mask": ended.copy()}) for e in (ours, ref))
            _assert_equal(obs, ref_obs)
            # info: the mask of every env (SyncVectorEnv: of the reset envs only, zeros elsewhere)
            assert ref_info["_action_mask"].tolist() == ended.tolist() and info["_action_mask"].all()
            assert info["action_mask"][ended].tolist() == ref_info["action_mask"][ended].astype(bool).tolist()
            assert info["action_mask"].tolist() == ours.action_masks().tolist()
            seen["partial resets"] += 1
        mask = ref.call("action_masks")
    assert seen["ended"] > 20, seen
    assert seen["final_obs"] > 10 if mode == AutoresetMode.SAME_STEP else seen["final_obs"] == 0, seen
    assert seen["partial resets"] > 10 if mode == AutoresetMode.DISABLED else True, seen


def _assert_equal(ours, ref, path="out"):
    """Equal values, recursively: torch (ours) vs numpy (SyncVectorEnv); masks bool vs int8; floats to 1e-6."""
    if isinstance(ref, (tuple, dict)):
        assert type(ours) is type(ref) and len(ours) == len(ref), path
        if isinstance(ref, dict):
            assert sorted(ours) == sorted(ref), (path, sorted(ours), sorted(ref))
        for k in ref if isinstance(ref, dict) else range(len(ref)):
            _assert_equal(ours[k], ref[k], f"{path}[{k!r}]")
    elif isinstance(ref, np.ndarray) and ref.dtype == object:  # final_obs: one dict or None per env
        assert isinstance(ours, np.ndarray) and ours.dtype == object and ours.shape == ref.shape, path
        for i, (o, r) in enumerate(zip(ours, ref)):
            assert (o is None) == (r is None), f"{path}[{i}]"
            if r is not None:
                _assert_equal(o, r, f"{path}[{i}]")
    else:
        o, r = np.asarray(ours.cpu() if isinstance(ours, torch.Tensor) else ours), np.asarray(ref)
        assert o.shape == r.shape, (path, o.shape, r.shape)
        if r.dtype.kind == "f":
            np.testing.assert_allclose(o, r, rtol=1e-6, atol=1e-5, err_msg=path)
        else:
            assert o.astype(np.int64).tolist() == r.astype(np.int64).tolist(), path


def test_autoreset_mode_arguments():
    venv = gym.make_vec("SeqGen-v0", num_envs=2, task="oracle-hmm", autoreset_mode=AutoresetMode.SAME_STEP)
    assert venv.autoreset_mode == AutoresetMode.SAME_STEP and venv.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP
    assert SeqGenVectorEnv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP  # the class default is untouched
    assert (
        SeqGenVectorEnv(num_envs=1, task="oracle-hmm", autoreset_mode="Disabled").autoreset_mode
        == AutoresetMode.DISABLED
    )
    with pytest.raises(
        ValueError,
        match=r"unknown autoreset_mode 'same_step'; expected an AutoresetMode or one of "
        r"\['NextStep', 'SameStep', 'Disabled'\]",
    ):
        SeqGenVectorEnv(num_envs=1, task="oracle-hmm", autoreset_mode="same_step")


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_step_scripted_final_obs(backend):
    venv = SeqGenVectorEnv(
        num_envs=3,
        task="oracle-hmm",
        max_length=2,
        max_episode_steps=10,
        backend=backend,
        autoreset_mode="SameStep",
        mask_in_observation=True,
        reward=lambda tokens, lengths: lengths.double() * 10,
    )
    venv.reset(seed=0)
    obs, rew, term, trunc, info = venv.step(np.array([A, A, A]))
    assert "final_obs" not in info and obs["length"].tolist() == [1, 1, 1] and info["_action_mask"].all()
    obs, rew, term, trunc, info = venv.step(np.array([BACKSPACE_ID, EOS_ID, BACKSPACE_ID]))  # env 1 ends, restarts
    assert term.tolist() == [False, True, False] and obs["length"].tolist() == [0, 0, 0]
    assert info["final_obs"][1]["tokens"].tolist() == [A, 0] and info["final_obs"][0] is None
    venv.step(np.array([A, EOS_ID, A]))  # env 1 ends empty
    obs, rew, term, trunc, info = venv.step(np.array([B_, A, EOS_ID]))  # env 0 full, env 2 eos: both restart
    assert term.tolist() == [False, False, True] and trunc.tolist() == [True, False, False]
    assert rew.tolist() == [0.0, 0.0, 10.0]  # terminal reward of "a": paid on the step that ended it
    assert obs["tokens"].tolist() == [[0, 0], [A, 0], [0, 0]] and obs["length"].tolist() == [0, 1, 0]
    assert obs["action_mask"][:, BACKSPACE_ID].tolist() == [0, 1, 0]  # of the restarted envs
    assert info["_final_obs"].tolist() == info["_final_info"].tolist() == [True, False, True]
    assert info["final_obs"][1] is None
    assert info["final_obs"][0]["tokens"].tolist() == [A, B_] and int(info["final_obs"][0]["length"]) == 2
    assert info["final_obs"][2]["tokens"].tolist() == [A, 0] and int(info["final_obs"][2]["action_mask"][3]) == 1
    assert info["final_info"]["action_mask"][:, BACKSPACE_ID].tolist() == [True, False, True]
    assert not info["final_info"]["action_mask"][1].any()
    obs, rew, term, trunc, info = venv.step(np.array([A, A, A]))  # no restart before the action: every action counts
    assert obs["length"].tolist() == [1, 0, 1] and trunc.tolist() == [False, True, False]  # env 1 became full
    assert info["_final_obs"].tolist() == [False, True, False] and info["final_obs"][1]["tokens"].tolist() == [A, A]


def test_to_numpy_converts_final_obs():
    venv = ToNumpy(SeqGenVectorEnv(num_envs=2, task="oracle-hmm", max_length=3, autoreset_mode="SameStep"))
    venv.reset(seed=0)
    *_, info = venv.step(np.array([EOS_ID, A]))
    assert info["final_obs"][1] is None and isinstance(info["final_obs"][0]["tokens"], np.ndarray)
    assert isinstance(info["_final_obs"], np.ndarray) and isinstance(info["final_info"]["action_mask"], np.ndarray)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mask_in_observation(backend):
    for copy_obs in (True, False):
        venv = SeqGenVectorEnv(
            num_envs=2, task="oracle-hmm", max_length=3, backend=backend, copy_obs=copy_obs, mask_in_observation=True
        )
        assert venv.single_observation_space["action_mask"] == gym.spaces.MultiBinary(21)
        assert venv.observation_space["action_mask"] == gym.spaces.Box(0, 1, (2, 21), np.int8)  # batch_space
        obs, info = venv.reset(seed=0)
        assert obs["action_mask"].dtype == torch.int8 and obs["action_mask"][:, BACKSPACE_ID].tolist() == [0, 0]
        obs, *_, info = venv.step(np.array([A, EOS_ID]))
        assert obs["action_mask"].tolist() == info["action_mask"].to(torch.int8).tolist()
        assert obs["action_mask"][:, BACKSPACE_ID].tolist() == [1, 0]
    assert "action_mask" not in SeqGenVectorEnv(num_envs=1, task="oracle-hmm").single_observation_space.spaces


def _assert_same(vobs, vinfo, i, obs, info):
    assert vobs["tokens"][i].tolist() == obs["tokens"].tolist()
    assert int(vobs["length"][i]) == int(obs["length"])
    assert int(vobs["prompt_length"][i]) == int(obs["prompt_length"])
    assert vinfo["action_mask"][i].tolist() == info["action_mask"].astype(bool).tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_scripted_batch_exact_states(backend):
    venv = SeqGenVectorEnv(num_envs=3, task="oracle-hmm", max_length=3, max_episode_steps=4, backend=backend)
    obs, info = venv.reset(seed=0)
    assert obs["tokens"].tolist() == [[0, 0, 0]] * 3 and info["action_mask"][:, BACKSPACE_ID].tolist() == [False] * 3
    script = [  # (actions, tokens, length, terminated, truncated)
        ([A, A, A], [[A, 0, 0], [A, 0, 0], [A, 0, 0]], [1, 1, 1], [0, 0, 0], [0, 0, 0]),
        ([EOS_ID, B_, BACKSPACE_ID], [[A, 0, 0], [A, B_, 0], [0, 0, 0]], [1, 2, 0], [1, 0, 0], [0, 0, 0]),
        ([C, C, A], [[0, 0, 0], [A, B_, C], [A, 0, 0]], [0, 3, 1], [0, 0, 0], [0, 1, 0]),  # env 0 restarts
        ([A, C, BACKSPACE_ID], [[A, 0, 0], [0, 0, 0], [0, 0, 0]], [1, 0, 0], [0, 0, 0], [0, 0, 1]),  # step limit
    ]
    for actions, tokens, length, term, trunc in script:
        obs, rew, terminated, truncated, info = venv.step(torch.tensor(actions))
        assert obs["tokens"].tolist() == tokens and obs["length"].tolist() == length
        assert terminated.tolist() == [bool(t) for t in term] and truncated.tolist() == [bool(t) for t in trunc]
        assert rew.tolist() == [0.0] * 3
    assert venv.steps.tolist() == [1, 0, 4]


def test_make_vec_and_spaces():
    venv = gym.make_vec("SeqGen-v0", num_envs=4, task="oracle-hmm", max_length=6, max_episode_steps=9)
    assert isinstance(venv, SeqGenVectorEnv) and venv.max_episode_steps == 9
    assert venv.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    assert venv.single_action_space == gym.spaces.Discrete(21)
    assert venv.action_space == gym.spaces.MultiDiscrete([21] * 4)
    assert venv.single_observation_space["tokens"].shape == (6,)
    assert venv.observation_space["tokens"].shape == (4, 6)
    assert venv.observation_space["length"] == gym.spaces.MultiDiscrete([7] * 4)
    obs, info = venv.reset(seed=0)
    assert obs["tokens"].dtype == torch.int64 and obs["length"].shape == (4,)
    assert info["action_mask"].shape == (4, 21) and info["action_mask"].dtype == torch.bool
    assert venv.observation_space.contains({k: v.numpy() for k, v in obs.items()})


def test_sync_vectorization_of_the_single_env():
    venv = gym.make_vec("SeqGen-v0", num_envs=2, vectorization_mode="sync", task="oracle-hmm", max_length=4)
    obs, info = venv.reset(seed=0)
    obs, rew, term, trunc, info = venv.step(np.array([A, EOS_ID]))
    assert obs["tokens"].tolist() == [[A, 0, 0, 0], [0, 0, 0, 0]] and term.tolist() == [False, True]
    assert info["action_mask"].dtype == np.int8 and info["action_mask"][:, BACKSPACE_ID].tolist() == [1, 0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_off_makes_illegal_actions_no_ops(backend):
    venv = SeqGenVectorEnv(num_envs=5, task="oracle-hmm", max_length=4, validate_actions=False, backend=backend)
    venv.reset(seed=0)
    obs, _, term, trunc, _ = venv.step(np.array([PAD_ID, 1, BACKSPACE_ID, 999, -7]))
    assert obs["length"].tolist() == [0] * 5 and obs["tokens"].abs().sum() == 0
    assert not term.any() and not trunc.any()
    assert venv.steps.tolist() == [1] * 5  # the no-ops count toward the step limit


@pytest.mark.parametrize("backend", BACKENDS)
def test_validation_errors_name_env_action_and_allowed(backend):
    venv = SeqGenVectorEnv(num_envs=3, task="oracle-hmm", max_length=4, backend=backend)
    venv.reset(seed=0)
    with pytest.raises(ValueError, match=r"action 3 \('<bksp>'\) \(env 1\) is masked: nothing has been generated"):
        venv.step(np.array([A, BACKSPACE_ID, A]))
    with pytest.raises(ValueError, match=r"action 0 \('<pad>'\) \(env 2\) is never a legal action"):
        venv.step(np.array([A, A, PAD_ID]))
    with pytest.raises(ValueError, match=r"action 21 \(env 0\) is out of range"):
        venv.step(np.array([21, A, A]))
    with pytest.raises(ValueError, match=r"actions must have shape \(3,\)"):
        venv.step(np.array([A, A]))
    with pytest.raises(ValueError, match="actions must be integer token ids"):
        venv.step(np.array([5.0, 5.0, 5.0]))
    assert venv.length.tolist() == [0, 0, 0]  # rejected steps change nothing


def test_actions_of_ended_episodes_are_not_validated():
    venv = SeqGenVectorEnv(num_envs=2, task="oracle-hmm", max_length=4)
    venv.reset(seed=0)
    venv.step(np.array([EOS_ID, A]))
    obs, rew, term, trunc, _ = venv.step(np.array([PAD_ID, B_]))  # env 0 restarts; its pad is ignored
    assert obs["tokens"].tolist() == [[0, 0, 0, 0], [A, B_, 0, 0]]


def test_one_env_config_serves_both_envs():
    """An EnvConfig built once drives a single env and a vector env alike (gymnax's EnvParams)."""
    config = EnvConfig.make(task="oracle-hmm", max_length=4, prompts=["ab", "c"], mask_in_observation=True)
    env, venv = SeqGenEnv(config), SeqGenVectorEnv(num_envs=2, task=config)
    assert env.config is config and venv.config is config
    assert (env.max_length, venv.max_length, venv.mask_in_observation) == (4, 4, True)
    obs, _ = env.reset(seed=3)
    vobs, _ = venv.reset(seed=3)  # env 0 of the batch is seeded with 3, as the single env
    assert obs["tokens"].tolist() == vobs["tokens"][0].tolist()
    assert obs["action_mask"].tolist() == vobs["action_mask"][0].tolist()
    with pytest.raises(ValueError, match=r"an EnvConfig is complete; got it with the arguments \['max_length'\]"):
        SeqGenEnv(config, max_length=3)
    with pytest.raises(TypeError, match="max_lenght"):
        SeqGenVectorEnv(num_envs=1, task="oracle-hmm", max_lenght=3)
    with pytest.raises(AttributeError):
        env.max_length = 5  # read-only: the config is the one source


def test_step_before_reset_and_bad_arguments():
    venv = SeqGenVectorEnv(num_envs=2, task="oracle-hmm")
    with pytest.raises(RuntimeError, match="before reset"):
        venv.step(np.array([A, A]))
    with pytest.raises(ValueError, match="needs a first full reset"):
        venv.reset(options={"reset_mask": np.array([True, False])})
    with pytest.raises(ValueError, match="num_envs must be an integer >= 1, got 0"):
        SeqGenVectorEnv(num_envs=0, task="oracle-hmm")
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        SeqGenVectorEnv(num_envs=1, task="oracle-hmm", backend="jax")
    with pytest.raises(ValueError, match="max_length must be an integer >= 1"):
        SeqGenVectorEnv(num_envs=1, task="oracle-hmm", max_length=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            SeqGenVectorEnv(num_envs=1, task="oracle-hmm", device="cuda")
    venv.reset(seed=0)
    with pytest.raises(ValueError, match="unknown reset options"):
        venv.reset(options={"seed": 1})
    with pytest.raises(ValueError, match=r"'reset_mask' must be a bool array of shape \(2,\)"):
        venv.reset(options={"reset_mask": np.array([1, 0])})
    with pytest.raises(ValueError, match="'prompt' must be a string or a list of 2 strings"):
        venv.reset(options={"prompt": ["a"]})
    with pytest.raises(ValueError, match="has 25 tokens but max_length=25"):
        venv.reset(options={"prompt": "a" * 25})


@pytest.mark.parametrize("backend", BACKENDS)
def test_reset_options_prompt_and_reset_mask(backend):
    venv = SeqGenVectorEnv(num_envs=3, task="oracle-hmm", max_length=4, backend=backend, render_mode="ansi")
    obs, info = venv.reset(seed=0, options={"prompt": ["a", "", "bc"]})
    assert obs["tokens"].tolist() == [[A, 0, 0, 0], [0, 0, 0, 0], [B_, C, 0, 0]]
    assert obs["prompt_length"].tolist() == [1, 0, 2]
    venv.step(np.array([B_, B_, A]))
    assert venv.render() == ("a|b\u258c", "b\u258c", "bc|a\u258c")
    obs, info = venv.reset(options={"reset_mask": np.array([False, True, False]), "prompt": "c"})
    assert obs["tokens"].tolist() == [[A, B_, 0, 0], [C, 0, 0, 0], [B_, C, A, 0]]
    assert obs["prompt_length"].tolist() == [1, 1, 2] and obs["length"].tolist() == [2, 1, 3]
    assert info["action_mask"][:, BACKSPACE_ID].tolist() == [True, False, True]
    # an unconditional autoreset restores the empty start state
    venv.step(np.array([EOS_ID, A, A]))
    obs, *_ = venv.step(np.array([A, A, A]))
    assert obs["tokens"][0].tolist() == [0, 0, 0, 0] and obs["prompt_length"][0] == 0


def test_same_seed_same_prompts_and_seed_offsets_per_env():
    kw = dict(task="oracle-hmm", max_length=4, prompts=["a", "b", "c", "d", "ab", "cd"])
    v1, v2 = SeqGenVectorEnv(num_envs=8, **kw), SeqGenVectorEnv(num_envs=8, **kw)
    assert v1.reset(seed=5)[0]["tokens"].tolist() == v2.reset(seed=5)[0]["tokens"].tolist()
    single = SeqGenEnv(**kw)
    assert [single.reset(seed=5 + b)[0]["tokens"].tolist() for b in range(8)] == v1.reset(seed=5)[0]["tokens"].tolist()
    assert v1.reset(seed=6)[0]["tokens"].tolist() != v2.reset(seed=5)[0]["tokens"].tolist()


@pytest.mark.parametrize("backend", BACKENDS)
def test_copy_obs(backend):
    venv = SeqGenVectorEnv(num_envs=2, task="oracle-hmm", max_length=4, backend=backend)
    obs, info = venv.reset(seed=0)
    obs2, *_, info2 = venv.step(np.array([A, A]))
    assert obs["tokens"].sum() == 0 and obs["length"].tolist() == [0, 0]  # not overwritten by the step
    assert not info["action_mask"][:, BACKSPACE_ID].any() and info2["action_mask"][:, BACKSPACE_ID].all()
    fast = SeqGenVectorEnv(num_envs=2, task="oracle-hmm", max_length=4, copy_obs=False, backend=backend)
    obs, info = fast.reset(seed=0)
    assert obs["tokens"] is fast.tokens
    fast.step(np.array([A, B_]))
    assert obs["tokens"][:, 0].tolist() == [A, B_]  # shared state: overwritten
    assert info["action_mask"][:, BACKSPACE_ID].all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sample_legal_actions_is_uniform_over_the_mask(backend):
    venv = SeqGenVectorEnv(num_envs=4000, task="oracle-hmm", max_length=4, backend=backend)
    venv.reset(seed=0, options={"prompt": ["a"] * 2000 + [""] * 2000})
    venv.step(np.array([A] * 1000 + [EOS_ID] * 1000 + [A] * 2000))  # rows 0-999 and 2000-3999 can backspace
    gen = torch.Generator().manual_seed(0)
    counts = Counter()
    for _ in range(10):
        a = venv.sample_legal_actions(gen).numpy()
        mask = venv.action_masks().numpy()
        assert mask[np.arange(4000), a].all()
        counts.update(zip(mask[:, BACKSPACE_ID].tolist(), a.tolist()))
    for can_bs, n_legal, draws in ((True, 19, 30000), (False, 18, 10000)):
        legal = [2, 3] + list(range(4, 21)) if can_bs else [2] + list(range(4, 21))
        assert len(legal) == n_legal
        for action in legal:  # each legal action: expected draws/n_legal, within 12%
            assert abs(counts[(can_bs, action)] - draws / n_legal) < 0.12 * draws / n_legal
        assert sum(counts[(can_bs, a)] for a in legal) == draws


def test_record_episode_statistics():
    venv = SeqGenVectorEnv(
        num_envs=2, task="oracle-hmm", max_length=4, reward=lambda tokens, lengths: lengths.double(), reward_mode="step"
    )
    env = RecordEpisodeStatistics(ToNumpy(venv))
    obs, info = env.reset(seed=0)
    assert isinstance(obs["tokens"], np.ndarray)
    for actions in ([A, A], [B_, BACKSPACE_ID], [EOS_ID, A]):
        obs, rew, term, trunc, info = env.step(np.array(actions))
    assert isinstance(rew, np.ndarray) and rew.dtype == np.float32
    assert info["_episode"].tolist() == [True, False]
    assert info["episode"]["r"][0] == 2.0 and info["episode"]["l"][0] == 3  # +1 +1 then eos (0)
    for actions in ([A, A], [A, B_], [B_, C]):  # env 0 restarts (not counted); env 1 fills its state
        obs, rew, term, trunc, info = env.step(np.array(actions))
    assert info["_episode"].tolist() == [False, True] and trunc.tolist() == [False, True]
    assert info["episode"]["r"][1] == 4.0 and info["episode"]["l"][1] == 6  # +1 -1 +1 +1 +1 +1
    assert list(env.return_queue) == [2.0, 4.0] and list(env.length_queue) == [3, 6]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    kw = CONFIGS["prompts+oracle-step"]
    cpu = SeqGenVectorEnv(num_envs=16, **kw)
    gpu = SeqGenVectorEnv(num_envs=16, device="cuda", **kw)
    c, ci = cpu.reset(seed=1)
    g, gi = gpu.reset(seed=1)
    gen = torch.Generator().manual_seed(0)
    for _ in range(100):
        a = cpu.sample_legal_actions(gen)
        c, cr, ct, ctr, ci = cpu.step(a)
        g, gr, gt, gtr, gi = gpu.step(a.cuda())
        assert g["tokens"].device.type == "cuda"
        for k in c:
            assert torch.equal(c[k], g[k].cpu())
        assert torch.equal(ct, gt.cpu()) and torch.equal(ctr, gtr.cpu())
        assert torch.equal(ci["action_mask"], gi["action_mask"].cpu())
        assert torch.allclose(cr, gr.cpu(), atol=1e-5)
