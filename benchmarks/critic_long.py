"""Longer critic runs (issue 11): does the held-out critic accuracy keep rising past 500 steps?

Trains one critic per task against the weak (60-step) seed-0 policy that a
``benchmarks/critic_rerank.py`` run left in its ``--workdir``, with fresh
noise, no trunk init and no early stopping, and writes the held-out accuracy
curve to ``--out``::

    python benchmarks/critic_rerank.py --tasks arithmetic oracle-hmm ... --workdir W   # first: the policies
    python benchmarks/critic_long.py --workdir W --steps 1500 --lr 6e-4
"""

from __future__ import annotations

import argparse
import json
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: this checkout's agents/ and benchmarks/
    sys.path.insert(0, str(ROOT))

from benchmarks.critic_rerank import train_critic  # noqa: E402

NCE_KWARGS = dict(noise_pool=0, init_from_policy=False, eval_every=100, eval_size=512, patience=0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="the --workdir of a finished critic_rerank.py run")
    ap.add_argument("--tasks", nargs="+", default=["arithmetic", "oracle-hmm"])
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=6e-4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "critic_long.json"))
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    policies = {task: work / task / "seed0" / "mle_weak" / "checkpoint.pt" for task in args.tasks}
    missing = [str(p) for p in policies.values() if not p.is_file()]
    if missing:
        raise SystemExit(
            f"error: no weak policy checkpoint at {missing}; run benchmarks/critic_rerank.py "
            f"--workdir {args.workdir} first"
        )
    with ProcessPoolExecutor(2) as pool:
        futures = {
            task: pool.submit(
                train_critic,
                task,
                0,
                str(ckpt),
                str(work / "critic_long" / task),
                args.steps,
                args.batch_size,
                args.lr,
                NCE_KWARGS,
            )
            for task, ckpt in policies.items()
        }
        results = {f"{task}/weak": f.result() for task, f in futures.items()}
    report = {
        "command": "python benchmarks/critic_long.py " + " ".join(argv or sys.argv[1:]),
        "steps": args.steps,
        "lr": args.lr,
        "batch": f"{args.batch_size} + {args.batch_size}",
        "nce": NCE_KWARGS,
        "results": results,
    }
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    for key, r in results.items():
        print(
            key,
            r["critic_accuracy"],
            r["critic_auc"],
            [(c["step"], round(c["critic_accuracy"], 3)) for c in r["curve"]],
        )
    return report


if __name__ == "__main__":
    main()
