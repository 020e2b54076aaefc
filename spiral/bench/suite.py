"""Benchmark suites: versioned JSON files of cases, validated case by case (DESIGN §7).

A suite file is ``{"name", "version", "created_by", "world", "cases": [...]}``; a case is
``{"id", "goal", "scene" | "image", "length_class", "n_steps", "tags"}`` (+ optional ``phrasing``,
``notes``; docs/bench.md).
One bad case never sinks a suite: :func:`load_suite` keeps every valid case and records a
:class:`CaseError` (case id, field, what is wrong, how to fix it) for each bad one, so the
runner can report it in ``results.json`` and still run the rest.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spiral.world.domain import BLOCKS, BOX

if TYPE_CHECKING:
    from spiral.world.domain import Action, State
    from spiral.world.goals import Goal

SUITES_DIR = Path(__file__).resolve().parent / "suites"
LENGTH_CLASSES: dict[str, tuple[int, int]] = {"short": (1, 2), "medium": (3, 5), "long": (6, 8), "xlong": (9, 12)}

#: the action types a case's tags name (each plan step has one)
ACTION_TAGS: tuple[str, ...] = ("move", "stack", "box", "open", "close", "lamp")


def action_tag(state: State, action: Action) -> str:
    """The action type of one plan step: move (to a slot), stack, box (into the box), open, close, lamp."""
    if action.verb == "move":
        dest = action.args[1]
        return "box" if dest == BOX else "stack" if dest in BLOCKS else "move"
    return "lamp" if action.verb.startswith("switch") else action.verb


def plan_tags(state: State, goal: Goal, actions: list[Action]) -> list[str]:
    """Tags of a case: the action types its optimal plan uses, plus ``multi-stage``."""
    found = {action_tag(state, a) for a in actions}
    tags = [t for t in ACTION_TAGS if t in found]
    return tags + (["multi-stage"] if len(goal.stages) > 1 else [])

TAGS: tuple[str, ...] = ("move", "stack", "box", "open", "close", "lamp", "multi-stage", "tower", "scene-relative")
# how a goal text is phrased (tabletop-v2 records the constructions of spiral.world.grammar it uses)
PHRASINGS: tuple[str, ...] = ("plain", "filler", "group-pronoun", "pick-place", "tower", "possessive", "coordination",
                              "swap", "next-to", "side-of", "inside", "declarative", "before-after", "numbered",
                              "implicit-order", "ellipsis", "source", "toggle", "lid")
CASE_FIELDS = ("id", "goal", "scene", "image", "length_class", "n_steps", "tags", "phrasing", "notes", "reference_plan")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


class SuiteError(ValueError):
    """A suite that cannot be used at all (unknown name, not JSON, no case list)."""


@dataclass(frozen=True)
class CaseError:
    """Why one case of a suite is unusable, and how to fix it."""

    index: int
    case_id: str
    field: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"case {self.case_id!r} (#{self.index}) field '{self.field}': {self.message}; fix: {self.fix}"


@dataclass(frozen=True)
class Case:
    """One benchmark case: a goal from a first frame (tabletop scene seed or image file)."""

    id: str
    goal: str
    length_class: str
    n_steps: int
    tags: tuple[str, ...] = ()
    scene: int | None = None
    image: Path | None = None  # absolute (resolved against the suite's folder)
    phrasing: tuple[str, ...] = ()
    reference_plan: tuple[str, ...] = ()  # optional: the steps a person took (e.g. a dataset's annotations)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"id": self.id, "goal": self.goal, "length_class": self.length_class,
                             "n_steps": self.n_steps, "tags": list(self.tags)}
        if self.phrasing:
            d["phrasing"] = list(self.phrasing)
        if self.scene is not None:
            d["scene"] = self.scene
        if self.image is not None:
            d["image"] = str(self.image)
        if self.reference_plan:
            d["reference_plan"] = list(self.reference_plan)
        return d


@dataclass
class Suite:
    """A loaded suite: its valid cases, in file order, and the errors of the bad ones."""

    name: str
    version: str
    path: Path
    cases: list[Case]
    errors: list[CaseError] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def limit(self, n: int | None) -> Suite:
        """``n`` valid cases taken from each length class in turn (all when ``n`` is None); errors are kept.

        Round-robin over classes, so that ``--limit 6`` of a suite ordered short → long still
        covers short, medium and long cases; the chosen cases keep their suite order.
        """
        if n is None or n >= len(self.cases):
            return self
        queues = {cls: [c for c in self.cases if c.length_class == cls] for cls in LENGTH_CLASSES}
        picked: set[str] = set()
        while len(picked) < n:
            for q in queues.values():
                if q and len(picked) < n:
                    picked.add(q.pop(0).id)
        cases = [c for c in self.cases if c.id in picked]
        return Suite(self.name, self.version, self.path, cases, self.errors, self.meta)


def known_suites() -> list[str]:
    """Names of the suites shipped in ``spiral/bench/suites``."""
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))


def resolve_suite(name_or_path: str | Path) -> Path:
    """A shipped suite's name or a path to a suite file → the file; unknown names list the known ones."""
    p = Path(name_or_path)
    if p.suffix == ".json" or p.exists():
        if not p.is_file():
            raise SuiteError(f"suite file not found: {p}")
        return p
    shipped = SUITES_DIR / f"{name_or_path}.json"
    if shipped.is_file():
        return shipped
    known = known_suites()
    close = difflib.get_close_matches(str(name_or_path), known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise SuiteError(f"unknown suite {str(name_or_path)!r}{hint}; known suites: {', '.join(known)}; "
                     "or pass the path of a suite .json file")


def load_suite(name_or_path: str | Path, check_plans: bool = True) -> Suite:
    """Read and validate a suite; bad cases are recorded in ``Suite.errors``, good ones kept.

    ``check_plans`` also plans every scene case with the exact planner and checks its
    ``n_steps`` (catches goals that became unreachable or changed length).
    """
    path = resolve_suite(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise SuiteError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None
    except (UnicodeDecodeError, RecursionError) as e:  # found by fuzzing (tests/fuzz_props.py)
        raise SuiteError(f"{path} is not a JSON suite ({'nested too deeply' if isinstance(e, RecursionError) else e})"
                         ) from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise SuiteError(f"{path}: a suite is an object with a 'cases' list "
                         '({"name": ..., "version": ..., "cases": [...]}); see docs/bench.md')
    name = data.get("name") or path.stem
    version = str(data.get("version", "0"))
    world = data.get("world", "tabletop")
    cases: list[Case] = []
    errors: list[CaseError] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["cases"]):
        case, errs = validate_case(raw, i, path.parent, seen, world=world, check_plans=check_plans)
        if errs:
            errors += errs
        elif case is not None:
            cases.append(case)
            seen.add(case.id)
    meta = {k: v for k, v in data.items() if k != "cases"}
    return Suite(name=name, version=version, path=path, cases=cases, errors=errors, meta=meta)


def validate_case(raw: Any, index: int, root: Path, seen: set[str] | None = None, world: str = "tabletop",
                  check_plans: bool = True) -> tuple[Case | None, list[CaseError]]:
    """Validate one case dict; returns the case or the list of what is wrong with it."""
    seen = seen if seen is not None else set()
    if not isinstance(raw, dict):
        return None, [CaseError(index, f"#{index}", "case", f"a case must be an object, got {type(raw).__name__}",
                                'write {"id": ..., "goal": ..., "scene": ..., "length_class": ..., "n_steps": ...}')]
    cid = raw.get("id")
    label = cid if isinstance(cid, str) and cid else f"#{index}"
    errs: list[CaseError] = []

    def bad(fld: str, msg: str, fix: str) -> None:
        errs.append(CaseError(index, label, fld, msg, fix))

    for k in raw:
        if k not in CASE_FIELDS:
            close = difflib.get_close_matches(k, CASE_FIELDS, n=1)
            bad(k, "unknown field", f"rename it to '{close[0]}'" if close else f"remove it (fields: {', '.join(CASE_FIELDS)})")
    if not isinstance(cid, str) or not _ID_RE.match(cid):
        bad("id", f"missing or not a plain name: {cid!r}", "use letters, digits, '-', '_' or '.' (it names a folder)")
    elif cid in seen:
        bad("id", f"duplicate id {cid!r}", "give every case a unique id")
    goal = raw.get("goal")
    if not isinstance(goal, str) or not goal.strip():
        bad("goal", "missing or empty", "say what should happen, e.g. 'put the red block in the box'")
        goal = None
    elif world == "tabletop":
        from spiral.world.goals import GoalParseError, parse_goal

        try:
            parse_goal(goal)
        except GoalParseError as e:
            bad("goal", f"the tabletop grammar cannot read it ({e.reason})", "rephrase it (grammar: spiral/world/goals.py)")
            goal = None
    scene, image = raw.get("scene"), raw.get("image")
    img_path: Path | None = None
    if (scene is None) == (image is None):
        bad("scene/image", "give exactly one first-frame source", "set 'scene' (a seed) or 'image' (a path)")
    elif scene is not None and world != "tabletop":
        bad("scene", f"a scene seed renders a tabletop scene; this suite's world is {world!r}",
            "give the case's first frame as 'image'")
    elif scene is not None and (isinstance(scene, bool) or not isinstance(scene, int) or scene < 0):
        bad("scene", f"must be a non-negative integer seed, got {scene!r}", "use e.g. 10000042")
    elif image is not None:
        img_path, msg = _check_image(image, root)
        if msg:
            bad("image", msg, "point 'image' at an RGB PNG/JPEG inside the suite's folder")
    lc = raw.get("length_class")
    if not isinstance(lc, str) or lc not in LENGTH_CLASSES:  # a list here crashed the loader (found by fuzzing)
        bad("length_class", f"{lc!r} is not a length class", f"use one of {', '.join(LENGTH_CLASSES)}")
    n = raw.get("n_steps")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        bad("n_steps", f"must be a positive integer, got {n!r}", "count the steps of the goal's optimal plan")
    elif isinstance(lc, str) and lc in LENGTH_CLASSES and not LENGTH_CLASSES[lc][0] <= n <= LENGTH_CLASSES[lc][1]:
        lo, hi = LENGTH_CLASSES[lc]
        right = next((k for k, (a, b) in LENGTH_CLASSES.items() if a <= n <= b), None)
        top = max(b for _, b in LENGTH_CLASSES.values())
        bad("n_steps", f"{n} steps is not {lc} ({lo}–{hi})", f"set length_class to '{right}'" if right else
            f"keep plans within 1–{top} steps")
    tags = raw.get("tags", [])
    if not isinstance(tags, list) or any(t not in TAGS for t in tags):
        unknown = [t for t in tags if t not in TAGS] if isinstance(tags, list) else tags
        bad("tags", f"unknown tags {unknown!r}", f"use tags from {', '.join(TAGS)}")
    phrasing = raw.get("phrasing", [])
    if not isinstance(phrasing, list) or any(t not in PHRASINGS for t in phrasing):
        unknown = [t for t in phrasing if t not in PHRASINGS] if isinstance(phrasing, list) else phrasing
        bad("phrasing", f"unknown phrasing constructions {unknown!r}", f"use names from {', '.join(PHRASINGS)}")
    ref = raw.get("reference_plan", [])
    if not isinstance(ref, list) or not all(isinstance(x, str) and x.strip() for x in ref):
        bad("reference_plan", "must be a list of step texts", 'write e.g. ["open the drawer", "take the cup"]')
    if errs:
        return None, errs
    if check_plans and world == "tabletop" and scene is not None and goal is not None:
        msg = _check_plan(goal, scene, n)
        if msg:
            return None, [CaseError(index, label, "n_steps", msg, "regenerate the suite or correct n_steps")]
    return Case(id=cid, goal=goal, length_class=lc, n_steps=n, tags=tuple(tags), scene=scene, image=img_path,
                phrasing=tuple(phrasing), reference_plan=tuple(ref)), []


def _check_image(image: Any, root: Path) -> tuple[Path | None, str]:
    if not isinstance(image, str) or not image:
        return None, f"must be a path string, got {image!r}"
    try:
        p = (root / image).resolve()
    except (OSError, ValueError) as e:  # e.g. a NUL byte in the path
        return None, f"{image!r} is not a usable path ({e})"
    if not p.is_relative_to(root.resolve()):
        return None, f"{image!r} points outside the suite's folder"
    if not p.is_file():
        return None, f"first frame {image!r} not found"
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(p) as img:
            img.load()
            mode = img.mode
    except (UnidentifiedImageError, OSError) as e:
        return None, f"unreadable first frame {image!r} ({type(e).__name__})"
    if mode not in ("RGB", "RGBA"):
        return None, f"first frame {image!r} is {mode}, not RGB"
    return p, ""


def _check_plan(goal: str, scene: int, n_steps: int) -> str:
    import numpy as np

    from spiral.planners.symbolic import PlanningError, SymbolicPlanner
    from spiral.world.goals import parse_goal
    from spiral.world.tasks import sample_state

    state = sample_state(np.random.default_rng(scene))
    try:
        n = len(SymbolicPlanner().solve(state, parse_goal(goal)))
    except PlanningError as e:
        return f"the goal is unreachable in scene {scene}: {e}"
    if n != n_steps:
        return f"the optimal plan in scene {scene} has {n} steps, the case says {n_steps}"
    return ""
