"""Start and end tokens of plain text for SmolLM2 (issue 21): held-out NLL of the untrained model.

For each (start, end) pair: the held-out NLL of the first ``--texts`` test texts of
``--task`` (nats per token, end token included), and its parts: the first token's
mean NLL after the start token and the end token's mean NLL after a complete text.

    python benchmarks/smollm2_boundaries.py --texts 64 --out benchmarks/results/smollm2_boundaries.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.common.evaluation import heldout_nll  # noqa: E402
from agents.policies.hf import HFPolicy  # noqa: E402
from seqenv.tasks import make_task  # noqa: E402

PAIRS = {
    "<|endoftext|> ... <|endoftext|>": ("<|endoftext|>", "<|endoftext|>"),
    "<|im_start|> ... <|im_end|>": ("<|im_start|>", "<|im_end|>"),
    "<|endoftext|> ... newline": ("<|endoftext|>", "\n"),
}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="python-lines")
    ap.add_argument("--texts", type=int, default=64)
    ap.add_argument("--out", default="benchmarks/results/smollm2_boundaries.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    rows = {}
    t0 = time.perf_counter()
    for name, (start, end) in PAIRS.items():
        policy = HFPolicy.from_pretrained("smollm2", start_token=start, end_token=end).eval()
        task = make_task(args.task, tokenizer=policy.seq_tokenizer)
        h = heldout_nll(policy, task, "test", max_sequences=args.texts)
        bos, eos = policy.special_ids["bos"], policy.special_ids["eos"]
        first, last = [], []
        with torch.no_grad():
            for text in task.encoded("test")[: args.texts]:
                logp = policy(torch.tensor([[bos, *text]])).double().log_softmax(-1)[0]
                first.append(-float(logp[0, text[0]]))
                last.append(-float(logp[-1, eos]))
        rows[name] = {
            "nll": h["nll"],
            "tokens": h["tokens"],
            "sequences": h["sequences"],
            "first_token_nll": sum(first) / len(first),
            "end_token_nll": sum(last) / len(last),
        }
        print(name, rows[name], flush=True)
    report = {
        "command": "python benchmarks/smollm2_boundaries.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared), CPU, float32",
        "wall_s": time.perf_counter() - t0,
        "rows": rows,
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
