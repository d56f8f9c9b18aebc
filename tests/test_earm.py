"""Tests for agents/earm.py (E-ARM, METHODS.md §2).

The model is a tabular AR model: one logit row per prefix, small enough to
enumerate every sequence, so expectations under the E-ARM EBM are exact.
"""

import math

import pytest
import torch

from agents.common.trajectory import TrajectoryBatch
from agents.earm import (
    EARMConfig,
    earm_loss,
    energy_rerank,
    energy_resample,
    importance_weights,
    joint_energy,
    prefix_log_prob,
    sequence_energy,
    token_energies,
)

PAD, BOS, EOS = 0, 1, 2
A, B = 5, 6  # the two ordinary tokens
V = 7
MAX_TOKENS = 2  # at most 2 ordinary tokens, then eos is forced
T = 1 + MAX_TOKENS + 1  # bos, x1, x2, eos

# tabular model: prefix (tuple of ordinary tokens) -> row of the logit table
PREFIXES = [(), (A,), (B,), (A, A), (A, B), (B, A), (B, B)]
PREFIX_ID = {p: i for i, p in enumerate(PREFIXES)}
SEQUENCES = [p + (EOS,) for p in PREFIXES]  # every complete sequence


def make_table(seed=0):
    """Logit table [7, V]: finite logits for A, B, eos; -inf for illegal ids; eos forced at length 2."""
    g = torch.Generator().manual_seed(seed)
    table = torch.full((len(PREFIXES), V), -math.inf, dtype=torch.float64)
    for p, i in PREFIX_ID.items():
        legal = [A, B, EOS] if len(p) < MAX_TOKENS else [EOS]
        table[i, legal] = torch.randn(len(legal), generator=g, dtype=torch.float64)
    return table


def tb(tokens, mask):
    """The TrajectoryBatch of sequences ``tokens`` [n, T] scored at ``mask`` [n, T] (terminated = ends in eos)."""
    last = tokens.gather(1, (mask.long().cumsum(1).argmax(1))[:, None]).squeeze(1)
    return TrajectoryBatch(tokens, mask, last == EOS)


def batch_from(seqs, table):
    """TrajectoryBatch [n, T] and logits [n, T, V] (gathered from `table`, keeps its grad)."""
    n = len(seqs)
    tokens = torch.full((n, T), PAD, dtype=torch.long)
    mask = torch.zeros(n, T, dtype=torch.bool)
    rows = torch.zeros(n, T, dtype=torch.long)  # prefix id whose logits sit at each position
    for b, s in enumerate(seqs):
        tokens[b, 0] = BOS
        tokens[b, 1 : 1 + len(s)] = torch.tensor(s)
        mask[b, 1 : 1 + len(s)] = True
        for t in range(len(s)):
            rows[b, t] = PREFIX_ID[tuple(s[:t])]
    return tb(tokens, mask), table[rows]


def sample_sequences(table, n, gen):
    """Ancestral samples from the tabular model, as tuples ending with eos."""
    probs = torch.softmax(table, dim=-1)
    seqs = []
    for _ in range(n):
        s = ()
        while True:
            x = int(torch.multinomial(probs[PREFIX_ID[s]], 1, generator=gen))
            if x == EOS:
                seqs.append(s + (EOS,))
                break
            s = s + (x,)
    return seqs


def sample_sequences_fast(table, n, gen):
    """Same distribution as sample_sequences, vectorised over n (for large n)."""
    probs = torch.softmax(table, dim=-1)
    out = [() for _ in range(n)]
    alive = list(range(n))
    for _ in range(MAX_TOKENS + 1):
        if not alive:
            break
        rows = torch.tensor([PREFIX_ID[out[b]] for b in alive])
        xs = torch.multinomial(probs[rows], 1, generator=gen).squeeze(1).tolist()
        still = []
        for b, x in zip(alive, xs):
            out[b] = out[b] + (x,)
            if x != EOS:
                still.append(b)
        alive = still
    return out


def log_cond(table, prefix, x):
    return torch.log_softmax(table[PREFIX_ID[prefix]], -1)[x]


def hand_energy(table, seq, k, n_grad):
    """E(x_≤k) = −log q̃(x_<k) − l(x_<k)[x_k], grads through the last n_grad conditionals only."""
    log_q = 0.0
    for j in range(1, k):  # conditionals p(x_j | x_<j), j < k
        term = log_cond(table, seq[: j - 1], seq[j - 1])
        log_q = log_q + (term if j >= k - n_grad else term.detach())
    return -log_q - table[PREFIX_ID[seq[: k - 1]], seq[k - 1]]


# ---------------------------------------------------------------------------
# config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lam": -0.1},
        {"lam": math.nan},
        {"lam": math.inf},
        {"lam": "0.1"},
        {"start_step": -1},
        {"start_step": 1.5},
        {"n_grad_conditionals": -1},
        {"n_grad_conditionals": True},
    ],
)
def test_config_rejects_bad_values(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        EARMConfig(**kwargs)


def test_config_defaults():
    cfg = EARMConfig()
    assert (cfg.lam, cfg.start_step, cfg.n_grad_conditionals) == (0.05, 0, 2)


# ---------------------------------------------------------------------------
# cross-entropy


def test_ce_hand_computed():
    # row 0 predicts [A, eos], row 1 predicts [eos]; V = 7
    tokens = torch.tensor([[BOS, A, EOS], [BOS, EOS, PAD]])
    mask = torch.tensor([[False, True, True], [False, True, False]])
    logits = torch.zeros(2, 3, V)
    logits[0, 0, A] = math.log(7.0)  # p(A) = 7 / (7 + 6) = 7/13
    logits[0, 1, EOS] = math.log(2.0)  # p(eos) = 2 / 8 = 1/4
    logits[1, 0, EOS] = math.log(3.0)  # p(eos) = 3 / 9 = 1/3
    logits[1, 1] = 100.0  # pad position: must be ignored
    expected = (-math.log(7 / 13) + math.log(4) + math.log(3)) / 3
    loss, m = earm_loss(logits, tb(tokens, mask), None, None, EARMConfig(start_step=1), step=0)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert m["loss/ce"] == pytest.approx(expected, rel=1e-6)
    assert m["loss/earm"] == 0.0
    # token energies: -logit of each predicted token, mean over the 3 tokens
    assert m["energy/data_mean"] == pytest.approx(-(math.log(7) + math.log(2) + math.log(3)) / 3, rel=1e-6)


# ---------------------------------------------------------------------------
# per-position quantities


def test_prefix_log_prob_and_joint_energy_values():
    table = make_table(1)
    seq = (A, B, EOS)
    batch, logits = batch_from([seq], table)
    lq = prefix_log_prob(logits, batch)[0]  # [T]: column k belongs to position k (column 0: bos)
    l1, l2 = log_cond(table, (), A).item(), log_cond(table, (A,), B).item()
    assert lq.tolist() == pytest.approx([0.0, 0.0, l1, l1 + l2])
    e = joint_energy(logits, batch)[0]
    expected = [0.0, -table[0, A], -l1 - table[PREFIX_ID[(A,)], B], -l1 - l2 - table[PREFIX_ID[(A, B)], EOS]]
    assert e.tolist() == pytest.approx([float(x) for x in expected])
    assert token_energies(logits, batch)[0].tolist() == pytest.approx(
        [0.0, -table[0, A].item(), -table[PREFIX_ID[(A,)], B].item(), -table[PREFIX_ID[(A, B)], EOS].item()]
    )


def test_importance_weights_alive_only():
    # 3 samples; at position 2 only samples 0 and 2 are alive
    logits = torch.zeros(3, 3, V)
    logits[0, 1, :] = torch.log(torch.full((V,), 1.0 / V))  # logsumexp = 0
    logits[2, 1, :] = torch.log(torch.full((V,), 3.0 / V))  # logsumexp = ln 3
    logits[1, 1, :] = 50.0  # dead: must not count
    mask = torch.tensor([[False, True, True], [False, True, False], [False, True, True]])
    tokens = torch.tensor([[BOS, A, EOS], [BOS, EOS, PAD], [BOS, A, EOS]])
    w = importance_weights(logits, tb(tokens, mask))
    assert w[:, 0].tolist() == [0.0] * 3  # bos: nothing predicted
    assert w[:, 1].tolist() == pytest.approx([1 / 3] * 3)  # equal logsumexp at position 1
    assert w[:, 2].tolist() == pytest.approx([0.25, 0.0, 0.75])


# ---------------------------------------------------------------------------
# negative phase: self-normalised IS converges to the exact EBM expectation


def exact_negative_phase_grad(table, c, n_grad):
    """Σ_k c_k E_{p_θ,k}[∂E(x_≤k)] by enumeration, p_θ,k(x_≤k) ∝ q̃(x_<k) exp(l(x_<k)[x_k])."""
    table = table.clone().requires_grad_(True)
    total = 0.0
    for k in range(1, MAX_TOKENS + 2):
        items = []  # (unnormalised weight, energy)
        for prefix in PREFIXES:
            if len(prefix) != k - 1:  # alive prefixes of length k-1 (no eos)
                continue
            log_q = sum((log_cond(table, prefix[:j], prefix[j]) for j in range(k - 1)), torch.tensor(0.0))
            for x in (A, B, EOS):
                logit = table[PREFIX_ID[prefix], x]
                if math.isinf(logit.item()):
                    continue
                items.append(((log_q + logit).exp().detach(), hand_energy(table, prefix + (x,), k, n_grad)))
        z = sum(w for w, _ in items)
        total = total + c[k - 1] * sum(w / z * e for w, e in items)
    (g,) = torch.autograd.grad(total, table)
    return g


def is_grad(table, data_seqs, sample_seqs, cfg):
    """Gradient of earm_loss wrt the logit table used for the samples only."""
    data, logits_d = batch_from(data_seqs, table.detach())
    table_s = table.clone().requires_grad_(True)
    samples, logits_s = batch_from(sample_seqs, table_s)
    loss, _ = earm_loss(logits_d, data, logits_s, samples, cfg, step=0)
    (g,) = torch.autograd.grad(loss, table_s)
    return g


def test_importance_sampling_converges_to_exact_expectation():
    table = make_table(3)
    cfg = EARMConfig(lam=1.0, n_grad_conditionals=1)
    data = [(A, B, EOS), (A, EOS)]  # N = 5 tokens; alive counts per k: 2, 2, 1
    c = [2 / 5, 2 / 5, 1 / 5]
    # the sample part of the loss is -λ Σ_k c_k Σ_i w̄_i E(x^i_≤k)
    exact = -cfg.lam * exact_negative_phase_grad(table, c, cfg.n_grad_conditionals)
    assert exact.abs().max() > 0.05  # the target is not trivially 0
    gen = torch.Generator().manual_seed(0)
    err_small = (is_grad(table, data, sample_sequences_fast(table, 50, gen), cfg) - exact).norm()
    err_large = (is_grad(table, data, sample_sequences_fast(table, 20000, gen), cfg) - exact).norm()
    assert err_large < 0.05 * exact.norm()  # MC error ~2.5% here; uniform weights give 44%
    assert err_large < err_small


def test_fast_sampler_matches_enumeration():
    # guards the test's own sampler: empirical sequence frequencies vs q(x)
    table = make_table(3)
    seqs = sample_sequences_fast(table, 20000, torch.Generator().manual_seed(1))
    for s in SEQUENCES:
        q = sum(log_cond(table, s[:j], s[j]) for j in range(len(s))).exp().item()
        assert seqs.count(s) / len(seqs) == pytest.approx(q, abs=0.015)
    slow = sample_sequences(table, 200, torch.Generator().manual_seed(2))
    assert all(s in SEQUENCES for s in slow)


# ---------------------------------------------------------------------------
# the surrogate's gradient is the Eq. 12 estimator


def test_surrogate_gradient_equals_eq12_estimator():
    torch.manual_seed(0)
    n_grad = 2
    cfg = EARMConfig(lam=0.3, n_grad_conditionals=n_grad)
    # data: lengths 5 and 2 (predicted tokens), T = 6
    tok_d = torch.tensor([[BOS, A, B, A, B, EOS], [BOS, B, EOS, PAD, PAD, PAD]])
    # samples: 3 sequences, shorter batch T = 5 (position 5 has no sample: skipped)
    tok_s = torch.tensor([[BOS, A, A, B, EOS], [BOS, EOS, PAD, PAD, PAD], [BOS, B, A, EOS, PAD]])
    mask_d, mask_s = tok_d.ne(PAD), tok_s.ne(PAD)
    mask_d[:, 0] = mask_s[:, 0] = False
    L_d = torch.randn(2, 6, V, dtype=torch.float64, requires_grad=True)
    L_s = torch.randn(3, 5, V, dtype=torch.float64, requires_grad=True)

    loss, _ = earm_loss(L_d, tb(tok_d, mask_d), L_s, tb(tok_s, mask_s), cfg, step=0)
    g_d, g_s = torch.autograd.grad(loss, [L_d, L_s])

    # by hand: energies of individual prefixes, their autograd gradients, Eq. 12
    def energy(L, tok, b, k):
        log_q = 0.0
        for j in range(1, k):
            term = torch.log_softmax(L[b, j - 1], -1)[tok[b, j]]
            log_q = log_q + (term if j >= k - n_grad else term.detach())
        return -log_q - L[b, k - 1, tok[b, k]]

    def grad_of(x):
        return torch.autograd.grad(x, [L_d, L_s], allow_unused=True, materialize_grads=True)

    N = int(mask_d.sum())
    ce = (
        -sum(torch.log_softmax(L_d[b, k - 1], -1)[tok_d[b, k]] for b in range(2) for k in range(1, 6) if mask_d[b, k])
        / N
    )
    hand_d, hand_s = grad_of(ce)
    g_ce = hand_d.clone()
    for k in range(1, 6):
        alive_d = [b for b in range(2) if mask_d[b, k]]
        alive_s = [i for i in range(3) if k < 5 and mask_s[i, k]]
        if not alive_d or not alive_s:
            continue
        c_k = len(alive_d) / N
        lse = torch.stack([torch.logsumexp(L_s[i, k - 1], -1) for i in alive_s]).detach()
        w = torch.softmax(lse, 0)
        for b in alive_d:  # + c_k E_data[∂E]
            gd, gs = grad_of(energy(L_d, tok_d, b, k))
            hand_d, hand_s = hand_d + cfg.lam * c_k / len(alive_d) * gd, hand_s + cfg.lam * c_k / len(alive_d) * gs
        for wi, i in zip(w, alive_s):  # − c_k Σ_i w̄_i ∂E(x^i)
            gd, gs = grad_of(energy(L_s, tok_s, i, k))
            hand_d, hand_s = hand_d - cfg.lam * c_k * wi * gd, hand_s - cfg.lam * c_k * wi * gs
    torch.testing.assert_close(g_d, hand_d)
    torch.testing.assert_close(g_s, hand_s)
    assert g_s.abs().sum() > 0 and (g_d - g_ce).abs().sum() > 0


# ---------------------------------------------------------------------------
# start_step


def _random_batches(seed=0):
    g = torch.Generator().manual_seed(seed)
    tok = torch.tensor([[BOS, A, B, EOS], [BOS, B, EOS, PAD]])
    mask = tok.ne(PAD)
    mask[:, 0] = False
    L_d = torch.randn(2, 4, V, generator=g).requires_grad_(True)
    L_s = torch.randn(2, 4, V, generator=g).requires_grad_(True)
    tok_s = torch.tensor([[BOS, A, EOS, PAD], [BOS, B, B, EOS]])
    mask_s = tok_s.ne(PAD)
    mask_s[:, 0] = False
    return L_d, tb(tok, mask), L_s, tb(tok_s, mask_s)


def test_start_step_pure_mle_before_and_earm_after():
    L_d, data, L_s, samples = _random_batches()
    tok, mask = data.tokens, data.is_action
    cfg = EARMConfig(lam=0.5, start_step=10)
    ce = torch.nn.functional.cross_entropy(L_d[:, :-1].reshape(-1, V), tok[:, 1:].reshape(-1), reduction="none")
    ce = (ce * mask[:, 1:].reshape(-1)).sum() / mask.sum()
    (g_ce,) = torch.autograd.grad(ce, L_d)

    # before start: CE exactly, with or without samples
    for sample_args in [(None, None), (L_s, samples)]:
        loss, m = earm_loss(L_d, data, *sample_args, cfg, step=9)
        (g,) = torch.autograd.grad(loss, L_d)
        torch.testing.assert_close(loss, ce)
        torch.testing.assert_close(g, g_ce)
        assert m["loss/earm"] == 0.0 and "earm/ess" not in m

    # from start on: E-ARM term present, different loss and gradient
    loss, m = earm_loss(L_d, data, L_s, samples, cfg, step=10)
    (g,) = torch.autograd.grad(loss, L_d)
    assert abs(loss.item() - ce.item()) > 1e-3
    assert (g - g_ce).abs().max() > 1e-3
    assert loss.item() == pytest.approx(m["loss/ce"] + 0.5 * m["loss/earm"], rel=1e-6)
    with pytest.raises(ValueError, match="start_step"):
        earm_loss(L_d, data, None, None, cfg, step=10)


# ---------------------------------------------------------------------------
# n_grad_conditionals


def test_joint_energy_gradient_window():
    # one sequence with 5 predicted tokens; energy at position 5 with n = 2
    tok = torch.tensor([[BOS, A, B, A, B, EOS]])
    mask = tok.ne(PAD)
    mask[:, 0] = False
    L = torch.randn(1, 6, V, requires_grad=True)
    e = joint_energy(L, tb(tok, mask), n_grad_conditionals=2)[0, 5]  # E(x_≤5)
    (g,) = torch.autograd.grad(e, L)
    per_row = g[0].abs().sum(-1)
    # log q̃(x_<5) sums p(x_1..x_4) (rows 0..3); only p(x_3), p(x_4) are in the window of 2
    assert per_row[:2].tolist() == [0.0, 0.0]
    assert per_row[2] > 0 and per_row[3] > 0
    # rows 2, 3: gradient of -log p(x_j|x_<j) is softmax - onehot
    p = torch.softmax(L.detach()[0], -1)
    for row in (2, 3):
        torch.testing.assert_close(g[0, row], p[row] - torch.nn.functional.one_hot(tok[0, row + 1], V).float())
    # row 4: only -l(x_<5)[x_5] -> one-hot -1 at eos
    expected_row4 = torch.zeros(V)
    expected_row4[EOS] = -1.0
    torch.testing.assert_close(g[0, 4], expected_row4)
    # value is independent of the window
    full = joint_energy(L, tb(tok, mask), n_grad_conditionals=None)[0, 5]
    assert e.item() == pytest.approx(full.item())


@pytest.mark.parametrize("n_grad", [0, 1])
def test_n_grad_conditionals_exact_gradient(n_grad):
    # data term only: a single data sequence, a single sample identical to it on other logits
    tok = torch.tensor([[BOS, A, B, EOS]])
    mask = tok.ne(PAD)
    mask[:, 0] = False
    L_d = torch.randn(1, 4, V, requires_grad=True)
    L_s = torch.randn(1, 4, V)  # no grad: isolates the data side
    cfg = EARMConfig(lam=1.0, n_grad_conditionals=n_grad)
    loss, _ = earm_loss(L_d, tb(tok, mask), L_s, tb(tok, mask), cfg, step=0)
    (g,) = torch.autograd.grad(loss, L_d)
    N = 3
    p = torch.softmax(L_d.detach()[0], -1)
    onehot = torch.nn.functional.one_hot(tok[0, 1:], V).float()  # targets of rows 0, 1, 2
    g_ce = (p[:3] - onehot) / N
    # positive phase (1/N) Σ_k E(x_≤k): every row gets -onehot from -l(x_<k)[x_k];
    # with n = 1, row t also gets -(onehot - p) from log q̃ at position t+2 (if t+2 <= 3)
    g_earm = -onehot / N
    if n_grad == 1:
        g_earm[:2] += -(onehot[:2] - p[:2]) / N
    torch.testing.assert_close(g[0, :3], g_ce + g_earm)
    assert g[0, 3].abs().max() == 0.0  # last row predicts nothing


# ---------------------------------------------------------------------------
# metrics


def test_ess_metric_hand_computed():
    # data: one sequence; samples: two, alive only at position 1 with logsumexp 0 and ln 3
    tok = torch.tensor([[BOS, EOS], [BOS, EOS]])
    mask = torch.tensor([[False, True], [False, True]])
    L_s = torch.zeros(2, 2, V)
    L_s[0, 0] = math.log(1 / V)
    L_s[1, 0] = math.log(3 / V)
    L_d = torch.zeros(1, 2, V)
    _, m = earm_loss(L_d, tb(tok[:1], mask[:1]), L_s, tb(tok, mask), EARMConfig(), step=0)
    # w = [1/4, 3/4]: ESS = 1 / (1/16 + 9/16) = 1.6, normalised by 2 alive samples
    assert m["earm/ess"] == pytest.approx(0.8)
    assert m["earm/ess_min"] == pytest.approx(0.8)
    # log-normalisers 0 and ln 3: std (ddof 1) ln3/sqrt(2), range ln 3
    assert m["earm/log_tilt_std"] == pytest.approx(math.log(3) / math.sqrt(2))
    assert m["earm/log_tilt_range"] == pytest.approx(math.log(3))
    assert m["energy/sample_mean"] == pytest.approx(-(math.log(1 / V) + math.log(3 / V)) / 2)
    # energy gap at the single position: E_data = -0, negative phase = Σ w_i (-l_i[eos])
    neg = 0.25 * -math.log(1 / V) + 0.75 * -math.log(3 / V)
    assert m["loss/earm"] == pytest.approx(0.0 - neg)


# ---------------------------------------------------------------------------
# inference: sequence energy and re-sampling


def test_sequence_energy_hand_computed():
    table = make_table(5)
    seqs = [(A, B, EOS), (EOS,), (B, EOS)]
    batch, logits = batch_from(seqs, table)
    e = sequence_energy(logits, batch)
    for b, s in enumerate(seqs):
        log_q_prefix = sum((log_cond(table, s[:j], s[j]) for j in range(len(s) - 1)), torch.tensor(0.0))
        expected = -log_q_prefix - table[PREFIX_ID[s[:-1]], EOS]
        assert e[b].item() == pytest.approx(expected.item())
        # same thing as -log q(x) - logsumexp l(x_<K)
        log_q = sum(log_cond(table, s[:j], s[j]) for j in range(len(s)))
        alt = -log_q - torch.logsumexp(table[PREFIX_ID[s[:-1]]], -1)
        assert e[b].item() == pytest.approx(alt.item())
        # and the last column of joint_energy
        assert e[b].item() == pytest.approx(joint_energy(logits, batch)[b, len(s)].item())


def test_energy_resample_greedy_and_sampling():
    energies = torch.tensor([[3.0, 1.0, 2.0], [0.5, 0.7, -1.0]])
    assert energy_resample(energies, greedy=True).tolist() == [1, 2]
    # sampling ∝ exp(-E / τ): E = [0, ln 3] -> probabilities 3/4, 1/4
    gen = torch.Generator().manual_seed(0)
    e = torch.tensor([[0.0, math.log(3.0)]]).expand(20000, 2)
    idx = energy_resample(e, gen)
    assert (idx == 0).float().mean().item() == pytest.approx(0.75, abs=0.015)
    # temperature 0.5 doubles the energies: probabilities 9/10, 1/10
    idx = energy_resample(e, gen, temperature=0.5)
    assert (idx == 0).float().mean().item() == pytest.approx(0.9, abs=0.01)
    # with a proposal: ∝ exp(-E) / q; q = [3/4, 1/4] cancels the 3:1 -> 1/2, 1/2
    log_q = torch.log(torch.tensor([[0.75, 0.25]])).expand(20000, 2)
    idx = energy_resample(e, gen, proposal_log_prob=log_q)
    assert (idx == 0).float().mean().item() == pytest.approx(0.5, abs=0.015)
    # +inf energy is never chosen
    idx = energy_resample(torch.tensor([[math.inf, 0.0]]).expand(100, 2), gen)
    assert idx.tolist() == [1] * 100


@pytest.mark.slow
def test_energy_rerank_targets_the_ebm():
    # SIR over K AR candidates picks x with probability -> exp(-E(x)) / Z = q(x) exp(lse_last(x)) / Z
    table = make_table(7)
    N, K = 400, 100
    cands = sample_sequences_fast(table, N * K, torch.Generator().manual_seed(3))
    batch, logits = batch_from(cands, table)
    choice, energies = energy_rerank(logits, batch, K, generator=torch.Generator().manual_seed(4))
    assert energies.shape == (N, K) and choice.shape == (N,)
    chosen = [cands[n * K + int(choice[n])] for n in range(N)]
    all_batch, log_all = batch_from(SEQUENCES, table)
    target = torch.softmax(-sequence_energy(log_all, all_batch), 0)
    for s, p in zip(SEQUENCES, target.tolist()):
        assert chosen.count(s) / N == pytest.approx(p, abs=0.06)
    # greedy: the minimum-energy candidate of each group
    choice_g, _ = energy_rerank(logits, batch, K, greedy=True)
    torch.testing.assert_close(choice_g, energies.argmin(1))


# ---------------------------------------------------------------------------
# bad input


def test_bad_inputs_raise():
    L_d, data, L_s, samples = _random_batches()
    tok, mask = data.tokens, data.is_action
    cfg = EARMConfig()
    bad_mask = mask.clone()
    bad_mask[0, 0] = True
    with pytest.raises(ValueError, match=r"is_action\[:, 0\]"):  # the batch type checks its layout, once
        tb(tok, bad_mask)
    with pytest.raises(ValueError, match="BoolTensor"):
        TrajectoryBatch(tok, mask.long(), data.terminated)
    with pytest.raises(ValueError, match="token ids"):
        earm_loss(L_d, tb(tok.clamp(max=V - 1) + 1, mask), L_s, samples, cfg, step=0)
    with pytest.raises(ValueError, match="logits"):
        earm_loss(L_d[:, :3], data, L_s, samples, cfg, step=0)
    with pytest.raises(ValueError, match="row 0 has no action"):
        TrajectoryBatch(tok, torch.zeros_like(mask), data.terminated)
    with pytest.raises(ValueError, match="step"):
        earm_loss(L_d, data, L_s, samples, cfg, step=-1)
    with pytest.raises(ValueError, match="EARMConfig"):
        earm_loss(L_d, data, L_s, samples, {"lam": 0.05}, step=0)
    with pytest.raises(ValueError, match="vocabulary size"):
        earm_loss(L_d, data, L_s[..., :6], tb(samples.tokens.clamp(max=5), samples.is_action), cfg, step=0)
    with pytest.raises(ValueError, match="N >= 1 rows and K >= 1"):
        energy_resample(torch.zeros(3, 0))
    with pytest.raises(ValueError, match=r"\[N, K\]"):
        energy_resample(torch.zeros(3))
    with pytest.raises(ValueError, match="temperature"):
        energy_resample(torch.zeros(2, 2), temperature=0.0)
    with pytest.raises(ValueError, match="NaN"):
        energy_resample(torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=r"rows \[0\]"):
        energy_resample(torch.tensor([[math.inf, math.inf]]))
    with pytest.raises(ValueError, match="proposal_log_prob"):
        energy_resample(torch.zeros(2, 2), proposal_log_prob=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="num_candidates"):
        energy_rerank(L_d, data, 3)
    with pytest.raises(ValueError, match="n_grad_conditionals"):
        joint_energy(L_d, data, n_grad_conditionals=-2)
