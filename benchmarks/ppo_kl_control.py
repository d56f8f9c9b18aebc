"""Does β restrain PPO now? A small CPU check of the KL control of ``agents/sb3/critic_reward.py`` (issue 25).

Setting (synthetic, CPU-sized): task ``oracle-hmm``, π0 = a random 1-layer transformer (width 32), the
"critic" pays ``r(x) = number of token 5 in x`` (a pull away from π0 with a known direction). For each
arm and seed, MaskablePPO runs ``--steps`` env steps (16 envs × 16 steps per rollout, 2 epochs, batch 64,
lr 1e-3), then KL(π‖π0) (nats per sequence), the critic reward and the mean length are measured on 1024
fresh samples. Arms: β ∈ {0.1, 1, 10} with the k1 reward (the default), the same with the *old*
configuration (``VecNormalize(norm_reward=True)`` over the whole reward, as before issue 25), and the
adaptive controller at two target KLs (start β = 1, horizon 512).

    python benchmarks/ppo_kl_control.py --seeds 0 1 2 --steps 4096 --out benchmarks/results/ppo_kl_control
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from sb3_contrib import MaskablePPO
from stable_baselines3.common.vec_env import VecMonitor, VecNormalize

from agents.common.rollout import make_vector_env
from agents.policies.transformer import PolicyConfig, TransformerPolicy
from agents.sb3 import critic_reward as cr
from agents.sb3.policy import TransformerMaskablePolicy
from benchmarks.provenance import provenance
from seqenv.sb3 import SB3VecEnv
from seqenv.tasks import make_task

TASK = make_task("oracle-hmm")


class CountCritic(torch.nn.Module):
    """Energy ``-(number of token 5)``: ``r(x)`` counts the 5s."""

    def __init__(self):
        super().__init__()
        self.log_normalizer = torch.nn.Parameter(torch.zeros(()))

    def forward(self, tokens, mask):
        return -((tokens == 5) & mask).sum(1).float()


def reference(seed: int) -> TransformerPolicy:
    torch.manual_seed(1000 + seed)
    return TransformerPolicy(
        PolicyConfig(
            vocab_size=TASK.tokenizer.vocab_size, block_size=TASK.max_length + 1, n_layer=1, n_head=2, n_embd=32
        )
    ).eval()


def run_arm(arm: dict, seed: int, steps: int, logdir: str) -> dict:
    ref, critic = reference(seed), CountCritic()
    cfg = cr.PPOCriticConfig(
        checkpoint="-",
        critic="-",
        beta=arm["beta"],
        kl_target=arm.get("target"),
        kl_horizon=512,
        num_envs=16,
        n_steps=16,
        batch_size=64,
        n_epochs=2,
        learning_rate=1e-3,
        total_timesteps=steps,
        seed=seed,
        logdir=logdir,
        progress=False,
    )
    if arm.get("old"):  # the configuration before issue 25: the whole reward through VecNormalize, no target_kl
        reward = cr.CriticKLReward(SB3VecEnv(make_vector_env(TASK, 16, "cpu")), critic, ref, arm["beta"], "cpu")
        env = VecNormalize(VecMonitor(reward), norm_obs=False, norm_reward=True, gamma=1.0)
        ppo = MaskablePPO(
            TransformerMaskablePolicy,
            env,
            learning_rate=1e-3,
            n_steps=16,
            batch_size=64,
            n_epochs=2,
            gamma=1.0,
            gae_lambda=0.95,
            clip_range=0.2,
            ent_coef=0.0,
            seed=seed,
            device="cpu",
            policy_kwargs=dict(policy_config=ref.config.to_dict()),
        )
        ppo.policy.actor.load_state_dict(ref.state_dict())
        reward.policy = ppo.policy.actor
        callback = cr.RewardTermsCallback(reward)
    else:
        ppo, reward, callback = cr.make_ppo(cfg, ref, ref.config.to_dict(), critic, TASK, "cpu")
    ppo.learn(steps, callback=callback)
    m = cr.evaluate(ppo.policy.actor, ref, critic, TASK, reward.beta, 1024, "cpu", seed=seed)
    return {
        "kl_to_init": m["kl_to_init"],
        "critic_reward": m["critic_reward"],
        "mean_length": m["mean_length"],
        "final_beta": reward.beta,
    }


ARMS = {
    "k1, β=0.1": {"beta": 0.1},
    "k1, β=1": {"beta": 1.0},
    "k1, β=10": {"beta": 10.0},
    "old (VecNormalize), β=0.1": {"beta": 0.1, "old": True},
    "old (VecNormalize), β=1": {"beta": 1.0, "old": True},
    "old (VecNormalize), β=10": {"beta": 10.0, "old": True},
    "adaptive, KL*=0.2": {"beta": 1.0, "target": 0.2},
    "adaptive, KL*=1.0": {"beta": 1.0, "target": 1.0},
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=4096)
    p.add_argument("--out", default="benchmarks/results/ppo_kl_control")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    start, rows = time.time(), {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, arm in ARMS.items():
            rows[name] = [run_arm(arm, s, args.steps, tmp) for s in args.seeds]
            print(name, rows[name], flush=True)
    Path(args.out + ".json").write_text(
        json.dumps(
            {
                "args": vars(args),
                "rows": rows,
                "wall_s": time.time() - start,
                "provenance": provenance("cpu", {TASK.name: TASK.corpus_hash}),
            },
            indent=2,
        )
        + "\n"
    )
    keys = ("kl_to_init", "critic_reward", "mean_length", "final_beta")

    def cell(vals):
        return f"{statistics.mean(vals):.3f} ± {statistics.stdev(vals):.3f}" if len(vals) > 1 else f"{vals[0]:.3f}"

    lines = ["| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(cell([m[k] for m in ms]) for k in keys) + " |" for name, ms in rows.items()]
    Path(args.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
