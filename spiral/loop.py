"""The think → act → reflect loop (DESIGN §1): one explicit loop over sub-actions, in numbered sections.

:func:`run_loop` reads as the pipeline: **plan**, then per step **request → generate → judge → decide →
commit / retry / re-plan / give up**, then **compose** and **record**. Where the run stands lives in one
:class:`RunState`; what each call cost in one :class:`Costs`; the goal arrives read once (``TaskGoal``).

1. **Plan**: the PlanAgent plans the goal from the first frame.
2. **Step**: the next step of the plan. At the end of a plan, a planner with :class:`~spiral.agents.ChecksGoal`
   checks the observed state against the goal and the loop re-plans if it is not met (not after a step was given
   up: the new plan would only try it again). Before each generation the total budget is checked; it holds back
   one generation for each later step.
3. **Request**: the step's instruction, the critic's feedback beside it after a refine
   (``GenerationRequest.feedback``), and the memory (last kept frame, anchor, state, history).
4. **Generate** the segment; 5. **judge** it (closed loop only). A journaled attempt is replayed instead (resume).
6. **Decide**: the critic's decision is followed the first time a failure is seen. When the step fails *the same
   way again* (same failure kind and feedback, numbers aside) the loop escalates instead of repeating: it takes
   the lowest rung of the ladder ``regenerate → refine → replan → give_up`` not yet tried against this failure.
   So a step is given up only once the same failure came back from a new seed, a refined instruction and a
   re-plan (three attempts at least): on tabletop-v1 a failure that a generator makes by chance (the oracle's
   injected ones) came back at most twice in a row before the step passed, one it cannot avoid (a move it cannot
   draw) 8–16 times. The inner budget (``max_refines_per_step``) turns a retry into a re-plan, the outer one
   (``max_replans``) turns a re-plan into giving up.
7. **Commit, retry, re-plan or give up**: accept keeps the segment and goes on; ``regenerate`` retries with a new
   seed, ``refine`` also with the instruction rewritten by the planner from the feedback (a planner with
   :class:`~spiral.agents.RefinesInstructions`), else the step's text with the feedback beside it. A re-plan after
   a step failure tells the planner which sub-actions failed (a planner with :class:`~spiral.agents.AvoidsFailures`
   avoids them when another plan reaches the goal); if the re-plan after a repeated failure brings the same sub-
   action straight back, it changed nothing and the step is given up at once. A sub-action given up once is not
   tried again from the state it was given up in (a later plan that asks for it there skips it); asked from another
   state it gets one attempt, kept unverified if it fails, so the closed loop makes every step plan-only would
   make. When the critic asks for a re-plan because the segment left a valid but unexpected state, the segment is
   kept as what happened and the plan continues from there. Giving up applies the exhausted-budget policy
   ``loop.on_budget_exhausted``: ``keep_best`` keeps the step's best-scoring attempt (the critic's combined score;
   the earliest wins ties) as an *unverified* step and goes on with the plan; ``stop`` ends the run there with what
   was accepted (``budget_exhausted``). A later step whose first attempt fails with the very failure the unverified
   step was kept with (a drifted background, a patch the critic cannot read) inherited it with its conditioning
   frame, which no retry changes: it is given up at once, until a step passes again.
8. **Fall back to the open loop** when the run could not verify every step *and* followed another plan than its
   first (a re-plan changed the steps, or a segment was kept as what happened instead): the escalation can then end
   somewhere worse than plan-only's video, because plan-only's later steps sometimes repair an earlier failed one
   (3 cases of tabletop-v1 and -v2 with ``tiny`` and ``tiny-evolved``, docs/loop_never_worse.md). The first plan is
   rolled out exactly as ``plan_only`` rolls it out (its memory, its seeds), each segment judged but never retried,
   and the critic's readings of the two videos are compared (:func:`prefer_open_loop`: the goal met first, then
   fewer steps it did not pass; the closed loop's video on a tie). A run that kept the first plan's steps needs no
   fallback: each of its steps is plan-only's attempt or one the critic scores higher. Costs one generation per
   step of the first plan, within ``max_total_generations`` (a run without that many left says so and keeps its
   video); ``loop.open_loop_fallback: false`` turns it off, and ``on_budget_exhausted: stop`` never falls back
   (that user asked for verified steps only).
9. **Compose** the kept segments into the final video; 10. **record** the status and every call and second.

Status: ``success`` (every kept step passed the critic and the goal check), ``completed_unverified`` (the end of
the plan was reached with unverified steps, or the goal check failed with the re-plans spent; open-loop runs,
which have no critic, always end so), ``budget_exhausted`` (stopped before the end of the plan).

Seeds: the n-th attempt at the k-th step of the video (k = steps kept so far) uses ``derive_seed(seed, 0, k, n)``
whatever plan version it belongs to, so the first attempt at every step uses the seed ``plan_only`` uses for its
k-th step: while the critic accepts first attempts a closed-loop run makes exactly the generations plan-only
makes, and a step it gives up still keeps an attempt at least as good, by the critic's score, as plan-only's.
A run is a pure function of its inputs; a resumed run replays its journal to the same final video.

Open-loop baselines are the same loop with parts switched off: ``plan_only`` accepts every segment without a
critic; ``single_shot`` also gives the generator the whole goal text instead of the step (as many segments as
the plan has steps).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spiral.agents import (
    AvoidsFailures,
    ChecksGoal,
    CombinesScores,
    CriticAgent,
    PlanAgent,
    RefinesInstructions,
    StartsRuns,
    VideoGenerator,
    observe,
)
from spiral.compose import compose
from spiral.config import Config
from spiral.memory import Memory
from spiral.rundir import OPEN_LOOP, RunDir
from spiral.types import (
    Attempt,
    GenerationRequest,
    GivenUpStep,
    Instruction,
    JudgeContext,
    Observation,
    OpenLoopFallback,
    Plan,
    Response,
    RunRecord,
    RunStatus,
    Segment,
    StepFailure,
    SubAction,
    TaskGoal,
    Verdict,
    VideoReading,
    combine_scores,
)

Event = dict[str, Any]
ActionKey = tuple[str, tuple[str, ...]]
Signature = tuple[str, str]

#: the escalation ladder: each rung is tried once for a failure that repeats, in this order
LADDER: tuple[Response, ...] = ("regenerate", "refine", "replan", "give_up")


@dataclass
class Agents:
    """The three agents a run uses."""

    planner: PlanAgent
    generator: VideoGenerator
    critic: CriticAgent


@dataclass
class Costs:
    """What a run spent: seconds and calls per kind of work (plan, generate, judge; journal entries replayed)."""

    seconds: dict[str, float] = field(default_factory=lambda: {"plan": 0.0, "generate": 0.0, "judge": 0.0, "other": 0.0})
    calls: dict[str, int] = field(default_factory=lambda: {"plan": 0, "generate": 0, "judge": 0, "replayed": 0})
    started: float = field(default_factory=time.perf_counter)

    def timed(self, kind: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` and count it, with its seconds, as one call of ``kind``."""
        t = time.perf_counter()
        out = fn()
        self.seconds[kind] += time.perf_counter() - t
        self.calls[kind] += 1
        return out

    def replayed(self) -> None:
        """Count one plan or attempt read back from the journal instead of being made again."""
        self.calls["replayed"] += 1

    def close(self, compose_seconds: float) -> None:
        """At the end of the run: the compose time, the wall time and what no call accounts for."""
        wall = time.perf_counter() - self.started
        self.seconds["compose"] = compose_seconds
        self.seconds["other"] = max(0.0, wall - sum(v for k, v in self.seconds.items() if k != "other"))
        self.seconds["wall"] = wall

    def record(self, generations: int, kept: int) -> dict[str, float]:
        """``RunRecord.costs``: every kind's seconds and the generations per kept step."""
        return {**{f"{k}_seconds": round(v, 6) for k, v in self.seconds.items()},
                "generations_per_accepted_step": round(generations / kept, 4) if kept else float(generations)}


@dataclass
class _Candidate:
    """One judged attempt at the current step, kept in memory in case the step is given up (keep_best)."""

    score: float
    path: str  # the segment's file in the run directory (a label without one)
    frames: np.ndarray
    verdict: Verdict | None


@dataclass
class _Step:
    """The attempts at one step of the video: one sub-action from one conditioning frame, across plan versions.

    ``signature`` is the latest failure and ``tried`` the rungs of the ladder spent on it so far (the escalation
    reads them); ``candidates`` are what keep_best chooses from; ``inherited`` is the failure of the unverified
    step this one starts from: the same failure here comes with the conditioning frame, and no retry can fix it.
    """

    action: ActionKey
    inherited: Signature | None = None  # the failure of the unverified step just before, if any
    once: str = ""  # why this step gets one attempt only (its action was given up earlier in the run)
    candidates: list[_Candidate] = field(default_factory=list)
    signature: Signature | None = None
    tried: set[str] = field(default_factory=set)


@dataclass
class RunState:
    """Where a run stands between two sections of the loop."""

    plan: Plan
    version: int = 0  # the plan version being executed
    step: int = 0  # the index of the current step in that plan
    attempt: int = 0  # the attempt at that step in this plan version (the journal's key with version and step)
    total: int = 0  # generations made in the run
    here: _Step | None = None  # the attempts at the current step of the video
    n_here: int = 0  # attempts at the current step of the video, across plan versions (their seeds)
    stuck: ActionKey | None = None  # the action whose repeated failure made the last re-plan
    inherited: Signature | None = None  # the failure kept with the last unverified step, until one passes
    gave_up: dict[ActionKey, str] = field(default_factory=dict)  # actions given up in this run → where
    gave_up_from: dict[ActionKey, Any] = field(default_factory=dict)  # → the observed state they started from
    failures: list[StepFailure] = field(default_factory=list)  # every failed sub-action, for re-planning around
    instruction: Instruction = field(default_factory=lambda: Instruction(text=""))  # what the generator is told
    kept_frames: list[np.ndarray] = field(default_factory=list)  # the kept segments, in video order
    status: RunStatus = "running"
    stop_reason: str = ""

    def next_step(self, inherited: Signature | None) -> None:
        """Move on to the next step of the plan, starting it from ``inherited`` (see :class:`_Step`)."""
        self.step, self.attempt, self.here, self.n_here, self.inherited = self.step + 1, 0, None, 0, inherited

    def stop(self, status: RunStatus, reason: str) -> None:
        self.status, self.stop_reason = status, reason

    def note(self, why: str) -> None:
        """Add ``why`` to the stop reason (the open-loop fallback's account of itself)."""
        self.stop_reason = f"{self.stop_reason}; {why}" if self.stop_reason else why


@dataclass
class _Outcome:
    """One attempt made (or replayed): its frames, the critic's verdict, seconds, and how to journal it."""

    frames: np.ndarray
    verdict: Verdict | None
    seconds: dict[str, float]
    log: Callable[[Attempt], None] | None = None  # journals a fresh attempt once its response is known


def derive_seed(base: int, version: int, step: int, attempt: int) -> int:
    """A well-mixed 31-bit seed for one attempt, independent of everything that came before.

    The loop calls it with ``version=0``, ``step`` = the step's index in the video and ``attempt`` = the attempt's
    index at that step (see the module docstring).
    """
    return int(np.random.SeedSequence([base, version, step, attempt]).generate_state(1)[0] >> 1)


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def failure_signature(verdict: Verdict | None) -> Signature:
    """What makes two failures "the same": the failure kind and the feedback with its numbers blanked out
    (a drift of 31/255 and one of 33/255 are the same failure)."""
    if verdict is None:
        return ("", "")
    return (verdict.failure or "", _NUMBER.sub("#", verdict.feedback).strip())


def run_loop(
    goal: TaskGoal | str,
    first_frame: np.ndarray,
    agents: Agents,
    cfg: Config,
    run_dir: RunDir | None = None,
    initial_state: dict | None = None,
    on_event: Callable[[Event], None] | None = None,
    hints: dict[str, Any] | None = None,
) -> tuple[RunRecord, np.ndarray]:
    """Run one goal to the end of its plan (or until it stops); returns the record and the final video.

    ``goal``: the goal read once (``spiral.api`` reads it; a string is read here).
    """
    for agent in (agents.planner, agents.generator, agents.critic):
        if isinstance(agent, StartsRuns):  # an agent reused from an earlier run forgets what it read there
            agent.start_run()
    # ---- 1. plan (the plan of version 0, or its replay from the journal) --------------------------------------
    run = _Run(TaskGoal.of(goal), first_frame, agents, cfg, run_dir, initial_state, on_event, hints)
    s = run.state
    while s.status == "running":
        # ---- 2. step: the end of a plan (goal check, re-plan), steps given up before any attempt, the budget --
        sub = run.current_step()
        if sub is None or not run.within_budget(sub):
            continue
        s.stuck = None
        seed = derive_seed(run.loop.seed, 0, len(run.memory.history), s.n_here)
        outcome = run.replay()  # a resumed run reads the attempt back from its journal
        if outcome is None:
            # ---- 3. request ----------------------------------------------------------------------------------
            request = run.request(sub, seed)
            # ---- 4. generate ---------------------------------------------------------------------------------
            generated = run.generate(request)
            # ---- 5. judge ------------------------------------------------------------------------------------
            outcome = run.judge(generated, sub)
        s.total += 1
        s.n_here += 1
        # ---- 6. decide --------------------------------------------------------------------------------------
        verdict = outcome.verdict
        decision = verdict.decision if verdict is not None else "accept"
        response, note, repeated = run.decide(decision, verdict)
        path = run.record_attempt(sub, seed, outcome, decision, response, note)
        # ---- 7. commit / retry / refine / re-plan / give up -------------------------------------------------
        if response == "accept":
            run.keep(outcome.frames, sub, verdict, path, unverified=not run.closed)
            s.next_step(None)
        elif response in ("regenerate", "refine"):
            run.retry(sub, verdict, response, repeated)
        elif response == "give_up":
            run.note_failure(verdict, response, repeated)
            run.give_up(sub, note, f"step {s.step + 1} ({sub.text}) given up: {note}")
        else:
            run.replan_after(sub, outcome, path, decision, note, repeated)
    # ---- 8. fall back to the open loop (a run that went another way and could not verify every step) ---------
    if run.needs_fallback():
        run.fall_back()
    # ---- 9. compose -------------------------------------------------------------------------------------------
    video = run.compose()
    # ---- 10. record -------------------------------------------------------------------------------------------
    return run.finish(), video


class _Run:
    """One run's agents, memory, record, costs and state, and the loop's sections as methods."""

    def __init__(self, goal: TaskGoal, first_frame: np.ndarray, agents: Agents, cfg: Config, run_dir: RunDir | None,
                 initial_state: dict | None, on_event: Callable[[Event], None] | None, hints: dict[str, Any] | None):
        self.goal, self.first_frame, self.agents, self.cfg, self.run_dir = goal, first_frame, agents, cfg, run_dir
        self.loop, self.mode = cfg.loop, cfg.loop.mode
        self.closed = self.mode == "closed_loop"
        self.emit = on_event or (lambda e: None)
        self.costs = Costs()
        state0 = initial_state if initial_state is not None else observe(agents.critic, first_frame)
        self.state0, self.hints = state0, hints
        self.memory = Memory.start(first_frame, state0, hints=hints)
        self.record = RunRecord(goal=goal.text, mode=self.mode)
        # ---- 1. plan ------------------------------------------------------------------------------------------
        plan = self._get_plan(0, lambda: agents.planner.plan(goal, Observation(frame=first_frame, state=state0)))
        self.state = RunState(plan=plan)

    # -- plans
    def _get_plan(self, version: int, make: Callable[[], Plan], reason: str = "") -> Plan:
        logged = self.run_dir.logged_plan(version) if self.run_dir else None
        if logged is not None:
            self.costs.replayed()
            plan = logged
        else:
            plan = self.costs.timed("plan", make)
            if self.run_dir:
                self.run_dir.log_plan(version, plan, reason)
        self.record.plans.append(plan)
        self.emit({"type": "plan", "version": version, "plan": plan, "reason": reason})
        return plan

    def _replan(self, reason: str) -> None:
        """A new plan version from what is observed; the plan starts again at its first step."""
        s, planner = self.state, self.agents.planner
        s.version += 1
        obs, done, failed = self._observation(), [e.sub_action for e in self.memory.history], list(s.failures)
        if failed and isinstance(planner, AvoidsFailures):
            s.plan = self._get_plan(s.version, lambda: planner.replan_avoiding(self.goal, obs, done, failed), reason)
        else:
            s.plan = self._get_plan(s.version, lambda: planner.replan(self.goal, obs, done), reason)
        s.step = s.attempt = 0

    def _observation(self) -> Observation:
        return Observation(frame=self.memory.last_frame, state=self.memory.state)

    # -- section 2
    def current_step(self) -> SubAction | None:
        """The sub-action to attempt now; None when the run moved on without an attempt (end of plan, a step
        given up earlier in the run or whose re-plan brought it straight back)."""
        s = self.state
        if s.step >= len(s.plan.steps):
            self._end_of_plan()
            return None
        sub = s.plan.steps[s.step]
        key = _action_key(sub)
        once = ""
        if s.attempt == 0 and key in s.gave_up:
            if self.memory.state == s.gave_up_from.get(key):
                # asked again from the state it was given up in: what it made there is already kept
                entry = GivenUpStep(sub_action=sub, attempts=0, plan_version=s.version, step=s.step,
                                    reason=f"given up earlier in this run ({s.gave_up[key]}) from this same state; "
                                           "not tried again")
                self.record.given_up.append(entry)
                self.emit({"type": "give_up", "version": s.version, "step": s.step, "given_up": entry,
                           "policy": self.loop.on_budget_exhausted})
                s.step += 1
                return None
            # from another state the step is still needed (plan-only would make it): one attempt, no escalation
            once = f"given up earlier in this run ({s.gave_up[key]}): one attempt from the new state"
        if s.here is None or s.here.action != key:
            s.here = _Step(key, s.inherited, once=once)
        if s.attempt == 0 and s.stuck == key:
            # the re-plan after a repeated failure brought the same sub-action straight back: it changed nothing
            s.stuck = None
            why = "it failed the same way again and the re-plan could not avoid it"
            self.give_up(sub, why, f"step {s.step + 1} ({sub.text}) given up: {why}")
            return None
        if s.attempt == 0:
            s.instruction = Instruction(text=self.goal.text if self.mode == "single_shot" else sub.text)
        return sub

    def _end_of_plan(self) -> None:
        """The end of a plan: check the goal on what is observed, re-plan if it is not met, else end the run."""
        s = self.state
        s.stuck = None
        reached = not self.closed or bool(self.record.given_up) or self._goal_reached()
        if not reached and s.version < self.loop.max_replans:
            self._replan("the plan is done but the observed state does not meet the goal")
            if s.plan.steps:
                return
        why = f"max_replans={self.loop.max_replans} spent" if s.plan.steps else "the planner has nothing left to do"
        s.stop(*_final_status(self.record, self.mode, reached, why))

    def _goal_reached(self) -> bool:
        """Ask the planner whether the observed state meets the goal; planners that can't tell say yes."""
        met = self._goal_met(self.memory.state, self.memory.last_frame)
        return True if met is None else met

    def _goal_met(self, state: dict | None, frame: np.ndarray) -> bool | None:
        """The planner's goal check on a state the critic read; None when either cannot tell."""
        planner = self.agents.planner
        if not isinstance(planner, ChecksGoal) or state is None:
            return None
        return bool(planner.achieved(self.goal, Observation(frame=frame, state=state)))

    def within_budget(self, sub: SubAction) -> bool:
        """Whether one more generation fits the total budget, less one held back for each later step of the plan;
        when it does not, the step is given up."""
        s, limit = self.state, self.loop.max_total_generations
        later = len(s.plan.steps) - s.step - 1
        if s.total < limit and not (s.n_here > 0 and s.total + 1 + later > limit):
            return True
        why = (f"max_total_generations={limit} reached" if s.total >= limit
               else f"max_total_generations={limit}: the generations left are held back for the {later} later step(s)")
        self.give_up(sub, why, f"{why} at step {s.step + 1} ({sub.text})")
        return False

    # -- sections 3 to 5: request → generate → judge
    def replay(self, key: tuple[int, int, int] | None = None) -> _Outcome | None:
        """The current attempt (or the one at ``key``: version, step, attempt) read back from the journal (a
        resumed run), if it is there."""
        s = self.state
        version, step, attempt = key or (s.version, s.step, s.attempt)
        logged = self.run_dir.logged_attempt(version, step, attempt) if self.run_dir else None
        if logged is None:
            return None
        line, frames = logged
        self.costs.replayed()
        verdict = Verdict.model_validate(line["verdict"]) if line.get("verdict") else None
        return _Outcome(frames, verdict, line.get("seconds", {}))

    def request(self, sub: SubAction, seed: int) -> GenerationRequest:
        """The generation request: the instruction (and the critic's feedback beside it) with the memory."""
        vid, ins = self.cfg.video, self.state.instruction
        return self.memory.context(sub if self.mode != "single_shot" else None, ins.text, seed, vid.frames_per_step,
                                   vid.height, vid.width, feedback=ins.feedback)

    def generate(self, request: GenerationRequest) -> tuple[Segment, float]:
        t = time.perf_counter()
        segment: Segment = self.costs.timed("generate", lambda: self.agents.generator.generate(request))
        return segment, time.perf_counter() - t

    def judge(self, generated: tuple[Segment, float], sub: SubAction, context: JudgeContext | None = None,
              version: int | None = None) -> _Outcome:
        """The critic's verdict on a fresh segment (none in an open loop), and how to journal the attempt.
        ``context`` and ``version``: the open-loop fallback's own memory and journal key (default: the loop's)."""
        segment, gen_seconds = generated
        t = time.perf_counter()
        context = context or self.memory.judge_context(self.goal.text)
        verdict = (self.costs.timed("judge", lambda: self.agents.critic.judge(segment, sub, context))
                   if self.closed else None)
        seconds = {"generate": round(gen_seconds, 6), "judge": round(time.perf_counter() - t, 6)}
        if self.run_dir is None:
            return _Outcome(segment.frames, verdict, seconds)
        run_dir, version = self.run_dir, self.state.version if version is None else version

        def log(entry: Attempt) -> None:
            run_dir.log_attempt(version, entry, segment.frames, segment.fps,
                                {"backend": segment.backend, "sub_action": sub.model_dump(mode="json"),
                                 "generator_meta": _jsonable(segment.meta)}, video=self.cfg.output.segment_videos)

        return _Outcome(segment.frames, verdict, seconds, log)

    # -- sections 6 and 7
    def decide(self, decision: str, verdict: Verdict | None) -> tuple[Response, str, bool]:
        """What to do after the attempt (:func:`_respond`: the escalation ladder and the budgets)."""
        s = self.state
        assert s.here is not None
        return _respond(decision, verdict, s.here, s.attempt, s.version, self.loop.max_refines_per_step,
                        self.loop.max_replans)

    def record_attempt(self, sub: SubAction, seed: int, outcome: _Outcome, decision: str, response: Response,
                       note: str) -> str:
        """Journal the attempt with the response decided on it; it becomes a candidate of its step. Returns the
        segment's path (a label without a run directory)."""
        s = self.state
        assert s.here is not None
        entry = Attempt(step=s.step, attempt=s.attempt, prompt=s.instruction.prompt(), seed=seed,
                        verdict=outcome.verdict, decision=decision, response=response, note=note,
                        seconds=outcome.seconds,
                        segment_path=self.run_dir.segment_file(s.version, s.step, s.attempt) if self.run_dir else None)
        if outcome.log is not None:
            outcome.log(entry)
        self.record.attempts.append(entry)
        path = entry.segment_path or f"v{s.version}_s{s.step}_a{s.attempt}"
        s.here.candidates.append(_Candidate(_score(self.agents.critic, outcome.verdict), path, outcome.frames,
                                            outcome.verdict))
        self.emit({"type": "attempt", "version": s.version, "step": s.step, "n_steps": len(s.plan.steps),
                   "attempt": s.attempt, "decision": decision, "response": response, "note": note,
                   "verdict": outcome.verdict, "text": sub.text})
        return path

    def keep(self, frames: np.ndarray, sub: SubAction, verdict: Verdict | None, path: str, unverified: bool) -> None:
        """Commit a segment to the memory and the video."""
        self.memory.commit(frames, sub, verdict, verdict.observed_state if verdict else None)
        self.state.kept_frames.append(frames)
        self.record.accepted.append(path)
        if unverified:
            self.record.unverified.append(path)

    def note_failure(self, verdict: Verdict | None, response: Response, repeated: bool) -> None:
        """The escalation's memory of the step's latest failure and the rungs spent on it."""
        here = self.state.here
        assert here is not None
        here.signature = failure_signature(verdict)
        here.tried = (here.tried | {response}) if repeated else {response}

    def retry(self, sub: SubAction, verdict: Verdict | None, response: Response, repeated: bool) -> None:
        """Another attempt at the step: a new seed, and on ``refine`` an instruction rewritten from the feedback
        (the planner's, else the step's text with the feedback beside it)."""
        s = self.state
        self.note_failure(verdict, response, repeated)
        s.attempt += 1
        if response == "refine":
            feedback = verdict.feedback if verdict else ""
            planner = self.agents.planner
            s.instruction = (planner.refine(sub, feedback) if isinstance(planner, RefinesInstructions)
                             else Instruction(text=s.instruction.text, feedback=feedback))

    def replan_after(self, sub: SubAction, outcome: _Outcome, path: str, decision: str, note: str,
                     repeated: bool) -> None:
        """A re-plan after a failed step; the failed sub-action is recorded for the planner. A segment that left a
        valid but unexpected state is kept as what happened, and the plan goes on from it."""
        s, verdict = self.state, outcome.verdict
        assert verdict is not None and s.here is not None  # open-loop runs accept everything
        self.note_failure(verdict, "replan", repeated)
        here = s.here
        s.failures.append(StepFailure(sub_action=sub, failure=verdict.failure, feedback=verdict.feedback,
                                      attempts=len(here.candidates)))
        as_happened = decision == "replan" and verdict.observed_state is not None
        if as_happened:
            self.keep(outcome.frames, _as_happened(sub, verdict), verdict, path, unverified=False)
            s.here, s.n_here = None, 0
        why = (f"critic asked to re-plan at step {s.step + 1}: {verdict.feedback}" if as_happened else
               f"step {s.step + 1} ({sub.text}) failed {len(s.here.candidates) if s.here else 1} time(s)"
               + (f", the same way again ({verdict.failure}: {verdict.feedback})" if repeated else
                  f" ({note or verdict.feedback})"))
        self._replan(why)
        s.stuck = here.action if repeated and not as_happened else None

    def give_up(self, sub: SubAction, reason: str, stop_reason: str) -> None:
        """Apply the exhausted-budget policy to the current step: keep its best attempt unverified and go on, or
        stop the run (``stop_reason``)."""
        s, policy = self.state, self.loop.on_budget_exhausted
        tried = s.here.candidates if s.here is not None else []
        best = _best(tried) if policy == "keep_best" else None
        last = tried[-1].verdict if tried else None
        kept = best.path if best is not None else None
        entry = GivenUpStep(sub_action=sub, failure=last.failure if last else None, feedback=last.feedback if last else "",
                            attempts=len(tried), plan_version=s.version, step=s.step, reason=reason, kept=kept)
        self.record.given_up.append(entry)
        s.gave_up[_action_key(sub)] = f"step {s.step + 1} of plan v{s.version}"
        s.gave_up_from[_action_key(sub)] = self.memory.state
        self.emit({"type": "give_up", "version": s.version, "step": s.step, "given_up": entry, "policy": policy})
        if best is None:
            s.stop("budget_exhausted", stop_reason)
            return
        self.keep(best.frames, sub, best.verdict, best.path, unverified=True)
        s.next_step(failure_signature(best.verdict))

    # -- section 8
    def needs_fallback(self) -> bool:
        """Whether the run ends unverified after following another plan than its first (section 8)."""
        s, first = self.state, self.record.plans[0].steps
        if not (self.closed and self.loop.open_loop_fallback and self.loop.on_budget_exhausted == "keep_best"):
            return False
        made = [_action_key(e.sub_action) for e in self.memory.history]
        if s.status == "success" or not first or made == [_action_key(x) for x in first][:len(made)]:
            return False  # the first plan's steps, or the start of them (a run the total budget stopped short)
        left = self.loop.max_total_generations - s.total
        if len(first) > left:  # the total budget bounds the fallback too
            why = (f"no open-loop fallback: it needs {len(first)} generations and {max(left, 0)} are left of "
                   f"max_total_generations={self.loop.max_total_generations}")
            s.note(why)
            return False
        return True

    def reading(self) -> VideoReading:
        """The critic's reading of the closed loop's video: its goal check and the steps no critic passed."""
        history = self.memory.history
        failed = len(self.record.unverified) + sum(e.sub_action.verb == "unplanned" for e in history)
        return VideoReading(goal_met=self._goal_met(self.memory.state, self.memory.last_frame),
                            failed_steps=failed, steps=len(history))

    def fall_back(self) -> None:
        """Roll the first plan out as ``plan_only`` does (its memory, its seeds; each segment judged, never retried)
        and keep it instead of the closed loop's video when the critic reads it as better."""
        s, plan, vid = self.state, self.record.plans[0], self.cfg.video
        closed = self.reading()
        memory = Memory.start(self.first_frame, self.state0, hints=self.hints)  # plan-only's memory: no readings
        seen = self.state0  # the critic's reading so far, which judges the next segment as the loop's memory would
        frames, paths, passed = [], [], []
        for k, sub in enumerate(plan.steps):
            seed = derive_seed(self.loop.seed, 0, k, 0)
            outcome = self.replay((OPEN_LOOP, k, 0))
            if outcome is None:
                request = memory.context(sub, sub.text, seed, vid.frames_per_step, vid.height, vid.width)
                context = memory.judge_context(self.goal.text).model_copy(update={"state": seen})
                outcome = self.judge(self.generate(request), sub, context, OPEN_LOOP)
            s.total += 1
            verdict = outcome.verdict
            entry = Attempt(step=k, attempt=0, prompt=sub.text, seed=seed, verdict=verdict,
                            decision=verdict.decision if verdict else "accept", response="accept",
                            note="open-loop fallback: the first plan as plan_only makes it", seconds=outcome.seconds,
                            segment_path=self.run_dir.segment_file(OPEN_LOOP, k, 0) if self.run_dir else None)
            if outcome.log is not None:
                outcome.log(entry)
            self.record.attempts.append(entry)
            self.emit({"type": "attempt", "version": OPEN_LOOP, "step": k, "n_steps": len(plan.steps), "attempt": 0,
                       "decision": entry.decision, "response": "accept", "note": entry.note, "verdict": verdict,
                       "text": sub.text})
            memory.commit(outcome.frames, sub, None, None)  # as plan_only commits it
            seen = verdict.observed_state if verdict is not None else None
            frames.append(outcome.frames)
            paths.append(entry.segment_path or f"open_loop_s{k}")
            passed.append(bool(verdict and verdict.passed))
        opened = VideoReading(goal_met=self._goal_met(seen, memory.last_frame), failed_steps=passed.count(False),
                              steps=len(passed))
        used = prefer_open_loop(closed, opened)
        why = (f"the closed loop's video ({_read_as(closed)}) followed another plan than the first and could not "
               f"verify every step; the first plan rolled out open loop ({_read_as(opened)}) reads "
               + ("better to the critic and is the video" if used else "no better to the critic and was not kept"))
        self.record.fallback = OpenLoopFallback(closed_loop=closed, open_loop=opened, used=used, reason=why)
        self.emit({"type": "fallback", "fallback": self.record.fallback})
        if not used:
            s.note(why)
            return
        s.kept_frames = frames
        self.record.accepted = paths
        self.record.unverified = [p for p, ok in zip(paths, passed) if not ok]
        memory.state = seen
        self.memory = memory
        verified = not self.record.unverified and opened.goal_met is not False
        s.stop("success" if verified else "completed_unverified", f"open-loop fallback: {why}")

    # -- sections 9 and 10
    def compose(self) -> np.ndarray:
        """The kept segments as one video (the first frame alone when none was kept)."""
        t = time.perf_counter()
        frames = self.state.kept_frames
        if frames:
            video, bounds = compose(frames, self.cfg.video.crossfade)
        else:
            video, bounds = self.first_frame[None], []
        self.record.step_boundaries = [b for pair in bounds for b in pair]
        self.costs.close(time.perf_counter() - t)
        return video

    def finish(self) -> RunRecord:
        """The record's status, final state, counts and costs."""
        s, record = self.state, self.record
        record.status = s.status
        record.stop_reason = s.stop_reason
        record.final_state = self.memory.state
        n_kept = len(s.kept_frames)
        record.counts = {
            "generations": s.total, "accepted": n_kept, "unverified": len(record.unverified),
            "given_up": len(record.given_up), "replans": s.version, "plan_steps": len(s.plan.steps),
            **{f"{k}_calls": v for k, v in self.costs.calls.items()},
        }
        record.costs = self.costs.record(s.total, n_kept)
        self.emit({"type": "done", "record": record})
        return record


def _respond(decision: str, verdict: Verdict | None, here: _Step, attempt: int, version: int, max_refines: int,
             max_replans: int) -> tuple[Response, str, bool]:
    """Section 6: what to do after an attempt, why (when it is not the critic's decision), and whether the
    attempt failed the same way as the one before it at this step."""
    if decision == "accept":
        return "accept", "", False
    if here.once:
        return "give_up", here.once, False
    signature = failure_signature(verdict)
    repeated = here.signature is not None and signature == here.signature
    if not repeated and here.signature is None and signature == here.inherited:
        return "give_up", "the failure of the unverified step before it: it comes with the frame it starts from", False
    response: Response = decision  # type: ignore[assignment]  # refine | regenerate | replan
    note = ""
    if repeated:  # the critic's answer to this failure was tried already: the lowest rung not tried yet
        response = next(r for r in LADDER if r not in here.tried)
        note = f"the same failure again after {', '.join(r for r in LADDER if r in here.tried)}: {response}"
    if response in ("regenerate", "refine") and attempt >= max_refines:
        response, note = "replan", f"max_refines_per_step={max_refines} spent"
    if response == "replan" and version >= max_replans:
        response, note = "give_up", f"max_replans={max_replans} spent"
    return response, note, repeated


def _final_status(record: RunRecord, mode: str, reached: bool, why_not: str) -> tuple[RunStatus, str]:
    """The status of a run that got to the end of its plan, and why when it is not plain success."""
    if mode != "closed_loop":
        return "completed_unverified", f"open loop ({mode}): no critic checked the steps"
    if record.given_up:
        steps = "; ".join(g.sub_action.text for g in record.given_up)
        return "completed_unverified", f"{len(record.given_up)} step(s) kept unverified: {steps}"
    if not reached:
        return "completed_unverified", f"the plan is done but the observed state does not meet the goal ({why_not})"
    return "success", ""


def prefer_open_loop(closed: VideoReading, opened: VideoReading) -> bool:
    """Section 8: whether the open-loop rollout is the better video, as the critic reads both: the goal met first
    (when both readings can tell), then fewer steps the critic did not pass; the closed loop's video on a tie."""
    if closed.goal_met is not None and opened.goal_met is not None and closed.goal_met != opened.goal_met:
        return opened.goal_met
    return opened.failed_steps < closed.failed_steps


def _read_as(reading: VideoReading) -> str:
    goal = {True: "goal met", False: "goal not met", None: "goal unknown"}[reading.goal_met]
    return f"{goal}, {reading.failed_steps} of {reading.steps} steps not passed"


def _best(candidates: list[_Candidate]) -> _Candidate | None:
    """The best-scoring attempt; the earliest wins ties (the first attempt is the one plan-only makes)."""
    if not candidates:
        return None
    return candidates[max(range(len(candidates)), key=lambda i: (candidates[i].score, -i))]


def _score(critic: CriticAgent, verdict: Verdict | None) -> float:
    """One number per judged attempt: the critic's own weighting of its scores, else their mean."""
    if verdict is None or not verdict.scores:
        return 0.0
    if isinstance(critic, CombinesScores):
        return float(critic.combine(verdict.scores))
    return combine_scores(verdict.scores)


def _action_key(sub: SubAction) -> ActionKey:
    return (sub.verb, tuple(sub.objects))


def _as_happened(sub: SubAction, verdict: Verdict) -> SubAction:
    """A kept off-plan segment enters the history as what the critic saw, not as the step that was asked."""
    return SubAction(id=sub.id, text=f"unplanned: {verdict.feedback}", verb="unplanned", objects=list(sub.objects))


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of a segment's meta (the journal is JSON lines)."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out
