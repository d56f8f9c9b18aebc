"""The batched sequence-generation environment: one state in torch tensors.

:class:`SeqGenVectorEnv` runs ``num_envs`` copies of the MDP of
:class:`seqenv.env.SeqGenEnv` as a single batched state on ``device``
(gymnax/Brax style): ``tokens[B, L]``, ``length[B]``, ``prompt_length[B]``,
``steps[B]`` and the ``done`` flags. A step is a dozen array ops -- the
transition is one lookup in a table indexed by the action -- restarts are
row writes (CPU) or selects (accelerators), and nothing loops over
environments in Python. Dynamics, masks, rewards and prompt draws are those of
the single env, output for output (``tests/test_vector_env.py``).

The step is written once over an op table (:class:`ArrayOps`: the array
namespace ``xp`` and the few operations whose spelling differs):
:data:`TORCH_OPS` on accelerators, and on CPU :data:`NUMPY_OPS`, numpy
operating in place on the tensors' memory (``Tensor.numpy()`` views, no
copies; ``torch.from_numpy`` for the outputs).
Both backends run the same lines; numpy is the CPU default because a torch op
on a small CPU tensor costs about 4x a numpy op, and a step is dominated by
that per-op cost up to thousands of envs. ``backend="torch"`` forces torch ops
on CPU (the tests run both).

:class:`ToNumpy` converts the outputs to numpy for code that needs arrays
(e.g. ``gymnasium.wrappers.vector.RecordEpisodeStatistics``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from gymnasium.vector import AutoresetMode, VectorEnv, VectorWrapper
from gymnasium.vector.utils import batch_space

from .checks import check_number
from .env import (
    RENDER_MODES,
    EnvConfig,
    EnvConfigView,
    TokenActionSpace,
    base_action_mask,
    encode_prompt,
    illegal_action_error,
    observation_space,
    prompt_index,
    render_text,
    seed_key,
)
from .rewards import step_rewards
from .tasks import Task

VECTOR_RESET_OPTIONS = ("prompt", "reset_mask")
BACKENDS = ("auto", "numpy", "torch")
STATE = ("tokens", "length", "prompt_length", "steps", "done", "episode", "key")


@dataclass(frozen=True)
class ArrayOps:
    """The operations of the step whose spelling differs between numpy and torch.

    Arrays are numpy arrays (:data:`NUMPY_OPS`) or torch tensors (:data:`TORCH_OPS`).
    """

    xp: Any  #: the namespace of the common ops (``where``, ``maximum``, ...): ``numpy`` or ``torch``
    view: Callable[[torch.Tensor], Any]  #: a state tensor as the array the step writes in place
    to_torch: Callable[[Any], torch.Tensor]  #: an array as a tensor (numpy: shares memory)
    copy: Callable[[Any], Any]
    long: Callable[[Any], Any]  #: cast to int64
    const: Callable[[np.ndarray, torch.device], Any]  #: a constant table on the env's device
    zeros_f32: Callable[[int, torch.device], torch.Tensor]  #: float32 ``[n]`` zeros as a tensor
    take: Callable[[Any, Any], Any]  #: ``table[idx]`` along the first dimension
    clip: Callable[[Any, int], Any]  #: clip to ``[0, high]``


NUMPY_OPS = ArrayOps(
    xp=np,
    view=torch.Tensor.numpy,
    to_torch=torch.from_numpy,
    copy=np.copy,
    long=lambda a: a.astype(np.int64),
    const=lambda a, device: np.asarray(a),
    zeros_f32=lambda n, device: torch.from_numpy(np.zeros(n, dtype=np.float32)),
    take=lambda table, idx: table.take(idx, axis=0),  # faster than table[idx] in numpy
    clip=lambda a, high: np.minimum(np.maximum(a, 0), high),  # faster than np.clip
)
TORCH_OPS = ArrayOps(
    xp=torch,
    view=lambda t: t,
    to_torch=lambda a: a,
    copy=torch.clone,
    long=lambda a: a.long(),
    const=lambda a, device: torch.as_tensor(np.asarray(a), device=device),
    zeros_f32=lambda n, device: torch.zeros(n, dtype=torch.float32, device=device),
    take=lambda table, idx: table.index_select(0, idx),
    clip=lambda a, high: a.clamp(0, high),
)


class SeqGenVectorEnv(EnvConfigView, VectorEnv):
    """``num_envs`` sequence-generation envs as one batched torch state.

    Same MDP, arguments and observation keys as :class:`seqenv.env.SeqGenEnv`
    (read its docstring for the actions, observations, rewards and episode
    ends), batched along a leading dimension ``B = num_envs``.

    **Returns are torch tensors on** ``device`` (unlike Gymnasium's numpy
    default):

    ========================  =========================  ===============================================
    output                    type                       value
    ========================  =========================  ===============================================
    ``obs["tokens"]``         LongTensor ``[B, L]``      prompt + generated tokens, ``pad`` after length
    ``obs["length"]``         LongTensor ``[B]``         tokens in the state, prompt included
    ``obs["prompt_length"]``  LongTensor ``[B]``         prompt tokens
    ``rewards``               FloatTensor ``[B]``        float32, see :mod:`seqenv.rewards`
    ``terminated``            BoolTensor ``[B]``         the action was ``eos``
    ``truncated``             BoolTensor ``[B]``         state full, or step limit reached
    ``info["action_mask"]``   BoolTensor ``[B, V]``      legal actions in the returned state
    ``info["_action_mask"]``  BoolTensor ``[B]``         all True (Gymnasium's "env has this key" flags)
    ``obs["action_mask"]``    Int8Tensor ``[B, V]``      only with ``mask_in_observation=True``: the
                                                         mask as 0/1 (space ``MultiBinary``)
    ========================  =========================  ===============================================

    With ``copy_obs=True`` (default) observations and masks are fresh tensors
    on every call. With ``copy_obs=False`` they are the env's state tensors
    themselves (no ``[B, L]`` copy per step): read-only, and overwritten by
    the next :meth:`step`/:meth:`reset` -- copy what you keep.

    **Autoreset**: ``autoreset_mode`` takes the modes of Gymnasium 1.x's
    ``SyncVectorEnv`` (an ``AutoresetMode`` or its value as a string), with
    the same outputs as ``SyncVectorEnv`` over :class:`~seqenv.env.SeqGenEnv`
    (``tests/test_vector_env.py`` compares them step by step); it is the
    attribute ``autoreset_mode`` and ``metadata["autoreset_mode"]``.

    * ``NEXT_STEP`` (default): the step that ends an episode returns its
      final state; on the next call to :meth:`step` that env restarts instead
      (its action is ignored) and returns the start state with reward 0 and
      both flags False.
    * ``SAME_STEP``: the step that ends an episode returns its reward and
      flags, but the observation and ``info["action_mask"]`` of the restarted
      env. When an env ended, ``info`` also holds ``"final_obs"`` (numpy object
      array ``[B]``: env ``b``'s final observation, a dict of tensors without the
      batch dimension, or ``None``), ``"final_info"``
      (``{"action_mask": BoolTensor [B, V], "_action_mask": BoolTensor [B]}``,
      rows of envs that did not end all False) and the flags ``"_final_obs"``,
      ``"_final_info"`` (BoolTensor ``[B]``: which envs ended). Costs a host
      sync per step and a Python dict per ended env.
    * ``DISABLED``: nothing restarts by itself; reset the ended envs with
      ``reset(options={"reset_mask": m})`` before stepping them again (with
      ``validate_actions=True`` stepping an ended env raises ``RuntimeError``;
      without validation it continues from its final state).

    ``reset(options={"reset_mask": m})`` resets only the envs where ``m`` is
    True, in any mode (the SB3 adapter uses it for same-step resets); its
    ``info["action_mask"]`` holds every env's mask (``SyncVectorEnv``: the
    reset envs' only, zeros elsewhere).

    **Actions**: LongTensor or integer numpy array ``[B]``. With
    ``validate_actions=True`` (default) an out-of-range or masked action
    raises ``ValueError`` naming the env, the action id and token, and what
    is allowed (one host sync per step). With ``validate_actions=False``
    nothing is checked and an illegal action is a no-op that still counts
    toward the step limit (free: the transition table maps it to "nothing");
    use it for speed once the policy is masked, or for unmasked learners such
    as plain PPO. :meth:`sample_legal_actions` draws uniformly random legal
    actions for the whole batch.

    **Prompts**: the prompt table is a padded tensor; env ``b`` reset with
    ``reset(seed=s)`` draws the prompt of its ``k``-th episode as
    ``prompt_index(seed_key(s + b), k, P)`` (:mod:`seqenv.env`) -- the same
    prompts as a single env reset with ``seed=s + b`` (the seeding convention
    of Gymnasium's ``SyncVectorEnv``). ``reset(options={"prompt": p})`` starts
    every env from ``p`` (a string) or env ``b`` from ``p[b]`` (a list of
    ``B`` strings).

    :param num_envs: batch size ``B >= 1``.
    :param device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a ``torch.device``.
    :param validate_actions: check actions (see above).
    :param copy_obs: fresh observation tensors each call (see above).
    :param backend: array ops of the step: ``"auto"`` (numpy on CPU, torch
        elsewhere), ``"numpy"`` (CPU only) or ``"torch"``. Same results.
    :param autoreset_mode: ``AutoresetMode`` or its string value
        (``"NextStep"``, ``"SameStep"``, ``"Disabled"``), see above.
    :param task: a task name or ``Task`` with the keyword arguments of
        :class:`~seqenv.env.SeqGenEnv` (``max_length``, ``max_episode_steps``,
        ``reward``, ``reward_mode``, ``prompts``, ``render_mode``,
        ``mask_in_observation``, ``tokenizer``: :meth:`~seqenv.env.EnvConfig.make`),
        or a complete :class:`~seqenv.env.EnvConfig` (the one a single env has
        is ``env.config``); ``max_episode_steps`` reaches this constructor
        through ``gym.make_vec``.
    :raises ValueError: on bad arguments (those of the single env,
        ``num_envs < 1``, a CUDA device without CUDA, an unknown backend or
        autoreset mode).
    """

    metadata = {"render_modes": list(RENDER_MODES), "render_fps": 4, "autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(
        self,
        num_envs: int = 1,
        task: str | Task | EnvConfig = "python-lines",
        *,
        device: str | torch.device = "cpu",
        validate_actions: bool = True,
        copy_obs: bool = True,
        backend: str = "auto",
        autoreset_mode: str | AutoresetMode = AutoresetMode.NEXT_STEP,
        **kwargs: Any,
    ):
        check_number("num_envs", num_envs, ge=1, integer=True)
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} requested but CUDA is not available (torch.cuda.is_available() is False)"
            )
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        if backend == "numpy" and device.type != "cpu":
            raise ValueError(f"backend='numpy' runs on the CPU only, got device={str(device)!r}")
        self._autoreset_mode = as_autoreset_mode(autoreset_mode)
        self._next_step = self._autoreset_mode == AutoresetMode.NEXT_STEP
        self._same_step = self._autoreset_mode == AutoresetMode.SAME_STEP
        self.metadata = {**self.metadata, "autoreset_mode": self._autoreset_mode}
        self.config = cfg = EnvConfig.of(task, kwargs)
        self.num_envs = B = int(num_envs)
        V, L = cfg.vocab_size, cfg.max_length
        self.device = device
        self.validate_actions = bool(validate_actions)
        self.copy_obs = bool(copy_obs)
        self.backend = "numpy" if backend == "numpy" or (backend == "auto" and device.type == "cpu") else "torch"

        self.single_action_space = TokenActionSpace(V, special_ids=cfg.ids)
        self.action_space = batch_space(self.single_action_space, B)
        self.single_observation_space = observation_space(V, L, self.mask_in_observation)
        self.observation_space = batch_space(self.single_observation_space, B)

        # the batched state: torch tensors on device
        def zeros(*shape, dtype=torch.long):
            return torch.zeros(shape, dtype=dtype, device=device)

        self.tokens = zeros(B, L)  # pad (0) after length
        self.length = zeros(B)  # tokens in the state, prompt included
        self.prompt_length = zeros(B)
        self.steps = zeros(B)  # actions taken in the current episode
        self.done = zeros(B, dtype=torch.bool)  # the episode ended at the last step: restart at the next
        self.episode = zeros(B)  # episodes since seeding (prompt draws of conditional tasks)
        self.key = zeros(B)  # prompt key of each env
        self.potential = zeros(B, dtype=torch.float64)  # score potential of the state (reward_mode="step")
        self._started = False

        # constants: lookup tables indexed by the action clamped to [0, V] (V = out of range)
        sp = cfg.ids
        ids = np.arange(V + 1)
        ordinary = ~np.isin(ids, sp.non_writing) & (ids < V)  # unk and ordinary tokens are written
        change = ordinary * 1 - (ids == sp.backspace)  # length change: +1 append, -1 backspace, 0 else
        written = np.where(ordinary, ids, sp.pad)  # the token an action writes (pad: none)
        mask = base_action_mask(V, sp)
        mask_table = np.stack([mask, mask])
        mask_table[0, sp.backspace] = False  # row 0: nothing generated; row 1: backspace legal
        legal = np.flatnonzero(mask)
        self._num_legal = len(legal)  # legal ids with backspace; V - 2 with the default ids
        legal_table = np.concatenate([legal[legal != sp.backspace], [sp.pad], legal])  # 2 rows of num_legal, flat
        prompt_table, prompt_lengths = self._table(cfg.prompts or [[]])

        # the arrays the step computes on (numpy views of the tensors' memory, or the tensors)
        self.ops = ops = NUMPY_OPS if self.backend == "numpy" else TORCH_OPS
        self._x = {name: ops.view(getattr(self, name)) for name in STATE}
        self._change = ops.const(change.astype(np.int64), device)  # [V + 1]
        self._written = ops.const(written.astype(np.int64), device)  # [V + 1]
        self._mask_table = ops.const(mask_table, device)  # [2, V] bool
        self._legal_table = ops.const(legal_table.astype(np.int64), device)
        self._row_start = ops.const(np.arange(B, dtype=np.int64) * L, device)  # flat index of each row's first token
        self._env_index = ops.const(np.arange(B, dtype=np.int64), device)
        self._prompt_table = ops.const(prompt_table, device)  # [P, L] (P = 1 empty prompt if unconditional)
        self._prompt_lengths = ops.const(prompt_lengths, device)
        self._conditional = cfg.prompts is not None
        self._mask_buffer = ops.take(self._mask_table, self._env_index * 0)  # info["action_mask"] when copy_obs=False
        self._obs_mask_table = ops.const(mask_table.astype(np.int8), device)  # obs["action_mask"] (mask_in_observation)
        self._obs_mask_buffer = ops.take(self._obs_mask_table, self._env_index * 0)  # ... when copy_obs=False
        self._all_envs = ops.to_torch(self._env_index >= 0)  # info["_action_mask"]: a constant, all True

    @property
    def autoreset_mode(self) -> AutoresetMode:
        """The autoreset mode (read-only: set it in the constructor)."""
        return self._autoreset_mode

    # -- Gymnasium API ------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[dict, dict]:
        """Reset every env (or those in ``options["reset_mask"]``).

        :param seed: env ``b`` is seeded with ``seed + b``.
        :param options: ``"prompt"``: a string (every env) or a list of ``B``
            strings; ``"reset_mask"``: bool array/tensor ``[B]``, reset only
            these envs (the others keep their state; the first reset must be
            a full one).
        :return: ``(obs, info)`` for the whole batch.
        :raises ValueError: on unknown options, a bad mask or prompt.
        """
        super().reset(seed=seed)
        x, xp = self._x, self.ops.xp
        options = dict(options or {})
        unknown = set(options) - set(VECTOR_RESET_OPTIONS)
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected keys among {VECTOR_RESET_OPTIONS}")
        rows = self._reset_mask(options.get("reset_mask"))
        table = self._explicit_prompts(options["prompt"]) if options.get("prompt") is not None else None
        if seed is None and not self._started:
            seed = int(self.np_random.integers(2**32))
        if seed is not None:
            x["key"][...] = xp.where(rows, seed_key(int(seed) + self._env_index), x["key"])
            x["episode"][...] = xp.where(rows, -1, x["episode"])  # the restart below starts episode 0
        self._restart(rows, table)
        x["done"][...] = x["done"] & ~rows
        if self.config.score is not None and self.reward_mode == "step":
            rows_t = self.ops.to_torch(rows)
            self.potential = torch.where(rows_t, self.config.score.potential(self.tokens, self.length), self.potential)
        self._started = True
        return self._obs(), {"action_mask": self._info_mask(), "_action_mask": self._all_envs}

    def step(self, actions) -> tuple[dict, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply one action per env; restarts follow ``autoreset_mode`` (class docstring).

        :param actions: LongTensor or integer numpy array ``[B]``.
        :return: ``(obs, rewards, terminated, truncated, info)``, torch
            tensors on ``device`` (table in the class docstring).
        :raises ValueError: on a bad shape or dtype, or (``validate_actions``)
            an out-of-range or masked action.
        :raises RuntimeError: before the first :meth:`reset`; (``DISABLED``
            with ``validate_actions``) for an env whose episode ended and was
            not reset.
        """
        if not self._started:
            raise RuntimeError("step() called before reset(); call reset() first")
        x, xp = self._x, self.ops.xp
        a = self._as_actions(actions)
        next_step = self._next_step
        if next_step:
            restart = self.ops.copy(x["done"])  # these envs start a new episode now; their action is ignored
            if self.validate_actions:
                self._validate(a, restart)
            x["steps"] += 1
            self._restart(restart)  # steps back to 0 there
            # the transition, by table lookup: +1 and the token for an append, -1 and pad for a backspace,
            # nothing for eos, pad, bos, out-of-range ids (clipped to V) and restarting envs
            a = xp.where(restart, self.ids.pad, self.ops.clip(a, self.vocab_size))
        else:  # SAME_STEP: no env is done here; DISABLED: the user resets the ended envs
            if self.validate_actions:
                self._check_not_done()
                self._validate(a, None)
            x["steps"] += 1
            a = self.ops.clip(a, self.vocab_size)
        length = xp.maximum(x["length"] + self.ops.take(self._change, a), x["prompt_length"])  # keep the prompt
        write_at = xp.minimum(x["length"], length)  # append: at the old length; backspace: at the new one
        x["tokens"].reshape(-1)[self._row_start + write_at] = self.ops.take(self._written, a)
        x["length"][...] = length
        terminated = a == self.ids.eos
        truncated = (length == self.max_length) | (x["steps"] >= self.max_episode_steps)
        x["done"][...] = terminated | truncated
        terminated, truncated = self.ops.to_torch(terminated), self.ops.to_torch(truncated)

        if self.config.score is None:
            rewards = self.ops.zeros_f32(self.num_envs, self.device)
        else:
            r, potential = step_rewards(
                self.config.score, self.reward_mode, self.tokens, self.length, terminated, self.potential
            )
            if potential is not None:
                self.potential = potential
            rewards = (torch.where(self.ops.to_torch(restart), 0.0, r) if next_step else r).float()
        if self._same_step:
            info = self._same_step_restart()
            info["action_mask"], info["_action_mask"] = self._info_mask(), self._all_envs
        else:
            info = {"action_mask": self._info_mask(), "_action_mask": self._all_envs}
        return self._obs(), rewards, terminated, truncated, info

    def action_masks(self) -> torch.Tensor:
        """Legal actions in the current states: BoolTensor ``[B, V]`` on ``device`` (a fresh tensor)."""
        return self.ops.to_torch(self.ops.take(self._mask_table, (self._x["length"] > self._x["prompt_length"]) * 1))

    def sample_legal_actions(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniformly random legal actions, LongTensor ``[B]`` on ``device``.

        An exact uniform draw over each env's mask in O(B): the mask's
        structure is fixed (every id but ``pad`` and ``bos``; ``backspace``
        only if something is generated), so ``r ~ U{0, ..., n - 1}`` with
        ``n = N - 1`` or ``N`` (``N`` legal ids with backspace; ``V - 2`` for
        the fixed ids) is looked up in a table of the legal ids (row 0
        without, row 1 with backspace; rows of ``N``, flattened).

        :param generator: ``torch.Generator`` on ``device`` (``None``: torch's global one).
        """
        u = torch.rand(self.num_envs, generator=generator, device=self.device, dtype=torch.float64)
        u = u.numpy() if self.backend == "numpy" else u
        can_backspace = (self._x["length"] > self._x["prompt_length"]) * 1
        r = self.ops.long(u * (can_backspace + (self._num_legal - 1)))
        return self.ops.to_torch(self.ops.take(self._legal_table, r + can_backspace * self._num_legal))

    def render(self) -> tuple[str, ...] | None:
        """``render_mode="ansi"``: one ``"prompt|generated▌"`` string per env."""
        if self.render_mode is None:
            return None
        toks, lens, plens = self.tokens.tolist(), self.length.tolist(), self.prompt_length.tolist()
        return tuple(render_text(self.tokenizer, t[:n], p) for t, n, p in zip(toks, lens, plens))

    # -- helpers ------------------------------------------------------------
    def _restart(self, rows, table: tuple | None = None) -> None:
        """Start a new episode (prompt or empty, step 0) in the envs where ``rows`` (bool ``[B]``) is True.

        :param table: ``(prompt_table [P, L], prompt_lengths [P], index [B])``
            to use instead of the env's prompt draws.
        """
        x = self._x
        if table is None:
            prompts, lengths, index = self._prompt_table, self._prompt_lengths, None
        else:
            prompts, lengths, index = table
        if self.backend == "numpy":
            # CPU: write the restarting rows only (cheaper than [B, L] selects)
            r = rows.nonzero()[0]
            if r.size == 0:
                return
            x["steps"][r] = 0
            if index is None and not self._conditional:  # every env restarts empty
                x["length"][r] = x["prompt_length"][r] = 0
                x["tokens"][r] = self.ids.pad
                return
            x["episode"][r] += 1
            idx = index[r] if index is not None else prompt_index(x["key"][r], x["episode"][r], len(prompts))
            x["length"][r] = x["prompt_length"][r] = lengths[idx]
            x["tokens"][r] = prompts[idx]
        else:
            # accelerators: selects over the whole batch, no host sync
            x["steps"].masked_fill_(rows, 0)
            if index is None and not self._conditional:  # every env restarts empty
                x["length"].masked_fill_(rows, 0)
                x["prompt_length"].masked_fill_(rows, 0)
                x["tokens"].masked_fill_(rows[:, None], self.ids.pad)
                return
            x["episode"] += rows
            idx = index if index is not None else prompt_index(x["key"], x["episode"], len(prompts))
            n = torch.where(rows, lengths[idx], x["length"])
            x["length"][...] = n
            x["prompt_length"][...] = torch.where(rows, n, x["prompt_length"])
            x["tokens"][...] = torch.where(rows[:, None], prompts[idx], x["tokens"])

    def _table(self, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """Padded prompt table int64 ``[P, L]`` and lengths ``[P]``."""
        table = np.full((len(prompts), self.max_length), self.ids.pad, dtype=np.int64)
        for i, p in enumerate(prompts):
            table[i, : len(p)] = p
        return table, np.array([len(p) for p in prompts], dtype=np.int64)

    def _explicit_prompts(self, prompt) -> tuple:
        if isinstance(prompt, str):
            prompt = [prompt] * self.num_envs
        if not isinstance(prompt, (list, tuple)) or len(prompt) != self.num_envs:
            raise ValueError(
                f"reset option 'prompt' must be a string or a list of {self.num_envs} strings, got {prompt!r:.80}"
            )
        table, lengths = self._table([encode_prompt(self.tokenizer, p, self.max_length) for p in prompt])
        return self.ops.const(table, self.device), self.ops.const(lengths, self.device), self._env_index

    def _reset_mask(self, mask):
        """The envs to reset: bool array ``[B]`` of the backend."""
        if mask is None:
            return self._env_index >= 0
        if not self._started:
            raise ValueError("reset option 'reset_mask' needs a first full reset() of every env")
        mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
        if mask.dtype != np.bool_ or mask.shape != (self.num_envs,):
            raise ValueError(
                f"reset option 'reset_mask' must be a bool array of shape ({self.num_envs},), "
                f"got dtype {mask.dtype} shape {mask.shape}"
            )
        return self.ops.const(mask, self.device)

    def _as_actions(self, actions):
        """Actions as an int64 array of the backend, shape ``[B]``."""
        if self.backend == "numpy":
            a = actions.detach().cpu().numpy() if isinstance(actions, torch.Tensor) else np.asarray(actions)
            integer = a.dtype.kind in "iu"
        else:
            a = torch.as_tensor(actions, device=self.device)
            integer = not (a.dtype == torch.bool or a.is_floating_point() or a.is_complex())
        if tuple(a.shape) != (self.num_envs,):
            raise ValueError(f"actions must have shape ({self.num_envs},) (one token id per env), got {tuple(a.shape)}")
        if not integer:
            raise ValueError(f"actions must be integer token ids, got dtype {a.dtype}")
        return self.ops.long(a)

    def _validate(self, a, restart) -> None:
        """Raise for an illegal action of an env not in ``restart`` (bool ``[B]``, or None: no env restarts)."""
        can_backspace = self._x["length"] > self._x["prompt_length"]
        legal = (
            self.ops.take(self._mask_table[1], self.ops.clip(a, self.vocab_size - 1)) & (a < self.vocab_size) & (a >= 0)
        )
        legal = legal & ((a != self.ids.backspace) | can_backspace)
        bad = ~legal if restart is None else ~(legal | restart)
        if bool(bad.any()):
            b = int((bad * 1).argmax())
            raise illegal_action_error(int(a[b]), self.vocab_size, bool(can_backspace[b]), self.tokenizer, env_index=b)

    def _check_not_done(self) -> None:
        """``DISABLED``: raise RuntimeError if an env whose episode ended is stepped before its reset."""
        done = self._x["done"]
        if bool(done.any()):
            ended = self.ops.to_torch(done).nonzero()[:, 0].tolist()[:10]
            raise RuntimeError(
                f"step() called for envs whose episode ended (first: {ended}) with autoreset_mode=DISABLED; "
                "reset them first with reset(options={'reset_mask': mask})"
            )

    def _same_step_restart(self) -> dict:
        """``SAME_STEP``: restart the envs that ended at this step; their final observations and masks.

        :return: ``{}`` if no env ended, else the ``final_obs``/``final_info``
            entries of ``info`` (class docstring; as ``SyncVectorEnv``).
        """
        x = self._x
        ended = self.ops.copy(x["done"])
        if not bool(ended.any()):  # one host sync: whether there is a final observation to build
            return {}
        rows = ended.nonzero()[0] if self.backend == "numpy" else ended.nonzero()[:, 0]
        can_backspace = (x["length"] > x["prompt_length"]) * 1
        state = {k: self.ops.to_torch(x[k][rows]) for k in ("tokens", "length", "prompt_length")}  # copies
        if self.mask_in_observation:
            state["action_mask"] = self.ops.to_torch(self.ops.take(self._obs_mask_table, can_backspace[rows]))
        final_obs = np.full(self.num_envs, None, dtype=object)
        for j, b in enumerate(rows.tolist()):
            final_obs[b] = {k: v[j] for k, v in state.items()}
        ended_t = self.ops.to_torch(ended)
        final_mask = self.ops.to_torch(self.ops.take(self._mask_table, can_backspace) & ended[:, None])
        self._restart(ended)
        x["done"][...] = False
        if self.config.score is not None and self.reward_mode == "step":
            self.potential = torch.where(ended_t, self.config.score.potential(self.tokens, self.length), self.potential)
        return {
            "final_obs": final_obs,
            "_final_obs": ended_t,
            "final_info": {"action_mask": final_mask, "_action_mask": ended_t},
            "_final_info": ended_t,
        }

    def _obs(self) -> dict:
        if not self.copy_obs:  # the state tensors themselves (read-only, valid until the next call)
            obs = {"tokens": self.tokens, "length": self.length, "prompt_length": self.prompt_length}
            if self.mask_in_observation:  # one buffer; only the backspace column changes
                self._obs_mask_buffer[:, self.ids.backspace] = self._x["length"] > self._x["prompt_length"]
                obs["action_mask"] = self.ops.to_torch(self._obs_mask_buffer)
            return obs
        x = self._x
        obs = {k: self.ops.to_torch(self.ops.copy(x[k])) for k in ("tokens", "length", "prompt_length")}
        if self.mask_in_observation:
            obs["action_mask"] = self.ops.to_torch(
                self.ops.take(self._obs_mask_table, (x["length"] > x["prompt_length"]) * 1)
            )
        return obs

    def _info_mask(self) -> torch.Tensor:
        if not self.copy_obs:  # one buffer; only the backspace column changes
            self._mask_buffer[:, self.ids.backspace] = self._x["length"] > self._x["prompt_length"]
            return self.ops.to_torch(self._mask_buffer)
        return self.action_masks()


def as_autoreset_mode(mode: str | AutoresetMode) -> AutoresetMode:
    """``mode`` as an ``AutoresetMode`` (accepts the enum or its value, as ``SyncVectorEnv`` does).

    :raises ValueError: for anything else, naming the accepted values.
    """
    if isinstance(mode, AutoresetMode):
        return mode
    try:
        return AutoresetMode(mode)
    except ValueError:
        raise ValueError(
            f"unknown autoreset_mode {mode!r}; expected an AutoresetMode or one of {[m.value for m in AutoresetMode]}"
        ) from None


class ToNumpy(VectorWrapper):
    """Outputs of a torch vector env as numpy arrays (on the host).

    Observations become a dict of numpy arrays, rewards ``float32 [B]``, the
    flags ``bool [B]``, tensors in ``info`` numpy arrays; actions pass through
    unchanged (numpy or torch). Use it for numpy-based wrappers, e.g.
    ``RecordEpisodeStatistics(ToNumpy(venv))``. Costs a device-to-host copy
    per step.
    """

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        obs, info = self.env.reset(seed=seed, options=options)
        return _to_numpy(obs), _to_numpy(info)

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        return _to_numpy(obs), _to_numpy(rewards), _to_numpy(terminated), _to_numpy(truncated), _to_numpy(info)


def _to_numpy(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    if isinstance(x, dict):
        return {k: _to_numpy(v) for k, v in x.items()}
    if isinstance(x, np.ndarray) and x.dtype == object:  # info["final_obs"] of SAME_STEP
        out = np.full(x.shape, None, dtype=object)
        for i, v in enumerate(x):
            out[i] = _to_numpy(v)
        return out
    return x
