"""Rewards for the sequence-generation MDP: state scores, terminal or per step.

A reward is built from a **state score**: a batched function of states

    score(tokens: LongTensor[B, L], lengths: LongTensor[B]) -> FloatTensor[B]

where ``tokens[b, :lengths[b]]`` is state ``b`` (prompt + generated tokens,
``pad`` after). :func:`make_score` turns the env's ``reward=`` argument into a
:class:`StateScore` with two readings of a state ``s``:

* ``terminal(s)`` -- the score of ``s`` as a *finished* sequence (it ended with
  ``eos``);
* ``potential(s)`` -- the score of ``s`` as a *prefix* still being written.

=====================  =====================================  ==================================
``reward=``            ``terminal(s)``                        ``potential(s)``
=====================  =====================================  ==================================
``"none"`` (default)   no score: every reward is ``0.0``      --
``"oracle"``           ``log p(s, eos)`` (nats)               ``log P(s is a prefix)`` (nats)
``"validity"``         1 if the task's checker accepts the    ``0`` (no prefix credit)
                       state's text, else 0
callable ``fn``        ``fn(tokens, lengths)``                ``fn(tokens, lengths)``
=====================  =====================================  ==================================

``reward_mode`` says when the score is paid (:func:`step_rewards`):

* ``"terminal"``: ``r_t = terminal(s_T)`` on the step that emits ``eos``,
  ``0`` on every other step (a truncated episode earns ``0``).
* ``"step"``: potential-based shaping [paper: Ng, Harada & Russell, "Policy
  invariance under reward transformations", ICML 1999, with discount 1]:
  ``r_t = potential(s_{t+1}) - potential(s_t)`` for appends, backspaces and
  no-ops, and ``r_t = terminal(s_t) - potential(s_t)`` on the
  ``eos`` step (the state does not change; for the oracle this is the ``eos``
  term ``log p(eos | s)``). The return of an episode telescopes to
  ``terminal(s_T) - potential(s_0)`` when it ends with ``eos`` and to
  ``potential(s_T) - potential(s_0)`` when it is truncated. ``potential(s_0)``
  is ``0`` for the oracle on an unconditional task (empty start), so there both
  modes give the same return, ``log p(x, eos)``, on terminated episodes.

``"validity"`` is a *verifiable* reward (the RL-with-verifiable-rewards setting
of GRPO, Shao et al. 2024, "DeepSeekMath", arXiv 2402.03300): the finished
state's text -- prompt and completion, ``tokenizer.decode(tokens[:length])`` --
goes to the task's checker (:meth:`seqenv.tasks.Task.is_valid`; ``arithmetic``:
the exact answer, ``python-lines``: ``ast.parse``), as the evaluation's
``validity`` does. It is paid only on the ``eos`` step: a truncated episode
earns 0 in both modes (its potential is 0, so ``"step"`` pays the same rewards
as ``"terminal"``).

The oracle score is clamped below at :data:`ORACLE_LOG_PROB_FLOOR` nats, so
sequences the oracle cannot produce (the empty sequence, non-oracle tokens such
as ``unk``, lengths above the oracle's limit; ``log p = -inf``) give a finite
reward and step rewards never see ``-inf - (-inf)``. [recon: the floor and its
value are our choice; no source prescribes them.]

Oracle scores are computed by the oracle on the CPU (a host copy per step on
accelerators).

All scores are evaluated in batch on tensors; results are ``float64``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .tokenizers import NUM_SPECIAL

REWARD_NAMES = ("none", "oracle", "validity")
REWARD_MODES = ("terminal", "step")
ORACLE_LOG_PROB_FLOOR = -1000.0  # nats; see the module docstring

ScoreFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class StateScore:
    """A batched state score with a terminal and a prefix (potential) reading.

    Subclasses implement :meth:`terminal` and :meth:`potential`; both take
    ``tokens`` LongTensor ``[B, L]`` and ``lengths`` LongTensor ``[B]`` on the
    env's device and return a float64 tensor ``[B]`` on the same device.
    """

    def terminal(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def potential(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class CallableScore(StateScore):
    """A user function scores every state; terminal and potential are the same.

    :param fn: ``fn(tokens: LongTensor[B, L], lengths: LongTensor[B]) ->
        FloatTensor[B]`` (any float dtype; a learned critic works too). Called
        under ``torch.no_grad()``.
    :raises ValueError: (at call time) if ``fn`` returns something that is not
        a float tensor of shape ``[B]``.
    """

    def __init__(self, fn: ScoreFn):
        self.fn = fn

    def __call__(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            out = self.fn(tokens, lengths)
        if not isinstance(out, torch.Tensor) or out.shape != lengths.shape or not out.is_floating_point():
            got = type(out).__name__
            if isinstance(out, torch.Tensor):
                got = f"Tensor of shape {tuple(out.shape)} dtype {out.dtype}"
            raise ValueError(
                f"reward function {getattr(self.fn, '__name__', self.fn)!r} must return a float tensor of shape "
                f"{tuple(lengths.shape)} (one score per state), got {got}"
            )
        return out.to(device=lengths.device, dtype=torch.float64)

    terminal = __call__
    potential = __call__


class OracleScore(StateScore):
    """The task oracle's exact log-likelihood, clamped at ``floor`` nats.

    ``terminal(s) = max(log p(s, eos), floor)`` and ``potential(s) =
    max(log P(prefix s), floor)`` from ``oracle.log_prob`` /
    ``oracle.prefix_log_prob`` (:mod:`seqenv.oracle`). A state containing a
    token that is not an oracle symbol has probability 0 (score ``floor``);
    so has the empty finished sequence.

    :param oracle: an object with ``log_prob`` and ``prefix_log_prob`` (and
        optionally ``num_symbols``: ids ``NUM_SPECIAL .. NUM_SPECIAL +
        num_symbols - 1`` are its symbols).
    :param floor: lower clamp in nats (finite).
    """

    def __init__(self, oracle, floor: float = ORACLE_LOG_PROB_FLOOR):
        if not math.isfinite(floor):
            raise ValueError(f"oracle reward floor must be finite, got {floor}")
        self.oracle = oracle
        self.floor = float(floor)
        self.num_symbols = getattr(oracle, "num_symbols", None)

    def _clean(self, tokens: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Replace non-symbol tokens by a symbol and flag their rows invalid."""
        if self.num_symbols is None:
            return tokens, torch.ones_like(lengths, dtype=torch.bool)
        inside = torch.arange(tokens.shape[1], device=tokens.device) < lengths[:, None]
        symbol = (tokens >= NUM_SPECIAL) & (tokens < NUM_SPECIAL + self.num_symbols)
        valid = (symbol | ~inside).all(1)
        return torch.where(symbol, tokens, NUM_SPECIAL), valid

    def _finish(self, value: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        value = value.to(device=valid.device, dtype=torch.float64)
        return torch.where(valid, value, -math.inf).clamp(min=self.floor)

    def terminal(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        clean, valid = self._clean(tokens, lengths)
        value = self.oracle.log_prob(clean, lengths.clamp(min=1))
        return self._finish(value, valid & (lengths >= 1))

    def potential(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        clean, valid = self._clean(tokens, lengths)
        return self._finish(self.oracle.prefix_log_prob(clean, lengths), valid)


class ValidityScore(StateScore):
    """1.0 when the task's validity checker accepts the state's text, else 0.0 (a verifiable reward).

    ``terminal(s) = float(task.is_valid(decode(s)))`` with ``decode(s)`` the
    whole state (prompt + generated tokens) as text; ``potential(s) = 0``, so
    the reward is paid on the ``eos`` step only in either reward mode. The
    checker runs in Python on the host, one text per row (a host copy of the
    states on accelerators).

    :param task: a :class:`~seqenv.tasks.Task` with a ``validity`` checker.
    :raises ValueError: if the task has no checker.
    """

    def __init__(self, task):
        if getattr(task, "validity", None) is None:
            raise ValueError(
                f"reward='validity' needs a task with a validity checker; task {task.name!r} has none "
                "(tasks with one: 'python-lines', 'pydoc-text', 'arithmetic')"
            )
        self.task = task

    host_checker = True  # step_rewards scores only the rows that emitted eos

    def terminal(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        decode = self.task.tokenizer.decode
        rows, lens = tokens.tolist(), lengths.tolist()
        ok = [self.task.is_valid(decode(row[:n])) for row, n in zip(rows, lens)]
        return torch.tensor(ok, dtype=torch.float64, device=lengths.device)

    def potential(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return torch.zeros(lengths.shape, dtype=torch.float64, device=lengths.device)


def make_score(reward: str | ScoreFn | StateScore | None, task) -> StateScore | None:
    """Turn the env's ``reward=`` argument into a :class:`StateScore`.

    :param reward: ``"none"`` (or ``None``), ``"oracle"``, ``"validity"``, a callable
        ``fn(tokens, lengths) -> FloatTensor[B]``, or a :class:`StateScore`.
    :param task: the env's :class:`~seqenv.tasks.Task` (for its oracle).
    :return: ``None`` for ``"none"`` (all rewards are 0).
    :raises ValueError: on an unknown name, ``"oracle"`` for a task without
        an oracle, or ``"validity"`` for a task without a validity checker.
    """
    if reward is None or (isinstance(reward, str) and reward == "none"):
        return None
    if isinstance(reward, StateScore):
        return reward
    if isinstance(reward, str):
        if reward == "oracle":
            if getattr(task, "oracle", None) is None:
                raise ValueError(
                    f"reward='oracle' needs a task with an oracle; task {task.name!r} has none "
                    f"(oracle tasks: 'oracle-hmm')"
                )
            return OracleScore(task.oracle)
        if reward == "validity":
            return ValidityScore(task)
        raise ValueError(f"unknown reward {reward!r}; expected one of {REWARD_NAMES} or a callable fn(tokens, lengths)")
    if callable(reward):
        return CallableScore(reward)
    raise ValueError(f"reward must be one of {REWARD_NAMES} or a callable fn(tokens, lengths), got {reward!r}")


def check_reward_mode(reward_mode: str) -> str:
    """:raises ValueError: unless ``reward_mode`` is ``"terminal"`` or ``"step"``."""
    if reward_mode not in REWARD_MODES:
        raise ValueError(f"unknown reward_mode {reward_mode!r}; expected one of {REWARD_MODES}")
    return reward_mode


def step_rewards(
    score: StateScore,
    reward_mode: str,
    tokens: torch.Tensor,
    lengths: torch.Tensor,
    terminated: torch.Tensor,
    potential_before: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Rewards of one batched transition ``s_t -> s_{t+1}``.

    :param tokens: LongTensor ``[B, L]``, the states ``s_{t+1}`` after the step.
    :param lengths: LongTensor ``[B]``, their lengths.
    :param terminated: BoolTensor ``[B]``, the step's action was ``eos`` (then
        ``s_{t+1} = s_t``).
    :param potential_before: float64 ``[B]``, ``potential(s_t)`` (step mode
        only; ``None`` in terminal mode).
    :return: ``(reward, potential_after)``: float64 ``[B]`` rewards in the
        score's unit, and ``potential(s_{t+1})`` (``None`` in terminal mode).
        Formulas in the module docstring.
    """
    if reward_mode == "terminal":
        if getattr(score, "host_checker", False):  # score only the rows that ended (a Python call per row)
            reward = torch.zeros(lengths.shape, dtype=torch.float64, device=lengths.device)
            rows = terminated.nonzero().squeeze(1)
            if len(rows):
                reward[rows] = score.terminal(tokens[rows], lengths[rows])
            return reward, None
        return torch.where(terminated, score.terminal(tokens, lengths), 0.0), None
    if potential_before is None:
        raise ValueError("step rewards need potential_before, the potential of the states before the step")
    potential_after = score.potential(tokens, lengths)
    shaped = potential_after - potential_before
    at_eos = score.terminal(tokens, lengths) - potential_before
    return torch.where(terminated, at_eos, shaped), potential_after
