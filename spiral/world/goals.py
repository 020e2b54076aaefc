"""Natural-language goals ⇄ goal predicates (DESIGN §4).

A :class:`Goal` is a sequence of *stages*; each stage is a conjunction of predicate
literals in :mod:`spiral.world.domain` syntax (``"in(red_block, box)"``, ``"not open(box)"``).
Stages are achieved in order; a later stage may override what an earlier one asked of the
same fluent ("put red in the box, then move it to the left").

**Scene-relative goals.** Some sentences only mean something in a scene: "swap the red and the
blue block", "put red next to blue", "toggle the lamp", "stack them all in one tower". Their
stages keep *relative clauses* (``Goal.relative``: ``swap(a, b)``, ``next_to(a, x)``,
``left_of(a, x)``, ``right_of(a, x)``, ``place_of(a, x)``, ``shift(a, ±n)``, ``toggle(lamp|box)``,
``tower_any(b1, .., bn[, slot][, bottom=b][, top=b])``)
next to the literals. They are resolved once, by the planner, against the state it observes when
it first plans (``SymbolicPlanner.resolve`` / ``readings``): stage k's clauses read the state at the
start of stage k (the end of the optimal plan for the stages before it); where a clause allows
several readings (either side for "next to", any order for a tower of "them all"), the reading with
the fewest actions in total wins, ties going to the first (left before right; the named order).
Re-plans keep that reading — they never re-resolve against the current, already changed state.
:func:`resolve_relative` gives one clause's readings; a relative goal's ``targets()``/``final()``/
``satisfied()`` refuse until it is resolved.

Grammar accepted by :func:`parse_goal` (the reader is :mod:`spiral.world.grammar`; case,
articles and punctuation do not matter):

* **Verbs.** ``put place move set drop bring transfer slide push carry lay position relocate
  shift leave keep return remove stand rest`` + place; ``pick grab lift take get hold fetch
  collect raise`` X + place, or "pick up X and put it on Y" (a picked block must be put somewhere
  by a later clause); ``stack/pile`` X on Y; ``pack stow store`` / "put X away" → in the box; "take
  (out) X out (of the box)", "remove X from Y", "take X off Y", "move X away from <slot>" → negated
  location; a source before a destination is implied ("move red from the left to the far right");
  ``open`` / ``close shut`` the box ("open it": the box is the only thing that opens); "put the
  lid on" / "take the lid off" / "lift the lid"; ``turn switch flip power`` on|off the lamp (either
  order); ``toggle`` / "flip the lamp" → the other state; ``swap exchange trade interchange`` /
  "switch red and blue" → each takes the other's place; ``tidy up`` / ``clean up`` / ``clear the
  table`` → every block in the box; ``clear (off) X`` → nothing on block/slot X; ``empty the box``
  → every block out; ``empty <slot>``; ``unstack X`` → X on the table; "build/make a tower
  (of|from|with|out of) red, green and blue" — **the first named block is at the bottom** unless
  the sentence says "from the top (down)"; "X at the bottom" / "X on top" fix single positions;
  "a three block tower on the far right: blue, then red, then green"; "stack red, green and blue
  (into a tower)"; "stack them all (in one tower)" leaves the order to the planner; "put red on
  green on blue" stacks a chain.
* **States described instead of commanded.** "the box should be open", "I want the red block in
  the box", "make sure the lamp is off", "have/make/get X <state|place>", "red block in the box
  please", "lamp on", "the green block goes on the far left", "Red block -> box".
* **Objects.** ``red|green|blue|yellow`` [``block|cube|one|brick``]; "X and Y", "X, Y and Z",
  "both X and Y", "X as well as Y" as objects of one verb; ``all/every/each block``,
  ``everything``, ``all of them``, ``them all``, "the (four) blocks" (= the four blocks);
  ``them/those/these/both (of them)`` = the last group of blocks named (``them`` with none named:
  the four blocks); ``it`` = the last mentioned object that fits the role; ``box|lid|container``;
  ``lamp|light``.
* **Places.** Slots ``far left|leftmost``, ``left``, ``center|centre|middle``, ``right``, ``far
  right|rightmost`` [``slot|position|spot|side|place|end``], "the table's left slot", "the left
  side of the table"; a block ("on/onto/on top of the green one", "under the green block");
  the box ("in/into/inside the box", a bare trailing "in"/"inside"/"in there"); "on the table" (=
  out of the box, on no block); "next to / beside / alongside X" = a slot beside the slot of X's
  stack, either side (X's stack stays; X in the box, or standing on the block being moved, is an
  error); "to the left of X" / "to the right of X" = that side only.
* **Order.** Clauses are separated by ``,`` ``;`` ``.`` ``:`` ``!`` ``and``. ``then``, ``and then``,
  ``after that``, ``afterwards``, ``next``, ``finally``, ``lastly``, ``second(ly)``, ``third``…,
  numbered steps ("1. … 2. …", "Step 1: …") start a new stage; "A before B", "before B, A",
  "after B, A", "A after B", "once/when B, A" order their parts (gerunds read as verbs: "after
  opening the box"); a clause that contradicts its stage ("open the box, put red in and close
  it") starts the next stage. Otherwise all clauses form one stage. A trailing ", X <place>" /
  "and X <place>" reuses the verb; "…, then the green one" reuses the last destination.
* **Ignored words.** please, kindly, could/can/would/will you, would you mind, I want/need/'d
  like (you to), make sure, go ahead and, just, now, first, also, again, back, down, up, over (before
  a place), quickly, carefully, thanks, for me, is/are/be/should be/needs to be/ends up, ….

Anything else raises :class:`GoalParseError`, which names the clause it could not read and why
(an unknown word is named) and lists the known objects and verbs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from spiral.world import grammar
from spiral.world.domain import BLOCKS, BOX, LAMP, SLOTS, DomainError, Pred, State
from spiral.world.grammar import table_literals as _table_literals

KNOWN_OBJECTS = ("red/green/blue/yellow block (cube, one)", "it", "them/both (the blocks just named)",
                 "all blocks / every block / everything / them all", "box (lid, container)", "lamp (light)", "table",
                 "slots: far left, left, center (centre, middle), right, far right",
                 "next to / left of / right of / under a block")
KNOWN_VERBS = ("put/place/move/set/drop/slide/... X in|on|to|at <place>", "pick up/grab/take X and put it <place>",
               "pack/stow/store X (away)", "take X out of the box", "remove X from <place>", "take X off Y",
               "move X away from <slot>", "open", "close/shut", "turn/switch on|off", "toggle",
               "swap X and Y", "build a tower of X, Y and Z (first named at the bottom)",
               "tidy up / clean up / clear the table", "empty the box", "clear X", "unstack X",
               "leave/keep/make X open|closed|on|off", "'X should be <state|place>'",
               "separators: , ; . and — new stage: then, after that, finally, 1. 2. 3., before/after")


class GoalParseError(ValueError):
    """A goal sentence the grammar cannot read; says which clause and what words it knows."""

    def __init__(self, clause: str, reason: str, goal: str | None = None):
        self.clause, self.reason, self.goal = clause, reason, goal
        self.known_objects, self.known_verbs = KNOWN_OBJECTS, KNOWN_VERBS
        where = f" in goal {goal!r}" if goal is not None and goal != clause else ""
        super().__init__(
            f"could not read {clause!r}{where}: {reason}. Known objects: {'; '.join(KNOWN_OBJECTS)}. "
            f"Known verbs: {'; '.join(KNOWN_VERBS)}."
        )



# ---------------------------------------------------------------------------------------------
# Goal


@lru_cache(maxsize=4096)
def _pred(text: str) -> Pred:
    return Pred.parse(text)


def _lit_key(text: str) -> tuple:
    """Canonical order inside a stage: by object (blocks in domain order, box, lamp), then text."""
    p = _pred(text)
    f = p.fluent()
    if f is not None and f.startswith("loc:"):
        group = BLOCKS.index(p.args[0]) if p.args[0] in BLOCKS else 9
    else:
        group = {"box": 4, "lamp": 5}.get(f or "", 6)
    return (group, p.negated, str(p))


def _merge_key(text: str) -> str:
    p = _pred(text)
    return p.fluent() or f"derived:{p.positive()}"


def canonical_stage(preds: Iterable[str]) -> tuple[str, ...]:
    """Normalise spelling, drop duplicates and sort, so that equal conjunctions compare equal."""
    norm = {str(_pred(p.strip())) for p in preds}
    return tuple(sorted(norm, key=_lit_key))


class RelativeGoalError(ValueError):
    """A scene-relative goal used where concrete literals are needed (resolve it against a state first)."""


@dataclass(frozen=True)
class Goal:
    """A goal: its text and ordered stages, each a conjunction of predicate literals.

    Stages are stored canonically (normalised, deduplicated, sorted; empty stages dropped) so
    that two goals meaning the same thing compare equal whatever order their clauses came in.
    ``relative`` (empty for most goals) holds each stage's scene-relative clauses, aligned with
    ``stages`` (module doc); a stage is kept when it has literals or relative clauses.
    """

    text: str
    stages: tuple[tuple[str, ...], ...] = field(default=())
    relative: tuple[tuple[str, ...], ...] = field(default=())

    def __post_init__(self) -> None:
        rel = tuple(tuple(r) for r in self.relative)
        if rel and len(rel) != len(self.stages):
            raise ValueError(f"Goal.relative needs one entry per stage: {len(rel)} for {len(self.stages)} stages")
        try:
            stages = [canonical_stage(st) for st in self.stages]
        except DomainError as e:
            raise GoalParseError(self.text, str(e)) from None
        keep = [(s, r) for s, r in zip(stages, rel or [()] * len(stages)) if s or r]
        object.__setattr__(self, "stages", tuple(s for s, _ in keep))
        object.__setattr__(self, "relative", tuple(r for _, r in keep) if any(r for _, r in keep) else ())

    @classmethod
    def of(cls, *stages: Iterable[str] | str, text: str | None = None) -> Goal:
        """Build from predicate strings; each argument is one stage (a string is a one-literal stage)."""
        st = [[s] if isinstance(s, str) else list(s) for s in stages]
        return cls(text if text is not None else goal_to_text(st), tuple(tuple(s) for s in st))

    @property
    def is_relative(self) -> bool:
        """Whether some stage refers to the scene ("swap", "next to", "toggle", …) and needs resolving."""
        return bool(self.relative)

    def _concrete(self) -> None:
        if self.relative:
            clauses = ", ".join(r for rs in self.relative for r in rs)
            raise RelativeGoalError(f"goal {self.text or str(self)!r} refers to the scene ({clauses}); resolve it "
                                    "against the starting state first: SymbolicPlanner().resolve(goal, state)")

    def targets(self) -> list[list[str]]:
        """Merged literals of stages[0..k] for every k: what must hold once stage k is done."""
        self._concrete()
        merged: dict[str, list[str]] = {}
        out = []
        for stage in self.stages:
            new: dict[str, list[str]] = {}
            for p in stage:
                new.setdefault(_merge_key(p), []).append(p)
            merged.update(new)  # a later stage replaces every earlier literal on the same fluent
            out.append([p for ps in merged.values() for p in ps])
        return out

    def final(self) -> list[str]:
        """All stages merged; a later stage overrides an earlier literal on the same fluent."""
        t = self.targets()
        return t[-1] if t else []

    def satisfied(self, state: State) -> bool:
        """Whether the final merged goal holds in ``state``."""
        return all(state.holds(p) for p in self.final())

    def __str__(self) -> str:
        rel = self.relative or ((),) * len(self.stages)
        return " ; then ".join(" & ".join((*s, *r)) for s, r in zip(self.stages, rel))


# ---------------------------------------------------------------------------------------------
# parsing


def parse_goal(text: str) -> Goal:
    """Parse a natural-language goal into ordered stages of predicate literals (grammar: module doc).

    Scene-relative phrasings ("swap …", "next to …") give a goal with ``relative`` clauses that
    the planner resolves against the state it observes (module doc)."""
    if not isinstance(text, str):
        raise GoalParseError(str(text), "a goal must be a string")
    return _parse(text)


@lru_cache(maxsize=1024)
def _parse(text: str) -> Goal:  # goals are immutable: the loop re-reads the same text at every (re)plan
    try:
        stages = grammar.read(text)
    except grammar.ParseFailure as e:
        raise GoalParseError(e.clause, e.reason, text) from None
    goal = Goal(text, tuple(tuple(lits) for lits, _ in stages), tuple(tuple(rel) for _, rel in stages))
    if not goal.stages:
        raise GoalParseError(text, "no goal found (expected e.g. 'put the red block in the box')")
    return goal


# ---------------------------------------------------------------------------------------------
# scene-relative clauses


def _loc_lit(block: str, where: str) -> str:
    return f"in({block}, {BOX})" if where == BOX else f"at({block}, {where})" if where in SLOTS else \
        f"on({block}, {where})"


def _name(obj: str) -> str:
    return "the " + obj.replace("_", " ") + (" slot" if obj in SLOTS else "")


def describe_relative(clause: str) -> str:
    """A scene-relative clause in words, for messages: ``next_to(red_block, blue_block)`` → "put the red block next
    to the blue block"."""
    kind, args = grammar.parse_rel(clause)
    names = [_name(a) for a in args if a in BLOCKS or a in SLOTS]
    if kind == "swap":
        return f"swap {names[0]} and {names[1]}"
    if kind in ("next_to", "left_of", "right_of"):
        where = {"next_to": "next to", "left_of": "to the left of", "right_of": "to the right of"}[kind]
        return f"put {names[0]} {where} {names[1]}"
    if kind == "place_of":
        return f"put {names[0]} where {names[1]} is"
    if kind == "shift":
        n = int(args[1])
        return f"move {names[0]} {abs(n)} slot{'s' if abs(n) != 1 else ''} to the {'left' if n < 0 else 'right'}"
    if kind == "toggle":
        return f"toggle the {args[0]}"
    return "build a tower of " + ", ".join(_name(a) for a in args if a in BLOCKS)


def _fixed_loc(block: str, fixed: Sequence[str]) -> str | None:
    """Where the goal itself already puts ``block`` (a positive location literal), if it does."""
    for lit in fixed:
        p = _pred(lit)
        if not p.negated and p.fluent() == f"loc:{block}":
            return BOX if p.name == "in" else p.args[1]
    return None


def _stand(anchor: str, mover: str, state: State, fixed: Sequence[str], clause: str) -> tuple[str, tuple[str, ...]]:
    """The slot under ``anchor``'s stack and the literals that keep that stack as it is."""
    pins, cur, seen = [], anchor, {anchor}
    while True:
        where = _fixed_loc(cur, fixed) or state.where(cur)
        if where in seen:  # the goal puts X on Y while Y stands on X now: where X ends up is not said
            raise GoalParseError(describe_relative(clause), f"where {_name(anchor)} will stand is not fixed by the goal: say where its "
                                         "stack should go")
        seen.add(where)
        if where == BOX:
            raise GoalParseError(describe_relative(clause), f"{_name(cur)} is in the box: 'next to' / 'left of' / 'right of' needs "
                                         "a block on the table")
        if where == mover:
            raise GoalParseError(describe_relative(clause), f"{_name(anchor)} stands on {_name(mover)}: say where each should go")
        pins.append(_loc_lit(cur, where))
        if where in SLOTS:
            return where, tuple(pins)
        cur = where


def _alternatives(clause: str, state: State, fixed: Sequence[str]) -> list[tuple[str, ...]]:
    kind, args = grammar.parse_rel(clause)
    if kind == "swap":
        a, b = args
        sigma = {a: b, b: a}
        la, lb = state.where(a), state.where(b)
        return [(_loc_lit(a, sigma.get(lb, lb)), _loc_lit(b, sigma.get(la, la)))]
    if kind == "toggle":
        if args[0] == LAMP:
            return [("not on(lamp)",) if state.lamp_on else ("on(lamp)",)]
        return [("not open(box)",) if state.box_open else ("open(box)",)]
    if kind in ("next_to", "left_of", "right_of"):
        mover, anchor = args
        base, pins = _stand(anchor, mover, state, fixed, clause)
        k = SLOTS.index(base)
        sides = {"next_to": (k - 1, k + 1), "left_of": (k - 1,), "right_of": (k + 1,)}[kind]
        slots = [SLOTS[j] for j in sides if 0 <= j < len(SLOTS)]
        if not slots:
            side = "left" if kind == "left_of" else "right"
            raise GoalParseError(describe_relative(clause), f"there is no slot to the {side} of {_name(base)}, where {_name(anchor)} "
                                         "stands")
        return [(f"at({mover}, {s})", *pins) for s in slots]
    if kind == "place_of":  # "put red where the green block is": where green stands now (green makes way)
        mover, anchor = args
        where = state.where(anchor)
        if where == mover:
            raise GoalParseError(describe_relative(clause), f"{_name(anchor)} stands on {_name(mover)}: say where each should go")
        return [(_loc_lit(mover, where),)]
    if kind == "shift":  # "two slots to the left": from the slot under the block's stack
        mover, n = args[0], int(args[1])
        if state.where(mover) == BOX:
            raise GoalParseError(describe_relative(clause), f"{_name(mover)} is in the box: say which slot it should go to")
        j = SLOTS.index(state.base_slot(mover)) + n
        if not 0 <= j < len(SLOTS):
            raise GoalParseError(describe_relative(clause), f"{_name(mover)} stands on {_name(state.base_slot(mover))}: there is no slot "
                                         f"{abs(n)} to the {'left' if n < 0 else 'right'} of it")
        return [(f"at({mover}, {SLOTS[j]})",)]
    if kind == "tower_any":
        blocks = [x for x in args if x in BLOCKS]
        where = [x for x in args if x in SLOTS]
        ends = dict(a.split("=") for a in args if "=" in a)
        out = []
        for order in itertools.permutations(blocks):
            if order[0] != ends.get("bottom", order[0]) or order[-1] != ends.get("top", order[-1]):
                continue
            lits = tuple(f"on({top}, {under})" for under, top in zip(order, order[1:]))
            out.append(lits + ((f"at({order[0]}, {where[0]})",) if where else ()))
        return out
    raise ValueError(f"unknown scene-relative clause {clause!r}; known: {', '.join(grammar.RELATIVE_KINDS)}")


def resolve_relative(clauses: Sequence[str], state: State, fixed: Sequence[str] = ()) -> list[tuple[str, ...]]:
    """Every reading of one stage's relative ``clauses`` in ``state`` (the state at the start of the stage), as
    extra literals, in preference order (left before right, the named order first).

    ``fixed`` are the stage's concrete literals merged with the stages before: "move blue to the
    center and put red next to it" places red beside the center, where the goal puts blue.
    Raises :class:`GoalParseError` when a clause cannot hold in this scene (e.g. "next to" a block
    in the box)."""
    readings: list[tuple[str, ...]] = [()]
    for clause in clauses:
        readings = [chosen + extra for chosen in readings
                    for extra in _alternatives(clause, state, [*fixed, *chosen])]
    return list(dict.fromkeys(readings))


# ---------------------------------------------------------------------------------------------
# goal → text


def _pick(rng: np.random.Generator | None, options: Sequence[str]) -> str:
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def _color(b: str) -> str:
    return b.split("_")[0]


def _block_np(b: str, rng: np.random.Generator | None, dest: bool = False) -> str:
    col = _color(b)
    opts = [f"the {col} block", f"the {col} cube", col] + ([f"the {col} one"] if dest else [])
    return _pick(rng, opts)


def _slot_np(s: str, rng: np.random.Generator | None) -> str:
    words = {"center": ["center", "middle", "centre"]}.get(s, [s.replace("_", " ")])
    w = _pick(rng, words)
    return _pick(rng, [f"the {w}", f"the {w} slot", f"the {w} position"])


def _blocks_np(bs: list[str], rng: np.random.Generator | None) -> str:
    if len(bs) == len(BLOCKS) and rng is not None and rng.random() < 0.8:
        return _pick(rng, ["all blocks", "every block", "all the cubes", "all four blocks", "everything"])
    if len(bs) == 1:
        return _block_np(bs[0], rng)
    cols = [_color(b) for b in bs]
    head = ", ".join(cols[:-1]) + " and " + cols[-1]
    return _pick(rng, [f"the {head} blocks", f"the {head} cubes", head])


def _loc_clause(lit: Pred, rng: np.random.Generator | None) -> str:
    b = lit.args[0]
    if lit.name == "in" and not lit.negated:
        v = _pick(rng, ["put", "place", "drop", "move"])
        return _pick(rng, [f"{v} {_block_np(b, rng)} {_pick(rng, ['in', 'into', 'inside'])} the "
                           f"{_pick(rng, ['box', 'box', 'container'])}", f"put {_block_np(b, rng)} away"])
    if lit.name == "in":
        return _pick(rng, [f"take {_block_np(b, rng)} out of the box", f"remove {_block_np(b, rng)} from the box"])
    d = lit.args[1]
    if lit.name == "on" and not lit.negated:
        return _pick(rng, [f"stack {_block_np(b, rng)} on {_block_np(d, rng, True)}",
                           f"put {_block_np(b, rng)} on top of {_block_np(d, rng, True)}",
                           f"place {_block_np(b, rng)} onto {_block_np(d, rng, True)}"])
    if lit.name == "on":
        return _pick(rng, [f"take {_block_np(b, rng)} off {_block_np(d, rng, True)}",
                           f"remove {_block_np(b, rng)} from {_block_np(d, rng, True)}"])
    if not lit.negated:  # at
        v = _pick(rng, ["move", "put", "place", "slide", "set"])
        return _pick(rng, [f"{v} {_block_np(b, rng)} to {_slot_np(d, rng)}",
                           f"put {_block_np(b, rng)} on the table at {_slot_np(d, rng)}",
                           f"place {_block_np(b, rng)} at {_slot_np(d, rng)}"])
    return f"move {_block_np(b, rng)} away from {_slot_np(d, rng)}"


def _stage_clauses(stage: Sequence[str], rng: np.random.Generator | None, pronoun_box: bool) -> list[tuple[str, bool]]:
    """Clauses for one stage as (text, mentions_box); coordinates blocks that go into the box."""
    preds = [_pred(p) for p in stage]
    clauses: list[tuple[str, bool]] = []
    into = [p.args[0] for p in preds if p.name == "in" and not p.negated]
    rest = [p for p in preds if not (p.name == "in" and not p.negated)]
    # "on the table" = out of the box and on no block
    for b in BLOCKS:
        table = {_pred(x) for x in _table_literals(b)}
        if table <= set(rest):
            rest = [p for p in rest if p not in table]
            clauses.append((f"{_pick(rng, ['put', 'place', 'set'])} {_block_np(b, rng)} on the table", False))
    if len(into) == len(BLOCKS) and rng is not None and rng.random() < 0.5:
        clauses.append((_pick(rng, ["tidy up", "clean up", "clear the table", "tidy up: put every block in the box",
                                    "put all blocks in the box"]), True))
    elif len(into) > 1 and rng is not None and rng.random() < 0.6:
        v = _pick(rng, ["put", "place", "move"])
        clauses.append((f"{v} {_blocks_np(into, rng)} {_pick(rng, ['in', 'into'])} the box", True))
    else:
        clauses += [(_loc_clause(Pred("in", (b, BOX)), rng), True) for b in into]
    for p in rest:
        if p.name in ("at", "in") or (p.name == "on" and len(p.args) == 2):
            clauses.append((_loc_clause(p, rng), p.name == "in"))
        elif p.name == "open":
            obj = _pick(rng, ["the box", "the lid", "the container"])
            if p.negated:
                clauses.append((f"{_pick(rng, ['close', 'shut'])} {obj}", True))
            else:
                clauses.append((f"open {obj}", True))
        elif p.name == "on":
            obj = _pick(rng, ["the lamp", "the light"])
            sw, v = _pick(rng, ["turn", "switch"]), "off" if p.negated else "on"
            clauses.append((_pick(rng, [f"{sw} {v} {obj}", f"{sw} {obj} {v}"]), False))
        elif p.name in ("clear", "free") and not p.negated:
            x = p.args[0]
            obj = _slot_np(x, rng) if x in SLOTS else f"the {_color(x)} block"
            clauses.append((f"clear {obj}", False))
        else:
            raise ValueError(f"no phrasing for goal literal {p}; expressible: at/on/in (and their negations), "
                             f"open(box), on(lamp) and their negations, clear(x), free(slot)")
    if rng is not None:
        order = rng.permutation(len(clauses))
        clauses = [clauses[int(i)] for i in order]
    # pronoun for the box: "put red in the box and close it"
    out = []
    prev_box = pronoun_box
    for text, box in clauses:
        if prev_box and rng is not None and rng.random() < 0.5:
            for v in ("close", "shut", "open"):
                for obj in ("the box", "the lid", "the container"):
                    if text == f"{v} {obj}":
                        text = f"{v} it"
        out.append((text, box))
        prev_box = box
    return out


def _render(stages: Sequence[Sequence[str]], rng: np.random.Generator | None) -> str:
    parts: list[str] = []
    prev_box = False
    for k, stage in enumerate(stages):
        clauses = _stage_clauses(stage, rng, prev_box)
        if not clauses:
            continue
        body = clauses[0][0]
        for text, _ in clauses[1:]:
            body += _pick(rng, [" and ", ", ", "; ", ", and "]) + text
        prev_box = clauses[-1][1]
        if not parts:
            parts.append(body)
        else:
            last = k == len(stages) - 1
            joins = [", then ", "; then ", ". Then ", ", and then ", ". After that, ", ", after that "]
            if last:
                joins += [". Finally, ", ", finally "]
            parts.append(_pick(rng, joins) + body)
    text = "".join(parts)
    if rng is not None:
        if rng.random() < 0.15:
            text = "please " + text
        text = text[0].upper() + text[1:]
        if rng.random() < 0.5:
            text += "."
    return text


def goal_to_text(stages: Sequence[Sequence[str]] | Goal, rng: np.random.Generator | None = None) -> str:
    """Natural-language text for ``stages`` (varied when ``rng`` is given) that parses back to them.

    The text is checked by parsing it; a phrasing that would not round-trip (it should not
    happen) falls back to the plain, pronoun-free phrasing.
    """
    st = stages.stages if isinstance(stages, Goal) else stages
    want = tuple(s for s in (canonical_stage(x) for x in st) if s)
    if not want:
        raise ValueError("a goal needs at least one predicate")
    text = _render(want, rng)
    try:
        if parse_goal(text).stages == want:
            return text
    except GoalParseError:
        pass
    text = _render(want, None)
    got = parse_goal(text).stages
    if got != want:  # a bug in the grammar or the phrasing, not in the caller's input
        raise AssertionError(f"goal text {text!r} parses to {got}, not {want}")
    return text
