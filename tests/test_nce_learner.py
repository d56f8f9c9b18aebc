"""NCELearner (train.py --agent nce), load_critic and generate.py --rerank critic."""

import copy
import io
import math

import pytest
import torch
from tiny import make_tiny_policy
from tolerances import policy_atol

from agents.common.checkpoint import CheckpointError, save_checkpoint
from agents.common.demos import Demos, DemoSampler
from agents.common.learner import LearnerContext
from agents.common.rollout import make_vector_env, rollout
from agents.common.trajectory import collate, sequence_batch
from agents.critic import load_critic
from agents.nce import NCEConfig, NCELearner, no_backspace_log_prob
from agents.policies.transformer import PolicyConfig, TransformerPolicy
from scripts import generate as generate_script
from seqenv.tasks import make_task

TASK = make_task("oracle-hmm")
TINY_CRITIC = dict(critic_n_layer=1, critic_n_head=2, critic_n_embd=32)


def _learner(policy, batch_size=8, seed=0, **kw) -> NCELearner:
    gens = {"noise": torch.Generator().manual_seed(seed), "sample": torch.Generator().manual_seed(seed + 1)}
    torch.manual_seed(seed)  # the critic's initialisation
    ctx = LearnerContext(
        model=policy, policy=policy, task=TASK, device=torch.device("cpu"), generators=gens, batch_size=batch_size
    )
    return NCELearner(ctx, NCEConfig(**TINY_CRITIC, **kw))


def _demos(n, seed=0, split="train"):
    return DemoSampler(TASK, split, torch.Generator().manual_seed(seed)).sample(n)


def _train(learner, steps, batch_size=16, lr=3e-3, seed=0):
    data = DemoSampler(TASK, "train", torch.Generator().manual_seed(seed))
    opt = torch.optim.AdamW(learner.parameters(), lr=lr)
    for step in range(steps):
        loss, _ = learner.loss(data.sample(batch_size), step)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _save(path, agent, policy, learner=None):
    state = {
        "agent": agent,
        "task": TASK.spec(),
        "policy": policy.policy_spec(),
        "model": policy.state_dict(),
        "step": 0,
        "learner": learner.state_dict() if learner else {},
    }
    save_checkpoint(state, path)
    return str(path)


# ---------------------------------------------------------------------------
# the loss at initialisation: the critic's head is zero, so E_psi = 0 and c = 0
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "loss, nu, expected_loss, expected_acc",
    [
        # h = -log nu everywhere. nu = 1: -log σ(0) - log(1 - σ(0)) = 2 log 2; no sample has h != 0 -> accuracy 0
        ("binary", 1, 2 * math.log(2), 0.0),
        # nu = 2: -log σ(-log 2) = log 3, -2 log(1 - σ(-log 2)) = 2 log 1.5; h < 0 classifies all as noise: 16 of 24
        ("binary", 2, math.log(3) + 2 * math.log(1.5), 16 / 24),
        # ranking with 3 noise candidates, all scores equal: -log(1/4); data never strictly best
        ("ranking", 3, math.log(4), 0.0),
    ],
)
def test_loss_at_init_hand_computed_and_only_the_critic_learns(loss, nu, expected_loss, expected_acc, tiny_policy):
    policy = tiny_policy
    learner = _learner(policy, batch_size=8, loss=loss, nu=nu)
    value, m = learner.loss(_demos(8), 0)
    assert value.item() == pytest.approx(expected_loss, abs=1e-6)
    assert m["nce/loss"] == pytest.approx(expected_loss, abs=1e-6)
    assert m["nce/accuracy"] == pytest.approx(expected_acc)
    assert m["critic/energy_data"] == 0.0 and m["critic/energy_noise"] == 0.0 and m["critic/c"] == 0.0
    assert m["noise/snapshot_age"] == 0 and m["noise/refreshed"] == 1.0
    assert learner.sampler.venv.num_envs == 8 * nu  # nu noise samples per data sample
    value.backward()
    assert all(p.grad is None and not p.requires_grad for p in policy.parameters())  # frozen policy
    assert learner.critic.head.weight.grad.abs().sum() > 0
    ids = {id(p) for p in learner.parameters()}
    assert not ids & {id(p) for p in policy.parameters()}
    assert (id(learner.critic.log_normalizer) in ids) == (loss == "binary")  # ranking NCE has no c


def test_self_adapting_policy_objective_at_k1_and_metrics(tiny_policy):
    policy = tiny_policy
    learner = _learner(policy, batch_size=8, policy_objective="self_adapting_nce", ce_weight=0.5)
    demos = _demos(8)
    value, m = learner.loss(demos, 0)
    # snapshot = policy: h = 0 for the policy's own NCE (2 log 2) and the critic's; weights p/p_s = 1
    assert m["policy/nce_loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert m["nce/loss"] == pytest.approx(2 * math.log(2), abs=1e-6)
    assert m["noise/ess"] == pytest.approx(1.0, abs=1e-6)
    tokens, mask = sequence_batch([d[:-1] for d in demos.actions], [True] * 8, "cpu")
    with torch.no_grad():
        log_p = no_backspace_log_prob(policy(tokens), tokens, mask)
    assert m["policy/nll_data"] == pytest.approx(float(-log_p.mean()), rel=1e-5)
    assert m["policy/ce"] == pytest.approx(float(-log_p.sum() / mask.sum()), rel=1e-5)
    assert value.item() == pytest.approx(4 * math.log(2) + 0.5 * m["policy/ce"], rel=1e-5)
    value.backward()
    assert policy.wte.weight.grad is not None and policy.wte.weight.grad.abs().sum() > 0
    assert {id(p) for p in policy.parameters()} <= {id(p) for p in learner.parameters()}


def test_no_backspace_log_prob_is_the_rollout_sampling_distribution():

    policy = make_tiny_policy(TASK, 3)
    res = rollout(
        policy,
        make_vector_env(TASK, 6, "cpu"),
        seed=0,
        generator=torch.Generator().manual_seed(0),
        allow_backspace=False,
    )
    tokens, mask = sequence_batch(res.sequences(), res.terminated.tolist(), "cpu")
    with torch.no_grad():
        log_q = no_backspace_log_prob(policy(tokens), tokens, mask)
    # one pass vs KV-cached rollout: per step the rounding bound of forward + log-softmax, summed over the steps
    per_step = policy_atol(
        policy.config, tokens.shape[1], res.log_probs.abs().max().item(), extra_terms=TASK.tokenizer.vocab_size
    )
    torch.testing.assert_close(log_q, res.log_probs.sum(1), atol=per_step * tokens.shape[1], rtol=0)


@pytest.mark.slow
def test_critic_separates_oracle_data_from_noise():
    # noise = an untrained policy (near-uniform tokens); the critic must tell held-out oracle data from it
    learner = _learner(make_tiny_policy(TASK), batch_size=16, nu=1)
    _train(learner, steps=25)
    results = [learner.sample_noise() for _ in range(4)]  # 64 fresh noise samples
    noise = [s for r in results for s in r.sequences()]
    terminated = [t for r in results for t in r.terminated.tolist()]
    data = [d[:-1] for d in _demos(len(noise), seed=5, split="valid").actions]
    tokens, mask = sequence_batch(data + noise, [True] * len(data) + terminated, "cpu")
    with torch.no_grad():
        h = -learner.critic(tokens, mask) - learner.critic.log_normalizer  # log nu = 0
    n = len(data)
    accuracy = float(((h[:n] > 0).sum() + (h[n:] < 0).sum()) / len(h))
    assert accuracy > 0.8, accuracy  # chance is 0.5


def _train_mle(policy, steps, batch_size=32):

    data = DemoSampler(TASK, "train", torch.Generator().manual_seed(1))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        batch = collate(data.sample(batch_size).actions)
        logits = policy(batch.tokens)[:, :-1]
        loss = torch.nn.functional.cross_entropy(
            logits[batch.is_action[:, 1:]], batch.tokens[:, 1:][batch.is_action[:, 1:]]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()


# ---------------------------------------------------------------------------
# the self-adapting noise distribution inside the learner
# ---------------------------------------------------------------------------


def test_snapshot_refreshes_every_k_steps_while_the_policy_trains(tiny_policy):
    policy = tiny_policy
    learner = _learner(policy, batch_size=4, refresh_every=3, policy_objective="self_adapting_nce", ce_weight=1.0)
    opt = torch.optim.AdamW(learner.parameters(), lr=1e-2)
    data = DemoSampler(TASK, "train", torch.Generator().manual_seed(0))
    policy_before, snapshots, ages, refreshed = [], [], [], []
    for step in range(8):
        policy_before.append(policy.wte.weight.detach().clone())
        loss, m = learner.loss(data.sample(4), step)
        snapshots.append(learner.snapshot.module.wte.weight.clone())
        ages.append(m["noise/snapshot_age"])
        refreshed.append(m["noise/refreshed"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert ages == [0, 1, 2, 0, 1, 2, 0, 1]
    assert refreshed == [1, 0, 0, 1, 0, 0, 1, 0]
    changed = [step for step in range(1, 8) if not torch.equal(snapshots[step], snapshots[step - 1])]
    assert changed == [3, 6]
    for step in range(8):  # the snapshot is the policy as it was when the step began, at steps 0, 3, 6
        assert torch.equal(snapshots[step], policy_before[3 * (step // 3)])
    assert not torch.equal(policy.wte.weight, policy_before[0])  # the policy did train
    assert 0 < learner.loss(data.sample(4), 8)[1]["noise/ess"] <= 1


def test_state_dict_round_trip_restores_critic_and_snapshot_exactly(tiny_policy):
    policy = tiny_policy
    a = _learner(policy, batch_size=4, refresh_every=2, policy_objective="self_adapting_nce")
    _train(a, steps=3, batch_size=4)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)  # plain tensors/dicts/numbers only
    b = _learner(
        make_tiny_policy(TASK, seed=7), batch_size=4, seed=9, refresh_every=2, policy_objective="self_adapting_nce"
    )
    b.policy.load_state_dict(policy.state_dict())
    b.load_state_dict(state)
    assert b.snapshot.last_refresh_step == a.snapshot.last_refresh_step == 2
    for (k, v), w in zip(a.snapshot.module.state_dict().items(), b.snapshot.module.state_dict().values()):
        assert torch.equal(v, w), k
    for (k, v), w in zip(a.critic.state_dict().items(), b.critic.state_dict().values()):
        assert torch.equal(v, w), k
    b.sampler.seed_generator.set_state(a.sampler.seed_generator.get_state())
    b.sampler.sample_generator.set_state(a.sampler.sample_generator.get_state())
    demos = _demos(4, seed=3)
    assert a.loss(demos, 3)[0].item() == b.loss(demos, 3)[0].item()


def test_bad_input():
    with pytest.raises(ValueError, match=r"NCEConfig.nu must be an integer >= 1, got 0"):
        NCEConfig(nu=0)
    with pytest.raises(ValueError, match=r"NCEConfig.refresh_every must be an integer >= 1, got 1.5"):
        NCEConfig(refresh_every=1.5)
    with pytest.raises(ValueError, match=r"policy_objective must be one of \('none', 'self_adapting_nce'\)"):
        NCEConfig(policy_objective="mle")
    with pytest.raises(ValueError, match=r"NCEConfig.loss must be one of"):
        NCEConfig(loss="hinge")
    with pytest.raises(ValueError, match=r"ce_weight must be a finite number >= 0, got -1"):
        NCEConfig(ce_weight=-1)
    learner = _learner(make_tiny_policy(TASK), batch_size=2)
    with pytest.raises(ValueError, match="do not end with eos"):
        learner.loss(Demos([[], []], [[5, 6, 2], [5, 6]]), 0)
    ranking = _learner(make_tiny_policy(TASK), batch_size=2, loss="ranking", nu=2)
    with pytest.raises(ValueError, match=r"nu=2 noise samples: expected 2 demonstrations \(the batch size\), got 3"):
        ranking.loss(_demos(3), 0)
    conditional = copy.copy(TASK)
    conditional.prompts = ["ab"]
    with pytest.raises(ValueError, match="task .oracle-hmm. has prompts but no prompt per training text"):
        p = make_tiny_policy(TASK)
        NCELearner(
            LearnerContext(p, p, conditional, torch.device("cpu"), {"noise": None, "sample": None}, 2), NCEConfig()
        )


# ---------------------------------------------------------------------------
# checkpoints: load_critic, generate.py --rerank critic
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A policy and a critic trained briefly against it, saved as an nce checkpoint and an mle one."""
    tmp = tmp_path_factory.mktemp("nce")
    policy = make_tiny_policy(TASK)
    _train_mle(policy, steps=20)
    learner = _learner(policy, batch_size=16)
    _train(learner, steps=20)
    return {
        "learner": learner,
        "policy": policy,
        "nce": _save(tmp / "nce.pt", "nce", policy, learner),
        "mle": _save(tmp / "mle.pt", "mle", policy),
    }


@pytest.mark.slow
def test_load_critic_round_trip_and_errors(trained, tmp_path):
    critic = load_critic(trained["nce"], "cpu")
    assert not critic.training and not any(p.requires_grad for p in critic.parameters())
    tokens, mask = sequence_batch([[5, 6, 7], [8]], [True, False], "cpu")
    with torch.no_grad():
        torch.testing.assert_close(critic(tokens, mask), trained["learner"].critic(tokens, mask))
    assert critic.log_normalizer.item() == trained["learner"].critic.log_normalizer.item() != 0.0
    with pytest.raises(CheckpointError, match=r"is not an nce checkpoint \(agent 'mle', no critic\)"):
        load_critic(trained["mle"], "cpu")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("hello world\nfoo bar\n")
    with pytest.raises(CheckpointError, match=r"different tokenizer than task 'file:.*corpus.txt'"):
        load_critic(trained["nce"], "cpu", f"file:{corpus}")
    # same tokenizer, longer sequences than the critic (block_size 26) reads; the policy could read them
    longer = copy.copy(TASK)
    longer.max_length = 40
    big_policy = TransformerPolicy(
        PolicyConfig(vocab_size=TASK.tokenizer.vocab_size, block_size=41, n_layer=1, n_head=2, n_embd=32)
    )
    path = _save(tmp_path / "big.pt", "nce", big_policy, trained["learner"])
    with pytest.raises(CheckpointError, match=r"max_length 40 but the critic in .* at most 25 tokens"):
        load_critic(path, "cpu", longer)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_critic(tmp_path / "missing.pt", "cpu")


def _generate_module():
    return generate_script


def test_generate_rerank_critic_picks_one_candidate_per_output(trained):
    gen = _generate_module()
    n, k = 6, 4
    reranked = gen.run(
        gen.GenerateConfig(
            checkpoint=trained["nce"], rerank="critic", critic=trained["nce"], candidates=k, num_samples=n, device="cpu"
        )
    )
    # the same seed and a single batch: rerank="none" with n*k samples draws exactly the candidates
    candidates = gen.run(
        gen.GenerateConfig(checkpoint=trained["nce"], num_samples=n * k, batch_size=n * k, device="cpu")
    )
    assert len(reranked) == n
    for i, text in enumerate(reranked):
        assert text in candidates[i * k : (i + 1) * k]
    with pytest.raises(CheckpointError, match="is not an nce checkpoint"):
        gen.run(
            gen.GenerateConfig(
                checkpoint=trained["mle"], rerank="critic", critic=trained["mle"], num_samples=2, device="cpu"
            )
        )
