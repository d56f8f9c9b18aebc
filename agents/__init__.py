"""Policies and learners for seqenv (layout in docs/internals.md).

=============================  ==================================================
:mod:`agents.policies`         the :class:`~agents.policies.Policy` protocol;
                               :class:`~agents.policies.TransformerPolicy`
:mod:`agents.common`           trajectories, demonstrations, rollout, evaluation,
                               checkpoints, resampling, the Learner protocol
:mod:`agents.mle`              MLE / behaviour cloning (+ backspace)
:mod:`agents.sequencematch`    SequenceMatch (χ²-mixture occupancy matching)
:mod:`agents.earm`             E-ARM (the AR model as an EBM)
:mod:`agents.nce`              NCE critics with a self-adapting noise distribution
:mod:`agents.critic`           the sequence critic (residual energy)
:mod:`agents.learners`         the registry of learners (``--agent``)
:mod:`agents.trainer`          :class:`TrainConfig`, :class:`Trainer`, callbacks
:mod:`agents.generation`       generation with energy / critic reranking
:mod:`agents.sb3`              MaskablePPO policy and critic-reward fine-tuning
=============================  ==================================================
"""

from .policies import Policy, PolicyConfig, TransformerPolicy
from .trainer import TrainConfig, Trainer

__all__ = ["Policy", "PolicyConfig", "TransformerPolicy", "TrainConfig", "Trainer"]
