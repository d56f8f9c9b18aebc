"""Tests for agents/nce.py: NCE critics with a self-adapting noise distribution."""

import itertools
import math

import pytest
import torch
import torch.nn as nn

from agents.critic import CriticConfig, SequenceCritic
from agents.nce import (
    SnapshotNoise,
    binary_nce_loss,
    ranking_nce_loss,
    residual_nce_loss,
    self_adapting_nce_loss,
    sequence_log_prob,
)

PAD, BOS, EOS = 0, 1, 2
T_ = torch.tensor


# ---------------------------------------------------------------------------
# Losses on hand-made inputs
# ---------------------------------------------------------------------------


def test_binary_nce_loss_hand_computed():
    # c = 0.25, nu = 2 (log 2 = 0.693147)
    # h_data  = [-1 + 0.5 - 0.25 - log 2, 1 + 0.5 - 0.25 - log 2] = [-1.443147, 0.556853]
    # h_noise = [-2 + 0   - 0.25 - log 2]                         = [-2.943147]
    # -log σ(-1.443147) = log(1 + 2 e^0.75)  = log 5.234000 = 1.655176
    # -log σ(0.556853)  = log(1 + 2 e^-1.25) = log 1.573010 = 0.452991
    # -log(1 - σ(h_n))  = log(1 + e^-2.25 / 2) = log 1.052700 = 0.051358
    # L = (1.655176 + 0.452991) / 2 + 2 * 0.051358 = 1.054083 + 0.102716 = 1.156799
    loss, m = binary_nce_loss(
        energy_data=T_([1.0, -1.0]),
        energy_noise=T_([2.0]),
        energy_snapshot_data=T_([0.5, 0.5]),
        energy_snapshot_noise=T_([0.0]),
        c=T_(0.25),
        nu=2.0,
    )
    assert loss.item() == pytest.approx(1.156799, abs=1e-5)
    # data: h = -1.44 wrong, 0.56 right; noise: h = -2.94 right -> 2 of 3
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_data"] == pytest.approx(0.5)
    assert m["accuracy_noise"] == pytest.approx(1.0)
    assert m["energy_data"] == pytest.approx(0.0)
    assert m["energy_noise"] == pytest.approx(2.0)
    assert m["loss"] == pytest.approx(loss.item())


def test_binary_nce_gradient_wrt_c_and_snapshot_detached():
    # dL/dc = E_data[1 - σ(h)] - nu E_noise[σ(h)]; at h = 0 everywhere (all zero, c = 0, nu = 1): 1/2 - 1/2 = 0
    c = torch.zeros((), requires_grad=True)
    e_snap = torch.zeros(3, requires_grad=True)
    loss, _ = binary_nce_loss(torch.zeros(3), torch.zeros(3), e_snap, e_snap, c, 1.0)
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)  # -log(1/2) - log(1/2)
    loss.backward()
    assert c.grad.item() == pytest.approx(0.0, abs=1e-7)
    assert e_snap.grad is None  # the noise distribution is frozen


def test_binary_nce_weights_give_weighted_sum():
    # with weights [1, 0] the second data sample is ignored: only h = 0 counts -> log 2 + log 2
    loss, _ = binary_nce_loss(
        T_([0.0, 5.0]), T_([0.0]), T_([0.0, 0.0]), T_([0.0]), 0.0, 1.0, data_weights=T_([1.0, 0.0])
    )
    assert loss.item() == pytest.approx(2 * math.log(2), abs=1e-6)


def test_residual_nce_loss_hand_computed_and_matches_deng():
    # h = -E_psi - c - log nu; E_data = -1 -> h = 1, E_noise = 1 -> h = -1
    # L = -log σ(1) - log(1 - σ(-1)) = 2 log(1 + e^-1) = 0.626523
    loss, m = residual_nce_loss(T_([-1.0]), T_([1.0]), c=0.0, nu=1.0)
    assert loss.item() == pytest.approx(0.626523, abs=1e-6)
    assert m["accuracy"] == 1.0
    # Deng et al.'s classifier loss: -E_data[log σ(-E)] - E_LM[log σ(E)]
    e_data, e_noise = T_([0.3, -0.7]), T_([1.2, -0.1, 0.4])
    deng = -torch.nn.functional.logsigmoid(-e_data).mean() - torch.nn.functional.logsigmoid(e_noise).mean()
    ours, _ = residual_nce_loss(e_data, e_noise, 0.0, 1.0)
    assert ours.item() == pytest.approx(deng.item(), abs=1e-6)
    # equals binary NCE with an arbitrary shared policy term -log p_s added to both energies
    log_ps_d, log_ps_n = T_([-3.0, -1.5]), T_([-2.0, -4.0, -0.5])
    full, _ = binary_nce_loss(e_data - log_ps_d, e_noise - log_ps_n, -log_ps_d, -log_ps_n, 0.4, 3.0)
    res, _ = residual_nce_loss(e_data, e_noise, 0.4, 3.0)
    assert full.item() == pytest.approx(res.item(), abs=1e-6)


def test_ranking_nce_loss_hand_computed():
    # row 0: s - log q = [1 - (-1), 0 - (-2), 2 - (-0.5)] = [2, 2, 2.5]
    #   L0 = log(e^2 + e^2 + e^2.5) - 2 = log(2 + e^0.5) = 1.294377; data not strictly best
    # row 1: [3 - 0, 0 - 0, 1 - 0] = [3, 0, 1]: L1 = log(1 + e^-3 + e^-2) = 0.169846; data best
    loss, m = ranking_nce_loss(
        scores_data=T_([1.0, 3.0]),
        scores_noise=T_([[0.0, 2.0], [0.0, 1.0]]),
        log_q_data=T_([-1.0, 0.0]),
        log_q_noise=T_([[-2.0, -0.5], [0.0, 0.0]]),
    )
    l0 = math.log(2 + math.exp(0.5))
    l1 = math.log(1 + math.exp(-3) + math.exp(-2))
    assert l0 == pytest.approx(1.294377, abs=1e-6) and l1 == pytest.approx(0.169846, abs=1e-6)
    assert loss.item() == pytest.approx((1.294377 + 0.169846) / 2, abs=1e-5)
    assert m["accuracy"] == pytest.approx(0.5)


def test_self_adapting_nce_loss_hand_computed():
    # h_data  = log p_theta - log p_s = -1 - (-2) = 1  -> -log σ(1)  = log(1 + e^-1) = 0.313262
    # h_noise = -3 - (-1) = -2 -> -log(1 - σ(-2)) = log(1 + e^-2) = 0.126928
    loss, m = self_adapting_nce_loss(T_([-1.0]), T_([-3.0]), T_([-2.0]), T_([-1.0]), c=0.0, nu=1.0)
    assert loss.item() == pytest.approx(0.440190, abs=1e-6)
    assert m["energy_data"] == pytest.approx(1.0)  # mean NLL of data
    assert m["energy_noise"] == pytest.approx(3.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: binary_nce_loss(T_([0.0]), T_([0.0]), T_([0.0]), T_([0.0]), 0.0, 0.0),  # nu = 0
        lambda: binary_nce_loss(T_([0.0]), T_([0.0]), T_([0.0, 1.0]), T_([0.0]), 0.0, 1.0),  # shape
        lambda: binary_nce_loss(T_([[0.0]]), T_([0.0]), T_([[0.0]]), T_([0.0]), 0.0, 1.0),  # 2-D
        lambda: binary_nce_loss(T_([0.0]), T_([0.0]), T_([0.0]), T_([0.0]), T_([0.0, 1.0]), 1.0),  # c
        lambda: binary_nce_loss(torch.zeros(0), T_([0.0]), torch.zeros(0), T_([0.0]), 0.0, 1.0),  # empty
        lambda: binary_nce_loss(T_([0.0, 1.0]), T_([0.0]), T_([0.0, 1.0]), T_([0.0]), 0.0, 1.0, T_([0.7, 0.7])),
        lambda: ranking_nce_loss(T_([0.0]), torch.zeros(1, 0), T_([0.0]), torch.zeros(1, 0)),  # K = 0
        lambda: ranking_nce_loss(T_([0.0]), torch.zeros(2, 3), T_([0.0]), torch.zeros(2, 3)),  # B mismatch
        lambda: self_adapting_nce_loss(T_([0.0]), T_([0.0]), T_([0.0]), T_([0.0]), 0.0, -1.0),
    ],
)
def test_losses_reject_bad_input(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------------------
# sequence_log_prob
# ---------------------------------------------------------------------------


def test_sequence_log_prob_hand_computed():
    # V = 6 (pad, bos, eos, bs, unk, a=5). Row 0 = [bos, a, eos]; row 1 = [bos, eos, pad].
    logits = torch.zeros(2, 3, 6)
    logits[0, 0, 5] = math.log(3.0)  # after bos: softmax has 5 ones and one 3 -> p(a) = 3/8
    logits[0, 1, EOS] = math.log(5.0)  # after bos a: p(eos) = 5/10 = 1/2
    # row 1, after bos: all logits 0 -> p(eos) = 1/6
    logits[1, 2] = 100.0  # after eos: masked out, must not matter
    tokens = T_([[BOS, 5, EOS], [BOS, EOS, PAD]])
    mask = T_([[False, True, True], [False, True, False]])
    lp = sequence_log_prob(logits, tokens, mask)
    assert lp.tolist() == pytest.approx([math.log(3 / 8) + math.log(1 / 2), math.log(1 / 6)], abs=1e-6)
    with pytest.raises(ValueError):
        sequence_log_prob(logits, tokens, torch.ones(2, 3, dtype=torch.bool))  # column 0 predicted
    with pytest.raises(ValueError):
        sequence_log_prob(logits, tokens[:, :2], mask[:, :2])


# ---------------------------------------------------------------------------
# K = 1: self-adapting NCE gradient = 1/2 ML gradient (exact, by enumeration)
# ---------------------------------------------------------------------------

A, B_ = 5, 6  # the two ordinary tokens
V = 7
MAX_TOKENS = 2  # at most 2 ordinary tokens, then eos (sequence length <= 3 with eos)
PREFIXES = [p for n in range(MAX_TOKENS + 1) for p in itertools.product((A, B_), repeat=n)]
SEQS = list(PREFIXES)  # every prefix, followed by eos, is a complete sequence: 7 sequences


def _batch(seqs):
    T = MAX_TOKENS + 2
    tokens = torch.full((len(seqs), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(seqs), T, dtype=torch.bool)
    for i, s in enumerate(seqs):
        row = [BOS, *s, EOS]
        tokens[i, : len(row)] = T_(row)
        mask[i, 1 : len(row)] = True
    return tokens, mask


def _tabular_logits(table, seqs):
    """logits[b, k] = table[prefix index of tokens[b, 1:k+1]]; only legal actions unmasked."""
    T = MAX_TOKENS + 2
    rows = []
    for s in seqs:
        per_pos = []
        for k in range(T):
            prefix = tuple(s[:k]) if k <= len(s) else ()  # positions after eos: any row (masked)
            logit = table[PREFIXES.index(prefix)]
            legal = torch.full((V,), -math.inf, dtype=table.dtype)
            legal[EOS] = 0.0
            if len(prefix) < MAX_TOKENS:
                legal[A] = legal[B_] = 0.0
            per_pos.append(logit + legal)
        rows.append(torch.stack(per_pos))
    return torch.stack(rows)  # (N, T, V)


@pytest.mark.parametrize(
    "c, nu, factor",
    [
        (0.0, 1.0, 0.5),  # the METHODS.md case
        (-math.log(2.0), 2.0, 0.5),  # c + log nu = 0
        (0.0, 2.0, 2.0 / 3.0),  # factor nu / (1 + nu) at c = 0
    ],
)
def test_self_adapting_nce_k1_gradient_is_scaled_ml_gradient(c, nu, factor):
    g = torch.Generator().manual_seed(0)
    table = torch.randn(len(PREFIXES), V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens, mask = _batch(SEQS)
    logp = sequence_log_prob(_tabular_logits(table, SEQS), tokens, mask)  # (7,)
    assert logp.dtype == torch.float64
    assert logp.exp().sum().item() == pytest.approx(1.0, abs=1e-12)  # enumeration is complete
    p_data = T_([0.30, 0.05, 0.25, 0.10, 0.05, 0.15, 0.10], dtype=torch.float64)
    p_model = logp.detach().exp()  # noise = the model's own distribution, exactly

    # K = 1: snapshot = current parameters, detached; expectations as probability-weighted sums
    nce, _ = self_adapting_nce_loss(logp, logp, logp.detach(), logp.detach(), c, nu, p_data, p_model)
    mle = -(p_data * logp).sum()
    (g_nce,) = torch.autograd.grad(nce, table, retain_graph=True)
    (g_mle,) = torch.autograd.grad(mle, table)
    assert g_mle.abs().max() > 1e-2
    torch.testing.assert_close(g_nce, factor * g_mle, rtol=1e-9, atol=1e-12)


def test_self_adapting_nce_stale_snapshot_is_not_half_ml_gradient():
    # negative control: a snapshot different from theta breaks the identity
    g = torch.Generator().manual_seed(0)
    table = torch.randn(len(PREFIXES), V, generator=g, dtype=torch.float64, requires_grad=True)
    stale = table.detach() + torch.randn(table.shape, generator=g, dtype=torch.float64)
    tokens, mask = _batch(SEQS)
    logp = sequence_log_prob(_tabular_logits(table, SEQS), tokens, mask)
    logp_s = sequence_log_prob(_tabular_logits(stale, SEQS), tokens, mask)
    p_data = T_([0.30, 0.05, 0.25, 0.10, 0.05, 0.15, 0.10], dtype=torch.float64)
    nce, _ = self_adapting_nce_loss(logp, logp, logp_s, logp_s, 0.0, 1.0, p_data, logp_s.exp())
    (g_nce,) = torch.autograd.grad(nce, table, retain_graph=True)
    (g_mle,) = torch.autograd.grad(-(p_data * logp).sum(), table)
    assert not torch.allclose(g_nce, 0.5 * g_mle, atol=1e-4)


# ---------------------------------------------------------------------------
# SequenceCritic
# ---------------------------------------------------------------------------


def test_critic_config_roundtrip_and_validation():
    cfg = CriticConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=16)
    assert CriticConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["pooling"] == "mean"
    with pytest.raises(ValueError, match="unknown"):
        CriticConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="divisible"):
        CriticConfig(vocab_size=10, block_size=8, n_head=3, n_embd=16)
    with pytest.raises(ValueError, match="pooling"):
        CriticConfig(vocab_size=10, block_size=8, pooling="max")
    with pytest.raises(ValueError, match="vocab_size"):
        CriticConfig(vocab_size=0, block_size=8)


def test_critic_shapes_padding_invariance_and_bad_input():
    torch.manual_seed(0)
    critic = SequenceCritic(CriticConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16))
    tokens = T_([[BOS, 5, 6, EOS, PAD], [BOS, EOS, PAD, PAD, PAD]])
    mask = T_([[False, True, True, True, False], [False, True, False, False, False]])
    assert torch.equal(critic(tokens, mask), torch.zeros(2))  # zero-initialised head: residual model = policy
    nn.init.normal_(critic.head.weight)
    e_mask = critic(tokens, mask)
    e_len = critic(tokens, T_([4, 2]))
    assert e_mask.shape == (2,) and e_mask.dtype == torch.float32
    torch.testing.assert_close(e_mask, e_len)
    # more padding (and garbage in pad slots) does not change the energy
    padded = torch.cat([tokens, torch.full((2, 2), 7)], dim=1)
    torch.testing.assert_close(critic(padded, T_([4, 2])), e_len)
    assert e_mask[0] != e_mask[1]
    # "first" pooling reads only the bos position: every sequence's bos feature depends on its
    # valid tokens through attention, so padding is still irrelevant
    first = SequenceCritic(CriticConfig(vocab_size=8, block_size=8, n_layer=1, n_head=2, n_embd=16, pooling="first"))
    nn.init.normal_(first.head.weight)
    torch.testing.assert_close(first(padded, T_([4, 2])), first(tokens, mask))
    with pytest.raises(ValueError, match="block_size"):
        critic(torch.ones(1, 9, dtype=torch.long), T_([9]))
    with pytest.raises(ValueError, match="token ids"):
        critic(T_([[BOS, 8]]), T_([2]))
    with pytest.raises(ValueError, match="lengths"):
        critic(tokens, T_([0, 2]))
    with pytest.raises(ValueError, match="shape"):
        critic(tokens, mask[:, :3])


def _sample_markov(n, generator, repeat_prob):
    """Lengths uniform in 2..5; tokens in {5, 6, 7}; after the first, repeat the
    previous token w.p. repeat_prob, else a uniformly random other one."""
    lengths = torch.randint(2, 6, (n,), generator=generator)
    first = torch.randint(0, 3, (n,), generator=generator)
    toks = [first]
    for _ in range(4):
        repeat = torch.rand(n, generator=generator) < repeat_prob
        other = (toks[-1] + torch.randint(1, 3, (n,), generator=generator)) % 3
        toks.append(torch.where(repeat, toks[-1], other))
    body = torch.stack(toks, dim=1) + 5  # (n, 5)
    tokens = torch.full((n, 7), PAD, dtype=torch.long)
    tokens[:, 0] = BOS
    pos = torch.arange(5)[None]
    tokens[:, 1:6] = torch.where(pos < lengths[:, None], body, PAD)
    tokens[torch.arange(n), lengths + 1] = EOS
    return tokens, lengths + 2  # lengths incl. bos and eos


@pytest.mark.slow
def test_critic_learns_oracle_vs_noise_with_residual_nce():
    # data: tokens repeat w.p. 0.9; noise (the "policy"): w.p. 1/3, i.e. i.i.d. uniform.
    # Bayes accuracy (equal priors, lengths 2..5 uniform) is 0.852 by enumeration.
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    critic = SequenceCritic(CriticConfig(vocab_size=8, block_size=7, n_layer=1, n_head=2, n_embd=32))
    opt = torch.optim.Adam(critic.parameters(), lr=6e-3)  # 100 steps (was 250 at 3e-3): same property, 40 % of the time
    for _ in range(100):
        x_d, len_d = _sample_markov(64, g, 0.9)
        x_n, len_n = _sample_markov(64, g, 1 / 3)
        loss, _ = residual_nce_loss(critic(x_d, len_d), critic(x_n, len_n), critic.log_normalizer, 1.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    critic.eval()
    with torch.no_grad():
        x_d, len_d = _sample_markov(1000, g, 0.9)
        x_n, len_n = _sample_markov(1000, g, 1 / 3)
        _, m = residual_nce_loss(critic(x_d, len_d), critic(x_n, len_n), critic.log_normalizer, 1.0)
    assert m["accuracy"] > 0.72  # chance = 0.5, Bayes = 0.852
    assert m["energy_data"] < m["energy_noise"]


# ---------------------------------------------------------------------------
# SnapshotNoise
# ---------------------------------------------------------------------------


def test_snapshot_noise_refresh_schedule_and_freezing():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    snap = SnapshotNoise(refresh_every=3)
    refreshed, weight_at = [], {}
    for step in range(8):
        with torch.no_grad():
            model[0].weight.fill_(float(step))  # the policy changes every step
        weight_at[step] = float(step)
        if snap.maybe_refresh(model, step):
            refreshed.append(step)
        last = refreshed[-1]
        assert snap.module[0].weight.eq(weight_at[last]).all()  # frozen between refreshes
        assert snap.age(step) == step - last
    assert refreshed == [0, 3, 6]
    assert snap.last_refresh_step == 6
    assert not snap.module.training
    assert all(not p.requires_grad for p in snap.module.parameters())
    assert model[0].weight.requires_grad and model.training  # the policy is untouched
    # skipped steps: the schedule stays aligned to multiples of K
    assert snap.maybe_refresh(model, 8) is False
    assert snap.maybe_refresh(model, 10) is True and snap.last_refresh_step == 10
    assert snap.maybe_refresh(model, 11) is False


def test_snapshot_noise_k1_and_state_dict_roundtrip():
    model = nn.Linear(2, 2)
    snap = SnapshotNoise(1)
    assert [snap.maybe_refresh(model, s) for s in range(3)] == [True, True, True]
    with torch.no_grad():
        model.weight.fill_(7.0)
    state = snap.state_dict()
    restored = SnapshotNoise(5)
    restored.load_state_dict(state, model)
    assert restored.refresh_every == 1 and restored.last_refresh_step == 2
    torch.testing.assert_close(restored.module.weight, snap.module.weight)
    assert not restored.module.weight.eq(7.0).all()


def test_snapshot_noise_rejects_bad_input():
    for bad in (0, -1, 1.5, True, "3"):
        with pytest.raises(ValueError, match="refresh_every"):
            SnapshotNoise(bad)
    snap = SnapshotNoise(2)
    with pytest.raises(RuntimeError):
        _ = snap.module
    with pytest.raises(RuntimeError):
        snap.age(0)
    with pytest.raises(ValueError, match="step"):
        snap.maybe_refresh(nn.Linear(1, 1), -1)
    with pytest.raises(ValueError, match="nn.Module"):
        snap.maybe_refresh("not a module", 0)
    snap.maybe_refresh(nn.Linear(1, 1), 4)
    with pytest.raises(ValueError, match="earlier"):
        snap.maybe_refresh(nn.Linear(1, 1), 3)
