"""Benchmark report: the bootstrap summary in ``results.json``, ``summary.md``, PNG plots, and ``compare``.

Every number in the summary is a mean over cases with its 95 % percentile-bootstrap interval
(:mod:`spiral.bench.stats`); a cell shows ``mean [lo, hi]``. Only cases that ran and were
scored (status ``ok``) count; failed and invalid cases are listed at the end of the summary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spiral import atomic
from spiral.bench.stats import Interval, bootstrap_ci, paired_delta
from spiral.bench.suite import LENGTH_CLASSES

ACTION = ("task_completion", "faithful_task_completion", "step_success", "faithful_step_success", "order_correctness",
          "hallucinated_motion", "artifact_area")
TEMPORAL = ("temporal_flickering", "subject_consistency", "background_consistency", "motion_smoothness",
            "drift_mean")
QUALITY = ("aesthetic_quality", "imaging_quality")  # VBench's per-frame quality scorers, when asked for (--features)
COST = ("generator_calls", "critic_calls", "calls_per_accepted_step", "generations_per_accepted_step",
        "unverified_steps", "seconds_per_video")
LABELS = {
    "task_completion": "task completion", "faithful_task_completion": "faithful task completion",
    "step_success": "step success",
    "faithful_step_success": "faithful step success", "artifact_area": "artifact area ↓", "order_correctness": "order",
    "hallucinated_motion": "halluc. motion ↓", "temporal_flickering": "flicker", "subject_consistency": "subject",
    "background_consistency": "background", "motion_smoothness": "smoothness", "drift_mean": "drift ↓",
    "generator_calls": "gen. calls / video", "critic_calls": "critic calls / video",
    "calls_per_accepted_step": "calls / accepted step", "generations_per_accepted_step": "gens / accepted step",
    "unverified_steps": "unverified steps / video",
    "seconds_per_video": "s / video", "aesthetic_quality": "aesthetic", "imaging_quality": "imaging",
}
MAX_STEPS = max(hi for _, hi in LENGTH_CLASSES.values())
BY_INDEX_CLASSES = ("long", "xlong")  # classes whose per-step success is tabulated by step index


def value(res: dict[str, Any], metric: str) -> float | None:
    """One metric of one case result (action/temporal metrics or cost)."""
    if metric in COST:
        return (res.get("cost") or {}).get(metric)
    return (res.get("metrics") or {}).get(metric)


def summarize(cases: Sequence[dict[str, Any]], modes: Sequence[str]) -> dict[str, Any]:
    """Bootstrap intervals per mode × length class (and ``all``) for every metric; step success by index."""
    out: dict[str, Any] = {}
    for mode in modes:
        ok = [r for r in cases if r["mode"] == mode and r.get("status") == "ok"]
        per: dict[str, Any] = {"n_ok": len(ok), "n_failed": sum(1 for r in cases if r["mode"] == mode
                                                                 and r.get("status") != "ok")}
        for cls in (*LENGTH_CLASSES, "all"):
            group = ok if cls == "all" else [r for r in ok if r["length_class"] == cls]
            per[cls] = {m: bootstrap_ci([value(r, m) for r in group]).to_dict() for m in ACTION + TEMPORAL + QUALITY + COST}
        for cls in BY_INDEX_CLASSES:
            cls_ok = [r for r in ok if r["length_class"] == cls]
            for key in ("step_success_by_index", "faithful_step_success_by_index"):  # a vanished block stays vanished
                per[f"{cls}_{key}"] = [bootstrap_ci([r[key][i] for r in cls_ok if len(r.get(key) or []) > i]).to_dict()
                                       for i in range(LENGTH_CLASSES[cls][1])]
        out[mode] = per
    return out


def _iv(d: dict | None) -> Interval:
    d = d or {}
    return Interval(d.get("mean"), d.get("lo"), d.get("hi"), d.get("n", 0))


def present_classes(summary: dict, modes: Sequence[str]) -> list[str]:
    """The length classes that hold at least one scored case in some mode (a v1 run shows no ``xlong`` row)."""
    return [cls for cls in LENGTH_CLASSES
            if any(_iv(summary.get(m, {}).get(cls, {}).get(x)).n for m in modes for x in ACTION + TEMPORAL + QUALITY + COST)]


def _table(summary: dict, modes: Sequence[str], metrics: Sequence[str], digits: int = 2) -> list[str]:
    head = "| mode | length | n | " + " | ".join(LABELS[m] for m in metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for mode in modes:
        for cls in (*present_classes(summary, modes), "all"):
            cell = summary.get(mode, {}).get(cls, {})
            n = max((_iv(cell.get(m)).n for m in metrics), default=0)
            vals = " | ".join(_iv(cell.get(m)).fmt(digits) for m in metrics)
            lines.append(f"| {mode} | {cls} | {n} | {vals} |")
    return lines


def _vbench_lines(cases: Sequence[dict[str, Any]]) -> list[str]:
    """Which temporal/quality numbers can be set beside published VBench numbers (from the first scored case)."""
    comp = next((r.get("vbench_comparable") for r in cases if r.get("vbench_comparable")), None)
    if not comp:
        return []
    mark = {True: "yes", False: "no", None: "unchecked"}
    return ["## Comparable to published VBench?", "", "| metric | comparable | why |", "|---|---|---|",
            *[f"| {LABELS.get(m, m)} | {mark[c.get('comparable')]} | {c.get('why', '')} |" for m, c in comp.items()],
            ""]


def summary_markdown(results: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """The ``summary.md`` text: settings, three tables by mode × length class, step success by index, failures."""
    b, s = results["bench"], results["summary"]
    modes = [m for m in b["modes"] if m in s]
    judge = next((r.get("judge") for r in results["cases"] if r.get("judge")), b.get("judge"))
    feats = next((r.get("features") for r in results["cases"] if r.get("features")), {}) or {}
    limit = f" (limit {b['limit']})" if b.get("limit") else ""
    quality = tuple(m for m in QUALITY if any(_iv(s[mode].get("all", {}).get(m)).n for mode in modes))
    lines = [
        f"# ActVideoGen-Bench: {b.get('suite_name') or b['suite']} v{b.get('suite_version') or '?'}",
        "",
        f"- config: `{b.get('config') or 'configs/run/tabletop.yaml (embedded default)'}`"
        + (f" with `{' '.join(b['overrides'])}`" if b.get("overrides") else ""),
        f"- judge: `{judge}`; features: " + (", ".join(f"{k} `{v}`" for k, v in feats.items()) or "?")
        + f"; bench seed {b.get('seed')}",
        f"- cases: {b.get('n_cases')} valid{limit}, "
        f"{len(results.get('invalid_cases', []))} invalid; modes: {', '.join(modes)}; written {b.get('written')}",
        "- cells: mean [95 % bootstrap interval] over cases; ↓ = lower is better",
        "",
        "## Action quality", "", *_table(s, modes, ACTION), "",
        "## Temporal coherence", "", *_table(s, modes, TEMPORAL, 3), "",
        *(["## Quality (VBench scorers)", "", *_table(s, modes, quality, 3), ""] if quality else []),
        *_vbench_lines(results["cases"]),
        "## Cost", "", *_table(s, modes, COST), "",
    ]
    present = present_classes(s, modes)
    for cls in (c for c in BY_INDEX_CLASSES if c in present or c == "long"):
        n_idx = LENGTH_CLASSES[cls][1]
        for title, key in (("Step success", f"{cls}_step_success_by_index"),
                           ("Faithful step success", f"{cls}_faithful_step_success_by_index")):
            lines += [f"## {title} by step index ({cls} cases)", "",
                      "| mode | " + " | ".join(str(i + 1) for i in range(n_idx)) + " |", "|---|" + "---|" * n_idx]
            for mode in modes:
                row = [_iv(d) for d in s[mode].get(key, [])]
                lines.append(f"| {mode} | " + " | ".join(f"{iv.fmt()} (n={iv.n})" if iv.n else "–" for iv in row)
                             + " |")
            lines.append("")
    lines += _verdict_lines(s, modes)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    errs = results.get("errors", [])
    invalid = results.get("invalid_cases", [])
    if errs or invalid:
        lines += ["", "## Failed and invalid cases", ""]
        lines += [f"- `{e.get('mode')}/{e.get('case_id')}` ({e.get('stage')}): {e.get('error')}" for e in errs]
        lines += [f"- `{e['case_id']}` invalid field `{e['field']}`: {e['error']}; fix: {e['fix']}" for e in invalid]
    return "\n".join(lines) + "\n"


def _verdict_lines(s: dict, modes: Sequence[str]) -> list[str]:
    """Does closed loop beat each open-loop mode on task completion (judge-read and faithful) with non-overlapping
    intervals?"""
    if "closed_loop" not in modes:
        return []
    out = ["## Closed loop vs open loop (task completion, judge-read and faithful)", ""]
    for metric in ("task_completion", "faithful_task_completion"):
        for cls in present_classes(s, modes):
            cl = _iv(s["closed_loop"].get(cls, {}).get(metric))
            for other in (m for m in modes if m != "closed_loop"):
                ol = _iv(s[other].get(cls, {}).get(metric))
                if cl.mean is None or ol.mean is None:
                    continue
                sep = not cl.overlaps(ol)
                word = "beats" if cl.mean > ol.mean else "does not beat"
                out.append(f"- {LABELS[metric]}, {cls}: closed_loop {cl.fmt()} {word} {other} {ol.fmt()}; intervals "
                           f"{'do not overlap' if sep else 'overlap'}")
    return out


def write_plots(out: Path, results: dict[str, Any]) -> list[str]:
    """``success_by_length.png`` and ``cost_by_mode.png``; returns the file names (none without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    s = results["summary"]
    modes = [m for m in results["bench"]["modes"] if m in s]
    if not modes:
        return []
    classes = present_classes(s, modes) or list(LENGTH_CLASSES)
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(10.4, 3.6), dpi=100, sharey=True)
    for ax, metric in zip(axes, ("task_completion", "faithful_task_completion")):
        for i, mode in enumerate(modes):
            ivs = [_iv(s[mode].get(c, {}).get(metric)) for c in classes]
            xs = [k + (i - (len(modes) - 1) / 2) * width for k in range(len(classes))]
            ys = [iv.mean or 0.0 for iv in ivs]
            err = [[(iv.mean - iv.lo) if iv.mean is not None else 0 for iv in ivs],
                   [(iv.hi - iv.mean) if iv.mean is not None else 0 for iv in ivs]]
            ax.bar(xs, ys, width, yerr=err, capsize=3, label=mode)
        ax.set_xticks(range(len(classes)), [f"{c} ({LENGTH_CLASSES[c][0]}–{LENGTH_CLASSES[c][1]})" for c in classes])
        ax.set_ylim(0, 1.05)
        ax.set_title(f"{LABELS[metric].capitalize()} by length class", fontsize=10)
    axes[0].set_ylabel("mean over cases (95 % CI)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    with atomic.atomic_path(out / "success_by_length.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.2), dpi=100)
    for ax, metric in zip(axes, ("generator_calls", "calls_per_accepted_step")):
        ivs = [_iv(s[m]["all"][metric]) for m in modes]
        ax.bar(range(len(modes)), [iv.mean or 0.0 for iv in ivs],
               yerr=[[(iv.mean - iv.lo) if iv.mean is not None else 0 for iv in ivs],
                     [(iv.hi - iv.mean) if iv.mean is not None else 0 for iv in ivs]], capsize=3,
               color=["C0", "C1", "C2"][:len(modes)])
        ax.set_xticks(range(len(modes)), modes, fontsize=8)
        ax.set_title(LABELS[metric])
    fig.suptitle("Cost per mode (95 % CI)")
    fig.tight_layout()
    with atomic.atomic_path(out / "cost_by_mode.png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return ["success_by_length.png", "cost_by_mode.png"]


def write_report(out: str | Path, results: dict[str, Any] | None = None) -> Path:
    """Write ``summary.md`` (and the plots) for a benchmark folder; returns the summary's path."""
    out = Path(out)
    if results is None:
        results = load_results(out)
    plots = write_plots(out, results)
    path = out / "summary.md"
    atomic.write_text(path, summary_markdown(results, plots))
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """``results.json`` of a benchmark folder (or the file itself)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json"
    if not p.is_file():
        raise FileNotFoundError(f"no results.json at {path}; run `spiral bench` there first")
    return json.loads(p.read_text())


def _same_judge(ka: dict, kb: dict, pairs: list[tuple[str, str]]) -> None:
    """Refuse to pair cases that different judges read (other weights, model or prompt): their judge-read
    metrics measure the judges as much as the videos. Results from before judges recorded an identity pass."""
    def identities(runs: dict, mode: str) -> set[str]:
        return {json.dumps(r["judge_identity"], sort_keys=True) for (m, _), r in runs.items()
                if m == mode and r.get("judge_identity")}

    for ma, mb in pairs:
        ia, ib = identities(ka, ma), identities(kb, mb)
        if ia and ib and ia != ib:
            raise ValueError(f"A and B were scored by different judges (A: {', '.join(sorted(ia))}; B: "
                             f"{', '.join(sorted(ib))}): rescore both with one judge (spiral bench rescore DIR) "
                             "before comparing them")


def compare(a: str | Path, b: str | Path, metrics: Sequence[str] = ACTION + TEMPORAL + QUALITY + COST,
            mode_a: str | None = None, mode_b: str | None = None, by_length: bool = False) -> list[dict[str, Any]]:
    """Per-metric mean of B − A over the cases scored in both (paired by case id), with paired bootstrap intervals.

    By default each mode of A is paired with the same mode of B; ``mode_a``/``mode_b`` pair one mode of A with
    another of B instead (A and B may be the same folder: closed loop against plan-only on the same cases and
    seeds). ``by_length`` adds one row per length class after each ``all`` row. A row's ``mode`` is B's mode;
    ``mode_a`` is A's.
    """
    ra, rb = load_results(a), load_results(b)
    ka = {(r["mode"], r["case_id"]): r for r in ra["cases"] if r.get("status") == "ok"}
    kb = {(r["mode"], r["case_id"]): r for r in rb["cases"] if r.get("status") == "ok"}
    if (mode_a is None) != (mode_b is None):
        raise ValueError("give both --mode-a and --mode-b (one mode of A against one mode of B), or neither")
    if mode_a is not None:
        for mode, runs, name in ((mode_a, ka, "A"), (mode_b, kb, "B")):
            if not any(k[0] == mode for k in runs):
                raise ValueError(f"{name} has no scored case in mode {mode!r}; its modes: "
                                 f"{', '.join(sorted({k[0] for k in runs})) or 'none'}")
        pairs = [(mode_a, mode_b)]
    else:
        pairs = [(m, m) for m in dict.fromkeys(m for m, _ in sorted(ka.keys() & kb.keys()))]
    _same_judge(ka, kb, pairs)
    rows = []
    for ma, mb in pairs:
        ids = sorted({c for m, c in ka if m == ma} & {c for m, c in kb if m == mb})
        classes = ["all"] + ([c for c in LENGTH_CLASSES if any(ka[(ma, i)].get("length_class") == c for i in ids)]
                             if by_length else [])
        for m in metrics:
            for cls in classes:
                sel = [i for i in ids if cls == "all" or ka[(ma, i)].get("length_class") == cls]
                va, vb = [value(ka[(ma, i)], m) for i in sel], [value(kb[(mb, i)], m) for i in sel]
                d = paired_delta(va, vb)
                rows.append({"mode": mb, "mode_a": ma, "length_class": cls, "metric": m, "n": d.n,
                             "a": bootstrap_ci(va).mean, "b": bootstrap_ci(vb).mean, "delta": d.to_dict(),
                             "significant": d.n > 0 and d.lo is not None and (d.lo > 0 or d.hi < 0)})
    return rows
