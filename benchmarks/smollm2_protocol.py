"""The papers' protocol on SmolLM2-135M (issue 21): BC fine-tune, then equal-step arms from it.

Per seed: one MLE run (behaviour cloning, LoRA r = 64, alpha_LoRA = 16 as in the
SequenceMatch paper's Llama-2 runs) fine-tunes SmolLM2 on the task's train split
(``--mle-steps``); every arm then continues from that checkpoint for the same
``--arm-steps`` optimiser steps, same batch size, same learning rate, and is
evaluated the same way at every temperature of ``--temperatures`` (the
temperature frontier): validity (``arithmetic``: the exact answer of the
add-or-sub-in-base question, the paper's accuracy; ``python-lines``: parses),
held-out NLL of the test split, distinct-2 and the backspace rate. Paired
intervals: per seed, arm minus the continued-MLE control of the same seed;
mean +- t(0.975, n-1) * sd / sqrt(n) over seeds.

==========================  ====================================================
``mle``                     continued MLE (the control)
``mle_backspace``           MLE + backspace (p = 0.05, uniform wrong tokens)
``sm``                      SequenceMatch, our defaults (alpha = 100, eta = 0.001, gamma = 0.998)
``sm_alpha0.01``            SequenceMatch with alpha = 0.01 (the paper's value read literally)
``earm``                    E-ARM, lambda = 0.05
==========================  ====================================================

``--smoke`` runs the same code on a tiny random Llama (2 layers, width 32) with a
byte-level BPE tokenizer trained on the task's texts, on the CPU, with a few
steps: what the tests run (tests/test_smollm2_protocol.py).

    python benchmarks/smollm2_protocol.py --task arithmetic --seeds 0 1 2 --device cuda \\
        --out benchmarks/results/smollm2_protocol_arithmetic
    python benchmarks/smollm2_protocol.py --smoke --out /tmp/protocol_smoke
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
from agents.common.evaluation import evaluate_policy  # noqa: E402
from agents.trainer import LoraFlags, TrainConfig, Trainer  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402

ARMS: dict[str, tuple[str, dict]] = {
    "mle": ("mle", {}),
    "mle_backspace": ("mle", {"backspace_p": 0.05}),
    "sm": ("sequencematch", {}),
    "sm_alpha0.01": ("sequencematch", {"alpha": 0.01}),
    "earm": ("earm", {"lam": 0.05}),
}
METRICS = ("validity", "nll", "distinct_2", "backspace_rate", "mean_length")
#: two-sided 95% Student t quantiles by degrees of freedom (1..10)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def tiny_llama_dir(path: str | Path, texts: list[str], seed: int = 0) -> Path:
    """A random 2-layer Llama (width 32, GQA 4/2 heads) with a byte-level BPE tokenizer (300 ids) trained on
    ``texts``, ``<|endoftext|>`` its bos/eos: the stand-in for SmolLM2 in ``--smoke`` runs."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        min_frequency=1,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(texts, trainer=trainer)
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(hf),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(path)
    hf.save_pretrained(path)
    return path


def paired_interval(deltas: list[float]) -> dict:
    """Mean and 95% t-interval half-width of per-seed paired differences (``half`` None for one seed)."""
    n = len(deltas)
    mean = statistics.mean(deltas)
    half = T975.get(n - 1, 1.96) * statistics.stdev(deltas) / math.sqrt(n) if n > 1 else None
    return {"mean": mean, "half": half, "n": n}


def _train(cfg: TrainConfig) -> dict:
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    try:
        metrics = trainer.train()
    finally:
        trainer.close()
    return {"metrics": metrics, "seconds": time.perf_counter() - t0}


def _frontier(
    ckpt: Path, temperatures: list[float], num_samples: int, max_sequences: int, device: str, seed: int
) -> dict:
    policy, task, _ = load_policy(ckpt, device)
    out = {}
    for t in temperatures:
        m = evaluate_policy(
            policy, task, num_samples=num_samples, device=device, seed=seed, temperature=t, max_sequences=max_sequences
        )
        out[str(t)] = {k: m.get(k) for k in METRICS}
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="arithmetic")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--mle-steps", type=int, default=1000)
    ap.add_argument("--arm-steps", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-4, help="every stage's peak lr (the LoRA default)")
    ap.add_argument("--lora-r", type=int, default=64)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--rollout-batch-size", type=int, default=128, help="SequenceMatch's model rollouts")
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.7, 1.0])
    ap.add_argument("--eval-samples", type=int, default=200)
    ap.add_argument("--policy", default="smollm2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default="runs/smollm2_protocol")
    ap.add_argument("--out", default="benchmarks/results/smollm2_protocol")
    ap.add_argument("--smoke", action="store_true", help="tiny random Llama, CPU, a few steps (the tests)")
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    if args.smoke:
        torch.set_num_threads(1)
        args.device, args.mle_steps, args.arm_steps, args.batch_size = "cpu", 3, 2, 4
        args.rollout_batch_size, args.eval_samples, args.lora_r = 4, 4, 2
        task = make_task(args.task)
        texts = (
            [p + a for p, a in zip(task.split_prompts["train"], task.splits["train"])]
            if task.paired
            else task.splits["train"]
        )
        args.policy = "hf:" + str(tiny_llama_dir(work / "tiny_llama", texts[:2000]))
    common = dict(
        task=args.task,
        policy=args.policy,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        progress=False,
        overwrite=True,
        eval_samples=args.eval_samples,
        warmup_steps=min(20, args.arm_steps),
        lora=LoraFlags(r=args.lora_r, alpha=args.lora_alpha),
    )
    t_start = time.perf_counter()
    bases, runs = {}, {}
    for s in args.seeds:
        cfg = TrainConfig(
            agent="mle",
            seed=s,
            max_steps=args.mle_steps,
            logdir=str(work / f"mle-s{s}"),
            ckpt_every=args.mle_steps,
            **common,
        )
        cfg.eval.max_sequences = args.eval_samples
        bases[s] = _train(cfg)
        for arm in args.arms:
            agent, values = ARMS[arm]
            kw = dict(common, policy="transformer", lora=LoraFlags())  # --init keeps the base's policy and LoRA
            cfg = TrainConfig(
                agent=agent,
                seed=s,
                max_steps=args.arm_steps,
                logdir=str(work / f"{arm}-s{s}"),
                init=str(work / f"mle-s{s}" / "checkpoint.pt"),
                min_lr_ratio=1.0,
                ckpt_every=args.arm_steps,
                **kw,
            )
            cfg.eval.max_sequences = args.eval_samples
            section = dict(values)
            if agent == "sequencematch":
                section["rollout_batch_size"] = args.rollout_batch_size
            setattr(cfg, agent, dataclasses.replace(getattr(cfg, agent), **section))
            run = _train(cfg)
            run["frontier"] = _frontier(
                work / f"{arm}-s{s}" / "checkpoint.pt",
                args.temperatures,
                args.eval_samples,
                args.eval_samples,
                args.device,
                s,
            )
            runs[(arm, s)] = run
    wall = time.perf_counter() - t_start
    # paired intervals against the control, per temperature and metric
    summary = {}
    for arm in args.arms:
        row = {}
        for t in map(str, args.temperatures):
            for m in METRICS:
                vals = [runs[(arm, s)]["frontier"][t][m] for s in args.seeds]
                if any(v is None for v in vals):
                    continue
                entry = {"mean": statistics.mean(vals)}
                if arm != "mle" and "mle" in args.arms:
                    entry["vs_mle"] = paired_interval(
                        [v - runs[("mle", s)]["frontier"][t][m] for v, s in zip(vals, args.seeds)]
                    )
                row[f"{m}@T={t}"] = entry
        summary[arm] = row
    report = {
        "command": "python benchmarks/smollm2_protocol.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'CPU only'}",
        "args": vars(args),
        "wall_s": wall,
        "bases": {s: b for s, b in bases.items()},
        "runs": {f"{a}-s{s}": r for (a, s), r in runs.items()},
        "summary": summary,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    _write_report(out, report, args)
    return report


def _fmt(entry: dict) -> str:
    s = f"{entry['mean']:.3f}"
    d = entry.get("vs_mle")
    if d:
        s += f" ({d['mean']:+.3f}" + (f" ± {d['half']:.3f})" if d["half"] is not None else ")")
    return s


def _write_report(out: Path, report: dict, args) -> None:
    cols = [f"{m}@T={t}" for t in map(str, args.temperatures) for m in ("validity", "nll", "distinct_2")]
    cols = [c for c in cols if any(c in row for row in report["summary"].values())]
    lines = [
        f"# The papers' protocol on {'a tiny random Llama (smoke)' if args.smoke else 'SmolLM2-135M'}: `{args.task}`",
        "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}; wall {report['wall_s'] / 60:.1f} min.  ",
        f"Budget: BC/MLE {args.mle_steps} steps, then every arm {args.arm_steps} steps from it; batch "
        f"{args.batch_size}, lr {args.lr}, LoRA r {args.lora_r}, alpha {args.lora_alpha}; seeds {args.seeds}; "
        f"{args.eval_samples} evaluation episodes and held-out texts per temperature.  ",
        "Cells: mean over seeds (paired difference to continued MLE, ± 95% t half-width).",
        "",
        "| arm | " + " | ".join(cols) + " |",
        "|---|" + "---|" * len(cols),
    ]
    for arm, row in report["summary"].items():
        lines.append(f"| {arm} | " + " | ".join(_fmt(row[c]) if c in row else "–" for c in cols) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for arm, row in report["summary"].items():
            xs = [row.get(f"distinct_2@T={t}", {}).get("mean") for t in args.temperatures]
            ys = [row.get(f"validity@T={t}", {}).get("mean") for t in args.temperatures]
            if all(v is not None for v in xs + ys):
                ax.plot(xs, ys, marker="o", label=arm)
        ax.set_xlabel("distinct-2")
        ax.set_ylabel("validity")
        ax.set_title(f"temperature frontier ({', '.join(map(str, args.temperatures))})")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out.with_suffix(".png"), dpi=120)
        plt.close(fig)
    except ImportError:  # pragma: no cover
        pass


if __name__ == "__main__":
    main()
