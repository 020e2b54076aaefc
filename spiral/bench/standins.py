"""Stand-in backends that exercise the benchmark without learned models.

``bench-world`` is the tabletop renderer as a generator that remembers the true state of
every frame it rendered (so it needs no recogniser to read its own conditioning frames), and
``bench-truth`` is a critic that reads the generator's reported ground truth. Together they
make a closed loop whose every decision is exact: tests use them to check the runner
(resume, workers, Ray) without waiting for trained weights, and the oracle critic is an upper
bound for the learned one. They are never the benchmark's judge.

In open-loop modes a *resumed* run differs from an uninterrupted one: the generator only knows
frames it rendered in this process, and the loop keeps no state without a critic. Tests resume
closed-loop runs, whose replayed verdicts carry the state.

Import this module (``spiral bench --plugin spiral.bench.standins``) to register them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spiral import registry
from spiral.generators.world import WorldGenerator
from spiral.types import GenerationRequest, Segment, SubAction, Verdict
from spiral.world.domain import State, changed_objects
from spiral.world.render import FAILURE_KIND


@registry.register("generator", "bench-world")
class TruthWorldGenerator(WorldGenerator):
    """The world generator, reading each conditioning frame's state from its own memory of what it rendered."""

    name = "bench-world"

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._known: dict[bytes, State] = {}

    def _state(self, request: GenerationRequest) -> State:
        if request.cond_frame is not None:
            known = self._known.get(np.ascontiguousarray(request.cond_frame).tobytes())
            if known is not None:
                return known
        if request.state is not None:
            return State.from_dict(request.state)
        if "scene_seed" in request.hints:
            from spiral.world.goals import sample_state

            return sample_state(np.random.default_rng(int(request.hints["scene_seed"])))
        raise ValueError("bench-world cannot tell the state of this conditioning frame: give a scene seed")

    def generate(self, request: GenerationRequest) -> Segment:
        seg = super().generate(request)
        self._known[np.ascontiguousarray(seg.frames[-1]).tobytes()] = State.from_dict(seg.meta["end_state"])
        return seg


@registry.register("critic", "bench-truth")
class TruthCritic:
    """Oracle critic: judges a segment by the generator's reported start and end states."""

    name = "bench-truth"

    def judge(self, segment: Segment, sub_action: SubAction, context: Any) -> Verdict:
        meta = segment.meta
        if "end_state" not in meta or "state" not in meta:
            raise ValueError("the bench-truth critic needs a generator that reports meta['state'] and "
                             "meta['end_state'] (the world generators do)")
        s0, s1 = State.from_dict(meta["state"]), State.from_dict(meta["end_state"])
        failure = meta.get("failure")
        action = all(s1.holds(p) for p in sub_action.postconditions)
        extra = sorted(changed_objects(s0, s1) - set(sub_action.objects))
        scores = {"action": float(action), "preservation": float(not extra),
                  "continuity": float(failure != "teleport"), "consistency": float(failure != "drift")}
        passed = all(v == 1.0 for v in scores.values())
        if passed:
            return Verdict(scores=scores, passed=True, decision="accept", observed_state=s1.to_dict())
        kind = FAILURE_KIND.get(failure or "", "physical_violation" if extra else "incomplete_action")
        if extra or (not action and changed_objects(s0, s1)):
            decision, why = "replan", f"unexpected change of {', '.join(extra) or 'the scene'}"
        else:
            decision, why = "regenerate", f"'{sub_action.text}' did not happen as asked ({failure or 'no change'})"
        return Verdict(scores=scores, passed=False, decision=decision, failure=kind, feedback=why,
                       observed_state=s1.to_dict())
