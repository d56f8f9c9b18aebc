"""Tests for agents/policies/transformer.py: backspace layout, one-pass logits, KV-cache decoding."""

import json
import random

import pytest
import torch
from tolerances import policy_atol

from agents.policies.transformer import KVCache, PolicyConfig, TransformerPolicy, backspace_layout

PAD, BOS, EOS, BS = 0, 1, 2, 3
V = 12  # ordinary tokens are 4..11 here (eos and unk included among them is fine)


def small_model(block_size: int = 16, seed: int = 0) -> TransformerPolicy:
    torch.manual_seed(seed)
    config = PolicyConfig(vocab_size=V, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return TransformerPolicy(config).eval()


def atol_for(model: TransformerPolicy, ref: torch.Tensor) -> float:
    """Tolerance for the same logits computed in another operation order (mask path, KV cache, per state):
    the float32 rounding bound of the model's reduction chain at block_size positions, scale = max |logit|
    (tests/tolerances.py)."""
    return policy_atol(model.config, model.config.block_size, ref.abs().max().item())


def reduce(trajectory: list[int]) -> list[int]:
    """Apply backspaces: the state after consuming the whole list (pads ignored)."""
    state = []
    for tok in trajectory:
        if tok == BS:
            state.pop()
        elif tok != PAD:
            state.append(tok)
    return state


def random_trajectory(rng: random.Random, n_actions: int, p_backspace: float) -> list[int]:
    row, depth = [BOS], 1
    for _ in range(n_actions):
        if depth > 1 and rng.random() < p_backspace:
            row.append(BS)
            depth -= 1
        else:
            row.append(rng.randrange(4, V))
            depth += 1
    return row


def pad_rows(rows: list[list[int]]) -> torch.Tensor:
    T = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (T - len(r)) for r in rows])


# ---------------------------------------------------------------- config


def test_config_roundtrip_and_defaults():
    config = PolicyConfig(vocab_size=V, block_size=16)
    assert (config.n_layer, config.n_head, config.n_embd, config.dropout, config.bias) == (4, 4, 128, 0.0, True)
    assert (config.pad_id, config.bos_id, config.backspace_id) == (0, 1, 3)
    d = json.loads(json.dumps(config.to_dict()))
    assert PolicyConfig.from_dict(d) == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(n_layer=0), "n_layer"),
        (dict(block_size=-1), "block_size"),
        (dict(dropout=1.0), "dropout"),
        (dict(backspace_id=V), "backspace_id"),
        (dict(bos_id=0), "distinct"),
    ],
)
def test_config_rejects_bad_values(kwargs, match):
    base = dict(vocab_size=V, block_size=16)
    with pytest.raises(ValueError, match=match):
        PolicyConfig(**{**base, **kwargs})


def test_config_from_dict_rejects_unknown_key():
    with pytest.raises(ValueError, match="n_embed"):
        PolicyConfig.from_dict(dict(vocab_size=V, block_size=16, n_embed=32))


def test_num_parameters_counts_tied_embedding_once():
    model = small_model()
    assert model.lm_head.weight is model.wte.weight
    C, L, S = 32, 2, 16
    per_block = 2 * C + (C * 3 * C + 3 * C) + (C * C + C) + 2 * C + (C * 4 * C + 4 * C) + (4 * C * C + C)
    assert per_block == 12704
    assert model.num_parameters() == V * C + S * C + L * per_block + 2 * C == 26368


# ---------------------------------------------------------------- layout


def test_backspace_layout_hand_written():
    x, y, z, w = 5, 6, 7, 8
    tokens = torch.tensor(
        [
            [BOS, x, y, BS, z, BS, BS, w, PAD, PAD],
            [BOS, 9, BS, 10, 11, 4, BS, BS, 5, PAD],
        ]
    )
    input_ids, position_ids, mask = backspace_layout(tokens, backspace_id=BS, pad_id=PAD)
    assert input_ids.tolist() == [
        [BOS, x, y, x, z, x, BOS, w, PAD, PAD],
        [BOS, 9, BOS, 10, 11, 4, 11, 10, 5, PAD],
    ]
    assert position_ids.tolist() == [
        [0, 1, 2, 1, 2, 1, 0, 1, 0, 0],
        [0, 1, 0, 1, 2, 3, 2, 1, 2, 0],
    ]
    expected_attends = [
        [[0], [0, 1], [0, 1, 2], [0, 3], [0, 1, 4], [0, 5], [6], [0, 7], [8], [9]],
        [[0], [0, 1], [2], [0, 3], [0, 3, 4], [0, 3, 4, 5], [0, 3, 6], [0, 7], [0, 3, 8], [9]],
    ]
    for b in range(2):
        for t in range(10):
            attended = mask[b, t].nonzero().flatten().tolist()
            assert attended == expected_attends[b][t], (b, t)
    assert mask.dtype == torch.bool and mask.shape == (2, 10, 10)


def test_backspace_layout_rejects_pop_of_bos():
    tokens = torch.tensor([[BOS, 5, BS, 6, PAD], [BOS, 5, BS, BS, 6]])
    with pytest.raises(ValueError, match="row 1, position 3"):
        backspace_layout(tokens, BS, PAD)
    with pytest.raises(ValueError, match="row 0, position 0"):
        backspace_layout(torch.tensor([[BS, 5]]), BS, PAD)


def test_backspace_layout_rejects_pad_in_middle():
    with pytest.raises(ValueError, match="row 0 has pad .* at position 2"):
        backspace_layout(torch.tensor([[BOS, 5, PAD, 6]]), BS, PAD)


# ---------------------------------------------------------------- one-pass forward


def test_one_pass_logits_equal_per_state_logits():
    model = small_model(block_size=16)
    rng = random.Random(0)
    rows = [
        # goes back to the empty state (bos only) twice, then continues
        [BOS, 5, 6, BS, BS, 7, BS, 8, 9, 10, BS, 4],
        # a prompt-like prefix, deep stack, long run of backspaces
        [BOS, 4, 5, 6, 7, 8, 9, BS, BS, BS, BS, BS, BS, 11, 11],
    ]
    rows += [random_trajectory(rng, rng.randrange(5, 24), 0.45) for _ in range(4)]
    tokens = pad_rows(rows)  # right-padded, T = 25
    assert (tokens == BS).sum() >= 20
    with torch.no_grad():
        logits = model(tokens)
        n_checked = n_empty = 0
        for b, row in enumerate(rows):
            for i in range(len(row)):
                state = reduce(row[: i + 1])
                n_empty += row[i] == BS and state == [BOS]
                ref = model(torch.tensor([state]))[0, -1]
                torch.testing.assert_close(logits[b, i], ref, atol=atol_for(model, ref), rtol=0)
                n_checked += 1
    assert n_checked == sum(len(r) for r in rows)
    assert n_empty >= 2


def test_backspace_logits_equal_logits_of_new_top():
    model = small_model()
    tokens = torch.tensor([[BOS, 5, 6, 7, BS, BS, 8]])
    with torch.no_grad():
        logits = model(tokens)
    torch.testing.assert_close(logits[0, 4], logits[0, 2], atol=atol_for(model, logits), rtol=0)
    torch.testing.assert_close(logits[0, 5], logits[0, 1], atol=atol_for(model, logits), rtol=0)
    assert (logits[0, 6] - logits[0, 3]).abs().max() > 1e-3  # different states differ


def test_fast_path_equals_mask_path_with_padding():
    model = small_model()
    rows = [[BOS, 5, 6, 7, 8, 9], [BOS, 4], [BOS, 11, 10, 9]]
    tokens = pad_rows(rows)
    with torch.no_grad():
        fast = model(tokens)
        masked = model(tokens, fast_path=False)
    for b, row in enumerate(rows):
        n = len(row)
        torch.testing.assert_close(fast[b, :n], masked[b, :n], atol=atol_for(model, masked), rtol=0)


def test_trajectory_longer_than_block_size_is_fine_if_states_fit():
    model = small_model(block_size=4)
    tokens = torch.tensor([[BOS, 5, 6, 7, BS, BS, BS, 8, 9]])  # T = 9, longest state 4
    with torch.no_grad():
        logits = model(tokens)
        ref = model(torch.tensor([[BOS, 8, 9]]))
    torch.testing.assert_close(logits[0, -3:], ref[0], atol=atol_for(model, ref), rtol=0)


def test_forward_errors():
    model = small_model(block_size=4)
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        model(torch.tensor([[BOS, 5, 6, 7, 8]]))
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        model(torch.tensor([[BOS, 5, 6, 7, 8, BS]]))
    with pytest.raises(ValueError, match="row 0, position 3"):
        model(torch.tensor([[BOS, 5, BS, BS]]))
    with pytest.raises(ValueError, match=r"tokens\[0, 1\] = 12"):
        model(torch.tensor([[BOS, V]]))
    with pytest.raises(ValueError, match="pads are allowed only at the end"):
        model(torch.tensor([[BOS, PAD, 5]]))


# ---------------------------------------------------------------- KV-cache decoding


def test_kv_cache_decoding_equals_full_recomputation():
    model = small_model(block_size=8)
    prompts = [[BOS], [BOS, 4, 5, 6], [BOS, 7, 8]]
    tokens = pad_rows(prompts)
    lengths = torch.tensor([len(p) for p in prompts])
    cache, logits = model.prefill(tokens, lengths)
    assert isinstance(cache, KVCache)
    assert cache.k.shape == (2, 3, 2, 8, 16) and cache.logits.shape == (3, 8, V)

    def check(states, logits):
        for b, state in enumerate(states):
            with torch.no_grad():
                ref = model(torch.tensor([state]))[0, -1]
            torch.testing.assert_close(logits[b], ref, atol=atol_for(model, ref), rtol=0)
        assert cache.lengths.tolist() == [len(s) for s in states]

    states = [list(p) for p in prompts]
    check(states, logits)
    # (action per row, active per row); row 1 returns to bos-only twice, row 2 fills block_size twice
    schedule = [
        ([5, BS, 9], [1, 1, 1]),
        ([BS, BS, 10], [1, 1, 1]),
        ([6, BS, 11], [1, 1, 0]),  # row 1 -> [bos]
        ([7, 4, 11], [1, 1, 1]),
        ([BS, BS, 4], [1, 1, 1]),  # row 1 -> [bos]
        ([BS, 9, 5], [0, 1, 1]),  # row 2 -> 8 tokens
        ([8, 10, BS], [1, 0, 1]),
        ([9, 5, 6], [1, 1, 1]),  # row 2 -> 8 tokens
        ([BS, 6, BS], [1, 1, 1]),
        ([10, BS, 7], [1, 1, 1]),  # row 2 -> 8 tokens
    ]
    n_pop = n_push = 0
    for actions, active in schedule:
        active_t = torch.tensor(active, dtype=torch.bool)
        before = [(cache.k[:, b].clone(), cache.v[:, b].clone(), cache.logits[b].clone()) for b in range(3)]
        logits = model.decode_step(cache, torch.tensor(actions), active_t)
        for b, (a, on) in enumerate(zip(actions, active)):
            if not on:
                assert torch.equal(cache.k[:, b], before[b][0])
                assert torch.equal(cache.v[:, b], before[b][1])
                assert torch.equal(cache.logits[b], before[b][2])
            elif a == BS:
                states[b].pop()
                n_pop += 1
            else:
                states[b].append(a)
                n_push += 1
        check(states, logits)
    assert states == [[BOS, 6, 8, 10], [BOS, 9, 5], [BOS, 7, 8, 9, 10, 11, 4, 7]]
    assert (n_pop, n_push) == (10, 17)


def test_decode_step_errors_leave_cache_unchanged():
    model = small_model(block_size=3)
    cache, _ = model.prefill(torch.tensor([[BOS, 5, 6], [BOS, 0, 0]]), torch.tensor([3, 1]))
    snapshot = (cache.k.clone(), cache.lengths.clone(), cache.logits.clone())
    with pytest.raises(ValueError, match="row 0: push would exceed block_size=3"):
        model.decode_step(cache, torch.tensor([7, 7]))
    with pytest.raises(ValueError, match="row 1: backspace would delete bos"):
        model.decode_step(cache, torch.tensor([BS, BS]))
    with pytest.raises(ValueError, match="row 1: action id outside"):
        model.decode_step(cache, torch.tensor([BS, V]))
    assert torch.equal(cache.k, snapshot[0]) and torch.equal(cache.lengths, snapshot[1])
    assert torch.equal(cache.logits, snapshot[2])
    # inactive rows are not checked: an overflow on an inactive row is fine
    logits = model.decode_step(cache, torch.tensor([7, 7]), torch.tensor([False, True]))
    assert cache.lengths.tolist() == [3, 2]
    with torch.no_grad():
        ref = model(torch.tensor([[BOS, 5, 6]]))[0, -1]
        torch.testing.assert_close(logits[0], ref, atol=atol_for(model, ref), rtol=0)


def test_prefill_errors():
    model = small_model(block_size=4)
    with pytest.raises(ValueError, match="exceeds block_size=4"):
        model.prefill(torch.tensor([[BOS, 5, 6, 7, 8]]), torch.tensor([5]))
    with pytest.raises(ValueError, match="lengths must be in"):
        model.prefill(torch.tensor([[BOS, 5]]), torch.tensor([0]))
    with pytest.raises(ValueError, match="must not contain backspace"):
        model.prefill(torch.tensor([[BOS, 5, BS]]), torch.tensor([3]))
    # a backspace after the state's end is ignored
    cache, logits = model.prefill(torch.tensor([[BOS, 5, BS]]), torch.tensor([2]))
    with torch.no_grad():
        ref = model(torch.tensor([[BOS, 5]]))[0, -1]
        torch.testing.assert_close(logits[0], ref, atol=atol_for(model, ref), rtol=0)
