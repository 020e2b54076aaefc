"""The tabletop renderer used as a VideoGenerator — an oracle, not a learned model.

It reads the starting state from the conditioning frame with the critic's state
recogniser (or, when asked, from the memory's state), renders the requested sub-action
exactly, and injects failures of each kind at a configured rate, seeded by the request.
It is the loop's test bench and the benchmark's upper bound; reports name it as such.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from spiral.options import BackendOptions
from spiral.types import GenerationRequest, Segment
from spiral.world import domain
from spiral.world.domain import Action, State
from spiral.world.render import FAILURES, Appearance, render_action


class WorldOptions(BackendOptions):
    """Options of the ``world`` generator."""

    failure_rate: float = Field(0.0, ge=0, le=1, description="chance that a segment shows one of `failures`")
    failures: list[Literal[FAILURES]] | None = Field(None, description="failure kinds to inject (default: all)")
    read_state: Literal["frame", "memory"] = Field(
        "frame", description="where the start state comes from: the recogniser on the conditioning frame, or "
                             "the memory's state")
    fps: float = Field(8.0, gt=0, description="frame rate of the segments")


class WorldGenerator:
    """Oracle generator over the tabletop world with seeded failure injection."""

    name = "world"
    is_oracle = True
    options_model = WorldOptions

    def __init__(self, failure_rate: float = 0.0, failures: list[str] | None = None,
                 read_state: Literal["frame", "memory"] = "frame", fps: float = 8.0):
        if not 0.0 <= failure_rate <= 1.0:
            raise ValueError(f"failure_rate must be in [0, 1], got {failure_rate}")
        unknown = sorted(set(failures or []) - set(FAILURES))
        if unknown:
            raise ValueError(f"unknown failure kinds {unknown}; known: {', '.join(FAILURES)}")
        self.failure_rate, self.failures = failure_rate, tuple(failures or FAILURES)
        self.read_state, self.fps = read_state, fps
        self._recognizer = None
        self._goals: dict = {}  # single_shot: goal text → its reading in the first state ("swap …" is read once)

    def start_run(self) -> None:
        """A new run: goal readings of the last one are forgotten (the same words may mean other moves there)."""
        self._goals.clear()

    def _state(self, request: GenerationRequest) -> State:
        if self.read_state == "memory" and request.state is not None:
            return State.from_dict(request.state)
        if request.cond_frame is None:
            raise ValueError("the world generator needs a conditioning frame (request.cond_frame)")
        if self._recognizer is None:
            from spiral.critics.recognizer import load_recognizer

            self._recognizer = load_recognizer()
        return self._recognizer.read_state(request.cond_frame)

    def _action(self, request: GenerationRequest, state: State) -> Action | None:
        if request.sub_action is not None:
            return Action(request.sub_action.verb, tuple(request.sub_action.objects))
        # single_shot: only the goal text; an oracle would do the first step of an optimal plan
        from spiral.planners.symbolic import SymbolicPlanner
        from spiral.world.goals import parse_goal

        goal = self._goals.get(request.prompt)
        if goal is None:  # a scene-relative goal is read against the first state it is planned from
            goal = self._goals[request.prompt] = SymbolicPlanner().resolve(parse_goal(request.prompt), state)
        steps = SymbolicPlanner().solve(state, goal)
        return steps[0] if steps else None

    def generate(self, request: GenerationRequest) -> Segment:
        t0 = time.perf_counter()
        rng = np.random.default_rng(request.seed)
        size = request.height
        if request.width != size:
            raise ValueError(f"the world generator renders square frames; got {request.height}x{request.width}")
        state = self._state(request)
        look = Appearance.sample(request.hints["scene_seed"]) if "scene_seed" in request.hints else Appearance.default()
        action = self._action(request, state)
        failure = None
        if rng.random() < self.failure_rate:
            failure = self.failures[int(rng.integers(len(self.failures)))]
        if action is None or not domain.is_applicable(state, action):
            # the step cannot happen from what is on screen: render the scene standing still
            frame = request.cond_frame if request.cond_frame is not None else None
            frames = np.repeat(frame[None], request.num_frames, axis=0)
            meta = {"failure": "not_applicable", "state": state.to_dict(), "end_state": state.to_dict()}
        else:
            res = render_action(state, action, appearance=look, seed=int(rng.integers(2**31)), size=size,
                                frames=request.num_frames, failure=failure)
            frames = res.frames
            if request.cond_frame is not None:
                frames = frames.copy()
                frames[0] = request.cond_frame  # a generator keeps its conditioning frame
            meta = {"failure": res.failure, "state": state.to_dict(), "end_state": res.end_state.to_dict()}
        return Segment(frames=frames, fps=self.fps, seed=request.seed, backend=self.name,
                       timings={"generate": time.perf_counter() - t0}, meta=meta)
