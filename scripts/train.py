"""Train a generator on a task; with no arguments, the main job.

    python scripts/train.py                                   # the main job (below)
    python scripts/train.py --agent mle --task pydoc-text --max-steps 500
    python scripts/train.py --agent sequencematch --init runs/main/mle/checkpoint.pt --logdir runs/sm
    python scripts/train.py --logdir runs/sm --resume         # continue a killed run
    torchrun --nproc_per_node 2 scripts/train.py --device cpu # DDP (gloo on CPU)

The main job (no arguments) trains on ``python-lines``: MLE from scratch
(``runs/main/mle``), then SequenceMatch warm-started from it
(``runs/main/sequencematch``), and prints both evaluations side by side with
the untrained policy's, plus the recovery probe. Re-running it resumes a
killed stage and reuses finished ones.

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
from agents.common.evaluation import SUMMARY_COLUMNS, format_metrics_table, recovery
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


def main_job(mle_steps: int = 800, sm_steps: int = 150, device: str = "auto") -> dict:
    """MLE, then SequenceMatch from the MLE checkpoint, on python-lines; prints the table."""
    stages = {
        "mle": TrainConfig(agent="mle", task="python-lines", max_steps=mle_steps, logdir=str(MAIN_JOB_DIR / "mle"),
                           device=device, ckpt_every=200, model=ModelConfig()),
        "sequencematch": TrainConfig(agent="sequencematch", task="python-lines", max_steps=sm_steps, lr=3e-4,
                                     warmup_steps=20, logdir=str(MAIN_JOB_DIR / "sequencematch"), device=device,
                                     ckpt_every=100, init=str(MAIN_JOB_DIR / "mle" / "checkpoint.pt")),
    }
    rows: dict[str, dict] = {}
    for name, cfg in stages.items():
        logdir = Path(cfg.logdir)
        if (logdir / "metrics.json").exists():
            print(f"[main job] {name}: reusing the finished run in {logdir}")
            metrics = json.loads((logdir / "metrics.json").read_text())
            if name == "mle" and (logdir / "initial_metrics.json").exists():
                rows["untrained"] = json.loads((logdir / "initial_metrics.json").read_text())
        else:
            if (logdir / "checkpoint.pt").exists():
                print(f"[main job] {name}: resuming the killed run in {logdir}")
                cfg = TrainConfig(logdir=cfg.logdir, resume=True, device=device)
            trainer, before, metrics = run(cfg, evaluate_initial=(name == "mle"))
            if before is not None:
                (logdir / "initial_metrics.json").write_text(json.dumps(before, indent=2) + "\n")
                rows["untrained"] = before
            policy, task, _ = load_policy(logdir / "checkpoint.pt", trainer.device)
            metrics.update(recovery(policy, task, device=trainer.device))
            (logdir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        rows[name] = metrics
    print()
    print(format_metrics_table(rows, columns=MAIN_JOB_COLUMNS))
    print(f"\nruns: {MAIN_JOB_DIR}/mle, {MAIN_JOB_DIR}/sequencematch")
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
        print(format_metrics_table(rows, columns=SUMMARY_COLUMNS))
        print(f"\nrun directory: {trainer.logdir}")
        print(f"TensorBoard:   tensorboard --logdir {trainer.logdir.parent}")
    return metrics


if __name__ == "__main__":
    main()
