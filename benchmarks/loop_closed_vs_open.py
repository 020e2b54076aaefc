"""Closed loop vs plan-only with the world generator injecting failures (issue #4 acceptance).

For sampled goals of 3–8 steps, runs the loop in ``closed_loop`` and ``plan_only`` mode with
the oracle world generator at a failure rate (default 0.3) and checks whether the goal is
reached by reading the final frame with the state recogniser and testing the goal's
predicates. Also reports generator calls per accepted step and the loop's overhead: the
share of wall time spent outside generator and critic calls.

    python benchmarks/loop_closed_vs_open.py --n 50 --failure-rate 0.3
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.api import run
from spiral.critics.recognizer import load_recognizer
from spiral.rundir import load_frames
from spiral.world.goals import parse_goal
from spiral.world.tasks import sample_task

# the loop is measured on the oracle generator with injected failures (known ground truth)
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"

BENCH_SEED_BASE = 20_000_000  # disjoint from dataset/training seeds


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "loop_closed_vs_open.json")
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--failure-rate", type=float, default=0.3)
    ap.add_argument("--min-steps", type=int, default=3)
    ap.add_argument("--max-steps", type=int, default=8)
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    judge = load_recognizer()
    rows: dict[str, list[dict]] = {"closed_loop": [], "plan_only": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.n):
            task = sample_task(BENCH_SEED_BASE + i, args.min_steps, args.max_steps)
            for mode in rows:
                out = Path(tmp) / f"{mode}-{i}"
                t = time.perf_counter()
                rec = run(task.goal.text, scene=task.scene_seed, out=out, mode=mode, seed=i, config=ORACLE,
                          overrides=[f"generator.options.failure_rate={args.failure_rate}"])
                wall = time.perf_counter() - t
                last = _last_frame(out, rec)
                reached = parse_goal(task.goal.text).satisfied(judge.read_state(last))
                c = rec.costs
                inside = c.get("generate_seconds", 0.0) + c.get("judge_seconds", 0.0)
                rows[mode].append({
                    "case": i, "steps": task.length, "status": rec.status, "goal_reached": bool(reached),
                    "generations": rec.counts["generations"], "accepted": rec.counts["accepted"],
                    "replans": rec.counts["replans"], "loop_wall_s": c["wall_seconds"], "api_wall_s": wall,
                    "overhead_share": 1.0 - inside / c["wall_seconds"] if c["wall_seconds"] else 0.0,
                })
    summary = {}
    for mode, rs in rows.items():
        gens = sum(r["generations"] for r in rs)
        acc = sum(r["accepted"] for r in rs)
        summary[mode] = {
            "goal_reached_rate": float(np.mean([r["goal_reached"] for r in rs])),
            "status_success_rate": float(np.mean([r["status"] == "success" for r in rs])),
            "generations_per_accepted_step": gens / max(acc, 1),
            "mean_replans": float(np.mean([r["replans"] for r in rs])),
            "overhead_share_mean": float(np.mean([r["overhead_share"] for r in rs])),
            "seconds_per_run": float(np.mean([r["loop_wall_s"] for r in rs])),
        }
    table = Table(title=f"{args.n} goals of {args.min_steps}–{args.max_steps} steps, world generator failure rate "
                        f"{args.failure_rate}")
    for col in ("mode", "goal reached", "gens / accepted step", "replans / run", "overhead share", "s / run"):
        table.add_column(col)
    for mode, s in summary.items():
        table.add_row(mode, f"{s['goal_reached_rate']:.2%}", f"{s['generations_per_accepted_step']:.2f}",
                      f"{s['mean_replans']:.2f}", f"{s['overhead_share_mean']:.1%}", f"{s['seconds_per_run']:.2f}")
    Console().print(table)
    result = {"benchmark": "loop_closed_vs_open", "args": {k: str(v) for k, v in vars(args).items()},
              "summary": summary, "runs": rows}
    write_result(args.json, result)
    return result


def _last_frame(out: Path, rec) -> np.ndarray:
    if not rec.accepted:
        from spiral.rundir import RunDir

        return RunDir(out).first_frame()
    return load_frames(out / rec.accepted[-1])[-1]


if __name__ == "__main__":
    main()
