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

A planner answers by planning from the observation (``replan(goal, observation, history)``)
and matching its first step to a candidate (exact action, else closest text); a planner with
a ``choose(question) -> int`` method (an LLM that sees the candidates in its prompt) is asked
directly. The tabletop set (``suites/tabletop-planner-v1.jsonl``) is made by
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

from spiral.agents import ChoosesSteps
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
@dataclass
class LoadedQuestions:
    """Valid questions and, per bad line, why it was skipped."""

    questions: list[dict[str, Any]]
    errors: list[str]


def load_questions(path: str | Path) -> LoadedQuestions:
    """Read a JSONL file of EgoPlan-format questions; a malformed line is reported, the rest kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"question file not found: {path}")
    qs, errs = [], []
    for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            q = json.loads(line)
        except json.JSONDecodeError as e:
            errs.append(f"line {no}: not JSON ({e.msg})")
            continue
        missing = [k for k in ("task_goal", "choice_a", "choice_b", "choice_c", "choice_d", "golden_choice_idx")
                   if k not in q]
        if missing:
            errs.append(f"line {no}: missing {', '.join(missing)}")
            continue
        if str(q["golden_choice_idx"]).upper() not in LETTERS:
            errs.append(f"line {no}: golden_choice_idx {q['golden_choice_idx']!r} is not one of A–D")
            continue
        q["_line"], q["_root"] = no, str(path.parent)
        qs.append(q)
    return LoadedQuestions(qs, errs)


def choices(q: dict[str, Any]) -> list[str]:
    return [str(q[f"choice_{c.lower()}"]) for c in LETTERS]


# ---- answering -----------------------------------------------------------------------------------
def observation(q: dict[str, Any]) -> Any:
    """The observation a planner sees: the current frame (rendered or read from the video) and the state if known."""
    from spiral.types import Observation

    frame = None
    state = q.get("observation_state")
    if q.get("world") == "tabletop" and state is not None:
        from spiral.world.domain import State
        from spiral.world.render import Appearance, render_state

        scene = q.get("scene")
        look = Appearance.sample(scene) if scene is not None else Appearance.default()
        frame = render_state(State.from_dict(state), appearance=look)
    elif q.get("video_path") and q.get("current_observation_frame") is not None:
        video = Path(q.get("_root", ".")) / q["video_path"]
        if video.is_file():
            from spiral.video import read_video

            frames = read_video(video)
            frame = frames[min(int(q["current_observation_frame"]), len(frames) - 1)]
    return Observation(frame=frame, state=state)


def history(q: dict[str, Any]) -> list[Any]:
    """The executed steps as SubActions (text only for EgoPlan narrations; parsed when they are tabletop actions)."""
    from spiral.types import SubAction

    out = []
    lookup = _action_texts()
    for i, step in enumerate(q.get("task_progress_metadata") or []):
        text = str(step.get("narration_text", ""))
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


def answer(planner: Any, q: dict[str, Any]) -> int:
    """The planner's choice (0–3): its ``choose`` hook, or the first step of its plan matched to a candidate."""
    if isinstance(planner, ChoosesSteps):
        idx = int(planner.choose(q))
        if not 0 <= idx < 4:
            raise ValueError(f"choose() returned {idx}; expected 0–3")
        return idx
    obs = observation(q)
    hist = history(q)
    plan = planner.replan(q["task_goal"], obs, hist) if hist else planner.plan(q["task_goal"], obs)
    if not plan.steps:
        raise ValueError("the planner returned no next step (it thinks the goal is already met)")
    return match_choice(plan.steps[0], choices(q))


def evaluate(planner: Any, questions: list[dict[str, Any]]) -> dict[str, Any]:
    """Accuracy overall and per subset; which distractor kinds wrong answers picked; errors per question."""
    per: dict[str, list[int]] = defaultdict(list)
    picked: Counter = Counter()
    errors = []
    for q in questions:
        gold = LETTERS.index(str(q["golden_choice_idx"]).upper())
        subset = str(q.get("subset") or q.get("video_source") or "all")
        try:
            idx = answer(planner, q)
        except Exception as e:  # an unanswerable question counts as wrong
            errors.append({"sample_id": q.get("sample_id", q.get("_line")), "error": f"{type(e).__name__}: {e}"})
            per[subset].append(0)
            continue
        per[subset].append(int(idx == gold))
        if idx != gold:
            picked[(q.get("distractor_kinds") or {}).get(LETTERS[idx], "other")] += 1
    allv = [v for vs in per.values() for v in vs]
    return {
        "n": len(allv),
        "accuracy": float(np.mean(allv)) if allv else None,
        "subsets": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(per.items())},
        "wrong_choice_kinds": dict(picked),
        "errors": errors,
    }


def run_eval(questions: str | Path | None = None, planner: str = "symbolic", n: int | None = None,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load questions (default: the tabletop set), build the planner by name, score the first ``n``."""
    from spiral import registry

    loaded = load_questions(questions or DEFAULT_QUESTIONS)
    qs = loaded.questions[:n] if n else loaded.questions
    agent = registry.create("planner", planner, **(options or {}))
    out = evaluate(agent, qs)
    out.update(planner=planner, questions=str(questions or DEFAULT_QUESTIONS), bad_lines=loaded.errors)
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
