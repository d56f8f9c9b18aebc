"""Batched generation through :class:`seqenv.vector_env.SeqGenVectorEnv`.

The policy acts in the environment on the training device: one KV-cache for
the whole batch, one batched sampling step and one vectorised env step per
action, no Python loop over environments. A ``backspace`` is applied by the
env (the state shrinks) and by the cache (a rollback: the stored logits of the
shorter prefix are reused, no compute).

Every environment plays exactly one episode; rows whose episode ended are
inactive (their cache is frozen) until the slowest row ends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from seqenv.tasks import Task
from seqenv.tokenizers import DEFAULT_SPECIAL_IDS, SpecialIds
from seqenv.vector_env import SeqGenVectorEnv

from .distributed import gathered_params
from .trajectory import TrajectoryBatch, collate


@dataclass
class RolloutResult:
    """One episode per environment.

    :param actions: LongTensor ``[N, S]``, the actions taken (``pad`` after the
        episode's end); ``S`` = the longest episode.
    :param log_probs: FloatTensor ``[N, S]``, log-probability (nats) of each
        action under the *sampling* distribution (mask, temperature, top-k,
        top-p applied); 0 after the end.
    :param num_actions: LongTensor ``[N]``, actions in each episode.
    :param tokens: LongTensor ``[N, L]``, the final states (prompt + generated,
        backspaces applied, ``pad`` after ``lengths``).
    :param lengths: LongTensor ``[N]``, final state lengths (prompt included).
    :param prompt_lengths: LongTensor ``[N]``.
    :param terminated: BoolTensor ``[N]`` (ended by ``eos``); ``truncated`` the rest.
    :param action_masks: BoolTensor ``[N, S, V]`` legal actions at each step,
        or ``None`` unless requested.
    :param ids: the env's special ids (its tokenizer's).
    """

    actions: torch.Tensor
    log_probs: torch.Tensor
    num_actions: torch.Tensor
    tokens: torch.Tensor
    lengths: torch.Tensor
    prompt_lengths: torch.Tensor
    terminated: torch.Tensor
    action_masks: torch.Tensor | None = None
    ids: SpecialIds = DEFAULT_SPECIAL_IDS

    @property
    def truncated(self) -> torch.Tensor:
        return ~self.terminated

    def sequences(self) -> list[list[int]]:
        """Generated tokens of each final state (prompt and ``eos`` excluded)."""
        toks, lens, plens = self.tokens.tolist(), self.lengths.tolist(), self.prompt_lengths.tolist()
        return [row[p:n] for row, p, n in zip(toks, plens, lens)]

    def prompts(self) -> list[list[int]]:
        toks, plens = self.tokens.tolist(), self.prompt_lengths.tolist()
        return [row[:p] for row, p in zip(toks, plens)]

    def action_lists(self) -> list[list[int]]:
        """Each episode's action history (backspaces included, ``eos`` last if terminated)."""
        acts, n = self.actions.tolist(), self.num_actions.tolist()
        return [row[:k] for row, k in zip(acts, n)]

    def to_batch(self, width: int | None = None) -> TrajectoryBatch:
        """The episodes as policy input (see :func:`agents.common.trajectory.collate`)."""
        return collate(self.action_lists(), self.prompts(), device=self.actions.device, width=width, ids=self.ids)


def sample_actions(
    logits: torch.Tensor,
    mask: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample one action per row from masked, tempered, top-k/top-p logits.

    :param logits: FloatTensor ``[N, V]``.
    :param mask: BoolTensor ``[N, V]``, True = legal; every row needs one.
    :param temperature: > 0; ``0`` is not allowed (use a small value for greedy).
    :param top_k: keep the ``k`` most likely legal actions (``None`` = all).
    :param top_p: nucleus: keep the smallest set with probability >= ``p``.
    :return: (actions LongTensor ``[N]``, log-probs FloatTensor ``[N]`` under
        the sampling distribution).
    :raises ValueError: on a non-positive temperature, ``top_k < 1`` or
        ``top_p`` outside ``(0, 1]``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    x = logits.float() / temperature
    x = x.masked_fill(~mask, float("-inf"))
    if top_k is not None and top_k < x.shape[-1]:
        kth = torch.topk(x, top_k, dim=-1).values[:, -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        probs = sorted_x.softmax(-1)
        # drop a token if the mass before it already reaches top_p (always keeps the first)
        drop_sorted = probs.cumsum(-1) - probs >= top_p
        drop_sorted[..., 0] = False  # even when top_p rounds to 0 in float32 (e.g. 1e-300)
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        x = x.masked_fill(drop, float("-inf"))
    logp = x.log_softmax(-1)
    actions = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
    return actions, logp.gather(-1, actions[:, None]).squeeze(-1)


def make_vector_env(task: Task, num_envs: int, device: torch.device | str, **kwargs):
    """A :class:`~seqenv.vector_env.SeqGenVectorEnv` for rollouts (action validation off)."""
    kwargs.setdefault("validate_actions", False)
    return SeqGenVectorEnv(task=task, num_envs=num_envs, device=device, **kwargs)


@torch.no_grad()
def rollout(
    policy,
    venv,
    *,
    seed: int | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    store_masks: bool = False,
    allow_backspace: bool = True,
    forced_actions: tuple[torch.Tensor, torch.Tensor] | None = None,
    use_kv_cache: bool = True,
    reset_options: dict | None = None,
) -> RolloutResult:
    """Play one episode in each of ``venv``'s environments with ``policy``.

    :param policy: a :class:`~agents.policies.Policy` (or a DDP wrapper of
        one) on ``venv.device``; its ``max_state_length`` must be at least the
        env's ``max_length + 1``.
    :param venv: a ``SeqGenVectorEnv``; it is reset (with ``seed``) first.
    :param generator: ``torch.Generator`` on the env's device for sampling.
    :param allow_backspace: if False, ``backspace`` is removed from the legal
        actions: the final sequences are then exact ancestral samples of the
        autoregressive model (what E-ARM and NCE need as proposal / noise).
    :param forced_actions: ``(actions LongTensor [N, F], counts LongTensor [N])``:
        row ``b`` takes ``actions[b, :counts[b]]`` as its first actions instead
        of sampling (teacher forcing through the env: e.g. a prefix with an
        injected wrong token, to measure recovery); they must be legal. They
        appear in the result's actions; their ``log_probs`` are under the
        masked, tempered distribution (top-k/top-p not applied).
    :param use_kv_cache: False runs a full forward pass over ``[bos, state]``
        (cropped to the longest current state) at every step instead: the
        no-cache baseline of ``benchmarks/train_throughput.py``; same episodes,
        slower.
    :param reset_options: passed to ``venv.reset`` (e.g. ``{"prompt": [text per row]}``: GRPO's groups).
    :return: :class:`RolloutResult` on the env's device.
    """
    policy = getattr(policy, "module", policy)
    was_training = policy.training
    policy.eval()
    gathered = contextlib.ExitStack()  # an FSDP-sharded policy decodes on its gathered parameters
    gathered.enter_context(gathered_params(policy))
    try:
        obs, info = venv.reset(seed=seed, options=reset_options)
        N = venv.num_envs
        device = obs["tokens"].device
        state_len = obs["length"].reshape(N)
        prompt_len = obs["prompt_length"].reshape(N)
        L = obs["tokens"].shape[1]
        if policy.max_state_length < L + 1:
            raise ValueError(
                f"policy max_state_length {policy.max_state_length} < env max_length + 1 = {L + 1}: "
                "the policy cannot read the longest state"
            )
        sp = SpecialIds.of(venv.tokenizer)
        mine = SpecialIds.of(policy)
        if (mine.bos, mine.eos, mine.backspace) != (sp.bos, sp.eos, sp.backspace):
            raise ValueError(
                f"policy special ids {mine} differ from the env's {sp}: tokenize the task with "
                "the policy's tokenizer (make_task(..., tokenizer='hf:PATH'))"
            )
        bos = torch.full((N, 1), sp.bos, dtype=torch.long, device=device)
        rows = torch.arange(N, device=device)

        def recompute(obs) -> torch.Tensor:  # logits of each row's current state, no cache
            length = obs["length"].reshape(N)
            width = int(length.max()) + 1  # crop to the longest current state
            return policy(torch.cat([bos, obs["tokens"]], 1)[:, :width])[rows, length]

        if use_kv_cache:
            width = int(state_len.max()) + 1  # prefill only up to the longest state (bos + prompt), not max_length
            cache, logits = policy.prefill(torch.cat([bos, obs["tokens"]], 1)[:, :width], state_len + 1)
        else:
            logits = recompute(obs)

        max_steps = int(getattr(venv, "max_episode_steps", 4 * L))
        actions = torch.full((N, max_steps), sp.pad, dtype=torch.long, device=device)
        log_probs = torch.zeros((N, max_steps), device=device)
        masks = [] if store_masks else None
        done = torch.zeros(N, dtype=torch.bool, device=device)
        terminated = torch.zeros(N, dtype=torch.bool, device=device)
        num_actions = torch.zeros(N, dtype=torch.long, device=device)
        final_tokens = obs["tokens"].clone()
        final_len = state_len.clone()
        eos = torch.full((N,), sp.eos, dtype=torch.long, device=device)
        for t in range(max_steps):
            mask = info["action_mask"]
            if not allow_backspace:
                mask = mask.clone()
                mask[:, sp.backspace] = False
            a, lp = sample_actions(logits, mask, temperature, top_k, top_p, generator)
            if forced_actions is not None and t < forced_actions[0].shape[1]:
                forced = t < forced_actions[1]
                a = torch.where(forced, forced_actions[0][:, t], a)
                lp = torch.where(
                    forced,
                    logits.float()
                    .div(temperature)
                    .masked_fill(~mask, float("-inf"))
                    .log_softmax(-1)
                    .gather(-1, a[:, None])
                    .squeeze(-1),
                    lp,
                )
            a = torch.where(done, eos, a)  # finished rows: any action, ignored by the autoreset
            active = ~done
            actions[:, t] = torch.where(active, a, sp.pad)
            log_probs[:, t] = torch.where(active, lp, 0.0)
            if masks is not None:
                masks.append(mask & active[:, None])
            obs, _, term, trunc, info = venv.step(a)
            ended = active & (term | trunc)
            num_actions += active.long()
            terminated |= ended & term
            final_tokens = torch.where(ended[:, None], obs["tokens"], final_tokens)
            final_len = torch.where(ended, obs["length"].reshape(N), final_len)
            done = done | ended
            if bool(done.all()):
                break
            logits = policy.decode_step(cache, a, active=~done) if use_kv_cache else recompute(obs)
        S = int(num_actions.max())
        return RolloutResult(
            actions=actions[:, :S],
            log_probs=log_probs[:, :S],
            num_actions=num_actions,
            tokens=final_tokens,
            lengths=final_len,
            prompt_lengths=prompt_len,
            terminated=terminated,
            action_masks=torch.stack(masks, 1)[:, :S] if masks is not None else None,
            ids=sp,
        )
    finally:
        policy.train(was_training)
        gathered.close()


class _PromptedEnv:
    """A vector env whose every reset starts row ``b`` from ``prompts[b]``
    (the env's ``reset(options={"prompt": [...]})``); everything else is the env's."""

    def __init__(self, venv, prompts: list[str]):
        self._venv, self._prompts = venv, list(prompts)

    def reset(self, *, seed=None, options=None):
        return self._venv.reset(seed=seed, options={**(options or {}), "prompt": self._prompts})

    def __getattr__(self, name):
        return getattr(self._venv, name)


def generate(
    policy,
    task: Task,
    num_samples: int,
    *,
    prompts: list[str] | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
    seed: int = 0,
    generator: torch.Generator | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allow_backspace: bool = True,
    env_kwargs: dict | None = None,
) -> list[RolloutResult]:
    """Generate ``num_samples`` episodes in batches of at most ``batch_size``.

    Deterministic for a given ``seed``: batch ``j`` resets its env with ``seed +
    offset`` (``offset`` = the rows before it) and actions are drawn from
    ``generator`` (default: a new one on ``device`` seeded with ``seed``).

    :param prompts: None (the env draws each row's prompt: its default), or
        ``num_samples`` prompt texts, row ``i`` starting from ``prompts[i]``:
        where samples must share a prompt with something else (the noise of a
        conditional NCE critic, per-prompt reranking's ``K`` candidates).
    :param generator: action-sampling ``torch.Generator`` on ``device``.
    :param env_kwargs: extra :class:`~seqenv.vector_env.SeqGenVectorEnv` arguments.
    :returns: one :class:`RolloutResult` per batch, in row order.
    :raises ValueError: on ``num_samples < 1``, ``batch_size < 1`` or a prompt
        list of another length than ``num_samples``.
    """
    if num_samples < 1 or batch_size < 1:
        raise ValueError(f"num_samples and batch_size must be >= 1, got {num_samples}, {batch_size}")
    if prompts is not None and len(prompts) != num_samples:
        raise ValueError(f"need one prompt per sample: {num_samples} samples, {len(prompts)} prompts")
    gen = generator if generator is not None else torch.Generator(device=device).manual_seed(seed)
    out, done, envs = [], 0, {}
    while done < num_samples:
        n = min(batch_size, num_samples - done)
        if n not in envs:
            envs[n] = make_vector_env(task, n, device, **(env_kwargs or {}))
        venv = envs[n] if prompts is None else _PromptedEnv(envs[n], prompts[done : done + n])
        out.append(
            rollout(
                policy,
                venv,
                seed=seed + done,
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                generator=gen,
                allow_backspace=allow_backspace,
            )
        )
        done += n
    for venv in envs.values():
        venv.close()
    return out


class OnlineSampler:
    """Rollouts of the current policy through one vector env, reproducible and resumable.

    Each call resets the env with a seed drawn from ``seed_generator`` (a CPU
    stream the trainer checkpoints), so prompts are drawn reproducibly on a
    conditional task, and samples actions with ``sample_generator`` (on the
    env's device, also checkpointed): a resumed run draws the same episodes
    as an uninterrupted one. Used by SequenceMatch (its buffer), E-ARM (the
    negative phase) and NCE (the noise samples).

    :param task: the task the env runs (its prompts, if any).
    :param num_envs: episodes per call.
    :param device: the env's (and policy's) device.
    :param seed_generator: CPU ``torch.Generator`` for the reset seeds.
    :param sample_generator: ``torch.Generator`` on ``device`` for the actions.
    :param temperature: sampling temperature (> 0).
    :param allow_backspace: False = exact ancestral samples of the AR model.
    """

    def __init__(
        self,
        task: Task,
        num_envs: int,
        device: torch.device | str,
        seed_generator: torch.Generator,
        sample_generator: torch.Generator,
        *,
        temperature: float = 1.0,
        allow_backspace: bool = True,
    ):
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.venv = make_vector_env(task, num_envs, device)
        self.seed_generator, self.sample_generator = seed_generator, sample_generator
        self.temperature, self.allow_backspace = temperature, allow_backspace

    def sample(self, policy) -> RolloutResult:
        """One episode per env with ``policy`` (see :func:`rollout`)."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.seed_generator))
        return rollout(
            policy,
            self.venv,
            seed=seed,
            generator=self.sample_generator,
            temperature=self.temperature,
            allow_backspace=self.allow_backspace,
        )
