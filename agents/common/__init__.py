"""Infrastructure shared by every learner (SB3's ``common/``).

=======================  ======================================================
:mod:`.trajectory`       :class:`TrajectoryBatch`, collation, the one log-prob gather
:mod:`.demos`            :class:`Demos`, :class:`DemoSampler`, backspace augmentation
:mod:`.rollout`          batched generation through the vector env, :class:`OnlineSampler`
:mod:`.resampling`       sampling-importance-resampling and the effective sample size
:mod:`.metrics`          metrics (validity, held-out NLL, oracle NLL, BLEU, distinct-n, lengths)
:mod:`.evaluation`       a policy evaluated: :func:`evaluate_policy`, the :func:`recovery` probe
:mod:`.report`           metric tables, the comparison line, :func:`format_episode`
:mod:`.callbacks`        the trainer's :class:`Callback` hooks, :class:`SamplesPanel`, :class:`CriticEvalCallback`
:mod:`.checkpoint`       atomic checkpoints, ``load_policy``
:mod:`.distributed`      DDP / FSDP2 helpers, :func:`resolve_device`
:mod:`.learner`          the :class:`Learner` protocol and the registry
=======================  ======================================================
"""
