"""SPIRAL: long-horizon, action-conditioned video generation with planning and reflective agents."""

import os
from typing import Any

# With OpenMP's default busy-wait policy, 2 torch threads ran 10–25× slower than 1 on a shared 2-core machine
# (measured: 458 ms vs 34 ms per tiny-generator forward); passive waiting fixes it. Set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def run(*args: Any, **kwargs: Any) -> Any:
    """``spiral.run(goal, image=..., scene=..., config=..., out=...)`` → RunRecord (see :func:`spiral.api.run`)."""
    from spiral.api import run as _run

    return _run(*args, **kwargs)
