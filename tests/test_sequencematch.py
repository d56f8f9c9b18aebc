"""Tests for agents/sequencematch.py: every loss term against hand-computed numbers,
the absorbing-state tail, backspace handling, and imitation on a tabular MDP."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from agents.sequencematch import (
    SequenceMatchConfig,
    TrajectoryBatch,
    absorbing_tail,
    absorbing_values,
    discount_weights,
    implicit_rewards,
    phi_chi2,
    phi_js,
    phi_kl,
    sequencematch_loss,
    soft_values,
)

PAD, BOS, EOS, BS = 0, 1, 2, 3
X, Y = 5, 6  # ordinary tokens
V = 7

# ----------------------------------------------------------------------------
# Hand-made logits: every row is log(p) + v, so V(state) = v and
# Q(state, a) = log p[a] + v exactly. All numbers below are worked by hand.

P_ROOT = [0.05, 0.05, 0.2, 0.1, 0.1, 0.3, 0.2]  # state ""
P_X = [0.05, 0.05, 0.4, 0.1, 0.1, 0.2, 0.1]  # state "x"
P_Y = [0.05, 0.05, 0.1, 0.3, 0.1, 0.3, 0.1]  # state "y"
P_UNIF = [1 / 7] * 7
GARBAGE = [1e4, -1e4, 3e3, 0.0, 7.0, -5.0, 1e3]  # at pad positions: must be ignored


def _row(p, v):
    return [math.log(x) + v for x in p]


def hand_batches():
    """Data: [bos x eos] (terminated), [bos y x] (truncated); model: [bos y bs eos]."""
    data = TrajectoryBatch(
        tokens=torch.tensor([[BOS, X, EOS, PAD], [BOS, Y, X, PAD]]),
        is_action=torch.tensor([[False, True, True, False], [False, True, True, False]]),
        terminated=torch.tensor([True, False]),
    )
    logits_data = torch.tensor(
        [
            [_row(P_ROOT, 1.0), _row(P_X, 2.0), _row(P_UNIF, 0.5), GARBAGE],  # V: 1, 2, V_abs = 0.5
            [_row(P_ROOT, 1.0), _row(P_Y, -1.0), _row(P_UNIF, 3.0), GARBAGE],  # V: 1, -1, 3
        ],
        dtype=torch.float32,
    )
    model = TrajectoryBatch.from_actions([[Y, BS, EOS]])
    # after the backspace the state is "" again: the policy outputs the root's logits (V = 1)
    logits_model = torch.tensor(
        [[_row(P_ROOT, 1.0), _row(P_Y, -1.0), _row(P_ROOT, 1.0), _row(P_UNIF, 2.0)]],  # V_abs = 2
        dtype=torch.float32,
    )
    return logits_data, data, logits_model, model


G = 0.9
L = math.log
# implicit rewards r = Q(u, a) - γ V(u') by hand
R_D0 = [L(0.3) + 1.0 - G * 2.0, L(0.4) + 2.0 - G * 0.5]  # x in "", eos in "x"
R_D1 = [L(0.2) + 1.0 - G * (-1.0), L(0.3) - 1.0 - G * 3.0]  # y in "", x in "y"
R_M0 = [L(0.2) + 1.0 - G * (-1.0), L(0.3) - 1.0 - G * 1.0, L(0.2) + 1.0 - G * 2.0]  # y, bs, eos


def test_soft_values_and_weights():
    logits_data, data, _, _ = hand_batches()
    v = soft_values(logits_data)
    assert v.dtype == torch.float32 and v.shape == (2, 4)
    torch.testing.assert_close(v[:, :3], torch.tensor([[1.0, 2.0, 0.5], [1.0, -1.0, 3.0]]))
    w = discount_weights(data, G)
    torch.testing.assert_close(w, torch.tensor([[0, 1, 0.9, 0], [0, 1, 0.9, 0]]))
    torch.testing.assert_close(absorbing_values(logits_data, data), torch.tensor([0.5, 3.0]))


def test_implicit_rewards_hand_values():
    logits_data, data, logits_model, model = hand_batches()
    r, mask = implicit_rewards(logits_data, data, G)
    assert torch.equal(mask, data.is_action)
    expected = torch.tensor([[0.0, *R_D0, 0.0], [0.0, *R_D1, 0.0]])
    torch.testing.assert_close(r, expected)
    # numbers written out: log .3 - 0.8, log .4 + 1.55
    torch.testing.assert_close(r[0, 1:3], torch.tensor([-2.0039728, 0.6337093]))


def test_backspace_uses_shorter_prefix_value():
    _, _, logits_model, model = hand_batches()
    r, _ = implicit_rewards(logits_model, model, G)
    # bs taken in "y" (Q = log .3 - 1) leads to "" whose V = 1: r = log .3 - 1.9
    assert r[0, 2].item() == pytest.approx(math.log(0.3) - 1.9, abs=1e-5)
    assert r[0, 2].item() == pytest.approx(-3.1039728, abs=1e-5)
    # using V("y") = -1 (the longer prefix) or V_abs = 2 would give these instead
    assert abs(r[0, 2].item() - (math.log(0.3) - 1.0 + 0.9)) > 1.0
    assert abs(r[0, 2].item() - (math.log(0.3) - 1.0 - 1.8)) > 0.5
    torch.testing.assert_close(r[0, 1:4], torch.tensor(R_M0))


def test_chi2_loss_terms_hand_computed():
    logits_data, data, logits_model, model = hand_batches()
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5)  # 1/(4α) = 1
    loss, m = sequencematch_loss(logits_data, data, logits_model, model, cfg)

    wsum = lambda r: sum(G**t * x for t, x in enumerate(r))  # noqa: E731
    wsum2 = lambda r: sum(G**t * x * x for t, x in enumerate(r))  # noqa: E731
    reward_data = -(wsum(R_D0) + wsum(R_D1)) / 2
    chi2_penalty = (wsum2(R_D0) + wsum2(R_D1)) / 2 + wsum2(R_M0)
    # value term per sequence, by hand: [1 - .9*2 + .9*(2 - .9*.5), (1 + .9) + .9*(-1 - .9*3),
    # (1 + .9) + .9*(1 - .9*(-1)... )] -- written via the telescoped form V0 - γ^N V_N:
    value = ((1 - 0.81 * 0.5) + (1 - 0.81 * 3.0) + (1 - 0.729 * 2.0)) / 3
    assert value == pytest.approx((0.595 - 1.43 - 0.458) / 3)
    # absorbing tails: γ^N/(1-γ)·f with r_abs = (1-γ)V_abs; data row 0: N=2, V_abs=.5; model: N=3, V_abs=2
    tail_r_data = (8.1 * 0.05 + 0) / 2
    tail_r2 = (8.1 * 0.05**2 + 0) / 2 + 7.29 * 0.2**2
    tail_value = (8.1 * 0.05 + 0 + 7.29 * 0.2) / 3
    terminal = -tail_r_data + tail_r2 + tail_value
    bc = (-L(0.3) - L(0.4) - L(0.2) - L(0.3)) / 4
    total = reward_data + chi2_penalty + value + terminal + 0.5 * bc

    assert m["loss/reward_data"] == pytest.approx(reward_data, abs=1e-5)
    assert m["loss/reward_data"] == pytest.approx(2.7783239, abs=1e-5)
    assert m["loss/chi2_penalty"] == pytest.approx(chi2_penalty, abs=1e-4)
    assert m["loss/value"] == pytest.approx(value, abs=1e-5)
    assert m["loss/terminal"] == pytest.approx(terminal, abs=1e-5)
    assert m["loss/bc"] == pytest.approx(bc, abs=1e-5)
    assert m["loss/total"] == pytest.approx(total, abs=1e-4)
    assert loss.item() == pytest.approx(total, abs=1e-4)
    assert loss.dim() == 0
    assert m["reward/data_mean"] == pytest.approx((sum(R_D0) + sum(R_D1)) / 4, abs=1e-5)
    assert m["reward/model_mean"] == pytest.approx(sum(R_M0) / 3, abs=1e-5)
    assert m["value/v0"] == pytest.approx(1.0, abs=1e-6)


def test_bc_mask_selects_the_imitated_actions():
    logits_data, data, logits_model, model = hand_batches()
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5)
    bc_mask = data.is_action.clone()
    bc_mask[1, 2] = False  # e.g. an injected wrong token: not imitated
    _, m = sequencematch_loss(logits_data, data, logits_model, model, cfg, bc_mask=bc_mask)
    _, m_all = sequencematch_loss(logits_data, data, logits_model, model, cfg)
    assert m["loss/bc"] == pytest.approx((-L(0.3) - L(0.4) - L(0.2)) / 3, abs=1e-5)
    assert m["loss/reward_data"] == pytest.approx(m_all["loss/reward_data"], abs=1e-6)
    with pytest.raises(ValueError, match="bc_mask"):
        sequencematch_loss(logits_data, data, logits_model, model, cfg, bc_mask=torch.ones_like(bc_mask))


def test_variants_reward_mask_alpha_model_convex_mix_and_token_normalisation():
    """The hypothesis variants of SequenceMatchConfig, each against the hand-computed terms above."""
    logits_data, data, logits_model, model = hand_batches()
    wsum = lambda r: sum(G**t * x for t, x in enumerate(r))  # noqa: E731
    wsum2 = lambda r: sum(G**t * x * x for t, x in enumerate(r))  # noqa: E731
    base = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5)
    _, m = sequencematch_loss(logits_data, data, logits_model, model, base)

    # H1: the action at [1, 2] (x in "y") leaves the data reward term only
    reward_mask = data.is_action.clone()
    reward_mask[1, 2] = False
    _, m1 = sequencematch_loss(logits_data, data, logits_model, model, base, reward_mask=reward_mask)
    assert m1["loss/reward_data"] == pytest.approx(-(wsum(R_D0) + R_D1[0]) / 2, abs=1e-5)
    for k in ("loss/chi2_penalty", "loss/value", "loss/terminal", "loss/bc"):
        assert m1[k] == pytest.approx(m[k], abs=1e-6), k

    # H2b: α on model samples only: 1/(4·1) = 0.25 on the model's r² (data keeps 1/(4·0.25) = 1)
    cfg = SequenceMatchConfig(alpha=0.25, alpha_model=1.0, gamma=G, eta=0.5)
    _, m2 = sequencematch_loss(logits_data, data, logits_model, model, cfg)
    tail_r2_data, tail_r2_model = 8.1 * 0.05**2 / 2, 7.29 * 0.2**2
    assert m2["loss/chi2_penalty"] == pytest.approx((wsum2(R_D0) + wsum2(R_D1)) / 2 + 0.25 * wsum2(R_M0), abs=1e-4)
    assert m2["loss/terminal"] - m["loss/terminal"] == pytest.approx(-0.75 * tail_r2_model, abs=1e-5)
    assert tail_r2_data > 0

    # H3: (1 - η)·BC + η·SM
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.25, mix="convex")
    loss3, m3 = sequencematch_loss(logits_data, data, logits_model, model, cfg)
    assert loss3.item() == pytest.approx(0.75 * m["loss/bc"] + 0.25 * m["loss/sm"], abs=1e-4)
    assert m["loss/total"] == pytest.approx(m["loss/sm"] + 0.5 * m["loss/bc"], abs=1e-4)

    # H6: SM terms divided by the mean number of data actions (2 here)
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5, normalize="token")
    loss6, m6 = sequencematch_loss(logits_data, data, logits_model, model, cfg)
    assert m6["loss/sm"] == pytest.approx(m["loss/sm"] / 2, abs=1e-5)
    assert loss6.item() == pytest.approx(m["loss/sm"] / 2 + 0.5 * m["loss/bc"], abs=1e-4)


def test_value_term_plus_tail_telescopes_to_v0():
    """IQ-Learn's identity: for a terminated episode Σ w (V(u_i) - γV(u_{i+1})) + tail = V(s_0)."""
    logits_data, data, logits_model, model = hand_batches()
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.0)
    # data row 0 and the model row are terminated, both have V(s_0) = 1
    one = TrajectoryBatch(data.tokens[:1], data.is_action[:1], data.terminated[:1])
    _, m = sequencematch_loss(logits_data[:1], one, logits_model, model, cfg)
    tail_r, tail_r2 = 8.1 * 0.05, 8.1 * 0.05**2 + 7.29 * 0.2**2
    assert m["loss/value"] + m["loss/terminal"] + tail_r - tail_r2 == pytest.approx(1.0, abs=1e-5)


def test_loss_is_gamma_weighted_bc_when_penalty_vanishes():
    """With α → ∞ and model = data, reward + value + terminal = E_data[Σ γ^t (-log π(a_t|s_t))]."""
    gen = torch.Generator().manual_seed(3)
    batch = TrajectoryBatch.from_actions(
        [[X, Y, BS, EOS], [Y, Y, X], [X, BS, Y, BS, X, EOS]], prompts=[[Y], [], [X, X]]
    )
    logits = torch.randn(*batch.tokens.shape, V, generator=gen) * 2
    cfg = SequenceMatchConfig(alpha=1e12, gamma=0.95, eta=0.0)
    loss, m = sequencematch_loss(logits, batch, logits, batch, cfg)
    logp = torch.log_softmax(logits.double(), -1).numpy()
    expected = []
    for b in range(3):
        idx = batch.is_action[b].nonzero().squeeze(1).tolist()
        expected.append(sum(-(0.95**t) * logp[b, i - 1, batch.tokens[b, i]] for t, i in enumerate(idx)))
    assert loss.item() == pytest.approx(np.mean(expected), abs=1e-4)
    assert m["loss/chi2_penalty"] == pytest.approx(0.0, abs=1e-9)


def test_absorbing_tail_closed_form_and_long_sum():
    gamma = 0.998
    f = torch.tensor([0.7, -1.3, 2.0], dtype=torch.float64)
    n = torch.tensor([0, 5, 40])
    tail = absorbing_tail(f, n, gamma)
    closed = np.array([0.998**0 / 0.002 * 0.7, 0.998**5 / 0.002 * -1.3, 0.998**40 / 0.002 * 2.0])
    np.testing.assert_allclose(tail.numpy(), closed, rtol=1e-12)
    by_hand = [350.0, -1.3 * 0.998**5 * 500, 2.0 * 0.998**40 * 500]  # 1/(1-γ) = 500
    np.testing.assert_allclose(tail.numpy(), by_hand, rtol=1e-12)
    steps = np.arange(20000)
    explicit = [fi * np.sum(gamma ** (ni + steps)) for fi, ni in zip(f.tolist(), n.tolist())]
    np.testing.assert_allclose(tail.numpy(), explicit, rtol=1e-9)


def test_phi_functions():
    x = torch.tensor([-3.0, -0.5, 0.0, 0.4, 2.0], dtype=torch.float64)
    xn = x.numpy()
    np.testing.assert_allclose(phi_chi2(x, 0.5).numpy(), xn - xn**2 / 2.0)
    np.testing.assert_allclose(phi_kl(x).numpy(), -np.exp(-xn - 1))
    # f-GAN JS: log(2 - exp(-y)) at y = softplus(x) - log 2
    y = np.log1p(np.exp(xn)) - np.log(2)
    np.testing.assert_allclose(phi_js(x).numpy(), np.log(2 - np.exp(-y)), rtol=1e-12)
    assert phi_js(torch.tensor(0.0)).item() == pytest.approx(0.0, abs=1e-7)
    assert torch.isfinite(phi_js(torch.tensor([-500.0, 500.0]))).all()


@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_kl_js_losses_evaluate_and_differ_from_chi2(divergence):
    logits_data, data, logits_model, model = hand_batches()
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5, divergence=divergence)
    loss, m = sequencematch_loss(logits_data, data, logits_model, model, cfg)
    if divergence == "kl":
        phi_np = lambda r: -math.exp(-r - 1)  # noqa: E731
    else:
        phi_np = lambda r: math.log(2 - math.exp(-(math.log1p(math.exp(r)) - math.log(2))))  # noqa: E731
    wphi = lambda r: sum(G**t * phi_np(x) for t, x in enumerate(r))  # noqa: E731
    reward_data = -(wphi(R_D0) + wphi(R_D1)) / 2
    terminal = -(8.1 * phi_np(0.05)) / 2 + (8.1 * 0.05 + 7.29 * 0.2) / 3
    assert m["loss/reward_data"] == pytest.approx(reward_data, abs=1e-5)
    assert m["loss/chi2_penalty"] == 0.0
    assert m["loss/terminal"] == pytest.approx(terminal, abs=1e-5)
    assert torch.isfinite(loss)
    chi2_loss, _ = sequencematch_loss(
        logits_data, data, logits_model, model, SequenceMatchConfig(alpha=0.25, gamma=G, eta=0.5)
    )
    assert abs(loss.item() - chi2_loss.item()) > 0.1


def test_gradients_flow_to_both_batches():
    logits_data, data, logits_model, model = hand_batches()
    logits_data.requires_grad_(True)
    logits_model.requires_grad_(True)
    loss, _ = sequencematch_loss(logits_data, data, logits_model, model, SequenceMatchConfig(gamma=G))
    loss.backward()
    assert logits_model.grad.abs().sum() > 0 and logits_data.grad.abs().sum() > 0
    # pad positions and the logits after the last state get no gradient
    assert torch.all(logits_data.grad[:, 3] == 0)
    assert torch.isfinite(logits_data.grad).all()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(gamma=1.0), "gamma"),
        (dict(gamma=0.0), "gamma"),
        (dict(eta=-0.1), "eta"),
        (dict(divergence="tv"), "'tv'"),
        (dict(alpha_model=0.0), "alpha_model"),
        (dict(mix="sum"), "mix must be 'add' or 'convex', got 'sum'"),
        (dict(mix="convex", eta=2.0), r"eta must be in \[0, 1\] with mix='convex'"),
        (dict(normalize="batch"), "normalize must be"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequenceMatchConfig(**kwargs)


def test_bad_batches_raise():
    ok = dict(tokens=torch.tensor([[BOS, X, EOS]]), terminated=torch.tensor([True]))
    with pytest.raises(ValueError, match="index 0"):
        TrajectoryBatch(is_action=torch.tensor([[True, True, True]]), **ok)
    with pytest.raises(ValueError, match="contiguous"):
        TrajectoryBatch(
            torch.tensor([[BOS, X, Y, EOS]]), torch.tensor([[False, True, False, True]]), torch.tensor([True])
        )
    two_actions = torch.tensor([[False, True, True]])
    with pytest.raises(ValueError, match="terminated"):
        TrajectoryBatch(torch.tensor([[BOS, X, Y]]), two_actions, torch.tensor([True]))
    with pytest.raises(ValueError, match="terminated"):
        TrajectoryBatch(torch.tensor([[BOS, X, EOS]]), two_actions, torch.tensor([False]))
    with pytest.raises(ValueError, match="eos"):
        TrajectoryBatch.from_actions([[X, EOS, Y]])
    with pytest.raises(ValueError, match="no action"):
        TrajectoryBatch.from_actions([[X], []])
    logits_data, data, logits_model, model = hand_batches()
    with pytest.raises(ValueError, match="logits"):
        sequencematch_loss(logits_data[:, :3], data, logits_model, model, SequenceMatchConfig())
    with pytest.raises(ValueError, match="vocabulary"):
        sequencematch_loss(logits_data, data, logits_model[..., :5], model, SequenceMatchConfig())


# ----------------------------------------------------------------------------
# Tabular MDP: states = prefixes over {x, y} of length <= 3, plus the absorbing
# state after eos. Actions x, y (not at length 3), eos, backspace (not at "").


PREFIXES = [p for n in range(4) for p in itertools.product((X, Y), repeat=n)]
STATE_ID = {p: i for i, p in enumerate(PREFIXES)}
N_STATES = len(PREFIXES)  # 15 transient states
ABSORBING = N_STATES


def _tables():
    nxt = torch.arange(N_STATES + 1)[:, None].repeat(1, V)  # illegal/pad actions: stay
    legal = torch.zeros(N_STATES + 1, V, dtype=torch.bool)
    for p, s in STATE_ID.items():
        if len(p) < 3:
            for a in (X, Y):
                nxt[s, a], legal[s, a] = STATE_ID[p + (a,)], True
        nxt[s, EOS], legal[s, EOS] = ABSORBING, True
        if p:
            nxt[s, BS], legal[s, BS] = STATE_ID[p[:-1]], True
    legal[ABSORBING, EOS] = True  # the absorbing state's self-loop
    return nxt, torch.where(legal, 0.0, float("-inf"))


NEXT, ILLEGAL = _tables()


def expert_policy() -> torch.Tensor:
    """π_E[s, a]: never backspaces; stops with prob 0/.3/.5/1 at length 0/1/2/3."""
    pi = torch.zeros(N_STATES + 1, V, dtype=torch.float64)
    for p, s in STATE_ID.items():
        stop = [0.0, 0.3, 0.5, 1.0][len(p)]
        px = 0.6 if not p else (0.7 if p[-1] == X else 0.4)
        pi[s, EOS], pi[s, X], pi[s, Y] = stop, (1 - stop) * px, (1 - stop) * (1 - px)
    pi[ABSORBING, EOS] = 1.0
    return pi


def occupancy(pi: torch.Tensor, gamma: float) -> torch.Tensor:
    """Exact normalised occupancy measure ρ(s, a) ∝ π(a|s) Σ_t γ^t P(s_t = s) over transient states."""
    trans = torch.zeros(N_STATES, N_STATES, dtype=torch.float64)
    for s in range(N_STATES):
        for a in range(V):
            if pi[s, a] > 0 and NEXT[s, a] < N_STATES:
                trans[s, NEXT[s, a]] += pi[s, a]
    start = torch.zeros(N_STATES, dtype=torch.float64)
    start[STATE_ID[()]] = 1.0
    visits = torch.linalg.solve(torch.eye(N_STATES, dtype=torch.float64) - gamma * trans.T, start)
    rho = visits[:, None] * pi[:N_STATES]
    return rho / rho.sum()


def tv_distance(pi1, pi2, gamma) -> float:
    return 0.5 * (occupancy(pi1, gamma) - occupancy(pi2, gamma)).abs().sum().item()


def sample_trajectories(pi, n, max_steps, gen) -> TrajectoryBatch:
    """Batched ancestral sampling; episodes without eos after max_steps are truncated."""
    state = torch.full((n,), STATE_ID[()])
    tokens = torch.full((n, max_steps + 1), PAD)
    tokens[:, 0] = BOS
    alive = torch.ones(n, dtype=torch.bool)
    for t in range(max_steps):
        a = torch.multinomial(pi[state].float(), 1, generator=gen).squeeze(1)
        tokens[:, t + 1] = torch.where(alive, a, PAD)
        state = torch.where(alive, NEXT[state, a], state)
        alive = alive & (a != EOS)
    mask = tokens != PAD
    mask[:, 0] = False
    return TrajectoryBatch(tokens, mask, ~alive)


def tabular_logits(table: torch.Tensor, batch: TrajectoryBatch) -> torch.Tensor:
    """Per-position logits: index i holds the table row of the state after tokens[:, :i+1]."""
    state = torch.zeros_like(batch.tokens)
    state[:, 0] = STATE_ID[()]
    for i in range(1, batch.tokens.shape[1]):
        step = NEXT[state[:, i - 1], batch.tokens[:, i]]
        state[:, i] = torch.where(batch.is_action[:, i], step, state[:, i - 1])
    return table[state] + ILLEGAL[state]


def test_tabular_backspace_reward_uses_parent_value():
    table = torch.randn(N_STATES + 1, V, generator=torch.Generator().manual_seed(0))
    batch = TrajectoryBatch.from_actions([[X, Y, BS, BS, Y, EOS]])
    r, _ = implicit_rewards(tabular_logits(table, batch), batch, 0.9)
    v = torch.logsumexp(table + ILLEGAL, -1)
    s_x, s_xy = STATE_ID[(X,)], STATE_ID[(X, Y)]
    assert r[0, 3].item() == pytest.approx((table[s_xy, BS] - 0.9 * v[s_x]).item(), abs=1e-5)
    assert r[0, 4].item() == pytest.approx((table[s_x, BS] - 0.9 * v[STATE_ID[()]]).item(), abs=1e-5)


@pytest.mark.slow
def test_tabular_mdp_imitation_matches_expert_occupancy():
    """Alternate model sampling and gradient steps; the occupancy TV to the expert must drop."""
    gen = torch.Generator().manual_seed(0)
    gamma = 0.998
    pi_expert = expert_policy()
    data = sample_trajectories(pi_expert, 1000, 10, gen)
    table = torch.zeros(N_STATES + 1, V, requires_grad=True)  # uniform initial policy
    cfg = SequenceMatchConfig(alpha=10.0, gamma=gamma, eta=0.0)

    def policy():
        return torch.softmax(table.detach().double() + ILLEGAL.double(), -1)

    tv_start = tv_distance(policy(), pi_expert, gamma)
    assert occupancy(policy(), gamma)[:, BS].sum() > 0.15
    for _ in range(150):
        model = sample_trajectories(policy(), 256, 10, gen)
        logits_data, logits_model = tabular_logits(table, data), tabular_logits(table, model)
        loss, _ = sequencematch_loss(logits_data, data, logits_model, model, cfg)
        (grad,) = torch.autograd.grad(loss, table)
        assert torch.isfinite(grad).all()
        with torch.no_grad():
            table -= 2.0 * grad  # plain gradient descent
    tv_end = tv_distance(policy(), pi_expert, gamma)
    assert tv_start > 0.3
    assert tv_end < 0.06
    # the expert never backspaces; the uniform start spends 0.18 of its occupancy on backspace
    assert occupancy(policy(), gamma)[:, BS].sum() < 0.03
