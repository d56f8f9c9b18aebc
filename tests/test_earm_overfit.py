"""benchmarks/earm_overfit.py: the corpus split and a tiny end-to-end run (curves, json, markdown)."""

import json

import pytest

from benchmarks import earm_overfit
from seqenv.tasks import make_task


def test_write_corpus_keeps_python_lines_splits(tmp_path):
    name = earm_overfit.write_corpus(tmp_path / "c.txt", 40, 6)
    t = make_task(name)
    assert {k: len(v) for k, v in t.splits.items()} == {"train": 40, "valid": 6, "test": 6}
    src = make_task("python-lines").splits
    assert t.splits["valid"] == src["valid"][:6] and t.splits["train"][:3] == src["train"][:3]


@pytest.mark.slow
def test_tiny_run_writes_curves_and_summary(tmp_path):
    out = tmp_path / "res"
    earm_overfit.main(
        [
            "--seeds",
            "0",
            "--sweep-seeds",
            "0",
            "--jobs",
            "1",
            "--lines",
            "40",
            "--heldout",
            "6",
            "--steps",
            "6",
            "--eval-every",
            "3",
            "--start",
            "3",
            "--sweep-lams",
            "--sweep-starts",
            "--size",
            "1",
            "2",
            "16",
            "--batch-size",
            "4",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(out),
        ]
    )
    js = json.loads(out.with_suffix(".json").read_text())
    assert [s for s, _ in js["mle"]["0"]["curve"]] == [3, 6]
    assert [s for s, _ in js["earm"]["0.05/3/0"]["curve"]] == [6]  # the fork starts at step 3
    (row,) = js["summary"]
    assert row["lam"] == 0.05 and row["start"] == 3 and 0 < row["ess"][0] <= 1
    assert out.with_suffix(".png").stat().st_size > 0 and "| 0.05 | 3 | 1 |" in out.with_suffix(".md").read_text()
