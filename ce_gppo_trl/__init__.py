"""Entropy-controlling RL for LLM reasoning on top of TRL's GRPOTrainer."""

__version__ = "0.1.0"
