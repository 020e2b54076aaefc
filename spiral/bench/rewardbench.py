"""VideoGen-RewardBench read as published (``spiral eval critic --pairs FILE.csv --videos DIR``).

VideoGen-RewardBench (VideoAlign, arXiv:2501.13918) is one CSV of video pairs: ``path_A``, ``path_B`` (relative
to the dataset folder, e.g. ``videos/kling1.5/kling1.5_00103.mp4``), ``A_model``, ``B_model``, ``prompt``,
``fps_A`` / ``num_frames_A`` / ``fps_B`` / ``num_frames_B`` and one preference per dimension — ``VQ`` (visual
quality), ``MQ`` (motion quality), ``TA`` (text alignment), ``Overall`` — valued ``A``, ``B`` or ``same``.

The critic scores every distinct (video, prompt) once (``judge`` on the whole clip, the prompt as the sub-action's
text); a dimension's score is the verdict's score of that name when the critic gives one (or the one
``--score DIM=NAME`` maps to it), else the critic's combined score (``CombinesScores``, else the mean).
margin = score_A − score_B, and each dimension is reported two ways, labelled:

- **exact** (:func:`spiral.bench.critic_eval.accuracy_with_ties`): the best three-class accuracy over tie thresholds
  ε ∈ {0} ∪ {|margin|} (a pair is a predicted tie when |margin| ≤ ε); without ties, a zero margin scores ½;
- **VideoAlign-compatible** (:func:`videoalign_accuracy`): the sweep of VideoAlign's ``calc_accuracy_with_ties``
  (the paper's and leaderboard's numbers), whose tie rules differ: see that function.

Scores go to ``OUT/scores.jsonl`` as each video is done (a rerun with the same ``--out`` skips them), results to
``OUT/results.json``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

DIMENSIONS = ("VQ", "MQ", "TA", "Overall")
REQUIRED = ("path_A", "path_B", "prompt")
LABELS = {"A": "A", "B": "B", "same": "tie"}
PUBLISHED_COLUMNS = "path_A, path_B, A_model, B_model, prompt, VQ, MQ, TA, Overall"


# ---- accuracy ------------------------------------------------------------------------------------
def videoalign_accuracy(margins: list[float] | np.ndarray, labels: list[str]) -> dict[str, float]:
    """Accuracy with and without ties exactly as VideoAlign's ``calc_accuracy_with_ties`` /
    ``calc_accuracy_without_ties`` compute them (reimplemented from their description; same results).

    Start with no pair predicted a tie (a zero margin on an A/B pair counts as discordant), then walk the pairs by
    increasing |margin| (ties in |margin| in file order) and move **one pair at a time** into the predicted-tie band,
    scoring τ = (concordant + both-tie) / all after each move; report the largest τ. Two consequences differ from the
    exact threshold search: pairs with equal |margin| are moved one by one, so τ can be counted at a split no
    threshold produces (and depends on the file order); and the state with no predicted tie is never scored, so at
    least the smallest-margin pair is always predicted a tie. Without ties: concordant / (concordant + discordant)
    over the A/B pairs, a zero margin being discordant.
    """
    m = [float(x) for x in margins]
    h = [{"A": 1, "B": -1, "tie": 0}[x] for x in labels]
    if len(m) != len(h):
        raise ValueError(f"{len(m)} margins for {len(h)} labels")
    if not m:
        raise ValueError("no pairs to score")
    concordant = sum(1 for hi, mi in zip(h, m, strict=True) if hi != 0 and hi * mi > 0)
    decided = sum(1 for hi in h if hi != 0)
    right = concordant
    best, best_eps = -math.inf, 0.0
    for i in sorted(range(len(m)), key=lambda k: abs(m[k])):  # sorted() is stable: equal |margin| keep file order
        if h[i] == 0:
            right += 1  # a tie-labelled pair entering the tie band becomes right
        elif h[i] * m[i] > 0:
            right -= 1  # a concordant pair entering it becomes wrong (a discordant one stays wrong)
        tau = right / len(m)
        if tau > best:
            best, best_eps = tau, abs(m[i])
    return {"with_ties": best, "epsilon": best_eps,
            "without_ties": concordant / decided if decided else float("nan"), "n": len(m), "n_ties": len(m) - decided}


def both_accuracies(margins: list[float], labels: list[str]) -> dict[str, Any]:
    """The exact threshold search and the VideoAlign-compatible value for one dimension, labelled."""
    from spiral.bench.critic_eval import accuracy_with_ties

    exact = accuracy_with_ties(margins, labels)
    return {"n": exact["n"], "n_ties": exact["n_ties"],
            "exact": {k: exact[k] for k in ("with_ties", "epsilon", "without_ties")},
            "videoalign": {k: v for k, v in videoalign_accuracy(margins, labels).items() if k not in ("n", "n_ties")}}


# ---- the CSV ---------------------------------------------------------------------------------------
@dataclass
class RewardPair:
    """One row: two videos of one prompt and the preference per dimension ("A", "B" or "tie")."""

    row: int
    path_a: str
    path_b: str
    prompt: str
    labels: dict[str, str]


@dataclass
class LoadedPairs:
    pairs: list[RewardPair]
    dimensions: list[str]
    errors: list[str] = field(default_factory=list)


def _video(videos: Path, rel: str, where: str) -> Path:
    path = (videos / rel).resolve()
    if not path.is_relative_to(videos.resolve()):
        raise ValueError(f"{where}: video path {rel!r} leaves the videos folder {videos}; paths in the CSV are relative "
                         "to --videos")
    return path


def load_pairs(csv_path: str | Path, videos: str | Path) -> LoadedPairs:
    """Read the CSV as published. Missing columns, or a video path that leaves ``videos``, is a ValueError (nothing is
    scored); a row with a bad label or a missing video is reported and skipped."""
    csv_path, videos = Path(csv_path), Path(videos)
    if not csv_path.is_file():
        raise FileNotFoundError(f"pairs file not found: {csv_path}")
    if not videos.is_dir():
        raise FileNotFoundError(f"videos folder not found: {videos} (--videos: the folder the CSV's paths start from)")
    with csv_path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        dims = [d for d in DIMENSIONS if d in header]
        if missing or not dims:
            what = f"column(s) {', '.join(missing)}" if missing else "every label column (VQ, MQ, TA, Overall)"
            raise ValueError(f"{csv_path} lacks {what}; VideoGen-RewardBench's CSV has {PUBLISHED_COLUMNS} "
                             f"(found: {', '.join(header) or 'no header'})")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    pairs, errors = [], []
    for no, r in enumerate(rows, start=2):  # row 1 is the header
        where = f"row {no}"
        paths = [_video(videos, r[c], where) for c in ("path_A", "path_B")]  # leaving the folder: refuse the file
        bad = {d: r.get(d, "") for d in dims if r.get(d, "") not in LABELS}
        if bad:
            errors.append(f"{where}: " + ", ".join(f"{d} is {v!r}" for d, v in bad.items()) + "; labels are A, B or same")
            continue
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            errors.append(f"{where}: video not found: {', '.join(absent)}")
            continue
        pairs.append(RewardPair(no, r["path_A"], r["path_B"], r["prompt"], {d: LABELS[r[d]] for d in dims}))
    if not pairs:
        raise ValueError(f"{csv_path} has no usable pair ({len(errors)} bad rows): {errors[0] if errors else 'no rows'}")
    return LoadedPairs(pairs, dims, errors)


# ---- scoring ---------------------------------------------------------------------------------------
def _key(path: str, prompt: str) -> str:
    return json.dumps([path, prompt])


def _read_scores(path: Path) -> dict[str, dict[str, float]]:
    """Scores written by an earlier run (a torn last line, from a crash, is ignored and scored again)."""
    out: dict[str, dict[str, float]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
                out[_key(rec["path"], rec["prompt"])] = {k: float(v) for k, v in rec["scores"].items()}
            except (ValueError, KeyError, TypeError):
                continue
    return out


def score_video(critic: Any, frames: np.ndarray, prompt: str, fps: float = 8.0) -> dict[str, float]:
    """The critic's scores of one whole video for a text prompt, plus ``overall`` (its combined score)."""
    from spiral.agents import CombinesScores
    from spiral.memory import Memory
    from spiral.types import Segment, SubAction

    seg = Segment(frames=frames, fps=fps)
    sub = SubAction(text=prompt, verb="", objects=[])
    v = critic.judge(seg, sub, Memory.start(frames[0]))
    scores = {k: float(x) for k, x in v.scores.items()}
    if isinstance(critic, CombinesScores) and scores:
        overall = float(critic.combine(scores))
    else:
        overall = float(np.mean(list(scores.values()))) if scores else float(v.passed)
    if not all(math.isfinite(x) for x in [*scores.values(), overall]):
        raise ValueError(f"the critic gave a score that is not a finite number: {scores}")
    return {**scores, "overall": overall}


def dimension_sources(dims: list[str], score_names: list[str], mapping: dict[str, str]) -> dict[str, str]:
    """Which of the critic's scores stands for each dimension: ``mapping`` first, then a score of the dimension's
    own name (any case), else ``overall``."""
    names = {s.lower(): s for s in score_names}
    out = {}
    for d in dims:
        want = mapping.get(d)
        if want is not None:
            if want != "overall" and want not in score_names:
                raise ValueError(f"--score {d}={want}: the critic has no score {want!r}; it gives "
                                 f"{', '.join(score_names)} and overall")
            out[d] = want
        else:
            out[d] = names.get(d.lower(), "overall")
    return out


def evaluate(critic: Any, csv_path: str | Path, videos: str | Path, out: str | Path | None = None,
             mapping: dict[str, str] | None = None, limit: int | None = None,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Score every video of the CSV's pairs with ``critic`` and report both accuracies per dimension."""
    from spiral.atomic import write_text
    from spiral.video import read_video, video_info

    mapping = dict(mapping or {})
    unknown = [d for d in mapping if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"--score {unknown[0]}=...: dimensions are {', '.join(DIMENSIONS)}")
    loaded = load_pairs(csv_path, videos)
    pairs = loaded.pairs[:limit] if limit else loaded.pairs
    videos = Path(videos)
    scores_file = Path(out) / "scores.jsonl" if out else None
    done = _read_scores(scores_file) if scores_file else {}
    todo = list(dict.fromkeys((p, pr.prompt) for pr in pairs for p in (pr.path_a, pr.path_b)))
    errors = list(loaded.errors)
    if scores_file:
        scores_file.parent.mkdir(parents=True, exist_ok=True)
    for i, (rel, prompt) in enumerate(todo):
        key = _key(rel, prompt)
        if key not in done:
            path = _video(videos, rel, rel)
            try:
                fps = video_info(path)["fps"] or 8.0
                done[key] = score_video(critic, read_video(path), prompt, fps)
            except ValueError as e:
                errors.append(f"{rel}: {str(e).splitlines()[0]}")
                continue
            if scores_file:
                with scores_file.open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"path": rel, "prompt": prompt, "scores": done[key]}) + "\n")
        if progress:
            progress(i + 1, len(todo))
    scored = [p for p in pairs if _key(p.path_a, p.prompt) in done and _key(p.path_b, p.prompt) in done]
    if not scored:
        raise ValueError(f"no pair could be scored: {errors[0] if errors else 'no pairs'}")
    names = sorted({k for p in scored for k in done[_key(p.path_a, p.prompt)]} - {"overall"})
    sources = dimension_sources(loaded.dimensions, names, mapping)
    result: dict[str, Any] = {"pairs_file": str(csv_path), "videos": str(videos), "n_pairs": len(scored),
                              "n_videos": len(todo), "score_sources": sources, "dimensions": {}, "errors": errors}
    for d in loaded.dimensions:
        margins = [done[_key(p.path_a, p.prompt)][sources[d]] - done[_key(p.path_b, p.prompt)][sources[d]]
                   for p in scored]
        result["dimensions"][d] = both_accuracies(margins, [p.labels[d] for p in scored])
    if out:
        write_text(Path(out) / "results.json", json.dumps(result, indent=2))
    return result


def format_report(result: dict[str, Any]) -> str:
    """A markdown table: per dimension, both ways of counting, each labelled."""
    lines = [f"VideoGen-RewardBench: {result['n_pairs']} pairs, {result['n_videos']} videos "
             f"({result['pairs_file']})", "",
             "| dimension | critic score | pairs | ties | w/ ties (exact ε search) | w/o ties (exact; 0 margin = ½) "
             "| w/ ties (VideoAlign calc_accuracy_with_ties) | w/o ties (VideoAlign) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]

    def f(x: float) -> str:
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"

    for d, r in result["dimensions"].items():
        e, v = r["exact"], r["videoalign"]
        lines.append(f"| {d} | {result['score_sources'][d]} | {r['n']} | {r['n_ties']} | {f(e['with_ties'])} "
                     f"(ε={e['epsilon']:.4g}) | {f(e['without_ties'])} | {f(v['with_ties'])} (ε={v['epsilon']:.4g}) | "
                     f"{f(v['without_ties'])} |")
    lines += ["", "Accuracies in %. The VideoAlign columns are the ones to set beside published VideoGen-RewardBench "
              "numbers; the exact columns are the best accuracy a single tie threshold reaches."]
    return "\n".join(lines)
