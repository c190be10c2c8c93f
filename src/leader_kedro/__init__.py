"""leader_kedro: LEADER medication recommendation (LLM teacher distilled into an ID student)."""

__version__ = "0.1.0"
