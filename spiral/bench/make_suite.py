"""Generate the shipped tabletop suites (``tabletop-v1``, ``tabletop-smoke``, ``tabletop-dev``, ``tabletop-v2``)
deterministically.

``python -m spiral.bench.make_suite`` rewrites ``spiral/bench/suites/*.json``;
``--check`` regenerates them in memory and fails if the committed files differ.

Balance: each length class (short 1–2, medium 3–5, long 6–8 steps) gets the same number of
cases, target lengths cycle through the class, and each case has a *focus* action type that
its optimal plan must contain, cycling through move / stack / box / open / close / lamp.
Half the cases of 2+ steps are multi-stage goals ("…, then …"). Scene seeds come from the
reserved ranges in :mod:`spiral.bench.seeds`, so no case shares a scene seed with training data.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from spiral.bench import seeds
from spiral.bench.suite import ACTION_TAGS, LENGTH_CLASSES, SUITES_DIR, plan_tags
from spiral.planners.symbolic import PlanningError, SymbolicPlanner
from spiral.world.domain import BLOCKS, BOX, SLOTS, Action, State
from spiral.world.goals import Goal, goal_to_text, parse_goal
from spiral.world.tasks import sample_state

FOCUS = ACTION_TAGS  # the v1 recipe cycles through every action type
_FILLERS = (("move", 3.0), ("stack", 3.0), ("box", 3.0), ("lid", 1.0), ("lamp", 1.0), ("out", 1.0))
VERSION = "1.0"
SHIPPED = ("tabletop-smoke", "tabletop-v1", "tabletop-dev", "tabletop-v2")




def _choice(rng: np.random.Generator, xs: list | tuple) -> str:
    return xs[int(rng.integers(len(xs)))]


def _clause(kind: str, rng: np.random.Generator, state: State) -> list[str] | None:
    """A goal clause of one type that is not already true in ``state`` (None when impossible)."""
    b = _choice(rng, BLOCKS)
    if kind == "move":
        slots = [s for s in SLOTS if state.where(b) != s]
        return [f"at({b}, {_choice(rng, slots)})"]
    if kind == "stack":
        c = _choice(rng, [x for x in BLOCKS if x != b and state.where(b) != x])
        return [f"on({b}, {c})"]
    if kind == "box":
        outside = [x for x in BLOCKS if state.where(x) != BOX]
        return [f"in({_choice(rng, outside)}, {BOX})"] if outside else None
    if kind == "open":
        return None if state.box_open else ["open(box)"]
    if kind == "close":
        return ["not open(box)"] if state.box_open else None
    if kind == "lid":
        return ["not open(box)" if rng.random() < 0.5 else "open(box)"]
    if kind == "lamp":
        return ["not on(lamp)" if state.lamp_on else "on(lamp)"]
    inside = state.in_box()  # "out"
    return [f"not in({_choice(rng, inside)}, {BOX})"] if inside else None


def _filler(rng: np.random.Generator, state: State) -> list[str] | None:
    w = np.array([x for _, x in _FILLERS])
    kind = _FILLERS[int(rng.choice(len(_FILLERS), p=w / w.sum()))][0]
    return _clause(kind, rng, state)


def sample_case(scene: int, focus: str, length: int, multi: bool, planner: SymbolicPlanner,
                tries: int = 40) -> tuple[Goal, list[Action], State] | None:
    """A goal for scene ``scene`` whose optimal plan has exactly ``length`` steps and uses ``focus``."""
    state = sample_state(np.random.default_rng(scene))
    rng = np.random.default_rng([scene, 17])
    first = _clause(focus, rng, state)
    if first is None:
        return None
    stages: list[list[str]] = [first]
    actions = _solve(planner, state, stages)
    if actions is None:
        return None
    for _ in range(tries):
        if len(actions) >= length:
            break
        clause = _filler(rng, state)
        if clause is None:
            continue
        if multi and len(stages) < 4 and (len(stages) == 1 or rng.random() < 0.4):
            trial = stages + [clause]
        else:
            trial = stages[:-1] + [stages[-1] + clause]
        got = _solve(planner, state, trial)
        if got is not None and len(got) <= length:
            stages, actions = trial, got
    if len(actions) != length or (len(stages) > 1) != multi:
        return None
    goal = Goal("", tuple(tuple(s) for s in stages))
    if focus not in plan_tags(state, goal, actions):
        return None
    return goal, actions, state


def _solve(planner: SymbolicPlanner, state: State, stages: list[list[str]]) -> list[Action] | None:
    try:
        goal = Goal("", tuple(tuple(s) for s in stages))
    except ValueError:
        return None
    if goal.satisfied(state) and len(goal.stages) == 1:
        return []
    try:
        return planner.solve(state, goal)
    except PlanningError:
        return None


V1_CLASSES = ("short", "medium", "long")  # tabletop-v1, -smoke and -dev: plans of 1–8 steps


def make_cases(seed_range: range, per_class: int, prefix: str = "") -> list[dict]:
    """Balanced cases over length classes and focus action types, from consecutive reserved scene seeds."""
    planner = SymbolicPlanner()
    cases: list[dict] = []
    scene = seed_range.start
    for cls in V1_CLASSES:
        lo, hi = LENGTH_CLASSES[cls]
        for i in range(per_class):
            length = lo + i % (hi - lo + 1)
            focus = FOCUS[i % len(FOCUS)]
            multi = length >= 2 and (i // len(FOCUS)) % 2 == 1 if per_class > len(FOCUS) else length >= 2 and i % 2 == 1
            while True:
                if scene not in seed_range:
                    raise RuntimeError(f"ran out of reserved scene seeds in {seed_range}")
                got = sample_case(scene, focus, length, multi, planner)
                scene += 1
                if got is not None:
                    break
            goal, actions, state = got
            text = goal_to_text(goal.stages, np.random.default_rng([scene - 1, 29]))
            parsed = parse_goal(text)
            assert len(planner.solve(state, parsed)) == length, (text, length)
            cases.append({"id": f"{prefix}{cls}-{i:03d}", "goal": text, "scene": scene - 1, "length_class": cls,
                          "n_steps": length, "tags": plan_tags(state, parsed, actions)})
    return cases


def make_suite(name: str) -> dict:
    """The full JSON object of a shipped suite."""
    if name == "tabletop-v1":
        rng, per = seeds.SUITE_V1, 50
        desc = "150 tabletop cases: 50 per length class, focus action types balanced within each class"
    elif name == "tabletop-smoke":
        rng, per = seeds.SUITE_SMOKE, 2
        desc = "6-case CI smoke subset: 2 per length class"
    elif name == "tabletop-dev":
        rng, per = seeds.SUITE_DEV, 12
        desc = ("36 tabletop cases (12 per length class) from their own scene seeds, for choosing options "
                "such as a sampler's without looking at tabletop-v1")
    elif name == "tabletop-v2":
        from spiral.bench import suite_v2

        rng = seeds.SUITE_V2
        desc = ("200 harder tabletop cases, 50 per length class (short 1-2, medium 3-5, long 6-8, xlong 9-12 steps): "
                "towers of up to four blocks, scene-relative goals (swap, next to, toggle) and goals phrased the way "
                "people type them; recipe: spiral/bench/suite_v2.py")
        return {"name": name, "version": VERSION, "world": "tabletop",
                "created_by": "python -m spiral.bench.make_suite (spiral/bench/suite_v2.py)",
                "description": desc, "scene_seeds": [rng.start, rng.stop - 1],
                "cases": suite_v2.make_cases(rng, 50)}
    else:
        raise ValueError(f"no recipe for suite {name!r}; known: {', '.join(SHIPPED)}")
    return {"name": name, "version": VERSION, "world": "tabletop",
            "created_by": "python -m spiral.bench.make_suite (spiral/bench/make_suite.py)",
            "description": desc, "scene_seeds": [rng.start, rng.stop - 1],
            "cases": make_cases(rng, per)}


def dumps(suite: dict) -> str:
    """Stable JSON text: one case per line keeps diffs readable."""
    head = {k: v for k, v in suite.items() if k != "cases"}
    lines = ",\n".join("    " + json.dumps(c) for c in suite["cases"])
    body = json.dumps(head, indent=2)[:-2]
    return f'{body},\n  "cases": [\n{lines}\n  ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=SUITES_DIR, help="folder to write the suites into")
    ap.add_argument("--check", action="store_true", help="fail if the committed suites differ from a fresh build")
    ap.add_argument("--only", default=None, help="build one suite by name")
    args = ap.parse_args(argv)
    names = [args.only] if args.only else list(SHIPPED)
    bad = 0
    for name in names:
        text = dumps(make_suite(name))
        path = args.out / f"{name}.json"
        if args.check:
            same = path.is_file() and path.read_text() == text
            print(f"{name}: {'up to date' if same else 'DIFFERS from a fresh build'}")
            bad += not same
        else:
            from spiral import atomic

            atomic.write_text(path, text)
            print(f"wrote {path} ({len(json.loads(text)['cases'])} cases)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
