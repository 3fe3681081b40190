"""Policies, multi-task rollouts with GAE, and the PPO trainer (knows nothing of grouping)."""
