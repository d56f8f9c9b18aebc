import pytest
import torch
from tiny import make_tiny_policy

from agents.common.checkpoint import (
    CheckpointError,
    check_task_compatible,
    load_checkpoint,
    load_policy,
    save_checkpoint,
)
from agents.common.demos import DemoSampler
from agents.common.trajectory import collate, wrong_token_mask
from seqenv.tasks import make_task

BS, EOS = 3, 2


def test_collate_layout():
    b = collate([[5, 6, EOS], [7, BS, 8]], prompts=[[], [9]])
    assert b.tokens.tolist() == [[1, 5, 6, EOS, 0], [1, 9, 7, BS, 8]]
    assert b.is_action.tolist() == [[False, True, True, True, False], [False, False, True, True, True]]
    assert b.terminated.tolist() == [True, False]
    with pytest.raises(ValueError, match="more than width=3"):
        collate([[5, 6, EOS]], width=3)
    with pytest.raises(ValueError, match="at least one action"):
        collate([[]])


def test_wrong_token_mask_replays_backspaces():
    b = collate([[5, 6, BS, 7, EOS], [5, 6, BS, BS, 8, EOS], [BS, 5, EOS]], prompts=[[], [], [9]])
    m = wrong_token_mask(b).tolist()
    assert m[0] == [False, False, True, False, False, False, False]  # 6 deleted
    assert m[1] == [False, True, True, False, False, False, False]  # 6 then 5 deleted
    assert m[2] == [False, False, False, False, False, False, False]  # backspace on empty generation: no-op


def test_demo_sampler_reproducible():
    task = make_task("oracle-hmm")
    a = DemoSampler(task, generator=torch.Generator().manual_seed(3)).sample(4)
    b = DemoSampler(task, generator=torch.Generator().manual_seed(3)).sample(4)
    assert a == b and all(s[-1] == EOS and EOS not in s[:-1] for s in a.actions)
    assert a.prompts == [[]] * 4 and len(a) == 4  # an unconditional task: empty prompts


@pytest.mark.slow
def test_checkpoint_atomic_round_trip_and_errors(tmp_path):
    task = make_task("oracle-hmm")
    state = {
        "agent": "mle",
        "task": task.spec(),
        "policy": {"family": "transformer", "config": {"block_size": 26}},
        "model": {"w": torch.ones(2)},
    }
    path = tmp_path / "run" / "checkpoint.pt"
    save_checkpoint(state, path)
    back = load_checkpoint(path)
    assert back["agent"] == "mle" and torch.equal(back["model"]["w"], torch.ones(2))
    assert list(path.parent.iterdir()) == [path]  # no temp file left behind
    check_task_compatible(back, task)
    with pytest.raises(CheckpointError, match="different tokenizer than task 'python-lines'"):
        check_task_compatible(back, make_task("python-lines"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    torch.save({"format": "other"}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a seqenv checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_v1_checkpoint_still_loads_and_names_the_format(tmp_path):
    task = make_task("oracle-hmm")
    policy = make_tiny_policy(task, n_embd=16)
    old = {
        "format": "seqenv-checkpoint-v1",
        "agent": "mle",
        "task": task.spec(),
        "policy_config": policy.config.to_dict(),
        "model": policy.state_dict(),
    }
    torch.save(old, tmp_path / "v1.pt")  # written the way the v1 code wrote it
    loaded, _, state = load_policy(tmp_path / "v1.pt")
    assert state["policy"] == {"family": "transformer", "config": policy.config.to_dict()}
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), policy.state_dict().values()))
    torch.save({**old, "format": "seqenv-checkpoint-v0"}, tmp_path / "v0.pt")
    with pytest.raises(CheckpointError, match="format 'seqenv-checkpoint-v0', expected 'seqenv-checkpoint-v2'"):
        load_policy(tmp_path / "v0.pt")
