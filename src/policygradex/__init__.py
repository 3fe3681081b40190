"""policygradex: which RL tasks to train together (PolicyGradEx, AAAI 2026)."""

__version__ = "0.1.0"
