"""A loop that adapts (DESIGN §1, "Never worse than open loop"; spiral/loop.py sections 2, 4, 5).

A generator that can never draw one sub-action (the oracle ``world`` generator with that action coming out as a
still scene) drives the escalation ladder: new seed → refined instruction → re-plan that records the failed
sub-action (the symbolic planner avoids it when another plan reaches the goal) → give the step up. Both
exhausted-budget policies run end to end through the Python API and the CLI; the first attempt at every step is
plan-only's generation; the total budget holds back a generation for every later step; a run killed after a step
was given up resumes to the same record; and on a small fixed suite with failures injected the closed loop
completes at least as many tasks as plan-only (judge-read, paired). What a user reads of a step given up is
checked too: the record's entry (last failure and feedback, where it was given up before), the stop reason,
and the progress events the CLI's live view and an API caller receive.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from spiral import registry
from spiral.api import run
from spiral.bench import seeds
from spiral.cli import app
from spiral.generators.world import WorldGenerator
from spiral.planners.symbolic import SymbolicPlanner
from spiral.types import FEEDBACK_MARK, GenerationRequest, Observation, Segment, StepFailure, SubAction, compose_prompt
from spiral.world.domain import SLOTS
from spiral.world.goals import parse_goal
from spiral.world.tasks import sample_state

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
LIGHT = ["output.report=true", "output.segment_videos=false"]


def base_instruction(prompt: str) -> str:
    """The instruction of a journaled attempt's prompt (attempts.jsonl records it composed with the feedback)."""
    return prompt.split(FEEDBACK_MARK)[0]


class FailsOneAction:
    """The oracle world generator, except that ``action`` ("move yellow_block box"; "every" for every action) always
    comes out as a still scene: a generator that cannot draw that sub-action. The tests inject no other failures."""

    name = "fails-one"

    def __init__(self, action: str = "every", failure: str | None = None, failure_rate: float = 0.0,
                 read_state: str = "frame"):
        self.world = WorldGenerator(failure_rate=failure_rate, read_state=read_state)
        # ``failure``: the action comes out as the renderer's failure of that kind instead (different every seed)
        self.failing = WorldGenerator(failure_rate=1.0, failures=[failure], read_state=read_state) if failure else None
        verb, *objects = action.split()
        self.action = (verb, tuple(objects))

    def fails(self, sub: SubAction | None) -> bool:
        return sub is not None and (self.action[0] == "every" or (sub.verb, tuple(sub.objects)) == self.action)

    def generate(self, request: GenerationRequest) -> Segment:
        if not self.fails(request.sub_action):
            return self.world.generate(request)
        if self.failing is not None:
            return self.failing.generate(request)
        frames = np.repeat(request.cond_frame[None], request.num_frames, axis=0)
        return Segment(frames=frames, fps=8.0, seed=request.seed, backend=self.name, meta={"failure": "no_motion"})


registry.register("generator", "fails-one")(FailsOneAction)


def _sets(action: str, *extra: str) -> list[str]:
    return ["generator.name=fails-one", f"generator.options.action={action}", "generator.options.failure_rate=0.0",
            *LIGHT, *extra]


def _scene(goal: str, want) -> tuple[int, list[SubAction]]:
    """The first test scene whose optimal plan for ``goal`` satisfies ``want(steps)`` (found, not hand-picked)."""
    for scene in range(seeds.TESTS.start, seeds.TESTS.start + 200):
        steps = SymbolicPlanner().plan(goal, sample_state(np.random.default_rng(scene))).steps
        if want(steps):
            return scene, steps
    raise AssertionError(f"no test scene fits {goal!r}")


def _key(s: SubAction) -> tuple[str, tuple[str, ...]]:
    return (s.verb, tuple(s.objects))


# ---- the ladder, on a step another plan can do without ----------------------------------------------
AVOIDABLE = "put the red block in the box"


def _avoidable() -> tuple[int, SubAction]:
    """A scene where the plan first clears the red block by moving another block to a slot: another slot would do."""
    scene, steps = _scene(AVOIDABLE, lambda s: len(s) > 1 and s[0].verb == "move" and s[0].objects[0] != "red_block"
                          and s[0].objects[1] in SLOTS)
    return scene, steps[0]


def test_escalation_order_then_the_planner_goes_another_way(tmp_path):
    """Each rung once, in order, for a failure that repeats; the re-plan avoids the failed move and the run succeeds."""
    scene, clear = _avoidable()
    action = f"move {clear.objects[0]} {clear.objects[1]}"
    # the critic's first answer to "nothing happened" made a plain retry, so the ladder starts at its first rung
    rec = run(AVOIDABLE, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=_sets(action, "critic.options.decisions.no_change=regenerate"))
    failed = [a for a in rec.attempts if a.decision != "accept"]
    assert [a.response for a in failed] == ["regenerate", "refine", "replan"], [a.response for a in failed]
    assert [a.step for a in failed] == [0, 0, 0] and len({a.seed for a in failed}) == 3  # a new seed every time
    assert all("same failure again" in a.note for a in failed[1:]) and failed[0].note == ""
    assert failed[0].prompt == failed[1].prompt == clear.text  # new seed, same instruction
    assert failed[2].prompt == compose_prompt(clear.text, failed[1].verdict.feedback)  # refined from the feedback
    assert len(rec.plans) == 2 and all(_key(s) != _key(clear) for s in rec.plans[1].steps)
    assert f"avoiding {clear.text}" in rec.plans[1].rationale
    reasons = json.loads((tmp_path / "r" / "plan.json").read_text())["reasons"]
    assert "the same way again" in reasons[1] and clear.text in reasons[1]
    assert rec.status == "success" and not rec.unverified and not rec.given_up
    assert SymbolicPlanner().achieved(AVOIDABLE, rec.final_state)


def test_symbolic_planner_avoids_a_failed_action_only_when_another_plan_exists():
    scene, clear = _avoidable()
    state = sample_state(np.random.default_rng(scene))
    planner = SymbolicPlanner()
    plain = planner.replan(AVOIDABLE, state, [])
    other = planner.replan_avoiding(AVOIDABLE, state, [], [StepFailure(sub_action=clear, attempts=3)])
    assert _key(plain.steps[0]) == _key(clear) and all(_key(s) != _key(clear) for s in other.steps)
    assert len(other.steps) == len(plain.steps)  # still optimal: another free slot is as near
    assert parse_goal(AVOIDABLE).satisfied(_apply(state, other.steps))
    # the final move into the box cannot be avoided: the plan keeps it and says so
    last = plain.steps[-1]
    kept = planner.replan_avoiding(AVOIDABLE, state, [], [StepFailure(sub_action=last), StepFailure(sub_action=clear)])
    assert _key(kept.steps[-1]) == _key(last) and all(_key(s) != _key(clear) for s in kept.steps)
    assert f"not avoiding {last.text}" in kept.rationale and f"avoiding {clear.text}" in kept.rationale


def _apply(state, steps):
    from spiral.world import domain

    for s in steps:
        state = domain.apply(state, domain.Action(s.verb, tuple(s.objects)))
    return state


# ---- a step no plan can do without: give up, then the policy decides -------------------------------------
NEEDED = "put the yellow block in the box, then turn on the lamp"


def _needed() -> tuple[int, list[SubAction], int]:
    """A scene whose plan has steps before and after moving the yellow block into the box; that step's index."""
    scene, steps = _scene(NEEDED, lambda s: len(s) >= 3 and _key(s[0]) != ("move", ("yellow_block", "box"))
                          and s[-1].verb == "switch_on")
    return scene, steps, next(i for i, s in enumerate(steps) if _key(s) == ("move", ("yellow_block", "box")))


@pytest.mark.parametrize("policy", ["keep_best", "stop"])
def test_a_step_that_can_never_pass_ends_within_budget_and_keeps_the_rest(tmp_path, policy):
    scene, steps, k = _needed()
    out = tmp_path / policy
    rec = run(NEEDED, scene=scene, out=out, config=ORACLE,
              overrides=_sets("move yellow_block box", f"loop.on_budget_exhausted={policy}"))
    yellow = [a for a in rec.attempts if a.decision != "accept"]
    # the critic asks to refine "nothing happened"; the same failure again takes the rungs not tried yet (a new
    # seed, then a re-plan), and the re-plan cannot avoid the step: it is given up at once instead of being tried
    # again under the new plan
    assert [a.response for a in yellow] == ["refine", "regenerate", "replan"] and len(rec.plans) == 2
    assert len(rec.given_up) == 1
    g = rec.given_up[0]
    assert _key(g.sub_action) == ("move", ("yellow_block", "box")) and g.attempts == 3
    assert g.failure == "missing_action" and "could not avoid" in g.reason
    before = rec.accepted[:k]
    assert len(before) == k and all(a.decision == "accept" for a in rec.attempts[:k])  # the earlier steps stay
    # every step once, the given-up one three times; with stop nothing after it
    assert rec.counts["generations"] == (len(steps) + 2 if policy == "keep_best" else k + 3)
    assert rec.counts["generations"] < 60  # well within max_total_generations
    html = (out / "report.html").read_text()
    assert 'id="unverified-note"' in html and "given up" in html
    if policy == "keep_best":
        # the same still scene scores the same every time: the first attempt (plan-only's generation) is kept
        assert g.kept == yellow[0].segment_path and rec.unverified == [g.kept]
        assert rec.status == "completed_unverified" and "kept unverified" in rec.stop_reason
        assert len(rec.accepted) == len(steps) and rec.accepted[k] == g.kept  # and every later step was made
        assert rec.final_state["lamp_on"] and rec.counts["unverified"] == 1
        assert "⚠ kept unverified" in html and 'class="attempt unverified"' in html
    else:
        assert g.kept is None and not rec.unverified and rec.accepted == before
        assert rec.status == "budget_exhausted" and "given up" in rec.stop_reason
        assert "the run stopped here" in html and "could not avoid it" in html


def test_keep_best_keeps_the_best_scoring_attempt_and_later_steps_do_not_retry_what_they_inherit(tmp_path):
    """Attempts that fail the same way (a drifted background) but score differently: the one kept scores highest
    (the critic's weights). The next step starts from its drifted frame and fails the same way: no retry can
    change the frame it starts from, so it is given up after one attempt, as plan-only would have made it."""
    from spiral.critics.tabletop import TabletopCritic

    scene, steps, k = _needed()
    rec = run(NEEDED, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=_sets("move yellow_block box", "generator.options.failure=drift"))
    yellow, after = rec.given_up[0], rec.given_up[1:]
    tried = [a for a in rec.attempts if a.decision != "accept" and base_instruction(a.prompt) == yellow.sub_action.text]
    assert len(tried) == yellow.attempts == 3 and yellow.failure == "scene_drift"
    scores = [TabletopCritic().combine(a.verdict.scores) for a in tried]
    assert len(set(scores)) == len(scores)  # the attempts differ (drift of another size each seed)
    assert yellow.kept == tried[int(np.argmax(scores))].segment_path == rec.unverified[0]
    # the entry says how the step failed last: the last attempt's failure kind and feedback
    assert (yellow.failure, yellow.feedback) == (tried[-1].verdict.failure, tried[-1].verdict.feedback)
    assert yellow.feedback and "drifted" in yellow.feedback
    # the drifted attempts did move the block: the run goes on from what the critic saw in the kept one (the
    # verdict is kept with the unverified step), so the later steps and the final state build on it
    kept = next(a for a in rec.attempts if a.segment_path == yellow.kept)
    assert kept.verdict.observed_state["loc"]["yellow_block"] == "box"
    assert rec.final_state["loc"]["yellow_block"] == "box" and SymbolicPlanner().achieved(NEEDED, rec.final_state)
    assert [g.sub_action.text for g in after] == [s.text for s in steps[k + 1:]]
    assert all(g.attempts == 1 and "comes with the frame" in g.reason for g in after)
    assert rec.counts["generations"] == len(steps) + 2 and len(rec.accepted) == len(steps)


def test_keep_best_is_the_default_policy_of_a_config_made_in_python(tmp_path):
    """A user who builds a Config in code (no YAML) gets the whole video with the unverified step marked."""
    from spiral.config import BackendConfig, Config

    scene, steps, k = _needed()
    cfg = Config(generator=BackendConfig(name="fails-one", options={"action": "move yellow_block box"}))
    rec = run(NEEDED, scene=scene, out=tmp_path / "r", config=cfg)
    assert rec.status == "completed_unverified" and len(rec.accepted) == len(steps) and len(rec.unverified) == 1


@pytest.mark.parametrize("policy,code", [("keep_best", 3), ("stop", 1)])
def test_policies_through_the_cli_say_what_was_not_verified(tmp_path, policy, code):
    scene, steps, k = _needed()
    args = ["run", NEEDED, "--scene", str(scene), "--config", str(ORACLE), "--out", str(tmp_path / "r")]
    for s in _sets("move yellow_block box", f"loop.on_budget_exhausted={policy}"):
        args += ["--set", s]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})  # rich wraps table cells at the terminal width
    assert res.exit_code == code, res.output
    text = " ".join(res.output.split())
    assert "given up" in text and "move the yellow block into the box" in text
    if policy == "keep_best":
        assert "completed_unverified" in text and "unverified steps" in text and "kept unverified" in text
    else:
        assert "budget_exhausted" in text and "not kept" in text


def test_unknown_policy_is_one_clear_line(tmp_path):
    res = CliRunner().invoke(app, ["run", NEEDED, "--scene", "1", "--out", str(tmp_path / "r"),
                                   "--set", "loop.on_budget_exhausted=continue"])
    errors = [ln for ln in res.output.splitlines() if "error" in ln]
    assert res.exit_code != 0 and len(errors) == 1 and errors[0].startswith("error:"), res.output
    assert "loop.on_budget_exhausted" in errors[0] and "'stop'" in errors[0] and "'keep_best'" in errors[0]
    assert not (tmp_path / "r").exists()


# ---- first attempts are plan-only's generations; budgets reserve a generation for every later step ----------
def test_first_attempt_at_every_step_is_plan_onlys_generation(tmp_path):
    scene, clear = _avoidable()
    sets = _sets(f"move {clear.objects[0]} {clear.objects[1]}")
    closed = run(AVOIDABLE, scene=scene, out=tmp_path / "c", config=ORACLE, overrides=sets)
    plan = run(AVOIDABLE, scene=scene, out=tmp_path / "p", config=ORACLE, overrides=sets, mode="plan_only")
    assert len(closed.plans) == 2 and plan.status == "completed_unverified" and plan.unverified == plan.accepted
    # the k-th step of the video starts with plan-only's k-th seed, re-plan or not
    firsts, position, seen = [], 0, set()
    for a in closed.attempts:
        if position not in seen:
            firsts.append(a.seed)
            seen.add(position)
        position += a.response in ("accept", "give_up")
    assert firsts == [a.seed for a in plan.attempts][:len(firsts)] and len(firsts) == len(plan.attempts)
    # with a generator that never fails, the closed loop makes exactly plan-only's generations
    clean = ["generator.options.failure_rate=0.0", *LIGHT]
    c = run(NEEDED, scene=scene, out=tmp_path / "c2", config=ORACLE, overrides=clean)
    p = run(NEEDED, scene=scene, out=tmp_path / "p2", config=ORACLE, overrides=clean, mode="plan_only")
    assert c.status == "success" and [a.seed for a in c.attempts] == [a.seed for a in p.attempts]
    for x, y in zip(c.accepted, p.accepted):
        assert (tmp_path / "c2" / x).read_bytes() == (tmp_path / "p2" / y).read_bytes()


def test_total_budget_holds_back_a_generation_for_every_later_step(tmp_path):
    """With every step failing and a total budget of plan length + 2, the closed loop still makes every step,
    as plan-only does, instead of spending the budget on the first ones."""
    goal = "tidy up: put every block in the box"
    scene, steps = _scene(goal, lambda s: len(s) >= 4)
    n = len(steps)
    rec = run(goal, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=_sets("every", f"loop.max_total_generations={n + 2}"))
    assert rec.counts["generations"] == n + 2 and len(rec.accepted) == n == len(rec.unverified)
    assert rec.status == "completed_unverified" and sorted(g.kept for g in rec.given_up if g.kept) == rec.unverified
    assert any("held back" in g.reason for g in rec.given_up)


def test_a_step_given_up_is_not_tried_again_when_a_later_plan_asks_for_it(tmp_path):
    """Nothing the generator makes ever happens: each step is kept unverified with the world unchanged, so every
    re-plan asks again for the steps given up before; they are skipped, not tried again."""
    goal = "tidy up: put every block in the box"
    scene, steps = _scene(goal, lambda s: len(s) >= 4)
    rec = run(goal, scene=scene, out=tmp_path / "r", config=ORACLE, overrides=_sets("every"))
    again = [g for g in rec.given_up if not g.kept]
    assert again and all(g.attempts == 0 and "not tried again" in g.reason for g in again)
    tried = [base_instruction(a.prompt) for a in rec.attempts]
    for g in (x for x in rec.given_up if x.kept):  # each action's attempts all come before it was given up
        assert tried.count(g.sub_action.text) == g.attempts == 3
    assert rec.status == "completed_unverified" and len(rec.accepted) == len(steps) == len(rec.unverified)


def test_a_run_killed_after_a_step_was_given_up_resumes_to_the_same_record(tmp_path):
    """The loop's decisions (escalation, give up, keep best) are replayed from the journal, not re-made."""
    scene, steps, k = _needed()
    sets = _sets("move yellow_block box")
    ref = run(NEEDED, scene=scene, out=tmp_path / "ref", config=ORACLE, overrides=sets)

    class Killed(Exception):
        pass

    def kill_after_give_up(e):
        if e["type"] == "attempt" and e["version"] == 1:  # the step was given up; the next attempt is journaled
            raise Killed

    out = tmp_path / "k"
    with pytest.raises(Killed):
        run(NEEDED, scene=scene, out=out, config=ORACLE, overrides=sets, on_event=kill_after_give_up)
    assert not (out / "record.json").exists()
    rec = run(resume=out)
    same = ("status", "stop_reason", "accepted", "unverified", "given_up", "plans")
    assert {f: getattr(rec, f) for f in same} == {f: getattr(ref, f) for f in same}
    assert [a.model_dump(exclude={"seconds"}) for a in rec.attempts] == \
           [a.model_dump(exclude={"seconds"}) for a in ref.attempts]
    assert rec.counts["replayed_calls"] >= k + 2



# ---- what a user sees of a step given up: the record's entries, the stop reason, the progress events --------
def _check_events(events: list[dict], rec, policy: str) -> None:
    """The progress events (what the CLI's live view and an API caller's ``on_event`` receive) tell the run as the
    record does: every plan version, every attempt with its decision and response, every step given up (with the
    plan version and step it belongs to, and the policy applied), then the record itself."""
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "done" and events[-1]["record"] is rec and set(kinds) <= {"plan", "attempt", "give_up", "done"}
    plans = [e for e in events if e["type"] == "plan"]
    assert [e["version"] for e in plans] == list(range(len(rec.plans))) and [e["plan"] for e in plans] == rec.plans
    attempts = [e for e in events if e["type"] == "attempt"]
    assert [(e["step"], e["attempt"], e["decision"], e["response"], e["note"]) for e in attempts] == \
           [(a.step, a.attempt, a.decision, a.response, a.note) for a in rec.attempts]
    given_up = [e for e in events if e["type"] == "give_up"]
    assert [e["given_up"] for e in given_up] == rec.given_up and rec.given_up
    for e in given_up:
        assert (e["version"], e["step"], e["policy"]) == (e["given_up"].plan_version, e["given_up"].step, policy)


def test_a_step_asked_again_from_the_state_it_was_given_up_in_says_where_it_was_given_up(tmp_path):
    """Nothing the generator makes ever happens, so the re-plans ask again for steps given up before, from the same
    state: each such entry names the step and plan version it was given up at (the entry before it for the same
    action) and says it was not tried again; the progress events carry every entry as the record has it."""
    goal = "tidy up: put every block in the box"
    scene, steps = _scene(goal, lambda s: len(s) >= 4)
    events: list[dict] = []
    rec = run(goal, scene=scene, out=tmp_path / "r", config=ORACLE, overrides=_sets("every"), on_event=events.append)
    _check_events(events, rec, "keep_best")
    again = [i for i, g in enumerate(rec.given_up) if g.attempts == 0]
    assert again
    for i in again:
        g = rec.given_up[i]
        first = next(e for e in rec.given_up[:i] if _key(e.sub_action) == _key(g.sub_action) and e.attempts)
        assert g.reason == (f"given up earlier in this run (step {first.step + 1} of plan v{first.plan_version}) "
                            "from this same state; not tried again")
        assert g.failure is None and g.feedback == "" and g.kept is None  # nothing was made for it this time
    for g in (x for x in rec.given_up if x.attempts):  # the others say how their last attempt failed
        last = [a for a in rec.attempts if base_instruction(a.prompt) == g.sub_action.text][-1]
        assert (g.failure, g.feedback) == (last.verdict.failure, last.verdict.feedback) and g.feedback


@pytest.mark.parametrize("policy", ["keep_best", "stop"])
def test_a_step_whose_re_plan_brings_it_back_is_given_up_and_the_run_says_why(tmp_path, policy):
    """The yellow block can never be drawn into the box and no plan avoids that move: the step is given up because
    the re-plan brought it straight back. The entry and (with ``stop``) the run's stop reason say so, with the
    step's number as a user counts it (from 1); the progress events say the same."""
    scene, steps, k = _needed()
    events: list[dict] = []
    rec = run(NEEDED, scene=scene, out=tmp_path / "r", config=ORACLE, on_event=events.append,
              overrides=_sets("move yellow_block box", f"loop.on_budget_exhausted={policy}"))
    _check_events(events, rec, policy)
    g = rec.given_up[0]
    assert g.reason == "it failed the same way again and the re-plan could not avoid it"
    last = [a for a in rec.attempts if a.decision != "accept"][-1]
    assert (g.failure, g.feedback) == (last.verdict.failure, last.verdict.feedback) == ("missing_action", g.feedback)
    if policy == "stop":
        assert rec.stop_reason == f"step {g.step + 1} ({g.sub_action.text}) given up: {g.reason}"
        assert g.step == 0 and g.plan_version == 1  # the re-plan starts from the step it could not avoid


def test_a_step_the_total_budget_cannot_reach_is_given_up_without_an_attempt(tmp_path):
    """A total budget one generation short of the plan: every step passes, the last one gets no generation. Its
    entry has no attempt, so no failure and no feedback; nothing is kept and the run stops there, saying why."""
    goal = "tidy up: put every block in the box"
    scene, steps = _scene(goal, lambda s: len(s) >= 3)
    n = len(steps)
    events: list[dict] = []
    rec = run(goal, scene=scene, out=tmp_path / "r", config=ORACLE, on_event=events.append,
              overrides=["generator.options.failure_rate=0.0", *LIGHT, f"loop.max_total_generations={n - 1}"])
    _check_events(events, rec, "keep_best")
    assert [a.decision for a in rec.attempts] == ["accept"] * (n - 1) and len(rec.accepted) == n - 1
    [g] = rec.given_up
    assert (g.attempts, g.failure, g.feedback, g.kept, g.step) == (0, None, "", None, n - 1)
    assert rec.status == "budget_exhausted"
    assert rec.stop_reason == f"max_total_generations={n - 1} reached at step {n} ({steps[-1].text})"

# ---- LLM planners get the failures in their prompt ------------------------------------------------------
class _ChatServer(ThreadingHTTPServer):
    """An OpenAI-compatible chat endpoint on loopback that records each request and answers with one plan."""

    def __init__(self, reply: dict):
        self.requests: list[dict] = []
        self.reply = reply

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.server.requests.append(body)
                msg = {"role": "assistant", "content": json.dumps(self.server.reply)}
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.mark.parametrize("version", ["v2", "v1"])
def test_llm_planner_is_told_which_steps_failed(version):
    pytest.importorskip("openai")
    from spiral.agents import AvoidsFailures
    from spiral.planners.llm import LLMPlanner

    step = {"text": "move the yellow block to the left slot", "verb": "move", "objects": ["yellow_block", "left"],
            "preconditions": [], "postconditions": ["at(yellow_block, left)"]}
    server = _ChatServer({"rationale": "another way", "steps": [step]})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        p = LLMPlanner(base_url=f"http://127.0.0.1:{server.server_address[1]}/v1", api_key_env=None, validate="syntax",
                       send_image=False, prompt_version=version, max_retries=0, use_json_schema=False)
        assert isinstance(p, AvoidsFailures)
        failed = SubAction(text="move the yellow block into the box", verb="move", objects=["yellow_block", "box"])
        state = sample_state(np.random.default_rng(seeds.TESTS.start)).to_dict()
        plan = p.replan_avoiding("put the yellow block in the box", Observation(state=state), [],
                                 [StepFailure(sub_action=failed, failure="missing_action", attempts=3,
                                              feedback="nothing happened: the yellow block is still at the left")])
    finally:
        server.shutdown()
    assert [s.text for s in plan.steps] == [step["text"]]
    user = server.requests[-1]["messages"][-1]["content"]
    user = user if isinstance(user, str) else " ".join(part.get("text", "") for part in user)
    assert "move the yellow block into the box (move yellow_block, box): 3 attempts" in user
    assert "missing_action, nothing happened: the yellow block is still at the left" in user
    assert ("another way" in user) and user.count("move the yellow block into the box") == 1


# ---- issue 23 item 2: closed loop ≥ plan-only, paired, on a small fixed suite with failures injected ------------
PAIRED_CASES = [  # made once by spiral.bench.make_suite.make_cases from test scene seeds; fixed here
    ("short-000", "Please place the green cube to the middle.", 10900502, 1),
    ("short-001", "Place the red cube onto the yellow cube, then place the blue block onto the green one", 10900503, 2),
    ("short-002", "Put red away.", 10900511, 1),
    ("short-003", "Open the lid, finally place the yellow block in the box.", 10900512, 2),
    ("short-004", "Close the container", 10900513, 1),
    ("short-005", "Turn the light off, and then place green at the centre position", 10900514, 2),
    ("medium-000", "Put yellow on the table at the center position; place the red cube at the right slot.", 10900515, 3),
    ("medium-001", "Stack yellow on the blue block. After that, put the yellow block away, place the red block to the "
                   "left and move green inside the box", 10900516, 4),
    ("medium-002", "Stack the green block on the blue block, open the box and switch off the lamp, and slide blue to the "
                   "left slot and place the red and yellow cubes into the box", 10900517, 5),
    ("medium-003", "Open the lid, finally put the blue cube on top of the red cube, and turn off the lamp", 10900518, 3),
    ("medium-004", "Please close the container, and place the blue cube at the far left", 10900519, 4),
    ("medium-005", "Switch on the light. After that, set red to the left slot. After that, move red to the left and put "
                   "the blue block on top of the yellow block and put the yellow cube to the centre; then put blue in "
                   "the box.", 10900520, 5),
]


def test_closed_loop_completes_at_least_as_many_tasks_as_plan_only(tmp_path):
    """Both modes on the same 12 cases and seeds, the oracle generator injecting failures at 0.3, scored by the
    benchmark's independent judge (task completion read from the final frame).

    Margin: on bench seeds 0–9 the closed loop completed 11–12 of 12 and plan-only 5–9, at least 2 fewer, and
    never a case plan-only completed and the closed loop did not (0 of 120 pairs). The test runs bench seed 0.
    """
    from spiral.bench.runner import BenchConfig, run_bench
    from spiral.bench.stats import paired_delta

    suite = tmp_path / "paired.json"
    cases = [{"id": i, "goal": g, "scene": s, "length_class": i.split("-")[0], "n_steps": n, "tags": []}
             for i, g, s, n in PAIRED_CASES]
    suite.write_text(json.dumps({"name": "paired", "version": "1", "world": "tabletop", "created_by": __name__,
                                 "cases": cases}))
    res = run_bench(BenchConfig(suite=str(suite), out=str(tmp_path / "out"), modes=["closed_loop", "plan_only"],
                                config=str(ORACLE), seed=0, overrides=["generator.options.failure_rate=0.3",
                                                                       "output.report=false"]), progress=False)
    assert not res["errors"], res["errors"][:2]
    by = {(r["mode"], r["case_id"]): r["metrics"]["task_completion"] for r in res["cases"]}
    closed = [by[("closed_loop", c["id"])] for c in cases]
    plan = [by[("plan_only", c["id"])] for c in cases]
    assert sum(closed) >= sum(plan) + 2, (closed, plan)
    assert not [c["id"] for c, x, y in zip(cases, closed, plan) if y > x], (closed, plan)
    d = paired_delta(plan, closed)
    assert d.n == 12 and d.lo >= 0, d
    # the bench shows what no critic passed: every plan-only step; none of a closed-loop run that succeeded
    for r in res["cases"]:
        unverified, kept = r["cost"]["unverified_steps"], r["cost"]["accepted_steps"]
        assert unverified == (kept if r["mode"] == "plan_only" else 0 if r["run_status"] == "success" else unverified)
    assert {r["run_status"] for r in res["cases"] if r["mode"] == "plan_only"} == {"completed_unverified"}


def test_a_step_given_up_is_tried_once_more_when_a_later_plan_needs_it_from_another_state(tmp_path):
    """The generator cannot draw red → box. The goal needs that move twice, from two different states; the first
    time it is given up after the ladder (kept unverified), the second time it gets exactly one attempt (kept
    unverified too) instead of being skipped: the closed loop makes every step plan-only makes. Planted bug: skip
    every action given up before (the old rule) -> the second red → box never happens and this fails."""
    goal = "put the red block in the box, then put the red block on the far left slot, then put the red block in the box"
    scene, steps = _scene(goal, lambda s: [_key(x) for x in s].count(("move", ("red_block", "box"))) == 2)
    rec = run(goal, scene=scene, out=tmp_path / "r", config=ORACLE, overrides=_sets("move red_block box"))
    red_box = [g for g in rec.given_up if _key(g.sub_action) == ("move", ("red_block", "box"))]
    assert [g.attempts for g in red_box][:1] == [3] and len(red_box) >= 2, [(g.attempts, g.reason) for g in red_box]
    again = red_box[1]
    assert again.attempts == 1 and again.kept and "one attempt from the new state" in again.reason
    plan = run(goal, scene=scene, out=tmp_path / "p", config=ORACLE, overrides=_sets("move red_block box"),
               mode="plan_only")
    made = [base_instruction(a.prompt) for a in rec.attempts]
    assert all(made.count(s.text) >= 1 for s in plan.plans[0].steps)  # every step plan-only made, made here too
    assert rec.status == "completed_unverified" and len(rec.accepted) >= len(plan.accepted)
