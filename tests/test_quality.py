"""benchmarks/quality.py: aggregation, verdicts, costs, the fork protocol, failures, a micro end-to-end run."""

import json
import math
from argparse import Namespace

import pytest

from agents.trainer import NonFiniteLossError
from benchmarks import quality  # noqa: E402

MICRO = [
    "--tasks",
    "oracle-hmm",
    "--seeds",
    "0",
    "--steps",
    "3",
    "--warm-steps",
    "1",
    "--batch-size",
    "8",
    "--model-size",
    "tiny",
    "--eval-samples",
    "8",
    "--recovery-samples",
    "8",
]


def test_mean_std_is_the_sample_std_of_finite_values():
    assert quality.mean_std([1, 2, 3]) == (2.0, 1.0)  # var = (1 + 0 + 1) / (3 - 1)
    assert quality.mean_std([5.0, None, math.nan]) == (5.0, 0.0)
    assert quality.mean_std([None, math.inf]) is None


def test_verdict_needs_the_gap_to_exceed_both_spreads():
    assert quality.verdict(0.9, 0.01, 0.8, 0.02, +1) == "better"  # 0.1 > 0.03
    assert quality.verdict(0.9, 0.05, 0.8, 0.06, +1) == "within spread"  # 0.1 <= 0.11
    assert quality.verdict(2.0, 0.1, 2.5, 0.1, -1) == "better"  # lower NLL
    assert quality.verdict(2.5, 0.1, 2.0, 0.1, -1) == "worse"
    with pytest.raises(ValueError, match="direction"):
        quality.verdict(1.0, 0.0, 0.0, 0.0, 0)


def test_add_costs_divides_by_the_mle_run_of_the_same_task_and_seed():
    runs = [
        dict(
            task="t",
            seed=0,
            method="mle",
            status="ok",
            method_s=10.0,
            method_steps=100,
            method_data_tokens=1000,
            total_s=10.0,
            metrics={},
        ),
        dict(
            task="t",
            seed=0,
            method="sequencematch",
            status="ok",
            method_s=15.0,
            method_steps=50,
            method_data_tokens=500,
            total_s=20.0,
            metrics={},
        ),
        dict(task="t", seed=0, method="earm", status="failed", metrics={}),
    ]
    quality.add_costs(runs)
    mle, sm, failed = (r["metrics"] for r in runs)
    assert mle["cost_ratio_token"] == 1.0 and mle["cost_ratio_total"] == 1.0
    assert sm["method_s_per_step"] == 0.3 and sm["method_ms_per_token"] == 30.0
    assert sm["cost_ratio_token"] == 3.0  # 30 ms / 10 ms per token
    assert sm["cost_ratio_total"] == 2.0  # 20 s / 10 s
    assert failed == {}


def test_canonical_specs_make_defaults_explicit_so_duplicates_run_once():
    budget = quality.Budget(steps=10, warm_steps=4)
    sm = quality.canonical(quality.RunSpec("oracle-hmm", 0, "sequencematch"), budget)
    # the defaults of SequenceMatchConfig (α = 100 since the hypotheses benchmark) become explicit parameters
    assert sm.params == (("alpha", 100.0), ("p", 0.05)) and sm.label == "sequencematch α=100 p=0.05"
    assert quality.canonical(quality.RunSpec("oracle-hmm", 0, "sequencematch", (("alpha", 100.0),)), budget) == sm
    earm = quality.canonical(quality.RunSpec("oracle-hmm", 0, "earm", (("lam", 0.5),)), budget)
    assert earm.params == (("lam", 0.5), ("start", 4))
    runs = quality.plan(["main", "earm_sweep"], ["oracle-hmm"], [0], ["oracle-hmm"], [0], budget, lambda_grid=(0.05,))
    assert [s.method for s in runs["main"]] == ["mle", "mle_backspace", "sequencematch", "earm"]
    # starts 1/8, 3/8, 5/8 of 10 steps, rounded
    assert [s.param("start") for s in runs["earm_sweep"][1:]] == [1, 4, 6]
    with pytest.raises(ValueError, match="unknown experiment 'gail'"):
        quality.plan(["gail"], ["oracle-hmm"], [0], [], [], budget)


def test_budget_rejects_bad_values():
    with pytest.raises(ValueError, match="warm_steps must be in"):
        quality.Budget(steps=10, warm_steps=10)
    with pytest.raises(ValueError, match="model_size"):
        quality.Budget(model_size="huge")
    assert quality.Budget(steps=5, warm_steps=2, warmup_steps=20).warmup_steps == 5


def test_a_failed_run_is_recorded_and_its_forks_fail_with_a_reason(tmp_path, monkeypatch):
    def boom(spec, bench):
        raise NonFiniteLossError("loss became nan at step 2")

    monkeypatch.setitem(quality.METHODS, "mle", (boom, lambda spec, b: None))
    budget = quality.Budget(steps=3, warm_steps=1, model_size="tiny")
    bench = quality.Bench(budget, tmp_path / "runs", log=lambda s: None)
    runs = {"main": [quality.RunSpec("oracle-hmm", 0, "mle"), quality.RunSpec("oracle-hmm", 0, "sequencematch")]}
    quality.run_all(bench, runs)
    mle, sm = bench.results.values()
    assert mle.status == sm.status == "failed"
    assert mle.error == "NonFiniteLossError: loss became nan at step 2"
    assert "its MLE run (task 'oracle-hmm', seed 0) failed" in sm.error
    args = Namespace(seeds=[0], ablation_seeds=[0], device="cpu")
    report = quality.build_report(args, budget, runs, bench, 1.0, quality.machine_info(1), "cmd")
    md = quality.render_markdown(report)
    assert "| mle | 0/1 |" in md and "## Failed runs" in md and "loss became nan at step 2" in md


@pytest.mark.slow
def test_micro_run_writes_tables_json_and_plots(tmp_path):
    out = tmp_path / "results"
    report = quality.main([*MICRO, "--experiments", "main", "--out-dir", str(out), "--scratch", str(tmp_path / "runs")])
    saved = json.loads((out / "quality.json").read_text())
    assert saved["budget"]["steps"] == 3 and saved["command"] == report["command"]
    runs = {r["method"]: r for r in saved["runs"]}
    assert sorted(runs) == ["earm", "mle", "mle_backspace", "sequencematch"]
    assert all(r["status"] == "ok" for r in runs.values())
    for r in runs.values():
        assert {"oracle_nll", "oracle_support", "nll", "recovery_backspace", "cost_ratio_token"} <= set(r["metrics"])
        assert r["total_steps"] == 3
    assert runs["mle"]["metrics"]["cost_ratio_token"] == 1.0
    # the forks run steps 1..3 only, on the MLE run's data stream: same demonstrations in all
    assert runs["sequencematch"]["method_steps"] == runs["earm"]["method_steps"] == 2
    assert runs["mle_backspace"]["method_steps"] == 3
    assert runs["sequencematch"]["total_data_tokens"] == runs["mle"]["total_data_tokens"]
    assert runs["earm"]["total_data_tokens"] == runs["mle"]["total_data_tokens"]
    md = (out / "quality.md").read_text()
    assert "## Main comparison" in md and "### oracle-hmm" in md and "| mle | 1/1 |" in md
    assert "| sequencematch α=100 p=0.05 | 1/1 |" in md and "| earm λ=0.05 start=1 | 1/1 |" in md
    assert "Against MLE, beyond the seed spread?" in md and report["command"] in md
    assert (out / "quality_main.png").stat().st_size > 0


@pytest.mark.slow
def test_micro_nce_run_reports_reranked_samples(tmp_path):
    out = tmp_path / "results"
    quality.main(
        [
            *MICRO,
            "--experiments",
            "nce_k",
            "--ablation-tasks",
            "oracle-hmm",
            "--k-grid",
            "1",
            "--ppo-timesteps",
            "0",
            "--out-dir",
            str(out),
            "--scratch",
            str(tmp_path / "runs"),
        ]
    )
    runs = {r["label"]: r for r in json.loads((out / "quality.json").read_text())["runs"]}
    assert sorted(runs) == ["mle", "nce K=1"] and runs["nce K=1"]["status"] == "ok", runs["nce K=1"]["error"]
    m = runs["nce K=1"]["metrics"]
    assert 0.0 <= m["rerank_oracle_support"] <= 1.0 and 1.0 <= m["rerank_ess"] <= 8.0
    assert "Critic-reranked samples" in (out / "quality.md").read_text()
