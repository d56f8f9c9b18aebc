"""Shared fixtures: the tiny task, policy and Hugging Face model directory, and a finished train.py run.

The builders behind them live in ``tests/tiny.py`` (importable by a test module that needs them at import time).
"""

from __future__ import annotations

import pytest
from tiny import TINY_RUN, make_tiny_hf_dir, make_tiny_policy

from agents.policies.transformer import TransformerPolicy
from scripts import train
from seqenv.tasks import Task, make_task


@pytest.fixture(scope="session")
def tiny_task() -> Task:
    """The ``oracle-hmm`` task (sequences from a hidden Markov model, whose true NLL is known): small and fast."""
    return make_task("oracle-hmm")


@pytest.fixture
def tiny_policy(tiny_task) -> TransformerPolicy:
    """A fresh 1-layer, 2-head, width-32 transformer policy for ``tiny_task`` (``torch.manual_seed(0)``)."""
    return make_tiny_policy(tiny_task)


@pytest.fixture(scope="session")
def tiny_hf_dir(tmp_path_factory):
    """A directory holding a tiny random Llama and its byte-level BPE tokenizer (``tiny.make_tiny_hf_dir``),
    written once per session; tests must not write into it."""
    return make_tiny_hf_dir(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture
def finished_run(tmp_path):
    """A finished 2-step train.py run in ``tmp_path / "run"`` (checkpoints at steps 1 and 2)."""
    logdir = tmp_path / "run"
    train.main([*TINY_RUN, "--max-steps", "2", "--logdir", str(logdir)])
    return logdir
