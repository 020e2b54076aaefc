"""The benchmark's reserved seed ranges, re-exported from :mod:`spiral.world.seeds` (their one home, below the
benchmark so that ``spiral.world``'s task sampler can read them without importing ``spiral.bench``)."""

from __future__ import annotations

from spiral.world.seeds import (
    BENCH_SEED_MAX,
    BENCH_SEED_MIN,
    PLANNER_QUESTIONS,
    SUITE_DEV,
    SUITE_SMOKE,
    SUITE_V1,
    SUITE_V2,
    TESTS,
    is_reserved,
)

__all__ = ["BENCH_SEED_MAX", "BENCH_SEED_MIN", "PLANNER_QUESTIONS", "SUITE_DEV", "SUITE_SMOKE", "SUITE_V1", "SUITE_V2",
           "TESTS", "is_reserved"]
