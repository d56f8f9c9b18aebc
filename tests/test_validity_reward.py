"""reward="validity": 1 exactly when the task's checker accepts the final text, terminal only; the
single and the vector env pay the same rewards step for step."""

import numpy as np
import pytest
import torch

from seqenv.env import SeqGenEnv
from seqenv.tasks import make_task
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID
from seqenv.vector_env import SeqGenVectorEnv

QUESTION = "In base 7, what is 126 - 4? "  # answer 122


def play(env, text_actions, prompt=QUESTION):
    """Rewards and final flags of an episode typed as a list of strings (one char each) or ints (special ids)."""
    tok = env.tokenizer
    env.reset(seed=0, options={"prompt": prompt})
    rewards, term, trunc = [], False, False
    for a in text_actions:
        action = a if isinstance(a, int) else tok.encode(a)[0]
        _, r, term, trunc, _ = env.step(action)
        rewards.append(r)
        if term or trunc:
            break
    return rewards, term, trunc


@pytest.mark.parametrize("mode", ["terminal", "step"])
def test_arithmetic_pays_one_on_the_exact_answer_only(mode):
    env = SeqGenEnv(task="arithmetic", reward="validity", reward_mode=mode)
    # the exact answer, then eos: 1 on the eos step, 0 before
    assert play(env, ["1", "2", "2", EOS_ID]) == ([0.0, 0.0, 0.0, 1.0], True, False)
    # a wrong answer, a prefix of the answer, the answer with trailing text: 0
    assert play(env, ["1", "2", "3", EOS_ID])[0] == [0.0] * 4
    assert play(env, ["1", "2", EOS_ID])[0] == [0.0] * 3
    assert play(env, ["1", "2", "2", " ", EOS_ID])[0] == [0.0] * 5
    # an error repaired with backspace: the final text is what counts
    assert play(env, ["1", "2", "3", BACKSPACE_ID, "2", EOS_ID])[0] == [0.0] * 5 + [1.0]
    # a correct answer that never emits eos (truncated by the step limit) earns 0
    short = SeqGenEnv(task="arithmetic", reward="validity", reward_mode=mode, max_episode_steps=3)
    assert play(short, ["1", "2", "2", EOS_ID]) == ([0.0, 0.0, 0.0], False, True)


def test_python_lines_validity_is_the_task_checker():
    env = SeqGenEnv(task="python-lines", reward="validity")
    task = env.task
    for text in ("x = 1", "x = ", "print(a)", "1 +", "import os"):
        rewards, term, _ = play(env, [*text, EOS_ID], prompt=None)
        assert term and rewards[-1] == float(task.is_valid(text)) and not any(rewards[:-1])
    assert task.is_valid("x = 1") and not task.is_valid("x = ")  # both outcomes were exercised


def test_validity_needs_a_checker():
    with pytest.raises(ValueError, match="validity checker.*'oracle-hmm'"):
        SeqGenEnv(task="oracle-hmm", reward="validity")


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_vector_env_pays_the_same_validity_rewards_as_single_envs(backend):
    """Scripted arithmetic episodes (right, wrong, repaired, truncated) and random python-lines episodes:
    every reward, flag and length equal between the vector env and N single envs."""
    task = make_task("arithmetic")
    tok = task.tokenizer
    enc = tok.encode
    scripts = [
        enc("122") + [EOS_ID],
        enc("123") + [EOS_ID],
        enc("13") + [BACKSPACE_ID] + enc("22") + [EOS_ID],
        enc("122122122122"),
    ]
    N = len(scripts)
    venv = SeqGenVectorEnv(
        task=task,
        num_envs=N,
        backend=backend,
        reward="validity",
        max_episode_steps=10,
        autoreset_mode="Disabled",
        validate_actions=False,
    )  # ended rows: ignored below
    envs = [SeqGenEnv(task=task, reward="validity", max_episode_steps=10) for _ in range(N)]
    venv.reset(seed=0, options={"prompt": [QUESTION] * N})
    for e in envs:
        e.reset(seed=0, options={"prompt": QUESTION})
    totals, done = np.zeros(N), [False] * N
    for t in range(12):
        actions = [s[t] if t < len(s) and not done[i] else EOS_ID for i, s in enumerate(scripts)]
        _, vrew, vterm, vtrunc, _ = venv.step(torch.tensor(actions))
        for i, e in enumerate(envs):
            if done[i]:
                continue
            _, r, term, trunc, _ = e.step(actions[i])
            assert (float(vrew[i]), bool(vterm[i]), bool(vtrunc[i])) == (r, term, trunc)
            totals[i] += r
            done[i] = term or trunc
        if all(done):
            break
    assert totals.tolist() == [1.0, 0.0, 1.0, 0.0]

    # random legal actions on python-lines (many short statements): step-for-step equal, some of each outcome
    N, seed = 6, 3
    venv = SeqGenVectorEnv(task="python-lines", num_envs=N, backend=backend, reward="validity", max_length=6)
    envs = [SeqGenEnv(task="python-lines", reward="validity", max_length=6) for _ in range(N)]
    _, vinfo = venv.reset(seed=seed)
    for i, e in enumerate(envs):
        e.reset(seed=seed + i)
    rng = np.random.default_rng(0)
    letters = [venv.tokenizer.encode(c)[0] for c in "xy1=+("]
    paid, done = [], [False] * N
    for _ in range(300):
        mask = vinfo["action_mask"].numpy()
        actions = np.array(
            [
                EOS_ID
                if rng.random() < 0.3
                else BACKSPACE_ID
                if mask[i, BACKSPACE_ID] and rng.random() < 0.2
                else int(rng.choice(letters))
                for i in range(N)
            ]
        )
        _, vrew, vterm, vtrunc, vinfo = venv.step(actions)
        for i, e in enumerate(envs):
            if done[i]:  # NEXT_STEP autoreset: the vector env restarts this env
                e.reset()
                rew, term, trunc = 0.0, False, False
            else:
                _, rew, term, trunc, _ = e.step(int(actions[i]))
                if term:
                    paid.append(rew)
            assert (float(vrew[i]), bool(vterm[i]), bool(vtrunc[i])) == (rew, term, trunc)
            done[i] = term or trunc
    assert 1.0 in paid and 0.0 in paid and set(paid) == {0.0, 1.0}
