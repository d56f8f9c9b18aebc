"""Where SequenceMatch's gradient goes, and the fix candidates of issue 26, on base-10 ``arithmetic``.

Protocol: per seed, one MLE run trains the base policy (``--base-steps`` at
``--base-lr``, cosine); every arm then fine-tunes that checkpoint for
``--steps`` optimiser steps at ``--lr`` (constant after 20 warm-up steps),
batch ``--batch-size``, the same seed (so the same demonstrations in the same
order). Arms:

======================  ============================================================
``mle``                 continued MLE (the control)
``mle_backspace``       MLE + backspace, the augmentation of SequenceMatch's defaults
                        (p = 0.05, wrong tokens drawn from the model, not imitated)
``sm``                  SequenceMatch, current defaults
``sm_fresh``            (a) fresh model samples on the data batch's prompts every step
``sm_transition``       (b) uniform transition sampling (IQ-Learn), LS-IQ absorbing transition
``sm_token``            (c) SM terms on the per-token scale
``sm_warm``             (d) BC (= MLE + backspace) for half the steps, then (1 − η)·BC + η·SM, η = 0.1
``sm_fresh_transition`` (a) + (b)
``sm_alpha1000``        (e) α = 1000: a tenth of the default's r² weight
``sm_no_routing``       the wrong-token routing term cancelled (``wrong_token_value="cancel"``)
======================  ============================================================

Every SequenceMatch arm logs the per-term gradient diagnostics
(``SequenceMatchConfig.diagnostics_every``); they are collected here at every
diagnostics step and printed at the fork (the first) and every few hundred
steps. Evaluation of every arm: exact-answer accuracy (``validity``) over
``--temperatures`` on the test prompts, held-out NLL of the test answers, and
the recovery probe (:func:`prompted_recovery`). Cost per token: optimiser-loop
seconds (evaluations and diagnostics excluded) per demonstration token over
the same for continued MLE of the same seed.

One process, one torch thread, runs in sequence::

    python benchmarks/sequencematch_gradients.py --seeds 0 1 2 --steps 600
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
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: this checkout's agents/ and benchmarks/
    sys.path.insert(0, str(ROOT))

from agents.common.checkpoint import load_policy  # noqa: E402
from agents.common.demos import DemoSampler  # noqa: E402
from agents.common.evaluation import evaluate_policy, heldout_nll  # noqa: E402
from agents.common.learner import LearnerContext  # noqa: E402
from agents.sequencematch import SequenceMatchConfig, SequenceMatchLearner  # noqa: E402
from agents.trainer import Callback, ModelConfig, TrainConfig, Trainer  # noqa: E402
from benchmarks.probes import prompted_recovery  # noqa: E402
from benchmarks.quality import PhaseCounter  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402

ARMS: dict[str, tuple[str, dict]] = {
    "mle": ("mle", {}),
    "mle_backspace": ("mle", {"backspace_p": 0.05, "wrong_tokens": "model"}),
    "sm": ("sequencematch", {}),
    "sm_fresh": ("sequencematch", {"model_samples": "fresh"}),
    "sm_transition": ("sequencematch", {"estimator": "transition"}),
    "sm_token": ("sequencematch", {"normalize": "token"}),
    "sm_warm": ("sequencematch", {"bc_warmup_steps": -1, "mix": "convex", "eta": 0.1}),  # -1: half the steps
    "sm_fresh_transition": ("sequencematch", {"model_samples": "fresh", "estimator": "transition"}),
    "sm_alpha1000": ("sequencematch", {"alpha": 1000.0}),
    "sm_no_routing": ("sequencematch", {"wrong_token_value": "cancel"}),
}
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


class _Diag(Callback):
    """Collects the learner's ``diag/`` metrics (and a few losses) whenever they appear."""

    def __init__(self):
        self.rows: list[dict] = []

    def on_step_end(self, trainer, metrics) -> None:
        if any(k.startswith("diag/") for k in metrics):
            row = {
                "step": trainer.step,
                **{k: v for k, v in metrics.items() if k.startswith(("diag/", "loss/", "buffer/age"))},
            }
            self.rows.append(row)


def _run(task_spec, kw: dict, sections: dict, temperatures, eval_samples: int, recovery_samples: int) -> dict:
    model = ModelConfig(**kw.pop("model"))
    cfg = TrainConfig(
        task=task_spec, **kw, model=model, device="cpu", progress=False, overwrite=True, eval_samples=eval_samples
    )
    for name, values in sections.items():
        setattr(cfg, name, dataclasses.replace(getattr(cfg, name), **values))
    meter, diag = PhaseCounter(), _Diag()
    t0 = time.perf_counter()
    trainer = Trainer(cfg, callbacks=[meter, diag])
    try:
        metrics = trainer.train()
        policy, task = trainer.policy, trainer.task
        diag_s = getattr(trainer.learner, "diag_seconds", 0.0)
        seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        policy.eval()
        grid = {}
        for t in temperatures:
            m = metrics if t == 1.0 else evaluate_policy(policy, task, num_samples=eval_samples, temperature=t)
            grid[str(t)] = {k: m.get(k) for k in ("validity", "backspace_rate", "mean_length", "terminated_rate")}
        rec = prompted_recovery(policy, task, num_samples=recovery_samples) if recovery_samples else {}
        valid_nll = heldout_nll(policy, task, "valid")["nll"]
    finally:
        trainer.close()
    return {
        "metrics": metrics,
        "grid": grid,
        "recovery": rec,
        "valid_nll": valid_nll,
        "seconds": seconds,
        "train_seconds": seconds - meter.eval_s - diag_s,
        "diag_seconds": diag_s,
        "demo_tokens": meter.tokens,
        "diag": diag.rows,
        "post_eval_seconds": time.perf_counter() - t1,
    }


def decompose(path: str, batches: int = 4, batch_size: int = 64, seed: int = 0, **cfg_kw) -> dict:
    """Mean over ``batches`` batches of the learner's gradient diagnostics on a checkpoint's policy (the default
    SequenceMatch config, ``cfg_kw`` overriding): the terms, their regrouping
    (:func:`agents.sequencematch.level_decomposition`), the total and MLE + backspace."""
    policy, task, _ = load_policy(path)
    policy.train()
    gens = {"noise": torch.Generator().manual_seed(seed), "sample": torch.Generator().manual_seed(seed + 1)}
    ctx = LearnerContext(
        model=policy, policy=policy, task=task, device=torch.device("cpu"), generators=gens, batch_size=batch_size
    )
    learner = SequenceMatchLearner(ctx, SequenceMatchConfig(diagnostics_every=1, **cfg_kw))
    data = DemoSampler(task, "train", torch.Generator().manual_seed(seed))
    rows = [learner.loss(data.sample(batch_size), i)[1] for i in range(batches)]
    keys = [k for k in rows[0] if k.startswith("diag/")]
    return {k: statistics.mean(r[k] for r in rows) for k in keys}


def _ci(xs: list[float]) -> tuple[float, float]:
    """Mean and 95 % t half-width (0 for one value)."""
    m = statistics.mean(xs)
    return m, (T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0)


SHOWN = (
    "reward_data",
    "reward_wrong",
    "chi2_data",
    "chi2_model",
    "tail_reward",
    "tail_chi2",
    "value",
    "tail_value",
    "bc",
    "total",
)


def _diag_line(row: dict) -> str:
    parts = [f"{t} {row.get(f'diag/grad_norm/{t}', 0):.3g} ({row.get(f'diag/cos_mle/{t}', 0):+.2f})" for t in SHOWN]
    return (
        f"  step {row['step']:5d}: " + ", ".join(parts) + f"; mle+bs {row.get('diag/grad_norm/mle_backspace', 0):.3g}"
        f"; |l| {row.get('diag/data_logit_abs', 0):.2f}, |r| data {row.get('diag/data_reward_abs', 0):.2f} "
        f"model {row.get('diag/model_reward_abs', 0):.2f}, H data {row.get('diag/data_entropy', 0):.3f} "
        f"model {row.get('diag/model_entropy', 0):.3f}, V data {row.get('diag/data_value', 0):.2f} "
        f"model {row.get('diag/model_value', 0):.2f}, age {row.get('buffer/age', 0):.0f}"
    )


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=10, help="arithmetic base (min_base = max_base)")
    ap.add_argument("--max-digits", type=int, default=2, help="operand digits (arithmetic's max_digits)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--base-steps", type=int, default=1500)
    ap.add_argument("--base-lr", type=float, default=2e-3)
    ap.add_argument(
        "--base-min-lr-ratio",
        type=float,
        default=1.0,
        help="the base's cosine ends at this × base lr (1 = constant: the arms continue the same schedule)",
    )
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--model", default="2x4x128", help="n_layer x n_head x n_embd")
    ap.add_argument("--eval-samples", type=int, default=512)
    ap.add_argument("--recovery-samples", type=int, default=256)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.5, 1.0])
    ap.add_argument("--diagnostics-every", type=int, default=100)
    ap.add_argument("--scratch", default="runs/sm_gradients")
    ap.add_argument("--out", default="benchmarks/results/sequencematch_gradients")
    ap.add_argument(
        "--reuse",
        default=None,
        help="a previous report JSON of this benchmark with the same budget: its "
        "bases and runs are taken as they are (the bases' checkpoints must "
        "still be in --scratch), only the missing runs are trained",
    )
    ap.add_argument(
        "--decompose",
        nargs="+",
        default=None,
        metavar="CKPT",
        help="only print the gradient decomposition (mean of 4 batches) on these checkpoints, as JSON",
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.decompose:
        out = {p: decompose(p) for p in args.decompose}
        print(json.dumps(out, indent=1))
        return out
    task = make_task("arithmetic", min_base=args.base, max_base=args.base, max_digits=args.max_digits)
    spec = task.spec()
    n_layer, n_head, n_embd = map(int, args.model.split("x"))
    model = {"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd}
    scratch = Path(args.scratch)
    common = dict(batch_size=args.batch_size, model=model)
    ev = (args.temperatures, args.eval_samples, args.recovery_samples)
    t0 = time.perf_counter()
    bases, runs = {}, {}

    def write_report(seeds):
        wall = time.perf_counter() - t0

        def per_token(r):
            return r["train_seconds"] / max(r["demo_tokens"], 1)

        def val(r, key):
            if key == "nll":
                return r["metrics"]["nll"]
            if key.startswith("validity@"):
                return r["grid"][key.split("@")[1]]["validity"]
            return r["recovery"].get(key)

        keys = [f"validity@{t}" for t in args.temperatures] + ["nll", "recovery_deleted", "recovery_backspace"]
        summary = {}
        for arm in args.arms:
            row = {k: _ci([val(runs[(arm, s)], k) for s in seeds]) for k in keys}
            if "mle" in args.arms:
                for k in keys:
                    row[f"{k}_vs_mle"] = _ci([val(runs[(arm, s)], k) - val(runs[("mle", s)], k) for s in seeds])
                row["cost_vs_mle"] = _ci([per_token(runs[(arm, s)]) / per_token(runs[("mle", s)]) for s in seeds])
            summary[arm] = row
        base_mean = {
            "validity": statistics.mean(bases[s]["metrics"]["validity"] for s in seeds),
            "nll": statistics.mean(bases[s]["metrics"]["nll"] for s in seeds),
        }
        report = {
            "command": "python benchmarks/sequencematch_gradients.py " + " ".join(argv or sys.argv[1:]),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs, load "
            f"{os.getloadavg()[0]:.1f} at the end), 1 torch thread, one run at a time, CPU",
            "args": vars(args),
            "task": spec,
            "wall_s": wall,
            "base_mean": base_mean,
            "bases": {s: {k: v for k, v in b.items() if k != "diag"} for s, b in bases.items()},
            "runs": {f"{a}-s{s}": r for (a, s), r in runs.items()},
            "summary": summary,
        }
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"# SequenceMatch gradients and fix candidates on base-{args.base} `arithmetic`",
            "",
            f"Command: `{report['command']}`  ",
            f"Machine: {report['machine']}; wall {wall / 60:.1f} min.  ",
            f"Budget: base MLE {args.base_steps} steps (lr {args.base_lr}, cosine to {args.base_min_lr_ratio} × lr), fork from its last step; every "
            f"arm {args.steps} steps at lr {args.lr} (constant after 20 warm-up steps), batch {args.batch_size}, "
            f"model {args.model}, seeds {seeds}; {args.eval_samples} evaluation episodes on the test "
            f"questions per temperature, {args.recovery_samples} recovery probes.  ",
            f"Base (mean over seeds): validity {base_mean['validity']:.3f}, held-out NLL {base_mean['nll']:.3f}.  ",
            "Cells: mean ± 95 % t half-width over seeds; `Δ` columns: paired per-seed difference to continued "
            "MLE (same base, same data order), mean ± 95 % t half-width.",
            "",
            "| arm | "
            + " | ".join(keys)
            + " | "
            + " | ".join(f"Δ {k}" for k in keys[:2] + ["nll"])
            + " | cost_vs_mle |",
            "|---|" + "---|" * (len(keys) + 4),
        ]
        for arm in args.arms:
            row = summary[arm]
            cells = [f"{row[k][0]:.3f} ± {row[k][1]:.3f}" for k in keys]
            dcells = [
                f"{row[f'{k}_vs_mle'][0]:+.3f} ± {row[f'{k}_vs_mle'][1]:.3f}" if f"{k}_vs_mle" in row else "–"
                for k in keys[:2] + ["nll"]
            ]
            cost = f"{row['cost_vs_mle'][0]:.2f} ± {row['cost_vs_mle'][1]:.2f}" if "cost_vs_mle" in row else "–"
            lines.append(f"| {arm} | " + " | ".join(cells) + " | " + " | ".join(dcells) + f" | {cost} |")
        lines += [
            "",
            "Per-term gradient norms (cosine with the MLE + backspace gradient of the same batch), seed "
            f"{seeds[0]}, at the first diagnostics step after the fork and later:",
            "",
        ]
        for arm in args.arms:
            rows = runs[(arm, seeds[0])]["diag"]
            if rows:
                lines.append(f"`{arm}`:")
                lines += ["```"] + [_diag_line(r) for r in rows] + ["```", ""]
        report["md"] = "\n".join(lines) + "\n"
        out.with_suffix(".md").write_text(report["md"])
        out.with_suffix(".json").write_text(json.dumps({k: v for k, v in report.items() if k != "md"}, indent=2) + "\n")

        return report

    old = json.loads(Path(args.reuse).read_text()) if args.reuse else {"bases": {}, "runs": {}}
    for s in args.seeds:
        bdir = scratch / f"base-s{s}"
        if str(s) in old["bases"] and (bdir / "checkpoint.pt").exists():
            bases[s] = old["bases"][str(s)]
        else:
            bases[s] = _run(
                spec,
                dict(
                    common,
                    model=dict(model),
                    agent="mle",
                    seed=s,
                    max_steps=args.base_steps,
                    lr=args.base_lr,
                    warmup_steps=100,
                    min_lr_ratio=args.base_min_lr_ratio,
                    logdir=str(bdir),
                    ckpt_every=args.base_steps,
                ),
                {},
                *ev,
            )
        print(
            f"base s{s}: validity {bases[s]['metrics']['validity']:.3f} nll {bases[s]['metrics']['nll']:.3f} "
            f"({bases[s]['seconds']:.0f} s)",
            flush=True,
        )
        for arm in args.arms:
            if f"{arm}-s{s}" in old["runs"]:
                runs[(arm, s)] = old["runs"][f"{arm}-s{s}"]
                continue
            agent, values = ARMS[arm]
            values = dict(values)
            if agent == "sequencematch":
                values.setdefault("diagnostics_every", args.diagnostics_every)
                if values.get("bc_warmup_steps") == -1:
                    values["bc_warmup_steps"] = args.steps // 2
            r = _run(
                spec,
                dict(
                    common,
                    model=dict(model),
                    agent=agent,
                    seed=s,
                    max_steps=args.steps,
                    lr=args.lr,
                    warmup_steps=20,
                    min_lr_ratio=1.0,
                    init=str(bdir / "checkpoint.pt"),
                    logdir=str(scratch / f"{arm}-s{s}"),
                    ckpt_every=args.steps,
                ),
                {agent: values},
                *ev,
            )
            runs[(arm, s)] = r
            print(
                f"{arm} s{s}: validity {r['metrics']['validity']:.3f} nll {r['metrics']['nll']:.3f} "
                f"deleted {r['recovery'].get('recovery_deleted', float('nan')):.3f} ({r['seconds']:.0f} s, "
                f"diagnostics {r['diag_seconds']:.0f} s)",
                flush=True,
            )
            for row in r["diag"]:
                if row is r["diag"][0] or row["step"] % 200 == 0 or row is r["diag"][-1]:
                    print(_diag_line(row), flush=True)
        report = write_report([x for x in args.seeds if x in bases])
    print(report["md"])
    return report


if __name__ == "__main__":
    main()
