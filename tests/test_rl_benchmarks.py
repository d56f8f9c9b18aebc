"""The measurements of the RL benchmarks (benchmarks/grpo_backspace.py, used by benchmarks/ppo_validity.py too):
backspace after a deleted token / an error counted by hand, the measurement on a tiny policy, the paired rows."""

import math
from types import SimpleNamespace

import torch

from agents.policies.transformer import PolicyConfig, TransformerPolicy
from benchmarks.grpo_backspace import backspace_counts, comparisons, measure
from seqenv.tasks import make_task

IDS = SimpleNamespace(backspace=1, eos=2)


def _decode(ids):
    return "".join(chr(ord("a") + i - 3) for i in ids)  # 3 -> "a", 4 -> "b", ...


def test_backspace_counts_by_hand():
    # episode 0: a b [bs] c eos -> final "ac"; states with text: "a" (kept, next b), "ab" (del, next bs),
    #   "a" (kept, next c), "ac" (kept, next eos)
    # episode 1: a [bs] b eos -> final "b"; states: "a" (del, next bs), "b" (kept, next eos)
    # episode 2: a b eos -> final "ab"; states: "a" (kept), "ab" (kept); no backspace
    actions = [[3, 4, 1, 5, 2], [3, 1, 4, 2], [3, 4, 2]]
    finals = ["ac", "b", "ab"]
    c = backspace_counts(actions, finals, None, _decode, IDS)
    assert (c["del_n"], c["del_bs"], c["kept_n"], c["kept_bs"]) == (2, 2, 3 + 1 + 2, 0)
    assert c["err_n"] == c["ok_n"] == 0
    # against reference answers "ac", "a", "ab": episode 0's "ab" is an error (then bs), its other 3 states
    # correct; episode 1's "a" is correct (then bs: a needless delete) and "b" an error (then eos); episode 2's
    # 2 states are correct
    c = backspace_counts(actions, finals, ["ac", "a", "ab"], _decode, IDS)
    assert (c["err_n"], c["err_bs"], c["ok_n"], c["ok_bs"]) == (2, 1, 3 + 1 + 2, 1)


def test_measure_on_a_tiny_policy_and_the_paired_rows():
    task = make_task("python-lines")
    torch.manual_seed(0)
    policy = TransformerPolicy(
        PolicyConfig(
            vocab_size=task.tokenizer.vocab_size, block_size=task.max_length + 1, n_layer=1, n_head=2, n_embd=16
        )
    ).eval()
    m = measure(policy, policy, task, 8, seed=0)
    assert abs(m["kl_to_init"]) < 1e-4  # π = π0: the log-ratio is 0 on every action (float32 sums of ~L terms)
    assert 0 <= m["validity"] <= 1 and m["lengths"]["all"][0] == 8 and math.isnan(m["bs_after_error"])
    masked = measure(policy, policy, task, 8, seed=0, allow_backspace=False)
    assert masked["backspace_rate"] == 0 and masked["deleted_states"] == 0  # nothing is ever deleted
    rows = {
        "start": [{"validity": 0.5, "kl_to_init": 0.0, "mean_length": 30.0}] * 3,
        "grpo_backspace": [{"validity": v, "kl_to_init": 1.0, "mean_length": 20.0} for v in (0.6, 0.7, 0.8)],
    }
    lines = comparisons(rows, [0, 1, 2])
    # differences 0.1, 0.2, 0.3: mean 0.2, sd 0.1, half-width t(2) 4.303 * 0.1 / sqrt 3 = 0.248
    assert "| grpo_backspace − start | validity | +0.200 [-0.048, +0.448] | no difference detected at n = 3 |" in lines
