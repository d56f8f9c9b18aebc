"""Infrastructure shared by every learner (SB3's ``common/``).

=======================  ======================================================
:mod:`.trajectory`       :class:`TrajectoryBatch`, collation, the one log-prob gather
:mod:`.demos`            :class:`Demos`, :class:`DemoSampler`, backspace augmentation
:mod:`.rollout`          batched generation through the vector env, :class:`OnlineSampler`
:mod:`.resampling`       sampling-importance-resampling and the effective sample size
:mod:`.evaluation`       metrics (validity, NLL, oracle NLL, BLEU, recovery)
:mod:`.checkpoint`       atomic checkpoints, ``load_policy``
:mod:`.distributed`      DDP wrapping
:mod:`.learner`          the :class:`Learner` protocol and the registry
=======================  ======================================================
"""
