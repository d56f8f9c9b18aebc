"""Rollout through the vector env with the KV-cache policy, sampling, recovery probe."""

import pytest
import torch
from tiny import make_tiny_policy
from tolerances import policy_atol

from agents.common.evaluation import recovery
from agents.common.rollout import generate, make_vector_env, rollout, sample_actions
from agents.policies.transformer import PolicyConfig, TransformerPolicy
from seqenv.tasks import make_task
from seqenv.tokenizers import BACKSPACE_ID, EOS_ID, PAD_ID, apply_backspaces


def test_rollout_log_probs_match_one_pass_recomputation(tiny_task):
    """KV-cache generation (with backspaces) == one forward pass over the action history."""
    policy = make_tiny_policy(tiny_task, n_layer=2)
    venv = make_vector_env(tiny_task, 32, "cpu")
    res = rollout(policy, venv, seed=0, generator=torch.Generator().manual_seed(0), store_masks=True)
    acts = res.action_lists()
    assert sum(a.count(BACKSPACE_ID) for a in acts) > 5  # an untrained policy backspaces: the test covers it
    batch = res.to_batch()
    with torch.no_grad():
        logits = policy(batch.tokens)[:, :-1]  # logits of the state each action is taken in
    S = res.actions.shape[1]
    logits = logits[:, :S]
    masks = res.action_masks
    legal = masks.any(-1)  # steps the episode was running
    logp = logits.masked_fill(~masks, float("-inf")).log_softmax(-1)
    recomputed = logp.gather(-1, res.actions[..., None]).squeeze(-1)
    # another operation order (KV cache vs one pass): rounding bound of the forward + log-softmax (tests/tolerances.py)
    atol = policy_atol(policy.config, logits.shape[1], logits.abs().max().item(), extra_terms=logits.shape[-1])
    assert (recomputed[legal] - res.log_probs[legal]).abs().max() <= atol
    assert legal.sum(1).tolist() == res.num_actions.tolist()
    # the final states are the action histories with backspaces applied
    for a, s, term in zip(acts, res.sequences(), res.terminated.tolist()):
        assert apply_backspaces(a) == s
        assert (a[-1] == EOS_ID) == term


def test_rollout_is_deterministic_and_respects_lengths(tiny_task):
    policy = make_tiny_policy(tiny_task, n_layer=2)
    a = generate(policy, tiny_task, 40, batch_size=16, seed=3)
    b = generate(policy, tiny_task, 40, batch_size=16, seed=3)
    assert [r.action_lists() for r in a] == [r.action_lists() for r in b]
    assert sum(r.num_actions.shape[0] for r in a) == 40
    for r in a:
        assert (r.lengths <= tiny_task.max_length).all()
        assert (r.actions[torch.arange(r.actions.shape[1])[None] >= r.num_actions[:, None]] == PAD_ID).all()


def test_generate_with_prompts_is_a_rollout_of_each_batch_from_its_prompts():
    """generate(prompts=...) (what nce.sample_with_prompts was): batch j = one rollout of an env reset with
    seed + offset whose rows start from that batch's prompts, actions from one generator shared by the batches."""
    arith = make_task("arithmetic")
    policy = make_tiny_policy(arith, n_layer=2)
    prompts = arith.split_prompt_texts("test")[:5]
    got = generate(policy, arith, 5, prompts=prompts, batch_size=2, seed=7, allow_backspace=False)
    assert [r.tokens.shape[0] for r in got] == [2, 2, 1]
    assert [arith.tokenizer.decode(p) for r in got for p in r.prompts()] == prompts
    gen = torch.Generator().manual_seed(7)
    for r, offset in zip(got, (0, 2, 4)):
        venv = make_vector_env(arith, r.tokens.shape[0], "cpu")
        rows = prompts[offset : offset + r.tokens.shape[0]]
        venv.reset = lambda *, seed=None, options=None, _reset=venv.reset, rows=rows: _reset(
            seed=seed, options={"prompt": rows}
        )
        want = rollout(policy, venv, seed=7 + offset, generator=gen, allow_backspace=False)
        assert want.action_lists() == r.action_lists() and torch.equal(want.tokens, r.tokens)
    # no generator: one seeded with `seed` (backspace allowed here)
    again = generate(
        policy, arith, 5, prompts=prompts, batch_size=2, seed=7, generator=torch.Generator().manual_seed(7)
    )
    assert [r.action_lists() for r in again] == [
        r.action_lists() for r in generate(policy, arith, 5, prompts=prompts, batch_size=2, seed=7)
    ]
    with pytest.raises(ValueError, match="one prompt per sample"):
        generate(policy, arith, 4, prompts=prompts)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        generate(policy, arith, 5, batch_size=0)


def test_rollout_without_backspace_and_forced_actions(tiny_task):
    policy = make_tiny_policy(tiny_task, n_layer=2)
    venv = make_vector_env(tiny_task, 8, "cpu")
    res = rollout(policy, venv, seed=0, allow_backspace=False, generator=torch.Generator().manual_seed(1))
    assert all(BACKSPACE_ID not in a for a in res.action_lists())
    forced = torch.tensor([[5, 6, BACKSPACE_ID, 7]] * 8)
    counts = torch.tensor([4, 3, 2, 1, 0, 4, 4, 4])
    res = rollout(policy, venv, seed=0, generator=torch.Generator().manual_seed(1), forced_actions=(forced, counts))
    for a, c in zip(res.action_lists(), counts.tolist()):
        assert a[:c] == forced[0, :c].tolist()


def test_sample_actions_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a, lp = sample_actions(logits, mask, top_k=1, generator=g)
        assert a.tolist()[0] == 2 and lp[0].item() == 0.0
    a, lp = sample_actions(logits, mask, generator=g)
    assert mask[torch.arange(2), a].all()
    # top_p = 0.5 on row 0 keeps {2} (p = 0.665 >= 0.5); row 1 is uniform over {1,2,3}: keeps 2 of them
    seen = set()
    for _ in range(200):
        a, _ = sample_actions(logits, mask, top_p=0.5, generator=g)
        assert a[0].item() == 2
        seen.add(a[1].item())
    assert len(seen) == 2
    with pytest.raises(ValueError, match="temperature must be > 0, got 0"):
        sample_actions(logits, mask, temperature=0)
    with pytest.raises(ValueError, match="top_p must be in"):
        sample_actions(logits, mask, top_p=1.5)


class _Bias(TransformerPolicy):
    """A policy whose backspace logit is shifted by ``bias`` (on every path)."""

    bias = 0.0

    def forward(self, tokens, fast_path=True):
        return self._shift(super().forward(tokens, fast_path))

    def prefill(self, tokens, lengths):
        cache, logits = super().prefill(tokens, lengths)
        return cache, self._shift(logits)

    def decode_step(self, cache, actions, active=None):
        return self._shift(super().decode_step(cache, actions, active))

    def _shift(self, logits):
        logits = logits.clone()
        logits[..., BACKSPACE_ID] += self.bias
        return logits


def test_recovery_probe_extremes(tiny_task):
    cfg = PolicyConfig(
        vocab_size=tiny_task.tokenizer.vocab_size, block_size=tiny_task.max_length + 1, n_layer=1, n_head=1, n_embd=16
    )
    eager = _Bias(cfg)
    eager.bias = 100.0
    r = recovery(eager, tiny_task, num_samples=64)
    assert r["recovery_backspace"] == 1.0 and r["recovery_deleted"] > 0.8 and r["recovery_validity"] is None
    never = _Bias(cfg)
    never.bias = -100.0
    r = recovery(never, tiny_task, num_samples=64)
    assert r["recovery_backspace"] == 0.0 and r["recovery_deleted"] == 0.0


def test_rollout_without_kv_cache_gives_the_same_episodes(tiny_task):
    policy = make_tiny_policy(tiny_task, n_layer=2)
    venv = make_vector_env(tiny_task, 16, "cpu")
    a = rollout(policy, venv, seed=0, generator=torch.Generator().manual_seed(5))
    b = rollout(policy, venv, seed=0, generator=torch.Generator().manual_seed(5), use_kv_cache=False)
    assert a.action_lists() == b.action_lists()
    atol = policy_atol(
        policy.config, a.log_probs.shape[1], a.log_probs.abs().max().item(), extra_terms=tiny_task.tokenizer.vocab_size
    )  # log-prob scale bounds the logits' (tests/tolerances.py)
    assert (a.log_probs - b.log_probs).abs().max() <= atol
