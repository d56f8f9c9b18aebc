"""Fine-tune a policy with MaskablePPO in SeqGen-v0, reward = an NCE critic, KL penalty to the start.

    python scripts/ppo_critic.py --checkpoint runs/mle-oracle-hmm/checkpoint.pt \\
        --critic runs/nce-oracle-hmm/checkpoint.pt --total-timesteps 200000 --logdir runs/ppo-critic

The objective, the KL reward and what is logged: :mod:`agents.sb3.critic_reward`.
"""

from __future__ import annotations

import sys

import tyro

from agents.common.evaluation import SUMMARY_COLUMNS, format_metrics_table
from agents.sb3.critic_reward import PPOCriticConfig, run


def main(argv: "list[str] | None" = None) -> dict:
    cfg = tyro.cli(PPOCriticConfig, args=argv, description=__doc__)
    metrics = run(cfg)
    columns = ("critic_reward", "kl_to_init", "objective", *SUMMARY_COLUMNS)
    print(format_metrics_table({"start (π0)": metrics["before"], f"ppo (β={cfg.beta})": metrics["after"]},
                               columns=columns))
    print(f"\nrun directory: {cfg.logdir}\nTensorBoard:   tensorboard --logdir {cfg.logdir}")
    return metrics


if __name__ == "__main__":
    main(sys.argv[1:])
