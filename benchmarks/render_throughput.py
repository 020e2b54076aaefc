"""Tabletop rendering throughput (frames/s) by resolution, for successes and each failure kind.

Dataset building, recogniser training and the world generator all render on the fly, so
this is the budget every CPU-side pipeline starts from.

    python benchmarks/render_throughput.py --clips 200 --out benchmarks/results/render_throughput.json
"""

from __future__ import annotations

import time

import numpy as np
from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.world import domain
from spiral.world.render import FAILURES, Appearance, render_action
from spiral.world.tasks import sample_state


def _clips(n: int, seed: int) -> list[tuple]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        s = sample_state(rng)
        acts = domain.applicable_actions(s)
        out.append((s, acts[int(rng.integers(len(acts)))], Appearance.sample(int(rng.integers(1 << 30))),
                    int(rng.integers(1 << 30))))
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "render_throughput.json")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--sizes", default="32,64,128")
    args = ap.parse_args(argv)
    clips = _clips(args.clips, 0)
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        for failure in (None, *FAILURES):
            t = time.perf_counter()
            for s, a, look, seed in clips:
                render_action(s, a, appearance=look, seed=seed, size=size, frames=args.frames, failure=failure)
            dt = time.perf_counter() - t
            rows.append({"size": size, "failure": failure or "success",
                         "frames_per_s": round(args.clips * args.frames / dt, 1)})
    result = {"benchmark": "render_throughput", "clips": args.clips, "frames_per_clip": args.frames, "rows": rows}
    table = Table(title=f"rendering throughput ({args.clips} clips × {args.frames} frames, wall clock)")
    for c in ("size", "clip kind", "frames/s"):
        table.add_column(c)
    for r in rows:
        table.add_row(str(r["size"]), r["failure"], f"{r['frames_per_s']:.0f}")
    Console().print(table)
    write_result(args.json, result)
    return result


if __name__ == "__main__":
    main()
