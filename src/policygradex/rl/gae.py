"""Generalized advantage estimation with correct time-limit handling.

For a transition (s_t, a_t, r_t, s_{t+1}):

    delta_t = r_t + gamma * V(s_{t+1}) * (1 - terminated_t) - V(s_t)
    A_t     = delta_t + gamma * lambda * (1 - done_t) * A_{t+1}

where ``done_t = terminated_t or truncated_t``.  On a time-limit truncation the episode did
not end in the MDP, so the next state's value is bootstrapped (``terminated_t = 0``) while
the recursion is still cut (``done_t = 1``): s_{t+1} is then the episode's final observation,
not the first observation of the next episode.  ``next_values[t]`` is V of that true next
state for every t, so the function needs no special cases.
"""

from __future__ import annotations

import torch


def gae(rewards: torch.Tensor, values: torch.Tensor, next_values: torch.Tensor, terminated: torch.Tensor,
        dones: torch.Tensor, gamma: float, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Advantages and returns (A + V), all tensors shaped [T, E]."""
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    not_term = 1.0 - terminated.float()
    not_done = 1.0 - dones.float()
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] * not_term[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        adv[t] = last
    return adv, adv + values
