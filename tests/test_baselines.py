"""The exposure-bias baselines (scheduled sampling, unlikelihood, TaiLr, MixCE, EMO): each loss against values
computed by hand on a 2-step, 3-token example; candidates and input mixing on backspace trajectories; each
learner trains, resumes exactly and runs on a prompted task.

The hand example (B = 1, V = 3, T = 3 = [bos, x_1, x_2]): column 0 of the logits predicts x_1 with
probabilities (1/2, 1/4, 1/4), column 1 predicts x_2 with (1/4, 1/2, 1/4); x_1 = 0, x_2 = 2. So
p(x_1) = 1/2, p(x_2) = 1/4, NLL = (ln 2 + ln 4) / 2.
Tolerances: float32 sums of <= 6 terms of magnitude <= 2: 1e-6 absolute.
"""

import math

import pytest
import torch
from tiny import BASELINE_CASES, tiny_train_config

from agents.common.checkpoint import load_checkpoint
from agents.common.trajectory import TrajectoryBatch, action_log_softmax, collate, token_log_probs, wrong_token_mask
from agents.emo import EMOConfig, emo_loss, output_embedding
from agents.learners import AGENTS
from agents.mixce import MixCEConfig, mixce_loss
from agents.scheduled_sampling import ScheduledSamplingConfig, mix_inputs, sampling_probability, scheduled_sampling_loss
from agents.tailr import TaiLrConfig, tailr_loss, tailr_weights
from agents.trainer import TrainConfig, Trainer
from agents.unlikelihood import UnlikelihoodConfig, context_candidates, unlikelihood_loss
from seqenv.tokenizers import BACKSPACE_ID, BOS_ID, EOS_ID

TOL = 1e-6
LN2, LN4 = math.log(2.0), math.log(4.0)
BASELINES = ("unlikelihood", "tailr", "mixce", "emo", "scheduled_sampling")


def _hand_example():
    probs = torch.tensor([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [1 / 3, 1 / 3, 1 / 3]]])
    tokens = torch.tensor([[0, 0, 2]])  # column 0 is bos (its id is never scored)
    mask = torch.tensor([[False, True, True]])
    batch = TrajectoryBatch(tokens, mask, torch.tensor([True]))  # the last action is eos (id 2)
    return probs.log().requires_grad_(True), batch, mask


def test_every_baseline_is_registered():
    assert set(BASELINES) <= set(AGENTS)


# ----------------------------------------------------------------------------- unlikelihood


def test_unlikelihood_hand_computed():
    logits, batch, mask = _hand_example()
    cand = torch.zeros(1, 3, 3, dtype=torch.bool)
    cand[0, 2, 0] = True  # C_2 = {x_1} = {0} (x_1 != x_2); C_1 = {}
    loss, nll, ul = unlikelihood_loss(logits, batch, mask, cand, alpha=1.0)
    # ul: −log(1 − p(0 | x_1)) = −log(3/4) = ln(4/3), averaged over 2 targets
    assert nll.item() == pytest.approx((LN2 + LN4) / 2, abs=TOL)
    assert ul.item() == pytest.approx(math.log(4 / 3) / 2, abs=TOL)
    assert loss.item() == pytest.approx((LN2 + LN4 + math.log(4 / 3)) / 2, abs=TOL)
    loss2, _, _ = unlikelihood_loss(logits, batch, mask, cand, alpha=0.5)
    assert loss2.item() == pytest.approx((LN2 + LN4 + 0.5 * math.log(4 / 3)) / 2, abs=TOL)
    # gradient of the UL term wrt column-1 logits: −∂log(1 − q_0)/∂l_k = q_0 (1[k=0] − q_k) / (1 − q_0) ... / 2
    (g,) = torch.autograd.grad(ul, logits)
    q = torch.tensor([0.25, 0.5, 0.25])
    expect = (q[0] * (torch.tensor([1.0, 0, 0]) - q) / (1 - q[0])) / 2
    assert torch.allclose(g[0, 1], expect, atol=TOL)


def test_context_candidates_on_a_backspace_trajectory_with_a_prompt():
    a, b, c = 10, 11, 12
    # prompt [c]; actions a, b (wrong), backspace, a, eos
    batch = collate([[a, b, BACKSPACE_ID, a, EOS_ID]], [[c]])
    target = batch.is_action & ~wrong_token_mask(batch)
    cand = context_candidates(batch, 16, target)
    got = [sorted(cand[0, i].nonzero().flatten().tolist()) for i in range(batch.tokens.shape[1])]
    # index: 0 bos, 1 prompt c, 2 a (state {}), 3 b (not a target), 4 backspace (state {a, b}),
    # 5 a (state {a} minus target a), 6 eos (state {a, a})
    assert got == [[], [], [], [], [a, b], [], [a]]
    assert not cand[..., c].any()  # the prompt is not context


def test_unlikelihood_config_rejects_bad_values():
    with pytest.raises(ValueError, match="alpha"):
        UnlikelihoodConfig(alpha=-1.0)
    with pytest.raises(ValueError, match="backspace_p"):
        UnlikelihoodConfig(backspace_p=1.0)


# ----------------------------------------------------------------------------- TaiLr


def test_tailr_hand_computed():
    logits, batch, mask = _hand_example()
    # γ = 0.5: w_1 = (1/2) / (1/2 + 1/4) = 2/3, w_2 = (1/4) / (1/2 + 1/8) = 2/5
    loss, w = tailr_loss(logits, batch, mask, gamma=0.5, min_weight=0.0)
    assert loss.item() == pytest.approx((2 / 3 * LN2 + 2 / 5 * LN4) / 2, abs=TOL)
    assert w.item() == pytest.approx((2 / 3 + 2 / 5) / 2, abs=TOL)
    # the lower threshold lifts w_2 to 0.5
    loss, _ = tailr_loss(logits, batch, mask, gamma=0.5, min_weight=0.5)
    assert loss.item() == pytest.approx((2 / 3 * LN2 + 0.5 * LN4) / 2, abs=TOL)
    # the weights are detached: the gradient is w_t times MLE's, column 0: (2/3)(q − e_0)/2
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.allclose(g[0, 0], 2 / 3 * (torch.tensor([0.5, 0.25, 0.25]) - torch.tensor([1.0, 0, 0])) / 2, atol=TOL)
    # γ -> 0 is MLE
    assert tailr_weights(torch.tensor([-5.0, -0.1]), 1e-12, 0.0).tolist() == pytest.approx([1.0, 1.0], abs=1e-6)


def test_tailr_config_rejects_bad_values():
    with pytest.raises(ValueError, match="gamma"):
        TaiLrConfig(gamma=0.0)
    with pytest.raises(ValueError, match="min_weight"):
        TaiLrConfig(min_weight=1.5)


# ----------------------------------------------------------------------------- MixCE


def test_mixce_hand_computed():
    logits, batch, mask = _hand_example()
    # η = 0.5: weights η + (1 − η) q: 0.5 + 0.25 = 0.75 and 0.5 + 0.125 = 0.625
    loss, nll = mixce_loss(logits, batch, mask, eta=0.5)
    assert loss.item() == pytest.approx((0.75 * LN2 + 0.625 * LN4) / 2, abs=TOL)
    assert nll.item() == pytest.approx((LN2 + LN4) / 2, abs=TOL)
    loss1, _ = mixce_loss(logits, batch, mask, eta=1.0)  # η = 1 is MLE
    assert loss1.item() == pytest.approx((LN2 + LN4) / 2, abs=TOL)
    (g,) = torch.autograd.grad(loss, logits)  # sg(q): gradient 0.75 × MLE's in column 0
    assert torch.allclose(g[0, 0], 0.75 * (torch.tensor([0.5, 0.25, 0.25]) - torch.tensor([1.0, 0, 0])) / 2, atol=TOL)
    with pytest.raises(ValueError, match="eta"):
        MixCEConfig(eta=1.5)


# ----------------------------------------------------------------------------- EMO


def test_emo_hand_computed():
    logits, batch, mask = _hand_example()
    # unit rows e_0 = (1, 0), e_1 = (0, 1), e_2 = (1, 1)/√2 (the package normalises): costs C(i, j) = 1 − cos
    emb = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    s = 1 - 1 / math.sqrt(2)
    # DEMD_1 = Σ_j q_j C(j, 0) = 1/4·1 + 1/4·s ; DEMD_2 = Σ_j q_j C(j, 2) = 1/4·s + 1/2·s
    d1, d2 = 0.25 + 0.25 * s, 0.75 * s
    n1, n2 = LN2, LN4
    r1, r2 = n1 / d1, n2 / d2
    assert r1 < 3 < r2  # step 2's ratio hits the package's cap of 3
    loss = emo_loss(logits, batch, mask, emb, mode=1)
    expect = (0.5 * (n1 + r1 * d1) + 0.5 * (n2 + 3 * d2)) / 2
    assert loss.item() == pytest.approx(expect, abs=TOL)
    # gradient, column 0: ½(∇NLL + r_1 ∇DEMD)/2 with ∇_k DEMD = q_k (C(k, 0) − DEMD)
    (g,) = torch.autograd.grad(loss, logits)
    q = torch.tensor([0.5, 0.25, 0.25])
    cost = torch.tensor([0.0, 1.0, s])
    expect_g = 0.5 * ((q - torch.tensor([1.0, 0, 0])) + r1 * q * (cost - d1)) / 2
    assert torch.allclose(g[0, 0], expect_g, atol=TOL)
    # mode 2: sg(DEMD/NLL)·NLL + DEMD = 2·DEMD in value
    assert emo_loss(logits, batch, mask, emb, mode=2).item() == pytest.approx((2 * d1 + 2 * d2) / 2, abs=TOL)
    with pytest.raises(ValueError, match="mode"):
        EMOConfig(mode=3)


def test_output_embedding_rejects_a_headless_module():
    with pytest.raises(ValueError, match="LM head"):
        output_embedding(torch.nn.Linear(2, 2))


# ----------------------------------------------------------------------------- scheduled sampling


def test_sampling_probability_schedules():
    assert sampling_probability(0, "constant", 0.3) == 0.3
    assert sampling_probability(50, "linear", 0.25, ramp_steps=100) == pytest.approx(0.25)
    assert sampling_probability(10, "linear", 0.25, ramp_steps=100) == pytest.approx(0.1)
    # inverse sigmoid, k = 10: p = 1 − 10/(10 + e^{step/10}); step 0: 1 − 10/11; step 10 ln 10: 1/2
    assert sampling_probability(0, "inverse_sigmoid", 1.0, k=10) == pytest.approx(1 / 11)
    assert sampling_probability(10 * math.log(10), "inverse_sigmoid", 1.0, k=10) == pytest.approx(0.5)
    assert sampling_probability(10**6, "inverse_sigmoid", 0.4, k=10) == 0.4
    with pytest.raises(ValueError, match="schedule"):
        ScheduledSamplingConfig(schedule="exponential")
    with pytest.raises(ValueError, match="p_max"):
        ScheduledSamplingConfig(p_max=2.0)


def test_mix_inputs_replaces_only_ordinary_actions_with_pass1_samples():
    a, b, c = 10, 11, 12
    batch = collate([[a, b, BACKSPACE_ID, a, EOS_ID]], [[c]])
    T, V = batch.tokens.shape[1], 16
    # pass 1 puts all mass on token 13 everywhere (and on the specials, which must be masked)
    logits = torch.full((1, T, V), -30.0)
    logits[..., 13] = 0.0
    logits[..., BACKSPACE_ID] = 5.0
    logits[..., EOS_ID] = 5.0
    gen = torch.Generator().manual_seed(0)
    mixed, replaced = mix_inputs(batch, logits, 1.0, gen)
    # p = 1: every ordinary action (a, b, a at indices 2, 3, 5) replaced by 13; bos, prompt, backspace, eos kept
    assert mixed.tolist() == [[BOS_ID, c, 13, 13, BACKSPACE_ID, 13, EOS_ID]]
    assert replaced.tolist() == [[False, False, True, True, False, True, False]]
    mixed0, replaced0 = mix_inputs(batch, logits, 0.0, gen)
    assert torch.equal(mixed0, batch.tokens) and not replaced0.any()


def test_scheduled_sampling_loss_scores_gold_targets_on_mixed_inputs():
    # a "model" whose next-token distribution depends on the previous input token only
    table = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.25, 0.25, 0.5]]))
    gold = TrajectoryBatch(
        torch.tensor([[0, 0, 2]]), torch.tensor([[False, True, True]]), torch.tensor([True])
    )  # x_2 = 2 is the default eos id
    mixed = torch.tensor([[0, 1, 2]])  # x_1 = 0 replaced by 1 in pass 2's input
    loss = scheduled_sampling_loss(table[mixed], gold, gold.is_action)
    # −log p(x_1 = 0 | bos = 0) − log p(x_2 = 2 | input 1) = ln 2 + ln 4, over 2 targets
    assert loss.item() == pytest.approx((LN2 + LN4) / 2, abs=TOL)


def test_action_log_softmax_agrees_with_the_gather():
    logits = torch.randn(2, 5, 7)
    tokens = torch.randint(0, 7, (2, 5))
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[:, 0] = False
    full = action_log_softmax(logits).gather(-1, tokens[..., None]).squeeze(-1)
    assert torch.allclose(torch.where(mask, full, 0.0), token_log_probs(logits, tokens, mask), atol=1e-6)


# ----------------------------------------------------------------------------- learners via the Trainer


@pytest.mark.slow
@pytest.mark.parametrize("agent", BASELINES)
@pytest.mark.parametrize("task", ["oracle-hmm", "arithmetic"])
def test_baseline_resumes_exactly(tmp_path, agent, task):
    kw = dict(agent=agent, task=task, **BASELINE_CASES[agent])
    full = Trainer(tiny_train_config(tmp_path, "full", **kw))
    m_full = full.train()
    full.close()
    killed = Trainer(tiny_train_config(tmp_path, "killed", **kw))
    assert killed.train(stop_at=4) is None
    killed.close()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 3
    resumed = Trainer(TrainConfig(logdir=str(tmp_path / "killed"), resume=True, device="cpu", progress=False))
    assert resumed.step == 3 and resumed.cfg.agent == agent
    m_resumed = resumed.train()
    resumed.close()
    for k, v in full.policy.state_dict().items():
        assert torch.equal(v, resumed.policy.state_dict()[k]), k
    assert m_full == m_resumed and math.isfinite(m_full["nll"])


def test_emo_cost_embedding_is_frozen_and_survives_resume(tmp_path):
    t = Trainer(tiny_train_config(tmp_path, "emo", agent="emo", max_steps=3, ckpt_every=3))
    start = output_embedding(t.policy).detach().clone()
    t.train()
    t.close()
    assert torch.equal(t.learner.cost_embedding, start)
    assert not torch.equal(output_embedding(t.policy), start)  # the head moved, the costs did not
    saved = load_checkpoint(tmp_path / "emo" / "checkpoint.pt")["learner"]["cost_embedding"]
    assert torch.equal(saved, start)
