"""``spiral data stats``: what a dataset holds — counts, durations and how long its steps are.

Read from the manifest and the videos' headers (nothing is decoded), over the lines ``check_dataset`` finds usable;
the bad lines are counted, not guessed at.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from spiral.data.format import check_dataset
from spiral.video import video_info

# step lengths in seconds: [0, 0.5), [0.5, 1), ... [64, ∞)
STEP_BINS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


def _bin_label(i: int) -> str:
    lo = STEP_BINS[i]
    hi = STEP_BINS[i + 1] if i + 1 < len(STEP_BINS) else None
    return f"{lo:g}–{hi:g} s" if hi is not None else f"≥ {lo:g} s"


def dataset_stats(root: str | Path) -> dict[str, Any]:
    """Counts (episodes, steps, videos, per split and source, text-only steps), durations (video seconds, step
    seconds: total, mean, median, min, max) and histograms of step length (seconds) and of steps per episode."""
    root = Path(root)
    report = check_dataset(root, check_videos=True, decode=False)
    eps = report.episodes
    step_sec = np.array([(s.end_frame - s.start_frame + 1) / e.fps for e in eps for s in e.steps], dtype=float)
    step_frames = np.array([s.end_frame - s.start_frame + 1 for e in eps for s in e.steps], dtype=float)
    video_sec: dict[str, float] = {}
    for e in eps:
        if e.video not in video_sec:
            video_sec[e.video] = video_info(root / e.video)["frames"] / e.fps
    per_ep = Counter(len(e.steps) for e in eps)
    hist = Counter(int(np.searchsorted(STEP_BINS, x, side="right") - 1) for x in step_sec)

    def summary(a: np.ndarray) -> dict[str, float | None]:
        if not a.size:
            return {"total": 0.0, "mean": None, "median": None, "min": None, "max": None}
        return {"total": float(a.sum()), "mean": float(a.mean()), "median": float(np.median(a)),
                "min": float(a.min()), "max": float(a.max())}

    return {
        "root": str(root),
        "episodes": len(eps),
        "bad_lines": len(report.errors),
        "steps": int(step_sec.size),
        "text_only_steps": sum(1 for e in eps for s in e.steps if s.verb is None),
        "videos": len(video_sec),
        "splits": dict(sorted(Counter(e.split for e in eps).items())),
        "sources": dict(sorted(Counter(e.source or "-" for e in eps).items())),
        "goals": len({e.goal for e in eps}),
        "video_seconds": summary(np.array(list(video_sec.values()), dtype=float)),
        "step_seconds": summary(step_sec),
        "step_frames": summary(step_frames),
        "step_length_histogram": {_bin_label(i): hist.get(i, 0) for i in range(len(STEP_BINS))},
        "steps_per_episode": {str(k): per_ep[k] for k in sorted(per_ep)},
    }


def stats_tables(stats: dict[str, Any]) -> list:
    """The stats as rich tables: totals, durations, step-length histogram, steps per episode."""
    from rich.table import Table

    def num(x: float | None, unit: str = "") -> str:
        return "–" if x is None else f"{x:,.2f}{unit}"

    totals = Table(title=f"dataset {stats['root']}", show_header=False)
    totals.add_column("what")
    totals.add_column("value", justify="right")
    for k in ("episodes", "steps", "text_only_steps", "videos", "goals", "bad_lines"):
        totals.add_row(k.replace("_", " "), f"{stats[k]:,}")
    totals.add_row("splits", ", ".join(f"{k} {v}" for k, v in stats["splits"].items()) or "–")
    totals.add_row("sources", ", ".join(f"{k} {v}" for k, v in stats["sources"].items()) or "–")

    dur = Table(title="durations")
    for c in ("", "total", "mean", "median", "min", "max"):
        dur.add_column(c, justify="right" if c else "left")
    for key, unit in (("video_seconds", " s"), ("step_seconds", " s"), ("step_frames", "")):
        d = stats[key]
        dur.add_row(key.replace("_", " "), *(num(d[k], unit) for k in ("total", "mean", "median", "min", "max")))

    n = max(1, stats["steps"])
    hist = Table(title="step length")
    hist.add_column("seconds")
    hist.add_column("steps", justify="right")
    hist.add_column("share")
    for label, count in stats["step_length_histogram"].items():
        hist.add_row(label, str(count), "█" * round(30 * count / n) + f" {100 * count / n:.0f}%")

    per = Table(title="steps per episode")
    per.add_column("steps", justify="right")
    per.add_column("episodes", justify="right")
    for k, v in stats["steps_per_episode"].items():
        per.add_row(k, str(v))
    return [totals, dur, hist, per]
