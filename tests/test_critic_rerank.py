"""benchmarks/critic_rerank.py: a tiny end-to-end run under a wall-clock cap (critics, reranking, json, markdown)."""

import json

import pytest

from benchmarks import critic_rerank


@pytest.mark.slow
def test_critic_rerank_tiny_run_with_a_wall_clock_cap(tmp_path):
    out = tmp_path / "cr"
    critic_rerank.main(
        [
            "--tasks",
            "arithmetic",
            "--seeds",
            "0",
            "--jobs",
            "1",
            "--policy-steps",
            "10",
            "--policy-size",
            "1",
            "2",
            "16",
            "--batch-size",
            "4",
            "--critic-steps",
            "6",
            "--critic-batch-size",
            "4",
            "--pool",
            "8",
            "--eval-every",
            "2",
            "--patience",
            "0",
            "--critic-max-minutes",
            "0",
            "--ablations",
            "--candidates",
            "1",
            "2",
            "--critic-policies",
            "weak",
            "converged",
            "--rerank-samples",
            "4",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ]
    )
    js = json.loads(out.with_suffix(".json").read_text())
    assert js["meta"]["weak_steps"] == 1 and js["meta"]["machine"]["gpu"] is None
    for kind in ("weak", "converged"):
        critic = js["critics"][f"arithmetic/0/{kind}/default"]
        # a cap of 0 minutes stops each critic after its first step, which is then evaluated as the last
        assert critic["steps_run"] == 1 and [h["step"] for h in critic["curve"]] == [1]
        rr = js["rerank"][f"arithmetic/0/{kind}"]
        assert set(rr) == {"1", "2"} and rr["1"]["ess"] == 1.0 and 1.0 <= rr["2"]["ess"] <= 2.0
    assert "| arithmetic | weak | 2 |" in out.with_suffix(".md").read_text()
