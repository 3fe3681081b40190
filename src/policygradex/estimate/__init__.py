"""Estimation of task affinities: per-subset performance estimates ``f`` to the affinity ``U``."""
