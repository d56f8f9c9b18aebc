"""agents/common/trajectory.py: the one batch type, validated once at construction."""

import pytest
import torch

from agents.common.trajectory import TrajectoryBatch, sequence_batch

PAD, BOS, EOS, BS = 0, 1, 2, 3
X, Y = 5, 6

TOKENS = torch.tensor([[BOS, X, Y, EOS], [BOS, X, PAD, PAD]])
IS_ACTION = torch.tensor([[False, True, True, True], [False, True, False, False]])
TERMINATED = torch.tensor([True, False])


def test_a_valid_batch_and_its_indices():
    batch = TrajectoryBatch(TOKENS, IS_ACTION, TERMINATED)
    assert batch.num_actions.tolist() == [3, 1]
    assert batch.first_action_index().tolist() == [1, 1]
    assert batch.last_action_index().tolist() == [3, 1]


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(tokens=TOKENS.tolist()), "tokens must be a torch.Tensor, got list"),
        (dict(tokens=TOKENS.int()), r"tokens must be a LongTensor \[B, T\] with B >= 1, got torch.int32 \(2, 4\)"),
        (dict(tokens=TOKENS[0]), r"tokens must be a LongTensor \[B, T\] with B >= 1, got torch.int64 \(4,\)"),
        (
            dict(tokens=TOKENS[:0], is_action=IS_ACTION[:0], terminated=TERMINATED[:0]),
            r"with B >= 1, got torch.int64 \(0, 4\)",
        ),
        (dict(is_action=IS_ACTION.long()), r"is_action must be a BoolTensor of shape \(2, 4\), got torch.int64"),
        (
            dict(is_action=IS_ACTION[:, :3]),
            r"is_action must be a BoolTensor of shape \(2, 4\), got torch.bool \(2, 3\)",
        ),
        (dict(terminated=TERMINATED[:1]), r"terminated must be a BoolTensor of shape \(2,\), got torch.bool \(1,\)"),
        (dict(terminated=TERMINATED.float()), r"terminated must be a BoolTensor of shape \(2,\), got torch.float32"),
        (dict(terminated=torch.tensor([True, True])), r"row 1: terminated=True but its last action is 5"),
    ],
)
def test_bad_batches_raise_one_clear_error(change, match):
    args = dict(tokens=TOKENS, is_action=IS_ACTION, terminated=TERMINATED) | change
    with pytest.raises(ValueError, match=match):
        TrajectoryBatch(**args)


def test_check_logits():
    batch = TrajectoryBatch(TOKENS, IS_ACTION, TERMINATED)
    batch.check_logits(torch.zeros(2, 4, 7))  # V = 7 > the largest id (6): fine
    with pytest.raises(ValueError, match=r"logits must have shape \[2, 4, V\], got torch.float32 \(2, 3, 7\)"):
        batch.check_logits(torch.zeros(2, 3, 7))
    with pytest.raises(ValueError, match=r"logits must be a floating tensor \[B, T, V\]"):
        batch.check_logits(torch.zeros(2, 4, 7, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 6\) .* got range \[0, 6\]"):
        batch.check_logits(torch.zeros(2, 4, 6))


def test_of_sequences_layout_by_hand():
    # row 0: prompt [Y], sequence [X], terminated -> [bos, Y, X, eos]; scored: X and eos
    # row 1: no prompt, empty and truncated -> [bos, pad]; one scored pad so that the row is scored
    batch = TrajectoryBatch.of_sequences([[X], []], [True, False], prompts=[[Y], []])
    assert batch.tokens.tolist() == [[BOS, Y, X, EOS], [BOS, PAD, PAD, PAD]]
    assert batch.is_action.tolist() == [[False, False, True, True], [False, True, False, False]]
    assert batch.terminated.tolist() == [True, False]
    tokens, mask = sequence_batch([[X], []], [True, False], prompts=[[Y], []])
    assert torch.equal(tokens, batch.tokens) and torch.equal(mask, batch.is_action)
    with pytest.raises(ValueError, match="sequences is empty"):
        TrajectoryBatch.of_sequences([], [])
