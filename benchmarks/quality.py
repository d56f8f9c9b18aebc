"""Quality of generation: MLE, MLE + backspace, SequenceMatch, E-ARM (and NCE critics), same budget.

Its ``main`` experiment is ported to ``python -m benchmarks run quality`` (``benchmarks/experiments/
quality.toml``: complete arm configs, paired statistics, temperature sweep). Here SequenceMatch runs with
today's defaults apart from α and p, so this script no longer produces the SequenceMatch rows of the
committed ``quality.md`` (made with the defaults of its time: α 10, wrong tokens imitated, uniform).

    python benchmarks/quality.py --quick          # every experiment on a small budget (< 30 min on a 2-core CPU)
    python benchmarks/quality.py                  # the default budget; see --help for every knob
    python benchmarks/quality.py --render-only    # re-draw quality.md and the plots from quality.json

Writes ``quality.md`` (Markdown tables, mean ± std over seeds), ``quality.json``
(every run's raw numbers) and PNG plots into ``--out-dir``
(``benchmarks/results``); run directories go under ``--scratch``
(``runs/quality``, git-ignored).

Experiments (``--experiments``, default all):

* ``main`` -- MLE, MLE + backspace noise (``mle.backspace_p``), SequenceMatch
  and E-ARM on every ``--tasks`` task, ``--seeds`` seeds (the SequenceMatch
  and E-ARM issues).
* ``ablation_p`` -- noise rate p of the backspace demonstrations, for
  SequenceMatch and MLE + backspace (``--ablation-tasks``, oracle task by default).
* ``ablation_alpha`` -- SequenceMatch's χ² scale α (``agents/sequencematch.py``
  explains why our default is 10, not the paper's 0.01).
* ``earm_sweep`` -- E-ARM λ × start step, in the spirit of the paper's Table 4
  (λ ∈ {0.01, 0.05, 0.1, 0.5}; starts at fractions of the run as 5/15/25 of 40 epochs).
* ``nce_k`` -- self-adapting NCE with snapshot refresh interval K ∈ {1, 10,
  100, 1000} (:func:`run_nce`): raw samples of the NCE-trained policy,
  critic-reranked samples of it (``scripts/generate.py --rerank critic``) and
  PPO with the critic as reward started from it (``scripts/ppo_critic.py``,
  ``--ppo-timesteps``). Skipped with ``--no-nce``.

What "same budget" means here (every method of one invocation):

* same policy size (``--model-size``), same task data, ``--steps`` optimiser
  steps of ``--batch-size`` demonstrations each (the same number of
  demonstration tokens up to sampling), same optimiser and lr schedule
  (AdamW, linear warm-up, cosine to 0.1 × lr over ``--steps``);
* SequenceMatch and E-ARM *fork the MLE run* of the same task and seed at
  step ``W = --warm-steps`` (the paper's MLE warm start): the MLE run's
  checkpoint at step W -- model, optimiser, lr schedule, random streams --
  is resumed with the other objective for the remaining ``steps - W`` steps.
  Their first W steps therefore *are* the MLE run's, and their cost counts
  the MLE run's seconds for those steps.
* MLE + backspace trains from scratch for all ``steps`` on augmented
  demonstrations (the injected wrong tokens are never targets).
* compute beyond data is not equalised: SequenceMatch also trains on a batch
  of model samples per step and rolls the policy out every
  ``refresh_every`` steps; E-ARM draws one negative sample per demonstration.
  That extra compute is what the cost ratios measure.

Metrics: :func:`agents.common.evaluation.evaluate_policy` on the final policy
(``--eval-samples`` episodes, sampling seed = the run's seed, so every method
of a seed is evaluated with the same seed) and
:func:`agents.common.evaluation.recovery` (``--recovery-samples`` episodes).
Training cost: wall-clock seconds of the optimiser steps (evaluation
excluded; checkpoint writes included), per step and per demonstration
token, of the method's own steps (the steps after the fork), and the ratio
to the MLE run of the same task and seed measured in this invocation. The
machine is shared, so cost ratios carry the noise of its load.

A run that fails (non-finite loss, any exception) is recorded as failed with
its error; the benchmark goes on. ``quality.json`` is rewritten after every
run, so a killed benchmark keeps what it finished.

[recon] choices of this harness, none from a paper: the fork protocol above;
the "beyond the seed spread" rule (a difference of means larger than the sum
of the two sample standard deviations, ddof = 1); oracle support standing in
for validity on the oracle task (it has no validity checker); the E-ARM start
steps as fractions 1/8, 3/8, 5/8 of the run (5, 15, 25 of 40 epochs); the
NCE protocol of :func:`run_nce` (start from the MLE checkpoint at W with a
fresh optimiser, critic as large as the policy, reranking among 8 candidates).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import re
import shlex
import statistics
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch

from agents.common.checkpoint import load_checkpoint, save_checkpoint
from agents.common.evaluation import evaluate_samples, format_metrics_table, recovery, validity_rate
from agents.common.rollout import generate
from agents.common.rundir import RunDirectory
from agents.critic import load_critic
from agents.earm import EARMConfig
from agents.generation import rerank_critic
from agents.mle import MLEConfig
from agents.nce import NCEConfig
from agents.sb3.critic_reward import PPOCriticConfig
from agents.sb3.critic_reward import run as run_ppo
from agents.sequencematch import SequenceMatchConfig
from agents.trainer import Callback, ModelConfig, TrainConfig, Trainer
from seqenv.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("main", "ablation_p", "ablation_alpha", "earm_sweep", "nce_k")
MAIN_METHODS = ("mle", "mle_backspace", "sequencematch", "earm")
MODEL_SIZES = {"tiny": (1, 2, 32), "small": (2, 4, 128), "default": (4, 4, 128)}  # n_layer, n_head, n_embd
P_GRID = (0.0, 0.02, 0.05, 0.1, 0.2)
ALPHA_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)
LAMBDA_GRID = (0.01, 0.05, 0.1, 0.5)
START_FRACTIONS = (0.125, 0.375, 0.625)
K_GRID = (1, 10, 100, 1000)
MAIN_P = 0.05  # MLE + backspace in `main`: the SequenceMatch learner's default noise rate
#: metric keys of the tables; the recovery probe's and the cost's come after evaluate_policy's
QUALITY_COLUMNS = (
    "validity",
    "oracle_support",
    "oracle_nll",
    "oracle_nll_in_support",
    "nll",
    "perplexity",
    "bleu4",
    "self_bleu4",
    "distinct_2",
    "mean_length",
    "backspace_rate",
    "terminated_rate",
)
RECOVERY_COLUMNS = ("recovery_backspace", "recovery_deleted", "recovery_validity")
COST_COLUMNS = ("method_s_per_step", "method_ms_per_token", "cost_ratio_token", "total_s", "cost_ratio_total")
RERANK_COLUMNS = (
    "rerank_validity",
    "rerank_oracle_support",
    "rerank_oracle_nll",
    "rerank_oracle_nll_in_support",
    "rerank_bleu4",
    "rerank_self_bleu4",
    "rerank_distinct_2",
    "rerank_mean_length",
    "rerank_ess",
)
PPO_COLUMNS = (
    "ppo_validity",
    "ppo_oracle_support",
    "ppo_oracle_nll",
    "ppo_oracle_nll_in_support",
    "ppo_bleu4",
    "ppo_self_bleu4",
    "ppo_distinct_2",
    "ppo_mean_length",
    "ppo_backspace_rate",
    "ppo_critic_reward",
    "ppo_kl_to_init",
    "ppo_s",
)
ALL_COLUMNS = (*QUALITY_COLUMNS, *RECOVERY_COLUMNS, *COST_COLUMNS, *RERANK_COLUMNS, *PPO_COLUMNS)
#: (metric, +1 = higher is better / -1 = lower is better) judged against MLE
VERDICT_METRICS = (
    ("validity", +1),
    ("oracle_support", +1),
    ("oracle_nll", -1),
    ("oracle_nll_in_support", -1),
    ("nll", -1),
)


# ----------------------------------------------------------------------------
# budget, run specification, run result


@dataclass
class Budget:
    """What every method of one invocation shares (module docstring, "same budget").

    :param steps: optimiser steps per run (warm start included).
    :param warm_steps: W, MLE steps before SequenceMatch / E-ARM take over (``0 <= W < steps``).
    :param batch_size: demonstrations per step.
    :param model_size: a key of :data:`MODEL_SIZES`.
    :param lr: peak learning rate; ``warmup_steps`` of linear warm-up (at most ``steps``).
    :param eval_samples: episodes generated by the final evaluation.
    :param recovery_samples: episodes of the recovery probe.
    :param rerank_candidates: candidates per output of the NCE reranking.
    :raises ValueError: naming the bad field and value.
    """

    steps: int = 260
    warm_steps: int = 130
    batch_size: int = 32
    model_size: str = "small"
    lr: float = 2e-3
    warmup_steps: int = 20
    eval_samples: int = 256
    recovery_samples: int = 128
    rerank_candidates: int = 8

    def __post_init__(self):
        for name in ("steps", "batch_size", "eval_samples", "recovery_samples", "rerank_candidates"):
            if getattr(self, name) < 1:
                raise ValueError(f"Budget.{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warm_steps < self.steps:
            raise ValueError(f"Budget.warm_steps must be in [0, steps={self.steps}), got {self.warm_steps}")
        if self.model_size not in MODEL_SIZES:
            raise ValueError(f"Budget.model_size must be one of {sorted(MODEL_SIZES)}, got {self.model_size!r}")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError(f"need lr > 0 and warmup_steps >= 0, got {self.lr}, {self.warmup_steps}")
        self.warmup_steps = min(self.warmup_steps, self.steps)

    def model(self) -> ModelConfig:
        """The policy size of :data:`MODEL_SIZES` ``[model_size]`` as a trainer :class:`ModelConfig`."""
        n_layer, n_head, n_embd = MODEL_SIZES[self.model_size]
        return ModelConfig(n_layer=n_layer, n_head=n_head, n_embd=n_embd)


@dataclass(frozen=True)
class RunSpec:
    """One training run: a method with its parameters on a task and a seed.

    :param method: a key of :data:`METHODS`.
    :param params: sorted ``(name, value)`` pairs, e.g. ``(("alpha", 1.0),)``;
        what they mean is the method's business. Two specs with equal fields
        are the same run, whichever experiments list it.
    """

    task: str
    seed: int
    method: str
    params: tuple = ()

    @property
    def label(self) -> str:
        """Row name of the tables, e.g. ``sequencematch α=1``."""
        names = {"alpha": "α", "p": "p", "lam": "λ", "start": "start", "k": "K"}
        return " ".join([self.method, *(f"{names.get(k, k)}={v:g}" for k, v in self.params)])

    @property
    def key(self) -> str:
        """A file-name-safe identifier (run directory name)."""
        return re.sub(
            r"[^A-Za-z0-9_.=-]+",
            "_",
            f"{self.task}/{self.method}-" + "-".join(f"{k}={v:g}" for k, v in self.params) + f"/seed{self.seed}",
        )

    def param(self, name: str, default=None):
        """The value of parameter ``name``, or ``default`` if the spec does not set it."""
        return dict(self.params).get(name, default)


@dataclass
class RunResult:
    """What one run reports; ``quality.json`` holds a list of these.

    Times in wall-clock seconds of optimiser steps (evaluation excluded).
    ``method_*`` count only the steps under the method's own objective (after
    the fork for SequenceMatch / E-ARM, all steps otherwise); ``total_*``
    include the MLE steps a fork inherits.
    """

    task: str
    seed: int
    method: str
    params: dict
    label: str
    status: str = "ok"  # "ok" | "failed"
    error: str | None = None
    run_dir: str | None = None
    metrics: dict = field(default_factory=dict)
    total_steps: int = 0
    method_steps: int = 0
    total_s: float = 0.0
    method_s: float = 0.0
    total_data_tokens: int = 0
    method_data_tokens: int = 0
    eval_s: float = 0.0


# ----------------------------------------------------------------------------
# one Trainer run, timed by phase


@dataclass
class Phase:
    """Optimiser steps ``[start, stop)`` of one run: seconds (no evaluation) and demonstration tokens."""

    start: int
    stop: int
    seconds: float
    data_tokens: int


def train_in_phases(cfg: TrainConfig, stops: list[int], on_stop: Callable | None = None):
    """Run ``Trainer(cfg)`` until each step of ``stops`` in turn; time the optimiser steps of each phase.

    Demonstration tokens (each demonstration's tokens and its ``eos``) are
    counted at the trainer's data sampler; the time of the trainer's final
    evaluation is measured apart and not in any phase.

    :param stops: increasing steps, the last one the run's ``max_steps`` (for
        ``cfg.resume`` the saved config's).
    :param on_stop: ``on_stop(trainer, step)`` called after each phase (e.g.
        to copy the checkpoint at a fork point); not timed.
    :return: ``(trainer, final metrics dict, [Phase], evaluation seconds)``.
        The trainer is closed; its ``policy`` stays usable.
    :raises ValueError: if ``stops`` is not increasing or does not end at ``max_steps``.
    :raises agents.trainer.NonFiniteLossError: as :meth:`Trainer.train`.
    """
    trainer = Trainer(cfg)
    end = trainer.cfg.max_steps
    if not stops or stops[-1] != end or any(b <= a for a, b in zip(stops, stops[1:])) or stops[0] <= trainer.step:
        trainer.close()
        raise ValueError(f"stops must increase from step {trainer.step} and end at max_steps={end}, got {stops}")
    counter = PhaseCounter()
    trainer.callbacks.append(counter)
    phases, metrics = [], None
    try:
        for stop in stops:
            start, tokens0, eval0, t0 = trainer.step, counter.tokens, counter.eval_s, time.perf_counter()
            metrics = trainer.train(stop_at=stop)
            seconds = time.perf_counter() - t0 - (counter.eval_s - eval0)
            phases.append(Phase(start, trainer.step, seconds, counter.tokens - tokens0))
            if on_stop is not None:
                on_stop(trainer, trainer.step)
    finally:
        trainer.close()
    return trainer, metrics, phases, counter.eval_s


class PhaseCounter(Callback):
    """Counts demonstration tokens (each demonstration's actions, ``eos`` included) and times evaluations.

    An evaluation is timed from its start to the end of :meth:`Trainer.evaluate`
    (the sample panel included), so that the final evaluation is measured
    apart from the optimiser steps.
    """

    def __init__(self):
        self.tokens, self.eval_s, self._t0 = 0, 0.0, 0.0

    def on_batch(self, trainer, demos) -> None:
        self.tokens += sum(len(a) for a in demos.actions)

    def on_evaluate_start(self, trainer) -> None:
        self._t0 = time.perf_counter()

    def on_evaluate(self, trainer, metrics) -> None:
        self.eval_s += time.perf_counter() - self._t0


# ----------------------------------------------------------------------------
# the benchmark context: budget, scratch directory, the MLE runs forks start from


class Bench:
    """Shared state of one invocation: budget, where runs go, finished runs.

    :param budget: the shared :class:`Budget`.
    :param scratch: directory of the run directories.
    :param device: torch device name for training and evaluation.
    :param log: ``log(str)`` for progress lines.
    :param ppo_timesteps: env steps of PPO with the critic reward in ``nce_k`` (0 = no PPO).
    """

    def __init__(
        self, budget: Budget, scratch: Path, device: str = "cpu", log: Callable = print, ppo_timesteps: int = 0
    ):
        self.budget, self.scratch, self.device, self.log = budget, Path(scratch), device, log
        self.ppo_timesteps = ppo_timesteps
        self.fork_points: dict[tuple[str, int], set[int]] = {}  # (task, seed) -> steps to copy the MLE checkpoint at
        self.forks: dict[tuple[str, int, int], str] = {}  # (task, seed, step) -> checkpoint path
        self.mle_phases: dict[tuple[str, int], list[Phase]] = {}
        self.results: dict[RunSpec, RunResult] = {}

    def config(self, spec: RunSpec, agent: str, **sections) -> TrainConfig:
        """The TrainConfig of ``spec`` under the shared budget; ``sections`` replace e.g. ``mle=MLEConfig(...)``."""
        b = self.budget
        return TrainConfig(
            agent=agent,
            task=spec.task,
            logdir=str(self.scratch / spec.key),
            seed=spec.seed,
            max_steps=b.steps,
            device=self.device,
            batch_size=b.batch_size,
            lr=b.lr,
            warmup_steps=b.warmup_steps,
            ckpt_every=b.steps,
            log_every=max(1, b.steps // 20),
            eval_samples=b.eval_samples,
            progress=False,
            model=b.model(),
            overwrite=True,
            **sections,
        )  # scratch runs are redone, never resumed

    def mle_seconds_until(self, task: str, seed: int, step: int) -> tuple[float, int]:
        """Seconds and demonstration tokens the MLE run of (task, seed) spent on its first ``step`` steps."""
        phases = self.mle_phases[(task, seed)]
        done = [p for p in phases if p.stop <= step]
        if (done[-1].stop if done else 0) != step:
            raise ValueError(f"MLE run of {task!r} seed {seed} has no phase boundary at step {step}")
        return sum(p.seconds for p in done), sum(p.data_tokens for p in done)

    def fork(self, spec: RunSpec, step: int, agent: str, **sections) -> tuple[Trainer, dict, list[Phase], float]:
        """Continue the MLE run of ``spec``'s task and seed from step ``step`` with another objective.

        The MLE checkpoint at ``step`` (model, optimiser, scheduler, random
        streams) is copied into ``spec``'s run directory with its saved
        config switched to ``agent`` / ``sections`` and resumed there
        (:class:`Trainer`'s ``resume``), so the run ends at ``--steps`` on
        the MLE run's lr schedule. ``step = 0`` starts from scratch.
        """
        cfg = self.config(spec, agent, **sections)
        if step == 0:
            return train_in_phases(cfg, [cfg.max_steps])
        run_dir = Path(cfg.logdir)
        state = load_checkpoint(self.forks[(spec.task, spec.seed, step)])
        state["config"] = cfg.to_dict()
        state["agent"] = agent
        with RunDirectory(run_dir, overwrite=True, script="train.py") as guard:  # a scratch run is redone
            guard.start()
            save_checkpoint(state, run_dir / "checkpoint.pt")
        resumed = TrainConfig(logdir=str(run_dir), resume=True, device=self.device, progress=False)
        return train_in_phases(resumed, [cfg.max_steps])


def finish(
    bench: Bench,
    spec: RunSpec,
    trainer: Trainer,
    metrics: dict,
    method_phases: list[Phase],
    eval_s: float,
    inherited: tuple[float, int] = (0.0, 0),
) -> RunResult:
    """RunResult of a finished run: its metrics plus the recovery probe, its cost."""
    rec = recovery(
        trainer.policy, trainer.task, num_samples=bench.budget.recovery_samples, device=trainer.device, seed=spec.seed
    )
    method_s = sum(p.seconds for p in method_phases)
    method_tokens = sum(p.data_tokens for p in method_phases)
    return RunResult(
        task=spec.task,
        seed=spec.seed,
        method=spec.method,
        params=dict(spec.params),
        label=spec.label,
        run_dir=str(trainer.logdir),
        metrics={**metrics, **rec},
        total_steps=trainer.step,
        method_steps=sum(p.stop - p.start for p in method_phases),
        total_s=inherited[0] + method_s,
        method_s=method_s,
        total_data_tokens=inherited[1] + method_tokens,
        method_data_tokens=method_tokens,
        eval_s=eval_s,
    )


# ----------------------------------------------------------------------------
# methods: spec -> RunResult (the registry)


def run_mle(spec: RunSpec, bench: Bench) -> RunResult:
    """Plain MLE for ``--steps``; checkpoints are copied at every step a fork of it needs."""
    cfg = bench.config(spec, "mle")
    points = sorted(s for s in bench.fork_points.get((spec.task, spec.seed), ()) if 0 < s < cfg.max_steps)

    def keep_fork(trainer, step):
        if step < cfg.max_steps:
            path = Path(cfg.logdir) / f"fork-{step}.pt"
            save_checkpoint(trainer.checkpoint_state(), path)
            bench.forks[(spec.task, spec.seed, step)] = str(path)

    trainer, metrics, phases, eval_s = train_in_phases(cfg, [*points, cfg.max_steps], keep_fork)
    bench.mle_phases[(spec.task, spec.seed)] = phases
    return finish(bench, spec, trainer, metrics, phases, eval_s)


def run_mle_backspace(spec: RunSpec, bench: Bench) -> RunResult:
    """MLE on backspace-augmented demonstrations (``mle.backspace_p = p``), from scratch."""

    cfg = bench.config(spec, "mle", mle=MLEConfig(backspace_p=float(spec.param("p"))))
    trainer, metrics, phases, eval_s = train_in_phases(cfg, [cfg.max_steps])
    return finish(bench, spec, trainer, metrics, phases, eval_s)


def run_sequencematch(spec: RunSpec, bench: Bench) -> RunResult:
    """SequenceMatch with ``alpha`` and noise rate ``p``, forked from the MLE run at W.

    Every other field is :class:`agents.sequencematch.SequenceMatchConfig`'s default.
    """

    sm = SequenceMatchConfig(alpha=float(spec.param("alpha")), backspace_p=float(spec.param("p")))
    w = bench.budget.warm_steps
    trainer, metrics, phases, eval_s = bench.fork(spec, w, "sequencematch", sequencematch=sm)
    return finish(
        bench,
        spec,
        trainer,
        metrics,
        phases,
        eval_s,
        bench.mle_seconds_until(spec.task, spec.seed, w) if w else (0.0, 0),
    )


def run_earm(spec: RunSpec, bench: Bench) -> RunResult:
    """E-ARM with weight ``lam`` switched on at step ``start``, forked from the MLE run at ``start``."""

    start = int(spec.param("start"))
    earm = EARMConfig(lam=float(spec.param("lam")), start_step=start)
    trainer, metrics, phases, eval_s = bench.fork(spec, start, "earm", earm=earm)
    return finish(
        bench,
        spec,
        trainer,
        metrics,
        phases,
        eval_s,
        bench.mle_seconds_until(spec.task, spec.seed, start) if start else (0.0, 0),
    )


def run_nce(spec: RunSpec, bench: Bench) -> RunResult:
    """Self-adapting NCE with snapshot refresh interval ``k``, from the MLE run at W; raw vs reranked vs PPO.

    The NCE run (``TrainConfig(agent="nce")``, :class:`agents.nce.NCELearner`)
    starts from the MLE checkpoint at step W (``init``: the learner adds a
    critic, so the MLE optimiser state cannot carry over; the lr schedule
    restarts over the remaining ``steps - W`` steps) and trains the policy by
    self-adapting NCE against its own snapshot, refreshed every K steps, and a
    residual critic of the same size as the policy. Its final policy is then
    scored three ways, each with the run's seed:

    * raw samples (:func:`agents.common.evaluation.evaluate_policy`, the usual keys);
    * critic-reranked samples (``rerank_*`` keys): ``eval_samples ×
      rerank_candidates`` episodes, one kept per group by importance
      resampling ∝ ``exp(-E_ψ)`` (:func:`agents.generation.rerank_critic`, what
      ``scripts/generate.py --rerank critic`` does); ``rerank_ess`` is the mean
      effective sample size of a group;
    * PPO with the critic as reward and a KL penalty to the NCE policy
      (``scripts/ppo_critic.py``, ``ppo_*`` keys) when ``--ppo-timesteps > 0``.
    """

    b = bench.budget
    n_layer, n_head, n_embd = MODEL_SIZES[b.model_size]
    nce = NCEConfig(
        refresh_every=int(spec.param("k")),
        policy_objective="self_adapting_nce",
        critic_n_layer=n_layer,
        critic_n_head=n_head,
        critic_n_embd=n_embd,
    )
    w = b.warm_steps
    cfg = dataclasses.replace(
        bench.config(spec, "nce", nce=nce),
        max_steps=b.steps - w,
        init=bench.forks[(spec.task, spec.seed, w)] if w else None,
        warmup_steps=min(b.warmup_steps, b.steps - w),
        ckpt_every=b.steps - w,
    )
    trainer, metrics, phases, eval_s = train_in_phases(cfg, [cfg.max_steps])
    result = finish(
        bench,
        spec,
        trainer,
        metrics,
        phases,
        eval_s,
        bench.mle_seconds_until(spec.task, spec.seed, w) if w else (0.0, 0),
    )

    device, task, C = trainer.device, trainer.task, b.rerank_candidates
    critic = load_critic(trainer.ckpt_path, device, task)
    episodes = generate(trainer.policy, task, b.eval_samples * C, batch_size=256 * C, device=device, seed=spec.seed)
    seqs = [s for r in episodes for s in r.sequences()]
    actions = [a for r in episodes for a in r.action_lists()]
    terminated = [bool(t) for r in episodes for t in r.terminated.tolist()]
    choice, ess = rerank_critic(
        critic, seqs, terminated, C, torch.Generator(device=device).manual_seed(spec.seed), device
    )
    keep = [i * C + int(c) for i, c in enumerate(choice.tolist())]
    reranked = evaluate_samples(
        task, [seqs[i] for i in keep], action_histories=[actions[i] for i in keep], seed=spec.seed
    )
    result.metrics.update({f"rerank_{k}": v for k, v in reranked.items() if k in NCE_SAMPLE_KEYS})
    result.metrics["rerank_ess"] = float(ess.float().mean())
    if bench.ppo_timesteps > 0:
        ckpt = str(trainer.ckpt_path)
        n_envs = 32  # one PPO rollout = n_envs * n_steps actions; at least two rollouts in the budget
        ppo_cfg = PPOCriticConfig(
            checkpoint=ckpt,
            critic=ckpt,
            total_timesteps=bench.ppo_timesteps,
            num_envs=n_envs,
            n_steps=max(4, min(64, bench.ppo_timesteps // (2 * n_envs))),
            batch_size=256,
            logdir=str(Path(cfg.logdir) / "ppo"),
            device=bench.device,
            seed=spec.seed,
            eval_samples=b.eval_samples,
            progress=False,
            overwrite=True,
        )
        t0 = time.perf_counter()
        after = run_ppo(ppo_cfg)["after"]
        result.metrics["ppo_s"] = time.perf_counter() - t0
        result.metrics.update(
            {f"ppo_{k}": v for k, v in after.items() if k in (*NCE_SAMPLE_KEYS, "critic_reward", "kl_to_init")}
        )
    return result


#: sample metrics reported for reranked and PPO samples in ``nce_k``
NCE_SAMPLE_KEYS = (
    "validity",
    "oracle_support",
    "oracle_nll",
    "oracle_nll_in_support",
    "bleu4",
    "self_bleu4",
    "distinct_2",
    "mean_length",
    "backspace_rate",
)


#: method name -> (run function, fork step function). The fork step is the MLE
#: step the method starts from (``None``: it does not fork), so that the MLE run
#: of the same task and seed copies its checkpoint there.
METHODS: dict[str, tuple[Callable[[RunSpec, Bench], RunResult], Callable[[RunSpec, Budget], int | None]]] = {
    "mle": (run_mle, lambda spec, b: None),
    "mle_backspace": (run_mle_backspace, lambda spec, b: None),
    "sequencematch": (run_sequencematch, lambda spec, b: b.warm_steps),
    "earm": (run_earm, lambda spec, b: int(spec.param("start"))),
    "nce": (run_nce, lambda spec, b: b.warm_steps),
}


# ----------------------------------------------------------------------------
# experiments: which runs, and which rows of which table


def plan(
    experiments,
    tasks,
    seeds,
    ablation_tasks,
    ablation_seeds,
    budget: Budget,
    p_grid=P_GRID,
    alpha_grid=ALPHA_GRID,
    lambda_grid=LAMBDA_GRID,
    k_grid=K_GRID,
    sweep_seeds=None,
) -> dict[str, list[RunSpec]]:
    """The runs of each experiment, in order (a spec may appear in several).

    ``ablation_p`` and ``ablation_alpha`` run on ``ablation_seeds``,
    ``earm_sweep`` and ``nce_k`` on ``sweep_seeds`` (default: ``ablation_seeds``).
    ``p = 0`` of MLE + backspace is plain MLE and uses the ``mle`` run.
    :raises ValueError: on an unknown experiment name.
    """
    out: dict[str, list[RunSpec]] = {}
    for exp in experiments:
        if exp not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {exp!r}; expected some of {', '.join(EXPERIMENTS)}")
        specs: list[RunSpec] = []
        if exp == "main":
            for t in tasks:
                for s in seeds:
                    specs += [
                        RunSpec(t, s, "mle"),
                        RunSpec(t, s, "mle_backspace", (("p", MAIN_P),)),
                        RunSpec(t, s, "sequencematch"),
                        RunSpec(t, s, "earm"),
                    ]
        for t in ablation_tasks if exp != "main" else ():
            for s in ablation_seeds if exp in ("ablation_p", "ablation_alpha") or sweep_seeds is None else sweep_seeds:
                if exp == "ablation_p":
                    specs.append(RunSpec(t, s, "mle"))
                    specs += [RunSpec(t, s, "mle_backspace", (("p", p),)) for p in p_grid if p > 0]
                    specs += [RunSpec(t, s, "sequencematch", (("p", p),)) for p in p_grid]
                elif exp == "ablation_alpha":
                    specs += [RunSpec(t, s, "mle")] + [
                        RunSpec(t, s, "sequencematch", (("alpha", a),)) for a in alpha_grid
                    ]
                elif exp == "earm_sweep":
                    starts = sorted({max(1, round(f * budget.steps)) for f in START_FRACTIONS} - {budget.steps})
                    specs += [RunSpec(t, s, "mle")] + [
                        RunSpec(t, s, "earm", (("lam", lam), ("start", st))) for lam in lambda_grid for st in starts
                    ]
                elif exp == "nce_k":
                    specs += [RunSpec(t, s, "mle")] + [RunSpec(t, s, "nce", (("k", k),)) for k in k_grid]
        out[exp] = specs
    return out


def canonical(spec: RunSpec, budget: Budget) -> RunSpec:
    """The run that ``spec`` is, with every method parameter explicit, so that duplicates run once.

    SequenceMatch always carries ``alpha`` and ``p`` (defaults: those of
    :class:`agents.sequencematch.SequenceMatchConfig`), E-ARM ``lam`` (0.05)
    and ``start`` (W), MLE + backspace ``p`` (:data:`MAIN_P`): ``sequencematch``
    and ``sequencematch α=10`` of two experiments are one run.
    """

    d = SequenceMatchConfig()
    defaults = {
        "sequencematch": {"alpha": d.alpha, "p": d.backspace_p},
        "earm": {"lam": 0.05, "start": budget.warm_steps},
        "mle_backspace": {"p": MAIN_P},
    }.get(spec.method, {})
    params = {**defaults, **dict(spec.params)}
    return dataclasses.replace(spec, params=tuple(params.items()))


def run_all(bench: Bench, runs: dict[str, list[RunSpec]], on_result: Callable = lambda r: None) -> None:
    """Run every distinct spec of ``runs`` once (MLE first per task and seed); failures are recorded, not raised."""
    order: list[RunSpec] = []
    for specs in runs.values():
        for spec in specs:
            spec = canonical(spec, bench.budget)
            if spec not in order:
                order.append(spec)
    for spec in order:  # the MLE runs must know every step a fork needs
        step = METHODS[spec.method][1](spec, bench.budget)
        if step:
            bench.fork_points.setdefault((spec.task, spec.seed), set()).add(step)
            mle = RunSpec(spec.task, spec.seed, "mle")
            if mle not in order:
                order.append(mle)
    order.sort(key=lambda s: s.method != "mle")  # stable: MLE runs first, then in experiment order
    for i, spec in enumerate(order, 1):
        if spec in bench.results:
            continue
        t0 = time.perf_counter()
        try:
            needs = METHODS[spec.method][1](spec, bench.budget)
            mle = bench.results.get(RunSpec(spec.task, spec.seed, "mle"))
            if needs and (mle is None or mle.status != "ok"):
                raise RuntimeError(f"its MLE run (task {spec.task!r}, seed {spec.seed}) failed; nothing to fork")
            result = METHODS[spec.method][0](spec, bench)
        except Exception as e:  # one failed run must not stop the benchmark
            bench.log(traceback.format_exc(limit=3))
            result = RunResult(
                task=spec.task,
                seed=spec.seed,
                method=spec.method,
                params=dict(spec.params),
                label=spec.label,
                status="failed",
                error=f"{type(e).__name__}: {e}"[:500],
            )
        bench.results[spec] = result
        m = result.metrics
        bench.log(
            f"[{i}/{len(order)}] {spec.task} {spec.label} seed {spec.seed}: {result.status} "
            f"in {time.perf_counter() - t0:.0f}s (train {result.method_s:.0f}s"
            f"{'' if result.status == 'ok' else ', ' + str(result.error)}) validity={m.get('validity')} "
            f"oracle_nll={_fmt(m.get('oracle_nll'))} nll={_fmt(m.get('nll'))}"
        )
        on_result(result)


def _fmt(x, digits=3):
    return "–" if x is None else f"{x:.{digits}f}"


# ----------------------------------------------------------------------------
# aggregation over seeds, costs, verdicts


def mean_std(values: list) -> tuple[float, float] | None:
    """``(mean, sample std with ddof = 1)`` of the finite numbers in ``values``; std 0 for one value; None if none."""
    xs = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
    if not xs:
        return None
    return statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def add_costs(results: list[dict]) -> None:
    """Add per-step / per-token seconds and the ratios to the MLE run of the same task and seed, in place.

    ``cost_ratio_token`` = (method seconds / method demonstration tokens) /
    (MLE seconds / MLE demonstration tokens); ``cost_ratio_total`` = total
    seconds / MLE total seconds (a fork includes the MLE steps it inherits).
    """
    mle = {(r["task"], r["seed"]): r for r in results if r["method"] == "mle" and r["status"] == "ok"}
    for r in results:
        if r["status"] != "ok":
            continue
        m = r["metrics"]
        m["method_s_per_step"] = r["method_s"] / max(1, r["method_steps"])
        m["method_ms_per_token"] = 1000 * r["method_s"] / max(1, r["method_data_tokens"])
        m["total_s"] = r["total_s"]
        base = mle.get((r["task"], r["seed"]))
        if base is not None:
            m["cost_ratio_token"] = m["method_ms_per_token"] / (
                1000 * base["method_s"] / max(1, base["method_data_tokens"])
            )
            m["cost_ratio_total"] = r["total_s"] / base["total_s"]


def summarize(results: list[dict], specs: list[RunSpec], columns) -> dict[str, dict[str, dict]]:
    """``{task: {row label: {metric: (mean, std) | None, "runs": "ok/total", "ok": int}}}`` over the seeds of ``specs``."""
    by_key = {(r["task"], r["seed"], r["label"]): r for r in results}
    out: dict[str, dict[str, dict]] = {}
    seen = set()
    for spec in specs:
        if (spec.task, spec.label) in seen:
            continue
        seen.add((spec.task, spec.label))
        rows = [by_key.get((s.task, s.seed, s.label)) for s in specs if (s.task, s.label) == (spec.task, spec.label)]
        ok = [r for r in rows if r is not None and r["status"] == "ok"]
        row: dict = {c: mean_std([r["metrics"].get(c) for r in ok]) for c in columns}
        row["runs"], row["ok"] = f"{len(ok)}/{len(rows)}", len(ok)
        out.setdefault(spec.task, {})[spec.label] = row
    return out


def verdict(mean_a: float, std_a: float, mean_b: float, std_b: float, direction: int) -> str:
    """Compare method a with baseline b: ``"better"`` / ``"worse"`` beyond the seed spread, else ``"within spread"``.

    Beyond the spread means ``|mean_a - mean_b| > std_a + std_b`` [recon]
    (the mean ± std intervals do not overlap). ``direction`` = +1 when higher
    is better, -1 when lower is better.
    :raises ValueError: if ``direction`` is not ±1.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 (higher is better) or -1 (lower is better), got {direction!r}")
    delta = (mean_a - mean_b) * direction
    if abs(mean_a - mean_b) <= std_a + std_b:
        return "within spread"
    return "better" if delta > 0 else "worse"


def verdicts(summary: dict[str, dict[str, dict]], baseline: str = "mle") -> list[dict]:
    """Every method against ``baseline`` on :data:`VERDICT_METRICS`, per task."""
    out = []
    for task, rows in summary.items():
        base = rows.get(baseline, {})
        for label, row in rows.items():
            if label == baseline:
                continue
            for metric, direction in VERDICT_METRICS:
                a, b = row.get(metric), base.get(metric)
                if a is None or b is None:
                    continue
                out.append(
                    dict(
                        task=task,
                        method=label,
                        metric=metric,
                        method_mean=a[0],
                        method_std=a[1],
                        mle_mean=b[0],
                        mle_std=b[1],
                        delta=a[0] - b[0],
                        verdict=verdict(a[0], a[1], b[0], b[1], direction),
                    )
                )
    return out


# ----------------------------------------------------------------------------
# report: machine, Markdown, plots


def machine_info(threads: int) -> dict:
    """CPU model (``/proc/cpuinfo``), cores, torch threads, versions, git commit, load average."""
    cpu = platform.processor() or "unknown"
    try:
        m = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = m.group(1).strip() if m else cpu
    except OSError:
        pass
    try:
        import subprocess

        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
            ).stdout.strip()
            or None
        )
    except OSError:
        commit = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def task_reference(name: str) -> dict:
    """What the held-out data itself scores: its validity and, on oracle tasks, its oracle NLL (the entropy estimate).

    ``data_validity``: fraction of the ``test`` texts the checker accepts
    (None without a checker); ``oracle_entropy``: ``-mean log p_oracle`` of
    the ``test`` sequences, nats per sequence -- the ``oracle_nll`` a perfect
    model reaches in expectation (None without an oracle).
    """

    task = make_task(name)
    texts = task.splits["test"]
    return {
        "data_validity": validity_rate(task, texts),
        "oracle_entropy": task.oracle.entropy_estimate(task.encoded("test")) if task.oracle is not None else None,
    }


def _table(summary_rows: dict, columns) -> str:
    """Markdown table of :func:`summarize` rows: "mean ± std" cells, a plain mean where one seed finished."""
    cols = [c for c in columns if any(row.get(c) is not None for row in summary_rows.values())]
    rows = {
        label: {k: (v[0] if row["ok"] == 1 and isinstance(v, tuple) else v) for k, v in row.items()}
        for label, row in summary_rows.items()
    }
    return format_metrics_table(rows, ["runs", *cols], digits=3)


def render_markdown(report: dict, notes: str | None = None) -> str:
    """``quality.md`` from the ``quality.json`` dict (see :func:`build_report`)."""
    b, mach = report["budget"], report["machine"]
    n_layer, n_head, n_embd = MODEL_SIZES[b["model_size"]]
    lines = [
        "# Quality of generation: MLE, MLE + backspace, SequenceMatch, E-ARM, NCE",
        "",
        f"Generated by `benchmarks/quality.py` on {report['date']}; total wall time "
        f"{report['total_wall_s'] / 60:.1f} min.",
        "",
        "```",
        report["command"],
        "```",
        "",
        f"**Machine**: {mach['cpu']}, {mach['cores']} cores (shared with other jobs; load average at start "
        f"{', '.join(f'{x:.1f}' for x in mach['loadavg_start'])}), torch {mach['torch']} with "
        f"{mach['torch_threads']} thread(s), device `{report['device']}`, Python {mach['python']}, "
        f"commit {mach['git_commit']}.",
        "",
        f"**Budget (every method)**: policy {n_layer} layers × {n_head} heads × {n_embd} wide "
        f"(`--model-size {b['model_size']}`); {b['steps']} optimiser steps × {b['batch_size']} demonstrations; "
        f"AdamW lr {b['lr']:g}, {b['warmup_steps']} warm-up steps, cosine to 0.1 × lr; SequenceMatch and E-ARM "
        f"fork the MLE run of the same task and seed at step W = {b['warm_steps']} and run the remaining "
        f"{b['steps'] - b['warm_steps']} steps with their own objective (model, optimiser, schedule and random "
        f"streams carried over); MLE + backspace trains from scratch. Evaluation: {b['eval_samples']} sampled "
        f"episodes (temperature 1, sampling seed = run seed), recovery probe on {b['recovery_samples']} "
        f"held-out prefixes. Seeds: main {report['seeds']}, ablations of p and α {report['ablation_seeds']}, "
        f"E-ARM sweep and NCE {report.get('sweep_seeds', report['ablation_seeds'])}.",
        "",
        "Reading the columns: `validity` is the task checker's acceptance rate (none on the oracle task, where "
        "`oracle_support` -- the fraction of samples the oracle can emit -- stands in for it); `oracle_nll` is "
        "E_model[−log p_oracle(x)] in nats per sequence (lower is better, but a model collapsed onto likely "
        "sequences can go below the oracle's entropy, so read it with `self_bleu4` / `distinct_2`); `nll` is "
        "the held-out teacher-forced NLL in nats per token (for a backspace policy an upper bound: only the "
        "direct path is scored); `recovery_*` come from injecting one wrong token into a held-out prefix: "
        "first free action is backspace / the wrong token is gone at the end / the final text is valid. "
        "Cost: `method_s_per_step` and `method_ms_per_token` are the wall-clock time of the method's own "
        "optimiser steps (after the fork) per step (s) and per demonstration token (ms); `cost_ratio_token` divides the "
        "latter by MLE's in the same invocation (same task and seed); `total_s` and `cost_ratio_total` "
        "include the MLE steps a fork inherits. Cells are mean ± std over seeds (ddof = 1), a plain number "
        "where one seed ran; `runs` counts finished / planned runs.",
        "",
    ]
    if notes:
        lines += ["## Reading", "", notes.strip(), ""]
    results = report["runs"]
    exps = report["experiments"]
    titles = {
        "main": "Main comparison",
        "ablation_p": "Ablation: backspace noise rate p",
        "ablation_alpha": "Ablation: SequenceMatch α",
        "earm_sweep": "E-ARM sweep: λ × start step",
        "nce_k": "NCE critic: snapshot refresh interval K",
    }
    for exp, specs in exps.items():
        specs = [RunSpec(s["task"], s["seed"], s["method"], tuple(tuple(p) for p in s["params"])) for s in specs]
        lines += [f"## {titles[exp]}", ""]
        if exp == "nce_k":
            lines += [
                f"Each `nce K=…` run starts from the MLE checkpoint at step W and trains the policy by "
                f"self-adapting NCE against its own snapshot, refreshed every K steps, plus a residual critic "
                f"(K ≥ the {b['steps'] - b['warm_steps']} NCE steps means the snapshot is never refreshed). "
                f"Reranking keeps one of {b['rerank_candidates']} candidates per sample by importance "
                f"resampling ∝ exp(−E_ψ) (`generate.py --rerank critic`). The `mle` row is the MLE run "
                f"after all {b['steps']} steps.",
                "",
            ]
        summary = summarize(results, specs, ALL_COLUMNS)
        for task, rows in summary.items():
            ref = report.get("reference", {}).get(task, {})
            lines += [f"### {task}", ""]
            if ref:
                lines += [
                    "Reference (held-out test texts): "
                    + "; ".join(f"{k} = {v:.3f}" for k, v in ref.items() if v is not None)
                    + ".",
                    "",
                ]
            lines += [
                "Quality" + (" (raw samples of each policy)" if exp == "nce_k" else "") + ":",
                "",
                _table(rows, QUALITY_COLUMNS),
                "",
            ]
            if exp == "nce_k":
                lines += ["Critic-reranked samples of the same policies:", "", _table(rows, RERANK_COLUMNS), ""]
                if any(row.get("ppo_s") for row in rows.values()):
                    lines += [
                        "PPO with the critic as reward, started from each NCE policy (`ppo_critic_reward` = "
                        "mean −E_ψ − c, `ppo_kl_to_init` = KL to the start, nats per sequence):",
                        "",
                        _table(rows, PPO_COLUMNS),
                        "",
                    ]
            lines += ["Recovery and training cost:", "", _table(rows, (*RECOVERY_COLUMNS, *COST_COLUMNS)), ""]
        if exp == "main":
            vs = verdicts(summary)
            if vs:
                lines += [
                    "### Against MLE, beyond the seed spread?",
                    "",
                    "`better` / `worse` when the means differ by more than the sum of the two standard "
                    "deviations; otherwise `within spread`.",
                    "",
                    "| task | method | metric | method | MLE | Δ | verdict |",
                    "|---|---|---|---|---|---|---|",
                ]
                for v in vs:
                    lines.append(
                        f"| {v['task']} | {v['method']} | {v['metric']} | {v['method_mean']:.3f} ± "
                        f"{v['method_std']:.3f} | {v['mle_mean']:.3f} ± {v['mle_std']:.3f} | "
                        f"{v['delta']:+.3f} | {v['verdict']} |"
                    )
                lines.append("")
        plot = report.get("plots", {}).get(exp)
        if plot:
            lines += [f"![{exp}]({plot})", ""]
    failed = [r for r in results if r["status"] != "ok"]
    if failed:
        lines += ["## Failed runs", "", "| task | method | seed | error |", "|---|---|---|---|"]
        lines += [f"| {r['task']} | {r['label']} | {r['seed']} | {str(r['error']).replace('|', '/')} |" for r in failed]
        lines.append("")
    return "\n".join(lines)


def _bar_panel(ax, rows: dict, metric: str, title: str):
    labels = [k for k, v in rows.items() if v.get(metric) is not None]
    means = [rows[k][metric][0] for k in labels]
    stds = [rows[k][metric][1] for k in labels]
    ax.bar(range(len(labels)), means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(labels))])
    if labels and "nll" in metric:  # zoom: NLLs differ by a few percent
        lo, hi = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
        ax.set_ylim(lo - 0.5 * (hi - lo) - 1e-3, hi + 0.2 * (hi - lo) + 1e-3)
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_title(title, fontsize=9)


def plot_main(summary: dict, path: Path) -> None:
    """Bars with error bars (std over seeds): validity (oracle support), NLL, recovery, cost, per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    panels = [
        ("validity", "oracle_support", "validity (oracle: support) ↑"),
        ("oracle_nll", "nll", "oracle NLL, nats/seq ↓ (real tasks: held-out NLL, nats/token ↓)"),
        ("recovery_deleted", None, "recovery: wrong token deleted ↑"),
        ("cost_ratio_token", None, "cost per token / MLE"),
    ]
    fig, axes = plt.subplots(len(panels), len(tasks), figsize=(4.2 * len(tasks), 3.2 * len(panels)), squeeze=False)
    for j, task in enumerate(tasks):
        rows = summary[task]
        for i, (first, fallback, _title) in enumerate(panels):
            metric = first if any(r.get(first) is not None for r in rows.values()) else fallback
            if metric is None:
                axes[i][j].axis("off")
                continue
            _bar_panel(axes[i][j], rows, metric, f"{task}: {metric}")
    fig.suptitle(panels[0][2] + "; " + panels[1][2], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_sweep(
    summary: dict,
    path: Path,
    lines: dict[str, tuple],
    x_of: Callable,
    xlabel: str,
    metrics=("oracle_support", "oracle_nll", "nll"),
    logx: bool = False,
    reference: str = "mle",
) -> None:
    """Curves (mean ± std over seeds) of ``metrics`` against a swept parameter, one panel per task and metric.

    :param lines: ``{line name: (predicate(row label) -> bool, metric key prefix)}``;
        a line plots ``prefix + metric`` of the rows its predicate accepts.
    :param x_of: ``row label -> x`` (float).
    :param reference: row drawn as a dashed horizontal line (its mean), if present.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(summary)
    fig, axes = plt.subplots(len(tasks), len(metrics), figsize=(4.2 * len(metrics), 3.2 * len(tasks)), squeeze=False)
    for i, task in enumerate(tasks):
        rows = summary[task]
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            for name, (pred, prefix) in lines.items():
                pts = sorted(
                    (x_of(k), v[prefix + metric])
                    for k, v in rows.items()
                    if pred(k) and v.get(prefix + metric) is not None
                )
                if pts:
                    ax.errorbar(
                        [p[0] for p in pts],
                        [p[1][0] for p in pts],
                        yerr=[p[1][1] for p in pts],
                        marker="o",
                        capsize=3,
                        label=name,
                    )
            ref = rows.get(reference, {}).get(metric)
            if ref is not None:
                ax.axhline(ref[0], ls="--", color="gray", label=f"{reference} (all steps)")
            if logx:
                ax.set_xscale("log")
            ax.set_xlabel(xlabel)
            ax.set_title(f"{task}: {metric}", fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _param_of(label: str, name: str) -> float | None:
    m = re.search(rf"(?:^| ){re.escape(name)}=([-+0-9.e]+)", label)
    return float(m.group(1)) if m else None


def draw_plots(report: dict, out_dir: Path) -> dict[str, str]:
    """Write one PNG per experiment into ``out_dir``; return ``{experiment: file name}``."""
    plots = {}
    for exp, specs in report["experiments"].items():
        specs = [RunSpec(s["task"], s["seed"], s["method"], tuple(tuple(p) for p in s["params"])) for s in specs]
        summary = summarize(report["runs"], specs, ALL_COLUMNS)
        if not summary:
            continue
        name = f"quality_{exp}.png"
        if exp == "main":
            plot_main(summary, out_dir / name)
        elif exp == "ablation_p":  # MLE is p = 0 of MLE + backspace
            plot_sweep(
                summary,
                out_dir / name,
                {
                    "MLE + backspace": (lambda k: k == "mle" or k.startswith("mle_backspace"), ""),
                    "SequenceMatch": (lambda k: k.startswith("sequencematch"), ""),
                },
                lambda k: 0.0 if k == "mle" else _param_of(k, "p"),
                "noise rate p",
            )
        elif exp == "ablation_alpha":
            plot_sweep(
                summary,
                out_dir / name,
                {"SequenceMatch": (lambda k: k.startswith("sequencematch"), "")},
                lambda k: _param_of(k, "α"),
                "α",
                logx=True,
            )
        elif exp == "earm_sweep":
            starts = sorted({_param_of(k, "start") for rows in summary.values() for k in rows} - {None})
            lines = {
                f"start={s:g}": ((lambda k, s=s: k.startswith("earm") and _param_of(k, "start") == s), "")
                for s in starts
            }
            plot_sweep(
                summary,
                out_dir / name,
                lines,
                lambda k: _param_of(k, "λ"),
                "λ",
                metrics=("nll", "oracle_nll", "oracle_support"),
                logx=True,
            )
        elif exp == "nce_k":
            is_nce = lambda k: k.startswith("nce")  # noqa: E731
            plot_sweep(
                summary,
                out_dir / name,
                {"raw": (is_nce, ""), "critic-reranked": (is_nce, "rerank_"), "PPO, critic reward": (is_nce, "ppo_")},
                lambda k: _param_of(k, "K"),
                "K",
                metrics=("oracle_nll", "oracle_support", "distinct_2"),
                logx=True,
            )
        plots[exp] = name
    return plots


def build_report(
    args, budget: Budget, runs: dict[str, list[RunSpec]], bench: Bench, wall_s: float, machine: dict, command: str
) -> dict:
    """The ``quality.json`` dict: command, machine, budget, experiments (their specs), every run."""
    results = [dataclasses.asdict(r) for r in bench.results.values()]
    add_costs(results)
    return {
        "command": command,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "total_wall_s": wall_s,
        "machine": machine,
        "device": args.device,
        "budget": dataclasses.asdict(budget),
        "seeds": list(args.seeds),
        "ablation_seeds": list(args.ablation_seeds),
        "sweep_seeds": list(getattr(args, "sweep_seeds", args.ablation_seeds)),
        "reference": {t: task_reference(t) for t in sorted({s.task for specs in runs.values() for s in specs})},
        "experiments": {
            exp: [
                dict(task=s.task, seed=s.seed, method=s.method, params=[list(p) for p in canonical(s, budget).params])
                for s in specs
            ]
            for exp, specs in runs.items()
        },
        "runs": results,
    }


def write_outputs(report: dict, out_dir: Path, notes: str | None = None, plots: bool = True) -> None:
    """Write ``quality.json``, the PNG plots and ``quality.md`` into ``out_dir``.

    ``notes`` (Markdown, the "Reading" section) is kept in ``quality.json``, so
    ``--render-only`` without ``--notes`` keeps the previous reading.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    if notes is not None:
        report["notes"] = notes
    notes = report.get("notes")
    if plots:
        report["plots"] = draw_plots(report, out_dir)
    (out_dir / "quality.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out_dir / "quality.md").write_text(render_markdown(report, notes) + "\n")


# ----------------------------------------------------------------------------
# command line


QUICK = dict(
    steps=40, warm_steps=20, batch_size=16, model_size="small", eval_samples=64, recovery_samples=64, warmup_steps=5
)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (see ``--help``); exits with a usage error on an unknown experiment or ``--threads < 1``."""
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )
    p.add_argument(
        "--experiments", default=",".join(EXPERIMENTS), help="comma-separated subset of " + ", ".join(EXPERIMENTS)
    )
    p.add_argument("--tasks", nargs="+", default=["oracle-hmm", "python-lines", "pydoc-text"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--ablation-tasks", nargs="+", default=["oracle-hmm"])
    p.add_argument(
        "--ablation-seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of ablation_p and ablation_alpha (default: --seeds; --quick: the first seed)",
    )
    p.add_argument(
        "--sweep-seeds",
        nargs="+",
        type=int,
        default=None,
        help="seeds of earm_sweep and nce_k (default: --ablation-seeds)",
    )
    p.add_argument("--steps", type=int, default=None, help=f"optimiser steps per run (default {Budget.steps})")
    p.add_argument(
        "--warm-steps", type=int, default=None, help=f"W, MLE steps before a fork (default {Budget.warm_steps})"
    )
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--model-size",
        choices=sorted(MODEL_SIZES),
        default=None,
        help="tiny = 1x2x32, small = 2x4x128, default = 4x4x128 (layers x heads x width)",
    )
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--eval-samples", type=int, default=None)
    p.add_argument("--recovery-samples", type=int, default=None)
    p.add_argument("--p-grid", nargs="+", type=float, default=list(P_GRID))
    p.add_argument("--alpha-grid", nargs="+", type=float, default=list(ALPHA_GRID))
    p.add_argument("--lambda-grid", nargs="+", type=float, default=list(LAMBDA_GRID))
    p.add_argument("--k-grid", nargs="+", type=int, default=list(K_GRID))
    p.add_argument("--no-nce", action="store_true", help="skip nce_k (also skipped when the nce agent is missing)")
    p.add_argument(
        "--ppo-timesteps",
        type=int,
        default=None,
        help="env steps of PPO with the critic reward per nce_k run (0 = no PPO; default 4096, quick 1024)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="small budget (every experiment in < 30 min on a 2-core CPU): "
        + ", ".join(f"{k}={v}" for k, v in QUICK.items())
        + "; ablations on seed 0 only",
    )
    p.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--scratch", default=str(ROOT / "runs" / "quality"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the machine is shared)")
    p.add_argument(
        "--notes",
        default=None,
        help="Markdown file inserted as the 'Reading' section of quality.md "
        "(kept in quality.json for later --render-only)",
    )
    p.add_argument(
        "--render-only", action="store_true", help="re-draw quality.md and plots from --out-dir/quality.json"
    )
    args = p.parse_args(argv)
    args.experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    bad = [e for e in args.experiments if e not in EXPERIMENTS]
    if bad:
        p.error(f"unknown experiment(s) {bad}; expected some of {', '.join(EXPERIMENTS)}")
    if args.ablation_seeds is None:
        args.ablation_seeds = [args.seeds[0]] if args.quick else list(args.seeds)
    if args.sweep_seeds is None:
        args.sweep_seeds = list(args.ablation_seeds)
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    return args


def budget_from_args(args) -> Budget:
    """The :class:`Budget` of the flags: :data:`QUICK` under ``--quick``, then explicit flags win; ``--steps``
    alone sets ``W = steps // 2``.

    :raises ValueError: as :class:`Budget` does.
    """
    base = dict(QUICK) if args.quick else {}
    for name in ("steps", "warm_steps", "batch_size", "model_size", "lr", "eval_samples", "recovery_samples"):
        if getattr(args, name) is not None:
            base[name] = getattr(args, name)
    if args.steps is not None and args.warm_steps is None:
        base["warm_steps"] = base["steps"] // 2
    return Budget(**base)


def main(argv=None) -> dict:
    """Run the selected experiments and write the results; return the ``quality.json`` dict."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    out_dir = Path(args.out_dir)
    notes = Path(args.notes).read_text() if args.notes else None
    if args.render_only:
        report = json.loads((out_dir / "quality.json").read_text())
        write_outputs(report, out_dir, notes)
        return report
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=SyntaxWarning)  # ast.parse of generated python-lines samples
    budget = budget_from_args(args)
    experiments = list(args.experiments)
    if "nce_k" in experiments and args.no_nce:
        print(
            "skipping nce_k: "
            + ("--no-nce" if args.no_nce else "the nce agent is not registered in agents/trainer.py"),
            flush=True,
        )
        experiments.remove("nce_k")
    runs = plan(
        experiments,
        args.tasks,
        args.seeds,
        args.ablation_tasks,
        args.ablation_seeds,
        budget,
        args.p_grid,
        args.alpha_grid,
        args.lambda_grid,
        args.k_grid,
        args.sweep_seeds,
    )
    machine = machine_info(args.threads)
    command = "python benchmarks/quality.py " + " ".join(shlex.quote(a) for a in argv)
    t0 = time.perf_counter()
    ppo_timesteps = args.ppo_timesteps if args.ppo_timesteps is not None else (1024 if args.quick else 4096)
    bench = Bench(
        budget, Path(args.scratch), args.device, log=lambda s: print(s, flush=True), ppo_timesteps=ppo_timesteps
    )

    def save_partial(_result):
        report = build_report(args, budget, runs, bench, time.perf_counter() - t0, machine, command)
        write_outputs(report, out_dir, notes, plots=False)

    run_all(bench, runs, on_result=save_partial)
    report = build_report(args, budget, runs, bench, time.perf_counter() - t0, machine, command)
    write_outputs(report, out_dir, notes)
    print(
        f"wrote {out_dir / 'quality.md'} and {out_dir / 'quality.json'} in {report['total_wall_s'] / 60:.1f} min",
        flush=True,
    )
    return report


if __name__ == "__main__":
    main()
