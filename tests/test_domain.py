import itertools

import numpy as np
import pytest

from spiral.world import domain as d
from spiral.world.domain import Action, DomainError, PreconditionError, Pred, State


def S(box_open=False, lamp_on=False, **loc):
    base = {"red_block": "left", "green_block": "center", "blue_block": "right", "yellow_block": "far_right"}
    base.update({f"{k}_block": v for k, v in loc.items()})
    return State.make(base, box_open=box_open, lamp_on=lamp_on)


def random_states(n, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        loc = {b: d.LOCATIONS[rng.integers(len(d.LOCATIONS))] for b in d.BLOCKS}
        try:
            out.append(State.make(loc, bool(rng.integers(2)), bool(rng.integers(2))))
        except DomainError:
            continue
    return out


def test_move_to_slot_block_and_box():
    s = S(box_open=True)
    s1 = d.apply(s, Action("move", ("red_block", "far_left")))
    assert s1.holds("at(red_block, far_left)") and s1.holds("free(left)") and not s1.holds("free(far_left)")
    s2 = d.apply(s1, Action("move", ("blue_block", "green_block")))
    assert s2.holds("on(blue_block, green_block)") and not s2.holds("clear(green_block)") and s2.holds("free(right)")
    s3 = d.apply(s2, Action("move", ("yellow_block", "box")))
    assert s3.holds("in(yellow_block, box)") and s3.holds("free(far_right)")


@pytest.mark.parametrize("state,action,failed", [
    (S(red="green_block"), "move(green_block, left)", "clear(green_block)"),  # covered block
    (S(), "move(red_block, box)", "open(box)"),  # closed box
    (S(box_open=True, red="box"), "move(red_block, box)", "not in(red_block, box)"),
    (S(), "move(red_block, center)", "free(center)"),  # occupied slot
    (S(red="green_block"), "move(blue_block, green_block)", "clear(green_block)"),
    (S(box_open=True, red="box"), "move(blue_block, red_block)", "not in(red_block, box)"),
    (S(red="box"), "move(red_block, far_left)", "open(box)"),  # take out of a closed box
    (S(box_open=True), "open(box)", "not open(box)"),
    (S(), "close(box)", "open(box)"),
    (S(lamp_on=True), "switch_on(lamp)", "not on(lamp)"),
    (S(), "switch_off(lamp)", "on(lamp)"),
])
def test_failed_precondition_is_named(state, action, failed):
    with pytest.raises(PreconditionError) as e:
        d.apply(state, Action.parse(action))
    assert e.value.failed == failed and failed in str(e.value)


def test_lid_and_lamp_toggle():
    s = S()
    assert d.apply(s, Action.parse("open(box)")).box_open
    assert not d.apply(S(box_open=True), Action.parse("close(box)")).box_open
    assert d.apply(s, Action.parse("switch_on(lamp)")).holds("on(lamp)")
    assert d.apply(S(lamp_on=True), Action.parse("switch_off(lamp)")).holds("not on(lamp)")


def test_effects_hold_and_nothing_else_changes_on_random_states():
    """STRIPS semantics: after apply, every post-condition holds and only the acted object changed."""
    n = 0
    for s in random_states(150):
        for a in d.applicable_actions(s):
            t = d.apply(s, a)
            assert all(t.holds(p) for p in d.effects(s, a)), (s, a)
            target = a.args[0] if a.verb == "move" else a.args[0]
            assert d.changed_objects(s, t) == {target}
            t.validate()
            n += 1
    assert n > 1000


def test_applicable_actions_agree_with_preconditions():
    for s in random_states(50, seed=1):
        app = set(d.applicable_actions(s))
        for a in d.all_actions():
            ok = a in app
            if ok:
                d.check(s, a)
            else:
                with pytest.raises(PreconditionError):
                    d.check(s, a)


def test_invalid_states_and_actions_are_rejected():
    with pytest.raises(DomainError, match="share one support"):
        S(red="center")
    with pytest.raises(DomainError, match="cycle|itself"):
        S(red="green_block", green="red_block")
    with pytest.raises(DomainError, match="inside the box"):
        S(red="box", green="red_block")
    with pytest.raises(DomainError, match="unknown verb"):
        Action("fly", ("red_block",))
    with pytest.raises(DomainError, match="destinations"):
        Action("move", ("red_block", "red_block"))
    with pytest.raises(DomainError, match="unknown object"):
        Pred.parse("in(purple_block, box)")


def test_predicate_parse_roundtrip_and_fluents():
    for text in ["in(red_block, box)", "not open(box)", "on(lamp)", "on(red_block, blue_block)", "at(red_block, left)"]:
        assert str(Pred.parse(text)) == text
    assert Pred.parse("on(lamp)").fluent() == "lamp"
    assert Pred.parse("on(red_block, blue_block)").fluent() == "loc:red_block"
    assert Pred.parse("not open(box)").fluent() == "box"


def test_state_dict_roundtrip():
    for s in random_states(20, seed=2):
        assert State.from_dict(s.to_dict()) == s
    assert len({s for s in random_states(20, seed=2)} | set(random_states(20, seed=2))) <= 20


def test_action_text():
    texts = {str(a): a.text() for a in itertools.islice(d.all_actions(), 0, None)}
    assert texts["move(red_block, box)"] == "move the red block into the box"
    assert texts["move(red_block, blue_block)"] == "stack the red block on the blue block"
    assert texts["move(red_block, far_left)"] == "move the red block to the far left slot"


def test_valid_layouts_are_exactly_the_valid_states():
    from spiral.planners.symbolic import valid_layouts as planner_count

    lay = d.valid_layouts()
    assert len(lay) == len(set(lay)) == planner_count() == 2721
    for row in lay:  # every listed layout is valid ...
        State(tuple(zip(d.BLOCKS, row))).validate()
    # ... and every valid one is listed (brute force over all 10^4 assignments)
    n_valid = 0
    for row in itertools.product(*[[w for w in d.LOCATIONS if w != b] for b in d.BLOCKS]):
        try:
            State(tuple(zip(d.BLOCKS, row))).validate()
            n_valid += 1
        except DomainError:
            pass
    assert n_valid == len(lay)
    states = d.all_states()
    assert len(states) == len(set(states)) == 4 * len(lay)
    four_high = [s for s in states if max(s.height(b) for b in d.BLOCKS) == 3]
    assert len(four_high) == 4 * 5 * 24  # four-block towers: every slot, every order, lid × lamp


def test_predecessors_are_every_one_step_way_in():
    everything = d.all_states()
    for s in random_states(12, seed=3) + [S(green="red_block", blue="green_block", yellow="blue_block")]:
        preds = d.predecessors(s)
        assert preds and all(d.apply(s0, a) == s for s0, a in preds)
        # brute force: every valid state from which one applicable action lands in s
        near = [s0 for s0 in everything
                if sum(x != y for x, y in zip(s0.loc, s.loc)) + (s0.box_open != s.box_open) + (s0.lamp_on != s.lamp_on) == 1]
        brute = {(s0, a) for s0 in near for a in d.applicable_actions(s0) if d.apply(s0, a) == s}
        assert set(preds) == brute
        for s0, a in preds:
            assert d.inverse(s0, a) in d.applicable_actions(s)
