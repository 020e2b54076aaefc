"""The loop's decision functions by hand (spiral/loop.py sections 6 and 9): what a verdict leads to, what makes two
failures the same, and the final status. Each assertion kills a mutant the escalation tests let through
(benchmarks/mutation.py, target ``loop``)."""

from __future__ import annotations

from spiral.loop import _final_status, _respond, _Step, failure_signature
from spiral.types import GivenUpStep, RunRecord, SubAction, Verdict

KEY = ("move", ("red_block", "box"))


def _verdict(decision: str, failure: str | None = "physical_violation", feedback: str = "1.0 % of the frame") -> Verdict:
    return Verdict(scores={"action": 0.0}, passed=decision == "accept", decision=decision, failure=failure,
                   feedback=feedback)


def test_failure_signature_blanks_numbers_and_keeps_the_kind():
    assert failure_signature(None) == ("", "")
    assert failure_signature(_verdict("refine", "scene_drift", " drift of 31/255 at 2.5 % ")) == ("scene_drift", "drift of #/# at # %")
    assert failure_signature(_verdict("refine", None, "x")) == ("", "x")
    assert failure_signature(_verdict("refine", "scene_drift", "drift of 31/255")) == \
        failure_signature(_verdict("refine", "scene_drift", "drift of 33/255"))


def test_accept_is_accepted_and_a_first_failure_follows_the_critic():
    here = _Step(KEY)
    assert _respond("accept", _verdict("accept", None, ""), here, 0, 0, 3, 3) == ("accept", "", False)
    assert _respond("regenerate", _verdict("regenerate"), here, 0, 0, 3, 3) == ("regenerate", "", False)
    assert _respond("refine", _verdict("refine"), here, 1, 0, 3, 3) == ("refine", "", False)


def test_the_same_failure_again_takes_the_lowest_rung_not_tried():
    v = _verdict("regenerate")
    here = _Step(KEY, signature=failure_signature(v), tried={"regenerate"})
    assert _respond("regenerate", v, here, 1, 0, 3, 3) == (
        "refine", "the same failure again after regenerate: refine", True)
    here.tried |= {"refine"}
    assert _respond("regenerate", v, here, 2, 0, 3, 3) == (
        "replan", "the same failure again after regenerate, refine: replan", True)
    other = _verdict("regenerate", "scene_drift", "scene_drift")  # another failure is not a repeat: the critic's answer
    assert _respond("regenerate", other, here, 2, 0, 3, 3) == ("regenerate", "", False)


def test_budgets_turn_a_retry_into_a_replan_and_a_replan_into_giving_up():
    here = _Step(KEY)
    assert _respond("refine", _verdict("refine"), here, 3, 0, 3, 3) == ("replan", "max_refines_per_step=3 spent", False)
    assert _respond("regenerate", _verdict("regenerate"), here, 2, 0, 3, 3) == ("regenerate", "", False)
    assert _respond("replan", _verdict("replan"), here, 0, 3, 3, 3) == ("give_up", "max_replans=3 spent", False)
    assert _respond("refine", _verdict("refine"), here, 3, 3, 3, 3) == ("give_up", "max_replans=3 spent", False)


def test_an_inherited_failure_and_a_once_step_are_given_up_at_once():
    v = _verdict("regenerate")
    inherited = _Step(KEY, inherited=failure_signature(v))
    assert _respond("regenerate", v, inherited, 0, 0, 3, 3) == (
        "give_up", "the failure of the unverified step before it: it comes with the frame it starts from", False)
    assert _respond("regenerate", _verdict("regenerate", "scene_drift", "d"), inherited, 0, 0, 3, 3)[0] == "regenerate"
    once = _Step(KEY, once="given up earlier")
    assert _respond("regenerate", v, once, 0, 0, 3, 3) == ("give_up", "given up earlier", False)
    assert _respond("accept", _verdict("accept", None, ""), once, 0, 0, 3, 3) == ("accept", "", False)


def test_final_status_names_what_was_not_verified():
    rec = RunRecord(goal="g", mode="closed_loop")
    assert _final_status(rec, "closed_loop", True, "") == ("success", "")
    assert _final_status(rec, "closed_loop", False, "lamp is off") == (
        "completed_unverified", "the plan is done but the observed state does not meet the goal (lamp is off)")
    assert _final_status(rec, "plan_only", True, "") == (
        "completed_unverified", "open loop (plan_only): no critic checked the steps")
    rec.given_up = [GivenUpStep(sub_action=SubAction(id=i, text=t, verb="move", objects=["red_block", "box"]), plan_version=0, step=i, reason="r")
                    for i, t in enumerate(("a", "b"))]
    assert _final_status(rec, "closed_loop", True, "") == ("completed_unverified", "2 step(s) kept unverified: a; b")
