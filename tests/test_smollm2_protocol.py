"""The papers' protocol (benchmarks/smollm2_protocol.py) in its --smoke mode: the same code on a tiny
random Llama, CPU, a few steps; the full run is a GPU job (benchmarks/gpu_session_smollm2.sh)."""

import json

import pytest

pytest.importorskip("transformers")
pytest.importorskip("peft")

from benchmarks import smollm2_protocol  # noqa: E402


def test_paired_interval_by_hand():
    # deltas 1, 2, 3: mean 2, sd 1, t(0.975, 2) = 4.303 -> half-width 4.303 / sqrt(3) = 2.4843
    got = smollm2_protocol.paired_interval([1.0, 2.0, 3.0])
    assert got["mean"] == 2.0 and got["half"] == pytest.approx(4.303 / 3**0.5, rel=1e-12) and got["n"] == 3
    assert smollm2_protocol.paired_interval([0.5])["half"] is None


@pytest.mark.slow
def test_protocol_smoke_writes_json_report_and_plot(tmp_path):
    out = tmp_path / "out" / "smoke"
    report = smollm2_protocol.main(
        [
            "--smoke",
            "--seeds",
            "0",
            "1",
            "--arms",
            "mle",
            "sm",
            "--task",
            "arithmetic",
            "--workdir",
            str(tmp_path / "work"),
            "--out",
            str(out),
        ]
    )
    saved = json.loads(out.with_suffix(".json").read_text())
    assert set(saved["runs"]) == {"mle-s0", "mle-s1", "sm-s0", "sm-s1"}
    for t in ("0.7", "1.0"):
        row = report["summary"]["sm"][f"validity@T={t}"]
        deltas = [
            report["runs"][f"sm-s{s}"]["frontier"][t]["validity"]
            - report["runs"][f"mle-s{s}"]["frontier"][t]["validity"]
            for s in (0, 1)
        ]
        assert row["vs_mle"]["mean"] == pytest.approx(sum(deltas) / 2)
    # every arm started from its seed's MLE checkpoint with the same step budget
    for s in (0, 1):
        cfg = json.loads((tmp_path / "work" / f"sm-s{s}" / "config.json").read_text())
        assert cfg["init"].endswith(f"mle-s{s}/checkpoint.pt") and cfg["max_steps"] == 2
    assert "| sm |" in out.with_suffix(".md").read_text() and out.with_suffix(".png").is_file()
