"""SequenceMatch's per-term gradient diagnostics over training, read back from the runs' TensorBoard files.

Every SequenceMatch run logs, at its first step and every ``diagnostics_every`` steps
(:func:`agents.sequencematch.gradient_diagnostics`), ``train/diag/grad_norm/<part>`` and
``train/diag/cos_mle/<part>`` (cosine with the MLE + backspace gradient of the same batch) for the loss
terms and for their regrouping into imitated NLL, routing, start values and truncation
(:func:`agents.sequencematch.level_decomposition`), plus the policy entropy at the data states. This
script prints, per arm and logged step, the mean over the runs (seeds) of each, as a Markdown table::

    python -m benchmarks.sm_diagnostics runs/bench/sequencematch_arithmetic10/arithmetic sm sm_cancel_a1000

(``ROOT/ARM-s*`` are the arm's run directories, as the experiment runner names them.)
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

#: the parts shown, in order: the regrouped loss (the identity of agents/sequencematch.py), then the χ² terms,
#: the BC term and the total
PARTS = ("imitated_nll", "routing", "start_values", "chi2_data", "chi2_model", "reward_wrong", "total")


def read_run(logdir: Path) -> dict:
    """``{step: {tag: value}}`` of one run's ``train/diag/`` scalars (TensorBoard event files in ``logdir``)."""
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    out: dict = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("train/diag/"):
            for ev in acc.Scalars(tag):
                out.setdefault(ev.step, {})[tag[len("train/diag/") :]] = ev.value
    return out


def table(root: Path, arm: str) -> list[str]:
    """Markdown lines: per logged step, mean over the arm's runs of norm (cosine) of every part of :data:`PARTS`,
    the MLE + backspace gradient's norm and the policy entropy at the data states (nats)."""
    runs = sorted(Path(root).glob(f"{arm}-s*"))
    data = [read_run(r) for r in runs]
    steps = sorted(set.intersection(*(set(d) for d in data))) if data else []
    head = (
        f"`{arm}` ({len(runs)} runs: {', '.join(r.name for r in runs)}): gradient norm (cosine with MLE + "
        "backspace), mean over runs"
    )
    lines = [head, "", "| step | " + " | ".join(PARTS) + " | MLE + backspace | entropy (data) |"]
    lines.append("|---|" + "---|" * (len(PARTS) + 2))

    def mean(key, step):
        vals = [d[step][key] for d in data if key in d[step]]
        return statistics.mean(vals) if vals else None

    for step in steps:
        cells = []
        for p in PARTS:
            n, c = mean(f"grad_norm/{p}", step), mean(f"cos_mle/{p}", step)
            cells.append("–" if n is None else f"{n:.2f} ({c:+.2f})")
        mle, ent = mean("grad_norm/mle_backspace", step), mean("data_entropy", step)
        cells += ["–" if mle is None else f"{mle:.2f}", "–" if ent is None else f"{ent:.3f}"]
        lines.append(f"| {step} | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="directory holding the runs ARM-sSEED (the runner's scratch/NAME/TASK)")
    ap.add_argument("arms", nargs="+")
    args = ap.parse_args(argv)
    for arm in args.arms:
        print("\n".join(table(Path(args.root), arm)) + "\n")


if __name__ == "__main__":
    main()
