"""The think → act → reflect loop (DESIGN §1): one explicit loop over sub-actions.

For each sub-action of the current plan the generator renders a segment conditioned on
the memory; the critic judges it; the verdict's decision drives what happens next:

- ``accept``: the segment is committed to memory and the loop moves to the next step;
- ``refine``: the instruction is rewritten from the critic's feedback, new seed (inner loop);
- ``regenerate``: same instruction, new seed (inner loop);
- ``replan``: the segment is physically plausible but left the world in an unexpected
  state; it is kept as what happened and the planner re-plans from the observed state
  (outer loop). When a step's inner budget runs out the loop also re-plans, from the last
  accepted frame, without keeping the failed segment.

Budgets: ``max_refines_per_step`` inner attempts after the first, ``max_replans`` outer
fixes, ``max_total_generations`` overall; when one runs out the run ends with status
``budget_exhausted`` and keeps everything it made.

Open-loop baselines are the same loop with parts switched off: ``plan_only`` accepts every
segment without a critic; ``single_shot`` also gives the generator the whole goal text
instead of the step (as many segments as the plan has steps).

Seeds are derived from (run seed, plan version, step, attempt), so a run is a pure
function of its inputs and a resumed run replays its journal to the same final video.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spiral.agents import CriticAgent, PlanAgent, VideoGenerator, observe
from spiral.compose import compose
from spiral.config import Config
from spiral.memory import Memory
from spiral.rundir import RunDir
from spiral.types import Attempt, Observation, Plan, RunRecord, Segment, SubAction, Verdict

Event = dict[str, Any]


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


def derive_seed(base: int, version: int, step: int, attempt: int) -> int:
    """A well-mixed 31-bit seed for one attempt, independent of everything that came before."""
    return int(np.random.SeedSequence([base, version, step, attempt]).generate_state(1)[0] >> 1)


REFINE_MARK = ". Important: "


def base_instruction(text: str) -> str:
    """An instruction without the feedback :func:`refine_instruction` appended to it."""
    return text.split(REFINE_MARK)[0]


def refine_instruction(text: str, feedback: str) -> str:
    """Deterministic prompt rewriter: the step's own text plus the critic's latest feedback."""
    base = base_instruction(text)
    return f"{base}{REFINE_MARK}{feedback}" if feedback else base


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
    """Run one goal to completion or budget exhaustion; returns the record and the final video."""
    loop, vid = cfg.loop, cfg.video
    mode = loop.mode
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

    plan = get_plan(0, lambda: agents.planner.plan(goal, Observation(frame=first_frame, state=state0)))
    accepted: list[np.ndarray] = []
    version, step, total = 0, 0, 0
    status, stop_reason = "running", ""

    while status == "running":
        if step >= len(plan.steps):
            if mode == "closed_loop" and not _goal_reached(agents.planner, goal, memory) and version < loop.max_replans:
                version += 1
                plan = get_plan(version, lambda: agents.planner.replan(goal, _obs(memory), _executed(memory)),
                                "the plan is done but the observed state does not meet the goal")
                step = 0
                if plan.steps:
                    continue
            status = "success"
            break
        sub = plan.steps[step]
        instruction = goal if mode == "single_shot" else sub.text
        attempt = 0
        while True:  # inner loop: attempts at this step
            if total >= loop.max_total_generations:
                status, stop_reason = "budget_exhausted", f"max_total_generations={loop.max_total_generations} reached"
                break
            seed = derive_seed(loop.seed, version, step, attempt)
            frames, verdict, seconds = _attempt(agents, cfg, memory, sub, instruction, seed, mode, run_dir,
                                                version, step, attempt, costs, timed)
            total += 1
            decision = verdict.decision if verdict is not None else "accept"
            entry = Attempt(step=step, attempt=attempt, prompt=instruction, seed=seed, verdict=verdict,
                            decision=decision, seconds=seconds,
                            segment_path=run_dir.segment_file(version, step, attempt) if run_dir else None)
            record.attempts.append(entry)
            emit({"type": "attempt", "version": version, "step": step, "n_steps": len(plan.steps),
                  "attempt": attempt, "decision": decision, "verdict": verdict, "text": sub.text})
            if decision == "accept":
                memory.commit(frames, sub, verdict, verdict.observed_state if verdict else None)
                accepted.append(frames)
                record.accepted.append(entry.segment_path or f"v{version}_s{step}_a{attempt}")
                step += 1
                break
            attempt += 1
            if decision in ("refine", "regenerate") and attempt <= loop.max_refines_per_step:
                if decision == "refine":
                    instruction = _refine(agents.planner, instruction, sub, verdict)
                continue
            # outer fix: re-plan (the critic asked for it, or this step's inner budget is spent)
            if version >= loop.max_replans:
                status, stop_reason = "budget_exhausted", f"max_replans={loop.max_replans} reached at step {step + 1}"
                break
            if decision == "replan" and verdict is not None and verdict.observed_state is not None:
                memory.commit(frames, _as_happened(sub, verdict), verdict, verdict.observed_state)  # keep what happened
                accepted.append(frames)
                record.accepted.append(entry.segment_path or f"v{version}_s{step}_a{attempt - 1}")
            version += 1
            why = (f"critic asked to re-plan: {verdict.feedback}" if decision == "replan" and verdict is not None
                   else f"step {step + 1} failed {attempt} attempts")
            plan = get_plan(version, lambda: agents.planner.replan(goal, _obs(memory), _executed(memory)), why)
            step = 0
            break

    record.status = status
    record.stop_reason = stop_reason
    record.final_state = memory.state
    t = time.perf_counter()
    if accepted:
        video, bounds = compose(accepted, vid.crossfade)
    else:
        video, bounds = first_frame[None], []
    record.step_boundaries = [b for pair in bounds for b in pair]
    wall = time.perf_counter() - t_start
    costs.seconds["compose"] = time.perf_counter() - t
    costs.seconds["other"] = max(0.0, wall - sum(v for k, v in costs.seconds.items() if k != "other"))
    costs.seconds["wall"] = wall
    n_acc = len(accepted)
    record.counts = {
        "generations": total, "accepted": n_acc, "replans": version, "plan_steps": len(plan.steps),
        **{f"{k}_calls": v for k, v in costs.calls.items()},
    }
    record.costs = {**{f"{k}_seconds": round(v, 6) for k, v in costs.seconds.items()},
                    "generations_per_accepted_step": round(total / n_acc, 4) if n_acc else float(total)}
    emit({"type": "done", "record": record})
    return record, video


def _attempt(agents: Agents, cfg: Config, memory: Memory, sub: SubAction, instruction: str, seed: int, mode: str,
             run_dir: RunDir | None, version: int, step: int, attempt: int, costs: _Costs,
             timed: Callable) -> tuple[np.ndarray, Verdict | None, dict[str, float]]:
    """One generation + judgement, or its replay from the journal."""
    logged = run_dir.logged_attempt(version, step, attempt) if run_dir else None
    if logged is not None:
        line, frames = logged
        costs.calls["replayed"] += 1
        verdict = Verdict.model_validate(line["verdict"]) if line.get("verdict") else None
        return frames, verdict, line.get("seconds", {})
    vid = cfg.video
    request = memory.context(sub if mode != "single_shot" else None, instruction, seed, vid.frames_per_step,
                             vid.height, vid.width)
    t0 = time.perf_counter()
    segment: Segment = timed("generate", lambda: agents.generator.generate(request))
    t1 = time.perf_counter()
    verdict = timed("judge", lambda: agents.critic.judge(segment, sub, memory)) if mode == "closed_loop" else None
    seconds = {"generate": round(t1 - t0, 6), "judge": round(time.perf_counter() - t1, 6)}
    if run_dir is not None:
        entry = Attempt(step=step, attempt=attempt, prompt=instruction, seed=seed, verdict=verdict,
                        decision=verdict.decision if verdict else "accept", seconds=seconds)
        run_dir.log_attempt(version, entry, segment.frames, segment.fps,
                            {"backend": segment.backend, "sub_action": sub.model_dump(mode="json"),
                             "generator_meta": _jsonable(segment.meta)}, video=cfg.output.segment_videos)
    return segment.frames, verdict, seconds


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
    fn = getattr(planner, "refine", None)
    return fn(sub, feedback) if fn is not None else refine_instruction(instruction, feedback)


def _goal_reached(planner: PlanAgent, goal: str, memory: Memory) -> bool:
    """Ask the planner whether the observed state meets the goal; planners that can't tell say yes."""
    fn = getattr(planner, "achieved", None)
    if fn is None or memory.state is None:
        return True
    return bool(fn(goal, _obs(memory)))


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
