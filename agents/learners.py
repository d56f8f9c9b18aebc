# ruff: noqa: I001  (the import order below is the registration order, i.e. the --agent choices)
"""Every learner, registered by importing its module (see :mod:`agents.common.learner`).

======================  =====================================================
``mle``                 :class:`agents.mle.MLELearner` (BC; ``backspace_p`` > 0 = MLE + backspace)
``sequencematch``       :class:`agents.sequencematch.SequenceMatchLearner`
``earm``                :class:`agents.earm.EARMLearner`
``nce``                 :class:`agents.nce.NCELearner`
``unlikelihood``        :class:`agents.unlikelihood.UnlikelihoodLearner` (token level, Welleck et al. 2020)
``tailr``               :class:`agents.tailr.TaiLrLearner` (Ji et al. 2023)
``mixce``               :class:`agents.mixce.MixCELearner` (Zhang et al. 2023)
``emo``                 :class:`agents.emo.EMOLearner` (Ren et al. 2024; the ``emoloss`` package)
``scheduled_sampling``  :class:`agents.scheduled_sampling.ScheduledSamplingLearner` (two-pass, Mihaylova & Martins 2019)
``grpo``                :class:`agents.grpo.GRPOLearner` (GRPO / Dr. GRPO / RLOO on the env's reward)
======================  =====================================================

Adding a method: write ``agents/<name>.py`` with a config dataclass, the loss
and a ``@register_learner`` class, and import it here.
"""

from __future__ import annotations

# importing registers the learners; the order is the --agent choices' order
from . import mle  # noqa: F401, I001
from . import sequencematch  # noqa: F401
from . import earm  # noqa: F401
from . import nce  # noqa: F401
from . import unlikelihood  # noqa: F401
from . import tailr  # noqa: F401
from . import mixce  # noqa: F401
from . import emo  # noqa: F401
from . import scheduled_sampling  # noqa: F401
from . import grpo  # noqa: F401
from .common.learner import LEARNERS

#: registered learner names, in registration order (the ``--agent`` choices)
AGENTS: tuple[str, ...] = tuple(LEARNERS)

__all__ = ["AGENTS", "LEARNERS"]
