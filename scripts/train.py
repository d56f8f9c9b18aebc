"""Train a generator on a task; with no arguments, the main job.

    python scripts/train.py                                   # the main job (below)
    python scripts/train.py --agent mle --task pydoc-text --max-steps 500
    python scripts/train.py --agent sequencematch --init runs/main/mle/checkpoint.pt --logdir runs/sm
    python scripts/train.py --logdir runs/sm --resume         # continue a killed run
    torchrun --nproc_per_node 2 scripts/train.py --device cpu # DDP (gloo on CPU)
    torchrun --nproc_per_node 8 scripts/train.py --dist fsdp --policy hf:PATH  # FSDP2 (README: Multi-GPU)

The main job (no arguments) trains on ``python-lines``: MLE from scratch
(``runs/main/mle``), then three arms fine-tuned from that checkpoint at equal
budget -- continued MLE (the control, ``runs/main/mle_continued``), MLE +
backspace (``runs/main/mle_backspace``) and SequenceMatch
(``runs/main/sequencematch``) -- and prints their evaluations side by side
with the untrained policy's, the recovery probe, and one line naming the best
arm on validity against the control. Re-running it resumes a killed stage and
reuses finished ones whose saved config is the stage's; a stage directory
holding another run is refused, or replaced with ``python scripts/train.py
--overwrite`` (the main job, rerunning such stages).

Every flag: ``python scripts/train.py --help``. A run directory
(``--logdir``) receives ``config.json``, TensorBoard events,
``checkpoint.pt`` and ``metrics.json``. A directory that holds a run is
refused unless ``--resume`` (continue it) or ``--overwrite`` (delete it and
start again); one run at a time holds it (lock file ``.lock``). ``--resume``
refuses flags that change the run (``--lr``, ``--seed``, ...); it accepts
``--device``, ``--progress``, ``--log-every``, ``--ckpt-every`` and a larger
``--max-steps``, which extends the run (the cosine lr schedule is recomputed
over the new ``--max-steps`` from the resumed step on). A bad flag, path or
checkpoint exits with status 2 and one line ``error: ...``; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import json
from pathlib import Path

from agents.common.checkpoint import load_checkpoint, load_policy
from agents.common.cli import RunDirectoryError, parse_flags, run_cli
from agents.common.evaluation import recovery
from agents.common.report import SUMMARY_COLUMNS, comparison_line, format_metrics_table
from agents.common.rundir import run_marker
from agents.learners import LEARNERS
from agents.mle import MLEConfig
from agents.trainer import RESUME_FLAGS, NonFiniteLossError, TrainConfig, Trainer, resume_conflicts

MAIN_JOB_DIR = Path("runs/main")
MAIN_JOB_COLUMNS = SUMMARY_COLUMNS + ("recovery_backspace", "recovery_deleted", "recovery_validity")
#: TrainConfig's sections by config class name (flag errors name ``--mle.backspace-p``, not ``MLEConfig.backspace_p``)
SECTIONS = {
    "ModelConfig": "model",
    "EvalFlags": "eval",
    **{cls.config_class.__name__: name for name, cls in LEARNERS.items()},
}


def run(
    cfg: TrainConfig, evaluate_initial: bool = False, resume_overrides: tuple[str, ...] = ("device", "progress")
) -> tuple[Trainer, dict | None, dict | None]:
    """Train one run; returns (trainer, initial metrics or None, final metrics or None off rank 0).

    :param resume_overrides: see :class:`agents.trainer.Trainer`.
    """
    trainer = Trainer(cfg, resume_overrides=resume_overrides)
    try:
        before = trainer.evaluate() if evaluate_initial and trainer.step == 0 else None
        metrics = trainer.train()
    finally:
        trainer.close()
    return trainer, before, metrics


#: the arms of the main job (row name -> run directory, agent, config sections): each fine-tunes the
#: same MLE checkpoint for the same steps at the same lr
MAIN_JOB_ARMS = {
    "mle (continued)": ("mle_continued", "mle", {}),
    "mle + backspace": ("mle_backspace", "mle", {"mle": MLEConfig(backspace_p=0.05)}),
    "sequencematch": ("sequencematch", "sequencematch", {}),
}


def stage_conflicts(saved: TrainConfig, cfg: TrainConfig) -> list[str]:
    """What differs between a stage's saved config and the one the main job would run (``device``,
    ``progress``, ``logdir`` and the actions ``resume``/``overwrite`` aside): ``"--task 'oracle-hmm' (the main
    job's: 'python-lines')"``; empty if it is the same run."""

    def flat(d: dict, prefix: str = "") -> dict:
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    old, new = flat(saved.to_dict()), flat(cfg.to_dict())
    return [
        f"--{k.replace('_', '-')} {old.get(k)!r} (the main job's: {new.get(k)!r})"
        for k in sorted(set(old) | set(new))
        if k not in ("device", "progress", "logdir", "resume", "overwrite", "allow_corpus_mismatch")
        and old.get(k) != new.get(k)
    ]


def _finished_or_run(
    name: str, cfg: TrainConfig, device: str, evaluate_initial: bool = False, overwrite: bool = False
) -> tuple[dict, bool]:
    """Metrics of the run in ``cfg.logdir``: reused if finished, resumed if killed, else trained (+ recovery).

    A finished or killed run is reused only if its saved config is the one the
    main job would run (:func:`stage_conflicts`); otherwise it is refused with
    one line, or replaced when ``overwrite``.

    :return: ``(metrics, reused)``: ``reused`` is True when a finished run's metrics were read back.
    :raises agents.common.cli.RunDirectoryError: a stage directory holding another run, without ``overwrite``.
    """
    logdir = Path(cfg.logdir)
    saved = saved_config(logdir) if (logdir / "checkpoint.pt").exists() or (logdir / "metrics.json").exists() else None
    conflicts = stage_conflicts(saved, cfg) if saved is not None else []
    if conflicts and not overwrite:
        raise RunDirectoryError(
            f"main job stage {name!r}: {logdir} holds another run ({'; '.join(conflicts)}); "
            "move it away, or rerun the main job with --overwrite to replace it"
        )
    if saved is not None and not conflicts and not overwrite and (logdir / "metrics.json").exists():
        print(f"[main job] {name}: reusing the finished run in {logdir} (same config)")
        return json.loads((logdir / "metrics.json").read_text()), True
    if saved is not None and not conflicts and not overwrite and (logdir / "checkpoint.pt").exists():
        print(f"[main job] {name}: resuming the killed run in {logdir}")
        cfg = TrainConfig(logdir=cfg.logdir, resume=True, device=device)
    else:  # nothing to keep (a stage killed before its first checkpoint), or replaced under --overwrite
        cfg.overwrite = True
    trainer, before, metrics = run(cfg, evaluate_initial=evaluate_initial)
    if before is not None:
        (logdir / "initial_metrics.json").write_text(json.dumps(before, indent=2) + "\n")
    policy, task, _ = load_policy(logdir / "checkpoint.pt", trainer.device)
    metrics.update(recovery(policy, task, device=trainer.device))
    (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics, False


def main_job(mle_steps: int = 800, arm_steps: int = 150, device: str = "auto", overwrite: bool = False) -> dict:
    """MLE on python-lines, then three equal-budget arms from its checkpoint; prints the table and the verdict.

    Stage 1 trains MLE from scratch (``runs/main/mle``). Stage 2 fine-tunes
    that checkpoint for ``arm_steps`` steps at lr 3e-4 three ways (the same
    data, batch size and steps): continued MLE (the control), MLE + backspace
    and SequenceMatch (its defaults). Each arm is evaluated the same way
    (validity, held-out NLL, recovery after an injected wrong token).

    A stage directory holding a run with another config is refused (one
    line) unless ``overwrite``, which reruns that stage; when the MLE stage is
    (re)trained, the arms fine-tuned from its old checkpoint are rerun too.
    """
    base = MAIN_JOB_DIR / "mle"
    rows: dict[str, dict] = {}
    rows["mle"], mle_reused = _finished_or_run(
        "mle",
        TrainConfig(
            agent="mle", task="python-lines", max_steps=mle_steps, logdir=str(base), device=device, ckpt_every=200
        ),
        device,
        evaluate_initial=True,
        overwrite=overwrite,
    )
    if (base / "initial_metrics.json").exists():
        rows = {"untrained": json.loads((base / "initial_metrics.json").read_text()), **rows}
    for name, (dirname, agent, sections) in MAIN_JOB_ARMS.items():
        cfg = TrainConfig(
            agent=agent,
            task="python-lines",
            max_steps=arm_steps,
            lr=3e-4,
            warmup_steps=20,
            min_lr_ratio=1.0,
            logdir=str(MAIN_JOB_DIR / dirname),
            device=device,
            ckpt_every=100,
            init=str(base / "checkpoint.pt"),
            **sections,
        )
        rows[f"{name} (+{arm_steps})"], _ = _finished_or_run(name, cfg, device, overwrite=overwrite or not mle_reused)
    print()
    print(format_metrics_table(rows, columns=MAIN_JOB_COLUMNS, drop_empty=True))
    line = comparison_line(
        {k: v for k, v in rows.items() if k not in ("untrained", "mle")},
        control=f"mle (continued) (+{arm_steps})",
        metric="validity",
        num_seeds=1,
    )
    if line:
        print(f"\n{line} Across seeds: benchmarks/results/sequencematch_hypotheses.md.")
    print(f"\nruns: {MAIN_JOB_DIR}/")
    print(f"TensorBoard: tensorboard --logdir {MAIN_JOB_DIR}")
    return rows


def saved_config(logdir: str | Path) -> TrainConfig | None:
    """The config of the run in ``logdir``: its ``config.json``, else its checkpoint's; None if neither exists.

    :raises ValueError: if ``config.json`` cannot be read as a :class:`TrainConfig`.
    :raises CheckpointError: if the checkpoint cannot be read.
    """
    logdir = Path(logdir)
    marker = run_marker(logdir)
    if marker is not None and marker.get("script") not in (None, "train.py"):
        raise RunDirectoryError(f"run directory {str(logdir)!r} holds a {marker['script']} run, not a train.py run")
    if (logdir / "config.json").is_file():
        source = logdir / "config.json"
        try:
            raw = json.loads(source.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"cannot read the run's config {str(source)!r}: {e}") from None
    elif (logdir / "checkpoint.pt").is_file():
        source = logdir / "checkpoint.pt"
        raw = load_checkpoint(source).get("config")
    else:
        return None
    try:
        saved = TrainConfig.from_dict(raw)
    except (ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"{str(source)!r} is not the config of a train.py run ({' '.join(str(e).split())})") from None
    saved.overwrite = False
    return saved


def parse_config(argv: list[str]) -> TrainConfig:
    """The run's config from the command line; with ``--resume``, the saved run's config and the flags given.

    With ``--resume`` the flags are parsed a second time with the saved
    config (:func:`saved_config`) as defaults, so that the result is the run's
    config changed by exactly the flags given; changes outside
    :data:`agents.trainer.RESUME_FLAGS` (or a lower ``--max-steps``) are refused.
    The merge itself happens once, in the trainer
    (:func:`agents.trainer.merge_resumed_config`, with the checkpoint's config).

    :raises ValueError: a bad flag (:class:`~agents.common.cli.FlagError`), or
        ``--resume`` with flags that change the run (all of them listed).
    """
    cfg = parse_flags(TrainConfig, argv, description=__doc__, sections=SECTIONS)
    if not cfg.resume:
        return cfg
    saved = saved_config(cfg.logdir)
    if saved is None:
        return cfg  # the Trainer reports the missing checkpoint
    requested = parse_flags(TrainConfig, argv, description=__doc__, default=saved, sections=SECTIONS)
    requested.logdir = cfg.logdir
    conflicts = resume_conflicts(saved, requested)
    if conflicts:
        raise ValueError(
            f"--resume continues the run in {cfg.logdir!r} as it was configured; these flags would "
            f"change it: {'; '.join(conflicts)}. Drop them, or start a new run (another --logdir, "
            f"or --overwrite)"
        )
    return requested


def _main(argv: list[str]) -> dict | None:
    if not argv or argv == ["--overwrite"]:
        return main_job(overwrite=bool(argv))
    cfg = parse_config(argv)
    trainer, before, metrics = run(
        cfg, evaluate_initial=not cfg.resume and cfg.eval.at_start, resume_overrides=RESUME_FLAGS
    )
    if trainer.is_main and metrics is not None:
        rows = {}
        if before is not None:
            rows["initial policy" if not trainer.cfg.init else f"init ({trainer.cfg.init})"] = before
        rows[f"{trainer.cfg.agent} (step {trainer.step})"] = metrics
        print()
        print(format_metrics_table(rows, columns=SUMMARY_COLUMNS, drop_empty=True))
        print(f"\nrun directory: {trainer.logdir}")
        print(f"TensorBoard:   tensorboard --logdir {trainer.logdir.parent}")
    return metrics


def main(argv: list[str] | None = None) -> dict | None:
    """``train.py`` (arguments: ``sys.argv[1:]`` by default; none = the main job).

    User errors (bad flags, paths, checkpoints, run directories, a non-finite
    loss) exit with status 2 and one line ``error: ...``; ``--debug`` re-raises them.
    """
    return run_cli(_main, argv, extra_errors=(NonFiniteLossError,))


if __name__ == "__main__":
    main()
