"""SequenceMatch hypotheses (issue: "SequenceMatch that beats MLE where errors compound").

Protocol (equal budget, same start): per seed, one MLE run trains the base
policy (``--base-steps``); every arm then fine-tunes that checkpoint for
``--steps`` optimiser steps at the same small learning rate (``--lr``), same
batch size, and is evaluated the same way (``eval_samples`` episodes on the
task's test prompts; validity = exact-answer accuracy on ``arithmetic``).

Arms:

==========================  ====================================================
``mle``                     continued MLE (the control)
``mle_backspace``           continued MLE + backspace (p = 0.05, wrong tokens not imitated)
``sm``                      SequenceMatch, the paper's recipe as we had it (α = 10, SM + η·BC)
``sm_no_wrong``             H1: injected wrong tokens excluded from the data reward term
``sm_alpha100``             H2: α = 100 (r² coefficient 0.0025 in logit units)
``sm_alpha_model400``       H2b: α = 10 on data, α = 400 on model samples
``sm_convex``               H3: (1 − η)·BC + η·SM, η = 0.001
``sm_token``                H6: SM terms on MLE's per-token scale
``sm_model_wrong``          H5: wrong tokens drawn from the model (plausible errors)
==========================  ====================================================

Runs are processes with one torch thread each, ``--jobs`` at a time.

    python benchmarks/sequencematch_hypotheses.py --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

ARMS: dict[str, tuple[str, dict]] = {
    "mle": ("mle", {}),
    "mle_backspace": ("mle", {"backspace_p": 0.05}),
    "sm": ("sequencematch", {}),
    "sm_no_wrong": ("sequencematch", {"imitate_wrong_tokens": False}),
    "sm_alpha100": ("sequencematch", {"alpha": 100.0}),
    "sm_alpha_model400": ("sequencematch", {"alpha_model": 400.0}),
    "sm_convex": ("sequencematch", {"mix": "convex"}),
    "sm_token": ("sequencematch", {"normalize": "token"}),
    "sm_model_wrong": ("sequencematch", {"wrong_tokens": "model"}),
}
METRICS = ("validity", "nll", "distinct_2", "backspace_rate", "mean_length")


def _train(kw: dict) -> dict:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)
    from agents.trainer import ModelConfig, TrainConfig, Trainer

    sections = kw.pop("sections", {})
    model = ModelConfig(**kw.pop("model"))
    cfg = TrainConfig(**kw, model=model, device="cpu", progress=False, overwrite=True)  # scratch runs are redone
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    return {"metrics": metrics, "seconds": time.perf_counter() - t0}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--base-steps", type=int, default=1500, help="MLE steps of the base policy")
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every arm")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak lr of every arm")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="2x4x128", help="n_layer x n_head x n_embd")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--scratch", default="runs/sm_hypotheses")
    ap.add_argument("--out", default="benchmarks/results/sequencematch_hypotheses")
    args = ap.parse_args(argv)
    n_layer, n_head, n_embd = map(int, args.model.split("x"))
    model = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    scratch = Path(args.scratch)
    common = dict(task=args.task, batch_size=args.batch_size, eval_samples=args.eval_samples, model=model)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        bases = {s: pool.submit(_train, dict(common, agent="mle", seed=s, max_steps=args.base_steps, lr=args.base_lr,
                                             warmup_steps=100, logdir=str(scratch / f"base-s{s}"),
                                             ckpt_every=args.base_steps)) for s in args.seeds}
        base_metrics = {s: f.result() for s, f in bases.items()}
        futures = {}
        for s in args.seeds:
            for arm in args.arms:
                agent, values = ARMS[arm]
                futures[(arm, s)] = pool.submit(_train, dict(
                    common, agent=agent, seed=s, max_steps=args.steps, lr=args.lr, warmup_steps=20,
                    min_lr_ratio=1.0, init=str(scratch / f"base-s{s}" / "checkpoint.pt"),
                    logdir=str(scratch / f"{arm}-s{s}"), ckpt_every=args.steps, sections={agent: values}))
        runs = {k: f.result() for k, f in futures.items()}
    wall = time.perf_counter() - t0

    summary = {}
    for arm in args.arms:
        row = {}
        for m in METRICS:
            vals = [runs[(arm, s)]["metrics"][m] for s in args.seeds if runs[(arm, s)]["metrics"].get(m) is not None]
            if vals:
                row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        row["seconds"] = (statistics.mean(runs[(arm, s)]["seconds"] for s in args.seeds), 0.0)
        summary[arm] = row
    base = {m: statistics.mean(base_metrics[s]["metrics"][m] for s in args.seeds) for m in ("validity", "nll")}

    def verdict(arm: str) -> str:
        (ma, sa), (mb, sb) = summary[arm]["validity"], summary["mle"]["validity"]
        if ma - sa > mb + sb:
            return "beats MLE beyond the spread"
        if ma + sa < mb - sb:
            return "worse than MLE beyond the spread"
        return "within the spread"

    report = {"command": "python benchmarks/sequencematch_hypotheses.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), 1 torch thread per run, CPU",
              "args": vars(args), "wall_s": wall, "base_mean": base,
              "runs": {f"{a}-s{s}": r for (a, s), r in runs.items()},
              "summary": summary, "verdicts": {a: verdict(a) for a in args.arms if a != "mle" and "validity" in summary[a]}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# SequenceMatch hypotheses on `{args.task}`", "",
             f"Command: `{report['command']}`  ", f"Machine: {report['machine']}; wall {wall / 60:.1f} min.  ",
             f"Budget: base MLE {args.base_steps} steps (lr {args.base_lr}), then every arm {args.steps} steps at lr "
             f"{args.lr} (constant after 20 warm-up steps), batch {args.batch_size} demonstrations, model "
             f"{args.model}, {len(args.seeds)} seeds ({args.seeds}), {args.eval_samples} evaluation episodes on the "
             f"test prompts.  ",
             f"Base MLE (mean over seeds): validity {base['validity']:.3f}, nll {base['nll']:.3f}.", "",
             "| arm | " + " | ".join(METRICS) + " | s/run | vs MLE (validity) |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for arm in args.arms:
        cells = [f"{summary[arm][m][0]:.3f} ± {summary[arm][m][1]:.3f}" if m in summary[arm] else "–" for m in METRICS]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {summary[arm]['seconds'][0]:.0f} | "
                     f"{report['verdicts'].get(arm, 'control')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
