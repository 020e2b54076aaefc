"""Fuzzing at benchmark size (issue 22): >= 1,000 generated cases per input kind through the properties of
tests/fuzz_props.py (CI runs 200 per kind): config YAML, --set strings, manifests, suite files, journals, LLM plan
replies, VLM verdict replies. A case passes when the parser returns a value that reflects the whole input or raises
one of our one-line validation errors; anything else is a crash (hypothesis prints the shrunk input).

    nice -n 10 python benchmarks/fuzz.py                 # 1,000 per kind (~10 min on a shared 2-core CPU)
    python benchmarks/fuzz.py --examples 300             # quicker

Prints a table and writes benchmarks/results/fuzz.json (cases run, failures and seconds per kind).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from benchlib import parser, write_result

ROOT = Path(__file__).resolve().parents[1]
KINDS = {  # test in tests/test_fuzz.py -> the kind fuzz_props.CASES counts
    "test_config_yaml": "config YAML", "test_set_strings": "--set strings", "test_manifests": "manifests",
    "test_suite_files": "suite files", "test_journal_lines": "journal lines",
    "test_llm_plan_replies": "LLM plan replies", "test_vlm_verdict_replies": "VLM verdict replies",
}


class _Recorder:
    """pytest plugin: outcome and seconds of each fuzz test."""

    def __init__(self) -> None:
        self.rows: dict[str, dict] = {}

    def pytest_runtest_logreport(self, report) -> None:  # noqa: ANN001 - pytest's hook signature
        if report.when == "call":
            name = report.nodeid.split("::")[-1]
            self.rows[name] = {"outcome": report.outcome, "seconds": round(report.duration, 1),
                               "failure": str(report.longrepr).splitlines()[-1] if report.failed else None}


def main() -> None:
    ap = parser(__doc__, "fuzz.json")
    ap.add_argument("--examples", type=int, default=1000, help="generated cases per kind")
    args = ap.parse_args()
    os.environ.update(SPIRAL_FUZZ_PROFILE="bench", SPIRAL_FUZZ_EXAMPLES=str(args.examples), OMP_NUM_THREADS="1")
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import fuzz_props
    import pytest

    rec = _Recorder()
    t0 = time.perf_counter()
    code = pytest.main([str(ROOT / "tests" / "test_fuzz.py"), "-q", "-p", "no:cacheprovider"], plugins=[rec])
    rows = [{"kind": kind, "test": test, "cases": fuzz_props.CASES[kind], **rec.rows.get(test, {"outcome": "missing"})}
            for test, kind in KINDS.items()]
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"fuzzing: {args.examples} examples per kind (hypothesis)")
    for c in ("kind", "cases", "outcome", "seconds"):
        t.add_column(c)
    for r in rows:
        t.add_row(r["kind"], str(r["cases"]), r["outcome"], str(r.get("seconds")))
    Console().print(t)
    write_result(args.json, {"examples_per_kind": args.examples, "rows": rows, "exit_code": int(code),
                          "wall_seconds": round(time.perf_counter() - t0, 1),
                          "command": f"python benchmarks/fuzz.py --examples {args.examples}"})
    if code != 0 or any(r["cases"] < args.examples for r in rows):
        raise SystemExit(f"fuzzing failed (pytest exit {int(code)}) or ran fewer cases than asked")


if __name__ == "__main__":
    main()
