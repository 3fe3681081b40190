"""Where the networks live: ``auto`` is CUDA when a GPU is available, the CPU otherwise.

Only the learning steps use the device (PPO updates in ``rl.ppo.train``, per-sample gradients
in the features stage); environment rollouts always run on the CPU (``rl.rollout``), where a
small policy acting on a handful of environments is fastest.
"""

from __future__ import annotations

import torch

from ..errors import UserError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` -> ``cuda`` when available, else ``cpu``; ``cuda`` without a GPU is a user error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda":
        if not torch.cuda.is_available():
            raise UserError("device 'cuda' was requested but no CUDA GPU is available; use device = \"auto\" or \"cpu\"")
        return torch.device("cuda")
    raise UserError(f"device must be one of {', '.join(DEVICES)}, got {spec!r}")
