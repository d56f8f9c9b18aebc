"""Tests for agents/common/resampling.py: SIR and the effective sample size."""

import math

import pytest
import torch

from agents.common.resampling import effective_sample_size, importance_resample

T_ = torch.tensor


def test_effective_sample_size_hand_computed():
    # w = [1, 1/2, 0] -> (1.5)^2 / 1.25 = 1.8 along the last dim; along dim 0 of the transposed the same
    lw = T_([[0.0, -math.log(2.0), -math.inf]])
    assert effective_sample_size(lw).item() == pytest.approx(1.8, abs=1e-6)
    assert effective_sample_size(lw.T, dim=0).item() == pytest.approx(1.8, abs=1e-6)
    assert effective_sample_size(T_([[5.0, 5.0, 5.0, 5.0]])).item() == pytest.approx(4.0)


def test_importance_resample_ess_hand_computed():
    # row 0: w = [1, 1/2] -> ESS = 1.5^2 / 1.25 = 1.8; row 1: equal weights -> ESS = C = 2;
    # row 2: one candidate has weight 0 -> ESS = 1 and it is never chosen
    energies = T_([[0.0, math.log(2.0)], [3.0, 3.0], [math.inf, 0.0]])
    idx, ess = importance_resample(-energies, torch.Generator().manual_seed(0))
    assert ess.tolist() == pytest.approx([1.8, 2.0, 1.0], abs=1e-6)
    assert idx.dtype == torch.long and idx.shape == (3,) and idx[2] == 1
    # temperature 2: w = [1, 2^-1/2] -> ESS = (1 + 0.707107)^2 / 1.5 = 1.942809
    _, ess_t = importance_resample(-energies[:1] / 2.0, None)
    assert ess_t.item() == pytest.approx(1.942809, abs=1e-6)


def test_importance_resample_with_perfect_critic_recovers_target():
    g = torch.Generator().manual_seed(0)
    p_target = T_([0.40, 0.30, 0.10, 0.10, 0.05, 0.05])
    q_proposal = T_([0.05, 0.05, 0.10, 0.20, 0.30, 0.30])
    N, C = 4000, 64
    candidates = torch.multinomial(q_proposal.expand(N, -1), C, replacement=True, generator=g)  # (N, C)
    energy_table = -p_target.log() + q_proposal.log()  # perfect critic: p_target ∝ q exp(-E)
    idx, ess = importance_resample(-energy_table[candidates], g)
    chosen = candidates[torch.arange(N), idx]

    def tv(samples):
        return 0.5 * (torch.bincount(samples, minlength=6).float() / N - p_target).abs().sum().item()

    tv_raw, tv_sir = tv(candidates[:, 0]), tv(chosen)
    assert tv_raw > 0.5  # exact TV(q, p) = 0.60
    assert tv_sir < 0.05
    assert ((ess >= 1) & (ess <= C)).all()


def test_importance_resample_rejects_bad_input():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError):
        importance_resample(torch.zeros(3), g)
    with pytest.raises(ValueError):
        importance_resample(torch.zeros(2, 0), g)
    with pytest.raises(ValueError, match="NaN"):
        importance_resample(T_([[0.0, math.nan]]), g)
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        importance_resample(T_([[0.0, math.inf]]), g)
    with pytest.raises(ValueError, match="finite"):
        importance_resample(T_([[-math.inf, -math.inf]]), g)
