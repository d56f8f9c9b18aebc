"""The single sequence-generation environment and the rules it shares with the vector env.

:class:`SeqGenEnv` is the Gymnasium env (numpy observations); its docstring is
the manual of the MDP. :class:`seqenv.vector_env.SeqGenVectorEnv` runs the same
MDP for a batch of envs in torch tensors; both take one :class:`EnvConfig`
(built once by :meth:`EnvConfig.make`, read through :class:`EnvConfigView`, as
gymnax keeps ``EnvParams`` apart from the step function), their spaces with :func:`observation_space` and
:class:`TokenActionSpace`, their prompts with :func:`prompt_index`, their
rewards with :mod:`seqenv.rewards` and their error messages with
:func:`illegal_action_error`, and a test drives them side by side and compares
every output.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from .checks import check_number
from .rewards import StateScore, check_reward_mode, make_score, step_rewards
from .tasks import Task, make_task
from .tokenizers import SpecialIds, Tokenizer

STEP_LIMIT_FACTOR = 2  # default max_episode_steps = STEP_LIMIT_FACTOR * max_length
RENDER_MODES = ("ansi",)
RESET_OPTIONS = ("prompt",)


# --------------------------------------------------------------------------
# configuration shared by the single and the vector env
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class EnvConfig:
    """The MDP's parameters, validated once and shared by both envs (gymnax's ``EnvParams``).

    Build it with :meth:`make` (the arguments are documented in :class:`SeqGenEnv`);
    ``SeqGenEnv(config)`` and ``SeqGenVectorEnv(num_envs, config)`` take it as it
    is, ``SeqGenEnv(task=..., max_length=...)`` builds it from the keywords.
    """

    task: Task
    tokenizer: Tokenizer
    vocab_size: int
    ids: SpecialIds  # the tokenizer's special ids
    max_length: int  # tokens in a state, prompt included
    max_episode_steps: int
    score: StateScore | None
    reward_mode: str
    prompts: list[list[int]] | None  # encoded; None = unconditional
    render_mode: str | None
    mask_in_observation: bool = False

    @classmethod
    def make(
        cls,
        task: str | Task = "python-lines",
        max_length: int | None = None,
        max_episode_steps: int | None = None,
        reward: Any = "none",
        reward_mode: str = "terminal",
        prompts: Sequence[str] | None = None,
        render_mode: str | None = None,
        mask_in_observation: bool = False,
        tokenizer: str | None = None,
    ) -> EnvConfig:
        """Check the env arguments and resolve the defaults (table in :class:`SeqGenEnv`).

        :raises ValueError: unknown task, ``max_length < 1``, ``max_episode_steps
            < 1``, unknown reward or reward mode, ``reward="oracle"`` without an
            oracle, ``reward="validity"`` without a checker, a bad or too long
            prompt, an unknown render mode, a ``tokenizer`` given with a ``Task``
            instance.
        """
        if tokenizer is not None:
            if not isinstance(task, str):
                raise ValueError(
                    f"tokenizer={tokenizer!r} needs a task name (the task is re-tokenized); "
                    f"got a {type(task).__name__}: build it with make_task(name, tokenizer=...)"
                )
            task = make_task(task, tokenizer=tokenizer)
        task = make_task(task)
        tok = task.tokenizer
        if max_length is None:
            max_length = task.max_length
        check_number("max_length", max_length, ge=1, integer=True)  # tokens, prompt included
        max_length = int(max_length)
        if max_episode_steps is None:
            max_episode_steps = STEP_LIMIT_FACTOR * max_length
        check_number("max_episode_steps", max_episode_steps, ge=1, integer=True)
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"unknown render_mode {render_mode!r}; expected None or one of {RENDER_MODES}")
        score = make_score(reward, task)
        check_reward_mode(reward_mode)
        if prompts is None:
            prompts = task.prompts
        elif isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise ValueError(f"prompts must be a list of strings, got {prompts!r:.80}")
        encoded = None
        if prompts is not None:
            if len(prompts) == 0:
                raise ValueError("prompts is an empty list; pass None for an unconditional task")
            encoded = [encode_prompt(tok, p, max_length) for p in prompts]
        return cls(
            task,
            tok,
            int(tok.vocab_size),
            SpecialIds.of(tok),
            max_length,
            int(max_episode_steps),
            score,
            reward_mode,
            encoded,
            render_mode,
            bool(mask_in_observation),
        )

    @classmethod
    def of(cls, config: EnvConfig | str | Task, kwargs: dict[str, Any]) -> EnvConfig:
        """``config`` itself (no keywords allowed with it) or ``EnvConfig.make(config, **kwargs)``.

        :raises ValueError: an ``EnvConfig`` with keyword arguments (they would be ignored).
        """
        if isinstance(config, EnvConfig):
            if kwargs:
                raise ValueError(f"an EnvConfig is complete; got it with the arguments {sorted(kwargs)} as well")
            return config
        return cls.make(config, **kwargs)


class EnvConfigView:
    """The :class:`EnvConfig` fields both envs expose as read-only attributes (``env.max_length``, ...)."""

    config: EnvConfig
    task = property(lambda self: self.config.task)
    tokenizer = property(lambda self: self.config.tokenizer)
    vocab_size = property(lambda self: self.config.vocab_size)
    ids = property(lambda self: self.config.ids)
    max_length = property(lambda self: self.config.max_length)
    max_episode_steps = property(lambda self: self.config.max_episode_steps)
    reward_mode = property(lambda self: self.config.reward_mode)
    render_mode = property(lambda self: self.config.render_mode)
    mask_in_observation = property(lambda self: self.config.mask_in_observation)


def encode_prompt(tokenizer: Tokenizer, prompt: str, max_length: int) -> list[int]:
    """Token ids of ``prompt``.

    :raises ValueError: if ``prompt`` is not a string, or has ``max_length``
        tokens or more (a state holds at most ``max_length`` tokens, and the
        prompt must leave room for at least one generated token).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r:.80}")
    ids = tokenizer.encode(prompt)
    if len(ids) >= max_length:
        raise ValueError(
            f"prompt {prompt[:40]!r} has {len(ids)} tokens but max_length={max_length}: "
            f"a prompt must be shorter than max_length (at most {max_length - 1} tokens)"
        )
    return ids


# --------------------------------------------------------------------------
# spaces
# --------------------------------------------------------------------------
class TokenActionSpace(spaces.Discrete):
    """``Discrete(vocab_size)`` whose unmasked :meth:`sample` draws only legal actions.

    ``sample()`` without a mask draws uniformly from the actions legal in
    *every* state: ``eos``, ``unk`` and the ordinary tokens (not ``pad``,
    ``bos``, ``backspace``), so random agents and the Gymnasium / SB3 env
    checkers never hit a masked action. For the exact mask of the current
    state use ``sample(mask=info["action_mask"])``. Equal to
    ``Discrete(vocab_size)`` under ``==``.
    """

    def __init__(self, vocab_size: int, seed: int | None = None, special_ids: SpecialIds | None = None):
        super().__init__(vocab_size, seed=seed)
        ids = SpecialIds.of(special_ids)
        self.always_legal = np.ones(vocab_size, dtype=np.int8)
        self.always_legal[[*ids.never_legal, ids.backspace]] = 0

    def sample(self, mask: np.ndarray | None = None, probability: np.ndarray | None = None) -> np.int64:
        if mask is None and probability is None:
            mask = self.always_legal
        return super().sample(mask=mask, probability=probability)


def observation_space(vocab_size: int, max_length: int, mask_in_observation: bool = False) -> spaces.Dict:
    """The observation space of one env (table in :class:`SeqGenEnv`).

    :param mask_in_observation: add the ``action_mask`` key
        (``MultiBinary(vocab_size)``, int8 0/1).
    """
    keys = {
        "tokens": spaces.Box(0, vocab_size - 1, shape=(max_length,), dtype=np.int64),
        "length": spaces.Discrete(max_length + 1),
        "prompt_length": spaces.Discrete(max_length + 1),
    }
    if mask_in_observation:
        keys["action_mask"] = spaces.MultiBinary(vocab_size)
    return spaces.Dict(keys)


def base_action_mask(vocab_size: int, special_ids: SpecialIds | None = None) -> np.ndarray:
    """Legal actions when something has been generated: all but ``pad`` and ``bos`` (bool ``[V]``;
    ``bos`` stays legal when it is also ``eos``, as in GPT-2's vocabulary)."""
    mask = np.ones(vocab_size, dtype=np.bool_)
    mask[list(SpecialIds.of(special_ids).never_legal)] = False
    return mask


def illegal_action_error(
    action: int, vocab_size: int, can_backspace: bool, tokenizer: Tokenizer, env_index: int | None = None
) -> ValueError:
    """The ValueError for an out-of-range or masked action (names the id, token and what is allowed)."""
    ids = SpecialIds.of(tokenizer)
    where = f" (env {env_index})" if env_index is not None else ""
    if not 0 <= action < vocab_size:
        return ValueError(f"action {action}{where} is out of range: expected a token id in [0, {vocab_size - 1}]")
    name = tokenizer.token_str(action)
    if action == ids.backspace:
        reason = "is masked: nothing has been generated to delete (the prompt is protected)"
    else:
        reason = "is never a legal action"
    if ids == SpecialIds():
        allowed = "eos (2), " + ("backspace (3), " if can_backspace else "") + f"token ids 4..{vocab_size - 1}"
    else:
        allowed = (
            f"eos ({ids.eos}), "
            + (f"backspace ({ids.backspace}), " if can_backspace else "")
            + f"token ids 0..{vocab_size - 1} except {sorted(set(ids.never_legal) | {ids.backspace})}"
        )
    return ValueError(f"action {action} ({name!r}){where} {reason}; allowed now: {allowed}")


# --------------------------------------------------------------------------
# prompt draws: a counter-based hash, identical for the single and vector env
# --------------------------------------------------------------------------
_MASK32 = 0xFFFFFFFF


def mix32(x):
    """32-bit integer hash (xorshift-multiply) of ints in ``[0, 2**32)``.

    Works unchanged on Python ints and on int64 tensors (no overflow:
    products stay below ``2**59``), so both envs draw the same prompts.
    """
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK32
    return (x >> 16) ^ x


def seed_key(seed):
    """The prompt key of an env seeded with ``seed`` (int or int64 tensor, taken mod ``2**32``)."""
    return mix32(seed & _MASK32)


def prompt_index(key, episode, num_prompts: int):
    """Index of the prompt of episode ``episode`` (0 = first after seeding) for an env with ``key``."""
    return mix32(key ^ mix32((episode + 1) & _MASK32)) % num_prompts


# --------------------------------------------------------------------------
# the single env
# --------------------------------------------------------------------------
class SeqGenEnv(EnvConfigView, gym.Env):
    """
    ## Description

    Text generation, one token per step, with a **backspace** action -- the
    MDP of SequenceMatch (Cundy & Ermon, ICLR 2024) [paper]; the prompt,
    masks, limits and rewards below are our design (DESIGN.md). The
    state is a token sequence -- an optional fixed prompt followed by the
    tokens generated so far, at most ``max_length`` tokens in all. Each action
    appends a token, deletes the last generated token, or ends the sequence.
    The task (:func:`seqenv.make_task`) supplies the tokenizer, the default
    ``max_length``, optional prompts and, for oracle tasks, an exact
    likelihood used as reward. Transitions are deterministic; the only
    randomness is the prompt drawn at reset.

    ## Action Space

    ``Discrete(vocab_size)``: the action is a token id. The first five ids are
    the same in every tokenizer (:mod:`seqenv.tokenizers`):

    | Action | Token       | Effect                                               | Masked                    |
    |--------|-------------|------------------------------------------------------|---------------------------|
    | 0      | `pad`       | --                                                   | always                    |
    | 1      | `bos`       | --                                                   | always                    |
    | 2      | `eos`       | ends the episode (terminated); state unchanged       | never                     |
    | 3      | `backspace` | deletes the last generated token (never the prompt)  | when nothing is generated |
    | 4      | `unk`       | appended like an ordinary token                      | never                     |
    | 5..V-1 | ordinary    | appended to the state                                | never                     |

    With an HF tokenizer (``tokenizer="hf:PATH"``: the task re-tokenized by
    that model's tokenizer) the ids are the tokenizer's own
    (``env.ids``, a :class:`~seqenv.tokenizers.SpecialIds`); the rules are the
    same, by name (a ``bos`` that is also ``eos`` is legal, as ``eos``).

    The mask is ``info["action_mask"]`` (``np.int8 [V]``, 1 = legal; it can be
    passed to ``action_space.sample(mask=...)``) and :meth:`action_masks`
    (``np.bool_ [V]``, the sb3-contrib ``MaskablePPO`` convention). It does
    not depend on the length: at ``max_length - 1`` tokens every token is
    still legal and appending one truncates the episode. A masked or
    out-of-range action raises ``ValueError``. ``action_space.sample()``
    without a mask draws from the actions legal in every state
    (:class:`TokenActionSpace`: never ``backspace``).

    ## Observation Space

    A ``Dict`` of fixed-size arrays (no ``Sequence``/``Text`` spaces, so SB3
    and ``AsyncVectorEnv`` work):

    | Key             | Space                                 | dtype | Value                                          |
    |-----------------|---------------------------------------|-------|------------------------------------------------|
    | `tokens`        | `Box(0, vocab_size-1, (max_length,))` | int64 | prompt, generated tokens, then `pad` (0)       |
    | `length`        | `Discrete(max_length + 1)`            | int64 | tokens in the state, prompt included           |
    | `prompt_length` | `Discrete(max_length + 1)`            | int64 | prompt tokens (0 for an unconditional task)    |
    | `action_mask`   | `MultiBinary(vocab_size)`             | int8  | only with `mask_in_observation=True`: the mask |

    The generated text is ``tokens[prompt_length:length]``. ``pad`` never
    occurs before ``length`` (it is never a legal action).
    ``mask_in_observation=True`` puts the legal-action mask in the observation
    too (equal to ``info["action_mask"]``, 1 = legal), for clients that read it
    there: TorchRL's ``ActionMask`` transform, RLlib- and PettingZoo-style
    code. Policies that embed the whole observation (e.g. SB3's
    ``MultiInputPolicy``) then see it as an input feature.

    ## Rewards

    ``reward="none"`` (default): 0 on every step (pure imitation learning).
    ``reward="oracle"`` (oracle tasks only): the oracle's log-likelihood in
    nats; ``reward="validity"`` (tasks with a checker): a verifiable reward,
    1 when the task's checker accepts the final text (prompt + completion;
    ``arithmetic``: the exact answer) and 0 otherwise, paid only on the
    ``eos`` step (truncated episodes earn 0, in either reward mode);
    ``reward=fn`` with ``fn(tokens: LongTensor[B, L], lengths:
    LongTensor[B]) -> FloatTensor[B]``: any batched state score (a learned
    critic, a validity check...). ``reward_mode="terminal"`` (default) pays
    the score of the final sequence on the ``eos`` step (oracle: ``log p(x,
    eos)``) and 0 otherwise, truncated episodes included;
    ``reward_mode="step"`` pays the potential-based difference ``score(s_{t+1})
    - score(s_t)`` each step (oracle: prefix log-probabilities, plus the
    ``eos`` term on the ``eos`` step) so that the return telescopes to the
    terminal score. Details and formulas: :mod:`seqenv.rewards`.

    ## Starting State

    Unconditional tasks start from the empty sequence. Conditional tasks
    (``task.prompts`` or the ``prompts=`` argument) start from a prompt drawn
    uniformly by a counter-based hash of the seed and the episode number
    (:func:`prompt_index`): ``reset(seed=s)`` then ``reset()`` ... gives the
    same prompts as row ``i`` of a vector env reset with ``seed=s - i``.
    ``reset(options={"prompt": text})`` starts from ``text`` instead (also on
    an unconditional task). The prompt is protected from backspace.

    ## Episode End

    1. Termination: the action is ``eos``.
    2. Truncation: an append brings the state to ``max_length`` tokens (it
       cannot grow further), or the episode reaches ``max_episode_steps``
       actions (default ``2 * max_length``; this ends backspace loops). Both
       flags are set when ``eos`` is the last allowed step.

    Calling :meth:`step` after the episode ended raises ``RuntimeError``;
    call :meth:`reset`.

    ## Arguments

    ```python
    >>> import gymnasium as gym, seqenv
    >>> env = gym.make("SeqGen-v0", task="oracle-hmm", reward="oracle")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(7)
    ```

    | Parameter           | Type              | Default          | Description                                       |
    |---------------------|-------------------|------------------|---------------------------------------------------|
    | `task`              | `str` or `Task`   | `"python-lines"` | `python-lines`, `pydoc-text`, `oracle-hmm`, ...   |
    | `max_length`        | `int` or `None`   | `None`           | most tokens in a state; `None`: the task's        |
    | `max_episode_steps` | `int` or `None`   | `None`           | step limit; `None`: `2 * max_length` (see below)  |
    | `reward`            | `str` or callable | `"none"`         | `"none"`, `"oracle"`, `"validity"` or `fn(tokens, lengths)` |
    | `reward_mode`       | `str`             | `"terminal"`     | `"terminal"` or `"step"`                          |
    | `prompts`           | `list` or `None`  | `None`           | prompt texts; `None`: `task.prompts`              |
    | `render_mode`       | `str` or `None`   | `None`           | `"ansi"`: `render()` returns text with a cursor   |
    | `mask_in_observation` | `bool`        | `False`          | add `action_mask` to the observation (above)      |
    | `tokenizer`         | `str` or `None`   | `None`           | re-tokenize the named task: `"char"`, `"bpe"`, `"hf:PATH"` |

    ``gym.make("SeqGen-v0", max_episode_steps=N)`` does not reach the
    constructor: Gymnasium wraps the env in ``TimeLimit(N)``, on top of the
    env's own limit (whichever comes first). Construct ``SeqGenEnv`` directly
    or use ``gym.make_vec`` to set the env's own limit.

    ## Vectorized environment

    ``gym.make_vec("SeqGen-v0", num_envs=N, device="cpu")`` builds
    :class:`seqenv.vector_env.SeqGenVectorEnv` (the registered
    ``vector_entry_point``): one batched state in torch tensors, the same
    dynamics, outputs as torch tensors on ``device``, and Gymnasium's
    autoreset modes: ``autoreset_mode=`` ``"NextStep"`` (default),
    ``"SameStep"`` (``final_obs``/``final_info`` in ``info``, as TorchRL's
    ``GymWrapper`` needs) or ``"Disabled"`` (reset ended envs with
    ``reset(options={"reset_mask": m})``). ``mask_in_observation=True`` works
    there too. ``vectorization_mode="sync"``/``"async"`` wrap ``N`` copies of
    this env instead (much slower; see ``benchmarks/env_throughput.py``).

    ## Version History

    * v0: Initial version. Later additions, all off by default (no change to
      existing behaviour): the ``mask_in_observation`` argument,
      ``reward="validity"`` and, for the vector env, ``autoreset_mode``.
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4}

    def __init__(self, task: str | Task | EnvConfig = "python-lines", **kwargs: Any):
        """:param task: a task name or :class:`Task` (with the keyword arguments of the table
            above), or a complete :class:`EnvConfig` (alone).
        :raises ValueError: on a bad argument (:meth:`EnvConfig.make`).
        :raises TypeError: on an unknown keyword argument.
        """
        self.config = EnvConfig.of(task, kwargs)
        self.action_space = TokenActionSpace(self.vocab_size, special_ids=self.ids)
        self.observation_space = observation_space(self.vocab_size, self.max_length, self.mask_in_observation)

        self._base_mask = base_action_mask(self.vocab_size, self.ids)
        self._tokens = np.zeros(self.max_length, dtype=np.int64)
        self._length = 0
        self._prompt_length = 0
        self._steps = 0
        self._ended: bool | None = None  # None: never reset
        self._status = ""  # "", "eos" or "truncated" (for render)
        self._prompt_key: int | None = None
        self._episode = 0
        self._potential: torch.Tensor | None = None

    # -- Gymnasium API ------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Start an episode: the empty sequence or a prompt.

        :param seed: seeds ``np_random`` and the prompt draws (episode counter
            back to 0).
        :param options: ``{"prompt": str}`` starts from that text.
        :return: ``(obs, info)`` with ``info["action_mask"]``.
        :raises ValueError: on an unknown option or a prompt of ``max_length``
            tokens or more.
        """
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - set(RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected keys among {RESET_OPTIONS}")
        explicit = options.get("prompt")
        if explicit is not None:
            explicit = encode_prompt(self.tokenizer, explicit, self.max_length)
        if seed is not None:
            self._prompt_key, self._episode = seed_key(int(seed)), 0
        elif self._prompt_key is None:
            self._prompt_key, self._episode = seed_key(int(self.np_random.integers(2**32))), 0
        else:
            self._episode += 1

        if explicit is not None:
            prompt = explicit
        elif self.config.prompts is not None:
            prompt = self.config.prompts[prompt_index(self._prompt_key, self._episode, len(self.config.prompts))]
        else:
            prompt = []
        self._tokens[:] = self.ids.pad
        self._tokens[: len(prompt)] = prompt
        self._length = self._prompt_length = len(prompt)
        self._steps = 0
        self._ended = False
        self._status = ""
        if self.config.score is not None and self.reward_mode == "step":
            self._potential = self.config.score.potential(*self._state_tensors())
        return self._obs(), {"action_mask": self._mask().astype(np.int8)}

    def step(self, action) -> tuple[dict, float, bool, bool, dict]:
        """Apply one action (a token id).

        :return: ``(obs, reward, terminated, truncated, info)``; ``reward`` is a
            Python float, the flags Python bools, ``info["action_mask"]`` the
            mask of the new state.
        :raises ValueError: if ``action`` is not an integer, out of range, or
            masked in the current state.
        :raises RuntimeError: before the first :meth:`reset` or after the
            episode ended.
        """
        if self._ended is None:
            raise RuntimeError("step() called before reset(); call reset() first")
        if self._ended:
            raise RuntimeError("step() called after the episode ended (terminated or truncated); call reset()")
        try:
            a = operator.index(action)
        except TypeError:
            raise ValueError(f"action must be an integer token id, got {action!r}") from None
        can_backspace = self._length > self._prompt_length
        if not (0 <= a < self.vocab_size and self._base_mask[a] and (a != self.ids.backspace or can_backspace)):
            raise illegal_action_error(a, self.vocab_size, can_backspace, self.tokenizer)

        self._steps += 1
        terminated = truncated = False
        if a == self.ids.eos:
            terminated = True
        elif a == self.ids.backspace:
            self._length -= 1
            self._tokens[self._length] = self.ids.pad
        else:
            self._tokens[self._length] = a
            self._length += 1
            truncated = self._length == self.max_length
        if self._steps >= self.max_episode_steps:
            truncated = True
        self._ended = terminated or truncated
        self._status = "eos" if terminated else "truncated" if truncated else ""

        reward = 0.0
        if self.config.score is not None:
            r, self._potential = step_rewards(
                self.config.score, self.reward_mode, *self._state_tensors(), torch.tensor([terminated]), self._potential
            )
            reward = float(r[0])
        return self._obs(), reward, terminated, truncated, {"action_mask": self._mask().astype(np.int8)}

    def action_masks(self) -> np.ndarray:
        """Legal actions in the current state: ``np.bool_ [vocab_size]`` (MaskablePPO convention)."""
        return self._mask()

    def render(self) -> str | None:
        """``render_mode="ansi"``: ``"prompt|generated▌"`` (``"generated▌"`` without a prompt),
        followed by ``" [eos]"`` or ``" [truncated]"`` once the episode ended."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' to the constructor")
            return None
        return render_text(self.tokenizer, self._tokens[: self._length].tolist(), self._prompt_length, self._status)

    # -- helpers ------------------------------------------------------------
    def _mask(self) -> np.ndarray:
        mask = self._base_mask.copy()
        mask[self.ids.backspace] = self._length > self._prompt_length
        return mask

    def _obs(self) -> dict:
        obs = {
            "tokens": self._tokens.copy(),
            "length": np.int64(self._length),
            "prompt_length": np.int64(self._prompt_length),
        }
        if self.mask_in_observation:
            obs["action_mask"] = self._mask().astype(np.int8)
        return obs

    def _state_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self._tokens.copy())[None], torch.tensor([self._length])


def render_text(tokenizer: Tokenizer, ids: list[int], prompt_length: int, status: str = "") -> str:
    """``"prompt|generated▌"`` (no ``|`` without a prompt), then ``" [status]"`` if given."""
    text = tokenizer.decode(ids[prompt_length:]) + "\u258c"
    if prompt_length:
        text = tokenizer.decode(ids[:prompt_length]) + "|" + text
    return text + (f" [{status}]" if status else "")
