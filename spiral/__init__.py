"""SPIRAL: long-horizon, action-conditioned video generation with planning and reflective agents."""

from typing import Any

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """``spiral.run(goal, image=..., scene=..., config=..., out=...)`` → RunRecord (see :func:`spiral.api.run`)."""
    from spiral.api import run as _run

    return _run(*args, **kwargs)
