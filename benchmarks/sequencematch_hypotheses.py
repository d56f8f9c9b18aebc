"""SequenceMatch hypotheses (issue: "SequenceMatch that beats MLE where errors compound").

Superseded by ``python -m benchmarks run sequencematch_hypotheses`` (``benchmarks/experiments/
sequencematch_hypotheses.toml``: complete arm configs, paired statistics, temperature sweep). This script
defines its arms as *changes to the current defaults*, so since the SequenceMatch defaults changed
(25c1241) its ``sm``, ``sm_no_wrong``, ``sm_alpha100`` and ``sm_model_wrong`` all run today's default;
it no longer regenerates the committed ``sequencematch_hypotheses*.md`` (the experiment file's
``sm_alpha10_imitate`` arm is the recipe those files call ``sm``).

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
``sm_combo``                H1 + H2 + H5: wrong tokens not imitated, α = 100, model wrong tokens
``sm_convex_0.1``           H3 with a larger SequenceMatch share: 0.9·BC + 0.1·SM (+ H1)
``sm_convex_0.5``           0.5·BC + 0.5·SM (+ H1)
==========================  ====================================================

Runs are processes with one torch thread each, ``--jobs`` at a time.

    python benchmarks/sequencematch_hypotheses.py --seeds 0 1 2 --jobs 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: this checkout's agents/ and benchmarks/
    sys.path.insert(0, str(ROOT))

from agents.common.checkpoint import save_checkpoint  # noqa: E402
from agents.common.evaluation import heldout_nll  # noqa: E402
from agents.trainer import ModelConfig, TrainConfig, Trainer  # noqa: E402
from benchmarks.quality import PhaseCounter  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402

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
    # combinations of the variants above
    "sm_combo": ("sequencematch", {"imitate_wrong_tokens": False, "alpha": 100.0, "wrong_tokens": "model"}),
    "sm_convex_0.1": ("sequencematch", {"mix": "convex", "eta": 0.1, "imitate_wrong_tokens": False}),
    "sm_convex_0.5": ("sequencematch", {"mix": "convex", "eta": 0.5, "imitate_wrong_tokens": False}),
}
METRICS = ("validity", "nll", "distinct_2", "backspace_rate", "mean_length")  # shown when the task has them


class _Meter(PhaseCounter):
    """The quality benchmark's token counter and evaluation timer; with ``select_every`` > 0 also the
    base's model selection: held-out NLL on the ``valid`` split every ``select_every`` steps (timed as
    evaluation), the best step's checkpoint kept as ``best.pt`` (early stopping by selection)."""

    def __init__(self, select_every: int = 0):
        super().__init__()
        self.select_every = select_every
        self.best = (math.inf, 0)
        self.curve: list[tuple[int, float]] = []

    def on_step_end(self, trainer, metrics) -> None:
        if self.select_every and trainer.step % self.select_every == 0:
            t0 = time.perf_counter()
            nll = heldout_nll(trainer.policy, trainer.task, "valid")["nll"]
            self.curve.append((trainer.step, nll))
            if nll < self.best[0]:
                self.best = (nll, trainer.step)
                save_checkpoint(trainer.checkpoint_state(), Path(trainer.cfg.logdir) / "best.pt")
            self.eval_s += time.perf_counter() - t0


def _train(kw: dict) -> dict:
    torch.set_num_threads(1)
    sections = kw.pop("sections", {})
    select_every = kw.pop("select_every", 0)
    model = ModelConfig(**kw.pop("model"))
    cfg = TrainConfig(**kw, model=model, device="cpu", progress=False, overwrite=True)  # scratch runs are redone
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    meter = _Meter(select_every)
    t0 = time.perf_counter()
    trainer = Trainer(cfg, callbacks=[meter])
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    seconds = time.perf_counter() - t0
    return {
        "metrics": metrics,
        "seconds": seconds,
        "train_seconds": seconds - meter.eval_s,
        "demo_tokens": meter.tokens,
        "best": meter.best,
        "curve": meter.curve,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--base-steps", type=int, default=1500, help="MLE steps of the base policy")
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument(
        "--select-every",
        type=int,
        default=0,
        help="> 0: every N base steps score the valid split and fork the arms from the best "
        "held-out-NLL checkpoint (early stopping by selection); 0: fork from the last step",
    )
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps of every arm")
    ap.add_argument("--lr", type=float, default=3e-4, help="fine-tuning peak lr of every arm")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="2x4x128", help="n_layer x n_head x n_embd")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument(
        "--metric",
        default=None,
        help="the verdict's metric (default: validity if the task has a checker, else oracle_nll)",
    )
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--scratch", default="runs/sm_hypotheses")
    ap.add_argument("--out", default="benchmarks/results/sequencematch_hypotheses")
    args = ap.parse_args(argv)
    task = make_task(args.task)
    metric = args.metric or ("validity" if task.validity is not None else "oracle_nll")
    lower_is_better = metric in ("nll", "oracle_nll")
    metrics_shown = tuple(dict.fromkeys((metric, *METRICS)))
    if task.oracle is not None:
        metrics_shown = tuple(dict.fromkeys((*metrics_shown, "oracle_nll", "oracle_support")))
    n_layer, n_head, n_embd = map(int, args.model.split("x"))
    model = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    scratch = Path(args.scratch)
    common = dict(task=args.task, batch_size=args.batch_size, eval_samples=args.eval_samples, model=model)
    t0 = time.perf_counter()
    with ProcessPoolExecutor(args.jobs) as pool:
        bases = {
            s: pool.submit(
                _train,
                dict(
                    common,
                    agent="mle",
                    seed=s,
                    max_steps=args.base_steps,
                    lr=args.base_lr,
                    warmup_steps=100,
                    logdir=str(scratch / f"base-s{s}"),
                    ckpt_every=args.base_steps,
                    select_every=args.select_every,
                ),
            )
            for s in args.seeds
        }
        base_runs = {s: f.result() for s, f in bases.items()}
        fork = "best.pt" if args.select_every else "checkpoint.pt"
        futures = {}
        for s in args.seeds:
            for arm in args.arms:
                agent, values = ARMS[arm]
                futures[(arm, s)] = pool.submit(
                    _train,
                    dict(
                        common,
                        agent=agent,
                        seed=s,
                        max_steps=args.steps,
                        lr=args.lr,
                        warmup_steps=20,
                        min_lr_ratio=1.0,
                        init=str(scratch / f"base-s{s}" / fork),
                        logdir=str(scratch / f"{arm}-s{s}"),
                        ckpt_every=args.steps,
                        sections={agent: values},
                    ),
                )
        runs = {k: f.result() for k, f in futures.items()}
    wall = time.perf_counter() - t0

    def per_token(r):  # optimiser-loop seconds per demonstration token
        return r["train_seconds"] / max(r["demo_tokens"], 1)

    summary = {}
    for arm in args.arms:
        row = {}
        for m in metrics_shown:
            vals = [runs[(arm, s)]["metrics"][m] for s in args.seeds if runs[(arm, s)]["metrics"].get(m) is not None]
            if vals:
                row[m] = (statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0)
        if "mle" in args.arms:
            ratios = [per_token(runs[(arm, s)]) / per_token(runs[("mle", s)]) for s in args.seeds]
            row["cost_vs_mle"] = (statistics.mean(ratios), statistics.stdev(ratios) if len(ratios) > 1 else 0.0)
        summary[arm] = row
    base = {
        m: statistics.mean(base_runs[s]["metrics"][m] for s in args.seeds)
        for m in dict.fromkeys((metric, "nll"))
        if base_runs[args.seeds[0]]["metrics"].get(m) is not None
    }
    best_steps = [base_runs[s]["best"][1] for s in args.seeds] if args.select_every else None

    def verdict(arm: str) -> str:
        if metric not in summary[arm] or metric not in summary.get("mle", {}):
            return "–"
        (ma, sa), (mb, sb) = summary[arm][metric], summary["mle"][metric]
        sign = -1 if lower_is_better else 1
        if sign * (ma - mb) > sa + sb:
            return "beats MLE beyond the spread"
        if sign * (mb - ma) > sa + sb:
            return "worse than MLE beyond the spread"
        return "within the spread"

    report = {
        "command": "python benchmarks/sequencematch_hypotheses.py " + " ".join(argv or sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), 1 torch thread per "
        f"run, {args.jobs} runs at a time, CPU",
        "args": vars(args),
        "metric": metric,
        "wall_s": wall,
        "base_mean": base,
        "base_best_steps": best_steps,
        "base_curves": {s: base_runs[s]["curve"] for s in args.seeds},
        "runs": {f"{a}-s{s}": r for (a, s), r in runs.items()},
        "summary": summary,
        "verdicts": {a: verdict(a) for a in args.arms if a != "mle"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    selection = (
        f"; arms fork from the best valid-NLL step (scored every {args.select_every} steps; best steps {best_steps})"
        if args.select_every
        else "; arms fork from the last step"
    )
    lines = [
        f"# SequenceMatch hypotheses on `{args.task}`",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall {wall / 60:.1f} min.  ",
        f"Budget: base MLE {args.base_steps} steps (lr {args.base_lr}){selection}; every arm then {args.steps} "
        f"steps at lr {args.lr} (constant after 20 warm-up steps), batch {args.batch_size} demonstrations, "
        f"model {args.model}, {len(args.seeds)} seeds ({args.seeds}), {args.eval_samples} evaluation episodes "
        f"(on the test prompts for a prompted task). Mean ± std over seeds.  ",
        "Base MLE (mean over seeds): " + ", ".join(f"{k} {v:.3f}" for k, v in base.items()) + ".  ",
        "`cost_vs_mle`: optimiser-loop seconds per demonstration token over the same for continued MLE "
        "(same seed, same run; evaluations excluded).",
        "",
        "| arm | " + " | ".join(metrics_shown) + f" | cost_vs_mle | vs MLE ({metric}) |",
        "|---|" + "---|" * (len(metrics_shown) + 2),
    ]
    for arm in args.arms:
        cells = [
            f"{summary[arm][m][0]:.3f} ± {summary[arm][m][1]:.3f}" if m in summary[arm] else "–"
            for m in (*metrics_shown, "cost_vs_mle")
        ]
        lines.append(f"| {arm} | " + " | ".join(cells) + f" | {report['verdicts'].get(arm, 'control')} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return report


if __name__ == "__main__":
    main()
