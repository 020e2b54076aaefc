"""The ``tabletop-v2`` recipe: harder goals, phrased the way people type them (issue 21, item 4).

Next to ``tabletop-v1`` (which :mod:`spiral.bench.make_suite` keeps as it is):

- **Four length classes**, 50 cases each: short 1–2, medium 3–5, long 6–8 and ``xlong`` 9–12 optimal
  steps. A single stage tops out around 8 steps in this domain (a four-block tower on an end slot),
  so ``xlong`` goals have two or more stages.
- **A focus per case**, cycling through :data:`FOCUS`: four- and three-block towers ("build a tower
  of …", up to the domain's four blocks), scene-relative goals (swap, next to / left of / right of,
  toggle), and the v1 action types. The focus clause must matter: without it the optimal plan is
  shorter.
- **Phrasings** drawn per clause from the constructions of :mod:`spiral.world.grammar` that fit it
  (fillers, pick-and-place, possessives, declaratives, "inside", coordination and group pronouns,
  tower wordings, swap, next to, before/after, numbered steps, implicit order …). Each text is
  parsed back and must mean the intended goal in the case's scene: the same number of stages, each
  stage's target holding in exactly the same states (``symbolic.equivalent``), and the same optimal
  plan length; otherwise another wording is drawn. The constructions used are stored per case
  (``phrasing``), the tags say ``tower`` (a tower of three or more blocks) and ``scene-relative``.

Scenes come from :data:`spiral.bench.seeds.SUITE_V2`, which training data never samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from spiral.bench.suite import ACTION_TAGS, LENGTH_CLASSES, action_tag
from spiral.planners.symbolic import PlanningError, SymbolicPlanner, equivalent
from spiral.world.domain import BLOCKS, BOX, SLOTS, Action, State
from spiral.world.goals import Goal, GoalParseError, parse_goal
from spiral.world.grammar import table_literals
from spiral.world.tasks import sample_state

FOCUS: tuple[str, ...] = ("tower4", "swap", "tower3", "next", "move", "stack", "box", "lid", "lamp")
_FILLERS = (("move", 3.0), ("stack", 2.5), ("box", 2.0), ("pair", 1.2), ("lid", 1.0), ("lamp", 1.0), ("out", 1.0),
            ("tower3", 1.0), ("swap", 0.8), ("next", 0.8), ("table", 0.4))
CLASSES = ("short", "medium", "long", "xlong")
MIN_STEPS = {"tower4": 3, "tower3": 2, "swap": 2}  # fewest actions such a clause can need (a focus must matter)


@dataclass
class Spec:
    """One goal clause: what it asks (literals and scene-relative clauses) and what it is about (for wording)."""

    kind: str
    literals: tuple[str, ...] = ()
    relative: tuple[str, ...] = ()
    blocks: tuple[str, ...] = ()  # the blocks it acts on, in wording order (tower: bottom first)
    where: str = ""  # slot / block / relation, by kind
    value: bool = True  # lid open / lamp on


@dataclass
class Rendered:
    text: str
    constructions: list[str] = field(default_factory=list)
    mentions_box: bool = False


def _c(rng: np.random.Generator, xs: Sequence) -> object:
    return xs[int(rng.integers(len(xs)))]


def _col(b: str) -> str:
    return b.split("_")[0]


def _np(b: str, rng: np.random.Generator) -> str:
    c = _col(b)
    return str(_c(rng, [f"the {c} block", f"the {c} cube", f"the {c} one", c]))


def _slot(s: str, rng: np.random.Generator) -> str:
    words = {"far_left": ["far left", "far-left", "leftmost"], "left": ["left"],
             "center": ["center", "middle", "centre"], "right": ["right"],
             "far_right": ["far right", "far-right", "rightmost"]}[s]
    return f"the {_c(rng, words)} {_c(rng, ['slot', 'spot', 'position', 'slot'])}"


def _list(names: Sequence[str], rng: np.random.Generator) -> str:
    if len(names) == 1:
        return names[0]
    sep = str(_c(rng, [", and ", " and "])) if len(names) > 2 else " and "
    return ", ".join(names[:-1]) + sep + names[-1]


# ---- clauses ------------------------------------------------------------------------------------------
def sample_spec(kind: str, rng: np.random.Generator, state: State) -> Spec | None:
    """A clause of one kind that is not already true in ``state`` (None when the scene does not allow one)."""
    b = str(_c(rng, BLOCKS))
    if kind == "move":
        return Spec("move", (f"at({b}, {(s := str(_c(rng, [x for x in SLOTS if state.where(b) != x])))})",),
                    blocks=(b,), where=s)
    if kind == "stack":
        c = str(_c(rng, [x for x in BLOCKS if x != b and state.where(b) != x]))
        return Spec("stack", (f"on({b}, {c})",), blocks=(b,), where=c)
    if kind == "box":
        outside = [x for x in BLOCKS if state.where(x) != BOX]
        if not outside:
            return None
        b = str(_c(rng, outside))
        return Spec("box", (f"in({b}, {BOX})",), blocks=(b,))
    if kind == "out":
        inside = state.in_box()
        if not inside:
            return None
        b = str(_c(rng, inside))
        return Spec("out", (f"not in({b}, {BOX})",), blocks=(b,))
    if kind == "pair":  # two blocks into (or out of) the box in one clause: "put both X and Y in the box"
        outside = [x for x in BLOCKS if state.where(x) != BOX]
        inside = state.in_box()
        if len(inside) >= 2 and (len(outside) < 2 or rng.random() < 0.3):
            a, c = (str(x) for x in rng.permutation(inside)[:2])
            return Spec("out2", (f"not in({a}, {BOX})", f"not in({c}, {BOX})"), blocks=(a, c))
        if len(outside) < 2:
            return None
        a, c = (str(x) for x in rng.permutation(outside)[:2])
        return Spec("box2", (f"in({a}, {BOX})", f"in({c}, {BOX})"), blocks=(a, c))
    if kind == "lid":
        v = bool(rng.random() < 0.5)
        return Spec("lid", ("open(box)" if v else "not open(box)",), value=v)
    if kind == "lamp":
        if rng.random() < 0.35:
            return Spec("toggle", relative=("toggle(lamp)",))
        return Spec("lamp", ("not on(lamp)" if state.lamp_on else "on(lamp)",), value=not state.lamp_on)
    if kind in ("tower3", "tower4"):
        k = 3 if kind == "tower3" else 4
        order = [str(x) for x in rng.permutation(list(BLOCKS))[:k]]
        lits = [f"on({top}, {under})" for under, top in zip(order, order[1:])]
        where = ""
        if rng.random() < 0.4:
            where = str(_c(rng, SLOTS))
            lits.append(f"at({order[0]}, {where})")
        return Spec("tower", tuple(lits), blocks=tuple(order), where=where)
    if kind == "swap":
        a, c = (str(x) for x in rng.permutation(list(BLOCKS))[:2])
        if state.where(a) == BOX and state.where(c) == BOX:
            return None
        return Spec("swap", relative=(f"swap({a}, {c})",), blocks=(a, c))
    if kind == "next":
        on_table = [x for x in BLOCKS if state.base_slot(x) != BOX]
        if not on_table:
            return None
        x = str(_c(rng, on_table))
        a = str(_c(rng, [y for y in BLOCKS if y != x]))
        rel = str(_c(rng, ["next_to", "next_to", "left_of", "right_of"]))
        return Spec("next", relative=(f"{rel}({a}, {x})",), blocks=(a,), where=x + "|" + rel)
    if kind == "table":
        b = str(_c(rng, [x for x in BLOCKS if state.where(x) not in SLOTS] or [b]))
        return Spec("table", tuple(table_literals(b)), blocks=(b,))
    raise ValueError(f"unknown clause kind {kind!r}")


def _render(spec: Spec, rng: np.random.Generator, box_said: bool, first_stage: bool, state: State) -> Rendered:
    """One clause in words, with the constructions it uses."""
    k = spec.kind
    b = spec.blocks[0] if spec.blocks else ""
    if k == "move":
        s = spec.where
        opts = [(f"{_c(rng, ['move', 'put', 'place', 'slide'])} {_np(b, rng)} to {_slot(s, rng)}", ["plain"]),
                (f"could you {_c(rng, ['slide', 'move', 'set'])} {_np(b, rng)} {_c(rng, ['over to', 'down on'])} "
                 f"{_slot(s, rng)}{_c(rng, ['', ' please', ' for me'])}", ["filler"]),
                (f"put {_np(b, rng)} on the table's {_slot(s, rng)[4:]}", ["possessive"]),
                (f"pick up {_np(b, rng)} and {_c(rng, ['put', 'set', 'place'])} it on {_slot(s, rng)}", ["pick-place"]),
                (f"{_np(b, rng)} should {_c(rng, ['be', 'end up'])} on {_slot(s, rng)}", ["declarative"])]
        if first_stage and state.where(b) in SLOTS:
            opts.append((f"move {_np(b, rng)} from {_slot(state.where(b), rng)} to {_slot(s, rng)}", ["source"]))
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "stack":
        c = spec.where
        opts = [(f"{_c(rng, ['stack', 'put', 'place'])} {_np(b, rng)} on {_c(rng, ['', 'top of '])}{_np(c, rng)}",
                 ["plain"]),
                (f"{_c(rng, ['pick up', 'grab', 'take'])} {_np(b, rng)} and {_c(rng, ['put', 'place', 'set'])} it "
                 f"on {_np(c, rng)}", ["pick-place"]),
                (f"{_np(b, rng)} {_c(rng, ['needs to be', 'should be', 'goes'])} on top of {_np(c, rng)}",
                 ["declarative"]),
                (f"please put {_np(c, rng)} under {_np(b, rng)}", ["filler", "under"]),
                (f"put {_np(b, rng)} on {_np(c, rng)}'s top", ["possessive"])]
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "box":
        opts = [(f"{_c(rng, ['put', 'place', 'drop'])} {_np(b, rng)} {_c(rng, ['in', 'into'])} the "
                 f"{_c(rng, ['box', 'container'])}", ["plain"]),
                (f"could you {_c(rng, ['pop', 'drop', 'stick'])} {_np(b, rng)} in the box", ["filler"]),
                (f"{_c(rng, ['pick up', 'grab'])} {_np(b, rng)} and {_c(rng, ['drop', 'put'])} it in the box",
                 ["pick-place"]),
                (f"{_c(rng, ['pack', 'put'])} {_np(b, rng)} away", ["plain"]),
                (f"{_np(b, rng)} {_c(rng, ['goes', 'should go', 'belongs'])} in the box", ["declarative"])]
        if box_said:
            opts.append((f"{_c(rng, ['drop', 'put', 'place'])} {_np(b, rng)} {_c(rng, ['inside', 'in there', 'in'])}",
                         ["inside"]))
        r = _c(rng, opts)
        return Rendered(r[0], r[1], True)  # type: ignore[index]
    if k in ("box2", "out2"):
        a, c = (_col(x) for x in spec.blocks)
        if k == "box2":
            opts = [(f"put both the {a} and the {c} block in the box", ["coordination"]),
                    (f"put the {a} and {c} blocks {_c(rng, ['in', 'into'])} the box", ["coordination"]),
                    (f"take the {a} and {c} blocks and put them in the box", ["coordination", "group-pronoun",
                                                                              "pick-place"]),
                    (f"grab {a} and {c} and pack them away", ["coordination", "group-pronoun", "pick-place"]),
                    (f"pick up {a} and {c} and drop both in the box", ["coordination", "group-pronoun", "pick-place"])]
            if box_said:
                opts.append((f"put {a} and {c} inside", ["coordination", "inside"]))
        else:
            opts = [(f"take the {a} and the {c} block out of the box", ["coordination"]),
                    (f"take out both the {a} and the {c} block", ["coordination"]),
                    (f"the {a} and {c} blocks should be out of the box", ["coordination", "declarative"])]
        r = _c(rng, opts)
        return Rendered(r[0], r[1], True)  # type: ignore[index]
    if k == "out":
        opts = [(f"take {_np(b, rng)} out of the box", ["plain"]),
                (f"take out {_np(b, rng)}", ["plain"]),
                (f"{_np(b, rng)} should be out of the {_c(rng, ['box', 'container'])}", ["declarative"]),
                (f"get {_np(b, rng)} out{_c(rng, ['', ' please'])}", ["filler"])]
        r = _c(rng, opts)
        return Rendered(r[0], r[1], True)  # type: ignore[index]
    if k == "lid":
        it = "it" if box_said and rng.random() < 0.5 else str(_c(rng, ["the box", "the lid", "the container"]))
        if spec.value:
            opts = [(f"open {it}", ["plain"]), ("open up the box", ["filler"]), ("take the lid off", ["lid"]),
                    ("the box should be open", ["declarative"])]
        else:
            opts = [(f"{_c(rng, ['close', 'shut'])} {it}", ["plain"]), ("put the lid back on", ["lid", "filler"]),
                    ("make sure the box is closed", ["declarative"])]
        r = _c(rng, opts)
        return Rendered(r[0], r[1], True)  # type: ignore[index]
    if k == "lamp":
        v = "on" if spec.value else "off"
        lamp = _c(rng, ["lamp", "light"])
        opts = [(f"turn {v} the {lamp}", ["plain"]), (f"switch the {lamp} {v}", ["plain"]),
                (f"I'd like the {lamp} {v}", ["declarative"]), (f"{lamp} {v} please", ["declarative", "filler"])]
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "toggle":
        return Rendered(str(_c(rng, ["toggle the lamp", "flip the light", "toggle the light"])), ["toggle"])
    if k == "tower":
        cols = [_col(x) for x in spec.blocks]
        n = len(cols)
        place = f" on {_slot(spec.where, rng)}" if spec.where else ""
        count = str(_c(rng, ["", f"{['', '', 'two', 'three', 'four'][n]} block "]))
        opts = [(f"{_c(rng, ['build', 'make'])} a tower of {_list(cols, rng)}{place}", ["tower"]),
                (f"build a {count}tower{place}: {cols[0]} at the bottom, then " + ", then ".join(cols[1:]), ["tower"]),
                (f"stack {_list(cols, rng)} into a tower{place}", ["tower"]),
                (f"make a tower{place} from the top down: {_list(cols[::-1], rng)}", ["tower"]),
                (f"build a tower{place} with {cols[0]} on the bottom, then " + ", then ".join(cols[1:-1])
                 + (", " if n > 2 else "") + f"{cols[-1]} on top", ["tower"])]
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "swap":
        a, c = spec.blocks
        opts = [(f"swap {_np(a, rng)} and {_np(c, rng)}", ["swap"]), (f"swap {_col(a)} with {_col(c)}", ["swap"]),
                (f"switch {_col(a)} and {_col(c)} around", ["swap"]),
                (f"exchange {_np(a, rng)} and {_np(c, rng)}", ["swap"]),
                (f"trade the places of the {_col(a)} and the {_col(c)} blocks", ["swap"])]
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "next":
        x, rel = spec.where.split("|")
        if rel == "next_to":
            word = _c(rng, ["next to", "beside", "alongside"])
            opts = [(f"{_c(rng, ['put', 'place', 'move'])} {_np(b, rng)} {word} {_np(x, rng)}", ["next-to"]),
                    (f"pick up {_np(b, rng)} and set it down {word} {_np(x, rng)}", ["next-to", "pick-place"])]
        else:
            side = "left" if rel == "left_of" else "right"
            opts = [(f"{_c(rng, ['put', 'place', 'move'])} {_np(b, rng)} to the {side} of {_np(x, rng)}",
                     ["side-of"])]
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    if k == "table":
        opts = [(f"{_c(rng, ['put', 'set', 'place'])} {_np(b, rng)} {_c(rng, ['on', 'down on'])} the table",
                 ["plain"])]
        if state.where(b) in BLOCKS:
            opts.append((f"unstack {_np(b, rng)}", ["plain"]))
        return Rendered(*_c(rng, opts))  # type: ignore[misc]
    raise ValueError(k)


def _coordinated(specs: list[Spec], rng: np.random.Generator) -> Rendered | None:
    """Two or more blocks into the box in one clause: "put both the red and the green block in the box"."""
    cols = [_col(s.blocks[0]) for s in specs]
    opts = [(f"put both the {cols[0]} and the {cols[1]} block in the box", ["coordination"]) if len(cols) == 2 else
            (f"put the {_list(cols, rng)} blocks in the box", ["coordination"]),
            (f"take the {_list(cols, rng)} blocks and put them in the box", ["coordination", "group-pronoun",
                                                                             "pick-place"]),
            (f"grab {_list(cols, rng)} and pack them away", ["coordination", "group-pronoun", "pick-place"])]
    r = _c(rng, opts)
    return Rendered(r[0], list(r[1]), True)  # type: ignore[index]


def render_goal(stages: list[list[Spec]], rng: np.random.Generator, state: State) -> tuple[str, list[str]]:
    """A whole goal in words: clauses joined within stages, stages joined by an ordering construction."""
    parts: list[str] = []
    used: list[str] = []
    box_said = False
    for k, stage in enumerate(stages):
        specs = list(stage)
        into = [s for s in specs if s.kind == "box"]
        clauses: list[Rendered] = []
        if len(into) >= 2 and rng.random() < 0.6:
            clauses.append(_coordinated(into, rng))  # type: ignore[arg-type]
            specs = [s for s in specs if s.kind != "box"]
        order = [int(i) for i in rng.permutation(len(specs))]
        order.sort(key=lambda i: not (specs[i].kind == "lid" and specs[i].value))  # "open the box and … inside"
        for i in order:
            r = _render(specs[int(i)], rng, box_said, k == 0, state)
            box_said = box_said or r.mentions_box
            clauses.append(r)
        body = clauses[0].text
        for r in clauses[1:]:
            body += str(_c(rng, [" and ", ", ", ", and ", "; "])) + r.text
        for r in clauses:
            used += r.constructions
        parts.append(body)
    if len(parts) == 1:
        text = parts[0]
    else:
        style = str(_c(rng, ["then", "numbered", "after", "implicit"]))
        if style == "numbered":
            text = " ".join(f"{i + 1}. {p}." for i, p in enumerate(parts))
            used.append("numbered")
        elif style == "after" and len(parts) == 2 and not parts[1].startswith("1."):
            text = str(_c(rng, [f"after you {parts[0]}, {parts[1]}", f"{parts[1]} after you {parts[0]}",
                                f"before you {parts[1]}, {parts[0]}", f"{parts[0]} before you {parts[1]}"]))
            used.append("before-after")
        elif style == "implicit":
            text = parts[0]
            for p in parts[1:]:
                text += str(_c(rng, [", ", " and ", ". "])) + p
            used.append("implicit-order")
        else:
            text = parts[0]
            for p in parts[1:]:
                text += str(_c(rng, [", then ", ". Then ", ", and then ", ". After that, ", "; next, "])) + p
    if rng.random() < 0.5:
        text = text[0].upper() + text[1:]
    if not text.endswith(".") and rng.random() < 0.4:
        text += str(_c(rng, [".", "!"] + ([" please."] if "please" not in text else [])))
    kinds = {"filler", "group-pronoun", "pick-place", "tower", "possessive", "coordination", "swap", "next-to",
             "side-of", "inside", "declarative", "before-after", "numbered", "implicit-order", "source", "toggle",
             "lid"}
    out = sorted({u for u in used if u in kinds}) or ["plain"]
    return text, out


# ---- cases --------------------------------------------------------------------------------------------
def intended(stages: list[list[Spec]]) -> Goal:
    return Goal("", tuple(tuple(x for s in st for x in s.literals) for st in stages),
                tuple(tuple(x for s in st for x in s.relative) for st in stages))


def _solve(planner: SymbolicPlanner, state: State, stages: list[list[Spec]]) -> list[Action] | None:
    try:
        return planner.solve(state, intended(stages))
    except (PlanningError, GoalParseError, ValueError):
        return None


def means(text: str, goal: Goal, state: State, planner: SymbolicPlanner) -> bool:
    """Whether ``text`` reads as ``goal`` in ``state``: same stage count, equivalent stage targets, same plan length."""
    try:
        parsed = parse_goal(text)
        a, b = planner.resolve(parsed, state), planner.resolve(goal, state)
        ta, tb = a.targets(), b.targets()
        return (len(ta) == len(tb) and all(equivalent(x, y) for x, y in zip(ta, tb))
                and len(planner.solve(state, a)) == len(planner.solve(state, b)))
    except (GoalParseError, PlanningError, ValueError):
        return False


def _touches(s: Spec) -> set[str]:
    return set(s.blocks) | ({s.where} if s.where in BLOCKS else set()) | ({"box"} if s.kind == "lid" else set()) | (
        {"lamp"} if s.kind in ("lamp", "toggle") else set())


def sample_case(scene: int, focus: str, length: int, multi: bool, planner: SymbolicPlanner,
                tries: int = 60) -> tuple[list[list[Spec]], list[Action], State] | None:
    """Clauses for scene ``scene`` whose optimal plan has exactly ``length`` steps and needs the ``focus`` clause."""
    state = sample_state(np.random.default_rng(scene))
    rng = np.random.default_rng([scene, 41])
    first = sample_spec(focus, rng, state)
    if first is None:
        return None
    stages: list[list[Spec]] = [[first]]
    actions = _solve(planner, state, stages)
    if not actions:
        return None
    max_stages = 5 if length > 8 else 4
    w = np.array([x for _, x in _FILLERS])
    for _ in range(tries):
        if len(actions) >= length:
            break
        kind = _FILLERS[int(rng.choice(len(_FILLERS), p=w / w.sum()))][0]
        spec = sample_spec(kind, rng, state)
        if spec is None:
            continue
        if multi and len(stages) < max_stages and (len(stages) == 1 or rng.random() < 0.45):
            trial = stages + [[spec]]
        else:
            if _touches(spec) & set().union(*(_touches(s) for s in stages[-1])):
                continue  # one clause per object and stage keeps the wording unambiguous
            trial = stages[:-1] + [stages[-1] + [spec]]
        got = _solve(planner, state, trial)
        if got is not None and len(got) <= length and len(got) > len(actions):
            stages, actions = trial, got
    if len(actions) != length or (len(stages) > 1) != multi:
        return None
    without = [[s for s in st if s is not first] for st in stages]
    rest = _solve(planner, state, [st for st in without if st]) if any(without) else []
    if rest is not None and len(rest) >= length:
        return None  # the focus clause must matter
    return stages, actions, state


def tags(state: State, goal: Goal, actions: list[Action], planner: SymbolicPlanner) -> list[str]:
    found = {action_tag(state, a) for a in actions}
    out = [t for t in ACTION_TAGS if t in found] + (["multi-stage"] if len(goal.stages) > 1 else [])
    if tower_height(planner.resolve(goal, state)) >= 3:
        out.append("tower")
    if goal.is_relative:
        out.append("scene-relative")
    return out


def tower_height(goal: Goal) -> int:
    """The tallest tower a (concrete) goal asks for at some stage, in blocks (1 when it stacks nothing)."""
    best = 1
    for target in goal.targets():
        on = {}
        for lit in target:
            if lit.startswith("on(") and "," in lit:
                top, under = lit[3:-1].split(", ")
                on[top] = under
        for b in on:
            h, cur = 1, b
            while cur in on:
                h, cur = h + 1, on[cur]
            best = max(best, h)
    return best


def make_cases(seed_range: range, per_class: int) -> list[dict]:
    """``per_class`` cases per length class of :data:`CLASSES`, from consecutive scene seeds of ``seed_range``."""
    planner = SymbolicPlanner()
    cases: list[dict] = []
    scene = seed_range.start
    for cls in CLASSES:
        lo, hi = LENGTH_CLASSES[cls]
        for i in range(per_class):
            length = lo + i % (hi - lo + 1)
            fits = [f for f in FOCUS if MIN_STEPS.get(f, 1) <= length]
            focus = fits[i % len(fits)]
            multi = length > 8 or (length >= 2 and (i // len(FOCUS)) % 2 == 1)
            misses = 0
            while True:
                if scene not in seed_range or misses > 2000:
                    raise RuntimeError(f"no {cls} case with focus {focus} in {misses} scenes up to {scene}")
                got = sample_case(scene, focus, length, multi, planner)
                scene += 1
                misses += 1
                if got is not None:
                    break
            stages, actions, state = got
            goal = intended(stages)
            rng = np.random.default_rng([scene - 1, 43])
            for _ in range(40):
                text, used = render_goal(stages, rng, state)
                if means(text, goal, state, planner):
                    break
            else:
                raise AssertionError(f"no wording of {goal} reads back in scene {scene - 1}; last: {text!r}")
            parsed = parse_goal(text)
            assert len(planner.solve(state, parsed)) == length, (text, length)
            cases.append({"id": f"{cls}-{i:03d}", "goal": text, "scene": scene - 1, "length_class": cls,
                          "n_steps": length, "tags": tags(state, parsed, actions, planner), "phrasing": used})
    return cases
