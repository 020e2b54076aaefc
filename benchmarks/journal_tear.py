"""Journal tear: cut a real run's journal at every byte offset and resume each copy to the end (issue 22).

A crash mid-append leaves ``attempts.jsonl`` cut at some byte. For every offset k of a real journal (a
closed-loop oracle run with a re-plan) a copy of the run folder gets the journal
cut at k, loses the files written after the journal (final.mp4, record.json, report.html), and is resumed
with ``spiral.api.run(resume=...)``. Each resumed run must end with the reference's kept segments byte for
byte (hence the same final video), and no attempt may be journaled twice.

    nice -n 10 python benchmarks/journal_tear.py            # every offset (~2,300 resumes, ~5 min)
    python benchmarks/journal_tear.py --every 50            # every 50th offset (quick look)

Prints a table and writes benchmarks/results/journal_tear.json. tests/test_journal.py checks the repair at
every offset and a full resume at the offsets where the repaired state changes.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import parser, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ORACLE = ROOT / "configs" / "run" / "tabletop-oracle.yaml"
GOAL = "turn on the lamp and open the box"
ARGS = dict(scene=4, seed=0, config=ORACLE, overrides=["generator.options.failure_rate=0.5", "output.report=false"])
WRITTEN_AFTER_JOURNAL = ("final.mp4", "record.json", "report.html")


def reference_run(out: Path) -> Path:
    """The run whose journal is cut (3 attempts: a re-plan, then two accepted steps of plan v1)."""
    from spiral.api import run

    run(GOAL, out=out, **ARGS)
    return out


def repair_at(reference: Path, journal: bytes, k: int, scratch: Path) -> tuple[bytes, bytes]:
    """Open a copy of ``reference`` whose journal is cut at byte ``k``; returns (journal, .torn) after opening."""
    from spiral.rundir import RunDir

    if not (scratch / "meta.json").is_file():
        shutil.copytree(reference, scratch)
    (scratch / "attempts.jsonl").write_bytes(journal[:k])
    torn = scratch / "attempts.jsonl.torn"
    torn.unlink(missing_ok=True)
    RunDir.open(scratch)
    return (scratch / "attempts.jsonl").read_bytes(), torn.read_bytes() if torn.is_file() else b""


def _video(out: Path) -> tuple[list[str], np.ndarray]:
    from spiral.compose import compose
    from spiral.rundir import load_frames

    accepted = json.loads((out / "record.json").read_text())["accepted"]
    return accepted, compose([load_frames(out / p) for p in accepted], 0)[0]


def resume_at(reference: Path, offsets: list[int], work: Path) -> list[dict]:
    """Resume a copy of ``reference`` cut at each offset; one result row per offset."""
    from spiral import atomic
    from spiral.api import run

    journal = (reference / "attempts.jsonl").read_bytes()
    want_accepted, want = _video(reference)
    rows = []
    for k in offsets:
        d = work / f"cut{k:06d}"
        shutil.copytree(reference, d)
        for name in WRITTEN_AFTER_JOURNAL:
            (d / name).unlink(missing_ok=True)
        (d / "attempts.jsonl").write_bytes(journal[:k])
        t = time.perf_counter()
        rec = run(resume=d)
        seconds = time.perf_counter() - t
        accepted, video = _video(d)
        keys = [(x["plan_version"], x["step"], x["attempt"]) for x in atomic.read_jsonl(d / "attempts.jsonl")]
        rows.append({"offset": k, "status": rec.status, "same_accepted": accepted == want_accepted,
                     "same_video": bool(video.shape == want.shape and np.array_equal(video, want)),
                     "no_duplicates": len(keys) == len(set(keys)), "final_mp4": (d / "final.mp4").is_file(),
                     "seconds": round(seconds, 4)})
        shutil.rmtree(d)
    return rows


def main() -> None:
    ap = parser(__doc__, "journal_tear.json")
    ap.add_argument("--every", type=int, default=1, help="resume every N-th offset (1: all)")
    ap.add_argument("--work", default="/tmp/spiral-journal-tear", help="scratch folder (deleted first)")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    ref = reference_run(work / "ref")
    journal = (ref / "attempts.jsonl").read_bytes()
    offsets = list(range(0, len(journal) + 1, args.every))
    t0 = time.perf_counter()
    rows = resume_at(ref, offsets, work)
    ok = [r for r in rows if r["same_video"] and r["same_accepted"] and r["no_duplicates"] and r["final_mp4"]]
    summary = {"journal_bytes": len(journal), "journal_lines": journal.count(b"\n"), "offsets_resumed": len(rows),
               "identical": len(ok), "failed_offsets": [r["offset"] for r in rows if r not in ok],
               "resume_seconds_mean": round(float(np.mean([r["seconds"] for r in rows])), 4),
               "wall_seconds": round(time.perf_counter() - t0, 1), "every": args.every,
               "command": "python benchmarks/journal_tear.py" + (f" --every {args.every}" if args.every > 1 else "")}
    from rich.console import Console
    from rich.table import Table

    t = Table(title="journal torn at every byte offset, then resumed")
    for k in ("journal_bytes", "journal_lines", "offsets_resumed", "identical", "resume_seconds_mean", "wall_seconds"):
        t.add_row(k, str(summary[k]))
    Console().print(t)
    by_status: dict[str, int] = {}
    for r in rows:
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
    summary["status_counts"] = by_status
    write_result(args.json, {"summary": summary, "failed_rows": [r for r in rows if r not in ok]})  # all rows: ~0.7 MB
    shutil.rmtree(work, ignore_errors=True)
    if len(ok) != len(rows):
        raise SystemExit(f"{len(rows) - len(ok)} offsets did not resume to the reference: {summary['failed_offsets'][:10]}")


if __name__ == "__main__":
    main()
