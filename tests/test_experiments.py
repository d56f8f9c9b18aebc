"""The experiment runner (benchmarks/runner.py, report.py, stats.py): complete configs, committed results
regenerate from their JSON, paired statistics and frontier verdicts by hand, resume."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from agents.learners import LEARNERS
from agents.policies import PolicyConfig, TransformerPolicy
from benchmarks.probes import prompted_recovery
from benchmarks.report import (
    METHODS_BEGIN,
    METHODS_END,
    README_BEGIN,
    README_END,
    arm_verdict,
    cost_ratio,
    fmt_cost,
    frontier_gap,
    has_frontier,
    methods_block,
    regenerate_readme,
    render_markdown,
    runner_results,
    task_label,
)
from benchmarks.runner import (
    EXPERIMENTS_DIR,
    RESULTS_DIR,
    ExperimentError,
    load_experiment,
    run_experiment,
    template,
)
from benchmarks.stats import fmt_diff, paired, t975, verdict
from seqenv.tasks import make_task
from seqenv.tokenizers import SpecialIds

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = runner_results(RESULTS_DIR)

TINY = """
tasks = ["oracle-hmm"]
seeds = [0, 1]
control = "mle"
temperatures = [0.85, 1.0]
metrics = ["oracle_nll", "distinct_2"]
eval_samples = 8
[base]
agent = "mle"
select_every = 2
[base.model]
n_layer = 1
n_head = 2
n_embd = 16
dropout = 0.0
[base.train]
max_steps = 4
batch_size = 4
lr = 0.002
min_lr_ratio = 0.1
warmup_steps = 2
weight_decay = 0.1
grad_clip = 1.0
[base.learner]
backspace_p = 0.0
wrong_tokens = "uniform"
[train]
max_steps = 2
batch_size = 4
lr = 0.0003
min_lr_ratio = 1.0
warmup_steps = 1
weight_decay = 0.1
grad_clip = 1.0
[arms.mle]
agent = "mle"
[arms.mle.learner]
backspace_p = 0.0
wrong_tokens = "uniform"
[arms.bs]
agent = "mle"
start = "fork"
train = {max_steps = 6}
[arms.bs.learner]
backspace_p = 0.1
wrong_tokens = "uniform"
"""


def _write(tmp_path, text, name="tiny"):
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- committed files


@pytest.mark.parametrize("path", sorted(EXPERIMENTS_DIR.glob("*.toml")), ids=lambda p: p.stem)
def test_every_experiment_file_loads_complete(path):
    for quick in (False, True):
        exp = load_experiment(path.stem, quick=quick)
        for arm in exp.arms.values():
            fields = [f.name for f in dataclasses.fields(LEARNERS[arm["agent"]].config_class)]
            assert list(arm["learner"]) == fields  # every field, in the class's order


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_results_match_the_experiment_file_even_with_changed_defaults(path, monkeypatch):
    """The resolved arm configs of a committed results file equal the experiment file's, also after every
    learner default has been changed (no value of an arm comes from a default)."""
    data = json.loads(path.read_text())
    assert load_experiment(data["experiment"], quick=data["quick"]).resolved() == data["resolved"]
    for learner in LEARNERS.values():
        cls = learner.config_class
        changed = dataclasses.make_dataclass(
            cls.__name__, [(f.name, f.type, dataclasses.field(default="changed")) for f in dataclasses.fields(cls)]
        )
        monkeypatch.setattr(learner, "config_class", changed)
    assert load_experiment(data["experiment"], quick=data["quick"]).resolved() == data["resolved"]


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_committed_markdown_is_rendered_from_its_json(path):
    data = json.loads(path.read_text())
    assert path.with_suffix(".md").read_text() == render_markdown(data, path.stem)
    for task in data["resolved"]["tasks"]:
        assert (path.parent / f"{path.stem}_{task_label(task)}.png").is_file() or not has_frontier(data, task)


def test_readme_blocks_are_generated_from_the_results():
    """Both generated README blocks ("which method wins where", the per-method verdicts) equal what the
    committed results JSON gives."""
    text = (ROOT / "README.md").read_text()
    assert README_BEGIN in text and README_END in text and METHODS_BEGIN in text and METHODS_END in text
    assert regenerate_readme(text, RESULTS_DIR) == text


# ---------------------------------------------------------------- experiment files


def test_incomplete_or_unknown_learner_fields_are_refused(tmp_path):
    with pytest.raises(ExperimentError, match=r"arms.bs.learner: .*complete config.*missing \['wrong_tokens'\]"):
        load_experiment(
            _write(tmp_path, TINY.replace('backspace_p = 0.1\nwrong_tokens = "uniform"', "backspace_p = 0.1"))
        )
    with pytest.raises(ExperimentError, match=r"unknown \['alpha'\]"):
        load_experiment(_write(tmp_path, TINY.replace("backspace_p = 0.1\n", "backspace_p = 0.1\nalpha = 1.0\n")))
    with pytest.raises(ExperimentError, match=r"arms.mle.train: missing keys \['grad_clip'\]"):
        load_experiment(_write(tmp_path, TINY.replace("grad_clip = 1.0\n[arms.mle]", "[arms.mle]")))
    with pytest.raises(ExperimentError, match="control: 'sm' is not an arm"):
        load_experiment(_write(tmp_path, TINY.replace('control = "mle"', 'control = "sm"')))
    with pytest.raises(ExperimentError, match="start: expected one of"):
        load_experiment(_write(tmp_path, TINY.replace('start = "fork"', 'start = "warm"')))
    with pytest.raises(ExperimentError, match="--quick needs a \\[quick\\] table"):
        load_experiment(_write(tmp_path, TINY), quick=True)


def test_confirms_needs_fresh_seeds(tmp_path):
    _write(tmp_path, TINY, "sweep")
    confirm = TINY.replace("seeds = [0, 1]", 'seeds = [1, 2]\nconfirms = "sweep"')
    with pytest.raises(ExperimentError, match=r"confirms 'sweep' on fresh seeds, but seeds \[1\] are seeds of"):
        load_experiment(_write(tmp_path, confirm, "confirm"))
    exp = load_experiment(_write(tmp_path, confirm.replace("[1, 2]", "[2, 3]"), "confirm"))
    # both arms are, config for config, arms of the sweep; an arm with another config is not
    assert exp.confirms == {"experiment": "sweep", "seeds": [0, 1], "arms": {"mle": "mle", "bs": "bs"}}
    exp = load_experiment(
        _write(tmp_path, confirm.replace("[1, 2]", "[2, 3]").replace("backspace_p = 0.1", "backspace_p = 0.3"), "c2")
    )
    assert exp.confirms["arms"] == {"mle": "mle"}
    with pytest.raises(ExperimentError, match="no experiment file nope.toml"):
        load_experiment(_write(tmp_path, confirm.replace('"sweep"', '"nope"'), "c3"))


def test_rerank_arms_control_base_and_quick_learner_fields(tmp_path):
    nce = template("nce").split("\n", 2)[2]  # the learner table's lines
    text = TINY + '[arms.rr]\nagent = "nce"\nrerank = 4\n[arms.rr.learner]\n' + nce
    exp = load_experiment(_write(tmp_path, text.replace('control = "mle"', 'control = "base"')))
    assert exp.control == "base" and exp.arms["rr"]["rerank"] == 4 and "rerank" not in exp.arms["mle"]
    with pytest.raises(ExperimentError, match=r"arms.rr.rerank: expected an integer number of candidates >= 2"):
        load_experiment(_write(tmp_path, text.replace("rerank = 4", "rerank = 1")))
    with pytest.raises(ExperimentError, match=r"arms.bs.rerank: .* got 4 on agent 'mle'"):
        load_experiment(_write(tmp_path, TINY.replace('start = "fork"', 'start = "fork"\nrerank = 4')))
    quick = text + "[quick]\nlearner = {critic_n_embd = 16, backspace_p = 0.3}\n"
    exp = load_experiment(_write(tmp_path, quick), quick=True)
    assert exp.arms["rr"]["learner"]["critic_n_embd"] == 16 and exp.arms["bs"]["learner"]["backspace_p"] == 0.3
    assert "critic_n_embd" not in exp.arms["mle"]["learner"]


def test_a_task_without_quality_metric_is_judged_on_nll():
    data = _cost_data([1.0] * 3, [1.0] * 3)
    for cell in data["cells"].values():
        for m in cell["metrics"].values():
            del m["validity"]
    train = dict(max_steps=2, batch_size=4, lr=1e-3, min_lr_ratio=1.0, warmup_steps=1, weight_decay=0.1, grad_clip=1.0)
    run = {"agent": "mle", "start": "init", "train": train, "learner": {"backspace_p": 0.0}}
    data["resolved"].update(
        tasks=["file:data/c.txt"],
        model={"n_layer": 1, "n_head": 2, "n_embd": 16, "dropout": 0.0},
        base={**run, "select_every": 0},
        arms={"mle": run, "sm": run},
        eval_samples=8,
    )
    data.update(file="x.toml", invocations=[])
    data["cells"] = {k.replace("t/", "file:data/c.txt/", 1): c for k, c in data["cells"].items()}
    md = render_markdown(data, "e")
    assert not has_frontier(data, "file:data/c.txt") and task_label("file:data/c.txt") == "file-c"
    # nll differences 0, 0.1, 0.2: mean 0.1, sd 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.2484
    assert "| Δ nll | verdict | cost × mle |" in md and "+0.100 [-0.148, +0.348]" in md
    assert "no frontier; held-out NLL decides" in md and "Quality–diversity frontier" not in md


def test_the_documented_example_loads(tmp_path):
    text = (EXPERIMENTS_DIR / "README.md").read_text()
    example = text.split("```toml\n", 1)[1].split("```", 1)[0]
    exp = load_experiment(_write(tmp_path, example, "example"), quick=True)
    assert list(exp.arms) == ["mle", "earm_lam01"] and exp.arms["earm_lam01"]["train"]["lr"] == 1e-4
    assert exp.arms["earm_lam01"]["train"]["max_steps"] == 30 and exp.base["select_every"] == 40


def test_template_is_a_complete_learner_table():
    text = template("sequencematch")
    names = [f.name for f in dataclasses.fields(LEARNERS["sequencematch"].config_class)]
    assert [line.split(" = ")[0] for line in text.splitlines()[2:]] == names
    assert 'alpha_model = "none"' in text  # TOML has no null
    with pytest.raises(ExperimentError, match="unknown agent 'nope'"):
        template("nope")


# ---------------------------------------------------------------- statistics by hand


def test_paired_t_interval_and_verdicts_by_hand():
    # d = 1, 2, 3: mean 2, sd 1, half-width t(0.975, 2) / sqrt(3) = 4.303 / 1.7321 = 2.4843
    c = paired({0: 2.0, 1: 3.0, 2: 4.0}, {0: 1.0, 1: 1.0, 2: 1.0})
    assert c["n"] == 3 and c["mean"] == pytest.approx(2.0) and c["sd"] == pytest.approx(1.0)
    assert (c["low"], c["high"]) == (pytest.approx(2 - 2.4843, abs=1e-4), pytest.approx(2 + 2.4843, abs=1e-4))
    assert verdict(c, +1) == "no difference detected at n = 3"
    # d = 1.0, 1.1, 0.9: mean 1, sd 0.1, half-width 0.2484: the interval excludes 0
    c = paired({0: 1.0, 1: 1.1, 2: 0.9, 3: 5.0}, {0: 0.0, 1: 0.0, 2: 0.0})  # seed 3 unpaired: left out
    assert c["n"] == 3 and c["half_width"] == pytest.approx(4.303 * 0.1 / math.sqrt(3), rel=1e-6)
    assert verdict(c, +1) == "better at n = 3 < 5: no verdict" and verdict(c, -1) == "worse at n = 3 < 5: no verdict"
    assert verdict(c, +1, min_seeds=3) == "better" and verdict(c, -1, min_seeds=3) == "worse"
    assert fmt_diff(c) == "+1.000 [+0.752, +1.248]"
    one = paired({0: 1.0}, {0: 0.5})
    assert verdict(one, +1) == "n = 1: no interval" and fmt_diff(one) == "+0.500"
    assert paired({0: 1.0}, {1: 1.0}) is None and verdict(None, 1) == "–"
    assert t975(4) == 2.776 and t975(100) == 1.960
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def _frontier_data(gaps):
    """Control curve (distinct_2, validity) = (0.5, 0.2), (0.6, 0.3), (0.7, 0.4) per seed; the arm's points
    sit at diversity 0.55 and 0.65 (control there: 0.25 and 0.35), ``gaps[seed]`` above it, one point at
    0.9 outside the control's range."""
    temps = [0.7, 0.85, 1.0]
    cells = {}
    for seed, g in gaps.items():
        cells[f"t/mle/{seed}"] = {
            "status": "ok",
            "metrics": {
                repr(t): {"validity": v, "distinct_2": x} for t, x, v in zip(temps, (0.5, 0.6, 0.7), (0.2, 0.3, 0.4))
            },
        }
        cells[f"t/sm/{seed}"] = {
            "status": "ok",
            "metrics": {
                repr(t): {"validity": v, "distinct_2": x}
                for t, x, v in zip(temps, (0.55, 0.65, 0.9), (0.25 + g, 0.35 + g, 0.0))
            },
        }
    return {
        "control": "mle",
        "cells": cells,
        "metrics": [],
        "resolved": {"arms": {"mle": {}, "sm": {}}, "temperatures": temps, "default_temperature": 1.0},
    }


def test_frontier_gap_by_hand():
    cmp, used = frontier_gap(_frontier_data({0: 0.10, 1: 0.12, 2: 0.08}), "t", "sm")
    assert used == 6 and cmp["n"] == 3  # 2 in-range points per seed; the one at 0.9 is outside
    assert cmp["diffs"] == {0: pytest.approx(0.10), 1: pytest.approx(0.12), 2: pytest.approx(0.08)}
    assert verdict(cmp, +1, min_seeds=3) == "better"  # mean 0.1, sd 0.02, half-width 0.0497
    cmp, _ = frontier_gap(_frontier_data({0: 0.10, 1: -0.12, 2: 0.01}), "t", "sm")
    assert verdict(cmp, +1) == "no difference detected at n = 3"


def _cost_data(control_s, arm_s, reused_seed=None):
    """Two arms on task ``t``; ``step_s_median`` per seed; the arm's cell of ``reused_seed`` copied from
    another run; metrics: validity per seed (arm 0.1 above the control on every seed but one)."""
    cells = {}
    for seed, (c, a) in enumerate(zip(control_s, arm_s)):
        m = {"1.0": {"validity": 0.5, "nll": 2.0, "distinct_2": 0.5}}
        cells[f"t/mle/{seed}"] = {"status": "ok", "invocation": 0, "step_s_median": c, "metrics": m}
        ma = {"1.0": {"validity": 0.6 + 0.01 * (seed == 0), "nll": 2.0 + 0.1 * seed, "distinct_2": 0.5}}
        cells[f"t/sm/{seed}"] = {"status": "ok", "invocation": 0, "step_s_median": a, "metrics": ma}
        if seed == reused_seed:
            cells[f"t/sm/{seed}"]["reused_from"] = {"file": "x.json", "cell": f"t/sm/{seed}", "invocation": 0}
    return {
        "experiment": "e",
        "control": "mle",
        "cells": cells,
        "metrics": [],
        "resolved": {
            "tasks": ["t"],
            "arms": {"mle": {}, "sm": {"agent": "sequencematch"}},
            "temperatures": [1.0],
            "default_temperature": 1.0,
        },
    }


def test_cost_ratio_and_confirmation_words_by_hand(tmp_path):
    # ratios 2/1 = 2, 3/1 = 3, 2.5/0.5 = 5: mean 10/3
    data = _cost_data([1.0, 1.0, 0.5], [2.0, 3.0, 2.5])
    c = cost_ratio(data, "t", "sm")
    assert (c["n"], c["mean"], c["min"], c["max"], c["mixed"]) == (3, pytest.approx(10 / 3), 2.0, 5.0, False)
    assert fmt_cost(c) == "3.33× (2.00–5.00)"
    assert fmt_cost(cost_ratio(_cost_data([1.0, 1.0], [2.0, 3.0], reused_seed=1), "t", "sm")).endswith(" †")
    data["cells"]["t/sm/1"]["step_s_median"] = None  # not timed: left out
    assert cost_ratio(data, "t", "sm")["n"] == 2
    # validity differences 0.11, 0.1, 0.1, 0.1, 0.1 over five seeds: the interval excludes 0
    data = _cost_data([1.0] * 5, [2.0] * 5)
    cmp = paired({s: 0.6 + 0.01 * (s == 0) for s in range(5)}, {s: 0.5 for s in range(5)})
    assert arm_verdict(data, "sm", cmp, +1) == "better"  # no `confirms`: never "confirmed"
    data["confirms"] = {"experiment": "sweep", "seeds": [0, 1], "arms": {"sm": "sm_combo"}}
    assert arm_verdict(data, "sm", cmp, +1) == "better, confirmed on fresh seeds (`sm_combo` of `sweep`)"
    assert arm_verdict(data, "other", cmp, +1) == "better"  # not an arm of the confirmed sweep
    path = tmp_path / "e.json"
    path.write_text(json.dumps(data))
    row = [line for line in methods_block(path).splitlines() if line.startswith("| sm |")][0]
    # nll differences 0, .1, .2, .3, .4: mean 0.2, sd 0.1581, half-width 2.776 * 0.1581 / sqrt(5) = 0.1963
    assert "validity +0.102 [+0.096, +0.108]; nll +0.200 [+0.004, +0.396]" in row and "| 2.00× |" in row
    assert "Task metric better on 1 task. Held-out NLL worse on 1 task." in row


# ---------------------------------------------------------------- running


@pytest.mark.slow
def test_run_resume_and_refusal(tmp_path):
    path = _write(tmp_path, TINY)
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    data = run_experiment(path, workers=2, out_dir=out, scratch=scratch, command="test", log=lambda s: None)
    assert sorted(data["cells"]) == [f"oracle-hmm/{a}/{s}" for a in ("base", "bs", "mle") for s in (0, 1)]
    assert all(c["status"] == "ok" for c in data["cells"].values()), data["cells"]
    base = data["cells"]["oracle-hmm/base/0"]
    assert base["selection"]["split"] == "valid" and base["selection"]["best_step"] in (2, 4)
    m = data["cells"]["oracle-hmm/bs/0"]["metrics"]
    assert set(m) == {"0.85", "1.0"} and {"oracle_nll", "nll", "nll_at_t", "distinct_2"} <= set(m["1.0"])
    assert m["1.0"]["nll_at_t"] == pytest.approx(m["1.0"]["nll"])  # T = 1: the tempered model is the model
    prov = data["invocations"][0]["provenance"]
    assert len(prov["corpus_hashes"]["oracle-hmm"]) == 64 and prov["torch"] and "dirty" in prov
    md = (out / "tiny.md").read_text()
    assert "| bs | 2 |" in md and (out / "tiny_oracle-hmm.png").is_file()
    assert md == render_markdown(json.loads((out / "tiny.json").read_text()), "tiny")
    again = run_experiment(path, workers=1, out_dir=out, scratch=scratch, command="test", log=lambda s: None)
    assert again["invocations"][1]["cells"] == [] and again["cells"] == data["cells"]  # nothing rerun
    with pytest.raises(
        ExperimentError,
        match=r"another configuration of 'tiny' \(arms.bs.learner.backspace_p: "
        r"0.1 -> 0.2\)",
    ):
        run_experiment(
            _write(tmp_path, TINY.replace("backspace_p = 0.1", "backspace_p = 0.2")),
            out_dir=out,
            scratch=scratch,
            log=lambda s: None,
        )


@pytest.mark.slow
def test_reuse_copies_identical_cells_and_runs_the_rest(tmp_path):
    out, scratch = tmp_path / "out", tmp_path / "scratch"
    first = run_experiment(_write(tmp_path, TINY), out_dir=out, scratch=scratch, command="t", log=lambda s: None)
    # another experiment: the same base and `mle` arm (named `ctl` there), `bs` changed, a new arm `new`
    other = (
        TINY.replace("[arms.mle", "[arms.ctl")
        .replace('control = "mle"', 'control = "ctl"')
        .replace("backspace_p = 0.1", "backspace_p = 0.2")
        .replace(
            "[arms.bs]",
            '[arms.new]\nagent = "mle"\n[arms.new.learner]\nbackspace_p = 0.3\nwrong_tokens = "uniform"\n[arms.bs]',
        )
    )
    path = _write(tmp_path, other, "other")
    logs = []
    with pytest.raises(ExperimentError, match=r"--arms: \['nope'\] are not arms of 'other'"):
        run_experiment(path, out_dir=out, scratch=scratch, arms=["nope"], log=logs.append)
    with pytest.raises(ExperimentError, match=r"--tasks: \['arithmetic'\] are not tasks of 'other'"):
        run_experiment(path, out_dir=out, scratch=scratch, tasks=["arithmetic"], log=logs.append)
    data = run_experiment(
        path, out_dir=out, scratch=scratch, command="t", log=logs.append, reuse=[out / "tiny.json"], arms=["new"]
    )
    assert "oracle-hmm/bs/0" not in data["cells"]  # not among --arms: left for later
    data = run_experiment(path, out_dir=out, scratch=scratch, command="t", log=logs.append, reuse=[out / "tiny.json"])
    assert sorted(data["invocations"][1]["cells"]) == ["oracle-hmm/bs/0", "oracle-hmm/bs/1"]  # the rest, now
    inv = data["invocations"][0]
    assert sorted(inv["reused"][str(out / "tiny.json")]) == [
        f"oracle-hmm/{a}/{s}" for a in ("base", "ctl") for s in (0, 1)
    ]
    assert sorted(inv["cells"]) == ["oracle-hmm/new/0", "oracle-hmm/new/1"]  # only these ran
    ctl = data["cells"]["oracle-hmm/ctl/1"]
    assert (
        ctl["reused_from"]["cell"] == "oracle-hmm/mle/1"
        and ctl["metrics"] == first["cells"]["oracle-hmm/mle/1"]["metrics"]
    )
    assert "Run 0 copied 4 cells from" in (out / "other.md").read_text()
    # a copied base whose checkpoint is gone cannot start new arms
    (out / "other.json").unlink()
    for p in scratch.rglob("best.pt"):
        p.unlink()
    with pytest.raises(ExperimentError, match=r"copied from .*tiny.json, but its checkpoint .* is missing"):
        run_experiment(path, out_dir=out, scratch=scratch, command="t", log=lambda s: None, reuse=[out / "tiny.json"])


# ---------------------------------------------------------------- task options, recovery probe, cost


ARITH = (
    TINY.replace('tasks = ["oracle-hmm"]', 'tasks = ["arithmetic"]')
    .replace('metrics = ["oracle_nll", "distinct_2"]', 'metrics = ["recovery_deleted"]\nrecovery_samples = 8')
    .replace("[base]\n", "[task_options.arithmetic]\nmin_base = 10\nmax_base = 10\nmax_digits = 2\n[base]\n", 1)
)


def test_task_options_are_recorded_only_when_set(tmp_path):
    exp = load_experiment(_write(tmp_path, ARITH, "arith"))
    assert exp.resolved()["task_options"] == {"arithmetic": {"min_base": 10, "max_base": 10, "max_digits": 2}}
    assert exp.resolved()["recovery_samples"] == 8
    task = exp.make_task("arithmetic")
    assert all(p.startswith("In base 10,") for p in task.split_prompts["test"])
    assert exp.task_spec("arithmetic") == task.spec()
    plain = load_experiment(_write(tmp_path, TINY)).resolved()
    assert "task_options" not in plain and "recovery_samples" not in plain  # older experiments unchanged
    with pytest.raises(
        ExperimentError,
        match=r"task 'arithmetic' with options .*'max_digitz': 1\}: .*unexpected keyword argument 'max_digitz'",
    ):
        load_experiment(_write(tmp_path, ARITH.replace("max_digits = 2\n[base]", "max_digitz = 1\n[base]"), "a2"))
    with pytest.raises(ExperimentError, match=r"task_options: expected tables \[task_options.TASK\]"):
        load_experiment(_write(tmp_path, ARITH.replace("[task_options.arithmetic]", "[task_options.python-lines]")))
    with pytest.raises(ExperimentError, match=r"recovery_samples: expected an integer >= 0 \(0 = off\), got -1"):
        load_experiment(_write(tmp_path, ARITH.replace("recovery_samples = 8", "recovery_samples = -1"), "a3"))


class _Always(TransformerPolicy):
    """Zero weights (uniform logits) with +100 on ``token``: that token whenever it is legal."""

    token = 0

    def forward(self, tokens, fast_path=True):
        return self._shift(super().forward(tokens, fast_path))

    def prefill(self, tokens, lengths):
        cache, logits = super().prefill(tokens, lengths)
        return cache, self._shift(logits)

    def decode_step(self, cache, actions, active=None):
        return self._shift(super().decode_step(cache, actions, active))

    def _shift(self, logits):
        logits = logits.clone()
        logits[..., self.token] += 100.0
        return logits


def _always(task, token):
    cfg = PolicyConfig(
        vocab_size=task.tokenizer.vocab_size, block_size=task.max_length + 1, n_layer=1, n_head=1, n_embd=8
    )
    policy = _Always(cfg)
    with torch.no_grad():
        for p in policy.parameters():
            p.zero_()
    policy.token = token
    return policy


def test_prompted_recovery_by_hand():
    """Always ``eos``: the wrong token stays (0 deleted, 0 backspace first, every answer wrong); always
    ``backspace``: it is deleted every time (1, 1)."""
    task = make_task("arithmetic", min_base=10, max_base=10, max_digits=2)
    sp = SpecialIds.of(task)
    stay = prompted_recovery(_always(task, sp.eos), task, num_samples=16, seed=3)
    assert stay == {"recovery_backspace": 0.0, "recovery_deleted": 0.0, "recovery_validity": 0.0}
    gone = prompted_recovery(_always(task, sp.backspace), task, num_samples=16, seed=3)
    # backspace is legal right after the forced wrong token: first free action in all 16; then it deletes
    # the answer, types a uniform token whenever the answer is empty and deletes it again until the step
    # limit: the wrong token can only come back at a cut k = 0 by chance (1 in ~16 ordinary tokens)
    assert gone["recovery_backspace"] == 1.0 and gone["recovery_deleted"] >= 14 / 16


@pytest.mark.slow
def test_run_with_task_options_and_recovery(tmp_path):
    path = _write(tmp_path, ARITH.replace("select_every = 2", "select_every = 0"), "arith")
    out = tmp_path / "out"
    data = run_experiment(path, out_dir=out, scratch=tmp_path / "scratch", command="test", log=lambda s: None)
    assert all(c["status"] == "ok" for c in data["cells"].values()), data["cells"]
    ckpt = torch.load(data["cells"]["arithmetic/base/0"]["checkpoint"], weights_only=True)
    assert "min_base" in json.dumps(ckpt["task"]) or "In base 10" in json.dumps(ckpt["task"])
    m = data["cells"]["arithmetic/bs/1"]["metrics"]
    assert 0.0 <= m["1.0"]["recovery_deleted"] <= 1.0 and "recovery_deleted" not in m["0.85"]
    md = (out / "arith.md").read_text()
    assert "Task options: `arithmetic`: `make_task('arithmetic', min_base=10, max_base=10, max_digits=2)`" in md
    assert "| bs | 2 |" in md
