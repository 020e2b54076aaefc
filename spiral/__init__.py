"""SPIRAL: long-horizon, action-conditioned video generation with planning and reflective agents."""

__version__ = "0.1.0"
