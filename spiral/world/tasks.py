"""The tabletop task sampler: random valid layouts and goals of a chosen optimal length (DESIGN §4).

Training data (``spiral data build``, every trainer) draws its tasks here; benchmark scene seeds
(:mod:`spiral.world.seeds`) are never drawn. Goal texts come from :func:`spiral.world.goals.goal_to_text`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spiral.planners.symbolic import PlanningError, SymbolicPlanner
from spiral.world.domain import BLOCKS, BOX, SLOTS, State
from spiral.world.goals import Goal, _pick, goal_to_text
from spiral.world.grammar import table_literals as _table_literals
from spiral.world.seeds import is_reserved


@dataclass(frozen=True)
class Task:
    """A sampled tabletop task: initial state, goal and the optimal plan length."""

    id: str
    seed: int
    scene_seed: int
    state: State
    goal: Goal
    length: int


def sample_state(rng: np.random.Generator) -> State:
    """A random valid layout: blocks on slots, stacked or in the box; box open/closed; lamp on/off."""
    order = list(BLOCKS)
    rng.shuffle(order)
    loc: dict[str, str] = {}
    for b in order:
        used = set(loc.values())
        free = [s for s in SLOTS if s not in used]
        tops = [o for o in loc if loc[o] != BOX and o not in used]
        r = rng.random()
        if r < 0.25 or (not free and not tops):
            loc[b] = BOX
        elif (r < 0.55 and tops) or not free:
            loc[b] = tops[int(rng.integers(len(tops)))]
        else:
            loc[b] = free[int(rng.integers(len(free)))]
    return State.make(loc, box_open=bool(rng.random() < 0.5), lamp_on=bool(rng.random() < 0.5))


# goal clause types and their weights in sampled tasks
_CLAUSE_MIX = (("slot", 3.0), ("stack", 3.0), ("box", 3.0), ("lid", 1.0), ("lamp", 1.0), ("tidy", 0.7), ("out", 0.7),
               ("table", 0.3))


_MIX_KINDS = tuple(k for k, _ in _CLAUSE_MIX)
_MIX_CUM = np.cumsum([w for _, w in _CLAUSE_MIX]) / sum(w for _, w in _CLAUSE_MIX)


def _sample_clause(rng: np.random.Generator, state: State) -> list[str]:
    """One goal clause of a random type (weights in ``_CLAUSE_MIX``)."""
    kind = _MIX_KINDS[min(int(np.searchsorted(_MIX_CUM, rng.random(), side="right")), len(_MIX_KINDS) - 1)]
    b = _pick(rng, BLOCKS)
    if kind == "slot":
        return [f"at({b}, {_pick(rng, SLOTS)})"]
    if kind == "stack":
        return [f"on({b}, {_pick(rng, [x for x in BLOCKS if x != b])})"]
    if kind == "box":
        return [f"in({b}, {BOX})"]
    if kind == "lid":
        return ["not open(box)" if rng.random() < 0.5 else "open(box)"]
    if kind == "lamp":
        return ["not on(lamp)" if state.lamp_on else "on(lamp)"]
    if kind == "tidy":
        return [f"in({x}, {BOX})" for x in BLOCKS]
    if kind == "out":
        inside = state.in_box()
        return [f"not in({_pick(rng, inside)}, {BOX})"] if inside else [f"at({b}, {_pick(rng, SLOTS)})"]
    return _table_literals(b)


_MAX_STAGES = 4
_MAX_CLAUSES = 6


def sample_task(seed: int, min_steps: int = 1, max_steps: int = 8) -> Task:
    """A deterministic task for ``seed`` whose optimal plan has ``min_steps..max_steps`` actions.

    A target length is drawn uniformly first; clauses (each joined with "and" or "then")
    are added to a goal until its optimal plan reaches the target, and a fresh scene is
    tried on overshoot, so every length in range is about equally common. After many misses
    any length in range is accepted.
    """
    if not 0 <= min_steps <= max_steps:
        raise ValueError(f"need 0 <= min_steps <= max_steps, got {min_steps}..{max_steps}")
    planner = SymbolicPlanner()
    rng = np.random.default_rng(seed)
    target = int(rng.integers(min_steps, max_steps + 1))
    found: tuple | None = None
    for attempt in range(1000):
        scene_seed = int(rng.integers(0, 2**31 - 1))
        if is_reserved(scene_seed):  # benchmark scenes are never sampled for training data
            continue
        state = sample_state(np.random.default_rng(scene_seed))
        stages: list[list[str]] = []
        n = 0
        for _ in range(_MAX_CLAUSES):
            clause = _sample_clause(rng, state)
            if stages and (len(stages) >= _MAX_STAGES or rng.random() < 0.55):
                trial = stages[:-1] + [stages[-1] + clause]
            else:
                trial = stages + [clause]
            goal = Goal("", tuple(tuple(x) for x in trial))
            try:
                n_trial = len(planner.solve(state, goal))
            except PlanningError:
                continue  # e.g. two blocks sent to one slot: try another clause
            stages, n = trial, n_trial
            if n >= target:
                break
        if stages and min_steps <= n <= max_steps and (n == target or found is None):
            found = (scene_seed, state, Goal("", tuple(tuple(x) for x in stages)), n)
        if found is not None and (found[3] == target or attempt >= 200):
            break
    if found is None:
        raise RuntimeError(f"could not sample a task with {min_steps}..{max_steps} steps for seed {seed}")
    scene_seed, state, goal, n = found
    goal = Goal(goal_to_text(goal.stages, rng), goal.stages)
    return Task(id=f"tabletop-{seed:06d}", seed=seed, scene_seed=scene_seed, state=state, goal=goal, length=n)

