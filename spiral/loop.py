"""The think → act → reflect loop (DESIGN §1): one explicit loop over sub-actions, in numbered sections.

1. **Plan**: the PlanAgent plans the goal from the first frame.
2. **Budgets**: before each generation; the total budget holds back one generation for each later step.
3. **Act and reflect**: the generator renders the step conditioned on the memory; the critic judges it
   (closed loop only). A journaled attempt is replayed instead (resume).
4. **Respond**: accept and go on, or retry (``regenerate``: new seed; ``refine``: instruction rewritten by the
   planner from the feedback, new seed), re-plan, or give the step up. The critic's decision is followed the
   first time a failure is seen. When the step fails *the same way again* (same failure kind and feedback,
   numbers aside) the loop escalates instead of repeating: it takes the lowest rung of the ladder
   ``regenerate → refine → replan → give_up`` not yet tried against this failure. So a step is given up only
   once the same failure came back from a new seed, a refined instruction and a re-plan (three attempts at
   least): on tabletop-v1 a failure that a generator makes by chance (the oracle's injected ones) came back at
   most twice in a row before the step passed, one it cannot avoid (a move it cannot draw) 8–16 times. A re-plan
   after a step failure tells the planner which
   sub-actions failed (a planner with :class:`~spiral.agents.AvoidsFailures` avoids them when another plan
   reaches the goal); if the re-plan after a repeated failure brings the same sub-action straight back, it
   changed nothing and the step is given up at once. A sub-action given up once is not tried again in the run
   (a later plan that asks for it again skips it). When the critic asks for a re-plan because the segment
   left a valid but unexpected state, the segment is kept as what happened and the plan continues from there.
   The inner budget (``max_refines_per_step``) turns a retry into a re-plan, the outer one (``max_replans``)
   turns a re-plan into giving up.
5. **Give up**: the exhausted-budget policy ``loop.on_budget_exhausted`` decides. ``keep_best`` keeps the step's
   best-scoring attempt (the critic's combined score; the earliest wins ties) as an *unverified* step and goes on
   with the plan; ``stop`` ends the run there with what was accepted (``budget_exhausted``). A later step whose
   first attempt fails with the very failure the unverified step was kept with (a drifted background, a patch
   the critic cannot read) inherited it with its conditioning frame, which no retry changes: it is given up at
   once, until a step passes again.
6. **End of plan**: a planner with :class:`~spiral.agents.ChecksGoal` checks the observed state against the goal
   and the loop re-plans if it is not met (not after a step was given up: the new plan would only try it again).
7. **Compose** the kept segments into the final video and account for every call and second.

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
    VideoGenerator,
    observe,
)
from spiral.compose import compose
from spiral.config import Config
from spiral.memory import Memory
from spiral.rundir import RunDir
from spiral.types import (
    Attempt,
    GivenUpStep,
    Observation,
    Plan,
    Response,
    RunRecord,
    RunStatus,
    Segment,
    StepFailure,
    SubAction,
    Verdict,
    combine_scores,
)

Event = dict[str, Any]

#: the escalation ladder: each rung is tried once for a failure that repeats, in this order
LADDER: tuple[Response, ...] = ("regenerate", "refine", "replan", "give_up")


@dataclass
class Agents:
    """The three agents a run uses."""

    planner: PlanAgent
    generator: VideoGenerator
    critic: CriticAgent


@dataclass
class _Costs:
    seconds: dict[str, float] = field(default_factory=lambda: {"plan": 0.0, "generate": 0.0, "judge": 0.0, "other": 0.0})
    calls: dict[str, int] = field(default_factory=lambda: {"plan": 0, "generate": 0, "judge": 0, "replayed": 0})


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

    action: tuple[str, tuple[str, ...]]
    inherited: tuple[str, str] | None = None  # the failure of the unverified step just before, if any
    candidates: list[_Candidate] = field(default_factory=list)
    signature: tuple[str, str] | None = None
    tried: set[str] = field(default_factory=set)


def derive_seed(base: int, version: int, step: int, attempt: int) -> int:
    """A well-mixed 31-bit seed for one attempt, independent of everything that came before.

    The loop calls it with ``version=0``, ``step`` = the step's index in the video and ``attempt`` = the attempt's
    index at that step (see the module docstring).
    """
    return int(np.random.SeedSequence([base, version, step, attempt]).generate_state(1)[0] >> 1)


REFINE_MARK = ". Important: "


def base_instruction(text: str) -> str:
    """An instruction without the feedback :func:`refine_instruction` appended to it."""
    return text.split(REFINE_MARK)[0]


def refine_instruction(text: str, feedback: str) -> str:
    """Deterministic prompt rewriter: the step's own text plus the critic's latest feedback."""
    base = base_instruction(text)
    return f"{base}{REFINE_MARK}{feedback}" if feedback else base


_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def failure_signature(verdict: Verdict | None) -> tuple[str, str]:
    """What makes two failures "the same": the failure kind and the feedback with its numbers blanked out
    (a drift of 31/255 and one of 33/255 are the same failure)."""
    if verdict is None:
        return ("", "")
    return (verdict.failure or "", _NUMBER.sub("#", verdict.feedback).strip())


def run_loop(
    goal: str,
    first_frame: np.ndarray,
    agents: Agents,
    cfg: Config,
    run_dir: RunDir | None = None,
    initial_state: dict | None = None,
    on_event: Callable[[Event], None] | None = None,
    hints: dict[str, Any] | None = None,
) -> tuple[RunRecord, np.ndarray]:
    """Run one goal to the end of its plan (or until it stops); returns the record and the final video."""
    loop, vid = cfg.loop, cfg.video
    mode = loop.mode
    closed = mode == "closed_loop"
    emit = on_event or (lambda e: None)
    costs = _Costs()
    t_start = time.perf_counter()

    def timed(kind: str, fn: Callable[[], Any]) -> Any:
        t = time.perf_counter()
        out = fn()
        costs.seconds[kind] += time.perf_counter() - t
        costs.calls[kind] += 1
        return out

    state0 = initial_state if initial_state is not None else observe(agents.critic, first_frame)
    memory = Memory.start(first_frame, state0, hints=hints)
    record = RunRecord(goal=goal, mode=mode)
    kept_frames: list[np.ndarray] = []
    failures: list[StepFailure] = []  # every sub-action that failed, for planners that re-plan around them

    def get_plan(version: int, make: Callable[[], Plan], reason: str = "") -> Plan:
        logged = run_dir.logged_plan(version) if run_dir else None
        if logged is not None:
            costs.calls["replayed"] += 1
            plan = logged
        else:
            plan = timed("plan", make)
            if run_dir:
                run_dir.log_plan(version, plan, reason)
        record.plans.append(plan)
        emit({"type": "plan", "version": version, "plan": plan, "reason": reason})
        return plan

    def replan(version: int, reason: str) -> Plan:
        obs, done, failed = _obs(memory), _executed(memory), list(failures)
        if failed and isinstance(agents.planner, AvoidsFailures):
            return get_plan(version, lambda: agents.planner.replan_avoiding(goal, obs, done, failed), reason)
        return get_plan(version, lambda: agents.planner.replan(goal, obs, done), reason)

    def keep(frames: np.ndarray, sub: SubAction, verdict: Verdict | None, path: str, unverified: bool) -> None:
        memory.commit(frames, sub, verdict, verdict.observed_state if verdict else None)
        kept_frames.append(frames)
        record.accepted.append(path)
        if unverified:
            record.unverified.append(path)

    def give_up(here: _Step | None, sub: SubAction, version: int, step: int, reason: str) -> _Candidate | None:
        """Section 5: apply the exhausted-budget policy to a step; the attempt kept unverified, None to stop."""
        tried = here.candidates if here is not None else []
        best = _best(tried) if loop.on_budget_exhausted == "keep_best" else None
        last = tried[-1].verdict if tried else None
        kept = best.path if best is not None else None
        entry = GivenUpStep(sub_action=sub, failure=last.failure if last else None, feedback=last.feedback if last else "",
                            attempts=len(tried), plan_version=version, step=step, reason=reason, kept=kept)
        record.given_up.append(entry)
        gave_up[_action_key(sub)] = f"step {step + 1} of plan v{version}"
        emit({"type": "give_up", "version": version, "step": step, "given_up": entry,
              "policy": loop.on_budget_exhausted})
        if best is not None:
            keep(best.frames, sub, best.verdict, kept, unverified=True)
        return best

    # ---- 1. plan ---------------------------------------------------------------------------------------------
    plan = get_plan(0, lambda: agents.planner.plan(goal, Observation(frame=first_frame, state=state0)))
    version = step = attempt = total = 0
    here: _Step | None = None  # the attempts at the current step
    n_here = 0  # attempts at the current step of the video, across plan versions (seeds)
    stuck: tuple[str, tuple[str, ...]] | None = None  # the action whose repeated failure made the last re-plan
    inherited: tuple[str, str] | None = None  # the failure kept with the last unverified step, until one passes
    gave_up: dict[tuple[str, tuple[str, ...]], str] = {}  # actions given up in this run → where
    instruction = ""
    status: RunStatus = "running"
    stop_reason = ""

    while status == "running":
        # ---- 6. end of plan: check the goal on what is observed, re-plan if it is not met --------------------
        if step >= len(plan.steps):
            stuck = None
            reached = not closed or bool(record.given_up) or _goal_reached(agents.planner, goal, memory)
            if not reached and version < loop.max_replans:
                version += 1
                plan = replan(version, "the plan is done but the observed state does not meet the goal")
                step = attempt = 0
                if plan.steps:
                    continue
            why = f"max_replans={loop.max_replans} spent" if plan.steps else "the planner has nothing left to do"
            status, stop_reason = _final_status(record, mode, reached, why)
            break
        sub = plan.steps[step]
        key = _action_key(sub)
        if attempt == 0 and key in gave_up:
            # a sub-action given up earlier in this run is not tried again: what it made is already kept
            entry = GivenUpStep(sub_action=sub, attempts=0, plan_version=version, step=step,
                                reason=f"given up earlier in this run ({gave_up[key]}); not tried again")
            record.given_up.append(entry)
            emit({"type": "give_up", "version": version, "step": step, "given_up": entry,
                  "policy": loop.on_budget_exhausted})
            step += 1
            continue
        if here is None or here.action != key:
            here = _Step(key, inherited)
        if attempt == 0 and stuck == key:
            # the re-plan after a repeated failure brought the same sub-action straight back: it changed nothing
            stuck = None
            why = "it failed the same way again and the re-plan could not avoid it"
            kept = give_up(here, sub, version, step, why)
            if kept is None:
                status, stop_reason = "budget_exhausted", f"step {step + 1} ({sub.text}) given up: {why}"
                break
            step, here, n_here, inherited = step + 1, None, 0, failure_signature(kept.verdict)
            continue
        if attempt == 0:
            instruction = goal if mode == "single_shot" else sub.text

        # ---- 2. budgets: the total, less one generation held back for each later step of the plan ------------
        later = len(plan.steps) - step - 1
        if total >= loop.max_total_generations or (n_here > 0 and total + 1 + later > loop.max_total_generations):
            why = (f"max_total_generations={loop.max_total_generations} reached" if total >= loop.max_total_generations
                   else f"max_total_generations={loop.max_total_generations}: the generations left are held back "
                        f"for the {later} later step(s)")
            kept = give_up(here, sub, version, step, why)
            if kept is None:
                status, stop_reason = "budget_exhausted", f"{why} at step {step + 1} ({sub.text})"
                break
            step, attempt, here, n_here, inherited = step + 1, 0, None, 0, failure_signature(kept.verdict)
            continue

        # ---- 3. act and reflect: one generation and its judgement (or their replay from the journal) ----------
        stuck = None
        seed = derive_seed(loop.seed, 0, len(memory.history), n_here)
        frames, verdict, seconds, log = _attempt(agents, cfg, memory, sub, instruction, seed, mode, run_dir,
                                                 version, step, attempt, costs, timed)
        total += 1
        n_here += 1
        decision = verdict.decision if verdict is not None else "accept"
        response, note, repeated = _respond(decision, verdict, here, attempt, version, loop.max_refines_per_step,
                                            loop.max_replans)
        entry = Attempt(step=step, attempt=attempt, prompt=instruction, seed=seed, verdict=verdict, decision=decision,
                        response=response, note=note, seconds=seconds,
                        segment_path=run_dir.segment_file(version, step, attempt) if run_dir else None)
        if log is not None:
            log(entry)
        record.attempts.append(entry)
        path = entry.segment_path or f"v{version}_s{step}_a{attempt}"
        here.candidates.append(_Candidate(_score(agents.critic, verdict), path, frames, verdict))
        emit({"type": "attempt", "version": version, "step": step, "n_steps": len(plan.steps), "attempt": attempt,
              "decision": decision, "response": response, "note": note, "verdict": verdict, "text": sub.text})

        # ---- 4. respond ------------------------------------------------------------------------------------------
        if response == "accept":
            keep(frames, sub, verdict, path, unverified=not closed)
            step, attempt, here, n_here, inherited = step + 1, 0, None, 0, None
            continue
        here.signature = failure_signature(verdict)
        here.tried = (here.tried | {response}) if repeated else {response}
        if response in ("regenerate", "refine"):
            attempt += 1
            if response == "refine":
                instruction = _refine(agents.planner, instruction, sub, verdict)
            continue
        if response == "give_up":
            kept = give_up(here, sub, version, step, note)
            if kept is None:
                status, stop_reason = "budget_exhausted", f"step {step + 1} ({sub.text}) given up: {note}"
                break
            step, attempt, here, n_here, inherited = step + 1, 0, None, 0, failure_signature(kept.verdict)
            continue
        # response == "replan": the failed sub-action is recorded for the planner
        assert verdict is not None  # open-loop runs accept everything
        failures.append(StepFailure(sub_action=sub, failure=verdict.failure, feedback=verdict.feedback,
                                    attempts=len(here.candidates)))
        as_happened = decision == "replan" and verdict.observed_state is not None
        if as_happened:  # a valid but unexpected state: keep the segment as what happened, plan on from it
            keep(frames, _as_happened(sub, verdict), verdict, path, unverified=False)
            here, n_here = None, 0
        version += 1
        why = (f"critic asked to re-plan at step {step + 1}: {verdict.feedback}" if as_happened else
               f"step {step + 1} ({sub.text}) failed {len(here.candidates) if here else 1} time(s)"
               + (f", the same way again ({verdict.failure}: {verdict.feedback})" if repeated else
                  f" ({note or verdict.feedback})"))
        plan = replan(version, why)
        step = attempt = 0
        stuck = here.action if repeated and not as_happened and here is not None else None

    # ---- 7. compose and account ------------------------------------------------------------------------------
    record.status = status
    record.stop_reason = stop_reason
    record.final_state = memory.state
    t = time.perf_counter()
    if kept_frames:
        video, bounds = compose(kept_frames, vid.crossfade)
    else:
        video, bounds = first_frame[None], []
    record.step_boundaries = [b for pair in bounds for b in pair]
    wall = time.perf_counter() - t_start
    costs.seconds["compose"] = time.perf_counter() - t
    costs.seconds["other"] = max(0.0, wall - sum(v for k, v in costs.seconds.items() if k != "other"))
    costs.seconds["wall"] = wall
    n_kept = len(kept_frames)
    record.counts = {
        "generations": total, "accepted": n_kept, "unverified": len(record.unverified),
        "given_up": len(record.given_up), "replans": version, "plan_steps": len(plan.steps),
        **{f"{k}_calls": v for k, v in costs.calls.items()},
    }
    record.costs = {**{f"{k}_seconds": round(v, 6) for k, v in costs.seconds.items()},
                    "generations_per_accepted_step": round(total / n_kept, 4) if n_kept else float(total)}
    emit({"type": "done", "record": record})
    return record, video


def _respond(decision: str, verdict: Verdict | None, here: _Step, attempt: int, version: int, max_refines: int,
             max_replans: int) -> tuple[Response, str, bool]:
    """Section 4: what to do after an attempt, why (when it is not the critic's decision), and whether the
    attempt failed the same way as the one before it at this step."""
    if decision == "accept":
        return "accept", "", False
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


def _attempt(agents: Agents, cfg: Config, memory: Memory, sub: SubAction, instruction: str, seed: int, mode: str,
             run_dir: RunDir | None, version: int, step: int, attempt: int, costs: _Costs, timed: Callable
             ) -> tuple[np.ndarray, Verdict | None, dict[str, float], Callable[[Attempt], None] | None]:
    """One generation + judgement, or its replay from the journal; the last item journals a fresh attempt once
    the loop has decided its response (None when replayed or without a run directory)."""
    logged = run_dir.logged_attempt(version, step, attempt) if run_dir else None
    if logged is not None:
        line, frames = logged
        costs.calls["replayed"] += 1
        verdict = Verdict.model_validate(line["verdict"]) if line.get("verdict") else None
        return frames, verdict, line.get("seconds", {}), None
    vid = cfg.video
    request = memory.context(sub if mode != "single_shot" else None, instruction, seed, vid.frames_per_step,
                             vid.height, vid.width)
    t0 = time.perf_counter()
    segment: Segment = timed("generate", lambda: agents.generator.generate(request))
    t1 = time.perf_counter()
    verdict = timed("judge", lambda: agents.critic.judge(segment, sub, memory)) if mode == "closed_loop" else None
    seconds = {"generate": round(t1 - t0, 6), "judge": round(time.perf_counter() - t1, 6)}
    if run_dir is None:
        return segment.frames, verdict, seconds, None

    def log(entry: Attempt) -> None:
        run_dir.log_attempt(version, entry, segment.frames, segment.fps,
                            {"backend": segment.backend, "sub_action": sub.model_dump(mode="json"),
                             "generator_meta": _jsonable(segment.meta)}, video=cfg.output.segment_videos)

    return segment.frames, verdict, seconds, log


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


def _action_key(sub: SubAction) -> tuple[str, tuple[str, ...]]:
    return (sub.verb, tuple(sub.objects))


def _as_happened(sub: SubAction, verdict: Verdict) -> SubAction:
    """A kept off-plan segment enters the history as what the critic saw, not as the step that was asked."""
    return SubAction(id=sub.id, text=f"unplanned: {verdict.feedback}", verb="unplanned", objects=list(sub.objects))


def _executed(memory: Memory) -> list[SubAction]:
    """The sub-actions whose segments were kept, in order: what has happened so far."""
    return [e.sub_action for e in memory.history]


def _obs(memory: Memory) -> Observation:
    return Observation(frame=memory.last_frame, state=memory.state)


def _refine(planner: PlanAgent, instruction: str, sub: SubAction, verdict: Verdict | None) -> str:
    feedback = verdict.feedback if verdict else ""
    if isinstance(planner, RefinesInstructions):
        return planner.refine(sub, feedback)
    return refine_instruction(instruction, feedback)


def _goal_reached(planner: PlanAgent, goal: str, memory: Memory) -> bool:
    """Ask the planner whether the observed state meets the goal; planners that can't tell say yes."""
    if not isinstance(planner, ChecksGoal) or memory.state is None:
        return True
    return bool(planner.achieved(goal, _obs(memory)))


def _jsonable(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-friendly part of a segment's meta (the journal is JSON lines)."""
    import json

    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
        except TypeError:
            continue
        out[k] = v
    return out
