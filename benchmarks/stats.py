"""Statistics of the benchmark reports: mean ± std, paired differences over seeds with a t-interval, verdicts.

Every arm of an experiment starts from the same base run of a seed and is evaluated with that seed's
sampling seed, so the arms are *paired* by seed: a comparison uses the per-seed differences
``d_s = arm_s - control_s``, their mean, and a two-sided 95 % Student-t interval over the seeds,

    mean(d) ± t_{0.975, n-1} · sd(d) / sqrt(n),   sd with ddof = 1,

(the paired t-test's interval; Student 1908; e.g. Wasserman, *All of Statistics*, §10.1). The verdict
words are generated from the interval and never typed: "better" / "worse" when it excludes 0 on one side
(in the metric's good direction) over at least :data:`MIN_SEEDS` seeds, otherwise "no difference detected
at n = k"; an interval that excludes 0 over fewer seeds is reported as such, without a verdict (with two
or three seeds of a discrete metric the differences are often identical and the interval has width 0).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

#: two-sided 95 % quantiles t_{0.975, df} of Student's t for df = 1..30 (standard table values);
#: above 30 degrees of freedom the normal quantile 1.960 is used (error < 0.05 in the half-width factor)
T975 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)

#: seeds needed before an interval that excludes 0 is called "better" / "worse" (the issue's "five seeds
#: where a verdict is claimed")
MIN_SEEDS = 5

#: metric -> +1 if higher is better, -1 if lower is better (the direction of "better" in verdicts)
DIRECTION = {
    "validity": +1,
    "oracle_support": +1,
    "distinct_2": +1,
    "bleu4": +1,
    "oracle_nll": -1,
    "oracle_nll_in_support": -1,
    "nll": -1,
    "perplexity": -1,
    "self_bleu4": -1,
}


def t975(df: int) -> float:
    """``t_{0.975, df}`` (table :data:`T975`; 1.960 above 30). :raises ValueError: for ``df < 1``."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return T975[df - 1] if df <= len(T975) else 1.960


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1; 0.0 for one value). :raises ValueError: if empty."""
    if not values:
        raise ValueError("mean_std of no values")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def paired(arm: dict, control: dict) -> dict | None:
    """Paired comparison of two ``{seed: value}`` maps over their common seeds.

    :return: ``dict(n, diffs={seed: d}, mean, sd, half_width, low, high, interval="95% t")`` (``sd``,
        ``half_width``, ``low``, ``high`` are None for n = 1), or None when no seed is common or a value is
        missing (None).
    """
    seeds = sorted(s for s in arm if s in control and arm[s] is not None and control[s] is not None)
    if not seeds:
        return None
    diffs = {s: float(arm[s]) - float(control[s]) for s in seeds}
    d = list(diffs.values())
    n = len(d)
    mean = statistics.mean(d)
    out = {
        "n": n,
        "diffs": diffs,
        "mean": mean,
        "sd": None,
        "half_width": None,
        "low": None,
        "high": None,
        "interval": "95% t",
    }
    if n > 1:
        sd = statistics.stdev(d)
        hw = t975(n - 1) * sd / math.sqrt(n)
        out.update(sd=sd, half_width=hw, low=mean - hw, high=mean + hw)
    return out


def verdict(comparison: dict | None, direction: int, min_seeds: int = MIN_SEEDS) -> str:
    """Words for a :func:`paired` result: ``better`` / ``worse`` when the 95 % interval excludes 0 and
    ``n >= min_seeds``; ``better/worse at n = k < 5: no verdict`` when it excludes 0 over fewer seeds;
    ``no difference detected at n = k`` otherwise; ``n = 1: no interval`` for one seed; ``–`` for none.

    :param direction: +1 if a larger value is better, -1 if smaller is better.
    """
    if comparison is None:
        return "–"
    n = comparison["n"]
    if comparison["low"] is None:
        return f"n = {n}: no interval"
    if comparison["low"] > 0 or comparison["high"] < 0:
        word = "better" if (comparison["mean"] > 0) == (direction > 0) else "worse"
        return word if n >= min_seeds else f"{word} at n = {n} < {min_seeds}: no verdict"
    return f"no difference detected at n = {n}"


def fmt_diff(comparison: dict | None, digits: int = 3) -> str:
    """``+0.012 [−0.004, +0.028]`` (mean and 95 % t-interval of the paired difference), or the mean alone."""
    if comparison is None:
        return "–"
    m = f"{comparison['mean']:+.{digits}f}"
    if comparison["low"] is None:
        return m
    return f"{m} [{comparison['low']:+.{digits}f}, {comparison['high']:+.{digits}f}]"


def fmt_mean_sd(values: Sequence[float], digits: int = 3) -> str:
    """``"mean ± sd"`` (ddof 1) of the finite ``values`` over seeds; the bare value for one; ``"n/a"`` for none."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    m, sd = mean_std(vals)
    return f"{m:.{digits}f} ± {sd:.{digits}f}" if len(vals) > 1 else f"{m:.{digits}f}"
