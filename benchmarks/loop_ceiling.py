"""The ceiling a loop can reach with a generator that cannot draw some moves: of each bench case, can *any* plan
reach the goal without those moves? (issue 21: "strictly higher on long cases").

A closed loop can beat plan-only only on cases some plan can finish with moves the generator draws. `tiny` draws
none of yellow → box and green → red (0 / 16 faithful at every guidance scale, `tiny.md`; `by_combination` in
benchmarks/results/tiny_generator_quality.json), so a case whose every plan needs one of them is out of reach of
plan-only, the closed loop and any other loop alike. This script plans every case of one or more bench run folders
with the exact planner, once as is and once avoiding the undrawable moves, and counts per length class how many
cases each mode completes among the reachable and the unreachable ones (judge-read and faithful).

    python benchmarks/loop_ceiling.py runs/v1-tiny runs/v2-tiny            # folders of `spiral bench`
    python benchmarks/loop_ceiling.py runs/v1-tiny --undrawable yellow_block:box,green_block:red_block

Writes benchmarks/results/loop_ceiling.json (per folder and length class: cases, reachable, and completions).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchlib import parser, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TINY_UNDRAWABLE = "yellow_block:box,green_block:red_block"


def undrawable_keys(spec: str) -> frozenset[tuple[int, int]]:
    """The planner's keys of ``block:destination`` moves (comma-separated)."""
    from spiral.planners.symbolic import _action_key

    keys = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        block, _, dest = item.partition(":")
        key = _action_key("move", (block, dest))
        if key is None:
            raise SystemExit(f"--undrawable: {item!r} is no move of the tabletop domain; write block:destination, "
                             "e.g. yellow_block:box")
        keys.add(key)
    return frozenset(keys)


def reachable(goal_text: str, scene: int, avoid: frozenset[tuple[int, int]]) -> bool:
    """Whether some plan from the case's first state reaches its goal without the ``avoid`` moves."""
    import numpy as np

    from spiral.planners.symbolic import PlanningError, SymbolicPlanner
    from spiral.world.goals import parse_goal
    from spiral.world.tasks import sample_state

    planner = SymbolicPlanner()
    state = sample_state(np.random.default_rng(scene))
    goal = planner.resolve(parse_goal(goal_text), state)
    try:
        planner.solve_stages(state, goal, 0, avoid)
        return True
    except PlanningError as e:
        if e.reason != "avoided":
            raise
        return False


def ceiling(folder: Path, avoid: frozenset[tuple[int, int]]) -> dict[str, Any]:
    """Per length class: cases, reachable ones, and each mode's completions among reachable / unreachable."""
    res = json.loads((folder / "results.json").read_text())
    bench = json.loads((folder / "bench.json").read_text())
    from spiral.bench.suite import load_suite

    goals = {c.id: (c.goal, c.scene) for c in load_suite(bench["config"]["suite"], check_plans=False).cases}
    rows: dict[str, dict[str, Any]] = defaultdict(lambda: defaultdict(int))
    seen: dict[str, bool] = {}
    for r in res["cases"]:
        cid = r["case_id"]
        if cid not in seen:
            seen[cid] = reachable(*goals[cid], avoid)
            for cls in (r["length_class"], "all"):
                rows[cls]["cases"] += 1
                rows[cls]["reachable"] += seen[cid]
        where = "reachable" if seen[cid] else "unreachable"
        m = r.get("metrics") or {}
        for cls in (r["length_class"], "all"):
            rows[cls][f"{r['mode']}:{where}:task_completion"] += int(m.get("task_completion") == 1.0)
            rows[cls][f"{r['mode']}:{where}:faithful_task_completion"] += int(m.get("faithful_task_completion") == 1.0)
    return {cls: dict(v) for cls, v in rows.items()}


def _done(row: dict[str, Any], mode: str, where: str) -> str:
    """'judge-read / faithful' completions of one mode on one side of the ceiling."""
    return f"{row.get(f'{mode}:{where}:task_completion', 0)} / {row.get(f'{mode}:{where}:faithful_task_completion', 0)}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = parser(__doc__, "loop_ceiling.json")
    ap.add_argument("folders", type=Path, nargs="+", help="run folders of `spiral bench` (closed_loop and plan_only)")
    ap.add_argument("--undrawable", default=TINY_UNDRAWABLE,
                    help=f"block:destination moves the generator cannot draw (default: tiny's, {TINY_UNDRAWABLE})")
    args = ap.parse_args(argv)
    avoid = undrawable_keys(args.undrawable)
    out: dict[str, Any] = {"undrawable": args.undrawable, "folders": {}}
    print("| folder | length | cases | reachable | plan-only: reachable done (judge / faithful) | closed loop: "
          "reachable done (judge / faithful) | plan-only: unreachable done (judge / faithful) | closed loop: "
          "unreachable done (judge / faithful) |")
    print("|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        rows = ceiling(folder, avoid)
        out["folders"][folder.name] = rows
        for cls in [c for c in ("short", "medium", "long", "xlong", "all") if c in rows]:
            r = rows[cls]
            print(f"| {folder.name} | {cls} | {r['cases']} | {r['reachable']} | {_done(r, 'plan_only', 'reachable')} "
                  f"| {_done(r, 'closed_loop', 'reachable')} | {_done(r, 'plan_only', 'unreachable')} "
                  f"| {_done(r, 'closed_loop', 'unreachable')} |")
    write_result(args.json, out)
    return out


if __name__ == "__main__":
    main()
