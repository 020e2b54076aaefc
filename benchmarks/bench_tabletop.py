"""ActVideoGen-Bench on the full ``tabletop-v1`` suite: closed loop vs plan-only vs single-shot, timed.

Runs the three modes with a config (default ``configs/run/tabletop-oracle.yaml``, the oracle generator
that ``docs/bench_tabletop_v1.md`` reports; ``--config configs/run/tabletop.yaml`` for the tiny-evolved model), scored by the
independent judge recogniser, on local worker processes; resumable. Writes the benchmark folder
(``results.json``, ``summary.md``, plots), a JSON of timings + headline numbers, and — for a full
run — the summary into ``docs/bench_tabletop_v1.md``. Acceptance: ≤ 60 minutes on 2 CPU cores.

    python benchmarks/bench_tabletop.py                      # full suite, 2 workers (~the acceptance run)
    python benchmarks/bench_tabletop.py --limit 6 --out /tmp/bt6   # a quick check; docs untouched
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral import atomic
from spiral.bench.runner import MODES, BenchConfig, run_bench
from spiral.bench.suite import LENGTH_CLASSES

ROOT = Path(__file__).resolve().parent.parent
BUDGET_S = 3600


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "bench_tabletop.json", run_folder=True)
    ap.add_argument("--suite", default="tabletop-v1")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--limit", type=int, default=None, help="first N cases only (a check; docs are not written)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--ray", default=None, help="Ray address or 'local' instead of local processes")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "tabletop-v1")
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--config", default=os.path.relpath(ROOT / "configs" / "run" / "tabletop-oracle.yaml"),
                    help="YAML config (default: configs/run/tabletop-oracle.yaml)")
    ap.add_argument("--judge", default="recognizer")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    ap.add_argument("--docs", type=Path, default=None,
                    help="where to copy summary.md (default: docs/bench_tabletop_v1.md for a full run)")
    args = ap.parse_args(argv)

    cfg = BenchConfig(suite=args.suite, out=str(args.out), modes=args.modes.split(","), config=args.config,
                      overrides=args.overrides, limit=args.limit, judge=args.judge,
                      workers=args.workers, ray=args.ray, resume=args.resume)
    t0 = time.perf_counter()
    results = run_bench(cfg)
    wall = time.perf_counter() - t0
    summary = results["summary"]
    per_mode = {}
    for mode in cfg.modes:
        secs = [c["seconds"] for c in results["cases"] if c["mode"] == mode and c.get("seconds") is not None]
        per_mode[mode] = {
            "cases_ok": summary[mode]["n_ok"], "cases_failed": summary[mode]["n_failed"],
            "case_seconds_sum": round(sum(secs), 2),
            "task_completion": {cls: summary[mode][cls]["task_completion"] for cls in (*LENGTH_CLASSES, "all")},
            "calls_per_accepted_step": summary[mode]["all"]["calls_per_accepted_step"],
        }
    out = {"benchmark": "bench_tabletop", "suite": args.suite, "limit": args.limit, "workers": args.workers,
           "wall_seconds": round(wall, 2), "within_budget": wall <= BUDGET_S, "budget_seconds": BUDGET_S,
           "resumed": args.resume, "errors": len(results["errors"]), "modes": per_mode}
    write_result(args.json, out)

    docs = args.docs or (ROOT / "docs" / "bench_tabletop_v1.md" if args.limit is None else None)
    if docs is not None:
        head = (f"<!-- written by benchmarks/bench_tabletop.py: {len(results['cases'])} runs in {wall / 60:.1f} min "
                f"on {args.workers} workers ({'resumed' if args.resume else 'one go'}) -->\n\n")
        atomic.write_text(docs, head + (Path(args.out) / "summary.md").read_text())
        for png in ("success_by_length.png", "cost_by_mode.png"):
            if (Path(args.out) / png).is_file():
                shutil.copyfile(Path(args.out) / png, docs.parent / f"bench_tabletop_v1_{png}")
        text = docs.read_text().replace("](success_by_length.png)", "](bench_tabletop_v1_success_by_length.png)")
        atomic.write_text(docs, text.replace("](cost_by_mode.png)", "](bench_tabletop_v1_cost_by_mode.png)"))

    con = Console()
    t = Table(title=f"{args.suite}: task completion, mean [95 % CI] — {wall:.0f} s wall "
                    f"({'within' if wall <= BUDGET_S else 'OVER'} the {BUDGET_S // 60}-minute budget)")
    t.add_column("mode")
    for cls in (*LENGTH_CLASSES, "all"):
        t.add_column(cls)
    t.add_column("calls / accepted step")
    for mode, r in per_mode.items():
        cells = []
        for cls in (*LENGTH_CLASSES, "all"):
            iv = r["task_completion"][cls]
            cells.append("–" if iv["mean"] is None else f"{iv['mean']:.2f} [{iv['lo']:.2f}, {iv['hi']:.2f}]")
        c = r["calls_per_accepted_step"]
        t.add_row(mode, *cells, "–" if c["mean"] is None else f"{c['mean']:.2f}")
    con.print(t)
    con.print(f"results: {args.out / 'results.json'}; json: {args.json}" + (f"; docs: {docs}" if docs else ""))
    if results["errors"]:
        con.print(f"[red]{len(results['errors'])} runs failed[/], first: {results['errors'][0]}", highlight=False)
    print(json.dumps({k: out[k] for k in ("wall_seconds", "within_budget", "errors")}))
    return out


if __name__ == "__main__":
    main()
