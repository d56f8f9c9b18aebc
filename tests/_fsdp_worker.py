"""Runs training phases for tests/test_fsdp.py: under ``torchrun`` (one process per rank) or in the test process.

``python -m torch.distributed.run --nproc_per_node 2 tests/_fsdp_worker.py PHASES.json`` runs each phase of the
JSON list in order in the same ranks and process group: ``{"cfg": {...TrainConfig dict...}, "stop_at": N or null,
"copy_to": DIR or null}``. Rank 0 writes each step's ``train/loss`` (the mean over ranks) to
``<logdir>/losses_<first>_<last>.json`` and, with ``copy_to``, copies the run directory there after the phase (a
checkpoint to resume elsewhere).
"""

import json
import shutil
import sys
from pathlib import Path

import torch.distributed as dist

from agents.trainer import Callback, TrainConfig, Trainer


class LossRecorder(Callback):
    """Collects ``{step: train/loss}`` (log every step to see them all)."""

    def __init__(self):
        self.losses = {}

    def on_step_end(self, trainer, metrics):
        if "train/loss" in metrics:
            self.losses[trainer.step] = metrics["train/loss"]


def run_phase(phase: dict) -> dict:
    """One phase (see the module doc); returns ``{step: loss}`` of the steps it ran (rank 0; {} elsewhere)."""
    cfg = TrainConfig.from_dict(phase["cfg"])
    recorder = LossRecorder()
    trainer = Trainer(cfg, callbacks=[recorder], resume_overrides=("device", "progress"))
    try:
        start = trainer.step
        trainer.train(stop_at=phase.get("stop_at"))
        end, rank = trainer.step, trainer.rank
    finally:
        trainer.close()
    if rank == 0:
        logdir = Path(cfg.logdir)
        (logdir / f"losses_{start}_{end}.json").write_text(json.dumps(recorder.losses))
        if phase.get("copy_to"):
            shutil.copytree(logdir, phase["copy_to"], ignore=shutil.ignore_patterns(".lock"))
    return recorder.losses


if __name__ == "__main__":
    dist.init_process_group("gloo")  # one group for every phase (the trainers leave it alone)
    for phase in json.loads(Path(sys.argv[1]).read_text()):
        run_phase(phase)
        dist.barrier()
    dist.destroy_process_group()
