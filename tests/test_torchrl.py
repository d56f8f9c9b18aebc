"""TorchRL as a real client: GymEnv / GymWrapper over both envs, check_env_specs, random rollouts under ActionMask.

The importorskip is only a guard for a bare install: CI installs the ``test``
extra (torchrl, tensordict), so these tests run there.
"""

import gymnasium as gym
import pytest
import torch

pytest.importorskip("torchrl")
from torchrl.envs import ActionMask, GymEnv, GymWrapper, TransformedEnv  # noqa: E402
from torchrl.envs.utils import check_env_specs  # noqa: E402

import seqenv  # noqa: E402,F401  (registers SeqGen-v0)
from seqenv.env import SeqGenEnv  # noqa: E402
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID  # noqa: E402

L = 6  # max_length of every env here (oracle-hmm: vocab 21)


def check_rollout(td, steps: int, batch: tuple = ()) -> tuple:
    """Every action legal under the observed mask; the flags of each step; per-step quantities for the caller.

    :return: ``(length, next_length, change, done, action)``, each ``[*batch, steps]``; ``change``: the
        length change the action makes (+1 append, -1 backspace, 0 eos).
    """
    assert td.batch_size == torch.Size([*batch, steps])
    action = td["action"].argmax(-1) if td["action"].shape[-1] == 21 else td["action"]
    mask = td["action_mask"].bool()
    assert mask.gather(-1, action[..., None]).all()  # no illegal action
    assert not mask[..., [0, 1]].any()  # pad and bos never legal
    length = td["length"].argmax(-1) if td["length"].shape[-1] == L + 1 else td["length"]
    next_length = td["next", "length"].argmax(-1) if td["next", "length"].shape[-1] == L + 1 else td["next", "length"]
    assert mask[..., BACKSPACE_ID].tolist() == (length > 0).tolist()  # unconditional task: prompt_length 0
    change = torch.where(action == BACKSPACE_ID, -1, torch.where(action == EOS_ID, 0, 1))
    done = td["next", "done"][..., 0]
    assert done.sum() > 10 and (action == BACKSPACE_ID).sum() > 0
    assert td["next", "terminated"][..., 0].tolist() == (action == EOS_ID).tolist()
    truncated = td["next", "truncated"][..., 0]
    assert (
        truncated[next_length == L].all() and done.tolist() == (td["next", "terminated"][..., 0] | truncated).tolist()
    )
    return length, next_length, change, done, action


@pytest.mark.parametrize("make", ["GymEnv", "GymWrapper"])
def test_single_env_specs_and_masked_random_rollout(make):
    if make == "GymEnv":
        base = GymEnv("SeqGen-v0", task="oracle-hmm", max_length=L, mask_in_observation=True)
    else:
        base = GymWrapper(SeqGenEnv(task="oracle-hmm", max_length=L, mask_in_observation=True))
    env = TransformedEnv(base, ActionMask())
    check_env_specs(env)
    torch.manual_seed(0)
    td = env.rollout(200, break_when_any_done=False)
    length, next_length, change, done, action = check_rollout(td, 200)
    assert next_length.tolist() == (length + change).tolist()  # every step, the ending ones included
    assert (length[1:][done[:-1]] == 0).all()  # the step after an end starts a new (empty) episode


@pytest.mark.slow
def test_vector_env_same_step_specs_and_masked_random_rollout():
    """SAME_STEP works with TorchRL 0.14.1, with the workarounds and limits written here (DISABLED has none)."""
    # validate_actions=False: GymWrapper draws one unmasked random step while it builds its info reader
    # (before ActionMask applies); categorical_action_encoding: TorchRL zero-fills the final observation
    # of envs that did not end, and zeros are no valid one-hot for the Discrete keys
    venv = gym.make_vec(
        "SeqGen-v0",
        num_envs=8,
        task="oracle-hmm",
        max_length=L,
        autoreset_mode="SameStep",
        mask_in_observation=True,
        validate_actions=False,
    )
    env = TransformedEnv(GymWrapper(venv, categorical_action_encoding=True), ActionMask())
    # the rollout before check_env_specs: TorchRL's VecGymEnvTransform turns a full reset() that follows a step
    # where only some envs ended into a partial one (the other envs keep their last observation)
    torch.manual_seed(0)
    td = env.rollout(200, break_when_any_done=False)
    length, next_length, change, done, action = check_rollout(td, 200, (8,))
    assert next_length[~done].tolist() == (length + change)[~done].tolist()
    # at the steps that ended, TorchRL 0.14.1 reads the final observation of a Dict space as zeros (it looks the
    # keys up in info["final_info"], not info["final_obs"]), so ("next", "length") is not checked there
    assert (length[:, 1:][done[:, :-1]] == 0).all()  # the restarted envs: the start state
    check_env_specs(env)


def test_vector_env_disabled_gives_true_final_observations():
    venv = gym.make_vec(
        "SeqGen-v0", num_envs=8, task="oracle-hmm", max_length=L, autoreset_mode="Disabled", mask_in_observation=True
    )  # validation on: an illegal action would raise
    env = TransformedEnv(GymWrapper(venv), ActionMask())
    check_env_specs(env)
    torch.manual_seed(0)
    td = env.rollout(200, break_when_any_done=False)
    length, next_length, change, done, action = check_rollout(td, 200, (8,))
    assert next_length.tolist() == (length + change).tolist()  # final observations included
    assert (length[:, 1:][done[:, :-1]] == 0).all()  # TorchRL resets the ended envs through reset_mask
