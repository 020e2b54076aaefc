"""The tabletop domain: objects, predicates and STRIPS actions (DESIGN §4).

The state is symbolic and hashable so planners can search over it. Predicates are
strings such as ``"in(red_block, box)"`` or ``"not open(box)"``; they are what plans,
critics and datasets exchange. ``on`` is overloaded by arity as in the design:
``on(a, b)`` is stacking, ``on(lamp)`` means the lamp is lit.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import product

BLOCKS: tuple[str, ...] = ("red_block", "green_block", "blue_block", "yellow_block")
SLOTS: tuple[str, ...] = ("far_left", "left", "center", "right", "far_right")
BOX = "box"
LAMP = "lamp"
OBJECTS: tuple[str, ...] = BLOCKS + (BOX, LAMP)
VERBS: tuple[str, ...] = ("move", "open", "close", "switch_on", "switch_off")
LOCATIONS: tuple[str, ...] = SLOTS + BLOCKS + (BOX,)

_PRED_RE = re.compile(r"^\s*(not\s+)?([a-z_]+)\(\s*([a-z_]+)\s*(?:,\s*([a-z_]+)\s*)?\)\s*$")


class DomainError(ValueError):
    """An action or predicate that does not make sense in the tabletop domain."""


class PreconditionError(DomainError):
    """An action was applied in a state where one of its preconditions is false."""

    def __init__(self, action: Action, failed: str, state: State):
        self.action, self.failed, self.state = action, failed, state
        super().__init__(f"cannot {action}: precondition {failed} is false in the current state")


def name(obj: str) -> str:
    """Human-readable object name: ``red_block`` → ``red block``, ``far_left`` → ``far left slot``."""
    if obj in SLOTS:
        return obj.replace("_", " ") + " slot"
    return obj.replace("_", " ")


@dataclass(frozen=True)
class Pred:
    """A parsed predicate literal."""

    name: str
    args: tuple[str, ...]
    negated: bool = False

    @classmethod
    def parse(cls, text: str) -> Pred:
        m = _PRED_RE.match(text)
        if not m:
            raise DomainError(f"cannot parse predicate {text!r}; expected e.g. 'in(red_block, box)' or 'not open(box)'")
        neg, pname, a, b = m.groups()
        args = (a,) if b is None else (a, b)
        known = {("at", 2), ("on", 2), ("in", 2), ("clear", 1), ("free", 1), ("open", 1), ("on", 1)}
        if (pname, len(args)) not in known:
            raise DomainError(f"unknown predicate {pname}/{len(args)} in {text!r}; known: at/2 on/2 in/2 clear/1 free/1 open/1 on/1")
        for x in args:
            if x not in OBJECTS and x not in SLOTS:
                raise DomainError(f"unknown object {x!r} in {text!r}; known objects: {', '.join(OBJECTS + SLOTS)}")
        return cls(pname, args, bool(neg))

    def __str__(self) -> str:
        core = f"{self.name}({', '.join(self.args)})"
        return f"not {core}" if self.negated else core

    def positive(self) -> Pred:
        return replace(self, negated=False)

    def fluent(self) -> str | None:
        """The state variable this literal constrains (goals merge on it); None for derived ones."""
        if self.name in ("at", "in") or (self.name == "on" and len(self.args) == 2):
            return f"loc:{self.args[0]}"
        if self.name == "open":
            return "box"
        if self.name == "on":
            return "lamp"
        return None


@lru_cache(maxsize=4096)
def _parse_cached(text: str) -> Pred:
    return Pred.parse(text)


@dataclass(frozen=True)
class State:
    """Symbolic tabletop state: where each block is, whether the box is open and the lamp lit.

    A block's location is a slot name, another block's name (stacked on it) or ``"box"``.
    """

    loc: tuple[tuple[str, str], ...]
    box_open: bool = False
    lamp_on: bool = False

    @classmethod
    def make(cls, loc: dict[str, str], box_open: bool = False, lamp_on: bool = False) -> State:
        unknown = sorted(str(b) for b in loc if b not in BLOCKS)
        if unknown:
            raise DomainError(f"unknown block(s) {unknown}; the blocks are {', '.join(BLOCKS)}")
        s = cls(tuple((b, loc[b]) for b in BLOCKS if b in loc), box_open, lamp_on)
        s.validate()
        return s

    def validate(self) -> None:
        """Raise if the state is physically impossible (two blocks on one support, cycles, unknown names)."""
        locs = dict(self.loc)
        if set(locs) != set(BLOCKS):
            missing = sorted(set(BLOCKS) - set(locs))
            raise DomainError(f"every block needs a location; missing {missing}")
        for b, where in locs.items():
            if where not in LOCATIONS:
                raise DomainError(f"{b} is at unknown location {where!r}; use a slot ({', '.join(SLOTS)}), a block or 'box'")
            if where == b:
                raise DomainError(f"{b} cannot be on itself")
            if where in BLOCKS and locs[where] == BOX:
                raise DomainError(f"{b} cannot stand on {where}, which is inside the box")
        supports = [w for w in locs.values() if w != BOX]
        if len(supports) != len(set(supports)):
            raise DomainError("two blocks share one support (slot or block)")
        for b in locs:  # every stack must reach the table or the box
            seen, cur = set(), b
            while cur in BLOCKS:
                if cur in seen:
                    raise DomainError(f"stacking cycle through {b}")
                seen.add(cur)
                cur = locs[cur]

    @property
    def locs(self) -> dict[str, str]:
        return dict(self.loc)

    def where(self, block: str) -> str:
        for b, w in self.loc:
            if b == block:
                return w
        raise DomainError(f"unknown block {block!r}; blocks: {', '.join(BLOCKS)}")

    def above(self, obj: str) -> str | None:
        """The block standing directly on ``obj`` (block or slot), if any."""
        for b, w in self.loc:
            if w == obj:
                return b
        return None

    def clear(self, block: str) -> bool:
        return self.above(block) is None

    def free(self, slot: str) -> bool:
        return self.above(slot) is None

    def base_slot(self, block: str) -> str:
        """The slot under a block's stack, or ``"box"``."""
        cur = self.where(block)
        while cur in BLOCKS:
            cur = self.where(cur)
        return cur

    def height(self, block: str) -> int:
        """0 for a block on the table (or in the box), 1 for one stacked on it, and so on."""
        h, cur = 0, self.where(block)
        while cur in BLOCKS:
            h, cur = h + 1, self.where(cur)
        return h

    def in_box(self) -> list[str]:
        return [b for b, w in self.loc if w == BOX]

    def with_loc(self, block: str, where: str) -> State:
        return replace(self, loc=tuple((b, where if b == block else w) for b, w in self.loc))

    def predicates(self) -> set[str]:
        """All positive ground predicates true in this state."""
        out: set[str] = set()
        for b, w in self.loc:
            out.add(f"in({b}, box)" if w == BOX else f"at({b}, {w})" if w in SLOTS else f"on({b}, {w})")
            if self.clear(b):
                out.add(f"clear({b})")
        out |= {f"free({s})" for s in SLOTS if self.free(s)}
        if self.box_open:
            out.add("open(box)")
        if self.lamp_on:
            out.add("on(lamp)")
        return out

    def holds(self, pred: str | Pred) -> bool:
        p = pred if isinstance(pred, Pred) else _parse_cached(pred)
        n, a = p.name, p.args
        if n == "at":
            v = self.where(a[0]) == a[1]
        elif n == "in":
            v = self.where(a[0]) == BOX
        elif n == "on" and len(a) == 2:
            v = self.where(a[0]) == a[1]
        elif n == "clear":
            v = self.clear(a[0])
        elif n == "free":
            v = self.free(a[0])
        elif n == "open":
            v = self.box_open
        else:
            v = self.lamp_on
        return v != p.negated

    def to_dict(self) -> dict:
        return {"loc": self.locs, "box_open": self.box_open, "lamp_on": self.lamp_on}

    @classmethod
    def from_dict(cls, d: dict) -> State:
        try:
            return cls.make(dict(d["loc"]), bool(d.get("box_open", False)), bool(d.get("lamp_on", False)))
        except KeyError as e:
            raise DomainError(f"state dict lacks {e}; expected {{'loc': {{block: location}}, 'box_open', 'lamp_on'}}") from None

    def __str__(self) -> str:
        parts = [f"{b.split('_')[0]}@{w}" for b, w in self.loc]
        return " ".join(parts) + f" box={'open' if self.box_open else 'closed'} lamp={'on' if self.lamp_on else 'off'}"


@dataclass(frozen=True)
class Action:
    """A ground action such as ``move(red_block, box)`` or ``open(box)``."""

    verb: str
    args: tuple[str, ...]

    def __post_init__(self) -> None:
        if self.verb not in VERBS:
            raise DomainError(f"unknown verb {self.verb!r}; known verbs: {', '.join(VERBS)}")
        want = {"move": 2}.get(self.verb, 1)
        if len(self.args) != want:
            raise DomainError(f"{self.verb} takes {want} argument(s), got {self.args}")
        if self.verb == "move":
            b, d = self.args
            if b not in BLOCKS:
                raise DomainError(f"move needs a block to move, got {b!r}; blocks: {', '.join(BLOCKS)}")
            if d not in LOCATIONS or d == b:
                raise DomainError(f"cannot move {b} to {d!r}; destinations: a slot, another block or the box")
        elif self.verb in ("open", "close") and self.args != (BOX,):
            raise DomainError(f"{self.verb} applies to the box, got {self.args}")
        elif self.verb in ("switch_on", "switch_off") and self.args != (LAMP,):
            raise DomainError(f"{self.verb} applies to the lamp, got {self.args}")

    @classmethod
    def parse(cls, text: str) -> Action:
        m = re.match(r"^\s*([a-z_]+)\(\s*([a-z_,\s]*)\)\s*$", text)
        if not m:
            raise DomainError(f"cannot parse action {text!r}; expected e.g. 'move(red_block, box)'")
        args = tuple(a.strip() for a in m.group(2).split(",") if a.strip())
        return cls(m.group(1), args)

    def __str__(self) -> str:
        return f"{self.verb}({', '.join(self.args)})"

    @property
    def kind(self) -> str:
        """Coarse action type used for reporting: move / open / close / lamp."""
        return "lamp" if self.verb.startswith("switch") else self.verb

    def text(self) -> str:
        """Readable imperative text, e.g. "move the red block into the box"."""
        if self.verb == "move":
            b, d = self.args
            if d == BOX:
                return f"move the {name(b)} into the box"
            if d in BLOCKS:
                return f"stack the {name(b)} on the {name(d)}"
            return f"move the {name(b)} to the {name(d)}"
        return {
            "open": "open the box",
            "close": "close the box",
            "switch_on": "switch on the lamp",
            "switch_off": "switch off the lamp",
        }[self.verb]


def preconditions(state: State, action: Action) -> list[str]:
    """Ground preconditions of ``action`` in ``state`` (moves out of the box need it open)."""
    if action.verb == "move":
        b, d = action.args
        pre = [f"clear({b})"]
        if state.where(b) == BOX:
            pre.append("open(box)")
        if d == BOX:
            pre += [f"not in({b}, box)", "open(box)"]
        elif d in BLOCKS:
            pre += [f"clear({d})", f"not in({d}, box)"]
        else:
            pre.append(f"free({d})")
        return list(dict.fromkeys(pre))
    return {
        "open": ["not open(box)"],
        "close": ["open(box)"],
        "switch_on": ["not on(lamp)"],
        "switch_off": ["on(lamp)"],
    }[action.verb]


def _loc_pred(block: str, where: str) -> str:
    return f"in({block}, box)" if where == BOX else f"at({block}, {where})" if where in SLOTS else f"on({block}, {where})"


def effects(state: State, action: Action) -> list[str]:
    """Ground post-conditions (add and delete effects) of ``action`` applied in ``state``."""
    if action.verb == "move":
        b, d = action.args
        old = state.where(b)
        post = [_loc_pred(b, d), f"not {_loc_pred(b, old)}"]
        if old in BLOCKS:
            post.append(f"clear({old})")
        elif old in SLOTS:
            post.append(f"free({old})")
        if d in BLOCKS:
            post.append(f"not clear({d})")
        elif d in SLOTS:
            post.append(f"not free({d})")
        return post
    return {
        "open": ["open(box)"],
        "close": ["not open(box)"],
        "switch_on": ["on(lamp)"],
        "switch_off": ["not on(lamp)"],
    }[action.verb]


def check(state: State, action: Action) -> None:
    """Raise :class:`PreconditionError` naming the first false precondition."""
    for p in preconditions(state, action):
        if not state.holds(p):
            raise PreconditionError(action, p, state)


def apply(state: State, action: Action) -> State:
    """The successor state; raises :class:`PreconditionError` if a precondition fails."""
    check(state, action)
    if action.verb == "move":
        return state.with_loc(*action.args)
    if action.verb in ("open", "close"):
        return replace(state, box_open=action.verb == "open")
    return replace(state, lamp_on=action.verb == "switch_on")


def is_applicable(state: State, action: Action) -> bool:
    return all(state.holds(p) for p in preconditions(state, action))


def all_actions() -> Iterator[Action]:
    for b in BLOCKS:
        for d in LOCATIONS:
            if d != b:
                yield Action("move", (b, d))
    yield Action("open", (BOX,))
    yield Action("close", (BOX,))
    yield Action("switch_on", (LAMP,))
    yield Action("switch_off", (LAMP,))


_ALL_ACTIONS = tuple(all_actions())


def applicable_actions(state: State) -> list[Action]:
    """Every action whose preconditions hold in ``state``."""
    return [a for a in _ALL_ACTIONS if is_applicable(state, a)]


def satisfies(state: State, preds: Iterable[str]) -> bool:
    return all(state.holds(p) for p in preds)


def changed_objects(before: State, after: State) -> set[str]:
    """Objects whose own state differs (block location, box lid, lamp)."""
    out = {b for (b, w0), (_, w1) in zip(before.loc, after.loc) if w0 != w1}
    if before.box_open != after.box_open:
        out.add(BOX)
    if before.lamp_on != after.lamp_on:
        out.add(LAMP)
    return out


@lru_cache(maxsize=1)
def valid_layouts() -> tuple[tuple[str, ...], ...]:
    """Every physically valid block layout: one location per block, in ``BLOCKS`` order (2,721 of them).

    With the lid and the lamp (:func:`all_states`) this is the whole state space; the recognisers'
    valid-layout decoding, their coverage benchmark and their training sampler all draw on it.
    """
    out = []
    for row in product(*[[w for w in LOCATIONS if w != b] for b in BLOCKS]):
        try:
            State(tuple(zip(BLOCKS, row, strict=True))).validate()
        except DomainError:
            continue
        out.append(row)
    return tuple(out)


def all_states() -> list[State]:
    """Every valid state: each layout of :func:`valid_layouts` with the lid closed/open and the lamp off/on."""
    return [State(tuple(zip(BLOCKS, row, strict=True)), o, on)
            for row in valid_layouts() for o in (False, True) for on in (False, True)]


def inverse(state: State, action: Action) -> Action:
    """The action that undoes ``action`` applied in ``state`` (every tabletop action can be undone)."""
    if action.verb == "move":
        return Action("move", (action.args[0], state.where(action.args[0])))
    return Action({"open": "close", "close": "open", "switch_on": "switch_off", "switch_off": "switch_on"}[action.verb],
                  action.args)


def predecessors(state: State) -> list[tuple[State, Action]]:
    """Every (start, action) with ``apply(start, action) == state``: the one-step ways of reaching ``state``.

    Each applicable action undone is one of them (a move can always be reversed: the block stays clear and its
    old support stays free; the lid is the same both ways), so this lists them all.
    """
    out = []
    for back in applicable_actions(state):
        start = apply(state, back)
        fwd = inverse(state, back)
        out.append((start, fwd))
    return out


def describe(state: State) -> str:
    """A short scene description for text-conditioned generators and LLM planners."""
    parts = []
    for b, w in state.loc:
        where = "in the box" if w == BOX else f"on the {name(w)}"
        parts.append(f"the {name(b)} is {where}")
    parts.append(f"the box is {'open' if state.box_open else 'closed'}")
    parts.append(f"the lamp is {'on' if state.lamp_on else 'off'}")
    return "; ".join(parts)
