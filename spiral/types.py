"""Core types that cross module boundaries (DESIGN §3).

pydantic models so that input from files and LLMs is validated and every record
serializes to JSON. Frames are numpy uint8 arrays (T×H×W×3) at the edges; in JSON
they travel as base64 of the raw bytes with shape and dtype, so a round trip is exact.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, PlainValidator, model_validator

if TYPE_CHECKING:
    from spiral.world.goals import Goal

FailureKind = Literal[
    "physical_violation", "missing_action", "incomplete_action", "sudden_switch", "scene_drift"
]
FAILURE_KINDS: tuple[str, ...] = FailureKind.__args__  # type: ignore[attr-defined]
Decision = Literal["accept", "refine", "regenerate", "replan"]
#: what the loop did after an attempt: the critic's decision, a higher rung of the escalation ladder, or give_up
Response = Literal["accept", "regenerate", "refine", "replan", "give_up"]

#: the critic's score dimensions (DESIGN §5): every critic scores these, the loop ranks attempts and GRPO rewards
#: rollouts by their weighted mean (:func:`combine_scores`)
SCORES: tuple[str, ...] = ("action", "preservation", "continuity", "consistency")


def combine_scores(scores: dict[str, float], weights: dict[str, float] | None = None) -> float:
    """One number for a verdict's scores: their weighted mean over :data:`SCORES` (a missing weight counts 0; a
    non-positive total gives 0), or without weights the plain mean of whatever scores are given.

    The one reward combination: the tabletop critic's ``combine`` (its configured weights), the loop's keep_best
    ranking (the critic's ``combine``, else this mean) and the GRPO reward (``reward_weights``) all call it.
    """
    if weights is None:
        return float(np.mean(list(scores.values()))) if scores else 0.0
    total = sum(weights.get(k, 0.0) for k in SCORES)
    return float(sum(weights.get(k, 0.0) * scores[k] for k in SCORES) / total) if total > 0 else 0.0


def _array_to_json(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a)
    return {"shape": list(a.shape), "dtype": str(a.dtype), "b64": base64.b64encode(a.tobytes()).decode()}


def _array_from_json(v: Any) -> np.ndarray:
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, dict) and {"shape", "dtype", "b64"} <= v.keys():
        raw = base64.b64decode(v["b64"])
        return np.frombuffer(raw, dtype=np.dtype(v["dtype"])).reshape(v["shape"]).copy()
    raise ValueError("expected a numpy array or {'shape','dtype','b64'} (fix: pass frames as np.ndarray)")


NDArray = Annotated[
    np.ndarray,
    PlainValidator(_array_from_json),
    PlainSerializer(_array_to_json, when_used="json"),
]


def check_frames(frames: np.ndarray, what: str = "frames") -> np.ndarray:
    """Validate a T×H×W×3 uint8 video; the error says what is wrong and how to fix it."""
    if not isinstance(frames, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{what} must be uint8 (0..255), got {frames.dtype}; convert with (x*255).clip(0,255).astype(np.uint8)")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must have shape T×H×W×3 (RGB), got {tuple(frames.shape)}")
    if frames.shape[0] == 0:
        raise ValueError(f"{what} is empty (0 frames); a segment needs at least 2 frames")
    return frames


def check_frame(frame: np.ndarray, what: str = "frame") -> np.ndarray:
    """Validate one H×W×3 uint8 image."""
    if not isinstance(frame, np.ndarray):
        raise TypeError(f"{what} must be a numpy array, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"{what} must be an H×W×3 uint8 RGB image, got shape {tuple(frame.shape)} dtype {frame.dtype}")
    return frame


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


@dataclass(frozen=True)
class TaskGoal:
    """A run's goal, read once where it enters (``spiral.api``): the text as given and, when the tabletop goal
    grammar reads it, its reading (``spiral.world.goals.Goal``). Every planner takes this object: the symbolic
    planner plans the reading, text planners (LLM) use the text and check their plans against the reading."""

    text: str
    tabletop: Goal | None = None  # None: the grammar does not read the text (a goal for another world)

    @classmethod
    def read(cls, text: str, required: bool = False) -> TaskGoal:
        """Read ``text`` with the tabletop grammar; ``required``: raise its GoalParseError (which names the clause
        it could not read) instead of keeping the text alone."""
        from spiral.world.goals import parse_goal

        try:
            return cls(text, parse_goal(text))
        except ValueError:
            if required:
                raise
            return cls(text)

    @classmethod
    def of(cls, goal: TaskGoal | str) -> TaskGoal:
        """``goal`` as a TaskGoal (a plain string is read here; the loop and the API pass one read already)."""
        return goal if isinstance(goal, TaskGoal) else cls.read(goal)

    def __str__(self) -> str:
        return self.text


class SubAction(_Model):
    """One object-centric step of a plan, with STRIPS-style pre/post-conditions."""

    id: int = 0
    text: str
    verb: str
    objects: list[str]
    preconditions: list[str] = Field(default_factory=list)
    postconditions: list[str] = Field(default_factory=list)


class Observation(_Model):
    """What a planner sees: a frame, a symbolic state read from it (if any), or both."""

    frame: NDArray | None = None
    state: dict[str, Any] | None = None


class Plan(_Model):
    """An ordered list of sub-actions that achieves a goal from an observed state."""

    goal: str
    steps: list[SubAction]
    rationale: str = ""


#: what joins an instruction and the critic's feedback in one text (:func:`compose_prompt`)
FEEDBACK_MARK = ". Important: "


def compose_prompt(instruction: str, feedback: str = "") -> str:
    """The one text of an instruction and the critic's feedback to address ("<instruction>. Important:
    <feedback>"; the instruction alone without feedback). Generators that take the feedback literally show the
    model this text; a run's attempts.jsonl records it as each attempt's ``prompt``."""
    return f"{instruction}{FEEDBACK_MARK}{feedback}" if feedback else instruction


class Instruction(_Model):
    """What a step tells the generator: the instruction, and beside it the critic's feedback to address (the loop's
    "refine" rung; empty when a planner rewrote the instruction from it, or on a first attempt)."""

    text: str = Field(description="the step's instruction: its own text, or a planner's rewrite")
    feedback: str = Field("", description="the critic's feedback the instruction should address, if not in the text")

    def prompt(self) -> str:
        """The two as one text (:func:`compose_prompt`)."""
        return compose_prompt(self.text, self.feedback)


class GenerationRequest(_Model):
    """What a VideoGenerator is asked to render: instruction (+ the critic's feedback) + memory context + seed."""

    prompt: str = Field(description="the instruction: the step's text (a planner's rewrite on a refine), or the goal")
    feedback: str = Field("", description=(
        "the critic's feedback to address on a refined attempt (kept apart from the instruction: a generator "
        "chooses whether to show it; compose both with prompt_text())"))
    context: str = ""  # memory-composed prompt ("Scene: …; done so far: …; now: …") for text-heavy backends
    sub_action: SubAction | None = None
    cond_frame: NDArray | None = None
    anchor_frame: NDArray | None = None
    history: list[str] = Field(default_factory=list)
    state: dict[str, Any] | None = None
    hints: dict[str, Any] = Field(default_factory=dict)  # e.g. {"scene_seed": 3} for world-aware backends
    seed: int = 0
    num_frames: int = 9
    height: int = 64
    width: int = 64

    def prompt_text(self) -> str:
        """The instruction with the critic's feedback, as one text (:func:`compose_prompt`)."""
        return compose_prompt(self.prompt, self.feedback)


def memory_prompt(scene: str, done: list[str], instruction: str) -> str:
    """The memory as one sentence for text-conditioned backends and text critics: scene, what is done, what to do
    now ("Scene: …. Done so far: …. Now: ….")."""
    scene_text = f"Scene: {scene}. " if scene else ""
    return f"{scene_text}Done so far: {'; '.join(done) or 'nothing yet'}. Now: {instruction}."


class JudgeContext(_Model):
    """What a critic knows of an attempt besides the segment and its sub-action: the memory at that point.

    The loop builds one per judgement (``Memory.judge_context``); GRPO and the critic benchmark build theirs from
    a prompt or a labelled case. Every critic reads only these fields.
    """

    goal: str = Field("", description="the run's goal text (empty outside a run)")
    history: list[str] = Field(default_factory=list, description="the texts of the steps kept so far, in order")
    scene: str = Field("", description="a description of the scene in the first frame (empty when unknown)")
    cond_frame: NDArray | None = Field(None, description="the frame the segment was generated from (the last kept one)")
    anchor_frame: NDArray | None = Field(None, description="the scene anchor: the run's first frame")
    state: dict[str, Any] | None = Field(None, description="the symbolic state observed before the segment, if known")
    hints: dict[str, Any] = Field(default_factory=dict, description=(
        "what a world-aware critic may use, e.g. {'scene_seed': 3}: the scene's look, for the artifact check"))

    def summary(self, instruction: str) -> str:
        """The memory as one sentence (:func:`memory_prompt`), ending with ``instruction``."""
        return memory_prompt(self.scene, self.history, instruction)

    @classmethod
    def of(cls, context: JudgeContext | SuppliesJudgeContext | None) -> JudgeContext | None:
        """The context a critic was given, as a JudgeContext: itself, a memory's (``spiral.memory.Memory``), or
        None when there is none."""
        if context is None or isinstance(context, JudgeContext):
            return context
        if isinstance(context, SuppliesJudgeContext):
            return context.judge_context()
        raise TypeError(f"a critic's context is a spiral.types.JudgeContext or a spiral.memory.Memory, not "
                        f"{type(context).__name__}")


@runtime_checkable
class SuppliesJudgeContext(Protocol):
    """What holds the memory of a run (``spiral.memory.Memory``) and can say what a critic should know of it."""

    def judge_context(self, goal: str = "") -> JudgeContext: ...


class Segment(_Model):
    """A rendered/generated clip; frame 0 is the conditioning frame."""

    frames: NDArray
    fps: float = 8.0
    seed: int = 0
    backend: str = ""
    timings: dict[str, float] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> Segment:
        check_frames(self.frames, "Segment.frames")
        return self


class Verdict(_Model):
    """A critic's judgement of one segment against its sub-action."""

    scores: dict[str, float]
    passed: bool
    decision: Decision
    failure: FailureKind | None = None
    feedback: str = ""
    observed_state: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> Verdict:
        for k, v in self.scores.items():
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"score {k}={v} outside [0, 1]")
        return self


class Attempt(_Model):
    """One generation attempt within a run: what was asked, what came back, what was decided."""

    step: int
    attempt: int
    prompt: str
    seed: int
    segment_path: str | None = None
    verdict: Verdict | None = None
    decision: Decision
    response: Response | None = Field(None, description=(
        "what the loop did next: the critic's decision, or a higher rung of the escalation ladder (new seed → "
        "refined instruction → re-plan → give up) when the step failed the same way again or a budget was spent; "
        "None in journals written before the field existed"))
    note: str = Field("", description="why the response differs from the critic's decision (empty when it does not)")
    seconds: dict[str, float] = Field(default_factory=dict)


class StepFailure(_Model):
    """A sub-action the generator did not make pass the critic; a re-planning planner is told to avoid it."""

    sub_action: SubAction
    failure: FailureKind | None = Field(None, description="the critic's failure kind at the last attempt")
    feedback: str = Field("", description="the critic's feedback at the last attempt")
    attempts: int = Field(0, ge=0, description="generations spent on it")


class GivenUpStep(StepFailure):
    """A step the closed loop gave up (its escalation ladder or its budget was spent) and what it kept of it."""

    plan_version: int = Field(description="the plan version whose step was given up")
    step: int = Field(description="the index of the step in that plan (0-based)")
    reason: str = Field(description="why it was given up")
    kept: str | None = Field(None, description=(
        "the best-scoring attempt's segment, kept as an unverified step (loop.on_budget_exhausted: keep_best); "
        "None when the run stopped there"))


RunStatus = Literal["running", "success", "completed_unverified", "budget_exhausted", "failed"]


class VideoReading(_Model):
    """How the critic reads one candidate video of a run (the open-loop fallback compares two of them)."""

    goal_met: bool | None = Field(description=(
        "the planner's goal check on the critic's reading of the last frame; None when either cannot tell"))
    failed_steps: int = Field(ge=0, description=(
        "steps of the video the critic did not pass: kept unverified, or kept as what happened instead of the "
        "step asked"))
    steps: int = Field(ge=0, description="steps in the video")


class OpenLoopFallback(_Model):
    """The open-loop fallback of a closed-loop run that followed another plan than its first and could not verify
    every step (``loop.open_loop_fallback``): the first plan rolled out as ``plan_only`` does, judged, and kept
    when the critic reads it as the better video."""

    closed_loop: VideoReading = Field(description="the closed loop's own video")
    open_loop: VideoReading = Field(description="the open-loop rollout of the first plan")
    used: bool = Field(description="whether the open-loop rollout is the run's video")
    reason: str = Field(description="why it was or was not used")


class RunRecord(_Model):
    """The summary of a run: status, plan history, attempts, counts and costs.

    ``status``: ``success`` (every step passed the critic and the goal check), ``completed_unverified`` (the run
    reached the end of its plan, but some kept steps were not passed by a critic, or the final state does not
    meet the goal: see ``stop_reason``, ``unverified`` and ``given_up``), ``budget_exhausted`` (the run stopped
    before the end of its plan: a step was given up under ``on_budget_exhausted: stop``, or the total budget ran
    out), ``failed`` (an error).
    """

    goal: str
    status: RunStatus = "running"
    stop_reason: str = ""
    mode: str = "closed_loop"
    plans: list[Plan] = Field(default_factory=list)
    attempts: list[Attempt] = Field(default_factory=list)
    accepted: list[str] = Field(default_factory=list)  # the kept segments, in video order
    unverified: list[str] = Field(default_factory=list, description=(
        "kept segments no critic passed: every segment of an open-loop run, and the best attempts the closed loop "
        "kept of the steps it gave up (on_budget_exhausted: keep_best)"))
    given_up: list[GivenUpStep] = Field(default_factory=list, description="steps the closed loop gave up, in order")
    step_boundaries: list[int] = Field(default_factory=list)
    final_video: str | None = None
    final_state: dict[str, Any] | None = None  # the state observed in the last accepted frame, if the critic reads states
    counts: dict[str, int] = Field(default_factory=dict)
    costs: dict[str, float] = Field(default_factory=dict)
    resumes: list[dict[str, Any]] = Field(default_factory=list, description=(
        "each resume that changed a setting: {'at': time, 'changed': {key: [old, new]}}"))
    fallback: OpenLoopFallback | None = Field(None, description=(
        "the open-loop fallback, when the closed loop ran one (loop.open_loop_fallback)"))


class NextStepQuestion(_Model):
    """A multiple-choice next-step question (EgoPlan-Bench's form): given the goal, the steps done so far and the
    current observation, which of four candidate actions comes next? A planner with the ``ChoosesNextStep``
    capability (``spiral.agents``) answers it directly; ``spiral.bench.planner_eval`` builds it from a question file."""

    id: str = Field(description="the question's sample_id")
    goal: str = Field(description="the task goal (EgoPlan's task_goal)")
    question: str = Field("", description="the question text as published (informational)")
    choices: list[str] = Field(min_length=4, max_length=4, description="the four candidate next actions, A to D")
    progress: list[str] = Field(default_factory=list, description="the actions executed so far, oldest first")
    frame: NDArray | None = Field(None, description="the current observation frame (H×W×3 uint8), when available")
    state: dict[str, Any] | None = Field(None, description="the symbolic state now, when known (tabletop questions)")
    world: str | None = Field(None, description="the world the question is set in ('tabletop'), if a known one")
