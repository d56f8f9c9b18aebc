"""Every learner, registered by importing its module (see :mod:`agents.common.learner`).

==================  =====================================================
``mle``             :class:`agents.mle.MLELearner` (BC; ``backspace_p`` > 0 = MLE + backspace)
``sequencematch``   :class:`agents.sequencematch.SequenceMatchLearner`
``earm``            :class:`agents.earm.EARMLearner`
``nce``             :class:`agents.nce.NCELearner`
==================  =====================================================

Adding a method: write ``agents/<name>.py`` with a config dataclass, the loss
and a ``@register_learner`` class, and import it here.
"""

from __future__ import annotations

# importing registers the learners; the order is the --agent choices' order
from . import mle  # noqa: F401, I001
from . import sequencematch  # noqa: F401
from . import earm  # noqa: F401
from . import nce  # noqa: F401
from .common.learner import LEARNERS

#: registered learner names, in registration order (the ``--agent`` choices)
AGENTS: tuple[str, ...] = tuple(LEARNERS)

__all__ = ["AGENTS", "LEARNERS"]
