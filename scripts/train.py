"""Train a generator on a task; with no arguments, the main job.

    python scripts/train.py                                   # main job: MLE on python-lines
    python scripts/train.py --agent mle --task pydoc-text --max-steps 500
    python scripts/train.py --logdir runs/x --resume          # continue a killed run
    torchrun --nproc_per_node 2 scripts/train.py --device cpu # DDP (gloo on CPU)

Every flag: ``python scripts/train.py --help``. The run directory
(``--logdir``) receives ``config.json``, TensorBoard events,
``checkpoint.pt`` and ``metrics.json``.
"""

from __future__ import annotations

import sys

import tyro

from agents.evaluation import SUMMARY_COLUMNS, format_metrics_table
from agents.trainer import TrainConfig, Trainer


def main(argv: "list[str] | None" = None) -> dict | None:
    cfg = tyro.cli(TrainConfig, args=argv, description=__doc__)
    trainer = Trainer(cfg)
    try:
        before = trainer.evaluate() if trainer.step == 0 and trainer.is_main else None
        metrics = trainer.train()
    finally:
        trainer.close()
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
    main(sys.argv[1:])
