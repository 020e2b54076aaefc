import numpy as np
import pytest
from pydantic import ValidationError

from spiral.types import Attempt, GenerationRequest, Plan, RunRecord, Segment, SubAction, Verdict


def _sub(i=0):
    return SubAction(id=i, text="move the red block into the box", verb="move", objects=["red_block", "box"],
                     preconditions=["clear(red_block)", "open(box)"], postconditions=["in(red_block, box)"])


def test_plan_roundtrip():
    p = Plan(goal="put the red block in the box", steps=[_sub(0), _sub(1)], rationale="test")
    assert Plan.model_validate_json(p.model_dump_json()) == p


def test_segment_roundtrip_is_exact():
    frames = np.random.default_rng(0).integers(0, 256, (9, 16, 16, 3), dtype=np.uint8)
    s = Segment(frames=frames, fps=8, seed=3, backend="x", timings={"generate": 0.1})
    s2 = Segment.model_validate_json(s.model_dump_json())
    assert np.array_equal(s2.frames, frames) and s2.frames.dtype == np.uint8
    assert s2.seed == 3 and s2.timings == {"generate": 0.1}


def test_request_roundtrip_with_frames():
    f = np.zeros((8, 8, 3), np.uint8)
    f[2, 3] = 7
    r = GenerationRequest(prompt="x", sub_action=_sub(), cond_frame=f, anchor_frame=f, history=["a"], seed=5)
    r2 = GenerationRequest.model_validate_json(r.model_dump_json())
    assert np.array_equal(r2.cond_frame, f) and r2.sub_action == r.sub_action


def test_verdict_attempt_record_roundtrip():
    v = Verdict(scores={"action": 0.2, "preservation": 1.0}, passed=False, decision="refine",
                failure="incomplete_action", feedback="the red block stopped above the box", observed_state={"a": 1})
    a = Attempt(step=0, attempt=1, prompt="p", seed=2, segment_path="segments/0.mp4", verdict=v, decision="refine",
                seconds={"generate": 1.0})
    r = RunRecord(goal="g", plans=[Plan(goal="g", steps=[_sub()])], attempts=[a], accepted=["s"], counts={"calls": 1})
    assert RunRecord.model_validate_json(r.model_dump_json()) == r


@pytest.mark.parametrize("frames,msg", [
    (np.zeros((9, 8, 8, 3), np.float32), "uint8"),
    (np.zeros((9, 8, 8), np.uint8), "T×H×W×3"),
    (np.zeros((0, 8, 8, 3), np.uint8), "empty"),
])
def test_segment_rejects_bad_frames(frames, msg):
    with pytest.raises(ValidationError, match=msg):
        Segment(frames=frames)


def test_verdict_rejects_out_of_range_and_unknown_fields():
    with pytest.raises(ValidationError, match="outside"):
        Verdict(scores={"action": 1.5}, passed=True, decision="accept")
    with pytest.raises(ValidationError, match="decision"):
        Verdict(scores={}, passed=True, decision="maybe")
    with pytest.raises(ValidationError, match="Extra inputs"):
        SubAction(text="x", verb="move", objects=[], colour="red")
