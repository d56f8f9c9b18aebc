"""Stable-Baselines3 integration: the MaskablePPO policy whose actor is our transformer
(:mod:`agents.sb3.policy`) and PPO fine-tuning with an NCE critic's reward
(:mod:`agents.sb3.critic_reward`, ``scripts/ppo_critic.py``)."""
