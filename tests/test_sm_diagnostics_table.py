"""benchmarks/sm_diagnostics.py: the per-term diagnostics read back from TensorBoard, mean over runs by hand."""

from torch.utils.tensorboard import SummaryWriter

from benchmarks.sm_diagnostics import table


def test_table_means_over_runs(tmp_path):
    # two runs of arm "sm": routing norms 2 and 4 (cosines -0.5 and -0.3) at step 1 -> 3.00 (-0.40)
    for seed, (norm, cos) in enumerate([(2.0, -0.5), (4.0, -0.3)]):
        w = SummaryWriter(str(tmp_path / f"sm-s{seed}"))
        w.add_scalar("train/diag/grad_norm/routing", norm, 1)
        w.add_scalar("train/diag/cos_mle/routing", cos, 1)
        w.add_scalar("train/diag/grad_norm/mle_backspace", 1.0 + seed, 1)
        w.add_scalar("train/diag/data_entropy", 0.8, 1)
        w.add_scalar("train/loss", 5.0, 1)  # not a diagnostic: ignored
        w.close()
    lines = table(tmp_path, "sm")
    assert lines[0].startswith("`sm` (2 runs: sm-s0, sm-s1)")
    row = lines[-1].split(" | ")
    assert row[0] == "| 1" and row[2] == "3.00 (-0.40)" and row[1] == "–"  # imitated_nll not logged here
    assert row[-2:] == ["1.50", "0.800 |"]
    assert table(tmp_path, "other")[2:] == lines[2:4]  # no runs: the header only
