"""Issue 11: the residual-EBM critic recipe (fixed noise pool, trunk init, held-out
evaluation, early stopping), the conditional critic on a paired task and per-prompt reranking."""

import math

import pytest
import torch
from tiny import make_tiny_policy

from agents.common.callbacks import CriticEvalCallback
from agents.common.demos import DemoSampler
from agents.common.learner import LearnerContext
from agents.common.rollout import generate
from agents.critic import CriticConfig, SequenceCritic, critic_batch
from agents.generation import generate_reranked, generation_prompts
from agents.nce import NCEConfig, NCELearner
from agents.trainer import Callback, ModelConfig, TrainConfig, Trainer
from seqenv.tasks import make_task
from seqenv.tokenizers import BOS_ID, EOS_ID, PAD_ID

ORACLE = make_task("oracle-hmm")
ARITH = make_task("arithmetic")
TINY = dict(critic_n_layer=1, critic_n_head=2, critic_n_embd=32)


def _learner(task, policy, batch_size=4, seed=0, **kw):
    gens = {"noise": torch.Generator().manual_seed(seed), "sample": torch.Generator().manual_seed(seed + 1)}
    torch.manual_seed(seed)
    ctx = LearnerContext(
        model=policy, policy=policy, task=task, device=torch.device("cpu"), generators=gens, batch_size=batch_size
    )
    return NCELearner(ctx, NCEConfig(**{**TINY, **kw}))


def test_critic_batch_reads_prompt_and_completion():
    tokens, mask = critic_batch([[7, 8], []], [[9], [10, 11]], [True, False])
    assert tokens.tolist() == [[BOS_ID, 7, 8, 9, EOS_ID], [BOS_ID, 10, 11, PAD_ID, PAD_ID]]
    assert mask.tolist() == [[False, True, True, True, True], [False, True, True, False, False]]
    with pytest.raises(ValueError, match="one prompt and one terminated flag per sequence"):
        critic_batch([[]], [[1], [2]], [True, True])


def test_init_from_policy_copies_the_trunk_and_keeps_a_zero_head():
    policy = make_tiny_policy(ORACLE, n_embd=32)
    critic = SequenceCritic(
        CriticConfig(
            vocab_size=ORACLE.tokenizer.vocab_size, block_size=ORACLE.max_length + 1, n_layer=1, n_head=2, n_embd=32
        )
    )
    critic.init_from_policy(policy)
    assert torch.equal(critic.wte.weight, policy.wte.weight)
    assert torch.equal(critic.wpe.weight, policy.wpe.weight)
    assert torch.equal(critic.blocks[0].attn.c_attn.weight, policy.blocks[0].attn.c_attn.weight)
    assert torch.equal(critic.ln_f.weight, policy.ln_f.weight)
    tokens, mask = critic_batch(None, [[5, 6], [7]], [True, True])
    assert critic(tokens, mask).tolist() == [0.0, 0.0]  # head still zero: residual model = policy
    wide = SequenceCritic(CriticConfig(vocab_size=ORACLE.tokenizer.vocab_size, block_size=26, n_embd=64))
    with pytest.raises(ValueError, match=r"differs from the policy's"):
        wide.init_from_policy(policy)


def test_learner_init_from_policy_takes_the_policy_sizes():
    policy = make_tiny_policy(ORACLE, n_embd=32)
    learner = _learner(ORACLE, policy, init_from_policy=True, critic_n_embd=128, critic_n_layer=3)
    assert (learner.critic.config.n_layer, learner.critic.config.n_embd) == (1, 32)
    assert torch.equal(learner.critic.blocks[0].mlp.c_fc.weight, policy.blocks[0].mlp.c_fc.weight)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(noise_pool=-1), r"noise_pool must be an integer >= 0, got -1"),
        (dict(patience=2, eval_every=0), r"patience=2 needs eval_every >= 1"),
        (dict(eval_size=0), r"eval_size must be an integer >= 1, got 0"),
    ],
)
def test_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        NCEConfig(**kw)


def test_fixed_pool_is_drawn_once_and_batches_come_from_it():
    learner = _learner(ORACLE, make_tiny_policy(ORACLE), batch_size=4, noise_pool=10, nu=2)
    demos = DemoSampler(ORACLE, "train", torch.Generator().manual_seed(0)).sample(4)
    learner.loss(demos, 0)
    pool = learner.pool
    assert len(pool["sequences"]) == 10
    for _ in (1, 2):
        prompts, seqs, term = learner._noise_batch(demos, refreshed=True)  # frozen policy: never redrawn
        assert learner.pool is pool and len(seqs) == 8
        assert all(s in pool["sequences"] for s in seqs)


def test_conditional_noise_shares_the_data_prompts_and_pool_cycles_train_prompts():
    policy = make_tiny_policy(ARITH)
    learner = _learner(ARITH, policy, batch_size=3, nu=2)
    demos = DemoSampler(ARITH, "train", torch.Generator().manual_seed(0)).sample(3)
    learner.snapshot.maybe_refresh(policy, 0)
    prompts, seqs, term = learner._fresh_noise(demos.prompts)
    assert prompts == [p for p in demos.prompts for _ in range(2)]
    loss, m = learner.loss(demos, 0)
    # zero head, c = 0, nu = 2: h = -log 2 -> softplus(log 2) + 2 softplus(-log 2) = log 3 + 2 log 1.5
    assert float(loss.detach()) == pytest.approx(math.log(3) + 2 * math.log(1.5), abs=1e-5)
    pooled = _learner(ARITH, policy, batch_size=3, noise_pool=7)
    pooled.snapshot.maybe_refresh(policy, 0)
    pooled._draw_pool()
    train = ARITH.encoded_pairs("train")
    assert pooled.pool["prompts"] == [train[i][0] for i in range(7)]
    with pytest.raises(ValueError, match="ranking NCE on a prompted task"):
        _learner(ARITH, policy, loss="ranking", noise_pool=5)
    with pytest.raises(ValueError, match="needs an unconditional task"):
        _learner(ARITH, policy, policy_objective="self_adapting_nce")


def test_evaluate_critic_of_a_flat_critic():
    learner = _learner(ARITH, make_tiny_policy(ARITH), eval_size=16)
    m = learner.evaluate_critic()
    # E = 0, c = 0: h = 0 everywhere -> nothing classified correctly, loss 2 log 2, AUC 1/2, uniform weights
    assert m["critic_accuracy"] == 0.0
    assert m["critic_loss"] == pytest.approx(2 * math.log(2))
    assert m["critic_auc"] == pytest.approx(0.5)
    assert m["critic_weight_ess"] == pytest.approx(1.0)
    with torch.no_grad():
        learner.critic.log_normalizer.fill_(1.0)  # h = -1 < 0: every sample right, every real text wrong
    assert learner.evaluate_critic()["critic_accuracy"] == pytest.approx(0.5)


class _FakeTrainer:
    def __init__(self, max_steps):
        self.step, self.cfg, self.stopped, self.logged = 0, type("C", (), {"max_steps": max_steps})(), False, []

    @property
    def stop_requested(self):
        return self.stopped

    def log(self, metrics, step):
        self.logged.append(step)

    def request_stop(self):
        self.stopped = True


def _fake_evaluations(learner, losses: list) -> list:
    """Replace ``learner.evaluate_critic`` by one that returns the next of ``losses`` and marks the critic:
    it records the head bias at entry (in the returned list) and sets it to the evaluation's number."""
    losses, seen = iter(losses), []

    def fake_eval():
        seen.append(float(learner.critic.head.bias))
        with torch.no_grad():
            learner.critic.head.bias.fill_(len(seen))
        learner.last_eval = {"critic_loss": next(losses)}
        return dict(learner.last_eval)

    learner.evaluate_critic = fake_eval
    return seen


def test_early_stopping_restores_the_best_critic_and_stops_after_patience():
    learner = _learner(ORACLE, make_tiny_policy(ORACLE), eval_every=2, patience=2)
    (cb,) = learner.callbacks
    assert isinstance(cb, CriticEvalCallback)
    seen = _fake_evaluations(learner, [1.0, 0.5, 0.7, 0.6, 0.4])  # head bias at each evaluation's entry
    trainer = _FakeTrainer(max_steps=100)
    for step in range(1, 9):
        trainer.step = step
        cb.on_step_end(trainer, {})
        if trainer.stopped:
            break
    # evaluations at steps 2 (1.0), 4 (0.5, best), 6 (0.7), 8 (0.6): two without improvement -> stop at 8
    assert trainer.step == 8 and trainer.stopped and trainer.logged == [2, 4, 6, 8]
    assert learner.early_stop["best_step"] == 4 and learner.early_stop["best_loss"] == 0.5
    # the step-4 critic (marked 2) is restored and evaluated once more
    assert seen == [0.0, 1.0, 2.0, 3.0, 2.0]


def test_a_stop_asked_by_another_callback_ends_with_the_best_critic():
    learner = _learner(ORACLE, make_tiny_policy(ORACLE), eval_every=2, patience=10)
    (cb,) = learner.callbacks
    seen = _fake_evaluations(learner, [0.9, 0.5, 0.8, 0.7])
    trainer = _FakeTrainer(max_steps=100)
    for step in range(1, 6):
        trainer.step = step
        if step == 5:
            trainer.request_stop()  # e.g. a wall-clock limit, before the critic's callback runs
        cb.on_step_end(trainer, {})
    # evaluations at 2 (0.9), 4 (0.5, best) and at the stop (step 5, 0.8), then the step-4 critic is restored
    assert trainer.logged == [2, 4, 5] and learner.early_stop["best_step"] == 4
    assert seen == [0.0, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("keep_best", [True, False])
def test_keep_best_restores_the_best_critic_at_the_last_step_without_stopping(keep_best):
    learner = _learner(ORACLE, make_tiny_policy(ORACLE), eval_every=2, keep_best=keep_best)
    (cb,) = learner.callbacks
    seen = _fake_evaluations(learner, [0.9, 0.5, 0.8, 0.7, 0.6])
    trainer = _FakeTrainer(max_steps=8)
    for step in range(1, 9):
        trainer.step = step
        cb.on_step_end(trainer, {})
    assert not trainer.stopped and trainer.logged == [2, 4, 6, 8]  # two evaluations without a gain: no stop
    if keep_best:  # the step-4 critic (marked 2) is restored at step 8 and evaluated once more
        assert learner.early_stop["best_step"] == 4 and seen == [0.0, 1.0, 2.0, 3.0, 2.0]
        assert float(learner.critic.head.bias) == 5.0
    else:  # the last critic stays
        assert learner.early_stop["best_step"] is None and seen == [0.0, 1.0, 2.0, 3.0]
        assert float(learner.critic.head.bias) == 4.0


def test_trainer_request_stop_ends_the_run_like_a_finished_one(tmp_path):
    class StopAt3(Callback):
        def on_step_end(self, trainer, metrics):
            if trainer.step == 3:
                trainer.request_stop()

    cfg = TrainConfig(
        agent="mle",
        task="oracle-hmm",
        max_steps=50,
        batch_size=4,
        logdir=str(tmp_path / "run"),
        device="cpu",
        progress=False,
        eval_samples=4,
        warmup_steps=1,
        model=ModelConfig(n_layer=1, n_head=2, n_embd=16),
    )
    trainer = Trainer(cfg, callbacks=[StopAt3()])
    metrics = trainer.train()
    trainer.close()
    assert trainer.step == 3 and metrics is not None
    assert (tmp_path / "run" / "metrics.json").exists()
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_nce_run_logs_held_out_critic_metrics(tmp_path):
    init = tmp_path / "mle"
    cfg = TrainConfig(
        agent="mle",
        task="arithmetic",
        max_steps=2,
        batch_size=4,
        logdir=str(init),
        device="cpu",
        progress=False,
        eval_samples=4,
        warmup_steps=1,
        model=ModelConfig(n_layer=1, n_head=2, n_embd=16),
    )
    t = Trainer(cfg)
    t.train()
    t.close()
    cfg = TrainConfig(
        agent="nce",
        task="arithmetic",
        init=str(init / "checkpoint.pt"),
        max_steps=4,
        batch_size=4,
        logdir=str(tmp_path / "nce"),
        device="cpu",
        progress=False,
        eval_samples=4,
        warmup_steps=1,
        nce=NCEConfig(noise_pool=8, init_from_policy=True, eval_every=2, eval_size=8, patience=3),
    )
    t = Trainer(cfg)
    metrics = t.train()
    t.close()
    assert [h["step"] for h in t.learner.eval_history] == [2, 4]
    assert 0.0 <= metrics["critic_accuracy"] <= 1.0 and metrics["critic_best_step"] in (2, 4)
    assert t.learner.critic.config.n_embd == 16


def test_generate_with_prompts_and_per_prompt_reranking():
    policy = make_tiny_policy(ARITH)
    prompts = ["In base 10, what is 1 + 1? ", "In base 2, what is 1 + 1? ", "In base 10, what is 1 + 1? "]
    (res,) = generate(policy, ARITH, 3, prompts=prompts, seed=0, allow_backspace=False)
    assert [ARITH.tokenizer.decode(p) for p in res.prompts()] == prompts
    with pytest.raises(ValueError, match="one prompt per sample"):
        generate(policy, ARITH, 2, prompts=prompts)
    want = generation_prompts(ARITH, 5, seed=3)
    assert want == generation_prompts(ARITH, 5, seed=3) and set(want) <= set(ARITH.split_prompt_texts("test"))
    critic = SequenceCritic(
        CriticConfig(
            vocab_size=ARITH.tokenizer.vocab_size, block_size=ARITH.max_length + 1, n_layer=1, n_head=2, n_embd=16
        )
    )
    torch.nn.init.normal_(critic.head.weight)
    g = generate_reranked(policy, ARITH, 5, rerank="critic", candidates=4, critic=critic, seed=3)
    assert [ARITH.tokenizer.decode(p) for p in g.prompts] == want  # each output's 4 candidates share its prompt
    assert g.ess.shape == (5,) and bool(((g.ess >= 1) & (g.ess <= 4)).all())
    raw = generate_reranked(policy, ARITH, 5, seed=3)
    assert [ARITH.tokenizer.decode(p) for p in raw.prompts] == want and raw.ess is None
    assert generation_prompts(ORACLE, 5, seed=0) is None
