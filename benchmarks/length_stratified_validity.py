"""Validity by output length, before and after fine-tuning (is a validity gain only shorter outputs?).

For each ``START:TUNED`` pair of checkpoints (the same task), draws ``--samples``
outputs of each policy (raw sampling, seed ``--seed`` + pair index), buckets
them by length in characters (0-9, 10-19, ..., 50+) and reports per bucket
the count and the validity, plus the tuned policy's validity *standardised* to
the start policy's length distribution: ``sum_b p_start(b) · validity_tuned(b)``
(direct standardisation; a bucket the tuned policy never reaches keeps the
start policy's validity).

    python benchmarks/length_stratified_validity.py --pairs runs/nce/checkpoint.pt:runs/ppo/checkpoint.pt \
        --out benchmarks/results/ppo_critic_rerun_lengths.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's agents/, not an installed copy
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from agents.common.checkpoint import load_policy  # noqa: E402
from agents.generation import generate_reranked  # noqa: E402

BUCKETS = ("0-9", "10-19", "20-29", "30-39", "40-49", "50+")


def bucket_validity(task, texts: list[str]) -> dict:
    """``{bucket: [count, validity]}`` over :data:`BUCKETS` (empty buckets left out) and ``"all"``."""
    by: dict[str, list[bool]] = {}
    for t in texts:
        by.setdefault(BUCKETS[min(len(t) // 10, 5)], []).append(task.is_valid(t))
    out = {b: [len(by[b]), sum(by[b]) / len(by[b])] for b in BUCKETS if b in by}
    out["all"] = [len(texts), sum(sum(v) for v in by.values()) / len(texts)]
    return out


def standardised(start: dict, tuned: dict) -> float:
    """The tuned policy's validity reweighted to the start policy's length distribution."""
    n = sum(start[b][0] for b in BUCKETS if b in start)
    return sum(start[b][0] / n * tuned.get(b, start[b])[1] for b in BUCKETS if b in start)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", nargs="+", required=True, help="START:TUNED checkpoint paths")
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--out", type=Path, required=True, help="json path (a .md beside it)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for i, pair in enumerate(args.pairs):
        start_path, tuned_path = pair.split(":")
        res = {}
        for name, path in (("start", start_path), ("tuned", tuned_path)):
            policy, task, _ = load_policy(path, "cpu")
            g = generate_reranked(policy, task, args.samples, seed=args.seed + i)
            res[name] = bucket_validity(task, [task.tokenizer.decode(x) for x in g.sequences])
        res["tuned_standardised"] = standardised(res["start"], res["tuned"])
        rows.append({"start": start_path, "tuned": tuned_path, **res})
    js = {
        "command": "python benchmarks/length_stratified_validity.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "pairs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(js, indent=1) + "\n")
    L = [
        f"`{js['command']}`\n",
        "| pair | policy | " + " | ".join(BUCKETS) + " | all | standardised |",
        "|---|---|" + "---|" * (len(BUCKETS) + 2),
    ]
    for i, r in enumerate(rows):
        for name in ("start", "tuned"):
            cells = [f"{r[name][b][1]:.3f} ({r[name][b][0]})" if b in r[name] else "–" for b in BUCKETS]
            std = f"{r['tuned_standardised']:.3f}" if name == "tuned" else "–"
            L.append(f"| {i} | {name} | " + " | ".join(cells) + f" | {r[name]['all'][1]:.3f} | {std} |")
    s = [r["tuned_standardised"] for r in rows]
    a = [r["start"]["all"][1] for r in rows]
    if len(rows) > 1:
        L.append(
            f"\nstart {statistics.mean(a):.3f} ± {statistics.stdev(a):.3f}; tuned standardised to the start's "
            f"lengths {statistics.mean(s):.3f} ± {statistics.stdev(s):.3f} (mean ± std over pairs)"
        )
    args.out.with_suffix(".md").write_text("\n".join(L) + "\n")
    print("\n".join(L))
    return js


if __name__ == "__main__":
    main()
