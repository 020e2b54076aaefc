"""Choose the tiny generators' ``keep_tau`` on ``tabletop-dev``, not on the suite it is judged on.

``keep_tau`` (``spiral.generators.tiny.keep_unchanged``) sets each new pixel that lies within keep_tau of the
conditioning frame back to it, so the sampler's small errors on a still background do not add up over a plan
(drift). Too small a value keeps the errors; too large a value could erase a real but faint change. This
runs the benchmark (plan-only, independent judge) on ``tabletop-dev`` (its own scene seeds, none of
``tabletop-v1``'s) for each generator and value, and picks per generator the value with the lowest drift
whose step success is within ``--tolerance`` of the same sampler without it.

    python benchmarks/keep_tau_sweep.py                      # tiny and tiny-evolved, 5 values (~5 min, 2 cores)
    python benchmarks/keep_tau_sweep.py --generators tiny-evolved --values 0.06

Writes ``benchmarks/results/keep_tau_sweep.json`` and the run folders under ``runs/keep-tau/``.
"""

from __future__ import annotations

import time
from pathlib import Path

from benchlib import parser, write_result
from rich.console import Console
from rich.table import Table

from spiral.bench.runner import BenchConfig, run_bench

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs" / "run" / "tabletop.yaml"  # the embedded default; each generator is chosen by name on top of it
GENERATORS = ("tiny", "tiny-evolved")
METRICS = ("step_success", "task_completion", "drift_mean", "temporal_flickering", "motion_smoothness",
           "subject_consistency", "background_consistency")


def main(argv: list[str] | None = None) -> dict:
    ap = parser(__doc__, "keep_tau_sweep.json", run_folder=True)
    ap.add_argument("--suite", default="tabletop-dev")
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    ap.add_argument("--values", nargs="+", type=float, default=[0.03, 0.06, 0.1, 0.15],
                    help="keep_tau values ([-1, 1] units; 0.06 is ~8 grey levels), each against the sampler without")
    ap.add_argument("--tolerance", type=float, default=0.01, help="step success a value may cost")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "keep-tau")
    ap.add_argument("--resume", action="store_true", help="reuse the finished cases of runs already in --out")
    args = ap.parse_args(argv)

    rows, t0 = [], time.perf_counter()
    for gen in args.generators:
        for tau in [None, *args.values]:
            name = f"{gen}_{'none' if tau is None else tau}"
            overrides = [f"generator.name={gen}"] + ([] if tau is None else [f"generator.options.keep_tau={tau}"])
            res = run_bench(BenchConfig(suite=args.suite, out=str(args.out / name), modes=["plan_only"],
                                        config=str(CONFIG), overrides=overrides, workers=args.workers,
                                        resume=args.resume),
                            progress=False)
            every = res["summary"]["plan_only"]["all"]
            rows.append({"generator": gen, "keep_tau": tau, "n": every["step_success"]["n"],
                         **{m: round(every[m]["mean"], 5) for m in METRICS}})
    chosen = {}
    for gen in args.generators:
        mine = [r for r in rows if r["generator"] == gen]
        floor = mine[0]["step_success"] - args.tolerance
        ok = [r for r in mine[1:] if r["step_success"] >= floor]
        chosen[gen] = min(ok, key=lambda r: (r["drift_mean"], r["keep_tau"]))["keep_tau"] if ok else None

    table = Table(title=f"keep_tau on {args.suite}, plan-only (chosen: {chosen})")
    for col in ("generator", "keep_tau", *METRICS):
        table.add_column(col)
    for r in rows:
        table.add_row(r["generator"], str(r["keep_tau"]), *(f"{r[m]:.4f}" for m in METRICS))
    Console().print(table)
    out = {"suite": args.suite, "tolerance": args.tolerance, "chosen": chosen, "rows": rows,
           "seconds": round(time.perf_counter() - t0, 1), "workers": args.workers,
           "written": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_result(args.json, out, indent=1)
    return out


if __name__ == "__main__":
    main()
