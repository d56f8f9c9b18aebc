"""Train a generator on a task; with no arguments, the main job.

    python scripts/train.py                                   # the main job (below)
    python scripts/train.py --agent mle --task pydoc-text --max-steps 500
    python scripts/train.py --agent sequencematch --init runs/main/mle/checkpoint.pt --logdir runs/sm
    python scripts/train.py --logdir runs/sm --resume         # continue a killed run
    torchrun --nproc_per_node 2 scripts/train.py --device cpu # DDP (gloo on CPU)

The main job (no arguments) trains on ``python-lines``: MLE from scratch
(``runs/main/mle``), then three arms fine-tuned from that checkpoint at equal
budget -- continued MLE (the control, ``runs/main/mle_continued``), MLE +
backspace (``runs/main/mle_backspace``) and SequenceMatch
(``runs/main/sequencematch``) -- and prints their evaluations side by side
with the untrained policy's, the recovery probe, and one line naming the best
arm on validity against the control. Re-running it resumes a killed stage and
reuses finished ones.

Every flag: ``python scripts/train.py --help``. A run directory
(``--logdir``) receives ``config.json``, TensorBoard events,
``checkpoint.pt`` and ``metrics.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import tyro

from agents.common.checkpoint import load_policy
from agents.common.evaluation import SUMMARY_COLUMNS, comparison_line, format_metrics_table, recovery
from agents.mle import MLEConfig
from agents.trainer import ModelConfig, TrainConfig, Trainer

MAIN_JOB_DIR = Path("runs/main")
MAIN_JOB_COLUMNS = SUMMARY_COLUMNS + ("recovery_backspace", "recovery_deleted", "recovery_validity")


def run(cfg: TrainConfig, evaluate_initial: bool = False) -> tuple[Trainer, dict | None, dict | None]:
    """Train one run; returns (trainer, initial metrics or None, final metrics or None off rank 0)."""
    trainer = Trainer(cfg)
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


def _finished_or_run(name: str, cfg: TrainConfig, device: str, evaluate_initial: bool = False) -> dict:
    """Metrics of the run in ``cfg.logdir``: reused if finished, resumed if killed, else trained (+ recovery)."""
    logdir = Path(cfg.logdir)
    if (logdir / "metrics.json").exists():
        print(f"[main job] {name}: reusing the finished run in {logdir}")
        return json.loads((logdir / "metrics.json").read_text())
    if (logdir / "checkpoint.pt").exists():
        print(f"[main job] {name}: resuming the killed run in {logdir}")
        cfg = TrainConfig(logdir=cfg.logdir, resume=True, device=device)
    trainer, before, metrics = run(cfg, evaluate_initial=evaluate_initial)
    if before is not None:
        (logdir / "initial_metrics.json").write_text(json.dumps(before, indent=2) + "\n")
    policy, task, _ = load_policy(logdir / "checkpoint.pt", trainer.device)
    metrics.update(recovery(policy, task, device=trainer.device))
    (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics


def main_job(mle_steps: int = 800, arm_steps: int = 150, device: str = "auto") -> dict:
    """MLE on python-lines, then three equal-budget arms from its checkpoint; prints the table and the verdict.

    Stage 1 trains MLE from scratch (``runs/main/mle``). Stage 2 fine-tunes
    that checkpoint for ``arm_steps`` steps at lr 3e-4 three ways (the same
    data, batch size and steps): continued MLE (the control), MLE + backspace
    and SequenceMatch (its defaults). Each arm is evaluated the same way
    (validity, held-out NLL, recovery after an injected wrong token).
    """
    base = MAIN_JOB_DIR / "mle"
    rows: dict[str, dict] = {}
    rows["mle"] = _finished_or_run("mle", TrainConfig(agent="mle", task="python-lines", max_steps=mle_steps,
                                                      logdir=str(base), device=device, ckpt_every=200),
                                   device, evaluate_initial=True)
    if (base / "initial_metrics.json").exists():
        rows = {"untrained": json.loads((base / "initial_metrics.json").read_text()), **rows}
    for name, (dirname, agent, sections) in MAIN_JOB_ARMS.items():
        cfg = TrainConfig(agent=agent, task="python-lines", max_steps=arm_steps, lr=3e-4, warmup_steps=20,
                          min_lr_ratio=1.0, logdir=str(MAIN_JOB_DIR / dirname), device=device, ckpt_every=100,
                          init=str(base / "checkpoint.pt"), **sections)
        rows[f"{name} (+{arm_steps})"] = _finished_or_run(name, cfg, device)
    print()
    print(format_metrics_table(rows, columns=MAIN_JOB_COLUMNS, drop_empty=True))
    line = comparison_line({k: v for k, v in rows.items() if k not in ("untrained", "mle")},
                           control=f"mle (continued) (+{arm_steps})", metric="validity", num_seeds=1)
    if line:
        print(f"\n{line} Across seeds: benchmarks/results/sequencematch_hypotheses.md.")
    print(f"\nruns: {MAIN_JOB_DIR}/")
    print(f"TensorBoard: tensorboard --logdir {MAIN_JOB_DIR}")
    return rows


def main(argv: "list[str] | None" = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return main_job()
    cfg = tyro.cli(TrainConfig, args=argv, description=__doc__)
    trainer, before, metrics = run(cfg, evaluate_initial=not cfg.resume)
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


if __name__ == "__main__":
    main()
