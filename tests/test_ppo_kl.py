"""PPO with a KL penalty that restrains (agents/sb3/critic_reward.py): the estimators' gradients on a 2-state
MDP, the exact-KL penalty in the policy's loss, and short PPO runs (zero critic, β sweep, adaptive β)."""

import itertools

import numpy as np
import pytest
import torch
from tiny import make_tiny_policy

from agents.sb3 import critic_reward as cr
from seqenv.tasks import make_task

TASK = make_task("oracle-hmm")
V = TASK.tokenizer.vocab_size


# ---------------------------------------------------------------------------------------------------------
# gradients on a 2-step MDP: s0 --a0--> s1[a0] --a1--> end, 2 actions per state, a terminal reward R[a0, a1]


def _mdp(seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = {
        "s0": torch.randn(2, generator=g, dtype=torch.float64),
        "s1": torch.randn(2, 2, generator=g, dtype=torch.float64),
    }  # s1[a0] logits
    ref = {
        "s0": torch.randn(2, generator=g, dtype=torch.float64),
        "s1": torch.randn(2, 2, generator=g, dtype=torch.float64),
    }
    R = torch.randn(2, 2, generator=g, dtype=torch.float64)
    return theta, ref, R


def _true_objective(theta, ref, R, beta):
    """J = E[R] - β KL(p_θ(τ) ‖ p_0(τ)), by enumeration of the 4 episodes."""
    J = 0
    for a0, a1 in itertools.product(range(2), range(2)):
        lp = theta["s0"].log_softmax(-1)[a0] + theta["s1"][a0].log_softmax(-1)[a1]
        lr = ref["s0"].log_softmax(-1)[a0] + ref["s1"][a0].log_softmax(-1)[a1]
        J = J + lp.exp() * (R[a0, a1] - beta * (lp - lr))
    return J


def _estimator_gradient(theta, ref, R, beta, estimator, penalty_in_loss=False, reward_kl=True):
    """The expected policy-gradient surrogate as PPO uses it, by enumeration: Σ_τ p(τ) Σ_t log π(a_t|s_t) G_t
    with G_t the return from t (rewards fixed: detached), the KL term of :func:`cr.kl_reward_term` paid per step;
    ``penalty_in_loss``: minus β Σ_τ p(τ) Σ_t KL(π(·|s_t) ‖ π0(·|s_t)) (differentiable, :func:`cr.exact_kl`)."""
    surrogate = 0
    for a0, a1 in itertools.product(range(2), range(2)):
        states = [(theta["s0"], ref["s0"], a0), (theta["s1"][a0], ref["s1"][a0], a1)]
        logp = [s.log_softmax(-1)[None] for s, _, _ in states]
        logr = [r.log_softmax(-1)[None] for _, r, _ in states]
        acts = [torch.tensor([a]) for _, _, a in states]
        p_tau = sum(lp[0, a] for lp, (_, _, a) in zip(logp, states)).exp().detach()
        terms = [
            cr.kl_reward_term(lp.detach(), lr, a, estimator)[0] if reward_kl else torch.zeros((), dtype=lp.dtype)
            for lp, lr, a in zip(logp, logr, acts)
        ]
        rewards = [-beta * terms[0], R[a0, a1] - beta * terms[1]]
        for t in range(2):
            G = sum(rewards[t:]).detach()
            surrogate = surrogate + p_tau * logp[t][0, acts[t][0]] * G
            if penalty_in_loss:
                surrogate = surrogate - p_tau * beta * cr.exact_kl(logp[t], logr[t])[0]
    return torch.autograd.grad(surrogate, [theta["s0"], theta["s1"]])


def _grad(fn, theta):
    return torch.autograd.grad(fn(), [theta["s0"], theta["s1"]])


@pytest.mark.parametrize("seed", [0, 1])
def test_estimator_gradients_on_a_two_state_mdp(seed):
    theta, ref, R = _mdp(seed)
    for v in theta.values():
        v.requires_grad_(True)
    beta = 0.7
    truth = _grad(lambda: _true_objective(theta, ref, R, beta), theta)
    # the analytic gradient agrees with central finite differences (float64: error O(h²) ~ 1e-8)
    h = 1e-5
    with torch.no_grad():
        for name, g in zip(("s0", "s1"), truth):
            for idx in itertools.product(*map(range, g.shape)):
                theta[name][idx] += h
                up = float(_true_objective(theta, ref, R, beta))
                theta[name][idx] -= 2 * h
                down = float(_true_objective(theta, ref, R, beta))
                theta[name][idx] += h
                assert (up - down) / (2 * h) == pytest.approx(float(g[idx]), abs=1e-7)

    def close(a, b):  # float64 sums of a handful of terms: agreement to 1e-10
        return all(torch.allclose(x, y, atol=1e-10, rtol=0) for x, y in zip(a, b))

    # k1 in the reward: the exact gradient
    assert close(_estimator_gradient(theta, ref, R, beta, "k1"), truth)
    # exact KL: as a fixed per-step reward *and* the differentiable penalty in the loss = the exact gradient
    assert close(_estimator_gradient(theta, ref, R, beta, "exact", penalty_in_loss=True), truth)
    # ... the penalty alone ("KL in the loss") misses how earlier actions change the later states' KL
    assert not close(_estimator_gradient(theta, ref, R, beta, "exact", penalty_in_loss=True, reward_kl=False), truth)
    # k3 as a fixed reward is biased by exactly β E_τ[Σ_t ∇k3_t] (the term a fixed reward drops)
    k3 = _estimator_gradient(theta, ref, R, beta, "k3")
    assert not close(k3, truth)
    missing = 0
    for a0, a1 in itertools.product(range(2), range(2)):
        states = [(theta["s0"], ref["s0"], a0), (theta["s1"][a0], ref["s1"][a0], a1)]
        p_tau = sum(s.log_softmax(-1)[a] for s, _, a in states).exp().detach()
        for s, r, a in states:
            missing = (
                missing
                + p_tau
                * cr.kl_reward_term(s.log_softmax(-1)[None], r.log_softmax(-1)[None], torch.tensor([a]), "k3")[0]
            )
    expected = [t + beta * m for t, m in zip(truth, _grad(lambda: missing, theta))]
    assert close(k3, expected)


def test_kl_terms_hand_checked():
    log_p = torch.tensor([[0.5, 0.5, 0.0]]).log()
    log_ref = torch.tensor([[0.25, 0.75, 0.0]]).log()
    a = torch.tensor([0])
    assert float(cr.kl_reward_term(log_p, log_ref, a, "k1")) == pytest.approx(np.log(2))
    assert float(cr.kl_reward_term(log_p, log_ref, a, "k3")) == pytest.approx(0.5 - 1 - np.log(0.5))
    kl = 0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75)  # the masked third action contributes 0
    assert float(cr.exact_kl(log_p, log_ref)) == pytest.approx(kl)
    assert float(cr.kl_reward_term(log_p, log_ref, a, "exact")) == pytest.approx(kl)
    assert cr.adaptive_beta(1.0, 2.0, 1.0, 100, 1000) == pytest.approx(1.02)  # error clipped at +0.2
    assert cr.adaptive_beta(1.0, 0.9, 1.0, 1000, 1000) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="--kl-estimator must be one of k1, k3, exact, got 'k2'"):
        cr.PPOCriticConfig(checkpoint="x", critic="x", kl_estimator="k2")


# ---------------------------------------------------------------------------------------------------------
# short PPO runs on oracle-hmm with a tiny random policy as π0


class CountCritic(torch.nn.Module):
    """Energy ``-w · (number of token 5)``: the critic reward ``r(x)`` counts the 5s (a pull away from π0)."""

    def __init__(self, w: float):
        super().__init__()
        self.w = w
        self.log_normalizer = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens, mask):
        return -self.w * ((tokens == 5) & mask).sum(1).float()


def _reference():
    return make_tiny_policy(TASK).eval()


def _run(tmp_path, critic_weight, steps, **kw):
    ref = _reference()
    kw = {"num_envs": 16, "n_steps": 16, "batch_size": 64, "n_epochs": 2, "learning_rate": 1e-3, **kw}
    cfg = cr.PPOCriticConfig(
        checkpoint="x", critic="x", total_timesteps=steps, logdir=str(tmp_path), progress=False, **kw
    )
    critic = CountCritic(critic_weight)
    ppo, reward, callback = cr.make_ppo(cfg, ref, ref.config.to_dict(), critic, TASK, "cpu")
    ppo.learn(steps, callback=callback)
    metrics = cr.evaluate(ppo.policy.actor, ref, critic, TASK, reward.beta, 512, "cpu", seed=0)
    return metrics, reward, ppo


@pytest.mark.slow
def test_zero_critic_keeps_the_policy_at_the_start(tmp_path):
    """Only the KL term in the reward: 512 env steps leave KL(π‖π0) < 0.05 nats per sequence."""
    metrics, _, _ = _run(tmp_path, 0.0, 512, learning_rate=1e-4)
    assert metrics["critic_reward"] == 0.0
    assert abs(metrics["kl_to_init"]) < 0.05


@pytest.mark.slow
def test_exact_kl_penalty_rides_in_the_entropy_slot(tmp_path):
    """With kl_reference set, evaluate_actions' third output is -KL(π‖π0) at the states, differentiable."""
    _, reward, ppo = _run(tmp_path, 1.0, 256, kl_estimator="exact", beta=0.5)
    policy = ppo.policy
    assert policy.kl_reference is not None and ppo.ent_coef == 0.5
    obs = {k: torch.as_tensor(v) for k, v in reward._obs.items()}
    masks = torch.as_tensor(reward._masks)
    actions = masks.float().argmax(1)
    _, _, neg_kl = policy.evaluate_actions(obs, actions, masks)
    expected = cr.exact_kl(
        reward.log_probs(policy.actor, reward._obs, reward._masks),
        reward.log_probs(policy.kl_reference, reward._obs, reward._masks),
    )
    torch.testing.assert_close(-neg_kl.detach(), expected, atol=1e-5, rtol=1e-4)  # float32 log-softmax over V ~ 20
    assert (expected > 0).any()  # PPO moved π away from π0
    neg_kl.sum().backward()
    assert policy.actor.lm_head.weight.grad is not None


@pytest.mark.slow
def test_final_kl_falls_as_beta_grows(tmp_path):
    """A critic that pays for 5s; same budget (1024 env steps), one seed: KL(β=0.1) > KL(β=1) > KL(β=10)."""
    kls = [_run(tmp_path / str(b), 1.0, 1024, beta=b)[0]["kl_to_init"] for b in (0.1, 1.0, 10.0)]
    assert kls[0] > kls[1] > kls[2] > 0, kls


@pytest.mark.slow
def test_adaptive_controller_reaches_its_target(tmp_path):
    """Start at β = 1 with a target KL of 0.2 nats: after 40 rollouts the final KL is within ±50 % of it."""
    metrics, reward, _ = _run(
        tmp_path, 1.0, 20480, beta=1.0, kl_target=0.2, kl_horizon=512, num_envs=32, batch_size=128
    )
    assert reward.beta != 1.0
    assert 0.1 <= metrics["kl_to_init"] <= 0.3, (metrics["kl_to_init"], reward.beta)
