"""Policies and learners for seqenv.

========================  ====================================================
module                    what
========================  ====================================================
:mod:`agents.model`       backspace-aware causal transformer policy
                          (:class:`TransformerPolicy`, KV-cache rollback)
:mod:`agents.mle`         MLE / behaviour cloning (+ backspace noise)
:mod:`agents.sequencematch`  SequenceMatch loss and online learner
:mod:`agents.earm`        E-ARM loss, learner and energy re-sampling
:mod:`agents.nce`         NCE critics with a self-adapting noise distribution
:mod:`agents.rollout`     batched generation through ``SeqGenVectorEnv``
:mod:`agents.trainer`     :class:`TrainConfig`, :class:`Trainer`
:mod:`agents.evaluation`  metrics (validity, NLL, oracle NLL, BLEU, recovery)
:mod:`agents.checkpoint`  atomic checkpoints, ``load_policy``
========================  ====================================================
"""

from .model import PolicyConfig, TransformerPolicy
from .trainer import TrainConfig, Trainer

__all__ = ["PolicyConfig", "TransformerPolicy", "TrainConfig", "Trainer"]
