"""SequenceMatch's per-term gradient diagnostics and the fix candidates of issue 26 (estimator="transition",
model_samples="fresh", bc_warmup_steps), against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch
from tiny import make_tiny_policy

from agents.common.demos import DemoSampler
from agents.common.learner import LearnerContext
from agents.common.trajectory import collate
from agents.mle import mle_loss
from agents.sequencematch import (
    TERMS,
    SequenceMatchConfig,
    SequenceMatchLearner,
    TrajectoryBatch,
    gradient_diagnostics,
    level_decomposition,
    per_term_gradients,
    sequencematch_loss,
    sequencematch_terms,
)
from seqenv.tasks import make_task

PAD, BOS, EOS, BS = 0, 1, 2, 3
X, Y = 5, 6
V = 7
G = 0.9


def two_step():
    """Data [bos x eos] and model [bos y eos]: two actions each, both terminated."""
    data = TrajectoryBatch(
        tokens=torch.tensor([[BOS, X, EOS]]),
        is_action=torch.tensor([[False, True, True]]),
        terminated=torch.tensor([True]),
    )
    model = TrajectoryBatch(
        tokens=torch.tensor([[BOS, Y, EOS]]),
        is_action=torch.tensor([[False, True, True]]),
        terminated=torch.tensor([True]),
    )
    g = torch.Generator().manual_seed(0)
    ld = torch.nn.Parameter(torch.randn(1, 3, V, generator=g))
    lm = torch.nn.Parameter(torch.randn(1, 3, V, generator=g))
    return data, model, ld, lm


@pytest.mark.parametrize(
    "kw", [{}, {"estimator": "transition"}, {"normalize": "token", "mix": "convex", "eta": 0.3}, {"divergence": "kl"}]
)
def test_term_gradients_sum_to_the_total_gradient(kw):
    data, model, ld, lm = two_step()
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, eta=kw.pop("eta", 0.5), **kw)
    terms, _ = sequencematch_terms(ld, data, lm, model, cfg)
    assert tuple(terms) == TERMS
    loss, _ = sequencematch_loss(ld, data, lm, model, cfg)
    total = torch.cat([gr.flatten() for gr in torch.autograd.grad(loss, [ld, lm])])
    parts = per_term_gradients(terms, [ld, lm])
    # float32 sums of 9 terms of size O(1/(1-γ)) = O(10): tolerance a few hundred ulps of 10
    torch.testing.assert_close(torch.stack(list(parts.values())).sum(0), total, atol=1e-4, rtol=1e-5)
    diag = gradient_diagnostics(terms, terms["bc"], [ld, lm])
    assert diag["diag/grad_norm/total"] == pytest.approx(float(total.norm()), rel=1e-5)
    assert diag["diag/cos_mle/bc"] == pytest.approx(1.0 if cfg.mix == "convex" or cfg.eta > 0 else 0.0, abs=1e-5)


def test_reward_term_gradient_by_hand():
    """reward_data = -(r_0 + γ r_1), r_0 = l_0[x] - γ V(l_1), r_1 = l_1[eos] - γ V(l_2):
    d/dl_0[x] = -1, d/dl_0[other] = 0, d/dl_1[k] = γ p_1[k] - γ [k = eos], d/dl_2 = γ² p_2."""
    data, model, ld, lm = two_step()
    terms, _ = sequencematch_terms(ld, data, lm, model, SequenceMatchConfig(alpha=0.25, gamma=G))
    (gr,) = torch.autograd.grad(terms["reward_data"], [ld])
    expected = torch.zeros(3, V)
    expected[0, X] = -1.0
    p1, p2 = torch.softmax(ld[0, 1].detach(), -1), torch.softmax(ld[0, 2].detach(), -1)
    expected[1] = G * p1
    expected[1, EOS] -= G
    expected[2] = G * G * p2
    torch.testing.assert_close(gr[0], expected, atol=1e-6, rtol=1e-6)  # float32, sums of 2-3 terms


def test_wrong_token_term_split():
    """With a wrong token outside bc_mask, reward_data + reward_wrong is the old reward term; the wrong part is
    -γ^i r_i of that token alone."""
    data = collate([[Y, BS, X, EOS]], [[]])
    g = torch.Generator().manual_seed(1)
    ld = torch.randn(1, 5, V, generator=g)
    model, lm = data, ld
    bc_mask = data.is_action.clone()
    bc_mask[0, 1] = False  # y is the injected wrong token
    cfg = SequenceMatchConfig(alpha=0.25, gamma=G, imitate_wrong_tokens=True)
    terms, m = sequencematch_terms(ld, data, lm, model, cfg, bc_mask=bc_mask)
    r0 = float(ld[0, 0, Y] - G * torch.logsumexp(ld[0, 1], -1))  # w_0 = 1
    assert float(terms["reward_wrong"]) == pytest.approx(-r0, rel=1e-5)
    _, m_all = sequencematch_loss(ld, data, lm, model, cfg)
    assert m["loss/reward_data"] == pytest.approx(m_all["loss/reward_data"], rel=1e-5)
    excluded, _ = sequencematch_terms(ld, data, lm, model, cfg, bc_mask=bc_mask, reward_mask=bc_mask)
    assert float(excluded["reward_wrong"]) == 0.0


def test_transition_estimator_by_hand():
    """Uniform logits (V = log 7 everywhere), two terminated 2-action rows, α huge: the value term is the mean
    over 2 × 3 transitions of (V - γV), (V - γV), ((1 - γ)V) per row = (1 - γ) log 7; the data reward term
    is -(r_0 + r_1 + r_⊥)/3 with r_i = log(1/7) + (1 - γ) log 7 and r_⊥ = (1 - γ) log 7."""
    data, model, _, _ = two_step()
    z = torch.zeros(1, 3, V)
    cfg = SequenceMatchConfig(alpha=1e12, gamma=G, eta=0.0, estimator="transition")
    terms, _ = sequencematch_terms(z, data, z, model, cfg)
    lv = math.log(V)
    assert float(terms["value"] + terms["tail_value"]) == pytest.approx((1 - G) * lv, rel=1e-5)
    r = -lv + (1 - G) * lv
    assert float(terms["reward_data"] + terms["tail_reward"]) == pytest.approx(-(2 * r + (1 - G) * lv) / 3, rel=1e-5)


# ----------------------------------------------------------------------------
# The learner: fresh samples, warm start, the logged diagnostics

TASK = make_task("arithmetic", num_train=50, num_valid=5, num_test=5, min_base=10, max_base=10, max_digits=1)


def _learner(**kw):
    policy = make_tiny_policy(TASK, n_embd=16)
    gens = {"noise": torch.Generator().manual_seed(0), "sample": torch.Generator().manual_seed(1)}
    ctx = LearnerContext(
        model=policy, policy=policy, task=TASK, device=torch.device("cpu"), generators=gens, batch_size=4
    )
    return SequenceMatchLearner(ctx, SequenceMatchConfig(rollout_batch_size=4, **kw))


def _demos(n=4):
    return DemoSampler(TASK, "train", torch.Generator().manual_seed(0)).sample(n)


def test_fresh_samples_start_from_the_data_prompts():
    learner = _learner(model_samples="fresh", diagnostics_every=1, backspace_p=0.0)
    demos = _demos()
    prompts, acts = learner._fresh_batch(demos)
    assert [list(p) for p in prompts] == [list(p) for p in demos.prompts]
    assert all(a for a in acts)
    loss, m = learner.loss(demos, 0)
    assert torch.isfinite(loss) and m["buffer/age"] == 0.0 and not learner.buffer
    # the diagnostics were computed on this step (diagnostics_every = 1)
    assert {
        f"diag/grad_norm/{t}" for t in (*TERMS, "total", "mle_backspace", "imitated_nll", "routing", "start_values")
    } <= set(m)
    assert m["diag/grad_norm/start_values"] < 1e-6  # fresh samples share the data's start states
    assert m["diag/cos_mle/total"] > 0.5  # discounted data NLL dominates: it points where MLE's gradient does


def test_diagnostics_only_on_their_steps_and_sum():
    learner = _learner(diagnostics_every=3)
    demos = _demos()
    assert any(k.startswith("diag/") for k in learner.loss(demos, 0)[1])  # the fork
    assert not any(k.startswith("diag/") for k in learner.loss(demos, 1)[1])
    _, m = learner.loss(demos, 2)  # (2 + 1) % 3 == 0
    assert m["diag/grad_norm/total"] > 0 and 0 < m["diag/data_entropy"] <= math.log(TASK.tokenizer.vocab_size)
    assert learner.diag_seconds > 0


def test_bc_warmup_is_mle_with_backspace():
    """During the warm start the loss is MLE + backspace on the augmented batch and no rollout happens."""
    learner = _learner(bc_warmup_steps=2, backspace_p=0.0)
    demos = _demos()
    loss, m = learner.loss(demos, 1)
    batch = collate(demos.actions, demos.prompts)
    expected = mle_loss(learner.model(batch.tokens), batch)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert not learner.buffer and "loss/sm" not in m
    _, m2 = learner.loss(demos, 2)
    assert learner.buffer and "loss/sm" in m2


def test_config_rejects_bad_new_fields():
    with pytest.raises(ValueError, match="estimator"):
        SequenceMatchConfig(estimator="uniform")
    with pytest.raises(ValueError, match="model_samples"):
        SequenceMatchConfig(model_samples="stale")
    with pytest.raises(ValueError, match="bc_warmup_steps"):
        SequenceMatchConfig(bc_warmup_steps=-1)


def test_reward_value_and_tails_reduce_to_nll_routing_and_start_values():
    """The module docstring's identity, by hand on prompted rows: data = prompt [x], actions [y(wrong), bs, x, eos];
    model = prompt [y, y], actions [x, eos]. reward_data + tail_reward + value + tail_value =
    Σ_{i∈R} γ^i (−log π) + (V(u_0) − γ V(u_0 + y)) + ½ (V_model(s_0) − V_data(s_0))."""
    data = collate([[Y, BS, X, EOS]], [[X]])
    model = collate([[X, EOS]], [[Y, Y]])
    g = torch.Generator().manual_seed(3)
    ld, lm = torch.randn(1, 6, V, generator=g), torch.randn(1, 5, V, generator=g)
    bc_mask = data.is_action.clone()
    bc_mask[0, 2] = False  # the wrong token y
    cfg = SequenceMatchConfig(alpha=1e12, gamma=G, eta=0.0)
    terms, _ = sequencematch_terms(ld, data, lm, model, cfg, bc_mask=bc_mask, reward_mask=bc_mask)
    got = sum(float(terms[k]) for k in ("reward_data", "tail_reward", "value", "tail_value"))
    v = torch.logsumexp(ld[0], -1)
    logp = torch.log_softmax(ld[0], -1)
    nll = sum(-(G**j) * float(logp[i - 1, data.tokens[0, i]]) for j, i in ((1, 3), (2, 4), (3, 5)))
    routing = float(v[1] - G * v[2])
    start = 0.5 * (float(torch.logsumexp(lm[0, 2], -1)) - float(v[1]))
    # float32 sums of O(10) terms of size up to 1/(1 − γ) = 10: tolerance 1e-4 absolute
    assert got == pytest.approx(nll + routing + start, abs=1e-4)
    parts = level_decomposition(ld, data, lm, model, cfg, bc_mask=bc_mask, reward_mask=bc_mask)
    assert float(parts["imitated_nll"]) == pytest.approx(nll, abs=1e-5)
    assert float(parts["routing"]) == pytest.approx(routing, abs=1e-5)
    assert float(parts["start_values"]) == pytest.approx(start, abs=1e-5)
    assert float(parts["truncation"]) == pytest.approx(0.0, abs=1e-4)  # both rows terminated


def test_cancelled_routing_leaves_nll_and_start_values():
    """wrong_token_value="cancel": the five terms sum to the imitated NLL + start values, by hand as above."""
    data = collate([[Y, BS, X, EOS]], [[X]])
    model = collate([[X, EOS]], [[Y, Y]])
    g = torch.Generator().manual_seed(3)
    ld, lm = torch.randn(1, 6, V, generator=g), torch.randn(1, 5, V, generator=g)
    bc_mask = data.is_action.clone()
    bc_mask[0, 2] = False
    cfg = SequenceMatchConfig(alpha=1e12, gamma=G, eta=0.0, wrong_token_value="cancel")
    terms, _ = sequencematch_terms(ld, data, lm, model, cfg, bc_mask=bc_mask, reward_mask=bc_mask)
    got = sum(float(terms[k]) for k in ("reward_data", "reward_wrong", "tail_reward", "value", "tail_value"))
    v = torch.logsumexp(ld[0], -1)
    logp = torch.log_softmax(ld[0], -1)
    nll = sum(-(G**j) * float(logp[i - 1, data.tokens[0, i]]) for j, i in ((1, 3), (2, 4), (3, 5)))
    start = 0.5 * (float(torch.logsumexp(lm[0, 2], -1)) - float(v[1]))
    assert got == pytest.approx(nll + start, abs=1e-4)  # float32, O(10) terms of size <= 10
    with pytest.raises(ValueError, match="wrong_token_value"):
        SequenceMatchConfig(wrong_token_value="drop")
