"""Never worse than open loop: the open-loop fallback (spiral/loop.py section 8; DESIGN §1).

A closed-loop run that followed another plan than its first and could not verify every step also rolls the first
plan out exactly as ``plan_only`` does and keeps whichever video the critic reads as better. The generator here is
the oracle with one sub-action always coming out wrong ("red → left" moves another block instead): the critic
keeps each such segment as what happened and re-plans, so the closed loop wanders through detours while plan-only's
next step ("red → box") makes the goal's end state anyway, the pattern of the three tabletop-v1/v2 cases where the
closed loop used to lose to plan-only (docs/loop_never_worse.md).
"""

from __future__ import annotations

import pytest
from test_escalation import ORACLE, _key, _scene, _sets
from typer.testing import CliRunner

from spiral.api import run
from spiral.cli import app
from spiral.loop import prefer_open_loop
from spiral.rundir import OPEN_LOOP
from spiral.types import VideoReading

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

GOAL = "put the red block on the left slot, then put the red block in the box"
WRONG = _sets("move red_block left", "generator.options.failure=wrong_object")


def _detour_scene() -> int:
    scene, _ = _scene(GOAL, lambda s: len(s) == 2 and _key(s[0]) == ("move", ("red_block", "left")))
    return scene


def _fallback_attempts(rec):
    return [a for a in rec.attempts if a.segment_path and a.segment_path.startswith("segments/open_loop_")]


def _goal_met(state: dict | None) -> bool | None:
    """The symbolic planner's goal check on a state the critic read (what the loop asks), None without one."""
    from spiral.planners.symbolic import SymbolicPlanner
    from spiral.types import Observation, TaskGoal

    return None if state is None else SymbolicPlanner().achieved(TaskGoal.of(GOAL), Observation(state=state))


@pytest.mark.parametrize("read_state", ["frame", "memory"])
def test_a_run_that_went_another_way_keeps_plan_onlys_video_when_the_critic_reads_it_as_better(tmp_path, read_state):
    """``read_state: memory``: a generator that reads the memory's state gets plan-only's memory (no readings), and
    a critic that starts from the memory's state (``start_from: memory``) judges each segment from the reading of
    the one before it, as the loop's memory would give it."""
    scene = _detour_scene()
    sets = WRONG + [f"generator.options.read_state={read_state}", f"critic.options.start_from={read_state}"]
    events: list[dict] = []
    rec = run(GOAL, scene=scene, out=tmp_path / "c", config=ORACLE, overrides=sets, on_event=events.append)
    plan = run(GOAL, scene=scene, out=tmp_path / "p", config=ORACLE, overrides=sets, mode="plan_only")
    off = run(GOAL, scene=scene, out=tmp_path / "off", config=ORACLE, overrides=sets + ["loop.open_loop_fallback=false"])
    fb = rec.fallback
    assert fb is not None and fb.used, rec.stop_reason
    assert fb.reason.endswith("reads better to the critic and is the video") and rec.stop_reason.endswith(fb.reason)
    # the closed loop's own video (the same run without the fallback), read as the fallback read it: the goal check
    # on its last reading, and every step no critic passed (kept unverified, or kept as what happened instead)
    as_happened = [a for a in off.attempts if a.segment_path in off.accepted and a.decision != "accept"
                   and a.segment_path not in off.unverified]
    assert fb.closed_loop == VideoReading(goal_met=_goal_met(off.final_state), steps=len(off.accepted),
                                          failed_steps=len(off.unverified) + len(as_happened))
    rolled = _fallback_attempts(rec)
    assert fb.open_loop == VideoReading(goal_met=_goal_met(rolled[-1].verdict.observed_state), steps=len(rolled),
                                        failed_steps=sum(not a.verdict.passed for a in rolled))
    assert rec.final_state == rolled[-1].verdict.observed_state
    assert [a.segment_path for a in rolled] == [f"segments/open_loop_s{k:02d}.npz" for k in range(len(rolled))]
    assert all(a.response == "accept" and a.decision == a.verdict.decision and a.note.startswith("open-loop fallback")
               for a in rolled)
    # each segment judged from the reading of the one before it (the first from the scene's reading)
    from spiral.critics.tabletop import TabletopCritic
    from spiral.memory import Memory
    from spiral.rundir import load_frames

    critic = TabletopCritic(start_from=read_state)
    first = load_frames(tmp_path / "c" / rolled[0].segment_path)[0]
    memory, seen = Memory.start(first, critic.observe(first).to_dict()), None
    for k, (a, sub) in enumerate(zip(rolled, rec.plans[0].steps)):
        from spiral.types import Segment

        frames = load_frames(tmp_path / "c" / a.segment_path)
        context = memory.judge_context(GOAL).model_copy(update={"state": seen if k else memory.state})
        assert critic.judge(Segment(frames=frames, fps=8.0, seed=a.seed, backend="x"), sub, context) == a.verdict
        memory.commit(frames, sub, None, None)
        seen = a.verdict.observed_state
    # the live view hears each rolled-out attempt and the outcome
    heard = [e for e in events if e["type"] == "attempt" and e["version"] == OPEN_LOOP]
    assert [(e["step"], e["response"], e["decision"]) for e in heard] == [(k, "accept", a.decision)
                                                                         for k, a in enumerate(rolled)]
    assert [e["fallback"] for e in events if e["type"] == "fallback"] == [fb]
    assert len(rec.plans) > 1  # it did go another way before falling back
    assert fb.closed_loop.failed_steps > fb.open_loop.failed_steps and fb.open_loop.steps == len(rec.plans[0].steps)
    # the fallback is plan-only's rollout: the same seeds, and the same segments byte for byte
    rolled = _fallback_attempts(rec)
    assert [a.seed for a in rolled] == [a.seed for a in plan.attempts]
    assert rec.accepted == [a.segment_path for a in rolled] and len(rec.accepted) == len(plan.accepted)
    for x, y in zip(rec.accepted, plan.accepted):
        assert (tmp_path / "c" / x).read_bytes() == (tmp_path / "p" / y).read_bytes()
    # it says what no critic passed, and why the video is the open loop's
    assert rec.unverified == [a.segment_path for a in rolled if not a.verdict.passed]
    assert rec.status == "completed_unverified" and rec.stop_reason.startswith("open-loop fallback")
    assert rec.counts["generations"] == len(rec.attempts)  # the fallback's generations are counted
    html = (tmp_path / "c" / "report.html").read_text()
    assert 'id="fallback-note"' in html and "open-loop fallback (plan v0 as plan_only makes it)" in html


def test_the_closed_loops_video_is_kept_when_the_fallback_is_off_or_the_policy_is_stop(tmp_path):
    scene = _detour_scene()
    off = run(GOAL, scene=scene, out=tmp_path / "off", config=ORACLE, overrides=WRONG + ["loop.open_loop_fallback=false"])
    assert off.fallback is None and not _fallback_attempts(off) and len(off.accepted) > 2
    stop = run(GOAL, scene=scene, out=tmp_path / "stop", config=ORACLE,
               overrides=WRONG + ["loop.on_budget_exhausted=stop"])
    assert stop.fallback is None and not _fallback_attempts(stop)


def test_a_run_that_kept_its_first_plans_steps_needs_no_fallback(tmp_path):
    """A step the generator cannot draw at all is kept unverified in its place: the video has the first plan's
    steps, each plan-only's attempt or one the critic scores higher, so nothing is rolled out again."""
    from test_escalation import NEEDED, _needed

    scene, steps, _ = _needed()
    rec = run(NEEDED, scene=scene, out=tmp_path / "r", config=ORACLE, overrides=_sets("move yellow_block box"))
    assert rec.status == "completed_unverified" and rec.unverified and rec.fallback is None
    assert not _fallback_attempts(rec) and len(rec.accepted) == len(steps)


def test_the_fallback_resumes_from_its_journal(tmp_path):
    scene = _detour_scene()
    ref = run(GOAL, scene=scene, out=tmp_path / "ref", config=ORACLE, overrides=WRONG)

    class Killed(Exception):
        pass

    def kill_in_fallback(e):
        if e["type"] == "attempt" and e["version"] == OPEN_LOOP and e["step"] == 1:
            raise Killed

    out = tmp_path / "k"
    with pytest.raises(Killed):
        run(GOAL, scene=scene, out=out, config=ORACLE, overrides=WRONG, on_event=kill_in_fallback)
    rec = run(resume=out)
    same = ("status", "stop_reason", "accepted", "unverified", "fallback", "plans")
    assert {f: getattr(rec, f) for f in same} == {f: getattr(ref, f) for f in same}
    assert [a.model_dump(exclude={"seconds"}) for a in rec.attempts] == \
           [a.model_dump(exclude={"seconds"}) for a in ref.attempts]
    assert rec.counts["generations"] == ref.counts["generations"]
    # every plan and attempt, the fallback's included, was read back from the journal, none made again
    assert rec.counts["replayed_calls"] == len(rec.plans) + len(rec.attempts) and rec.counts["generate_calls"] == 0


def test_the_cli_says_the_fallback_was_used(tmp_path):
    args = ["run", GOAL, "--scene", str(_detour_scene()), "--config", str(ORACLE), "--out", str(tmp_path / "r")]
    for s in WRONG:
        args += ["--set", s]
    res = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert res.exit_code == 3, res.output  # completed_unverified
    text = " ".join(res.output.split())
    assert "open-loop fallback used" in text and "the first plan rolled out open loop is the video" in text


def _r(goal_met, failed, steps=4):
    return VideoReading(goal_met=goal_met, failed_steps=failed, steps=steps)


@pytest.mark.parametrize("closed,opened,expected", [
    (_r(False, 0), _r(True, 3), True),     # the goal met beats fewer failed steps
    (_r(True, 3), _r(False, 0), False),
    (_r(True, 3), _r(True, 1), True),      # both meet it: fewer steps the critic did not pass
    (_r(False, 3), _r(False, 1), True),
    (_r(True, 1), _r(True, 1), False),     # a tie keeps the closed loop's video (its steps were checked)
    (_r(True, 1), _r(True, 2), False),
    (_r(None, 3), _r(True, 1), True),      # a reading that cannot tell the goal: compare failed steps only
    (_r(False, 1), _r(None, 2), False),
    (_r(None, 2), _r(None, 2), False),
])
def test_prefer_open_loop_by_hand(closed, opened, expected):
    assert prefer_open_loop(closed, opened) is expected


def test_the_fallback_stays_within_the_total_budget(tmp_path):
    """The first plan has two steps: with one generation left after the closed loop, the fallback is not run and the
    run says so (the resume guard's budget-stopped run is another case: nothing kept, no generation left)."""
    scene = _detour_scene()
    ref = run(GOAL, scene=scene, out=tmp_path / "ref", config=ORACLE, overrides=WRONG)
    main = len(ref.attempts) - len(_fallback_attempts(ref))
    rec = run(GOAL, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=WRONG + [f"loop.max_total_generations={main + 1}"])
    assert rec.fallback is None and not _fallback_attempts(rec) and rec.counts["generations"] <= main + 1
    assert "no open-loop fallback: it needs 2 generations" in rec.stop_reason


def test_a_run_that_succeeds_after_going_another_way_needs_no_fallback(tmp_path):
    """The planner avoids a move the generator cannot draw and every step passes: nothing is rolled out."""
    from test_escalation import AVOIDABLE, _avoidable

    scene, clear = _avoidable()
    rec = run(AVOIDABLE, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=_sets(f"move {clear.objects[0]} {clear.objects[1]}"))
    assert len(rec.plans) == 2 and rec.status == "success" and rec.fallback is None and not _fallback_attempts(rec)


def test_the_fallback_runs_with_exactly_enough_generations_left(tmp_path):
    scene = _detour_scene()
    ref = run(GOAL, scene=scene, out=tmp_path / "ref", config=ORACLE, overrides=WRONG)
    main = len(ref.attempts) - len(_fallback_attempts(ref))
    rec = run(GOAL, scene=scene, out=tmp_path / "r", config=ORACLE,
              overrides=WRONG + [f"loop.max_total_generations={main + len(ref.plans[0].steps)}"])
    assert rec.fallback == ref.fallback and rec.counts["generations"] == ref.counts["generations"]


def test_a_run_without_a_run_folder_falls_back_too(tmp_path):
    """The Python loop without a journal (``run_loop`` with no run directory): the fallback's segments are labels."""
    from spiral.api import build_agents, resolve_config, scene_frame
    from spiral.loop import run_loop

    scene = _detour_scene()
    cfg = resolve_config(ORACLE, WRONG + ["output.report=false"])
    frame, _ = scene_frame(scene, (cfg.video.height, cfg.video.width))
    rec, video = run_loop(GOAL, frame, build_agents(cfg), cfg, hints={"scene_seed": scene})
    ref = run(GOAL, scene=scene, out=tmp_path / "ref", config=ORACLE, overrides=WRONG)
    assert rec.fallback == ref.fallback and rec.accepted == [f"open_loop_s{k}" for k in range(len(rec.plans[0].steps))]
    from spiral.compose import compose
    from spiral.rundir import load_frames

    expected, _ = compose([load_frames(tmp_path / "ref" / x) for x in ref.accepted], 0)
    assert rec.status == ref.status and (video == expected).all() and video.shape == expected.shape
