"""Generate sequences from a checkpoint, optionally reranked.

    python scripts/generate.py --checkpoint runs/mle-python-lines/checkpoint.pt --num-samples 1000 --out samples.txt
    python scripts/generate.py --checkpoint CKPT --rerank energy --candidates 8
    python scripts/generate.py --checkpoint CKPT --rerank critic --critic runs/nce/checkpoint.pt --candidates 8

Writes one final sequence per line (backspaces applied, decoded text; a
newline inside a generated sequence is written as the two characters ``\\n``).
A bad flag, checkpoint or output path exits with status 2 and one line
``error: ...``; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Literal

from agents.common.checkpoint import load_policy
from agents.common.cli import (
    MAX_SAMPLES,
    MAX_SEED,
    MIN_TEMPERATURE,
    check_number,
    check_output_path,
    parse_flags,
    run_cli,
)
from agents.common.distributed import resolve_device
from agents.critic import load_critic
from agents.generation import generate_texts


@dataclass
class GenerateConfig:
    """Flags of ``generate.py``.

    :param checkpoint: policy checkpoint (``checkpoint.pt`` of a run).
    :param num_samples: sequences to write.
    :param out: output file (``-`` = stdout).
    :param task: task to generate for (default: the checkpoint's).
    :param rerank: ``none``, ``energy`` (E-ARM energy resampling) or
        ``critic`` (NCE critic importance resampling ∝ exp(−E); needs ``--critic``).
        On a task with prompts the candidates of one output share its prompt
        (paired tasks: a test-split question per output).
    :param candidates: candidates per output when reranking (n; accuracy of
        critic reranking against n: ``benchmarks/results/critic_rerank.md``).
    :param temperature: sampling temperature, a finite number > 0.
    :param top_k: sample among the ``top_k`` most likely tokens (>= 1; none = all).
    :param top_p: nucleus sampling mass in (0, 1] (none = 1).
    :param batch_size: sequences generated at once (>= 1).
    :raises ValueError: naming the flag, the value and the expected range.
    """

    checkpoint: str
    num_samples: int = 100
    out: str = "-"
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int = 0
    rerank: Literal["none", "energy", "critic"] = "none"
    candidates: int = 8
    critic: str | None = None
    task: str | None = None
    device: str = "auto"
    batch_size: int = 256

    def __post_init__(self):
        for flag, value in (
            ("--num-samples", self.num_samples),
            ("--candidates", self.candidates),
            ("--batch-size", self.batch_size),
        ):
            check_number(flag, value, ge=1, le=MAX_SAMPLES, integer=True)
        check_number("--temperature", self.temperature, ge=MIN_TEMPERATURE)
        if self.top_k is not None:
            check_number("--top-k", self.top_k, ge=1, integer=True)
        if self.top_p is not None:
            check_number("--top-p", self.top_p, gt=0, le=1)
        check_number("--seed", self.seed, ge=0, le=MAX_SEED, integer=True)
        if self.rerank == "critic" and self.critic is None:
            raise ValueError("--rerank critic needs --critic CKPT (a checkpoint written by train.py --agent nce)")


def run(cfg: GenerateConfig) -> list[str]:
    """Generate and return the decoded texts (:func:`agents.generation.generate_texts`).

    :raises FileNotFoundError, CheckpointError: for a missing or bad checkpoint.
    """
    device = resolve_device(cfg.device)
    policy, task, state = load_policy(cfg.checkpoint, device, cfg.task)
    if cfg.out != "-":  # the output never replaces the corpus the checkpoint was trained on
        check_output_path(cfg.out, inputs=(state["task"].get("file", {}).get("path"),))
    critic = load_critic(cfg.critic, device, task) if cfg.rerank == "critic" else None
    return generate_texts(
        policy,
        task,
        cfg.num_samples,
        rerank=cfg.rerank,
        candidates=cfg.candidates,
        critic=critic,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        device=device,
    )


def _main(argv: list[str]) -> list[str]:
    cfg = parse_flags(GenerateConfig, argv, description=__doc__)
    check_output_path(cfg.out, inputs=(cfg.checkpoint, cfg.critic, cfg.task))
    texts = run(cfg)
    body = "\n".join(texts) + "\n"
    if cfg.out == "-":
        sys.stdout.write(body)
    else:
        with open(cfg.out, "w", encoding="utf-8") as f:
            f.write(body)
        print(f"wrote {len(texts)} sequences to {cfg.out}", file=sys.stderr)
    return texts


def main(argv: list[str] | None = None) -> list[str]:
    """``generate.py`` (arguments: ``sys.argv[1:]`` by default); user errors exit 2 with one line."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    main(sys.argv[1:])
