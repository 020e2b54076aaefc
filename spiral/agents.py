"""The three agent interfaces (DESIGN §2), as plain Protocols, and the optional capabilities the loop, the
benchmarks and the trainers use.

A user plugs in their own planner, generator or critic with a class that has these
methods and registers it by name (``spiral.registry``). An agent that also has one of the
small capability Protocols below gets used for more; the loop, the benchmarks and GRPO test for them with
``isinstance`` (runtime-checkable Protocols: the methods' presence is checked, not their signatures). The data
they exchange are typed in :mod:`spiral.types`: the goal read once (``TaskGoal``), the request with the
instruction and the critic's feedback apart (``GenerationRequest``), the critic's context (``JudgeContext``), the
score names and their one combination (``SCORES``, ``combine_scores``).
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from spiral.types import (
    GenerationRequest,
    Instruction,
    JudgeContext,
    NextStepQuestion,
    Observation,
    Plan,
    Segment,
    StepFailure,
    SubAction,
    TaskGoal,
    Verdict,
)


@runtime_checkable
class PlanAgent(Protocol):
    """Turns a goal and what is observed into ordered sub-actions with pre/post-conditions.

    ``goal`` is the run's goal read once (``spiral.types.TaskGoal``: the text, and its tabletop reading when the
    grammar reads it); the built-in planners also take a plain string and read it themselves."""

    def plan(self, goal: TaskGoal, observation: Observation) -> Plan: ...

    def replan(self, goal: TaskGoal, observation: Observation, history: list[SubAction]) -> Plan:
        """Plan again from what is observed; ``history`` is the sub-actions executed so far."""
        ...


@runtime_checkable
class VideoGenerator(Protocol):
    """Renders one segment for one request; frame 0 of the result is the conditioning frame."""

    def generate(self, request: GenerationRequest) -> Segment: ...


@runtime_checkable
class CriticAgent(Protocol):
    """Judges a segment against its sub-action and the memory context."""

    def judge(self, segment: Segment, sub_action: SubAction, context: JudgeContext | None) -> Verdict:
        """``context``: what the critic knows besides the segment (``spiral.types.JudgeContext``; a critic also
        accepts the loop's ``Memory`` through ``JudgeContext.of``), or None."""
        ...


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
    """A planner that rewrites a step's instruction from the critic's feedback (the loop's "refine" rung): the
    rewrite, with whatever feedback it leaves to be carried beside it. Without it the loop keeps the step's text
    and carries the feedback beside it (``GenerationRequest.feedback``)."""

    def refine(self, sub_action: SubAction, feedback: str) -> Instruction: ...


@runtime_checkable
class ChecksGoal(Protocol):
    """A planner that tells whether an observed state meets the goal (the loop's check at the end of a plan);
    without it the loop takes a finished plan as having reached the goal."""

    def achieved(self, goal: TaskGoal, observation: Observation) -> bool: ...


@runtime_checkable
class AvoidsFailures(Protocol):
    """A planner that re-plans around sub-actions the generator failed (the loop's "re-plan" rung): it avoids
    them when another plan reaches the goal. Without it the loop calls ``replan``."""

    def replan_avoiding(self, goal: TaskGoal, observation: Observation, history: list[SubAction],
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
    """A critic that reads a frame as a symbolic state (for re-planning from what is really on screen); the state
    is a dict or an object with ``to_dict()`` (:class:`StateRecord`, e.g. ``spiral.world.domain.State``)."""

    def observe(self, frame: np.ndarray) -> Any: ...


@runtime_checkable
class StateRecord(Protocol):
    """A symbolic state that serialises itself (``spiral.world.domain.State``): what an observation carries."""

    def to_dict(self) -> dict[str, Any]: ...


@runtime_checkable
class RewardsSegments(Protocol):
    """A critic with a scalar reward of its own for one segment (the critic benchmark's preference pairs rank
    clips by it; without it, the mean of the verdict's scores)."""

    def reward(self, segment: Segment, sub_action: SubAction, context: JudgeContext | None = None) -> float: ...


@runtime_checkable
class ReadsStatesBatched(Protocol):
    """A benchmark judge that reads many frames in one call (``spiral.bench.metrics.read_states``); without it
    the frames are read one by one with ``read_state``."""

    def read_states(self, frames: np.ndarray) -> list[Any]: ...


# ---- the generator a trainer improves ------------------------------------------------------------------------
@runtime_checkable
class GRPOPolicy(Protocol):
    """A generator as GRPO trains it (``spiral.train.policy``: TinyPolicy, DiffusersPolicy): batches of requests,
    the flow's velocity (live and reference weights), decoding, and the trainable parameters. ``batch`` is the
    policy's own batch object (``spiral.train.policy.Batch``)."""

    batches_groups: bool  # whether one batch may hold several prompts' groups (else one prompt per batch)

    def trainable(self) -> dict[str, Any]: ...

    def sigmas(self) -> Any: ...

    def prepare(self, requests: list[GenerationRequest]) -> Any: ...

    def initial_noise(self, batch: Any) -> Any: ...

    def subset(self, batch: Any, sl: slice) -> Any: ...

    def velocity(self, x: Any, sigma: Any, batch: Any) -> Any: ...

    def unguided(self, batch: Any) -> Any: ...

    def reference_velocity(self, x: Any, sigma: Any, batch: Any) -> Any: ...

    def decode(self, x0: Any, batch: Any) -> list[Segment]: ...

    def train(self, mode: bool = True) -> None: ...

    def export_model(self) -> Any: ...


@runtime_checkable
class FixedClipShape(Protocol):
    """A policy whose model makes one clip shape only (the tiny model): GRPO asks for exactly that; without it the
    requests take the conditioning frame's size and 9 frames."""

    def clip_shape(self) -> tuple[int, int]:
        """(frame size in pixels, frames per clip including the conditioning frame)."""
        ...


@runtime_checkable
class CombinesScores(Protocol):
    """A critic that weighs its per-dimension scores into one number (the loop ranks a step's attempts with it
    when it keeps the best one; without it, the mean of the scores)."""

    def combine(self, scores: dict[str, float]) -> float: ...


@runtime_checkable
class StartsRuns(Protocol):
    """An agent that remembers something for the length of one run (how it read a scene-relative goal) and forgets
    it when the loop starts the next run: a bench worker hands the same agents to every case it runs
    (``spiral.bench.workers``), and a case must not see what an earlier one read."""

    def start_run(self) -> None: ...


@runtime_checkable
class ChecksHealth(Protocol):
    """An agent that depends on something outside the process (an OpenAI-compatible endpoint) and can tell cheaply,
    in seconds, whether it answers: ``spiral run`` and ``spiral train grpo`` ask before a large generator loads."""

    def check_health(self) -> None:
        """Raise a ValueError of one line naming what does not answer and the fix."""
        ...


def check_health(**agents: Any) -> None:
    """Ask every agent that can (``ChecksHealth``) whether what it talks to answers; the first that does not raises
    its one-line error. Called before the generator is built, so that a dead endpoint costs seconds, not a model
    load."""
    for agent in agents.values():
        if isinstance(agent, ChecksHealth):
            agent.check_health()


def observe(critic: CriticAgent, frame: np.ndarray) -> dict | None:
    """The critic's reading of a frame as a symbolic state, if it can read states."""
    if not isinstance(critic, ObservesState):
        return None
    state = critic.observe(frame)
    return state.to_dict() if isinstance(state, StateRecord) else state
