"""Policies and learners for seqenv: the backspace-aware policy model, MLE/BC,
SequenceMatch, E-ARM, NCE critics, rollout, trainer and evaluation metrics."""
