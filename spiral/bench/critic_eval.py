"""Critic evaluation (``spiral eval critic``): how well a critic tells good segments from failures.

Two harnesses over any critic that has ``judge(segment, sub_action, context) -> Verdict``:

1. **Labelled set** — an ActVideoGen-Dataset folder built with failures (``spiral data build
   --failures 0.5``): every annotated step is one segment, labelled ``success`` or by the failure
   mode it was rendered with. Reports accuracy (pass/fail), false-reject rate on successes,
   failure-kind accuracy, recall per failure kind and per render mode, decision accuracy, a
   confusion matrix (true kind × predicted kind), the recogniser's state accuracy on first/last
   frames, and judge time.
2. **Preference pairs** — a JSONL file (format in ``docs/critic_eval.md``) of two clips of the same
   sub-action with a label ``A`` / ``B`` / ``tie``. The critic's score of a clip is its reward
   (``critic.reward`` or the mean of the verdict's scores); margin = score_A − score_B. Reports the
   *accuracy with ties* of VideoGen-RewardBench (sweep a tie threshold ε over the margins; a pair is
   predicted tie when |margin| ≤ ε; τ = (concordant + both-tie) / all pairs; the max over ε) and
   the accuracy without ties (tie-labelled pairs dropped, prediction = sign of the margin, a zero
   margin counts one half). :func:`build_pairs` writes such a file from a labelled set.

Both can degrade every clip first (``--degrade``, :data:`spiral.train.augment.DEGRADATIONS`) to
measure robustness to generator-like artefacts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spiral.agents import ObservesState, RewardsSegments
from spiral.data.format import Episode, StepRecord, check_dataset
from spiral.types import FAILURE_KINDS, JudgeContext, Segment, SubAction, Verdict, combine_scores
from spiral.video import read_video, write_video

KINDS_ROWS = ("success", *FAILURE_KINDS)
#: what the loop should do for each rendered failure mode (the critic's decision is scored against it)
EXPECTED_DECISION = {"success": "accept", "incomplete": "refine", "no_motion": "refine", "wrong_object": "replan",
                     "extra_motion": "regenerate", "teleport": "regenerate", "drift": "regenerate"}


@dataclass
class Case:
    """One labelled segment: frames, sub-action, context and its truth."""

    id: str
    frames: np.ndarray
    sub_action: SubAction
    label: str
    kind: str  # "success" or a FailureKind
    start_state: dict | None
    end_state: dict | None
    anchor: np.ndarray | None
    fps: float = 8.0


def _sub_action(step: StepRecord, k: int) -> SubAction:
    return SubAction(id=k, text=step.text, verb=step.verb, objects=list(step.objects), preconditions=list(step.pre),
                     postconditions=list(step.post))


def iter_cases(root: str | Path, limit: int | None = None) -> Iterator[Case]:
    """Every annotated step of a dataset as a :class:`Case` (anchor = the episode's or its parent's first frame)."""
    root = Path(root)
    report = check_dataset(root)
    if not report.episodes:
        raise ValueError(f"{root} has no usable episodes ({len(report.errors)} bad lines)")
    by_id = {e.id: e for e in report.episodes}
    first: dict[str, np.ndarray] = {}

    def first_frame(ep: Episode, video: np.ndarray | None = None) -> np.ndarray:
        if ep.id not in first:
            first[ep.id] = (video if video is not None else read_video(root / ep.video))[0]
        return first[ep.id]

    n = 0
    for ep in report.episodes:
        video = read_video(root / ep.video)
        parent = by_id.get(ep.parent) if ep.parent else None
        anchor = first_frame(parent) if parent is not None else first_frame(ep, video)
        state = ep.initial_state
        for k, step in enumerate(ep.steps):
            clip = video[step.start_frame: step.end_frame + 1]
            kind = "success" if step.label == "success" else (step.failure_kind or "unknown")
            yield Case(id=f"{ep.id}/{k}", frames=clip, sub_action=_sub_action(step, k), label=step.label, kind=kind,
                       start_state=state, end_state=step.end_state, anchor=anchor, fps=ep.fps)
            state = step.end_state
            n += 1
            if limit is not None and n >= limit:
                return


def _context(case: Case) -> JudgeContext:
    return JudgeContext(anchor_frame=case.anchor if case.anchor is not None else case.frames[0],
                        cond_frame=case.frames[0], state=case.start_state)


def make_critic(name: str = "tabletop", weights: str | None = None, **options: Any) -> Any:
    """A critic by registry name; ``weights`` ("judge" or a path) swaps the tabletop critic's recogniser."""
    from spiral import registry

    if weights is not None:
        from spiral.critics.recognizer import weights_path

        options["recognizer"] = str(weights_path("judge")) if weights == "judge" else weights
    return registry.create("critic", name, **options)


@dataclass
class LabelledResult:
    """Everything measured on a labelled set."""

    n: int = 0
    rows: list[dict[str, Any]] = field(default_factory=list)
    judge_ms: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        rows = self.rows
        if not rows:
            return {"n": 0}
        succ = [r for r in rows if r["kind"] == "success"]
        fail = [r for r in rows if r["kind"] != "success"]
        out: dict[str, Any] = {
            "n": len(rows), "n_success": len(succ), "n_failure": len(fail),
            "accuracy": _mean(r["passed"] == (r["kind"] == "success") for r in rows),
            "kind_accuracy": _mean(r["pred_kind"] == r["kind"] for r in rows),
            "false_reject_rate": _mean(not r["passed"] for r in succ) if succ else None,
            "detection_rate": _mean(not r["passed"] for r in fail) if fail else None,
            "decision_accuracy": _mean(r["decision"] == EXPECTED_DECISION.get(r["label"]) for r in rows),
        }
        out["recall"] = {k: _mean(r["pred_kind"] == k for r in rows if r["kind"] == k)
                         for k in FAILURE_KINDS if any(r["kind"] == k for r in rows)}
        out["count"] = {k: sum(1 for r in rows if r["kind"] == k) for k in KINDS_ROWS}
        labels = sorted({r["label"] for r in rows})
        out["by_label"] = {lb: {"n": sum(1 for r in rows if r["label"] == lb),
                                "kind_recall": _mean(r["pred_kind"] == r["kind"] for r in rows if r["label"] == lb),
                                "decision_accuracy": _mean(r["decision"] == EXPECTED_DECISION.get(lb)
                                                           for r in rows if r["label"] == lb)} for lb in labels}
        out["confusion"] = {t: {p: sum(1 for r in rows if r["kind"] == t and r["pred_kind"] == p) for p in KINDS_ROWS}
                            for t in KINDS_ROWS}
        st = [r for r in rows if r.get("start_ok") is not None]
        en = [r for r in rows if r.get("end_ok") is not None]
        out["recognizer"] = {
            "first_frame_state_acc": _mean(r["start_ok"] for r in st) if st else None,
            "last_frame_state_acc": _mean(r["end_ok"] for r in en) if en else None,
            "attribute_acc": _attr_acc(rows),
        }
        ms = np.array(self.judge_ms)
        out["judge_ms"] = {"mean": float(ms.mean()), "p95": float(np.percentile(ms, 95))} if len(ms) else None
        return out


def _mean(it: Any) -> float:
    v = [float(x) for x in it]
    return float(np.mean(v)) if v else float("nan")


def _attr_acc(rows: list[dict[str, Any]]) -> dict[str, float]:
    acc: dict[str, list[float]] = {}
    for r in rows:
        for k, v in r.get("attr", {}).items():
            acc.setdefault(k, []).extend(v)
    return {k: float(np.mean(v)) for k, v in sorted(acc.items())}


def _state_attrs(read: dict, truth: dict) -> dict[str, list[float]]:
    out = {"block_location": [float(read["loc"][b] == w) for b, w in truth["loc"].items()],
           "lid": [float(read["box_open"] == truth["box_open"])], "lamp": [float(read["lamp_on"] == truth["lamp_on"])]}
    return out


def evaluate_labelled(critic: Any, root: str | Path, degrade: str | None = None, limit: int | None = None,
                      progress: Callable[[int], None] | None = None) -> LabelledResult:
    """Judge every case of a labelled set; ``degrade`` names a degradation applied to each clip first."""
    from spiral.train.augment import degrade as apply_degrade

    res = LabelledResult()
    observe = critic.observe if isinstance(critic, ObservesState) else None
    for i, case in enumerate(iter_cases(root, limit)):
        frames = case.frames if not degrade or degrade == "clean" else apply_degrade(case.frames, degrade, seed=i)
        seg = Segment(frames=frames, fps=case.fps)
        t = time.perf_counter()
        v: Verdict = critic.judge(seg, case.sub_action, _context(case))
        res.judge_ms.append((time.perf_counter() - t) * 1000)
        row: dict[str, Any] = {"id": case.id, "label": case.label, "kind": case.kind, "passed": v.passed,
                               "pred_kind": v.failure or "success", "decision": v.decision, "feedback": v.feedback,
                               "scores": v.scores, "observed_state": v.observed_state}
        if observe is not None:
            attr: dict[str, list[float]] = {}
            if case.start_state:
                s0 = observe(frames[0]).to_dict()
                row["start_ok"] = s0 == _norm(case.start_state)
                for k, x in _state_attrs(s0, _norm(case.start_state)).items():
                    attr.setdefault(k, []).extend(x)
            if case.end_state and case.label != "incomplete":
                s1 = v.observed_state or observe(frames[-1]).to_dict()
                row["end_ok"] = s1 == _norm(case.end_state)
                for k, x in _state_attrs(s1, _norm(case.end_state)).items():
                    attr.setdefault(k, []).extend(x)
            row["attr"] = attr
        res.rows.append(row)
        if progress:
            progress(i + 1)
    res.n = len(res.rows)
    return res


def agreement(rows_a: list[dict[str, Any]], rows_b: list[dict[str, Any]]) -> dict[str, float]:
    """How often two critics agree on the same cases: pass/fail, failure kind, decision, observed end state."""
    b = {r["id"]: r for r in rows_b}
    pairs = [(r, b[r["id"]]) for r in rows_a if r["id"] in b]
    if not pairs:
        raise ValueError("the two evaluations share no case ids")
    return {"n": len(pairs),
            "pass_agreement": _mean(x["passed"] == y["passed"] for x, y in pairs),
            "kind_agreement": _mean(x["pred_kind"] == y["pred_kind"] for x, y in pairs),
            "decision_agreement": _mean(x["decision"] == y["decision"] for x, y in pairs),
            "observed_state_agreement": _mean(x["observed_state"] == y["observed_state"] for x, y in pairs)}


def write_card_section(card: str | Path, title: str, body: str) -> Path:
    """Replace (or append) the ``## title`` section of a markdown model card."""
    card = Path(card)
    text = card.read_text(encoding="utf-8") if card.exists() else ""
    head = f"## {title}"
    if head in text:
        start = text.index(head)
        nxt = text.find("\n## ", start + len(head))
        text = text[:start] + text[nxt + 1:] if nxt >= 0 else text[:start]
    text = text.rstrip("\n") + f"\n\n{head}\n\n{body.strip()}\n"
    card.write_text(text, encoding="utf-8")
    return card


def _norm(d: dict) -> dict:
    from spiral.world.domain import State

    return State.from_dict(d).to_dict()


# ---------------------------------------------------------------- preference pairs
def accuracy_with_ties(margins: list[float] | np.ndarray, labels: list[str]) -> dict[str, float]:
    """VideoGen-RewardBench pairwise accuracy with ties, and without.

    ``labels`` are "A", "B" or "tie"; ``margins`` are score_A − score_B. For each ε in {0} ∪ {|margin|},
    a pair is predicted A if margin > ε, B if margin < −ε, else tie; τ(ε) = (concordant + both-tie)/all.
    Returns ``{"with_ties": max τ, "epsilon": best ε, "without_ties": …, "n": …, "n_ties": …}``.
    """
    m = np.asarray(margins, np.float64)
    lab = np.array([{"A": 1, "B": -1, "tie": 0}[x] for x in labels])
    if len(m) != len(lab):
        raise ValueError(f"{len(m)} margins for {len(lab)} labels")
    if len(m) == 0:
        raise ValueError("no pairs to score")
    best, best_eps = -1.0, 0.0
    for eps in np.unique(np.concatenate([[0.0], np.abs(m)])):
        pred = np.where(m > eps, 1, np.where(m < -eps, -1, 0))
        tau = float((pred == lab).mean())
        if tau > best:
            best, best_eps = tau, float(eps)
    nt = lab != 0
    if nt.any():
        s = np.sign(m[nt])
        without = float(np.mean(np.where(s == 0, 0.5, (s == lab[nt]).astype(float))))
    else:
        without = float("nan")
    return {"with_ties": best, "epsilon": best_eps, "without_ties": without, "n": int(len(m)),
            "n_ties": int((~nt).sum())}


def _clip_ref(base: Path, ref: dict[str, Any], cache: dict[Path, np.ndarray]) -> np.ndarray:
    path = (base / ref["video"]).resolve()
    if not path.is_relative_to(base.resolve()):
        raise ValueError(f"video path {ref['video']!r} leaves the folder of the pairs file")
    if path not in cache:
        cache[path] = read_video(path)
    v = cache[path]
    s, e = int(ref.get("start_frame", 0)), ref.get("end_frame")
    e = len(v) - 1 if e is None else int(e)
    if not 0 <= s < e < len(v):
        raise ValueError(f"frame range {s}..{e} outside {ref['video']} ({len(v)} frames)")
    return v[s: e + 1]


def score_clip(critic: Any, frames: np.ndarray, sub: SubAction, context: JudgeContext | None) -> float:
    """A critic's scalar score of one clip: ``reward`` when it has one, else the mean of its verdict's scores."""
    seg = Segment(frames=frames)
    if isinstance(critic, RewardsSegments):
        return float(critic.reward(seg, sub, context))
    v = critic.judge(seg, sub, context)
    return combine_scores(v.scores) if v.scores else float(v.passed)


def evaluate_pairs(critic: Any, pairs_file: str | Path, degrade: str | None = None) -> dict[str, Any]:
    """Score every pair of a preference JSONL file and compute accuracy with and without ties."""
    from spiral.train.augment import degrade as apply_degrade

    path = Path(pairs_file)
    if not path.is_file():
        raise FileNotFoundError(f"pairs file not found: {path}")
    base = path.parent
    cache: dict[Path, np.ndarray] = {}
    margins, labels, errors = [], [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if rec.get("label") not in ("A", "B", "tie"):
                raise ValueError(f"label must be 'A', 'B' or 'tie', got {rec.get('label')!r}")
            sub = SubAction.model_validate({"text": "", **rec["sub_action"]})
            clips = [_clip_ref(base, rec[k], cache) for k in ("a", "b")]
            anchor = _clip_ref(base, rec["anchor"], cache)[0] if rec.get("anchor") else None
        except (ValueError, KeyError, TypeError) as e:
            errors.append(f"line {n}: {e}")
            continue
        if degrade and degrade != "clean":
            clips = [apply_degrade(c, degrade, seed=n * 2 + j) for j, c in enumerate(clips)]
        scores = []
        for c in clips:
            ctx = JudgeContext(anchor_frame=anchor if anchor is not None else c[0], cond_frame=c[0])
            scores.append(score_clip(critic, c, sub, ctx))
        margins.append(scores[0] - scores[1])
        labels.append(rec["label"])
    if not margins:
        raise ValueError(f"{path}: no usable pairs ({'; '.join(errors[:3])})")
    out = accuracy_with_ties(margins, labels)
    out["errors"] = errors
    return out


def build_pairs(root: str | Path, out: str | Path | None = None, seed: int = 0, ties: float = 0.25) -> Path:
    """Preference pairs from a labelled set: each failure clip vs the success of the same step (A/B order
    random), and ``ties`` × that many tie pairs (a success vs its own H.264 4:2:0 re-encode)."""
    root = Path(root)
    out = Path(out) if out else root / "pairs.jsonl"
    rng = np.random.default_rng(seed)
    report = check_dataset(root)
    by_id = {e.id: e for e in report.episodes}
    lines: list[dict[str, Any]] = []
    successes: list[tuple[Episode, int]] = []
    for ep in report.episodes:
        if ep.parent is None:
            successes += [(ep, k) for k in range(len(ep.steps))]
            continue
        parent = by_id.get(ep.parent)
        if parent is None:
            continue
        k = int(ep.id[len(parent.id) + 2:])  # failure clips are named "<parent id>-f<step>"
        good = {"video": parent.video, "start_frame": parent.steps[k].start_frame, "end_frame": parent.steps[k].end_frame}
        bad = {"video": ep.video, "start_frame": 0, "end_frame": ep.steps[0].end_frame}
        sub = _sub_action(ep.steps[0], 0).model_dump(mode="json")
        swap = bool(rng.random() < 0.5)
        lines.append({"id": f"{ep.id}", "sub_action": sub, "a": bad if swap else good, "b": good if swap else bad,
                      "anchor": {"video": parent.video, "start_frame": 0, "end_frame": 1},
                      "label": "B" if swap else "A", "note": f"success vs {ep.steps[0].label}"})
    n_ties = int(round(ties * len(lines)))
    pick = rng.choice(len(successes), size=min(n_ties, len(successes)), replace=False) if successes else []
    (out.parent / "pairs").mkdir(parents=True, exist_ok=True)
    for j in pick:
        ep, k = successes[int(j)]
        st = ep.steps[k]
        clip = read_video(root / ep.video)[st.start_frame: st.end_frame + 1]
        rel = f"pairs/{ep.id}-s{k}-web.mp4"
        write_video(out.parent / rel, clip, ep.fps, quality="web")
        lines.append({"id": f"{ep.id}/{k}-tie", "sub_action": _sub_action(st, k).model_dump(mode="json"),
                      "a": {"video": ep.video, "start_frame": st.start_frame, "end_frame": st.end_frame},
                      "b": {"video": rel, "start_frame": 0, "end_frame": len(clip) - 1},
                      "anchor": {"video": ep.video, "start_frame": 0, "end_frame": 1},
                      "label": "tie", "note": "success vs its own H.264 4:2:0 re-encode"})
    order = rng.permutation(len(lines))
    out.write_text("".join(json.dumps(lines[i]) + "\n" for i in order), encoding="utf-8")
    return out


# ---------------------------------------------------------------- report
def format_report(summary: dict[str, Any], pairs: dict[str, Any] | None = None, title: str = "critic") -> str:
    """Markdown tables of a labelled-set summary (and pair metrics)."""
    s = summary
    lines = [f"### {title}", "", "| metric | value |", "| --- | --- |"]
    for k in ("n", "n_success", "n_failure", "accuracy", "kind_accuracy", "false_reject_rate", "detection_rate",
              "decision_accuracy"):
        v = s.get(k)
        lines.append(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |")
    for k, v in s.get("recall", {}).items():
        lines.append(f"| recall {k} | {v:.4f} |")
    rec = s.get("recognizer", {})
    for k in ("first_frame_state_acc", "last_frame_state_acc"):
        if rec.get(k) is not None:
            lines.append(f"| recogniser {k} | {rec[k]:.4f} |")
    for k, v in rec.get("attribute_acc", {}).items():
        lines.append(f"| recogniser {k} | {v:.4f} |")
    if s.get("judge_ms"):
        lines.append(f"| judge ms (mean / p95) | {s['judge_ms']['mean']:.1f} / {s['judge_ms']['p95']:.1f} |")
    if pairs:
        lines.append(f"| pairs: accuracy with ties (ε={pairs['epsilon']:.4f}) | {pairs['with_ties']:.4f} |")
        lines.append(f"| pairs: accuracy without ties | {pairs['without_ties']:.4f} |")
    lines += ["", "confusion (rows: true kind, columns: predicted)", "",
              "| true \\ pred | " + " | ".join(KINDS_ROWS) + " |", "|" + " --- |" * (len(KINDS_ROWS) + 1)]
    for t in KINDS_ROWS:
        row = s["confusion"][t]
        lines.append(f"| {t} | " + " | ".join(str(row[p]) for p in KINDS_ROWS) + " |")
    lines += ["", "| render mode | n | kind recall | decision accuracy |", "| --- | --- | --- | --- |"]
    for lb, d in s.get("by_label", {}).items():
        lines.append(f"| {lb} | {d['n']} | {d['kind_recall']:.4f} | {d['decision_accuracy']:.4f} |")
    return "\n".join(lines)


def run_eval(data: str | Path, critic: str = "tabletop", weights: str | None = None, degradation: str | None = None,
             pairs: str | Path | None = None, limit: int | None = None, agree_with: str | None = None,
             progress: Callable[[str, int], Callable[[int], None]] | None = None) -> tuple[dict[str, Any], str]:
    """Everything ``spiral eval critic`` reports: clean (and degraded) labelled-set metrics, pair metrics,
    degraded − clean deltas and, with ``agree_with`` (another recogniser: "critic", "judge" or a path),
    the agreement of the two critics. Returns the metrics and a markdown report."""
    data = Path(data)
    c = make_critic(critic, weights)
    pairs_file = Path(pairs) if pairs else data / "pairs.jsonl"
    if pairs is None and not pairs_file.exists():
        build_pairs(data, pairs_file)
    n_total = sum(len(e.steps) for e in check_dataset(data).episodes)
    n_total = min(n_total, limit) if limit else n_total
    result: dict[str, Any] = {"data": str(data), "critic": critic, "weights": weights or "shipped recognizer"}
    md: list[str] = []
    rows: dict[str, list[dict[str, Any]]] = {}
    for kind in ["clean"] + ([degradation] if degradation and degradation != "clean" else []):
        res = evaluate_labelled(c, data, degrade=kind, limit=limit, progress=progress(kind, n_total) if progress else None)
        rows[kind] = res.rows
        summary = res.summary()
        pr = evaluate_pairs(c, pairs_file, degrade=kind)
        result[kind] = {"labelled": summary, "pairs": pr}
        md.append(format_report(summary, pr, title=f"{kind} frames"))
    if degradation and degradation != "clean":
        from spiral.train.augment import DEGRADATIONS

        a, b = result["clean"]["labelled"], result[degradation]["labelled"]
        keys = ["accuracy", "kind_accuracy", "false_reject_rate"] + [f"recall.{k}" for k in a["recall"]]
        get = (lambda d, k: d["recall"][k.split(".", 1)[1]] if k.startswith("recall.") else d[k])  # noqa: E731
        result["delta"] = {k: get(b, k) - get(a, k) for k in keys}
        result["delta"]["pairs.with_ties"] = result[degradation]["pairs"]["with_ties"] - result["clean"]["pairs"]["with_ties"]
        md.append(f"### degraded − clean ({degradation}: {DEGRADATIONS[degradation]})\n\n| metric | delta |\n| --- | --- |\n"
                  + "\n".join(f"| {k} | {v:+.4f} |" for k, v in result["delta"].items()))
    if agree_with:
        other = make_critic(critic, None if agree_with == "critic" else agree_with)
        res = evaluate_labelled(other, data, limit=limit, progress=progress(f"agreement ({agree_with})", n_total)
                                if progress else None)
        result["agreement"] = {"with": agree_with, **agreement(rows["clean"], res.rows),
                               "other_accuracy": res.summary()["accuracy"],
                               "other_kind_accuracy": res.summary()["kind_accuracy"]}
        g = result["agreement"]
        md.append(f"### agreement with the {agree_with} recogniser's critic (clean frames)\n\n| metric | value |\n| --- | --- |\n"
                  + "\n".join(f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in g.items()))
    return result, "\n\n".join(md)

