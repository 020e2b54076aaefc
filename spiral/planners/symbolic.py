"""The exact symbolic PlanAgent for the tabletop world (DESIGN §2, §4).

A* over the domain's STRIPS actions, one goal stage at a time: the plan for stage k is a
shortest action sequence from where stage k-1 ended to a state satisfying the merged
literals of stages 0..k (a later stage overrides an earlier one on the same fluent).

Speed matters because the loop re-plans from every observed state: states are encoded as
small int tuples, successors are generated directly (no string predicates in the inner
loop) and cached, and the heuristic is a blocks-world "must move" count that is admissible
(each action changes one fluent) yet close to the true cost. Unreachable goals are proved
without search: a goal target is reachable iff some physically valid state satisfies it,
because every action is reversible and the state graph is connected; satisfiability is a
few big-int AND operations over precomputed bitsets of the ~3k valid block layouts.

Scene-relative goals ("swap the red and the blue block", "put red next to blue"; see
:mod:`spiral.world.goals`) are resolved here, once, against the state the planner observes in
:meth:`SymbolicPlanner.plan`: stage by stage, each stage's relative clauses read the state where
the optimal plan of the stages before it ends, and among several readings the one with the fewest
actions in total wins (ties: the first). The planner remembers that reading per goal text, so
:meth:`replan` and :meth:`achieved` keep to the ORIGINAL scene ("swap" must not swap back from the
swapped state). A planner that never planned the goal (a resumed run whose first plan came from the
journal) rebuilds the starting state by undoing the executed steps' moves from the observed state.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Any

from pydantic import Field

from spiral.options import BackendOptions
from spiral.types import Plan, StepFailure, SubAction, TaskGoal
from spiral.world import domain
from spiral.world.domain import BLOCKS, BOX, LAMP, SLOTS, Action, DomainError, Pred, State
from spiral.world.goals import Goal, GoalParseError, RelativeGoalError, parse_goal, resolve_relative

# ---------------------------------------------------------------------------------------------
# encoding: a state is (loc_0, .., loc_3, box_open, lamp_on); a location code is
# 0..4 for the slots, 5 for the box, 6 + j for "on block j".

NB = len(BLOCKS)
_BOXC = len(SLOTS)
_BLK0 = _BOXC + 1
_NCODES = _BLK0 + NB
_CODE_NAME: tuple[str, ...] = SLOTS + (BOX,) + BLOCKS
_CODE: dict[str, int] = {n: i for i, n in enumerate(_CODE_NAME)}
_BIDX: dict[str, int] = {b: i for i, b in enumerate(BLOCKS)}
_OPEN_KEY, _CLOSE_KEY, _ON_KEY, _OFF_KEY = -1, -2, -3, -4  # action keys for non-move actions

Enc = tuple[int, ...]


class PlanningError(ValueError):
    """A goal that cannot be reached from any state: names the offending literals and why."""

    def __init__(self, message: str, literals: Sequence[str] = (), reason: str = ""):
        self.literals, self.reason = list(literals), reason
        super().__init__(message)


def _encode(state: State) -> Enc:
    locs = state.locs
    return tuple(_CODE[locs[b]] for b in BLOCKS) + (int(state.box_open), int(state.lamp_on))


def _decode(s: Enc) -> State:
    return State(tuple((b, _CODE_NAME[s[i]]) for i, b in enumerate(BLOCKS)), bool(s[NB]), bool(s[NB + 1]))


@cache
def _action(key: int, dest: int = 0) -> Action:
    if key >= 0:
        return Action("move", (BLOCKS[key], _CODE_NAME[dest]))
    return {_OPEN_KEY: Action("open", (BOX,)), _CLOSE_KEY: Action("close", (BOX,)),
            _ON_KEY: Action("switch_on", (LAMP,)), _OFF_KEY: Action("switch_off", (LAMP,))}[key]


_SUCC: dict[Enc, tuple[tuple[tuple[int, int], Enc], ...]] = {}


def _successors(s: Enc) -> tuple[tuple[tuple[int, int], Enc], ...]:
    """Every applicable action and its successor, in a fixed order (deterministic ties)."""
    got = _SUCC.get(s)
    if got is not None:
        return got
    loc = s[:NB]
    box_open, lamp = s[NB], s[NB + 1]
    occupied = set(loc)
    clear = [i for i in range(NB) if _BLK0 + i not in occupied]
    free = [k for k in range(_BOXC) if k not in occupied]
    out: list[tuple[tuple[int, int], Enc]] = []
    for i in clear:
        li = loc[i]
        if li == _BOXC and not box_open:
            continue
        dests = list(free)
        if box_open and li != _BOXC:
            dests.append(_BOXC)
        dests += [_BLK0 + j for j in clear if j != i and loc[j] != _BOXC]
        for d in dests:
            out.append(((i, d), s[:i] + (d,) + s[i + 1:]))
    out.append(((_CLOSE_KEY, 0) if box_open else (_OPEN_KEY, 0), s[:NB] + (1 - box_open, lamp)))
    out.append(((_OFF_KEY, 0) if lamp else (_ON_KEY, 0), s[:NB] + (box_open, 1 - lamp)))
    res = tuple(out)
    _SUCC[s] = res
    return res


# ---------------------------------------------------------------------------------------------
# valid layouts as bitsets, for instant satisfiability proofs


def _valid_layout(loc: tuple[int, ...]) -> bool:
    supports = [c for c in loc if c != _BOXC]
    if len(supports) != len(set(supports)):
        return False
    for i, c in enumerate(loc):
        if c == _BLK0 + i or (c >= _BLK0 and loc[c - _BLK0] == _BOXC):
            return False
    for i in range(NB):  # no cycles: every stack reaches a slot or the box
        cur, steps = loc[i], 0
        while cur >= _BLK0:
            cur, steps = loc[cur - _BLK0], steps + 1
            if steps > NB:
                return False
    return True


@dataclass(frozen=True)
class _Layouts:
    n: int
    all: int
    at: tuple[tuple[int, ...], ...]  # at[i][code]: layouts where block i is at code
    occ: tuple[int, ...]  # occ[code]: layouts where something stands on code


@lru_cache(maxsize=1)
def _layouts() -> _Layouts:
    layouts = [c for c in itertools.product(range(_NCODES), repeat=NB) if _valid_layout(c)]
    at = [[0] * _NCODES for _ in range(NB)]
    for k, loc in enumerate(layouts):
        bit = 1 << k
        for i, c in enumerate(loc):
            at[i][c] |= bit
    occ = [0] * _NCODES
    for c in range(_NCODES):
        for i in range(NB):
            occ[c] |= at[i][c]
    return _Layouts(len(layouts), (1 << len(layouts)) - 1, tuple(tuple(r) for r in at), tuple(occ))


def valid_layouts() -> int:
    """How many physically valid block layouts exist (×4 for lid and lamp = the state space)."""
    return _layouts().n


# ---------------------------------------------------------------------------------------------
# compiled goal targets


@dataclass(frozen=True)
class _Target:
    literals: tuple[str, ...]
    allowed: tuple[frozenset[int], ...]  # per block: location codes the goal allows
    single: tuple[int, ...]  # per block: the one allowed code, or -1
    empty: tuple[int, ...]  # codes that must have nothing on them (clear / free)
    filled: tuple[int, ...]  # codes that must have something on them (not clear / not free)
    box: int  # -1 unconstrained, 0 closed, 1 open, 2 contradictory
    lamp: int


def _typed(p: Pred, text: str) -> None:
    """Reject literals that are well-formed strings but meaningless in the domain."""
    n, a = p.name, p.args
    ok = {
        "at": len(a) == 2 and a[0] in BLOCKS and a[1] in SLOTS,
        "in": len(a) == 2 and a[0] in BLOCKS and a[1] == BOX,
        "on": (len(a) == 2 and a[0] in BLOCKS and a[1] in BLOCKS and a[0] != a[1]) or (len(a) == 1 and a[0] == LAMP),
        "open": a == (BOX,),
        "clear": len(a) == 1 and (a[0] in BLOCKS or a[0] in SLOTS),
        "free": len(a) == 1 and (a[0] in BLOCKS or a[0] in SLOTS),
    }.get(n, False)
    if not ok:
        why = {"at": "at(block, slot); use in(block, box) for the box and on(block, block) for stacking",
               "in": "in(block, box)", "on": "on(block, other_block) or on(lamp)", "open": "open(box)",
               "clear": "clear(block)", "free": "free(slot)"}.get(n, "a known predicate")
        raise PlanningError(f"goal literal {text!r} is not meaningful in the tabletop domain; expected {why}",
                            [text], "ill-typed")


@lru_cache(maxsize=4096)
def _parse(text: str) -> Pred:
    try:
        p = Pred.parse(text)
    except DomainError as e:
        raise PlanningError(f"cannot read goal literal {text!r}: {e}", [text], "unparseable") from None
    _typed(p, text)
    return p


def _compile(literals: Sequence[str]) -> _Target:
    allowed = [set(range(_NCODES)) - {_BLK0 + i} for i in range(NB)]
    empty, filled = [], []
    box = lamp = -1
    for text in literals:
        p = _parse(text)
        n, a = p.name, p.args
        if n in ("at", "in") or (n == "on" and len(a) == 2):
            i, code = _BIDX[a[0]], _CODE[BOX if n == "in" else a[1]]
            allowed[i] = allowed[i] - {code} if p.negated else allowed[i] & {code}
        elif n in ("clear", "free"):
            (filled if p.negated else empty).append(_CODE[a[0]])
        elif n == "open":
            v = 0 if p.negated else 1
            box = v if box in (-1, v) else 2
        else:
            v = 0 if p.negated else 1
            lamp = v if lamp in (-1, v) else 2
    single = tuple(next(iter(al)) if len(al) == 1 else -1 for al in allowed)
    return _Target(tuple(literals), tuple(frozenset(al) for al in allowed), single, tuple(empty), tuple(filled),
                   box, lamp)


def _satisfiable(t: _Target) -> bool:
    return _mask(t)[0] != 0


def _mask(t: _Target) -> tuple[int, int, int]:
    """The valid layouts where ``t`` holds (a bitset) and its lid and lamp constraints (-1 = any)."""
    if t.box == 2 or t.lamp == 2:
        return 0, 0, 0
    lay = _layouts()
    m = lay.all
    for i in range(NB):
        mi = 0
        for c in t.allowed[i]:
            mi |= lay.at[i][c]
        m &= mi
    for c in t.empty:
        m &= ~lay.occ[c]
    for c in t.filled:
        m &= lay.occ[c]
    return (m, t.box, t.lamp) if m else (0, 0, 0)


def equivalent(a: Sequence[str], b: Sequence[str]) -> bool:
    """Whether two conjunctions of goal literals hold in exactly the same states ("at(red, left)" and
    "at(red, left) & not in(red, box)" do): compares the sets of valid layouts and the lid and lamp constraints."""
    return _mask(_compile(list(a))) == _mask(_compile(list(b)))


def _explain(core: list[str]) -> str:
    """Why a minimal unsatisfiable set of literals cannot hold together."""
    ps = [_parse(x) for x in core]
    if len(ps) == 2:
        a, b = ps
        fa, fb = a.fluent(), b.fluent()
        if fa is not None and fa == fb:
            what = {"box": "the box's lid", "lamp": "the lamp"}.get(fa, f"where {fa[4:]} is")
            return f"contradictory: both fix {what}"
        pos = [p for p in ps if not p.negated and p.name in ("at", "on") and len(p.args) == 2]
        if len(pos) == 2 and pos[0].args[1] == pos[1].args[1]:
            return f"two blocks cannot share one support ({domain.name(pos[0].args[1])})"
        names = {p.name for p in ps}
        if names == {"on", "in"} and not any(p.negated for p in ps):
            return "a block cannot stand on a block that is inside the box"
        if all(p.name == "on" and not p.negated for p in ps):
            return "the two blocks would stand on each other (a stacking cycle)"
        if names & {"clear", "free"}:
            return "one literal needs a place kept empty that the other fills (or the reverse)"
    if len(ps) == 1:
        return "it cannot hold in any valid layout"
    return "they cannot all hold at once in any physically valid layout"


def _unsat_core(literals: Sequence[str]) -> list[str]:
    core = list(literals)
    for x in list(core):
        trial = [y for y in core if y != x]
        if not _satisfiable(_compile(trial)):
            core = trial
    return core


# ---------------------------------------------------------------------------------------------
# search


def _heuristic(s: Enc, t: _Target) -> int:
    """Admissible lower bound on the actions left; 0 exactly when ``t`` holds.

    Blocks that must move at least once: those off their allowed locations, those standing
    where the goal needs emptiness or another block, a target block that sits in the box,
    and everything stacked above a block that must move. A block already at its only
    allowed place that must move anyway costs two; each place that must get covered needs
    a move onto it. The lid costs an open when a block must enter or leave a closed box
    (plus a close if the goal wants it closed); the lamp costs one switch.
    """
    loc = s[:NB]
    must = [loc[i] not in t.allowed[i] for i in range(NB)]
    for c in t.empty:
        for j in range(NB):
            if loc[j] == c:
                must[j] = True
    for i in range(NB):
        c = t.single[i]
        if c >= 0 and c != _BOXC and loc[i] != c:
            for j in range(NB):
                if loc[j] == c:
                    must[j] = True
            if c >= _BLK0 and loc[c - _BLK0] == _BOXC:
                must[c - _BLK0] = True
    unfilled = 0  # places that need a block on them: each needs a move onto it
    for c in t.filled:
        if c not in loc:
            unfilled += 1
            if c >= _BLK0 and loc[c - _BLK0] == _BOXC:
                must[c - _BLK0] = True  # a block in the box cannot carry another one
    changed = True
    while changed:  # whatever stands on a block that must move must move first
        changed = False
        for j in range(NB):
            if not must[j] and loc[j] >= _BLK0 and must[loc[j] - _BLK0]:
                must[j] = changed = True
    n, need_open = 0, False
    for i in range(NB):
        if must[i]:
            n += 2 if t.single[i] == loc[i] else 1
            if loc[i] == _BOXC or t.single[i] == _BOXC:
                need_open = True
    n = max(n, unfilled)
    box_open = s[NB]
    if need_open and not box_open:
        n += 2 if t.box == 0 else 1
    elif t.box >= 0 and t.box != box_open:
        n += 1
    if t.lamp >= 0 and t.lamp != s[NB + 1]:
        n += 1
    return n


@dataclass
class SearchStats:
    """Counters from the last solve (for benchmarks and rationales)."""

    expanded: int = 0
    generated: int = 0


def _astar(start: Enc, t: _Target, stats: SearchStats, max_expansions: int,
           avoid: frozenset[tuple[int, int]] = frozenset()) -> tuple[list[tuple[int, int]], Enc]:
    """Fewest-action path from ``start`` to a state satisfying ``t`` (t must be satisfiable), using no action
    in ``avoid``; without them the goal may be out of reach, which raises :class:`PlanningError`."""
    h0 = _heuristic(start, t)
    if h0 == 0:
        return [], start
    hcache: dict[Enc, int] = {start: h0}
    best: dict[Enc, int] = {start: 0}
    parent: dict[Enc, tuple[Enc, tuple[int, int]]] = {}
    counter = itertools.count()
    heap = [(h0, h0, next(counter), start)]
    while heap:
        f, h, _, s = heapq.heappop(heap)
        g = f - h
        if g > best[s]:
            continue  # stale entry
        if h == 0:
            path = []
            cur = s
            while cur != start:
                cur, key = parent[cur]
                path.append(key)
            return path[::-1], s
        stats.expanded += 1
        if stats.expanded > max_expansions:
            break
        ng = g + 1
        for key, nxt in _successors(s):
            if key in avoid:
                continue
            if ng < best.get(nxt, 1 << 30):
                best[nxt] = ng
                parent[nxt] = (s, key)
                hn = hcache.get(nxt)
                if hn is None:
                    hn = hcache[nxt] = _heuristic(nxt, t)
                stats.generated += 1
                heapq.heappush(heap, (ng + hn, hn, next(counter), nxt))
    if not heap and avoid:
        raise PlanningError(f"no plan reaches {list(t.literals)} without the avoided actions", list(t.literals),
                            "avoided")
    raise PlanningError(f"search gave up after {stats.expanded} expansions for {list(t.literals)}",
                        list(t.literals), "search limit")


def _as_state(observation: Any) -> State:
    """Accept a State, a state dict, an Observation (its ``state``) or a dict holding ``state``."""
    if isinstance(observation, State):
        return observation
    if isinstance(observation, dict):
        if "loc" in observation:
            return State.from_dict(observation)
        if observation.get("state") is not None:
            return _as_state(observation["state"])
    inner = getattr(observation, "state", None)
    if inner is not None:
        return _as_state(inner)
    raise ValueError(
        "the symbolic planner needs a symbolic state: pass a State, a dict {'loc': ..., 'box_open', 'lamp_on'} "
        "or an Observation whose .state is set (read one from the frame with the critic's observe())"
    )


def _action_key(verb: str, objects: Sequence[str]) -> tuple[int, int] | None:
    """The search's key of a ground action (None when it names no action of the domain)."""
    if verb == "move" and len(objects) == 2 and objects[0] in _BIDX and objects[1] in _CODE:
        return (_BIDX[objects[0]], _CODE[objects[1]])
    key = {("open", BOX): _OPEN_KEY, ("close", BOX): _CLOSE_KEY, ("switch_on", LAMP): _ON_KEY,
           ("switch_off", LAMP): _OFF_KEY}.get((verb, objects[0] if len(objects) == 1 else ""))
    return (key, 0) if key is not None else None


def _necessary(s: Enc, targets: Sequence[_Target], key: tuple[int, int]) -> bool:
    """Whether every plan from ``s`` through ``targets`` must use the action ``key``: a target fixes the fluent
    that only this action changes to a value it does not have now (a cheap proof that saves a full search)."""
    i, d = key
    for t in targets:
        if i >= 0 and t.single[i] == d and s[i] != d:
            return True
        if i in (_OPEN_KEY, _CLOSE_KEY) and t.box == int(i == _OPEN_KEY) and s[NB] != t.box:
            return True
        if i in (_ON_KEY, _OFF_KEY) and t.lamp == int(i == _ON_KEY) and s[NB + 1] != t.lamp:
            return True
    return False


def _failed_keys(failed: Iterable[Any]) -> dict[tuple[int, int], str]:
    """Search keys of failed sub-actions (StepFailure or SubAction), the latest first, with their text."""
    out: dict[tuple[int, int], str] = {}
    for f in reversed(list(failed)):
        sub = f.sub_action if isinstance(f, StepFailure) else f
        key = _action_key(sub.verb, list(sub.objects))
        if key is not None and key not in out:
            out[key] = _action(*key).text()
    return out


def _as_goal(goal: TaskGoal | str | Goal) -> Goal:
    """The goal's tabletop reading: a run's TaskGoal carries it (read once, by spiral.api); a bare string is read
    here (GoalParseError when the grammar cannot read it)."""
    if isinstance(goal, Goal):
        return goal
    if isinstance(goal, TaskGoal):
        return goal.tabletop if goal.tabletop is not None else parse_goal(goal.text)
    return parse_goal(goal)


@dataclass(frozen=True)
class Reading:
    """One concrete reading of a (possibly scene-relative) goal and its optimal actions per stage."""

    goal: Goal
    stages: tuple[tuple[Action, ...], ...]

    @property
    def length(self) -> int:
        return sum(len(s) for s in self.stages)


def undo_history(state: State, history: Sequence[Any]) -> State | None:
    """The state before ``history`` ran, rebuilt from ``state`` by undoing each executed move, open, close and
    switch (a move's post-conditions name where the block came from); None when a step cannot be undone (an
    unplanned step, or a state that contradicts the history)."""
    s = state
    for item in reversed(list(history)):
        verb = item.verb if isinstance(item, SubAction) else (item.get("verb") if isinstance(item, dict) else None)
        objs = item.objects if isinstance(item, SubAction) else (item.get("objects") if isinstance(item, dict) else None)
        posts = _postconditions(item)
        try:
            if verb == "move" and objs:
                old = next((Pred.parse(p) for p in posts if p.startswith("not ") and Pred.parse(p).fluent() ==
                            f"loc:{objs[0]}"), None)
                if old is None:
                    return None
                src = BOX if old.name == "in" else old.args[1]
                s = s.with_loc(objs[0], src)
            elif verb in ("open", "close"):
                s = State(s.loc, verb == "close", s.lamp_on)
            elif verb in ("switch_on", "switch_off"):
                s = State(s.loc, s.box_open, verb == "switch_off")
            else:
                return None
        except DomainError:
            return None
    try:
        s.validate()
    except DomainError:
        return None
    return s


def _postconditions(item: Any) -> list[str]:
    if isinstance(item, SubAction):
        return list(item.postconditions)
    if isinstance(item, dict):
        return list(item.get("postconditions") or item.get("post") or [])
    return list(getattr(item, "postconditions", None) or [])


def goal_reached(goal: Goal, state: State, start: State | None = None) -> bool:
    """Whether ``state`` meets the goal; a scene-relative goal is read against ``start`` and counts as met when
    any of its readings is (either side for "next to")."""
    if not goal.is_relative:
        return goal.satisfied(state)
    if start is None:
        raise RelativeGoalError("a scene-relative goal needs the starting state to be checked")
    try:
        return any(r.goal.satisfied(state) for r in SymbolicPlanner().readings(start, goal))
    except (GoalParseError, PlanningError):
        return False


class SymbolicOptions(BackendOptions):
    """Options of the ``symbolic`` planner."""

    max_expansions: int = Field(200_000, ge=1, description="A* search budget per goal stage (states expanded)")
    max_readings: int = Field(256, ge=1, description="how many readings of a scene-relative goal (swap, next to, "
                                                      "toggle) are planned to pick the cheapest")


class SymbolicPlanner:
    """Exact PlanAgent: optimal (fewest actions) plans per goal stage, by A* over STRIPS actions."""

    name = "symbolic"
    options_model = SymbolicOptions

    def __init__(self, max_expansions: int = 200_000, max_readings: int = 256):
        self.max_expansions = max_expansions
        self.max_readings = max_readings
        self.stats = SearchStats()
        self._resolved: dict[str, Goal] = {}  # goal text → the reading chosen when it was first planned

    def _target(self, literals: list[str], k: int, n: int) -> _Target:
        t = _compile(literals)
        if not _satisfiable(t):
            core = _unsat_core(literals)
            why = _explain(core)
            where = f" (stage {k + 1} of {n})" if n > 1 else ""
            raise PlanningError(f"unreachable goal{where}: {' and '.join(repr(c) for c in core)} — {why}",
                                core, why)
        return t

    def solve_stages(self, state: State, goal: Goal, start_stage: int = 0,
                     avoid: frozenset[tuple[int, int]] = frozenset()) -> list[list[Action]]:
        """Optimal action lists, one per stage from ``start_stage`` on, using no action in ``avoid``."""
        self.stats = SearchStats()
        targets = goal.targets()
        compiled = [self._target(lits, k, len(targets)) for k, lits in enumerate(targets)]
        s = _encode(state)
        out = []
        for t in compiled[start_stage:]:
            keys, s = _astar(s, t, self.stats, self.max_expansions, avoid)
            out.append([_action(*k) for k in keys])
        return out

    def _avoidable(self, state: State, goal: Goal, start_stage: int, keys: list[tuple[int, int]]
                   ) -> frozenset[tuple[int, int]]:
        """The largest set of ``keys`` (greedily, in order) that some plan can do without."""
        def solves(avoid: frozenset[tuple[int, int]]) -> bool:
            try:
                self.solve_stages(state, goal, start_stage, avoid)
                return True
            except PlanningError as e:
                if e.reason not in ("avoided", "search limit"):
                    raise
                return False

        targets = [_compile(lits) for lits in goal.targets()[start_stage:]]
        keys = [k for k in keys if not _necessary(_encode(state), targets, k)]
        if solves(frozenset(keys)):
            return frozenset(keys)
        kept: frozenset[tuple[int, int]] = frozenset()
        for k in keys:
            if solves(kept | {k}):
                kept = kept | {k}
        return kept

    def solve(self, state: State, goal: Goal) -> list[Action]:
        """Fewest actions achieving each stage in order (stage target = merged stages 0..k); a scene-relative
        goal is resolved against ``state`` first (its cheapest reading)."""
        if goal.is_relative:
            return [a for stage in self.readings(state, goal, best_only=True)[0].stages for a in stage]
        return [a for stage in self.solve_stages(state, goal) for a in stage]

    def readings(self, state: State, goal: Goal, best_only: bool = False) -> list[Reading]:
        """Concrete readings of ``goal`` from ``state``, fewest actions first (ties: the clauses' own order).

        Stage k's relative clauses are resolved against the state where stage k-1's optimal plan
        ends (module doc). At most ``max_readings`` partial readings are kept per stage. Raises
        :class:`GoalParseError` or :class:`PlanningError` when no reading can be reached.
        """
        self.stats = SearchStats()
        if not goal.is_relative:
            return [Reading(goal, tuple(tuple(st) for st in self.solve_stages(state, goal)))]
        partial: list[tuple[tuple[tuple[str, ...], ...], Enc, tuple[tuple[Action, ...], ...]]] = [((), _encode(state),
                                                                                                     ())]
        n = len(goal.stages)
        for k, (stage, rel) in enumerate(zip(goal.stages, goal.relative)):
            nxt = []
            first_error: Exception | None = None
            for done, end, acts in partial:
                fixed = Goal("", done + (stage,)).final()
                try:
                    alts = resolve_relative(rel, _decode(end), fixed)
                except GoalParseError as e:
                    first_error = first_error or GoalParseError(e.clause, e.reason, goal.text or None)
                    continue
                for alt in alts:
                    stages = done + (tuple(stage) + alt,)
                    try:
                        t = self._target(Goal("", stages).targets()[-1], k, n)
                        keys, s_end = _astar(end, t, self.stats, self.max_expansions)
                    except PlanningError as e:
                        first_error = first_error or e
                        continue
                    nxt.append((stages, s_end, acts + (tuple(_action(*key) for key in keys),)))
            if not nxt:
                assert first_error is not None
                raise first_error
            nxt.sort(key=lambda r: sum(len(a) for a in r[2]))  # stable: ties keep the clauses' order
            partial = nxt[:1 if best_only and k == n - 1 else self.max_readings]
        return [Reading(Goal(goal.text, stages), acts) for stages, _, acts in partial]

    def resolve(self, goal: TaskGoal | str | Goal, state: State | dict | Any) -> Goal:
        """The concrete goal a scene-relative goal means in ``state`` (its cheapest reading); concrete goals
        come back unchanged."""
        g, s = _as_goal(goal), _as_state(state)
        return self.readings(s, g, best_only=True)[0].goal if g.is_relative else g

    def _reading(self, goal: Goal, state: State, history: Sequence[Any] = ()) -> tuple[Goal, str]:
        """The concrete goal to plan for, resolved once per goal text against the ORIGINAL scene."""
        if not goal.is_relative:
            return goal, ""
        key = goal.text or str(goal)
        got = self._resolved.get(key)
        if got is None:
            start = state if not history else undo_history(state, history)
            if start is None:
                start = state
                note = "read against the observed state (the executed steps could not be undone): "
            else:
                note = ""
            got = self._resolved[key] = self.resolve(goal, start)
        else:
            note = ""
        read = " ; then ".join(" & ".join(st) for st in got.stages)
        return got, f"{note}read as {read}; "

    def _plan(self, goal: Goal, state: State, start_stage: int, first_id: int, note: str,
              failed: dict[tuple[int, int], str] | None = None) -> Plan:
        avoid: frozenset[tuple[int, int]] = frozenset()
        if failed:
            avoid = self._avoidable(state, goal, start_stage, list(failed))
            could = [failed[k] for k in failed if k in avoid]
            could_not = [failed[k] for k in failed if k not in avoid]
            note += (f"avoiding {'; '.join(could)} (failed); " if could else "") + (
                f"not avoiding {'; '.join(could_not)} (failed, but no plan reaches the goal without it); "
                if could_not else "")
        stages = self.solve_stages(state, goal, start_stage, avoid)
        steps: list[SubAction] = []
        s = state
        for a in (a for st in stages for a in st):
            steps.append(SubAction(id=first_id + len(steps), text=a.text(), verb=a.verb, objects=list(a.args),
                                   preconditions=domain.preconditions(s, a), postconditions=domain.effects(s, a)))
            s = domain.apply(s, a)
        n = len(steps)
        per = f" (stages: {' + '.join(str(len(st)) for st in stages)})" if len(goal.stages) > 1 else ""
        plural = "s" if n != 1 else ""
        rationale = f"{note}optimal A* plan, {n} action{plural}{per}; {self.stats.expanded} nodes expanded"
        return Plan(goal=goal.text or str(goal), steps=steps, rationale=rationale)

    def achieved(self, goal: TaskGoal | str | Goal, observation: State | dict | Any) -> bool:
        """Whether the observed state meets the goal's final literals (the loop's last check); a scene-relative
        goal this planner has not resolved yet counts as not reached (a re-plan resolves it)."""
        g = _as_goal(goal)
        if g.is_relative:
            got = self._resolved.get(g.text or str(g))
            return got is not None and got.satisfied(_as_state(observation))
        return g.satisfied(_as_state(observation))

    def start_run(self) -> None:
        """A new run: goal readings of the last one are forgotten (a resumed run's re-plan reads its own scene)."""
        self._resolved.clear()

    def plan(self, goal: TaskGoal | str | Goal, observation: State | dict | Any) -> Plan:
        """Plan every stage of ``goal`` from the observed state (which a scene-relative goal is read against)."""
        g, state = _as_goal(goal), _as_state(observation)
        self._resolved.pop(g.text or str(g), None)  # a new plan call starts from a new scene
        concrete, note = self._reading(g, state)
        return self._plan(concrete, state, 0, 0, note)

    def replan(self, goal: TaskGoal | str | Goal, observation: State | dict | Any, history: Iterable[Any] | None = None) -> Plan:
        """Plan again from an observed (possibly perturbed) state, resuming at the first unfinished stage.

        ``history`` lists the sub-actions already executed. A stage counts as finished when
        each of its literals holds now or was a post-condition of an executed step at or after
        the step that finished the previous stage; literals of finished stages that a
        perturbation undid are restored anyway, since they stay in the merged targets. New
        step ids continue after the history.
        """
        return self.replan_avoiding(goal, observation, history, [])

    def replan_avoiding(self, goal: TaskGoal | str | Goal, observation: State | dict | Any, history: Iterable[Any] | None,
                        failed: Iterable[StepFailure | SubAction]) -> Plan:
        """:meth:`replan` without the sub-actions the generator failed, when another plan reaches the goal.

        A failed action is avoided in every state (the generator could not draw it), the most recent failures
        first; one that every plan needs is used anyway, and the rationale names both kinds. The plan stays
        optimal among the plans that avoid what it avoids.
        """
        g0, state = _as_goal(goal), _as_state(observation)
        hist = list(history or [])
        g, read_note = self._reading(g0, state, hist)
        posts = [set(_postconditions(h)) for h in hist]
        done, pos = 0, 0
        for stage in g.stages:
            end = pos
            for lit in stage:
                at = next((i for i in range(pos, len(posts)) if lit in posts[i]), None)
                if at is None:
                    if not state.holds(lit):
                        break
                    at = pos
                end = max(end, at)
            else:
                done, pos = done + 1, end
                continue
            break
        if done == len(g.stages) and not g.satisfied(state):
            done = len(g.stages) - 1  # everything was done once, but the final target was disturbed
        note = f"replanned after {len(hist)} executed step(s), from stage {done + 1} of {len(g.stages)}: {read_note}"
        return self._plan(g, state, done, len(hist), note, _failed_keys(failed))
