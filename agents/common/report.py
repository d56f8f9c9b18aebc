"""Report formatting: metric tables, the one-line comparison, episodes written as their actions.

:func:`format_metrics_table` and :func:`comparison_line` print the metrics of
:mod:`agents.common.metrics` (``scripts/evaluate.py``, ``scripts/train.py``,
the benchmarks' results files); :func:`format_episode` writes an episode for
humans (the trainer's ``samples/episodes`` panel,
:class:`agents.common.callbacks.SamplesPanel`).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import cast

from seqenv.tokenizers import SpecialIds

#: the metric columns of printed tables, in order (keys of :func:`agents.common.evaluation.evaluate_policy`)
SUMMARY_COLUMNS = (
    "validity",
    "nll",
    "perplexity",
    "oracle_nll",
    "oracle_support",
    "bleu4",
    "self_bleu4",
    "distinct_2",
    "mean_length",
    "backspace_rate",
    "terminated_rate",
)  # printed tables


def format_metrics_table(
    rows: dict, columns: Sequence[str] | None = None, digits: int = 3, drop_empty: bool = False
) -> str:
    """A Markdown table: one row per run/agent, one column per metric.

    :param rows: ``{run name: {metric key: value}}``; a value is a number,
        ``None`` (shown as "–"), a ``(mean, std)`` pair (shown as
        "mean ± std") or a string (shown as is). A missing key shows "–".
    :param columns: metric keys in column order; default every key, in order
        of first appearance over the rows.
    :param digits: decimals of floats (ints and bools are printed as such).
    :param drop_empty: leave out the columns that no row has a value for
        (``None`` or missing everywhere, e.g. ``oracle_nll`` on a task without
        an oracle).
    :return: the table, lines joined by ``"\\n"``, no trailing newline.
    :raises ValueError: on no rows or ``digits < 0``.

    Example: ``format_metrics_table({"mle": {"nll": 1.23456, "validity": None}})``
    gives::

        | run | nll | validity |
        |---|---|---|
        | mle | 1.235 | – |
    """
    if not rows:
        raise ValueError("format_metrics_table needs at least one row, got none")
    if digits < 0:
        raise ValueError(f"digits must be >= 0, got {digits}")
    if columns is None:
        columns = list(dict.fromkeys(k for metrics in rows.values() for k in metrics))
    if drop_empty:
        columns = [c for c in columns if any(metrics.get(c) is not None for metrics in rows.values())]

    def cell(v) -> str:
        if v is None:
            return "–"
        if isinstance(v, (tuple, list)) and len(v) == 2:
            return f"{cell(v[0])} ± {cell(v[1])}"
        if isinstance(v, (bool, numbers.Integral, str)):
            return str(v)
        return f"{float(cast(float, v)):.{digits}f}"  # a number: pairs and the other types returned above"

    lines = ["| " + " | ".join(["run", *columns]) + " |", "|" + "---|" * (len(columns) + 1)]
    for name, metrics in rows.items():
        lines.append("| " + " | ".join([str(name), *(cell(metrics.get(c)) for c in columns)]) + " |")
    return "\n".join(lines)


def comparison_line(rows: dict, control: str, metric: str = "validity", num_seeds: int = 1) -> str | None:
    """One sentence naming the run best on ``metric`` and its difference to ``control``.

    :param rows: ``{run name: {metric: value}}`` (as :func:`format_metrics_table`).
    :param control: the row every other run is compared with (e.g. continued MLE).
    :param metric: a higher-is-better metric.
    :param num_seeds: seeds behind each value (said in the sentence: one seed
        cannot tell a difference from noise).
    :return: the sentence, or ``None`` if the control or every value is missing.
    """
    values = {k: v.get(metric) for k, v in rows.items() if isinstance(v.get(metric), (int, float))}
    if control not in values or len(values) < 2:
        return None
    best = max(values, key=values.__getitem__)
    seeds = f"{num_seeds} seed{'s' if num_seeds != 1 else ''}"
    if best == control:
        others = {k: v for k, v in values.items() if k != control}
        runner = max(others, key=others.__getitem__)
        return (
            f"Best {metric}: {control} (the control), {values[control]:.3f}; {runner} is "
            f"{values[control] - values[runner]:.3f} lower ({seeds})."
        )
    diff = values[best] - values[control]
    return f"Best {metric}: {best}, {values[best]:.3f}, {diff:+.3f} against {control} ({values[control]:.3f}; {seeds})."


def format_episode(tokenizer, actions: Sequence[int], prompt: Sequence[int] = ()) -> str:
    """An episode written as its actions, for humans (Markdown).

    Each token a later ``backspace`` deletes is struck through (``~~x~~``),
    each backspace is shown as ``⌫``, ``eos`` as ``⏎``; the prompt is shown
    in bold. E.g. ``for i in rang~~r~~⌫e(10):⏎``.

    :param tokenizer: the task's tokenizer (``decode`` of single ids).
    :param actions: the episode's action ids (backspaces included).
    :param prompt: prompt ids (shown, never deletable).
    :return: one line of Markdown.
    """
    sp = SpecialIds.of(tokenizer)
    stack: list[int] = []  # indices into ``parts`` of the tokens still in the state
    parts: list[str] = []
    for a in actions:
        if a == sp.backspace:
            if stack:
                i = stack.pop()
                parts[i] = f"~~{parts[i]}~~"
            parts.append("⌫")
        elif a == sp.eos:
            parts.append("⏎")
        else:
            stack.append(len(parts))
            parts.append(tokenizer.decode([a]) or f"<{a}>")
    head = f"**{tokenizer.decode(list(prompt))}**" if len(prompt) else ""
    return head + "".join(parts)
