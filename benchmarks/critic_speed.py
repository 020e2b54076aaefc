"""Critic judge time per 9-frame 64×64 segment on CPU (mean, p95), successes and each failure kind.

The issue's budget is 50 ms per segment; the critic is called once per generation attempt in
the loop and G times per prompt in GRPO. The machine is shared, so the script also reports the
load average it ran under and the fastest call (closest to an idle machine).

    python benchmarks/critic_speed.py --segments 60 --out benchmarks/results/critic_speed.json
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.critics.tabletop import TabletopCritic
from spiral.memory import Memory
from spiral.types import Segment, SubAction
from spiral.world import domain
from spiral.world.render import FAILURES, Appearance, render_action
from spiral.world.tasks import sample_state


def _segments(n: int, seed: int, frames: int) -> list[tuple[Segment, SubAction, Memory, str]]:
    rng = np.random.default_rng([seed, 99])
    out = []
    kinds = (None, *FAILURES)
    for i in range(n):
        s = sample_state(rng)
        acts = domain.applicable_actions(s)
        a = acts[int(rng.integers(len(acts)))]
        f = kinds[i % len(kinds)]
        res = render_action(s, a, appearance=Appearance.sample(int(2**31 + rng.integers(2**30))),
                            seed=int(rng.integers(2**30)), frames=frames, failure=f)
        sub = SubAction(text=a.text(), verb=a.verb, objects=list(a.args), preconditions=domain.preconditions(s, a),
                        postconditions=domain.effects(s, a))
        out.append((Segment(frames=res.frames), sub, Memory.start(res.frames[0], s.to_dict()), f or "success"))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "critic_speed.json", threads="1,2",
                threads_help="torch thread counts to measure (1 is fastest on a shared CPU)")
    ap.add_argument("--segments", type=int, default=70)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    critic = TabletopCritic()
    segs = _segments(args.segments, 0, args.frames)
    runs = []
    for threads in [int(x) for x in args.threads.split(",")]:
        torch.set_num_threads(threads)
        for seg, sub, mem, _ in segs[:5]:  # warm-up: first calls build caches (lamp model, layouts, thread pool)
            critic.judge(seg, sub, mem)
        times: dict[str, list[float]] = {}
        load0 = os.getloadavg()[0]
        for _ in range(args.repeats):
            for seg, sub, mem, kind in segs:
                t = time.perf_counter()
                critic.judge(seg, sub, mem)
                times.setdefault(kind, []).append((time.perf_counter() - t) * 1000)
        load1 = os.getloadavg()[0]
        allt = np.concatenate([np.array(v) for v in times.values()])
        runs.append({
            "torch_threads": threads, "mean_ms": round(float(allt.mean()), 2),
            "p95_ms": round(float(np.percentile(allt, 95)), 2), "median_ms": round(float(np.median(allt)), 2),
            "min_ms": round(float(allt.min()), 2), "calls": int(len(allt)),
            "load_average": [round(load0, 2), round(load1, 2)],
            "rows": [{"kind": k, "n": len(v), "mean_ms": round(float(np.mean(v)), 2),
                      "p95_ms": round(float(np.percentile(v, 95)), 2)} for k, v in times.items()],
        })
    result = {"benchmark": "critic_speed", "frames_per_segment": args.frames, "resolution": 64, "budget_ms": 50.0,
              "runs": runs, "note": "each segment brings a new anchor frame (one extra recogniser call); in a run the "
                                    "anchor is fixed and cached"}
    table = Table(title=f"critic judge time per {args.frames}-frame 64×64 segment (CPU, ms)")
    for c in ("torch threads", "segment kind", "n", "mean", "p95"):
        table.add_column(c)
    for run in runs:
        for r in run["rows"]:
            table.add_row(str(run["torch_threads"]), r["kind"], str(r["n"]), f"{r['mean_ms']:.1f}", f"{r['p95_ms']:.1f}")
        table.add_row(str(run["torch_threads"]), "all", str(run["calls"]), f"{run['mean_ms']:.1f}", f"{run['p95_ms']:.1f}",
                      end_section=True)
    Console().print(table)
    for run in runs:
        print(f"{run['torch_threads']} thread(s): load average {run['load_average'][0]:.1f} → {run['load_average'][1]:.1f} "
              f"on {os.cpu_count()} cores; fastest call {run['min_ms']:.1f} ms")
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
