"""benchmarks/train_throughput.py: the no-cache baseline, memory probe, and a tiny end-to-end run."""

import json
from pathlib import Path

import pytest
import torch

from agents.common.demos import DemoSampler
from benchmarks import train_throughput as bench  # noqa: E402
from seqenv.tasks import make_task


@pytest.fixture(scope="module")
def task():
    return make_task("python-lines")


@pytest.mark.slow
def test_peak_memory_sees_a_64_mib_tensor():
    if not Path("/proc/self/status").exists():
        pytest.skip("needs Linux /proc")
    with bench.PeakMemory(torch.device("cpu")) as mem:
        x = torch.ones(16 * 2**20)  # 64 MiB of float32, touched
        del x
    assert mem.hwm_reset
    assert mem.peak_mib >= 63.5


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown model size 'big'"):
        bench.parse_size("big")
    assert bench.parse_size("medium") == (6, 8, 256) and bench.parse_size("2x4x64") == (2, 4, 64)
    with pytest.raises(ValueError, match="train_steps must be >= 1, got 0"):
        bench.BenchConfig(train_steps=0)
    with pytest.raises(ValueError, match="gen batch sizes >= 1"):
        bench.BenchConfig(gen_batches=(0,))
    with pytest.raises(ValueError, match="device must be"):
        bench.BenchConfig(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            bench.devices("cuda")


@pytest.mark.slow
def test_main_tiny_run_writes_consistent_results(tmp_path, task):
    report = bench.main(
        [
            "--sizes",
            "1x2x32",
            "--device",
            "cpu",
            "--train-batch",
            "4",
            "--train-warmup",
            "1",
            "--train-steps",
            "2",
            "--gen-batches",
            "4",
            "--gen-repeats",
            "1",
            "--in-process",
            "--out-dir",
            str(tmp_path),
        ]
    )
    saved = json.loads((tmp_path / "train_throughput.json").read_text())
    assert saved["results"] == json.loads(json.dumps(report["results"]))
    (r,) = report["results"]
    # embeddings 100*32 + 65*32, one block 12,704 (2 LayerNorms 128, qkv 3,168, proj 1,056, MLP 8,352), ln_f 64
    assert (r["size"], r["device"], r["params"], r["block_size"]) == ("1x2x32", "cpu", 18_048, 65)
    (train,) = r["train"]
    sampler = DemoSampler(task, "train", torch.Generator().manual_seed(0))
    draws = [sampler.sample(4) for _ in range(3)]
    assert train["tokens_per_step"] == sum(len(d) for batch in draws[1:] for d in batch.actions) / 2
    (gen,) = r["generation"]
    assert gen["batch"] == 4 and gen["same_episodes"] == 1.0
    assert gen["cache"]["tokens"] == gen["no_cache"]["tokens"] == round(gen["mean_actions"] * 4)
    assert gen["ratio"] == pytest.approx(gen["cache"]["tokens_per_s"] / gen["no_cache"]["tokens_per_s"])
    md = (tmp_path / "train_throughput.md").read_text()
    assert "| size | device | threads | train tok/s (fp32) |" in md
    assert f"| 1x2x32 | cpu | {r['threads']} | " in md
