"""Soak test of kill -9 and resume (issue 22): a long run killed with SIGKILL at random points, each resumed.

A reference ``spiral run`` (closed loop, oracle world generator with injected failures, report on) runs once
uninterrupted. Then each trial starts the same command, kills it with SIGKILL at a random time after its run folder
appears, and resumes it with ``spiral run --resume`` (or reruns the command when the kill came before the folder
was complete) until it finishes. Even trials kill inside the loop: once the journal holds k lines (k uniform over
the reference's attempts), after a random part of one attempt's time (mid-generation, mid-segment write, mid-append).
Odd trials kill at a time uniform over the reference's whole working phase, which adds the final mp4, record.json
and report.html. A trial whose run ended before its kill time is drawn again, so every trial is a kill. A trial passes when the kept segments are byte
for byte the reference's (so the final video's frames are), final.mp4 decodes to those frames, and no journaled
attempt was generated twice (zero regenerated accepted segments).

    nice -n 10 python benchmarks/soak_resume.py             # 20 kills (~6 min on a shared 2-core CPU)
    python benchmarks/soak_resume.py --kills 5

Prints a table and writes benchmarks/results/soak_resume.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import parser, write_result

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ORACLE = ROOT / "configs" / "run" / "tabletop-oracle.yaml"
GOAL = "put every block in the box and close it, then turn on the lamp"
# 4 plan versions and ~20 attempts; segment videos on, so kills also land in per-attempt mp4 writes
ARGS = ["--scene", "7", "--seed", "0", "--config", str(ORACLE), "--set", "generator.options.failure_rate=0.5",
        "--set", "loop.max_replans=8", "--set", "output.segment_videos=true"]


def _cmd(out: Path, resume: bool = False) -> list[str]:
    base = [sys.executable, "-m", "spiral.cli", "run"]
    return base + ["--resume", str(out)] if resume else base + [GOAL, "--out", str(out), *ARGS]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _finish(out: Path) -> int:
    """Run (resume, or restart a creation cut short) until the run ends; its exit code."""
    resume = (out / "meta.json").is_file()
    p = subprocess.run(_cmd(out, resume), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=900)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{'resume' if resume else 'rerun'} failed ({p.returncode}): {p.stderr.decode()[-400:]}")
    return p.returncode


def _journal_keys(out: Path) -> list[tuple]:
    from spiral import atomic

    return [(x["plan_version"], x["step"], x["attempt"]) for x in atomic.read_jsonl(out / "attempts.jsonl")]


def _compare(out: Path, ref: Path) -> dict:
    from spiral.compose import compose
    from spiral.rundir import load_frames
    from spiral.video import read_video

    rec, want = (json.loads((d / "record.json").read_text()) for d in (out, ref))
    same_segments = rec["accepted"] == want["accepted"] and all(
        (out / p).read_bytes() == (ref / p).read_bytes() for p in want["accepted"])
    frames = compose([load_frames(ref / p) for p in want["accepted"]], 0)[0]
    got = read_video(out / "final.mp4").astype(int)
    keys = _journal_keys(out)
    return {"status": rec["status"], "same_kept_segments": bool(same_segments),
            "final_mp4_matches_frames": bool(got.shape == frames.shape and np.abs(got - frames).mean() < 3),
            "final_mp4_bytes_identical": (out / "final.mp4").read_bytes() == (ref / "final.mp4").read_bytes(),
            "regenerated_journaled_attempts": len(keys) - len(set(keys)), "attempts": len(keys),
            "torn_tail_moved_aside": (out / "attempts.jsonl.torn").is_file()}


def main() -> None:
    ap = parser(__doc__, "soak_resume.json")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times")
    ap.add_argument("--work", default="/tmp/spiral-soak-resume", help="scratch folder (deleted first)")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    rng = np.random.default_rng(args.seed)

    ref = work / "ref"
    t0 = time.perf_counter()
    p = subprocess.Popen(_cmd(ref), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    while p.poll() is None and not (ref / "meta.json").is_file():
        time.sleep(0.005)
    t_meta = time.perf_counter()
    lines, t_last = 0, t_meta
    while p.poll() is None:
        n = (ref / "attempts.jsonl").read_bytes().count(b"\n") if (ref / "attempts.jsonl").is_file() else 0
        if n > lines:
            lines, t_last = n, time.perf_counter()
        time.sleep(0.002)
    assert p.wait(timeout=900) in (0, 1), p.stderr.read().decode()
    active, loop_phase = time.perf_counter() - t_meta, t_last - t_meta
    ref_info = {"attempts": len(_journal_keys(ref)), "status": json.loads((ref / "record.json").read_text())["status"],
                "startup_seconds": round(t_meta - t0, 2), "loop_seconds": round(loop_phase, 2),
                "working_seconds": round(active, 2)}

    trials = []
    per_attempt = loop_phase / max(1, ref_info["attempts"])
    while len(trials) < args.kills:
        i = len(trials)
        out = work / f"trial{i:02d}"
        shutil.rmtree(out, ignore_errors=True)
        target = int(rng.integers(0, ref_info["attempts"])) if i % 2 == 0 else None
        delay = float(rng.uniform(0, per_attempt if target is not None else active))
        p = subprocess.Popen(_cmd(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while p.poll() is None and not (out / "meta.json").is_file():
            time.sleep(0.002)
        while target is not None and p.poll() is None and len(_journal_keys(out)) < target:
            time.sleep(0.002)
        time.sleep(delay)
        if p.poll() is not None:  # finished before the kill: not a kill, draw this trial again
            continue
        p.send_signal(signal.SIGKILL)
        p.wait()
        at = {"journal_lines_at_kill": len(_journal_keys(out)) if (out / "attempts.jsonl").is_file() else 0,
              "final_mp4_at_kill": (out / "final.mp4").is_file(), "record_at_kill": (out / "record.json").is_file()}
        _finish(out)
        row = {"trial": i, "phase": "loop" if target is not None else "whole run", "after_line": target,
               "delay_seconds": round(delay, 3), **at, **_compare(out, ref)}
        trials.append(row)
        print(f"trial {i:2d} ({row['phase']}): killed with {at['journal_lines_at_kill']} journal lines"
              f"{', after final.mp4' if at['final_mp4_at_kill'] else ''} -> kept segments identical "
              f"{row['same_kept_segments']}, regenerated {row['regenerated_journaled_attempts']}", flush=True)
        shutil.rmtree(out)

    ok = [t for t in trials if t["same_kept_segments"] and t["final_mp4_matches_frames"]
          and t["regenerated_journaled_attempts"] == 0]
    summary = {"reference": ref_info, "kills": len(trials),
               "identical_after_resume": len(ok),
               "regenerated_journaled_attempts": sum(t["regenerated_journaled_attempts"] for t in trials),
               "final_mp4_bytes_identical": sum(t["final_mp4_bytes_identical"] for t in trials),
               "killed_after_final_mp4": sum(t["final_mp4_at_kill"] for t in trials),
               "killed_mid_loop": sum(0 < t["journal_lines_at_kill"] < ref_info["attempts"] for t in trials),
               "torn_tails_repaired": sum(t["torn_tail_moved_aside"] for t in trials),
               "command": "python benchmarks/soak_resume.py" + (f" --kills {args.kills}" if args.kills != 20 else "")}
    from rich.console import Console
    from rich.table import Table

    t = Table(title="SIGKILL at random points, then resume")
    for k, v in summary.items():
        if k != "reference":
            t.add_row(k, str(v))
    t.add_row("reference attempts / loop s / working s",
              f"{ref_info['attempts']} / {ref_info['loop_seconds']} / {ref_info['working_seconds']}")
    Console().print(t)
    write_result(args.json, {"summary": summary, "trials": trials})
    shutil.rmtree(work, ignore_errors=True)
    if len(ok) != len(trials):
        raise SystemExit(f"{len(trials) - len(ok)} of {len(trials)} trials did not resume to the reference")


if __name__ == "__main__":
    main()
