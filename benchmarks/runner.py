"""Experiments as files, one runner (``python -m benchmarks run NAME``); the format is documented in
``benchmarks/experiments/README.md``.

An experiment (``benchmarks/experiments/NAME.toml``) names tasks, seeds, a *base* run and *arms*, each
with its **complete** trainer and learner configuration: the loader refuses a learner table that lacks a
field of the learner's config class, so a changed default in ``agents/`` cannot change a committed
experiment (``python -m benchmarks template AGENT`` prints a complete table to start from).

Protocol, per task and seed: the base run (MLE from scratch) trains once; every arm then starts from
it, either ``start = "init"`` (the base's weights, a fresh optimiser and its own schedule) or
``start = "fork"`` (:attr:`agents.trainer.TrainConfig.fork_from`: the base's model, AdamW moments,
step and random streams; the arm's ``max_steps`` counts from step 0 of the base). With
``base.select_every > 0`` the base keeps the checkpoint of lowest held-out NLL on the ``valid`` split,
scored every ``select_every`` steps, and the arms start from it; every reported number is on ``test``.

Every arm (and the base) is evaluated at every temperature of the grid with the seed as sampling seed
(:func:`agents.common.evaluation.evaluate_policy`: test prompts, held-out NLL on ``test``); on an
oracle task also the held-out NLL of the tempered model (``nll_at_t``, the coverage axis of the
quality–diversity frontier). Optional: ``[task_options.TASK]`` (``make_task`` keyword arguments, e.g.
base-10 ``arithmetic``) and ``recovery_samples`` (the recovery probe of :mod:`benchmarks.probes` at the
default temperature), both recorded in the resolved config only when set.

A cell (task, arm, seed) is one process with one torch thread; ``--workers`` run at a time. The
results file ``benchmarks/results/NAME.json`` (``NAME-quick.json`` with ``--quick``) is rewritten
after every finished cell; a cell already in it is not rerun (resume), provided the file was made
with the same resolved configuration (else the run is refused, naming the differences).

Cell reuse (``--reuse OTHER.json``): a cell whose computation is identical in another results file --
same task, seed, model, evaluation (samples, temperatures), the same base config and the same arm
config (under any arm name) -- is copied from it with ``reused_from`` naming the file, the cell and the
provenance of the run that computed it; the report lists the copied cells. Arms of a (task, seed) are
copied only together with that file's base of the (task, seed), so copied and new arms start from the
same base checkpoint (the other run's scratch directory must be reachable at the recorded path).

Fresh-seed confirmation (``confirms = "OTHER"``): an experiment may declare that it confirms variants
picked from experiment ``OTHER``; the loader checks that its seeds are disjoint from every seed OTHER
declares (full and ``[quick]``), and the report adds "confirmed on fresh seeds" to the verdicts of the
arms whose complete config is one of OTHER's arms -- only then.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import dataclasses
import json
import math
import multiprocessing
import os
import shlex
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

import torch

from agents.common.checkpoint import save_checkpoint
from agents.common.evaluation import evaluate_policy, evaluate_samples, heldout_nll, recovery
from agents.generation import generate_reranked
from agents.learners import LEARNERS
from agents.trainer import Callback, ModelConfig, TrainConfig, Trainer
from benchmarks.probes import prompted_recovery
from benchmarks.provenance import provenance
from benchmarks.report import FORMAT, render_files, task_label
from seqenv.tasks import make_task

HERE = Path(__file__).resolve().parent
EXPERIMENTS_DIR = HERE / "experiments"
RESULTS_DIR = HERE / "results"
#: trainer fields every ``train`` table must give (the run's plumbing -- logdir, seed, device,
#: checkpoints, evaluation -- is the runner's)
TRAIN_KEYS = ("max_steps", "batch_size", "lr", "min_lr_ratio", "warmup_steps", "weight_decay", "grad_clip")
MODEL_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig))
STARTS = ("init", "fork")
TOP_KEYS = {
    "description",
    "tasks",
    "seeds",
    "control",
    "temperatures",
    "default_temperature",
    "metrics",
    "eval_samples",
    "base",
    "train",
    "arms",
    "quick",
    "confirms",
    "task_options",
    "recovery_samples",
}
QUICK_KEYS = {"seeds", "tasks", "arms", "eval_samples", "model", "base", "train", "learner"}


def task_arg(task: str) -> str:
    """The task name handed to :func:`seqenv.tasks.make_task`: a relative ``file:`` path is taken from the
    repository root (so an experiment file can name a committed corpus, e.g.
    ``file:benchmarks/experiments/data/python_lines_1000.txt``, whatever the working directory)."""
    if task.startswith("file:") and not Path(task[len("file:") :]).is_absolute():
        return "file:" + str(HERE.parent / task[len("file:") :])
    return task


class ExperimentError(ValueError):
    """A malformed experiment file; the message names the file, the key and what was expected."""


def template(agent: str) -> str:
    """A complete ``learner`` table of ``agent`` with the current defaults, as TOML text.

    :raises ExperimentError: for an unknown agent.
    """
    if agent not in LEARNERS:
        raise ExperimentError(f"unknown agent {agent!r}; expected one of {sorted(LEARNERS)}")
    cfg = LEARNERS[agent].config_class()
    lines = [f'agent = "{agent}"', "[arms.NAME.learner]"]
    for f in dataclasses.fields(cfg):
        lines.append(f"{f.name} = {_toml_value(getattr(cfg, f.name))}")
    return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def _learner_config(agent: str, values: dict, where: str):
    """The learner's config object from a complete table (``"none"`` stands for None: TOML has no null)."""
    if agent not in LEARNERS:
        raise ExperimentError(f"{where}: unknown agent {agent!r}; expected one of {sorted(LEARNERS)}")
    cls = LEARNERS[agent].config_class
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [n for n in names if n not in values]
    unknown = [k for k in values if k not in names]
    if missing or unknown:
        raise ExperimentError(
            f"{where}: the learner table must give every field of {cls.__name__} (a complete "
            f"config, never a diff against defaults); missing {missing}, unknown {unknown} "
            f"(python -m benchmarks template {agent} prints a complete table)"
        )
    kw = {}
    for f in dataclasses.fields(cls):
        v = values[f.name]
        optional = "None" in str(f.type) or "Optional" in str(f.type)
        kw[f.name] = None if (v == "none" and optional) else v
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise ExperimentError(f"{where}: {e}") from None


def _check_keys(table: dict, required, where: str, optional=()) -> None:
    missing = [k for k in required if k not in table]
    unknown = [k for k in table if k not in required and k not in optional]
    if missing or unknown:
        raise ExperimentError(
            f"{where}: missing keys {missing}, unknown keys {unknown}; expected {list(required)}"
            + (f" (optional {list(optional)})" if optional else "")
        )


def _resolve_run(table: dict, train_default: dict | None, model: dict, where: str, is_base: bool) -> dict:
    """One run's resolved config: ``dict(agent, start, train, learner[, select_every])``, JSON-able."""
    _check_keys(
        table,
        ("agent", "learner"),
        where,
        optional=("train", "select_every") if is_base else ("train", "start", "rerank"),
    )
    agent = table["agent"]
    train = dict(train_default or {})
    train.update(table.get("train", {}))
    _check_keys(train, TRAIN_KEYS, f"{where}.train")
    learner = _learner_config(agent, table["learner"], f"{where}.learner")
    TrainConfig(agent=agent, model=ModelConfig(**model), **train)  # validates the values, message names the flag
    out = {
        "agent": agent,
        "train": {k: train[k] for k in TRAIN_KEYS},
        "learner": json.loads(json.dumps(dataclasses.asdict(learner))),
    }
    if is_base:
        out["select_every"] = int(table.get("select_every", 0))
        if not 0 <= out["select_every"] <= train["max_steps"]:
            raise ExperimentError(
                f"{where}.select_every: expected 0 (off) or a step count <= max_steps "
                f"{train['max_steps']}, got {out['select_every']}"
            )
    else:
        start = table.get("start", "init")
        if start not in STARTS:
            raise ExperimentError(f"{where}.start: expected one of {STARTS}, got {start!r}")
        out["start"] = start
        if "rerank" in table:  # only when given: the resolved configs of arms without it stay as they were
            n = table["rerank"]
            if agent != "nce" or isinstance(n, bool) or not isinstance(n, int) or n < 2:
                raise ExperimentError(
                    f"{where}.rerank: expected an integer number of candidates >= 2 on an `nce` arm "
                    f"(the trained critic reranks the base policy's samples), got {n!r} on agent {agent!r}"
                )
            out["rerank"] = n
    return out


@dataclasses.dataclass
class Experiment:
    """A loaded experiment file (see the module docstring); :meth:`resolved` is what results files record."""

    name: str
    path: str
    description: str
    tasks: list
    seeds: list
    control: str
    temperatures: list
    default_temperature: float
    metrics: list
    eval_samples: int
    model: dict
    base: dict
    arms: dict
    quick: bool = False
    #: ``dict(experiment=OTHER, seeds=[OTHER's seeds, full and quick], arms={our arm: OTHER's arm})`` or None
    confirms: dict | None = None
    #: ``{task: make_task keyword arguments}`` (``[task_options.NAME]``); tasks not named: their defaults
    task_options: dict = dataclasses.field(default_factory=dict)
    #: episodes of the recovery probe per cell at the default temperature (0 = off)
    recovery_samples: int = 0

    def make_task(self, task: str):
        """The :class:`seqenv.tasks.Task` of ``task`` with this experiment's options for it."""
        return make_task(task_arg(task), **self.task_options.get(task, {}))

    def task_spec(self, task: str):
        """What ``TrainConfig.task`` gets: the name, or the task's spec dict when it has options."""
        return self.make_task(task).spec() if self.task_options.get(task) else task

    def resolved(self) -> dict:
        """Everything that defines the cells' computations (complete configs), JSON-able.

        ``task_options`` and ``recovery_samples`` appear only when the file sets them, so the resolved
        config of an experiment without them is what it was before they existed.
        """
        out = {
            "tasks": self.tasks,
            "model": self.model,
            "eval_samples": self.eval_samples,
            "temperatures": self.temperatures,
            "default_temperature": self.default_temperature,
            "base": self.base,
            "arms": self.arms,
        }
        if self.task_options:
            out["task_options"] = self.task_options
        if self.recovery_samples:
            out["recovery_samples"] = self.recovery_samples
        return out


def experiment_path(name: str) -> Path:
    """``benchmarks/experiments/NAME.toml``, or ``name`` itself if it is a path to a file."""
    p = Path(name)
    return p if p.suffix == ".toml" and p.is_file() else EXPERIMENTS_DIR / f"{name}.toml"


def load_experiment(name: str, quick: bool = False) -> Experiment:
    """Load and validate ``benchmarks/experiments/NAME.toml`` (``quick``: apply its ``[quick]`` table).

    :raises ExperimentError: naming the file and the bad key; FileNotFoundError for a missing file.
    """
    path = experiment_path(name)
    if not path.is_file():
        known = sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.toml"))
        raise FileNotFoundError(f"no experiment {name!r} ({path}); known: {known}")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ExperimentError(f"{path}: not valid TOML ({e})") from None
    where = path.name
    _check_keys(
        raw,
        ("tasks", "seeds", "control", "temperatures", "metrics", "eval_samples", "base", "arms"),
        where,
        optional=(
            "description",
            "default_temperature",
            "train",
            "quick",
            "confirms",
            "task_options",
            "recovery_samples",
        ),
    )
    if quick:
        q = raw.get("quick")
        if q is None:
            raise ExperimentError(f"{where}: --quick needs a [quick] table")
        _check_keys(q, (), f"{where}.quick", optional=tuple(QUICK_KEYS))
        raw = copy.deepcopy(raw)
        for k in ("seeds", "tasks", "eval_samples"):
            if k in q:
                raw[k] = q[k]
        if "arms" in q:
            unknown = [a for a in q["arms"] if a not in raw["arms"]]
            if unknown or (raw["control"] not in q["arms"] and raw["control"] != "base"):
                raise ExperimentError(
                    f"{where}.quick.arms: must name arms of the file and include the control "
                    f"{raw['control']!r}; got {q['arms']}"
                )
            raw["arms"] = {a: raw["arms"][a] for a in q["arms"]}
        if "model" in q:
            raw["base"]["model"] = {**raw["base"].get("model", {}), **q["model"]}
        if "base" in q:
            qb = dict(q["base"])
            if "select_every" in qb:
                raw["base"]["select_every"] = qb.pop("select_every")
            raw["base"].setdefault("train", {}).update(qb)
        if "train" in q:
            raw.setdefault("train", {}).update(q["train"])
            for arm in raw["arms"].values():
                if "train" in arm:
                    arm["train"].update({k: v for k, v in q["train"].items() if k in arm["train"]})
        if "learner" in q:  # learner fields set in every arm that has them (e.g. a critic's size)
            for arm in raw["arms"].values():
                arm["learner"].update({k: v for k, v in q["learner"].items() if k in arm["learner"]})
    base_raw = dict(raw["base"])
    model = base_raw.pop("model", None)
    if model is None:
        raise ExperimentError(f"{where}.base: needs a [base.model] table with {list(MODEL_KEYS)}")
    _check_keys(model, MODEL_KEYS, f"{where}.base.model")
    base = _resolve_run(base_raw, None, model, f"{where}.base", is_base=True)
    arms = {
        a: _resolve_run(t, raw.get("train"), model, f"{where}.arms.{a}", is_base=False) for a, t in raw["arms"].items()
    }
    if raw["control"] not in arms and raw["control"] != "base":
        raise ExperimentError(
            f'{where}.control: {raw["control"]!r} is not an arm; arms are {list(arms)} (or "base": the base '
            "run itself, e.g. raw sampling against reranking)"
        )
    temps = [float(t) for t in raw["temperatures"]]
    default_t = float(raw.get("default_temperature", 1.0))
    if default_t not in temps or any(not t > 0 for t in temps):
        raise ExperimentError(
            f"{where}: temperatures must be > 0 and contain default_temperature {default_t}, got {temps}"
        )
    task_options = raw.get("task_options", {})
    if not isinstance(task_options, dict) or any(
        t not in raw["tasks"] or not isinstance(o, dict) for t, o in task_options.items()
    ):
        raise ExperimentError(
            f"{where}.task_options: expected tables [task_options.TASK] of make_task keyword arguments for "
            f"tasks of `tasks` {raw['tasks']}, got {task_options!r}"
        )
    for t in raw["tasks"]:
        try:
            make_task(task_arg(t), **task_options.get(t, {}))  # unknown task names and options fail here
        except (OSError, TypeError, ValueError) as e:
            raise ExperimentError(f"{where}: task {t!r} with options {task_options.get(t, {})}: {e}") from None
    recovery_samples = raw.get("recovery_samples", 0)
    if isinstance(recovery_samples, bool) or not isinstance(recovery_samples, int) or recovery_samples < 0:
        raise ExperimentError(f"{where}.recovery_samples: expected an integer >= 0 (0 = off), got {recovery_samples!r}")
    seeds = [int(s) for s in raw["seeds"]]
    confirms = None
    if "confirms" in raw:
        confirms = _confirms(raw["confirms"], path, model, base, arms, where, quick)
        check_fresh_seeds(confirms, seeds, where)
    return Experiment(
        name=path.stem,
        path=str(path),
        description=raw.get("description", ""),
        tasks=list(raw["tasks"]),
        seeds=seeds,
        control=raw["control"],
        temperatures=temps,
        default_temperature=default_t,
        metrics=list(raw["metrics"]),
        eval_samples=int(raw["eval_samples"]),
        model=dict(model),
        base=base,
        arms=arms,
        quick=quick,
        confirms=confirms,
        task_options={t: dict(o) for t, o in task_options.items() if o},
        recovery_samples=int(recovery_samples),
    )


def _confirms(other: str, path: Path, model: dict, base: dict, arms: dict, where: str, quick: bool) -> dict:
    """The ``confirms`` entry: the other experiment's seeds (full and quick) and which of our arms are, config
    for config, arms of it at the same budget (``quick`` or not; same model and base: the same computation on
    other seeds)."""
    if not isinstance(other, str) or other == path.stem:
        raise ExperimentError(f"{where}.confirms: expected the name of another experiment file, got {other!r}")
    if not (path.parent / f"{other}.toml").is_file():
        raise ExperimentError(f"{where}.confirms: no experiment file {other}.toml beside {path.name}")
    other_path = str(path.parent / f"{other}.toml")
    loaded = {False: load_experiment(other_path)}
    try:
        loaded[True] = load_experiment(other_path, quick=True)
    except ExperimentError:  # no [quick] table
        pass
    seeds = {s for e in loaded.values() for s in e.seeds}
    ref = loaded.get(quick)
    same = ref is not None and ref.model == model and ref.base == base
    matched = {a: b for a, run in arms.items() for b, o in (ref.arms.items() if same else ()) if o == run}
    return {"experiment": other, "seeds": sorted(seeds), "arms": matched}


def check_fresh_seeds(confirms: dict | None, seeds: list, where: str) -> None:
    """:raises ExperimentError: if an experiment that confirms another runs one of the other's seeds."""
    if confirms is None:
        return
    shared = sorted(set(seeds) & set(confirms["seeds"]))
    if shared:
        raise ExperimentError(
            f"{where}: confirms {confirms['experiment']!r} on fresh seeds, but seeds {shared} are seeds of "
            f"{confirms['experiment']!r} ({confirms['seeds']}); choose disjoint seeds"
        )


def results_stem(exp: Experiment, out_dir: Path = RESULTS_DIR) -> Path:
    """``out_dir/NAME`` (``NAME-quick`` for a quick run); the runner writes ``.json``, ``.md`` and PNGs there."""
    return Path(out_dir) / (f"{exp.name}-quick" if exp.quick else exp.name)


# ----------------------------------------------------------------------------------------------------------
# one cell, in a worker process


class Tempered(torch.nn.Module):
    """A policy whose logits are divided by ``temperature`` (for the held-out NLL of the tempered model).

    :param policy: an :class:`agents.policies.Policy` (``forward(tokens: LongTensor[B, T]) -> FloatTensor[B, T, V]``).
    """

    def __init__(self, policy: torch.nn.Module, temperature: float):
        super().__init__()
        self.policy, self.temperature = policy, float(temperature)
        self.max_state_length = getattr(policy, "max_state_length", None)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.policy(tokens) / self.temperature


class _StepTimer(Callback):
    """Wall seconds of each optimisation step, from the batch's arrival to the step's end (the learner's own
    sampling included; logging, checkpoints and evaluations excluded): the cost per step, and with the same
    demonstration batch in every arm, the cost per demonstration token relative to the control."""

    def __init__(self):
        self.t, self.seconds = None, []

    def on_batch(self, trainer, demos) -> None:
        self.t = time.perf_counter()

    def on_step_end(self, trainer, metrics) -> None:
        if self.t is not None:
            self.seconds.append(time.perf_counter() - self.t)
            self.t = None


class _Select(Callback):
    """Model selection of the base: held-out NLL on ``valid`` every ``every`` steps, best kept as ``best.pt``."""

    def __init__(self, every: int):
        self.every, self.best, self.curve = every, (math.inf, 0), []

    def on_step_end(self, trainer, metrics) -> None:
        if self.every and trainer.step % self.every == 0:
            nll = heldout_nll(trainer.policy, trainer.task, "valid")["nll"]
            self.curve.append([trainer.step, nll])
            if nll < self.best[0]:
                self.best = (nll, trainer.step)
                save_checkpoint(trainer.checkpoint_state(), Path(trainer.cfg.logdir) / "best.pt")


def run_cell(job: dict) -> dict:
    """Train and evaluate one cell (runs in a worker process; one torch thread).

    :param job: ``dict(task, seed, arm, run (resolved config), model, logdir, device, start_from (checkpoint
        or None), temperatures, default_temperature, eval_samples, recovery_samples)``; optional
        ``task_spec`` (a :meth:`seqenv.tasks.Task.spec` dict used instead of the name ``task``).
        With ``recovery_samples > 0`` the default temperature's metrics get the recovery probe's
        ``recovery_backspace``, ``recovery_deleted``, ``recovery_validity`` (``benchmarks.probes``:
        :func:`~benchmarks.probes.prompted_recovery` on a prompted task, else
        :func:`agents.common.evaluation.recovery`).
    :return: ``dict(status="ok", metrics={str(T): {...}}, steps, train_s, eval_s, step_s_median (median wall
        seconds of one optimisation step, see :class:`_StepTimer`), checkpoint, selection)``
        or ``dict(status="failed", error=...)``.
    """
    torch.set_num_threads(1)
    run, t0 = job["run"], time.perf_counter()
    try:
        agent = run["agent"]
        section = {agent: LEARNERS[agent].config_class(**run["learner"])}
        start = {}
        if job["start_from"] is not None:
            start = {"fork_from" if run.get("start") == "fork" else "init": job["start_from"]}
        steps = run["train"]["max_steps"]
        cfg = TrainConfig(
            agent=agent,
            task=job.get("task_spec") or job["task"],
            seed=job["seed"],
            logdir=job["logdir"],
            device=job["device"],
            progress=False,
            overwrite=True,
            ckpt_every=steps,
            log_every=max(1, steps // 10),
            eval_samples=job["eval_samples"],
            eval_temperature=job["default_temperature"],
            model=ModelConfig(**job["model"]),
            **run["train"],
            **start,
            **section,
        )
        select, timer = _Select(run.get("select_every", 0)), _StepTimer()
        trainer = Trainer(cfg, callbacks=[select, timer])
        try:
            default = trainer.train()  # ends with evaluate_policy at the default temperature, seed = the seed
        finally:
            trainer.close()
        train_s = time.perf_counter() - t0
        policy, task, device = trainer.policy, trainer.task, trainer.device
        checkpoint = str(trainer.ckpt_path)
        selection = None
        if select.every:
            best_nll, best_step = select.best
            selection = {
                "split": "valid",
                "metric": "nll",
                "every": select.every,
                "best_step": best_step,
                "best_valid_nll": best_nll,
                "curve": select.curve,
            }
            checkpoint = str(Path(job["logdir"]) / "best.pt")
            state = torch.load(checkpoint, map_location=device, weights_only=True)
            policy.load_state_dict(state["model"])  # report the selected checkpoint, on test
            default = None
        t1 = time.perf_counter()
        metrics = {}
        if run.get("rerank"):
            return {
                "status": "ok",
                "metrics": _rerank_metrics(trainer, policy, task, device, job, run["rerank"]),
                "steps": steps,
                "train_s": round(train_s, 2),
                "eval_s": round(time.perf_counter() - t1, 2),
                "step_s_median": round(statistics.median(timer.seconds), 5) if timer.seconds else None,
                "checkpoint": checkpoint,
                "selection": selection,
                "critic": {k: default.get(k) for k in ("critic_best_step", "critic_loss")} if default else None,
            }
        for temp in job["temperatures"]:
            if temp == job["default_temperature"] and default is not None:
                m = dict(default)
            else:
                m = evaluate_policy(
                    policy, task, num_samples=job["eval_samples"], device=device, seed=job["seed"], temperature=temp
                )
            if task.oracle is not None:
                m["nll_at_t"] = heldout_nll(Tempered(policy, temp), task, "test", device=device)["nll"]
            n_rec = job.get("recovery_samples", 0)
            if n_rec and temp == job["default_temperature"]:
                probe = prompted_recovery if task.prompts is not None else recovery
                m.update(probe(policy, task, num_samples=n_rec, seed=job["seed"], temperature=temp))
            metrics[repr(float(temp))] = {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}
        return {
            "status": "ok",
            "metrics": metrics,
            "steps": steps,
            "train_s": round(train_s, 2),
            "eval_s": round(time.perf_counter() - t1, 2),
            "step_s_median": round(statistics.median(timer.seconds), 5) if timer.seconds else None,
            "checkpoint": checkpoint,
            "selection": selection,
        }
    except Exception as e:  # recorded, the experiment goes on
        return {"status": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-2000:]}


def _rerank_metrics(trainer, policy, task, device, job: dict, candidates: int) -> dict:
    """An ``nce`` arm with ``rerank = N``: per temperature, ``eval_samples`` outputs each resampled from N samples
    of the (frozen) base policy at that temperature in proportion to ``exp(-E)`` of the trained critic
    (:func:`agents.generation.generate_reranked`; the critic of lowest held-out loss on ``valid`` when the
    learner keeps the best, prompts from ``test``), scored by :func:`agents.common.evaluation.evaluate_samples`
    with the sampling seed = the seed; ``nll``: the policy's held-out NLL on ``test`` (reranking does not change
    the model); ``rerank_ess``: mean effective sample size of the weights. No ``nll_at_t`` (the reranked
    distribution is not a tempered model), so reranking has no point on the oracle frontier."""
    critic = trainer.learner.critic
    critic.eval()
    nll = heldout_nll(policy, task, "test", device=device)["nll"]
    out = {}
    for temp in job["temperatures"]:
        g = generate_reranked(
            policy,
            task,
            job["eval_samples"],
            rerank="critic",
            candidates=candidates,
            critic=critic,
            temperature=temp,
            seed=job["seed"],
            device=device,
            batch_size=max(1, 4096 // candidates),
        )
        prompts = [task.tokenizer.decode(p) for p in g.prompts] if task.prompts is not None else None
        m = evaluate_samples(task, g.sequences, prompts=prompts, seed=job["seed"])
        m.update(nll=nll, rerank_ess=float(g.ess.mean()) if g.ess is not None else 1.0)
        out[repr(float(temp))] = {k: v for k, v in m.items() if isinstance(v, (int, float)) or v is None}
    return out


# ----------------------------------------------------------------------------------------------------------
# the experiment: cells, resume, results file


def cell_key(task: str, arm: str, seed: int) -> str:
    return f"{task}/{arm}/{seed}"


def _diff(a, b, prefix=""):
    """Paths where two JSON-like values differ (for the refusal message)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [f"{prefix}: {b!r} -> {a!r}"]


def _rel(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it (for results files), else as given."""
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _reuse_cells(
    exp, tasks: list, seeds: list, hashes: dict, cells: dict, other: Path, invocation: int, log: Callable
) -> list:
    """Copy into ``cells`` the cells of results file ``other`` that are this experiment's computations
    (module docstring); returns the copied keys. Nothing is copied from a file with another model,
    evaluation or base config, or for a task whose corpus hash differs (each logged)."""
    if not other.is_file():
        raise FileNotFoundError(f"--reuse: no results file {other}")
    data = json.loads(other.read_text())
    if data.get("format") != FORMAT:
        raise ExperimentError(f"--reuse: {other} is not a results file of the runner (format {FORMAT!r})")
    res, mine = data["resolved"], exp.resolved()
    keys = ("model", "eval_samples", "temperatures", "default_temperature", "base")
    diffs = [k for k in keys if res.get(k) != mine[k]]
    if diffs:
        log(f"reuse: {other}: nothing copied (another {', '.join(diffs)})")
        return []
    provs = [inv["provenance"] for inv in data["invocations"]]
    copied = []
    for task in tasks:
        old = {p["corpus_hashes"].get(task) for p in provs} - {None}
        if old and old != {hashes[task]}:
            log(f"reuse: {other}: nothing copied for {task!r} (corpus hash {sorted(old)} != {hashes[task]})")
            continue
        names = {"base": "base"}  # our arm -> the first arm of theirs with the same complete config
        for arm, run in exp.arms.items():
            same = [b for b, o in res["arms"].items() if o == run]
            if same:
                names[arm] = same[0]
        for seed in seeds:
            ours = cells.get(cell_key(task, "base", seed))
            theirs = data["cells"].get(cell_key(task, "base", seed), {})
            if theirs.get("status") != "ok":
                continue
            if ours is not None and ours.get("status") == "ok":
                origin = ours.get("reused_from") or {}
                if origin.get("file") != _rel(other) or origin.get("cell") != cell_key(task, "base", seed):
                    continue  # our arms start from another base run: copying theirs would break the pairing
            for arm, name in names.items():
                key, src = cell_key(task, arm, seed), cell_key(task, name, seed)
                cell = data["cells"].get(src, {})
                if cell.get("status") != "ok" or cells.get(key, {}).get("status") == "ok":
                    continue
                i = cell.get("invocation", 0)
                p = provs[i] if i < len(provs) else {}
                cells[key] = {
                    **cell,
                    "invocation": invocation,
                    "reused_from": {
                        "file": _rel(other),
                        "cell": src,
                        "invocation": i,
                        "commit": p.get("commit"),
                        "dirty": p.get("dirty"),
                        "device": (p.get("machine") or {}).get("device_name"),
                    },
                }
                copied.append(key)
    log(f"reuse: {other}: {len(copied)} cells copied")
    return copied


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def run_experiment(
    name: str,
    seeds: list | None = None,
    workers: int = 1,
    device: str = "cpu",
    quick: bool = False,
    out_dir: Path = RESULTS_DIR,
    scratch: Path = Path("runs/bench"),
    command: str | None = None,
    log: Callable = print,
    render: bool = True,
    reuse: list | tuple = (),
    arms: list | None = None,
    tasks: list | None = None,
) -> dict:
    """Run (or resume) an experiment; returns the results dict written to ``results_stem(exp).json``.

    :param seeds: override the file's seeds (the results record which seeds ran).
    :param workers: cells at a time (processes, one torch thread each).
    :param reuse: other results files whose identical cells are copied instead of run (module docstring).
    :param arms: run only these arms in this invocation (and the bases they need); the others stay missing
        (e.g. to be copied later with ``reuse`` from a run still in progress).
    :param tasks: likewise, run (and copy) only the cells of these tasks in this invocation.
    :raises ExperimentError: if the results file was made with another resolved configuration; if a seed of
        an experiment that ``confirms`` another is one of the other's; if a copied base's checkpoint, needed
        by an arm still to run, is missing.
    """
    exp = load_experiment(name, quick=quick)
    seeds = [int(s) for s in (seeds if seeds is not None else exp.seeds)]
    check_fresh_seeds(exp.confirms, seeds, "--seeds")
    unknown = [a for a in arms or () if a not in exp.arms]
    if unknown:
        raise ExperimentError(f"--arms: {unknown} are not arms of {exp.name!r}; arms are {list(exp.arms)}")
    run_arms = [a for a in exp.arms if arms is None or a in arms]
    unknown = [t for t in tasks or () if t not in exp.tasks]
    if unknown:
        raise ExperimentError(f"--tasks: {unknown} are not tasks of {exp.name!r}; tasks are {exp.tasks}")
    run_tasks = [t for t in exp.tasks if tasks is None or t in tasks]
    stem = results_stem(exp, out_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path = stem.with_suffix(".json")
    resolved = exp.resolved()
    if json_path.is_file():
        data = json.loads(json_path.read_text())
        if data.get("format") != FORMAT:
            raise ExperimentError(
                f"{json_path} is not a results file of the runner (an older script's report); move it away "
                "(git keeps it) to regenerate it through the runner"
            )
        if data.get("resolved") != resolved:
            diffs = _diff(resolved, data.get("resolved", {}))
            raise ExperimentError(
                f"{json_path} was made with another configuration of {exp.name!r} "
                f"({'; '.join(diffs[:5])}{' ...' if len(diffs) > 5 else ''}); move it away to "
                "rerun, or name the changed experiment differently"
            )
    else:
        data = {
            "format": FORMAT,
            "experiment": exp.name,
            "file": os.path.relpath(exp.path, HERE.parent),
            "description": exp.description,
            "quick": quick,
            "control": exp.control,
            "metrics": exp.metrics,
            "resolved": resolved,
            "invocations": [],
            "cells": {},
        }
    data["control"], data["metrics"], data["description"] = exp.control, exp.metrics, exp.description
    if exp.confirms is not None:
        data["confirms"] = exp.confirms
    hashes = {t: exp.make_task(t).corpus_hash for t in exp.tasks}
    for task, h in hashes.items():
        for inv in data["invocations"]:
            old = inv["provenance"]["corpus_hashes"].get(task)
            if old is not None and old != h:
                raise ExperimentError(
                    f"task {task!r}: corpus hash {h[:12]} differs from {old[:12]} of earlier "
                    f"cells in {json_path} (another Python's standard library?); move it away"
                )
    invocation = {
        "command": command or "python -m benchmarks run " + shlex.join(sys.argv[2:]),
        "seeds": seeds,
        "workers": workers,
        "provenance": provenance(device, hashes),
        "cells": [],
    }
    data["invocations"].append(invocation)
    cells = data["cells"]
    scratch = Path(scratch) / stem.name

    def job(task, arm, seed, start_from):
        run = exp.base if arm == "base" else exp.arms[arm]
        return {
            "task": task_arg(task),
            "task_spec": exp.task_spec(task) if exp.task_options.get(task) else None,
            "seed": seed,
            "arm": arm,
            "run": run,
            "model": exp.model,
            "device": device,
            "logdir": str(scratch / task_label(task) / f"{arm}-s{seed}"),
            "start_from": start_from,
            "temperatures": exp.temperatures,
            "default_temperature": exp.default_temperature,
            "eval_samples": exp.eval_samples,
            "recovery_samples": exp.recovery_samples,
        }

    def done(key):
        return cells.get(key, {}).get("status") == "ok"

    for other in reuse:
        copied = _reuse_cells(exp, run_tasks, seeds, hashes, cells, Path(other), len(data["invocations"]) - 1, log)
        if copied:
            invocation.setdefault("reused", {})[_rel(Path(other))] = copied
    for task in run_tasks:
        for seed in seeds:
            base = cells.get(cell_key(task, "base", seed), {})
            arms_left = [a for a in run_arms if not done(cell_key(task, a, seed))]
            if base.get("reused_from") and arms_left and not Path(base.get("checkpoint", "")).is_file():
                raise ExperimentError(
                    f"cell {cell_key(task, 'base', seed)} was copied from {base['reused_from']['file']}, but its "
                    f"checkpoint {base.get('checkpoint')} (needed by {arms_left}) is missing; make the other "
                    "run's scratch directory reachable at that path (e.g. a symlink)"
                )

    t0 = time.perf_counter()
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        pending: dict = {}
        for task in run_tasks:
            for seed in seeds:
                arms_left = [a for a in run_arms if not done(cell_key(task, a, seed))]
                base_key = cell_key(task, "base", seed)
                ckpt = cells.get(base_key, {}).get("checkpoint")
                if not done(base_key) or (arms_left and not (ckpt and Path(ckpt).is_file())):
                    pending[pool.submit(run_cell, job(task, "base", seed, None))] = (task, "base", seed)
                else:
                    for arm in arms_left:
                        pending[pool.submit(run_cell, job(task, arm, seed, ckpt))] = (task, arm, seed)
        while pending:
            finished, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in finished:
                task, arm, seed = pending.pop(fut)
                res = fut.result()
                res["invocation"] = len(data["invocations"]) - 1
                cells[cell_key(task, arm, seed)] = res
                invocation["cells"].append(cell_key(task, arm, seed))
                log(
                    f"[{time.perf_counter() - t0:7.1f} s] {task} {arm} seed {seed}: {res['status']}"
                    + (f" ({res['error']})" if res["status"] != "ok" else "")
                )
                if arm == "base" and res["status"] == "ok":
                    for a in run_arms:
                        if not done(cell_key(task, a, seed)):
                            pending[pool.submit(run_cell, job(task, a, seed, res["checkpoint"]))] = (task, a, seed)
                invocation["wall_s"] = round(time.perf_counter() - t0, 1)
                _write_json(json_path, data)
    invocation["wall_s"] = round(time.perf_counter() - t0, 1)
    _write_json(json_path, data)
    if render:
        render_files(json_path)
    return data
