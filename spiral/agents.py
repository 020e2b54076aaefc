"""The three agent interfaces (DESIGN §2), as plain Protocols.

A user plugs in their own planner, generator or critic with a class that has these
methods and registers it by name (``spiral.registry``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from spiral.types import GenerationRequest, Observation, Plan, Segment, SubAction, Verdict


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


@runtime_checkable
class ChecksRequests(Protocol):
    """A generator that can tell before any work whether it can make a request (size, length, frames);
    ``spiral.api.run`` asks it once before the run folder is created."""

    def check_request(self, request: GenerationRequest) -> None:
        """Raise a ValueError naming what this generator cannot make."""
        ...


def observe(critic: CriticAgent, frame: np.ndarray) -> dict | None:
    """The critic's reading of a frame as a symbolic state, if it can read states."""
    fn = getattr(critic, "observe", None)
    if fn is None:
        return None
    state = fn(frame)
    return state.to_dict() if hasattr(state, "to_dict") else state
