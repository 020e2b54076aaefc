"""Memory: what every generation is conditioned on (DESIGN §1).

The same object serves every backend: image-conditioned generators read the last accepted
frame and the scene anchor; text-conditioned ones read the composed prompt
("Scene: …; done so far: …; now: …"); state-aware ones read the observed state.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spiral.types import (
    GenerationRequest,
    JudgeContext,
    SubAction,
    Verdict,
    check_frame,
    compose_prompt,
    memory_prompt,
)


@dataclass
class MemoryEntry:
    """One accepted step: the sub-action, the verdict that accepted it, the state after it."""

    sub_action: SubAction
    verdict: Verdict | None
    state: dict[str, Any] | None


@dataclass
class Memory:
    """Last accepted frame, scene anchor (first frame), observed state and step history."""

    anchor_frame: np.ndarray
    last_frame: np.ndarray
    state: dict[str, Any] | None = None
    history: list[MemoryEntry] = field(default_factory=list)
    scene: str = ""
    hints: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def start(cls, first_frame: np.ndarray, state: dict[str, Any] | None = None, scene: str = "",
              hints: dict[str, Any] | None = None) -> Memory:
        check_frame(first_frame, "first frame")
        return cls(anchor_frame=first_frame, last_frame=first_frame, state=state, scene=scene or describe_state(state),
                   hints=dict(hints or {}))

    def prompt(self, instruction: str) -> str:
        """Prompt for text-conditioned backends: scene, what is done, what to do now."""
        return memory_prompt(self.scene, [e.sub_action.text for e in self.history], instruction)

    def judge_context(self, goal: str = "") -> JudgeContext:
        """What a critic knows of the next attempt: goal, steps kept so far, conditioning and anchor frames,
        observed state, hints."""
        return JudgeContext(goal=goal, history=[e.sub_action.text for e in self.history], scene=self.scene,
                            cond_frame=self.last_frame, anchor_frame=self.anchor_frame, state=self.state,
                            hints=self.hints)

    def context(self, sub_action: SubAction | None, instruction: str, seed: int, num_frames: int, height: int,
                width: int, feedback: str = "") -> GenerationRequest:
        """The generation request for one attempt at ``sub_action`` (``feedback``: the critic's, on a refine)."""
        return GenerationRequest(
            prompt=instruction, feedback=feedback, context=self.prompt(compose_prompt(instruction, feedback)),
            sub_action=sub_action, cond_frame=self.last_frame, anchor_frame=self.anchor_frame,
            history=[e.sub_action.text for e in self.history], state=self.state, hints=self.hints, seed=seed,
            num_frames=num_frames, height=height, width=width,
        )

    def commit(self, frames: np.ndarray, sub_action: SubAction, verdict: Verdict | None, state: dict | None) -> None:
        """Record an accepted segment: its last frame conditions the next step."""
        self.last_frame = frames[-1]
        if state is not None:
            self.state = state
        self.history.append(MemoryEntry(sub_action, verdict, self.state))


def describe_state(state: dict[str, Any] | None) -> str:
    """The scene sentence of a start state (tabletop states; empty for others): what :meth:`Memory.start` uses."""
    if not state:
        return ""
    try:
        from spiral.world.domain import State, describe

        return describe(State.from_dict(state))
    except ValueError:
        return ""
