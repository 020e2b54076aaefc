"""The three agent interfaces (DESIGN §2), as plain Protocols, and the optional capabilities the loop uses.

A user plugs in their own planner, generator or critic with a class that has these
methods and registers it by name (``spiral.registry``). An agent that also has one of the
small capability Protocols below gets used for more; the loop tests for them with ``isinstance``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from spiral.types import (
    GenerationRequest,
    NextStepQuestion,
    Observation,
    Plan,
    Segment,
    StepFailure,
    SubAction,
    Verdict,
)


@runtime_checkable
class PlanAgent(Protocol):
    """Turns a goal and what is observed into ordered sub-actions with pre/post-conditions."""

    def plan(self, goal: str, observation: Observation) -> Plan: ...

    def replan(self, goal: str, observation: Observation, history: list[SubAction]) -> Plan:
        """Plan again from what is observed; ``history`` is the sub-actions executed so far."""
        ...


@runtime_checkable
class VideoGenerator(Protocol):
    """Renders one segment for one request; frame 0 of the result is the conditioning frame."""

    def generate(self, request: GenerationRequest) -> Segment: ...


@runtime_checkable
class CriticAgent(Protocol):
    """Judges a segment against its sub-action and the memory context."""

    def judge(self, segment: Segment, sub_action: SubAction, context: Any) -> Verdict: ...


# ---- optional capabilities ---------------------------------------------------------------------------------
@runtime_checkable
class ChecksRequests(Protocol):
    """A generator that can tell before any work whether it can make a request (size, length, frames);
    ``spiral.api.run`` asks it once before the run folder is created."""

    def check_request(self, request: GenerationRequest) -> None:
        """Raise a ValueError naming what this generator cannot make."""
        ...


@runtime_checkable
class RefinesInstructions(Protocol):
    """A planner that rewrites a step's instruction from the critic's feedback (the loop's "refine" rung);
    without it the loop appends the feedback to the step's text."""

    def refine(self, sub_action: SubAction, feedback: str) -> str: ...


@runtime_checkable
class ChecksGoal(Protocol):
    """A planner that tells whether an observed state meets the goal (the loop's check at the end of a plan);
    without it the loop takes a finished plan as having reached the goal."""

    def achieved(self, goal: str, observation: Observation) -> bool: ...


@runtime_checkable
class AvoidsFailures(Protocol):
    """A planner that re-plans around sub-actions the generator failed (the loop's "re-plan" rung): it avoids
    them when another plan reaches the goal. Without it the loop calls ``replan``."""

    def replan_avoiding(self, goal: str, observation: Observation, history: list[SubAction],
                        failed: list[StepFailure]) -> Plan: ...


@runtime_checkable
class ChoosesNextStep(Protocol):
    """A planner that answers a multiple-choice next-step question (EgoPlan-Bench's form) itself, e.g. a language
    model shown the four candidates. ``spiral eval planner`` asks it directly; without it the harness plans from
    the observation and matches the plan's first step to a candidate."""

    def choose(self, question: NextStepQuestion) -> int:
        """The index (0–3) of the candidate to do next; raise ValueError when the question cannot be answered."""
        ...


@runtime_checkable
class ObservesState(Protocol):
    """A critic that reads a frame as a symbolic state (for re-planning from what is really on screen)."""

    def observe(self, frame: np.ndarray) -> Any: ...


@runtime_checkable
class CombinesScores(Protocol):
    """A critic that weighs its per-dimension scores into one number (the loop ranks a step's attempts with it
    when it keeps the best one; without it, the mean of the scores)."""

    def combine(self, scores: dict[str, float]) -> float: ...


def observe(critic: CriticAgent, frame: np.ndarray) -> dict | None:
    """The critic's reading of a frame as a symbolic state, if it can read states."""
    if not isinstance(critic, ObservesState):
        return None
    state = critic.observe(frame)
    return state.to_dict() if hasattr(state, "to_dict") else state
