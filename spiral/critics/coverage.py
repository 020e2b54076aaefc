"""How much of the tabletop state space a recogniser reads right: the critic's eyes and the bench judge alike.

The state space is small enough to check whole: :func:`spiral.world.domain.all_states` lists every valid
state (2,721 block layouts × lid × lamp = 10,884). A state counts as *read right* when

- ``exact``: the valid-state decoding the critic and the judge use (:func:`decode_states`, the most
  probable legal layout plus the lid and lamp rules) gives exactly that state, and
- ``sure``: besides, every fact of it is read with probability ≥ ``sure_at`` where the critic asks how
  likely it is: each block's location from :func:`end_locations` (valid-layout marginals times the
  probability of being at rest, what the action and preservation scores use), the lid's and the lamp's
  class. A block read "on blue, or maybe still in the gripper" is decoded right but fails a step that put it
  there, which is how the critic rejected finished four-block towers (issue 21).

Frames are rendered with the gripper parked at home, as the first and last frame of every clip are.
``benchmarks/recognizer_coverage.py`` runs this over every state; ``tests/test_recognizer_coverage.py``
over a sample. The samplers that make the recognisers' training data cover the same space live here too:
:func:`sample_layout` (uniform, or stratified by tallest tower × blocks in the box) and
:func:`pick_predecessor` (a clip that ends in a given state, action kind first).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from spiral.critics.recognizer import Recognizer, decode_states
from spiral.critics.tabletop import end_locations
from spiral.models.recognizer import LOC_CLASSES
from spiral.world import domain
from spiral.world.domain import BLOCKS, BOX, Action, State
from spiral.world.render import Appearance, render_state

#: Appearance seeds of the coverage benchmark and test: inside the benchmark's test range
#: (``spiral.bench.seeds.TESTS``), so below 2**31 and disjoint from every trainer's looks (≥ 2**31).
COVERAGE_SEEDS = range(10_950_000, 11_000_000)


def tower(state: State) -> int:
    """Height of the tallest stack standing on the table (0: every block in the box)."""
    return max((state.height(b) + 1 for b in BLOCKS if state.base_slot(b) != BOX), default=0)


def state_class(state: State) -> dict[str, Any]:
    """The classes a coverage report breaks results down by."""
    top = max((b for b in BLOCKS if state.base_slot(b) != BOX), key=state.height, default=None)
    return {"tower": tower(state), "in_box": len(state.in_box()), "lid": "open" if state.box_open else "closed",
            "lamp": "on" if state.lamp_on else "off", "tower_slot": state.base_slot(top) if top else "none"}


def action_kind(start: State, action: Action) -> str:
    """stack_level<k> (k = height of the placed block + 1), to_slot, into_box, open, close, lamp_on, lamp_off."""
    if action.verb == "move":
        b, d = action.args
        if d in BLOCKS:
            return f"stack_level{domain.apply(start, action).height(b) + 1}"
        return "into_box" if d == BOX else "to_slot"
    return {"switch_on": "lamp_on", "switch_off": "lamp_off"}.get(action.verb, action.verb)


def pick_predecessor(end: State, rng: np.random.Generator, kind: str | None = None) -> tuple[State, Action]:
    """A one-step way into ``end`` (``domain.predecessors``): the kind of action first, uniformly (or ``kind``),
    then uniformly within it, so stacking onto a tall tower is drawn as often as a lamp switch."""
    by_kind: dict[str, list[tuple[State, Action]]] = defaultdict(list)
    for s0, a in domain.predecessors(end):
        by_kind[action_kind(s0, a)].append((s0, a))
    if kind is not None and kind not in by_kind:
        raise ValueError(f"no {kind} step ends in {end}; possible: {', '.join(sorted(by_kind))}")
    kinds = sorted(by_kind)
    pool = by_kind[kind if kind is not None else kinds[int(rng.integers(len(kinds)))]]
    return pool[int(rng.integers(len(pool)))]


@lru_cache(maxsize=1)
def _strata() -> tuple[tuple[tuple[str, ...], ...], ...]:
    """The valid layouts grouped by (tallest tower, blocks in the box): 13 non-empty cells."""
    cells: dict[tuple[int, int], list[tuple[str, ...]]] = defaultdict(list)
    for row in domain.valid_layouts():
        s = State(tuple(zip(BLOCKS, row, strict=True)))
        cells[(tower(s), len(s.in_box()))].append(row)
    return tuple(tuple(cells[k]) for k in sorted(cells))


def sample_layout(rng: np.random.Generator, stratified: bool) -> State:
    """A valid state with a random lid and lamp: the layout uniform over all 2,721, or (``stratified``) uniform
    within a (tallest tower, blocks in the box) cell drawn with weight √(its size), so four-block towers
    (7 % of draws instead of 2 % from ``sample_state``) and full boxes come up often, the one all-in-box layout
    not too often."""
    if stratified:
        cells = _strata()
        w = np.sqrt([len(c) for c in cells])
        cell = cells[int(rng.choice(len(cells), p=w / w.sum()))]
        row = cell[int(rng.integers(len(cell)))]
    else:
        lay = domain.valid_layouts()
        row = lay[int(rng.integers(len(lay)))]
    return State(tuple(zip(BLOCKS, row, strict=True)), bool(rng.random() < 0.5), bool(rng.random() < 0.5))


def render_states(states: Sequence[State], seeds: Sequence[int], size: int = 64) -> np.ndarray:
    """One frame per state (gripper at home) in the look ``Appearance.sample(seed)`` of its seed."""
    looks: dict[int, Appearance] = {}
    out = np.empty((len(states), size, size, 3), np.uint8)
    for i, (s, seed) in enumerate(zip(states, seeds, strict=True)):
        look = looks.get(seed) or looks.setdefault(seed, Appearance.sample(int(seed)))
        out[i] = render_state(s, appearance=look, size=size)
    return out


@dataclass
class Readout:
    """Per frame: the decoded state, whether it is exactly right, and whether every fact of it is sure too."""

    read: list[State]
    exact: np.ndarray
    sure: np.ndarray
    least: np.ndarray  # the lowest probability among the true state's facts (what ``sure`` thresholds)


def read_states(recognizer: Recognizer, frames: np.ndarray, states: Sequence[State], batch: int = 512,
                sure_at: float = 0.5) -> Readout:
    """Read ``frames`` (batched) and compare with the true ``states`` as the critic decodes them."""
    read: list[State] = []
    least = np.empty(len(frames))
    for i in range(0, len(frames), batch):
        p = recognizer.predict(frames[i:i + batch])
        read += decode_states(p)
        end = end_locations(p["loc"])  # n×4×C
        truth = states[i:i + batch]
        cls = np.array([[LOC_CLASSES.index(s.where(b)) for b in BLOCKS] for s in truth])
        loc_p = np.take_along_axis(end, cls[..., None], -1)[..., 0].min(-1)
        lid_p = p["lid"][np.arange(len(truth)), [2 if s.box_open else 0 for s in truth]]
        lamp_p = p["light"][np.arange(len(truth)), [2 if s.lamp_on else 0 for s in truth]]
        least[i:i + batch] = np.minimum(loc_p, np.minimum(lid_p, lamp_p))
    exact = np.array([r == s for r, s in zip(read, states, strict=True)], bool)
    return Readout(read, exact, exact & (least >= sure_at), least)


def breakdown(states: Sequence[State], ok: np.ndarray, keys: Iterable[str] = ("tower", "in_box", "lid", "lamp")
              ) -> dict[str, dict[str, dict[str, float]]]:
    """Per class key and value: n and the fraction read right."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    classes = [state_class(s) for s in states]
    for key in keys:
        groups: dict[str, list[bool]] = defaultdict(list)
        for c, k in zip(classes, ok, strict=True):
            groups[str(c[key])].append(bool(k))
        out[key] = {v: {"n": len(g), "right": float(np.mean(g))} for v, g in sorted(groups.items())}
    return out
