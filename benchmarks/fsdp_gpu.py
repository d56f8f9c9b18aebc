"""DDP vs FSDP2 (``--dist ddp`` / ``--dist fsdp``): MLE training tokens/s and peak memory of an HF policy.

    python benchmarks/fsdp_gpu.py --device cuda --nproc 1 --hidden 2048 --layers 16 --out gpu_out   # one GPU
    python benchmarks/fsdp_gpu.py --device cpu --nproc 2 --out /tmp/fsdp_cpu                       # 2 gloo ranks

A random Llama (``hidden`` x ``layers``, byte-level BPE tokenizer trained on the
task; ``benchmarks.train_throughput.make_llama``; nothing downloaded) or
``--policy hf:PATH`` is trained with MLE by :class:`agents.trainer.Trainer`
under ``torchrun --nproc_per_node NPROC``, once per mode, each in a fresh
``torchrun`` (this file with ``--worker``). Both modes train on the same global
batch: FSDP's ``--batch-size`` is global, DDP's is per process, so DDP gets
``batch_size / nproc``.

* **tokens/s**: predicted action tokens of all ranks per second of wall clock
  over the ``--steps`` steps after ``--warmup`` untimed ones (the trainer's
  ``train/tokens_per_s`` per step, weighted by each step's duration).
* **peak memory** (rank 0): CUDA ``torch.cuda.max_memory_allocated`` over the
  timed steps (statistics reset after the warm-up), in MiB; CPU: the process's
  lifetime peak resident set size (``ru_maxrss``), an upper bound.

FSDP on one GPU is a correctness check of the sharded path, not a speed claim
(one rank shards nothing; it pays the gather and mixed-precision casts). With
``--dtype bfloat16`` DDP holds bfloat16 weights and Adam state, FSDP float32
master weights computing in bfloat16: FSDP's memory per parameter is larger on
one rank and divided by the number of ranks on several. Results go to
``<out>/fsdp_gpu.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from agents.trainer import Callback, TrainConfig, Trainer
from benchmarks.provenance import provenance
from benchmarks.train_throughput import make_llama
from seqenv.tasks import make_task

ROOT = Path(__file__).resolve().parents[1]


class _Meter(Callback):
    """Per-step wall clock and ``train/tokens_per_s``; resets the CUDA peak after the warm-up."""

    def __init__(self, warmup: int):
        self.warmup, self.rows, self.t = warmup, [], None
        self.peak_bytes = None

    def on_step_end(self, trainer, metrics):
        now = time.perf_counter()
        if trainer.step > self.warmup and self.t is not None:
            self.rows.append((now - self.t, metrics.get("train/tokens_per_s", 0.0)))
        if trainer.step == self.warmup and trainer.device.type == "cuda":
            torch.cuda.synchronize(trainer.device)
            torch.cuda.reset_peak_memory_stats(trainer.device)
        if trainer.step == trainer.cfg.max_steps and trainer.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(trainer.device)
        self.t = now


def worker(args) -> None:
    """One mode under torchrun: train, then rank 0 writes ``args.result`` (JSON)."""
    meter = _Meter(args.warmup)
    cfg = TrainConfig(
        agent="mle",
        task=args.task,
        policy=args.policy,
        dist=args.dist,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
        max_steps=args.warmup + args.steps,
        log_every=1,
        ckpt_every=10**6,
        eval_samples=8,
        lr=1e-4,
        warmup_steps=0,
        progress=False,
        gradient_checkpointing=args.gradient_checkpointing,
        logdir=args.logdir,
        overwrite=True,
    )
    trainer = Trainer(cfg, callbacks=[meter])
    try:
        n_params = sum(p.numel() for p in trainer.policy.parameters())
        trainer.train()
        rank, world = trainer.rank, trainer.world_size
    finally:
        trainer.close()
    if rank == 0:
        seconds = sum(dt for dt, _ in meter.rows)
        tokens = sum(dt * tps for dt, tps in meter.rows)
        peak = (
            meter.peak_bytes
            if meter.peak_bytes is not None
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        )
        Path(args.result).write_text(
            json.dumps(
                {
                    "dist": args.dist,
                    "world_size": world,
                    "batch_size_flag": args.batch_size,
                    "params": n_params,
                    "timed_steps": len(meter.rows),
                    "seconds": seconds,
                    "tokens_per_s": tokens / max(seconds, 1e-9),
                    "peak_mib": peak / 2**20,
                    "peak_kind": "cuda max_memory_allocated"
                    if meter.peak_bytes is not None
                    else "ru_maxrss (lifetime, upper bound)",
                }
            )
        )


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--nproc", type=int, default=1, help="processes (GPUs) per mode")
    p.add_argument("--policy", help="hf:PATH of a model; default: a random Llama of --hidden x --layers")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--task", default="python-lines")
    p.add_argument("--batch-size", type=int, default=16, help="global batch (DDP gets batch / nproc per process)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--modes", nargs="+", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    p.add_argument("--timeout", type=int, default=600, help="seconds per mode")
    p.add_argument("--out", default="gpu_out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dist", help=argparse.SUPPRESS)
    p.add_argument("--logdir", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if args.batch_size % args.nproc:
        p.error(f"--batch-size {args.batch_size} must be divisible by --nproc {args.nproc}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="fsdp_gpu_"))
    policy = args.policy or "hf:" + str(make_llama(work / "llama", args.task, hidden=args.hidden, layers=args.layers))
    rows = []
    for mode in args.modes:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        batch = args.batch_size if mode == "fsdp" else args.batch_size // args.nproc
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(args.nproc),
            "--master_port",
            str(port),
            str(Path(__file__).resolve()),
            "--worker",
            "--dist",
            mode,
            "--device",
            args.device,
            "--policy",
            policy,
            "--task",
            args.task,
            "--batch-size",
            str(batch),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--logdir",
            str(work / mode),
            "--result",
            str(work / f"{mode}.json"),
        ]
        if args.dtype:
            cmd += ["--dtype", args.dtype]
        if args.gradient_checkpointing:
            cmd += ["--gradient-checkpointing"]
        env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
        if args.device == "cpu":
            env["OMP_NUM_THREADS"] = "1"
        t0 = time.time()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env, cwd=ROOT)
            ok = proc.returncode == 0 and (work / f"{mode}.json").is_file()
            row = (
                json.loads((work / f"{mode}.json").read_text())
                if ok
                else {"dist": mode, "error": (proc.stderr or proc.stdout)[-1500:]}
            )
        except subprocess.TimeoutExpired:
            row = {"dist": mode, "error": f"timed out after {args.timeout} s"}
        row["wall_s"] = time.time() - t0
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
        if "error" in row:
            print(row["error"], file=sys.stderr)
    device = (
        torch.cuda.get_device_name(0)
        if args.device == "cuda" and torch.cuda.is_available()
        else f"CPU ({os.cpu_count()} cores, load {os.getloadavg()[0]:.1f})"
    )
    command = " ".join(shlex.quote(a) for a in ["python", "benchmarks/fsdp_gpu.py", *(argv or sys.argv[1:])])
    report = {
        "command": command,
        "device": device,
        "policy": policy,
        "rows": rows,
        "provenance": provenance(args.device, {args.task: make_task(args.task).corpus_hash}),
    }
    (out / "fsdp_gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# DDP vs FSDP2: MLE tokens/s and peak memory ({device})",
        "",
        f"Command: `{report['command']}`",
        "",
        "| dist | ranks | params | timed steps | tokens/s | peak MiB (rank 0) | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dist']} | - | - | - | failed | - | {r['wall_s']:.0f} |")
        else:
            lines.append(
                f"| {r['dist']} | {r['world_size']} | {r['params'] / 1e6:.1f}M | {r['timed_steps']} | "
                f"{r['tokens_per_s']:.0f} | {r['peak_mib']:.0f} | {r['wall_s']:.0f} |"
            )
    lines += ["", f"Peak memory: {rows[0].get('peak_kind', '-')}."]
    (out / "fsdp_gpu.md").write_text("\n".join(lines) + "\n")
    return report


if __name__ == "__main__":
    main()
