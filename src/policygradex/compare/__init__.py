"""``policygradex compare``: downstream per-group training against the paper's baselines.

``methods`` (the registry of named methods), ``train`` (per-group PPO under the per-task
budget rule), ``groupings`` (random, gradient-similarity and TAG groupings), ``pcgrad``
(gradient surgery hook), ``runner`` (caching, aggregation with 95% CIs, outputs), ``table``
(what the CLI prints).  See
``docs/compare.md``.
"""

from .methods import METHODS, CompareContext, Method, register
from .runner import compare
from .table import comparison_lines

__all__ = ["METHODS", "CompareContext", "Method", "register", "compare", "comparison_lines"]
