"""Estimation of task affinities (METHOD.md stages 2-4): gradient features, random projection,
subset sampling, batched surrogate fits, evaluators of ``f(S, i)`` and the affinity ``U``."""
