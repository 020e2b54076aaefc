"""Tests for the procedural tabletop renderer: determinism, clip boundaries, sizes, failures, box visibility."""

from __future__ import annotations

import json

import numpy as np
import pytest

from spiral.world.domain import BLOCKS, Action, PreconditionError, State, apply
from spiral.world.render import (
    BLOCK_SIZE,
    FAILURE_KIND,
    FAILURES,
    Appearance,
    RenderResult,
    block_rect,
    render_action,
    render_state,
    rest_positions,
)

S0 = State.make({"red_block": "left", "green_block": "red_block", "blue_block": "center", "yellow_block": "far_right"})
S_OPEN = State.make({"red_block": "left", "green_block": "far_left", "blue_block": "box", "yellow_block": "center"},
                    box_open=True)
APP = Appearance.sample(11)
A = Action.parse

# one action of every type, each with a state where it applies
CASES = [
    (S0, A("move(blue_block, far_left)")),  # onto a slot
    (S0, A("move(yellow_block, blue_block)")),  # stack
    (S_OPEN, A("move(red_block, box)")),  # into the box
    (S_OPEN, A("move(blue_block, right)")),  # out of the box
    (S0, A("open(box)")),
    (S_OPEN, A("close(box)")),
    (S0, A("switch_on(lamp)")),
    (State.make(S0.locs, lamp_on=True), A("switch_off(lamp)")),
]
IDS = [str(a) for _, a in CASES]


def _region(frame: np.ndarray, pos: tuple[float, float], size: int = 64) -> np.ndarray:
    x0, y0, x1, y1 = block_rect(pos, size)
    return frame[y0:y1, x0:x1].astype(np.int16)


def _diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def test_appearance_sample_is_deterministic_and_varies():
    assert Appearance.sample(3) == Appearance.sample(3)
    assert Appearance.sample(3) != Appearance.sample(4)
    assert Appearance.default() == Appearance()
    hash(Appearance.sample(5))


def test_render_state_shape_and_default_gripper_home():
    f = render_state(S0)
    assert f.shape == (64, 64, 3) and f.dtype == np.uint8
    assert not np.array_equal(f, render_state(S0, gripper=False))
    assert np.array_equal(f, render_state(S0, gripper=None))


@pytest.mark.parametrize("state,action", CASES, ids=IDS)
def test_first_and_last_frames_match_render_state(state: State, action: Action):
    r = render_action(state, action, appearance=APP, seed=3)
    assert isinstance(r, RenderResult) and r.failure is None
    assert r.end_state == apply(state, action)
    assert np.array_equal(r.frames[0], render_state(state, appearance=APP))
    assert np.array_equal(r.frames[-1], render_state(r.end_state, appearance=APP))
    assert r.held[0] is None and r.held[-1] is None and len(r.held) == len(r.frames)
    if action.verb == "move":
        assert action.args[0] in r.held
        assert r.moved == {action.args[0]}
    assert r.meta["gripper_home"]


@pytest.mark.parametrize("state,action", CASES, ids=IDS)
def test_deterministic_by_seed(state: State, action: Action):
    a = render_action(state, action, appearance=APP, seed=5)
    b = render_action(state, action, appearance=APP, seed=5)
    c = render_action(state, action, appearance=APP, seed=6)
    assert a.frames.tobytes() == b.frames.tobytes()
    assert a.frames.tobytes() != c.frames.tobytes()
    assert a.end_state == c.end_state
    assert np.array_equal(a.frames[-1], c.frames[-1])


@pytest.mark.parametrize("failure", FAILURES)
def test_failures_deterministic(failure: str):
    a = render_action(S0, A("move(blue_block, far_left)"), seed=2, failure=failure)
    b = render_action(S0, A("move(blue_block, far_left)"), seed=2, failure=failure)
    assert a.frames.tobytes() == b.frames.tobytes() and a.end_state == b.end_state and a.meta == b.meta
    assert a.failure == failure and a.meta["failure_kind"] == FAILURE_KIND[failure]


@pytest.mark.parametrize("size", [32, 64, 96, 128])
@pytest.mark.parametrize("state,action", CASES[::2] + CASES[1::4], ids=[str(a) for _, a in CASES[::2] + CASES[1::4]])
def test_sizes(state: State, action: Action, size: int):
    r = render_action(state, action, size=size, frames=5)
    assert r.frames.shape == (5, size, size, 3) and r.frames.dtype == np.uint8
    assert np.array_equal(r.frames[-1], render_state(r.end_state, size=size))


@pytest.mark.parametrize("frames", [5, 9, 17, 33])
def test_frame_counts(frames: int):
    r = render_action(S0, A("move(yellow_block, blue_block)"), frames=frames, seed=1)
    assert r.frames.shape[0] == frames == len(r.held)
    steps = [_diff(r.frames[i], r.frames[i + 1]) for i in range(frames - 1)]
    assert max(steps) < 12  # smooth: no consecutive-frame jump


@pytest.mark.parametrize("state,text", [
    (S0, "move(red_block, far_right)"),  # red is under green
    (S0, "move(blue_block, box)"),  # box closed
    (S0, "close(box)"),
    (S0, "switch_off(lamp)"),
    (S0, "move(blue_block, left)"),  # slot taken
    (S_OPEN, "open(box)"),
])
def test_precondition_failure_raises(state: State, text: str):
    with pytest.raises(PreconditionError):
        render_action(state, A(text))


def test_bad_arguments():
    with pytest.raises(ValueError):
        render_action(S0, A("open(box)"), failure="flicker")
    with pytest.raises(ValueError):
        render_action(S0, A("open(box)"), frames=2)


def test_blocks_in_box_visible_with_lid_closed():
    r = render_action(S_OPEN, A("move(red_block, box)"), appearance=APP)
    elsewhere = render_state(S_OPEN, appearance=APP)  # red on a slot, blue in the box
    spot = rest_positions(r.end_state, APP)["red_block"]
    assert _diff(_region(r.frames[-1], spot), _region(elsewhere, spot)) > 30
    closed = apply(r.end_state, A("close(box)"))
    shut = render_state(closed, appearance=APP)
    shut_without = render_state(State.make(S_OPEN.locs, box_open=False), appearance=APP)
    assert _diff(_region(shut, spot), _region(shut_without, spot)) > 30
    # each block has its own cell: the box region tells which blocks are inside
    views = []
    for b in BLOCKS:
        locs = dict(zip(BLOCKS, ["far_left", "left", "center", "right"], strict=True))
        locs[b] = "box"
        views.append(render_state(State.make(locs), appearance=APP)[34:53, 43:61])
    for i in range(len(views)):
        for j in range(i + 1, len(views)):
            assert _diff(views[i], views[j]) > 3


def test_render_state_with_held_block_and_pose():
    f = render_state(S0, gripper=(0.3, 0.3), held="blue_block")
    assert not np.array_equal(f, render_state(S0))
    spot = rest_positions(S0)["blue_block"]
    assert _diff(_region(f, spot), _region(render_state(S0), spot)) > 20  # the block left its slot
    assert _diff(f, render_state(S0, gripper=(0.3, 0.3, 0.08), held="blue_block")) > 0
    with pytest.raises(ValueError):
        render_state(S0, gripper=False, held="blue_block")


def test_lamp_and_lid_change_the_picture():
    off, on = render_state(S0), render_state(State.make(S0.locs, lamp_on=True))
    assert float(on.astype(float).mean() - off.astype(float).mean()) > 20
    shut, opened = render_state(S0), render_state(State.make(S0.locs, box_open=True))
    assert _diff(shut, opened) > 1.0


# ---------------------------------------------------------------- failures vs success
ACT = A("move(blue_block, far_left)")


def _pair(failure: str, seed: int = 0, state: State = S0, action: Action = ACT) -> tuple[RenderResult, RenderResult]:
    return (render_action(state, action, seed=seed, failure=failure), render_action(state, action, seed=seed))


def test_extra_motion_moves_a_second_block():
    bad, ok = _pair("extra_motion")
    c = bad.meta["extra"]["object"]
    assert c in BLOCKS and c != "blue_block"
    p = rest_positions(S0)[c]
    assert _diff(_region(ok.frames[-1], p), _region(ok.frames[0], p)) < 1
    assert _diff(_region(bad.frames[-1], p), _region(bad.frames[0], p)) > 20
    assert bad.moved == {"blue_block", c}
    assert bad.end_state.where("blue_block") == "far_left" and bad.end_state.where(c) == bad.meta["extra"]["to"]
    assert all(h in (None, "blue_block") for h in bad.held)  # the second block moves with nothing holding it


def test_extra_motion_falls_back_to_lamp():
    st = State.make({"red_block": "left", "green_block": "box", "blue_block": "box", "yellow_block": "box"}, box_open=True)
    r = render_action(st, A("move(red_block, center)"), failure="extra_motion")
    assert r.end_state.lamp_on and r.moved == {"red_block", "lamp"}
    assert r.meta["extra"]["object"] == "lamp"


def test_wrong_object_leaves_requested_block_alone():
    bad, ok = _pair("wrong_object")
    p = rest_positions(S0)["blue_block"]
    assert _diff(_region(bad.frames[-1], p), _region(bad.frames[0], p)) < 1
    assert _diff(_region(ok.frames[-1], p), _region(ok.frames[0], p)) > 20
    assert bad.end_state.where("blue_block") == "center" and bad.end_state != S0
    assert "blue_block" not in bad.moved and len(bad.moved) == 1


def test_wrong_object_fallback_and_fixtures():
    tower = State.make({"red_block": "left", "green_block": "red_block", "blue_block": "green_block",
                        "yellow_block": "blue_block"})
    r = render_action(tower, A("move(yellow_block, far_right)"), failure="wrong_object")
    assert r.end_state == State.make(tower.locs, lamp_on=True)
    r = render_action(S0, A("open(box)"), failure="wrong_object", seed=0)
    assert not r.end_state.box_open and "box" not in r.moved and r.moved


def test_teleport_is_a_sudden_switch():
    bad = render_action(S0, ACT, seed=0, frames=17, failure="teleport")
    ok = render_action(S0, ACT, seed=0, frames=17)
    p0, p1 = rest_positions(S0)["blue_block"], rest_positions(ok.end_state)["blue_block"]

    def both(r: RenderResult) -> list[float]:
        """Per step, how much the start and the end spot change together (a jump changes both at once)."""
        f = r.frames
        return [min(_diff(_region(f[i], p0), _region(f[i + 1], p0)), _diff(_region(f[i], p1), _region(f[i + 1], p1)))
                for i in range(len(f) - 1)]

    jb, jo = both(bad), both(ok)
    assert int(np.argmax(jb)) == bad.meta["jump_frame"] - 1
    assert max(jb) > 20 and max(jb) > 4 * max(jo)
    assert all(h is None for h in bad.held) and bad.end_state == ok.end_state


def test_drift_changes_background():
    bad, ok = _pair("drift")
    wall = (slice(30, 40), slice(2, 40))  # plain wall, nothing moves there in this clip
    shift = np.abs(bad.frames[-1][wall].reshape(-1, 3).mean(0) - bad.frames[0][wall].reshape(-1, 3).mean(0))
    assert np.linalg.norm(shift) >= 20
    assert np.array_equal(bad.frames[0], ok.frames[0]) and bad.end_state == ok.end_state
    assert len(bad.meta["drift_rgb"]) == 3


@pytest.mark.parametrize("seed,variant", [(0, "stall"), (1, "drop")])
def test_incomplete_move(seed: int, variant: str):
    bad, ok = _pair("incomplete", seed)
    assert bad.end_state == S0 and bad.meta["incomplete"]["variant"] == variant
    pos = bad.meta["positions"]["blue_block"]
    assert pos != ok.meta["positions"]["blue_block"] and pos != rest_positions(S0)["blue_block"]
    assert _diff(bad.frames[-1], ok.frames[-1]) > 0.5
    end_spot = rest_positions(ok.end_state)["blue_block"]
    assert _diff(_region(bad.frames[-1], end_spot), _region(ok.frames[-1], end_spot)) > 20


def test_incomplete_lid_and_lamp():
    r = render_action(S0, A("open(box)"), failure="incomplete")
    assert 0.0 < r.meta["lid"] < 1.0 and r.end_state == S0 and r.moved == {"box"}
    assert not np.array_equal(r.frames[-1], render_state(S0)) and r.meta["gripper_home"]
    r = render_action(S0, A("switch_on(lamp)"), failure="incomplete")
    assert r.meta["light"] == 0.0 and r.end_state == S0 and not r.moved
    assert np.array_equal(r.frames[-1], render_state(S0))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_no_motion_changes_nothing(seed: int):
    r = render_action(S0, ACT, seed=seed, failure="no_motion")
    assert r.end_state == S0 and not r.moved and all(h is None for h in r.held)
    assert np.array_equal(r.frames[-1], r.frames[0])


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("state,action", CASES, ids=IDS)
def test_every_failure_applies_to_every_action(state: State, action: Action, failure: str):
    r = render_action(state, action, seed=4, failure=failure, size=32, frames=5)
    assert r.frames.shape == (5, 32, 32, 3)
    r.end_state.validate()
    json.dumps(r.meta)  # datasets store it as JSON
    if failure in ("incomplete", "no_motion"):
        assert r.end_state == state
    if failure in ("teleport", "drift"):
        assert r.end_state == apply(state, action)
    if failure == "extra_motion":
        want, extra = apply(state, action), r.meta["extra"]["object"]
        for b in BLOCKS:
            assert b == extra or r.end_state.where(b) == want.where(b)
        assert extra == "box" or r.end_state.box_open == want.box_open
        assert extra == "lamp" or r.end_state.lamp_on == want.lamp_on
        assert extra in r.moved


def test_block_size_is_visible_at_32():
    assert BLOCK_SIZE * 32 >= 3
