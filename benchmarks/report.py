"""Reports of the experiment runner, generated from a results JSON alone (``python -m benchmarks render``).

:func:`render_markdown` writes the tables (mean ± std over seeds at the default temperature, paired
differences against the control arm with a 95 % t-interval and generated verdicts, held-out NLL beside
every task metric) and the quality–diversity frontier section; :func:`render_png` draws one frontier
plot per task; :func:`readme_block` is the README's "Which method wins where" table. Nothing here
trains or evaluates: the same JSON always gives the same Markdown (a test re-renders every committed
results file and compares).

The frontier (Caccia et al., "Language GANs Falling Short", ICLR 2020: compare a method's
quality–diversity curve with MLE's temperature sweep): quality is validity (``oracle_nll`` on an oracle
task, lower better), diversity is distinct-2 (on an oracle task the held-out NLL of the tempered model,
``nll_at_t``, lower = more coverage). [recon] "above MLE's curve" is decided per seed: each of the arm's
points whose diversity lies within the control's range is compared with the control's curve of the same
seed, linearly interpolated at that diversity; the mean gap over those points (in the good direction of
quality) is that seed's value, and the verdict comes from the 95 % t-interval of those values over seeds.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from benchmarks.stats import DIRECTION, MIN_SEEDS, fmt_diff, mean_std, paired, verdict

README_BEGIN = "<!-- BEGIN GENERATED: which-method-wins (python -m benchmarks readme; do not edit) -->"
README_END = "<!-- END GENERATED: which-method-wins -->"
METHODS_BEGIN = "<!-- BEGIN GENERATED: baseline-verdicts (python -m benchmarks readme; do not edit) -->"
METHODS_END = "<!-- END GENERATED: baseline-verdicts -->"
#: the results file of the README's per-method verdict table: the full comparison once it is committed
METHODS_SOURCES = ("baselines.json", "baselines-quick.json")
FORMAT = "seqenv-experiment-v1"


def is_runner_results(path: Path) -> bool:
    """True for a results JSON written by the runner (``format`` = :data:`FORMAT`)."""
    try:
        return json.loads(Path(path).read_text()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def _t(data: dict, temp: float | None = None) -> str:
    return repr(float(data["resolved"]["default_temperature"] if temp is None else temp))


def _ok(data: dict, task: str, arm: str) -> dict:
    """``{seed: cell}`` of the finished cells of one arm on one task."""
    out = {}
    for key, cell in data["cells"].items():
        t, a, s = key.rsplit("/", 2)
        if t == task and a == arm and cell.get("status") == "ok":
            out[int(s)] = cell
    return dict(sorted(out.items()))


def values(data: dict, task: str, arm: str, metric: str, temp: float | None = None) -> dict:
    """``{seed: value}`` of ``metric`` at temperature ``temp`` (default: the experiment's default)."""
    key = _t(data, temp)
    return {
        s: c["metrics"][key].get(metric)
        for s, c in _ok(data, task, arm).items()
        if c["metrics"].get(key, {}).get(metric) is not None
    }


def primary_metric(data: dict, task: str) -> str:
    """The task metric of the verdict: ``validity`` where the task has a checker, else ``oracle_nll`` where it
    has an oracle, else (a text corpus, e.g. a ``file:`` task) the held-out ``nll`` itself."""
    for metric in ("validity", "oracle_nll"):
        if any(values(data, task, arm, metric) for arm in data["resolved"]["arms"]):
            return metric
    return "nll"


def task_label(task: str) -> str:
    """``task`` as a file-name part (the PNGs): a ``file:`` task by its file's stem."""
    if task.startswith("file:"):
        return "file-" + Path(task[len("file:") :]).stem
    return re.sub(r"[^A-Za-z0-9_.-]", "_", task)


def has_frontier(data: dict, task: str) -> bool:
    """A quality–diversity frontier needs a quality metric (validity or the oracle NLL)."""
    return primary_metric(data, task) != "nll"


def shown_metrics(data: dict, task: str) -> list:
    """The primary metric, the experiment's metrics present on this task, then held-out ``nll`` (test)."""
    arms = ["base", *data["resolved"]["arms"]]
    present = [m for m in data["metrics"] if any(values(data, task, a, m) for a in arms)]
    return list(dict.fromkeys([primary_metric(data, task), *present, "nll"]))


def arm_verdict(data: dict, arm: str, comparison: dict | None, direction: int) -> str:
    """:func:`verdict`, plus ", confirmed on fresh seeds (picked in OTHER)" for a better/worse verdict of an arm
    whose config is one of the arms of the experiment this one ``confirms`` (seeds disjoint, checked by the
    loader) -- the only place these words are written."""
    v = verdict(comparison, direction)
    confirms = data.get("confirms") or {}
    if v in ("better", "worse") and arm in confirms.get("arms", {}):
        v += f", confirmed on fresh seeds (`{confirms['arms'][arm]}` of `{confirms['experiment']}`)"
    return v


def _origin(cell: dict) -> tuple:
    r = cell.get("reused_from")
    return (r["file"], r["invocation"]) if r else ("", cell.get("invocation", 0))


def cost_ratio(data: dict, task: str, arm: str) -> dict | None:
    """Cost per demonstration token relative to the control: per seed, the arm's median step time over the
    control's (``step_s_median``; every arm trains on the same demonstration batches), then mean, min and max
    over seeds. ``mixed``: some pair of cells was timed in different runs (a copied cell), so under
    different machine load. None when no seed has both timings."""
    mine, ctrl = _ok(data, task, arm), _ok(data, task, data["control"])
    ratios, mixed = [], False
    for seed, cell in mine.items():
        c = ctrl.get(seed)
        if c and cell.get("step_s_median") and c.get("step_s_median"):
            ratios.append(cell["step_s_median"] / c["step_s_median"])
            mixed |= _origin(cell) != _origin(c)
    if not ratios:
        return None
    return {"n": len(ratios), "mean": float(np.mean(ratios)), "min": min(ratios), "max": max(ratios), "mixed": mixed}


def fmt_cost(c: dict | None) -> str:
    """``2.71× (2.60–2.85)``: mean (min–max over seeds); ``†`` when timed in different runs."""
    if c is None:
        return "–"
    return f"{c['mean']:.2f}× ({c['min']:.2f}–{c['max']:.2f}){' †' if c['mixed'] else ''}"


def comparisons(data: dict, task: str) -> dict:
    """``{arm: {metric: paired(...)}}`` against the control arm at the default temperature."""
    control = data["control"]
    out = {}
    for arm in data["resolved"]["arms"]:
        if arm != control:
            out[arm] = {
                m: paired(values(data, task, arm, m), values(data, task, control, m)) for m in shown_metrics(data, task)
            }
    return out


# ----------------------------------------------------------------------------------------------------------
# frontier


def frontier_axes(data: dict, task: str) -> tuple[str, str]:
    """``(quality metric, diversity metric)`` of the task's frontier (see :func:`has_frontier`)."""
    return ("validity", "distinct_2") if primary_metric(data, task) == "validity" else ("oracle_nll", "nll_at_t")


def curve(data: dict, task: str, arm: str, seed: int) -> list:
    """``[(temperature, diversity, quality)]`` of one seed, over the temperature grid (missing points skipped)."""
    q, x = frontier_axes(data, task)
    cell = _ok(data, task, arm).get(seed)
    out = []
    for temp in data["resolved"]["temperatures"]:
        m = cell["metrics"].get(_t(data, temp), {}) if cell else {}
        if m.get(q) is not None and m.get(x) is not None:
            out.append((temp, m[x], m[q]))
    return out


def frontier_gap(data: dict, task: str, arm: str) -> tuple[dict | None, int]:
    """Per-seed mean quality gap of ``arm``'s curve over the control's (module docstring), as :func:`paired`
    against 0; and the number of (seed, temperature) points inside the control's diversity range."""
    q, _ = frontier_axes(data, task)
    sign = DIRECTION[q]
    gaps, used = {}, 0
    for seed in _ok(data, task, arm):
        ref = sorted((x, y) for _, x, y in curve(data, task, data["control"], seed))
        if len(ref) < 2:
            continue
        xs, ys = np.array([p[0] for p in ref]), np.array([p[1] for p in ref])
        pts = [(x, y) for _, x, y in curve(data, task, arm, seed) if xs[0] <= x <= xs[-1]]
        if pts:
            used += len(pts)
            gaps[seed] = float(np.mean([sign * (y - np.interp(x, xs, ys)) for x, y in pts]))
    return paired(gaps, {s: 0.0 for s in gaps}), used


def frontier_statement(data: dict, task: str, arm: str) -> str:
    """One generated sentence: whether ``arm``'s curve lies above the control's beyond the interval."""
    cmp, used = frontier_gap(data, task, arm)
    control = data["control"]
    if cmp is None:
        return f"`{arm}`: no point of its curve lies within `{control}`'s diversity range; not compared."
    v = verdict(cmp, +1)
    words = {
        "better": f"above `{control}`'s curve beyond the interval",
        "worse": f"below `{control}`'s curve beyond the interval",
    }.get(v, v.replace("better", "above").replace("worse", "below"))
    return (
        f"`{arm}`: {words} (quality gap at equal diversity {fmt_diff(cmp)}, 95 % t over seeds, "
        f"n = {cmp['n']}, {used} points within `{control}`'s diversity range)."
    )


def render_png(data: dict, task: str, path: Path) -> None:
    """Quality against diversity, mean over seeds per temperature, one line per arm (control in black)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, x = frontier_axes(data, task)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for arm in ["base", *data["resolved"]["arms"]]:
        pts = []
        for temp in data["resolved"]["temperatures"]:
            xv = list(values(data, task, arm, x, temp).values())
            qv = list(values(data, task, arm, q, temp).values())
            if xv and qv:
                pts.append((temp, float(np.mean(xv)), float(np.mean(qv))))
        if not pts:
            continue
        is_control = arm == data["control"]
        ax.plot(
            [p[1] for p in pts],
            [p[2] for p in pts],
            marker="o",
            label=arm,
            color="black" if is_control else None,
            linewidth=2.5 if is_control else 1.2,
            linestyle="--" if arm == "base" else "-",
        )
        for temp, xx, yy in pts:
            ax.annotate(f"{temp:g}", (xx, yy), fontsize=6, textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel(f"diversity: {x}" + (" (lower = more coverage)" if DIRECTION.get(x, -1) < 0 else ""))
    ax.set_ylabel(f"quality: {q}" + (" (lower is better)" if DIRECTION[q] < 0 else ""))
    ax.set_title(f"{data['experiment']}{' (quick)' if data.get('quick') else ''}: {task}, temperature sweep")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _num(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def _ms(vals: dict) -> str:
    if not vals:
        return "–"
    m, s = mean_std(list(vals.values()))
    return f"{m:.3f} ± {s:.3f}"


def _budget_lines(data: dict) -> list:
    r = data["resolved"]
    m = r["model"]
    b = r["base"]
    tr = b["train"]
    sel = (
        f"; the arms start from the base checkpoint of lowest held-out NLL on `valid` (scored every "
        f"{b['select_every']} steps)"
        if b["select_every"]
        else "; the arms start from its last step"
    )
    lines = [
        f"Model {m['n_layer']} layers × {m['n_head']} heads × {m['n_embd']} wide, dropout {m['dropout']}. "
        f"Base: `{b['agent']}` from scratch, {tr['max_steps']} steps × {tr['batch_size']} demonstrations, "
        f"lr {tr['lr']:g} (warm-up {tr['warmup_steps']}, cosine to {tr['min_lr_ratio']:g} × lr){sel}.  ",
        f"Evaluation: {r['eval_samples']} episodes per temperature (test prompts on a prompted task), sampling "
        f"seed = the run's seed, temperatures {', '.join(f'{t:g}' for t in r['temperatures'])} (tables at "
        f"T = {r['default_temperature']:g}); held-out `nll` on the `test` split.",
    ]
    if r.get("task_options"):
        opts = "; ".join(
            f"`{t}`: `make_task({t!r}, " + ", ".join(f"{k}={v!r}" for k, v in o.items()) + ")`"
            for t, o in r["task_options"].items()
        )
        lines[-1] += "  "
        lines.append(f"Task options: {opts}.")
    if r.get("recovery_samples"):
        lines[-1] += "  " if not lines[-1].endswith("  ") else ""
        lines.append(
            f"Recovery probe: {r['recovery_samples']} episodes per cell at T = {r['default_temperature']:g}, a "
            "wrong token injected into a test answer (`benchmarks/probes.py`); `recovery_deleted` = fraction of "
            "injected wrong tokens no longer in the final answer."
        )
    lines += [
        "",
        "| arm | agent | start | steps | batch | lr | warm-up | min lr ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm, a in r["arms"].items():
        t = a["train"]
        steps = f"{t['max_steps']} (incl. base's)" if a["start"] == "fork" else str(t["max_steps"])
        agent = a["agent"] + (f" + rerank {a['rerank']}" if a.get("rerank") else "")
        lines.append(
            f"| {arm} | {agent} | {a['start']} | {steps} | {t['batch_size']} | {t['lr']:g} | "
            f"{t['warmup_steps']} | {t['min_lr_ratio']:g} |"
        )
    agents = {}
    for arm, a in r["arms"].items():
        agents.setdefault(a["agent"], []).append(arm)
    for agent, arms in agents.items():
        fields = list(r["arms"][arms[0]]["learner"])
        lines += [
            "",
            f"`{agent}` learner config of each arm (complete; every field, none from defaults):",
            "",
            "| arm | " + " | ".join(fields) + " |",
            "|---|" + "---|" * len(fields),
        ]
        for arm in arms:
            lines.append(f"| {arm} | " + " | ".join(str(r["arms"][arm]["learner"][f]) for f in fields) + " |")
    return lines


def render_markdown(data: dict, stem: str) -> str:
    """The report of one results file (``stem``: the file name without suffix, for the PNG links)."""
    r = data["resolved"]
    control = data["control"]
    title = f"# Experiment `{data['experiment']}`" + (" (quick budget)" if data.get("quick") else "")
    lines = [
        title,
        "",
        f"Generated from `{stem}.json` by `python -m benchmarks render {stem}.json` "
        f"(do not edit); experiment file `{data['file']}`.",
        "",
    ]
    if data.get("description"):
        lines += [data["description"].strip(), ""]
    lines += [
        "## Runs",
        "",
        "| # | command | commit | dirty | Python | torch | transformers | device | CPUs | "
        "load avg 1/5/15 min | workers | wall | cells |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    hashes = {}
    for i, inv in enumerate(data["invocations"]):
        p = inv["provenance"]
        mach = p["machine"]
        load = "/".join(f"{x:g}" for x in mach["load_average"]) if mach.get("load_average") else "–"
        lines.append(
            f"| {i} | `{inv['command']}` | {(p['commit'] or '?')[:10]} | {p['dirty']} | {p['python']} | "
            f"{p['torch']} | {p['transformers']} | {mach['device']}: {mach['device_name']} | "
            f"{mach['cpu_count']} | {load} | {inv['workers']} | {inv.get('wall_s', 0) / 60:.1f} min | "
            f"{len(inv['cells'])} |"
        )
        hashes.update(p["corpus_hashes"])
    for i, inv in enumerate(data["invocations"]):
        for f, keys in inv.get("reused", {}).items():
            by_arm: dict = {}
            for k in keys:
                t, a, s = k.rsplit("/", 2)
                by_arm.setdefault(a, set()).add((t, int(s)))
            commits = sorted(
                {(data["cells"][k]["reused_from"].get("commit") or "?")[:10] for k in keys if k in data["cells"]}
            )
            lines.append(
                f"\nRun {i} copied {len(keys)} cells from `{f}` instead of running them (identical task, seed, "
                f"model, evaluation, base and arm config; computed there at commit {', '.join(commits)}; each "
                f"cell's `reused_from` names its origin): "
                + "; ".join(f"{a} ({len(ts)} task × seed)" for a, ts in by_arm.items())
                + "."
            )
    if data.get("confirms"):
        c = data["confirms"]
        arms = ", ".join(f"`{a}` (= `{b}`)" for a, b in c["arms"].items()) or "none"
        lines.append(
            f"\nThis experiment confirms variants picked in `{c['experiment']}` on fresh seeds (its seeds "
            f"{c['seeds']} are disjoint from this file's, checked by the loader); arms with the same complete "
            f"config there: {arms}."
        )
    lines += [
        "",
        "Corpus identity (`Task.corpus_hash`, SHA-256 of the splits' texts): "
        + ", ".join(f"`{t}` {h[:16]}" for t, h in sorted(hashes.items()))
        + ".",
        "",
        "## Budget",
        "",
    ]
    lines += _budget_lines(data)
    lines += [
        "",
        "## Results",
        "",
        f"Mean ± std over seeds at T = {r['default_temperature']:g}. Δ: paired difference arm − `{control}` "
        "per seed (same base run, same sampling seed), mean [95 % t-interval over seeds]; the verdict is "
        'generated from the interval ("better"/"worse" when it excludes 0, in the metric\'s good '
        "direction, over at least 5 seeds; over fewer seeds such an interval is shown without a verdict). "
        "`nll`: held-out NLL on `test` (nats/token, lower is better). Cost: seconds per optimisation step "
        f"relative to `{control}` (the same demonstration batches, so per demonstration token), per seed, "
        "mean (min–max); † timed in different runs (a copied cell), under different machine load.",
    ]
    for task in r["tasks"]:
        metrics = shown_metrics(data, task)
        prim = metrics[0]
        judged = list(dict.fromkeys([prim, "nll"]))
        cmps = comparisons(data, task)
        lines += [
            "",
            f"### `{task}`",
            "",
            "| arm | n | "
            + " | ".join(metrics)
            + "".join(f" | Δ {m} | verdict" for m in judged)
            + f" | cost × {control} |",
            "|---|---|" + "---|" * (len(metrics) + 2 * len(judged) + 1),
        ]
        for arm in ["base", *r["arms"]]:
            n = len(_ok(data, task, arm))
            cells = [_ms(values(data, task, arm, m)) for m in metrics]
            if arm in cmps:
                extra = []
                for m in judged:
                    extra += [fmt_diff(cmps[arm][m]), arm_verdict(data, arm, cmps[arm][m], DIRECTION[m])]
                extra.append(fmt_cost(cost_ratio(data, task, arm)))
            else:
                extra = ["control" if arm == control else "(start of every arm)"] + [""] * (2 * len(judged))
            lines.append(f"| {arm} | {n} | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
        failed = [(k, c) for k, c in data["cells"].items() if k.startswith(f"{task}/") and c.get("status") != "ok"]
        for k, c in failed:
            lines.append(f"\nFailed: `{k}`: {c.get('error')}")
        if not has_frontier(data, task):
            lines += ["", "No quality metric on this task (no checker, no oracle): no frontier; held-out NLL decides."]
            continue
        q, x = frontier_axes(data, task)
        lines += [
            "",
            f"#### Quality–diversity frontier (`{task}`)",
            "",
            f"![frontier]({stem}_{task_label(task)}.png)",
            "",
            f"Quality `{q}` / diversity `{x}`, mean over seeds, per temperature:",
            "",
            "| arm | " + " | ".join(f"T = {t:g}" for t in r["temperatures"]) + " |",
            "|---|" + "---|" * len(r["temperatures"]),
        ]
        for arm in ["base", *r["arms"]]:
            row = []
            for temp in r["temperatures"]:
                qv, xv = values(data, task, arm, q, temp), values(data, task, arm, x, temp)
                row.append(f"{np.mean(list(qv.values())):.3f} / {np.mean(list(xv.values())):.3f}" if qv and xv else "–")
            lines.append(f"| {arm} | " + " | ".join(row) + " |")
        lines += [""] + [f"- {frontier_statement(data, task, arm)}" for arm in r["arms"] if arm != control]
    return "\n".join(lines) + "\n"


def render_files(json_path: Path, png: bool = True) -> Path:
    """Write ``NAME.md`` (and ``NAME_TASK.png`` per task) beside ``json_path``; returns the Markdown path."""
    json_path = Path(json_path)
    data = json.loads(json_path.read_text())
    stem = json_path.with_suffix("")
    md = stem.with_suffix(".md")
    md.write_text(render_markdown(data, stem.name))
    if png:
        for task in data["resolved"]["tasks"]:
            if has_frontier(data, task) and any(_ok(data, task, a) for a in data["resolved"]["arms"]):
                render_png(data, task, stem.parent / f"{stem.name}_{task_label(task)}.png")
    return md


# ----------------------------------------------------------------------------------------------------------
# README block


def readme_block(json_paths: list) -> str:
    """The README's generated "Which method wins where" table from the runner's results files."""
    lines = [
        README_BEGIN,
        "",
        "| results | task | arm vs control | n | task metric Δ [95 % t] | verdict | held-out NLL Δ [95 % t] | "
        "verdict | quality–diversity curve vs control |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(json_paths, key=lambda p: Path(p).name):
        data = json.loads(Path(path).read_text())
        name = Path(path).with_suffix(".md").name
        for task in data["resolved"]["tasks"]:
            prim = primary_metric(data, task)
            for arm, cmp in comparisons(data, task).items():
                c1, c2 = cmp[prim], cmp["nll"]
                if c1 is None and c2 is None:
                    continue
                fg = frontier_gap(data, task, arm)[0] if has_frontier(data, task) else None
                fv = verdict(fg, +1).replace("better", "above").replace("worse", "below")
                n = max(c["n"] for c in (c1, c2) if c is not None)
                lines.append(
                    f"| `{name}` | {task} | {arm} vs {data['control']} | {n} | {prim} {fmt_diff(c1)} | "
                    f"{arm_verdict(data, arm, c1, DIRECTION[prim])} | {fmt_diff(c2)} | "
                    f"{arm_verdict(data, arm, c2, DIRECTION['nll'])} | "
                    f"{fv} |"
                )
    lines += ["", README_END]
    return "\n".join(lines)


def _short(v: str) -> str:
    if v in ("better", "worse") or v.startswith(("better,", "worse,")):
        return v.split(",")[0]
    if "no verdict" in v:
        return f"{v.split(' at ')[0]} at n < {MIN_SEEDS} (no verdict)"
    if v.startswith("no difference"):
        return "no difference detected"
    if "no interval" in v:
        return "one seed, no interval"
    return "not compared"


def _grouped(words: dict, tasks: list) -> str:
    """``{task: word}`` as "worse on all 3 tasks" or "better on a; no difference detected on b, c"."""
    groups: dict = {}
    for t in tasks:
        groups.setdefault(words[t], []).append(t)
    if len(groups) == 1:
        return f"{next(iter(groups))} on {'all ' if len(tasks) > 1 else ''}{len(tasks)} task{'s' * (len(tasks) > 1)}"
    return "; ".join(f"{w} on {', '.join(ts)}" for w, ts in groups.items())


def methods_block(json_path: Path | None) -> str:
    """The README's per-method verdict table: one row per arm of ``json_path`` other than its control, with
    the paired task-metric and held-out-NLL differences per task, the cost per token relative to the control
    and a one-line verdict generated from the intervals (:func:`_grouped` of :func:`arm_verdict`)."""
    lines = [METHODS_BEGIN, ""]
    if json_path is None:
        return "\n".join([*lines, "(no results file yet)", "", METHODS_END])
    data = json.loads(Path(json_path).read_text())
    tasks, control = data["resolved"]["tasks"], data["control"]
    name = Path(json_path).with_suffix(".md").name
    lines += [
        f"From `benchmarks/results/{name}`{' (quick budget: not a verdict on the methods)' if data.get('quick') else ''}"
        f": per task, the paired difference against `{control}` (mean [95 % t-interval over n seeds]) of the task "
        "metric and of the held-out NLL on `test`; cost per demonstration token relative to "
        f"`{control}` (median step time, mean over tasks and seeds).",
        "",
        "| arm | `--agent` | n | " + " | ".join(tasks) + f" | cost × {control} | verdict (generated) |",
        "|---|---|---|" + "---|" * (len(tasks) + 2),
    ]
    for arm, run in data["resolved"]["arms"].items():
        if arm == control:
            continue
        cells, metric_w, nll_w, curve_w, ns, costs = [], {}, {}, {}, [], []
        for task in tasks:
            prim = primary_metric(data, task)
            cmp = comparisons(data, task)[arm]
            c1, c2 = cmp[prim], cmp["nll"]
            cells.append(f"{prim} {fmt_diff(c1)}; nll {fmt_diff(c2)}")
            metric_w[task] = _short(arm_verdict(data, arm, c1, DIRECTION[prim]))
            nll_w[task] = _short(arm_verdict(data, arm, c2, DIRECTION["nll"]))
            fv = _short(verdict(frontier_gap(data, task, arm)[0] if has_frontier(data, task) else None, +1))
            curve_w[task] = fv.replace("better", "above").replace("worse", "below")
            ns += [c["n"] for c in (c1, c2) if c is not None]
            c = cost_ratio(data, task, arm)
            if c is not None:
                costs.append(c["mean"])
        cost = f"{np.mean(costs):.2f}×" if costs else "–"
        line = (
            f"Task metric {_grouped(metric_w, tasks)}. Held-out NLL {_grouped(nll_w, tasks)}. "
            f"Curve vs `{control}`'s temperature sweep: {_grouped(curve_w, tasks)}."
        )
        n = f"{min(ns)}" if ns and min(ns) == max(ns) else (f"{min(ns)}–{max(ns)}" if ns else "0")
        lines.append(f"| {arm} | `{run['agent']}` | {n} | " + " | ".join(cells) + f" | {cost} | {line} |")
    return "\n".join([*lines, "", METHODS_END])


def methods_source(results_dir: Path) -> Path | None:
    """The first of :data:`METHODS_SOURCES` present in ``results_dir`` (None if none)."""
    for name in METHODS_SOURCES:
        if (Path(results_dir) / name).is_file():
            return Path(results_dir) / name
    return None


def runner_results(results_dir: Path) -> list:
    """The runner's results JSONs in ``results_dir``, sorted by name."""
    return sorted(p for p in Path(results_dir).glob("*.json") if is_runner_results(p))


def replace_readme_block(text: str, block: str, begin: str = README_BEGIN, end: str = README_END) -> str:
    """``text`` with the generated block between ``begin`` and ``end`` replaced.

    :raises ValueError: if the markers are missing."""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise ValueError(f"README has no generated block (markers {begin!r} ... {end!r})")
    return pattern.sub(lambda _: block, text, count=1)


def regenerate_readme(text: str, results_dir: Path) -> str:
    """The README text with both generated blocks ("which method wins where", the per-method verdicts)
    regenerated from the results files in ``results_dir``."""
    text = replace_readme_block(text, readme_block(runner_results(results_dir)))
    return replace_readme_block(text, methods_block(methods_source(results_dir)), METHODS_BEGIN, METHODS_END)
