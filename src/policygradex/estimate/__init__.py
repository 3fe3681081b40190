"""Stage 3-4: per-subset surrogate fits, subset sampling and affinity evaluators."""
