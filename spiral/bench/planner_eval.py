"""Planner evaluation: EgoPlan-Bench-style multiple-choice next-step questions (``spiral eval planner``).

A question gives a goal, the progress observed so far (the steps already executed and the
current observation: a frame and, in the tabletop world, its state) and four candidate next
actions; exactly one is the right next step. The format is EgoPlan-Bench's JSON fields, one
question per line (docs/bench.md):

``sample_id``, ``task_goal``, ``question``, ``choice_a`` … ``choice_d``, ``golden_choice_idx``
(``"A"``–``"D"``), ``answer``, ``task_progress_metadata`` (``[{"narration_text": …}, …]``,
the executed steps), optional ``subset`` and, for tabletop questions, ``scene`` (seed of the
first frame), ``observation_state`` and ``distractor_kinds``. EgoPlan files may also carry
``video_path`` + ``current_observation_frame``; the frame is read when the video exists.

EgoPlan-Bench publishes its validation and test sets as one JSON array per file
(``EgoPlan_validation.json``, ``EgoPlan_Bench_{EpicKitchens,Ego4D}.json``; EgoPlan-Bench2 likewise), with
``video_source``, ``video_id`` and ``current_observation_frame``; :func:`load_questions` reads those as
they are, and :class:`FrameSources` says where the EPIC-KITCHENS frame folders and Ego4D videos are.
Scoring is EgoPlan's: right answers / questions, per subset (``video_source``) and overall.

A planner with the ``ChoosesNextStep`` capability (``spiral.agents``; the ``llm`` and
``transformers-vlm`` planners: the candidates in the prompt, the answer a schema-constrained letter) is
asked directly; any other planner answers by planning from the observation (``replan(goal,
observation, history)``) and its first step is matched to a candidate (exact action, else closest text). The tabletop set (``suites/tabletop-planner-v1.jsonl``) is made by
``python -m spiral.bench.planner_eval --make``: distractors are a step from later in the plan,
the right verb on the wrong object, and an action that is applicable now but not optimal; a
distractor that is also an optimal next step is rejected, so every question has one answer.
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spiral.agents import ChoosesNextStep
from spiral.bench import seeds
from spiral.bench.suite import SUITES_DIR

LETTERS = "ABCD"
DEFAULT_QUESTIONS = SUITES_DIR / "tabletop-planner-v1.jsonl"
QUESTION = ("Considering the progress so far and the current observation, what action should be taken next "
            "in order to {goal}?")


# ---- the question set ----------------------------------------------------------------------------
def _sub(state: Any, action: Any, i: int) -> Any:
    from spiral.types import SubAction
    from spiral.world import domain

    return SubAction(id=i, text=action.text(), verb=action.verb, objects=list(action.args),
                     preconditions=domain.preconditions(state, action), postconditions=domain.effects(state, action))


def _remaining(planner: Any, goal: Any, state: Any, history: list) -> list:
    plan = planner.replan(goal, state, history)
    from spiral.world.domain import Action

    return [Action(s.verb, tuple(s.objects)) for s in plan.steps]


def _is_optimal_next(planner: Any, goal: Any, state: Any, history: list, action: Any, n_left: int) -> bool:
    """Whether ``action`` is also a first step of some optimal completion (then it cannot be a distractor)."""
    from spiral.world import domain

    if not domain.is_applicable(state, action):
        return False
    nxt = domain.apply(state, action)
    try:
        rest = _remaining(planner, goal, nxt, history + [_sub(state, action, len(history))])
    except ValueError:
        return False
    return len(rest) + 1 <= n_left


def make_question(scene: int, planner: Any) -> dict[str, Any] | None:
    """One tabletop question from a reserved scene seed (None when no unambiguous question exists)."""
    from spiral.bench.make_suite import FOCUS, sample_case
    from spiral.bench.suite import action_tag
    from spiral.world import domain
    from spiral.world.domain import BLOCKS, Action

    rng = np.random.default_rng([scene, 41])
    length = int(rng.integers(2, 9))
    got = sample_case(scene, FOCUS[int(rng.integers(len(FOCUS)))], length, bool(rng.random() < 0.5), planner)
    if got is None:
        return None
    goal, actions, state0 = got
    k = int(rng.integers(0, length))  # steps already executed
    state, history = state0, []
    for i, a in enumerate(actions[:k]):
        history.append(_sub(state, a, i))
        state = domain.apply(state, a)
    rest = _remaining(planner, goal, state, history)
    if not rest:
        return None
    correct = rest[0]
    n_left = len(rest)
    cands: dict[str, tuple[Action, str]] = {}

    def add(a: Action, kind: str) -> None:
        if str(a) != str(correct) and str(a) not in cands and not _is_optimal_next(planner, goal, state, history, a,
                                                                                    n_left):
            cands[str(a)] = (a, kind)

    later = [a for a in rest[1:] if str(a) != str(correct)]
    if later:
        add(later[int(rng.integers(len(later)))], "later_step")
    wrong_obj: list[Action] = []
    if correct.verb == "move":
        b, d = correct.args
        wrong_obj = [Action("move", (c, d)) for c in BLOCKS if c not in (b, d)]
        wrong_obj += [Action("move", (b, e)) for e in domain.LOCATIONS if e not in (b, d)]
    else:
        flip = {"open": "close", "close": "open", "switch_on": "switch_off", "switch_off": "switch_on"}
        wrong_obj = [Action(flip[correct.verb], correct.args)]
        wrong_obj += [Action("open" if not state.box_open else "close", ("box",))] if correct.args != ("box",) else []
        wrong_obj += [Action("switch_on" if not state.lamp_on else "switch_off", ("lamp",))] \
            if correct.args != ("lamp",) else []
    rng.shuffle(wrong_obj)
    for a in wrong_obj:
        if len(cands) >= 2:
            break
        add(a, "wrong_object")
    applicable = domain.applicable_actions(state)
    rng.shuffle(applicable)
    for a in applicable:
        if len(cands) >= 3:
            break
        add(a, "applicable_wrong")
    if len(cands) < 3:
        return None
    options = [(correct, "correct")] + list(cands.values())[:3]
    order = rng.permutation(4)
    options = [options[int(i)] for i in order]
    gold = next(i for i, (_, kind) in enumerate(options) if kind == "correct")
    q: dict[str, Any] = {
        "sample_id": f"tabletop-pq-{scene}",
        "task_goal": goal_text(goal, scene),
        "question": "",
        **{f"choice_{LETTERS[i].lower()}": a.text() for i, (a, _) in enumerate(options)},
        "golden_choice_idx": LETTERS[gold],
        "answer": correct.text(),
        "task_progress_metadata": [{"narration_text": h.text} for h in history],
        "subset": action_tag(state, correct),
        "world": "tabletop",
        "scene": scene,
        "observation_state": state.to_dict(),
        "n_steps_total": length,
        "distractor_kinds": {LETTERS[i]: kind for i, (_, kind) in enumerate(options) if kind != "correct"},
    }
    g = q["task_goal"].rstrip(".")
    q["question"] = QUESTION.format(goal=g[:1].lower() + g[1:])
    return q


def goal_text(goal: Any, scene: int) -> str:
    from spiral.world.goals import goal_to_text

    return goal_to_text(goal.stages, np.random.default_rng([scene, 43]))


def make_questions(n: int, start: int = seeds.PLANNER_QUESTIONS.start) -> list[dict[str, Any]]:
    """``n`` tabletop questions from consecutive reserved scene seeds."""
    from spiral.planners.symbolic import SymbolicPlanner

    planner = SymbolicPlanner()
    out: list[dict[str, Any]] = []
    scene = start
    while len(out) < n:
        if scene not in seeds.PLANNER_QUESTIONS:
            raise RuntimeError("ran out of reserved planner-question seeds")
        q = make_question(scene, planner)
        scene += 1
        if q is not None:
            out.append(q)
    return out


# ---- loading -------------------------------------------------------------------------------------
CHOICE_FIELDS = tuple(f"choice_{c.lower()}" for c in LETTERS)
REQUIRED = ("task_goal", *CHOICE_FIELDS)
FORMATS_HELP = ("eval planner reads EgoPlan-Bench's multiple-choice files as published (EgoPlan_validation.json, "
                "EgoPlan_Bench_*.json, EgoPlan-Bench2's JSON) or the JSONL of docs/bench.md")


@dataclass
class LoadedQuestions:
    """Valid questions and, per bad entry (JSON array) or line (JSONL), why it was skipped."""

    questions: list[dict[str, Any]]
    errors: list[str]
    format: str = "jsonl"


def load_questions(path: str | Path) -> LoadedQuestions:
    """Read a question file: EgoPlan-Bench's JSON array as published, or JSONL with the same fields.

    A bad entry is reported and skipped; a file with no usable question, or of another kind (EgoPlan-IT's
    training file, a JSON that is not a question list), is a ValueError naming what is wrong.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    text = path.read_text(encoding="utf-8")
    entries: list[tuple[str, Any]] = []
    errs: list[str] = []
    if text.lstrip()[:1] == "[":
        fmt = "egoplan-json"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); EgoPlan-Bench files are one JSON "
                             "array of questions") from None
        entries = [(f"entry {i}", q) for i, q in enumerate(data)]
    else:
        fmt = "jsonl"
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entries.append((f"line {no}", json.loads(line)))
            except json.JSONDecodeError as e:
                errs.append(f"line {no}: not JSON ({e.msg})")
    _check_kind(path, [q for _, q in entries if isinstance(q, dict)], errs)
    qs = []
    for where, q in entries:
        problem = _problem(q)
        if problem:
            sid = q.get("sample_id") if isinstance(q, dict) else None
            errs.append(f"{where}{f' (sample_id {sid})' if sid is not None else ''}: {problem}")
            continue
        q["_gold"], q["_line"], q["_root"] = _gold(q), where, str(path.parent)
        qs.append(q)
    if not qs:
        raise ValueError(f"{path} has no usable question ({len(errs)} bad): {errs[0] if errs else 'it is empty'}")
    return LoadedQuestions(qs, errs, fmt)


def _check_kind(path: Path, entries: list[dict[str, Any]], errs: list[str]) -> None:
    """Refuse a file that is not a multiple-choice question set at all, with one line saying what it is."""
    if not entries or any(all(k in q for k in REQUIRED) for q in entries):
        return
    if any("negative_answers" in q for q in entries):
        raise ValueError(f"{path} is EgoPlan-IT (the instruction-tuning set: one answer and negative answers, no four "
                         f"choices); {FORMATS_HELP}")
    missing = [k for k in REQUIRED if not any(k in q for q in entries)]
    raise ValueError(f"{path} is not an EgoPlan-Bench question file: no entry has {', '.join(missing)} (fields found: "
                     f"{', '.join(sorted(entries[0])[:12])}); {FORMATS_HELP}")


def _problem(q: Any) -> str | None:
    if not isinstance(q, dict):
        return f"expected a JSON object, got {type(q).__name__}"
    missing = [k for k in REQUIRED if k not in q]
    if missing:
        return f"missing {', '.join(missing)}"
    if "golden_choice_idx" in q and str(q["golden_choice_idx"]).upper() not in LETTERS:
        return f"golden_choice_idx {q['golden_choice_idx']!r} is not one of A–D"
    steps = q.get("task_progress_metadata") or []
    if not isinstance(steps, list) or not all(isinstance(x, dict) for x in steps):
        return "task_progress_metadata must be a list of objects with narration_text"
    n = q.get("current_observation_frame")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        return f"current_observation_frame must be a frame number >= 0, got {n!r}"
    return None


def _gold(q: dict[str, Any]) -> int | None:
    """The right choice's index: ``golden_choice_idx``, else the choice equal to ``answer``; None in a test file
    published without answers (the question is answered, not scored)."""
    if "golden_choice_idx" in q:
        return LETTERS.index(str(q["golden_choice_idx"]).upper())
    hits = [i for i, c in enumerate(choices(q)) if "answer" in q and c == str(q["answer"])]
    return hits[0] if len(hits) == 1 else None


def choices(q: dict[str, Any]) -> list[str]:
    return [str(q[f"choice_{c.lower()}"]) for c in LETTERS]


# ---- the current observation ---------------------------------------------------------------------
@dataclass(frozen=True)
class FrameSources:
    """Where the frames of published EgoPlan questions are, passed by path as EgoPlan's own scripts take them.

    ``epic_kitchens``: EPIC-KITCHENS-100 RGB frames, ``<root>/P01/rgb_frames/P01_13/frame_0000000760.jpg``;
    ``ego4d``: Ego4D videos, ``<root>/<video_id>.mp4`` (EgoPlan-Bench2 names the video in its sample_id). A question
    whose source is not given is answered without a frame.
    """

    epic_kitchens: Path | None = None
    ego4d: Path | None = None


def _inside(root: Path, rel: Path, what: str) -> Path:
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise ValueError(f"frame path {rel} leaves {what} {root}")
    if not path.is_file():
        raise FileNotFoundError(f"frame not found: {path} (check {what})")
    return path


def current_frame(q: dict[str, Any], sources: FrameSources = FrameSources()) -> np.ndarray | None:
    """The question's current observation: rendered from the state for tabletop questions; read from the EPIC-KITCHENS
    frame folder or the Ego4D video for EgoPlan questions (None when that source was not given)."""
    state = q.get("observation_state")
    if q.get("world") == "tabletop" and state is not None:
        from spiral.world.domain import State
        from spiral.world.render import Appearance, render_state

        scene = q.get("scene")
        look = Appearance.sample(scene) if scene is not None else Appearance.default()
        return render_state(State.from_dict(state), appearance=look)
    n = q.get("current_observation_frame")
    if n is None:
        return None
    from spiral.video import read_frame

    source = str(q.get("video_source") or "").lower()
    if "epic" in source:
        if sources.epic_kitchens is None:
            return None
        vid = str(q.get("video_id") or "")
        if not vid:
            raise ValueError("an EpicKitchens question without video_id")
        rel = Path(vid.split("_")[0], "rgb_frames", vid, f"frame_{int(n):010d}.jpg")
        from PIL import Image

        with Image.open(_inside(sources.epic_kitchens, rel, "--epic-kitchens-frames")) as im:
            return np.asarray(im.convert("RGB"))
    if source == "ego4d" or (not source and "task_start_frame" in q):  # EgoPlan-Bench2 is built on Ego4D
        if sources.ego4d is None:
            return None
        vid = str(q.get("video_id") or str(q.get("sample_id", "")).split("_")[0])
        return read_frame(_inside(sources.ego4d, Path(f"{vid}.mp4"), "--ego4d-videos"), int(n))
    if q.get("video_path"):
        return read_frame(_inside(Path(q.get("_root", ".")), Path(q["video_path"]), "the question file's folder"),
                          int(n))
    return None


def observation(q: dict[str, Any], sources: FrameSources = FrameSources()) -> Any:
    """What a planner sees: the current frame and the state if known."""
    from spiral.types import Observation

    return Observation(frame=current_frame(q, sources), state=q.get("observation_state"))


def progress(q: dict[str, Any]) -> list[str]:
    return [str(step.get("narration_text", "")) for step in q.get("task_progress_metadata") or []]


def as_question(q: dict[str, Any], sources: FrameSources = FrameSources()) -> Any:
    """The typed question a ``ChoosesNextStep`` planner gets."""
    from spiral.types import NextStepQuestion

    return NextStepQuestion(id=str(q.get("sample_id", q.get("_line", ""))), goal=str(q["task_goal"]),
                            question=str(q.get("question") or ""), choices=choices(q), progress=progress(q),
                            frame=current_frame(q, sources), state=q.get("observation_state"), world=q.get("world"))


def history(q: dict[str, Any]) -> list[Any]:
    """The executed steps as SubActions (text only for EgoPlan narrations; parsed when they are tabletop actions)."""
    from spiral.types import SubAction

    out = []
    lookup = _action_texts()
    for i, text in enumerate(progress(q)):
        a = lookup.get(text.lower().strip())
        if a is not None:
            out.append(SubAction(id=i, text=text, verb=a.verb, objects=list(a.args)))
        else:
            out.append(SubAction(id=i, text=text, verb="", objects=[]))
    if q.get("world") == "tabletop" and q.get("scene") is not None and out:
        out = _with_conditions(q["scene"], out)
    return out


def _with_conditions(scene: int, hist: list[Any]) -> list[Any]:
    """Fill pre/post-conditions by replaying the executed actions from the scene's first state."""
    from spiral.world import domain
    from spiral.world.domain import Action
    from spiral.world.tasks import sample_state

    state = sample_state(np.random.default_rng(scene))
    out = []
    for h in hist:
        if not h.verb:
            return hist
        a = Action(h.verb, tuple(h.objects))
        if not domain.is_applicable(state, a):
            return hist
        out.append(h.model_copy(update={"preconditions": domain.preconditions(state, a),
                                        "postconditions": domain.effects(state, a)}))
        state = domain.apply(state, a)
    return out


_TEXTS: dict[str, Any] = {}


def _action_texts() -> dict[str, Any]:
    if not _TEXTS:
        from spiral.world.domain import all_actions

        _TEXTS.update({a.text(): a for a in all_actions()})
    return _TEXTS


def match_choice(step: Any, options: list[str]) -> int:
    """Index of the candidate that is the planner's step: same tabletop action, else the closest text."""
    lookup = _action_texts()
    verb, objects = getattr(step, "verb", ""), list(getattr(step, "objects", []) or [])
    for i, text in enumerate(options):
        a = lookup.get(text.lower().strip())
        if a is not None and a.verb == verb and list(a.args) == objects:
            return i
    text = str(getattr(step, "text", step)).lower()
    scores = [difflib.SequenceMatcher(None, text, o.lower()).ratio() for o in options]
    return int(np.argmax(scores))


# ---- answering -----------------------------------------------------------------------------------
def answer(planner: Any, q: dict[str, Any], sources: FrameSources = FrameSources()) -> int:
    """The planner's choice (0–3): asked directly when it can choose (``ChoosesNextStep``), else the first step of
    its plan from the observation, matched to a candidate."""
    if isinstance(planner, ChoosesNextStep):
        idx = planner.choose(as_question(q, sources))
        if isinstance(idx, bool) or not isinstance(idx, int | np.integer) or not 0 <= int(idx) < 4:
            raise ValueError(f"choose() returned {idx!r}; expected an index 0–3")
        return int(idx)
    obs = observation(q, sources)
    hist = history(q)
    plan = planner.replan(q["task_goal"], obs, hist) if hist else planner.plan(q["task_goal"], obs)
    if not plan.steps:
        raise ValueError("the planner returned no next step (it thinks the goal is already met)")
    return match_choice(plan.steps[0], choices(q))


def _subset(q: dict[str, Any]) -> str:
    return str(q.get("subset") or q.get("video_source") or q.get("domain") or "all")


def evaluate(planner: Any, questions: list[dict[str, Any]], sources: FrameSources = FrameSources(),
             progress_cb: Any = None) -> dict[str, Any]:
    """EgoPlan-Bench's score: accuracy = right answers / questions, per subset (``video_source``) and over all
    questions; an unanswerable question counts as wrong. Questions published without an answer (a test file) are
    answered (``predictions``) but not scored."""
    per: dict[str, list[int]] = defaultdict(list)
    picked: Counter = Counter()
    errors, predictions = [], []
    for i, q in enumerate(questions):
        gold = q["_gold"] if "_gold" in q else _gold(q)
        sid = q.get("sample_id", q.get("_line"))
        try:
            idx: int | None = answer(planner, q, sources)
        except Exception as e:  # an unanswerable question counts as wrong
            errors.append({"sample_id": sid, "error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"})
            idx = None
        predictions.append({"sample_id": sid, "label": LETTERS[idx] if idx is not None else "N/A"})
        if progress_cb:
            progress_cb(i + 1)
        if gold is None:
            continue
        per[_subset(q)].append(int(idx == gold))
        if idx is not None and idx != gold:
            picked[(q.get("distractor_kinds") or {}).get(LETTERS[idx], "other")] += 1
    allv = [v for vs in per.values() for v in vs]
    return {
        "n": len(allv),
        "accuracy": float(np.mean(allv)) if allv else None,
        "subsets": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(per.items())},
        "n_unlabelled": len(questions) - len(allv),
        "wrong_choice_kinds": dict(picked),
        "errors": errors,
        "predictions": predictions,
    }


def run_eval(questions: str | Path | None = None, planner: str | None = None, n: int | None = None,
             config: str | Path | None = None, overrides: list[str] | None = None,
             sources: FrameSources = FrameSources(), progress_cb: Any = None) -> dict[str, Any]:
    """Load questions (default: the tabletop set), build the planner from the run config (``--config``/``--set``,
    e.g. ``planner.options.model=...``; ``planner`` names it), score the first ``n``."""
    from spiral import registry
    from spiral.config import load_config

    for flag, root in (("--epic-kitchens-frames", sources.epic_kitchens), ("--ego4d-videos", sources.ego4d)):
        if root is not None and not Path(root).is_dir():
            raise FileNotFoundError(f"{flag} folder not found: {root}")
    loaded = load_questions(questions or DEFAULT_QUESTIONS)
    qs = loaded.questions[:n] if n else loaded.questions
    cfg = load_config(config, ([f"planner.name={planner}"] if planner else []) + list(overrides or []))
    agent = registry.create("planner", cfg.planner.name, **cfg.planner.options)
    out = evaluate(agent, qs, sources, progress_cb)
    out.update(planner=cfg.planner.name, questions=str(questions or DEFAULT_QUESTIONS), format=loaded.format,
               bad_lines=loaded.errors)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="make the tabletop planner question set")
    ap.add_argument("--make", action="store_true", help="write suites/tabletop-planner-v1.jsonl")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=DEFAULT_QUESTIONS)
    args = ap.parse_args(argv)
    if not args.make:
        ap.print_help()
        return 2
    from spiral import atomic

    qs = make_questions(args.n)
    atomic.write_text(args.out, "".join(json.dumps(q) + "\n" for q in qs))
    print(f"wrote {len(qs)} questions to {args.out}: subsets {dict(Counter(q['subset'] for q in qs))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
