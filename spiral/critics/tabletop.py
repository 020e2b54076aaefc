"""The embedded CriticAgent: reads every frame of a segment and says what happened and what to do.

Each frame is read by the state recogniser (:mod:`spiral.critics.recognizer`, one batched call);
four scores in [0, 1] follow from the readings:

- ``action``: the sub-action's post-conditions hold in the last frame (probability of the least
  likely one, from the calibrated marginals; a block still held or in mid-air is at no location,
  :func:`end_locations`);
- ``preservation``: every object the sub-action does not act on is where it was in frame 0;
- ``continuity``: every in-between frame is plausible. Per block, a Viterbi pass over the frame
  readings compares the best explanation that only uses physical transitions (rest → held → rest,
  held → elsewhere → held) with one that may also use forbidden ones (a jump between two rest
  locations = *sudden switch*; rest ↔ elsewhere without the gripper = *moved by itself*); the
  log-likelihood gap is the evidence of a violation. The lid may not jump closed → open; the lamp
  may only change while the cord is pulled; the gripper may not jump;
- ``consistency``: the static background (wall and table bands, lamp-normalised) stays as in
  frame 0 and as in the memory's anchor frame (no drift).

The failure kind and the decision follow explicit rules (first match wins), each configurable
through :class:`CriticConfig` (``decisions`` maps a cause to a decision):

1. background drift → ``scene_drift`` / regenerate;
2. continuity violation → ``sudden_switch`` when the acted-on object (or the gripper) jumps, else
   ``physical_violation`` (an object moved without the gripper: any change of an object the
   sub-action does not act on, or the acted-on object sliding unheld) / regenerate;
3. the last frame is not at rest (a block held or somewhere invalid, lid half open) → ``incomplete_action`` / refine;
4. post-conditions hold: something else changed → ``physical_violation`` / regenerate; else accept;
5. post-conditions fail: the acted-on object changed but ended elsewhere → ``incomplete_action`` / replan;
   another object changed (a valid but unexpected state) → ``missing_action`` / replan; the cord was
   pulled but the lamp did not change → ``incomplete_action`` / refine; nothing changed → ``missing_action`` / refine.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from spiral.critics.recognizer import Recognizer, decode_states, layout_marginals, load_recognizer
from spiral.memory import Memory
from spiral.models.recognizer import ELSEWHERE, HELD, LID_CLASSES, LIGHT_CLASSES, LOC_CLASSES
from spiral.types import (
    SCORES,
    Decision,
    FailureKind,
    JudgeContext,
    Segment,
    SubAction,
    Verdict,
    check_frame,
    check_frames,
    combine_scores,
)
from spiral.world import domain
from spiral.world.domain import BLOCKS, BOX, LAMP, SLOTS, Action, DomainError, Pred, State

_N_LOC = len(LOC_CLASSES)
_REST = [i for i in range(_N_LOC) if i not in (HELD, ELSEWHERE)]

#: cause → failure kind (the cause names are the keys of ``CriticConfig.decisions``)
CAUSE_KIND: dict[str, FailureKind | None] = {
    "drift": "scene_drift",
    "jump": "sudden_switch",
    "moved_by_itself": "physical_violation",
    "extra_change": "physical_violation",
    "not_at_rest": "incomplete_action",
    "lamp_not_switched": "incomplete_action",
    "wrong_result": "incomplete_action",
    "wrong_object": "missing_action",
    "no_change": "missing_action",
    "artifact": "physical_violation",
}


class CriticConfig(BaseModel):
    """Thresholds, reward weights and decision rules of the tabletop critic."""

    model_config = ConfigDict(extra="forbid")

    thresholds: dict[str, float] = Field(
        default_factory=lambda: {"action": 0.5, "preservation": 0.5, "continuity": 0.5, "consistency": 0.5},
        description="a score below its threshold fails the segment")
    weights: dict[str, float] = Field(
        default_factory=lambda: {"action": 0.4, "preservation": 0.2, "continuity": 0.2, "consistency": 0.2},
        description="reward = weighted mean of the scores")
    decisions: dict[str, Decision] = Field(default_factory=lambda: {
        "drift": "regenerate", "jump": "regenerate", "moved_by_itself": "regenerate", "extra_change": "regenerate",
        "not_at_rest": "refine", "lamp_not_switched": "refine", "no_change": "refine",
        "wrong_result": "replan", "wrong_object": "replan", "artifact": "regenerate"})
    start_from: str = Field("frame", pattern="^(frame|memory)$",
                            description="start state: read from frame 0, or the memory's state when it has one")
    violation_nats: float = Field(4.0, gt=0, description="log-likelihood gap at which continuity scores 0.5")
    drift_units: float = Field(20.0, gt=0, description="background change (RGB distance, 0..255) within a segment "
                                                       "at which consistency scores 0.5")
    anchor_drift_units: float = Field(28.0, gt=0, description="same, against the memory's anchor frame")
    artifact_area: float = Field(0.004, ge=0, le=1, description=(
        "when the scene's look is known (the memory's hints.scene_seed): the fraction of the last frame that may "
        "differ by more than 64 grey levels from a render of the state read there (a noise patch read as a block, "
        "a block that vanished) before consistency scores 0.5; 0 turns the check off"))
    gripper_jump: float = Field(0.85, gt=0, description="gripper displacement between consecutive frames (scene widths, "
                                                        "at 9 frames per segment; scaled by 8/(T-1)) that is a jump; "
                                                        "rendered paths move up to 0.67")
    pull_min: float = Field(0.5, ge=0, le=1, description="probability above which the lamp cord counts as pulled")
    recognizer: str | None = Field(None, description="path of recogniser weights (default: the shipped ones)")
    threads: int | None = Field(None, ge=1, description="if set, torch.set_num_threads(threads) once for the process "
                                                        "(1 is fastest on a shared CPU; see benchmarks/critic_speed.py)")


def _cfg(config: CriticConfig | dict | None, options: dict[str, Any]) -> CriticConfig:
    base = config.model_dump() if isinstance(config, CriticConfig) else dict(config or {})
    for k, v in options.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        elif k in ("thresholds", "weights", "decisions") and isinstance(v, dict):
            base[k] = v
        else:
            base[k] = v
    cfg = CriticConfig.model_validate(base)
    defaults = CriticConfig()
    for name in ("thresholds", "weights"):
        d = getattr(cfg, name)
        unknown = set(d) - set(SCORES)
        if unknown:
            raise ValueError(f"unknown score name(s) {sorted(unknown)} in critic {name}; scores: {', '.join(SCORES)}")
        setattr(cfg, name, {**getattr(defaults, name), **d})
    unknown = set(cfg.decisions) - set(CAUSE_KIND)
    if unknown:
        raise ValueError(f"unknown cause(s) {sorted(unknown)} in critic decisions; causes: {', '.join(CAUSE_KIND)}")
    cfg.decisions = {**defaults.decisions, **cfg.decisions}
    return cfg


# ---------------------------------------------------------------- background statistics (drift)
def _bands(size: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Wall band (below the shelf, right of the lamp, left of an open lid) and table-front band, in pixels."""
    s = size / 64.0
    wall = (slice(round(15 * s), round(19 * s)), slice(round(20 * s), round(60 * s)))
    table = (slice(round(58 * s), size), slice(0, size))
    return wall, table


def band_colors(frames: np.ndarray) -> np.ndarray:
    """Median RGB of the wall band and of the table band per frame: T×2×3 (float)."""
    wall, table = _bands(frames.shape[1])
    w = np.median(frames[:, wall[0], wall[1]].reshape(len(frames), -1, 3), axis=1)
    t = np.median(frames[:, table[0], table[1]].reshape(len(frames), -1, 3), axis=1)
    return np.stack([w, t], 1).astype(np.float64)


@lru_cache(maxsize=1)
def _lamp_model() -> np.ndarray:
    """Per band and channel (gain, offset) with on = gain·off + offset, fit on rendered looks with the lamp off/on."""
    from spiral.world.render import Appearance, render_state
    from spiral.world.tasks import sample_state

    offs, ons = [], []
    for k in range(24):
        rng = np.random.default_rng([k, 4242])
        st = sample_state(rng)
        app = Appearance.sample(int(2**31 + 7 * k))
        pair = np.stack([render_state(st, appearance=app, gripper=False, light=v) for v in (0.0, 1.0)])
        c = band_colors(pair)
        offs.append(c[0])
        ons.append(c[1])
    off, on = np.stack(offs), np.stack(ons)  # K×2×3
    model = np.zeros((2, 3, 2))
    for b in range(2):
        for ch in range(3):
            a = np.stack([off[:, b, ch], np.ones(len(off))], 1)
            model[b, ch] = np.linalg.lstsq(a, on[:, b, ch], rcond=None)[0]
    return model


def lamp_normalised(colors: np.ndarray, light: np.ndarray) -> np.ndarray:
    """Band colours as they would look with the lamp off (linear in the light level, as the renderer is)."""
    m = _lamp_model()
    gain, off = m[..., 0], m[..., 1]
    lv = np.clip(light, 0, 1)[:, None, None]
    return (colors - lv * off) / (1 + lv * (gain - 1))


# ---------------------------------------------------------------- continuity: Viterbi per block
def _transition_kinds() -> np.ndarray:
    """12×12 matrix: 0 allowed, 1 jump between rest locations, 2 motion without the gripper (rest ↔ elsewhere)."""
    k = np.zeros((_N_LOC, _N_LOC), np.int64)
    for a in _REST:
        for b in _REST:
            if a != b:
                k[a, b] = 1
        k[a, ELSEWHERE] = k[ELSEWHERE, a] = 2
    return k


_KINDS = _transition_kinds()
#: lid: closed ↔ open directly is a jump; lamp: off ↔ on directly is a jump, via partial it moved by itself
_LID_KINDS = np.array([[0, 0, 1], [0, 0, 0], [1, 0, 0]])
_LAMP_KINDS = np.array([[0, 2, 1], [2, 0, 2], [1, 2, 0]])


def _viterbi(logp: np.ndarray, penalty: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best paths through B×T×C log-probabilities with per-sequence transition penalties (B×C×C, or
    B×(T-1)×C×C per step; from × to). Returns (scores B, paths B×T)."""
    b_n, t_n, c_n = logp.shape
    score = logp[:, 0].copy()
    back = np.zeros((b_n, t_n, c_n), np.int64)
    for t in range(1, t_n):
        cand = score[:, :, None] - (penalty if penalty.ndim == 3 else penalty[:, t - 1])
        back[:, t] = cand.argmax(1)
        score = np.take_along_axis(cand, back[:, t][:, None, :], 1)[:, 0] + logp[:, t]
    paths = np.empty((b_n, t_n), np.int64)
    paths[:, -1] = score.argmax(-1)
    rows = np.arange(b_n)
    for t in range(t_n - 1, 0, -1):
        paths[:, t - 1] = back[rows, t, paths[:, t]]
    return score.max(-1), paths


def _violation(logp: np.ndarray, kinds: np.ndarray, nats: float
               ) -> list[tuple[float, list[tuple[int, int, int, int]], list[int]]]:
    """For each of B sequences of readings (B×T×C log-probabilities): the evidence (nats) that it needs
    forbidden transitions, which ones, and its best physically allowed path.

    ``kinds`` (C×C, or per step (T-1)×C×C, shared by the batch) is 0 for an allowed transition, else a
    violation code. The evidence is the log-likelihood gain of the best path that may pay ``nats`` per
    forbidden transition over the best path that uses allowed ones only; events are (t, from, to, code).
    """
    b_n = len(logp)
    pen = np.stack([np.where(kinds > 0, 1e6, 0.0)] * b_n + [np.where(kinds > 0, nats, 0.0)] * b_n)
    scores, paths = _viterbi(np.concatenate([logp, logp]), pen)
    out = []
    for b in range(b_n):
        path = paths[b_n + b]

        def code(t: int, path: np.ndarray = path) -> int:
            k = kinds if kinds.ndim == 2 else kinds[t - 1]
            return int(k[path[t - 1], path[t]])

        events = [(t, int(path[t - 1]), int(path[t]), code(t)) for t in range(1, len(path)) if code(t)]
        gap = scores[b_n + b] + nats * len(events) - scores[b]
        out.append((max(0.0, float(gap)), events, [int(x) for x in paths[b]]))
    return out


def _sigmoid_score(evidence: float, at_half: float, sharpness: float = 1.0) -> float:
    """1 with no evidence, 0.5 at ``at_half``, → 0 beyond (logistic in the evidence)."""
    z = np.clip(sharpness * (evidence - at_half), -50, 50)
    return float(1.0 / (1.0 + np.exp(z)))


# ---------------------------------------------------------------- wording
def _where(loc: str) -> str:
    if loc == BOX:
        return "in the box"
    if loc in SLOTS:
        return f"on the {domain.name(loc)}"
    if loc in BLOCKS:
        return f"on the {domain.name(loc)}"
    if loc == "held":
        return "in the gripper"
    return "at no valid location (between slots or in mid-air)"


def _goal_phrase(action: Action) -> str:
    if action.verb == "move":
        b, d = action.args
        return f"it must end {_where(d)}" if d != b else ""
    return {"open": "the lid must end fully open", "close": "the lid must end fully closed",
            "switch_on": "the lamp must end on", "switch_off": "the lamp must end off"}[action.verb]


def _obj_state(s: State, obj: str) -> str:
    if obj == BOX:
        return "open" if s.box_open else "closed"
    if obj == LAMP:
        return "on" if s.lamp_on else "off"
    return s.where(obj)


def _goal_state(action: Action) -> str:
    """What ``action`` makes of the object it acts on (as :func:`_obj_state` words it)."""
    if action.verb == "move":
        return action.args[1]
    return {"open": "open", "close": "closed", "switch_on": "on", "switch_off": "off"}[action.verb]


def _changed(a: State, b: State) -> list[str]:
    return [o for o in (*BLOCKS, BOX, LAMP) if _obj_state(a, o) != _obj_state(b, o)]


def _where_to(loc: str) -> str:
    if loc == BOX:
        return "into the box"
    return f"{'to' if loc in SLOTS else 'onto'} the {domain.name(loc)}"


def _change_text(obj: str, a: State, b: State) -> str:
    if obj == BOX:
        return "the box was " + ("opened" if b.box_open else "closed")
    if obj == LAMP:
        return "the lamp was switched " + ("on" if b.lamp_on else "off")
    return f"the {domain.name(obj)} was moved {_where_to(b.where(obj))}"


def end_locations(loc: np.ndarray) -> np.ndarray:
    """Where each block is in the last frame (4×C, or N×4×C for N frames): the valid-layout marginals over the
    rest locations, weighted by the probability that the block is at rest at all; held and elsewhere keep their
    raw readings.

    Why: a block still in the gripper above the box is not *in* the box. The layout marginals alone are
    conditional on every block being at rest, so they would score it as a likely success.
    """
    loc = np.asarray(loc, np.float64)
    one = loc.ndim == 2
    loc = loc[None] if one else loc
    rest = np.clip(1.0 - loc[..., HELD] - loc[..., ELSEWHERE], 0.0, 1.0)
    out = layout_marginals(loc) * rest[..., None]
    out[..., HELD], out[..., ELSEWHERE] = loc[..., HELD], loc[..., ELSEWHERE]
    return out[0] if one else out


# ---------------------------------------------------------------- the critic
class TabletopCritic:
    """CriticAgent for the tabletop world: scores, failure kind, decision and feedback from frame readings."""

    name = "tabletop"
    options_model = CriticConfig  # the config options are CriticConfig's fields

    def __init__(self, config: CriticConfig | dict | None = None, recognizer: Recognizer | str | Path | None = None,
                 **options: Any):
        """``recognizer``: a loaded :class:`Recognizer`, or a weights path (as the ``recognizer`` config option)."""
        if isinstance(recognizer, (str, Path)):
            options["recognizer"], recognizer = str(recognizer), None
        self.config = _cfg(config, options)
        if self.config.threads:
            import torch

            torch.set_num_threads(self.config.threads)
        self.recognizer = recognizer or load_recognizer(self.config.recognizer)
        self._anchor_key: tuple | None = None
        self._anchor_val: tuple[np.ndarray, float] | None = None

    # -- public API
    def observe(self, frame: np.ndarray) -> State:
        """The recognised (most probable valid) state of one frame, for re-planning."""
        check_frame(frame, "frame")
        return self.recognizer.read_state(frame)

    def reward(self, segment: Segment, sub_action: SubAction, context: JudgeContext | Memory | None = None) -> float:
        """Weighted mean of the four scores (configured weights), for GRPO."""
        return self.combine(self.judge(segment, sub_action, context).scores)

    def combine(self, scores: dict[str, float]) -> float:
        """Weighted mean of scores with the configured weights (:func:`spiral.types.combine_scores`)."""
        return combine_scores(scores, self.config.weights)

    def judge(self, segment: Segment, sub_action: SubAction, context: JudgeContext | Memory | None = None) -> Verdict:
        """Judge one segment against its sub-action and the memory context (anchor frame, state, scene look)."""
        frames = self._check_segment(segment)
        action, post = self._check_sub_action(sub_action)
        ctx = JudgeContext.of(context)
        anchor, mem_state = self._context(ctx, frames)
        r = self.recognizer.predict(frames)
        s0, s_end = decode_states(self._start_end(r))
        if self.config.start_from == "memory" and mem_state is not None:
            s0 = mem_state
        if not post:  # no post-conditions given: the domain's effects of the action from the observed start
            already = action.verb == "move" and s0.where(action.args[0]) == action.args[1]
            post = [Pred.parse(p) for p in (domain.effects(s0, action) if not already else [])]
        cfg = self.config

        end = {"loc": end_locations(r["loc"][-1]), "lid": r["lid"][-1], "light": r["light"][-1]}
        action_score = min((self._pred_prob(p, end) for p in post), default=1.0)
        target = self._target(action)
        untouched = [o for o in (*BLOCKS, BOX, LAMP) if o != target]
        keep = {o: self._same_prob(o, s0, end) for o in untouched}
        preservation = min(keep.values())
        cont, events, paths = self._continuity(r)
        drift_within, drift_anchor = self._drift(frames, r, anchor)
        steady = min(_sigmoid_score(drift_within / cfg.drift_units, 1.0, 6.0),
                     _sigmoid_score(drift_anchor / cfg.anchor_drift_units, 1.0, 6.0))
        area = self._artifact_area(frames[-1], s_end, ctx)
        faithful = _sigmoid_score(area / cfg.artifact_area, 1.0, 6.0) if area is not None else 1.0
        consistency = min(steady, faithful)
        scores = {"action": float(np.clip(action_score, 0, 1)), "preservation": float(np.clip(preservation, 0, 1)),
                  "continuity": cont, "consistency": consistency}
        th = cfg.thresholds
        cause, feedback = None, ""
        # where each block ends on its best physical path (a block read "elsewhere" after a drop stays there even
        # when the last frame alone leans towards the nearby slot)
        not_rest = [(b, paths[b][-1]) for b in BLOCKS if paths[b][-1] in (HELD, ELSEWHERE)]
        lid_partial = r["lid"][-1, 1] > 0.5
        if steady < th["consistency"]:
            cause = "drift"
            units = max(drift_within, drift_anchor)
            feedback = (f"the scene's colours drifted (the background changed by about {units:.0f}/255); keep the "
                        "wall, table and lighting exactly as in the first frame")
        elif faithful < th["consistency"]:
            cause = "artifact"
            feedback = (f"{100 * area:.1f} % of the last frame differs from a clean picture of the scene the critic "
                        "reads in it (a patch of noise, or a block that vanished); draw every block whole, in its own "
                        "colour")
        elif cont < th["continuity"]:
            cause, feedback = self._continuity_feedback(events, action)
        elif not_rest or lid_partial:
            cause = "not_at_rest"
            feedback = self._not_rest_feedback(not_rest, lid_partial, action, r)
        elif scores["action"] >= th["action"]:
            changed = [o for o in untouched if keep[o] < th["preservation"]]
            if changed:
                cause = "extra_change"
                what = " and ".join(_change_text(o, s0, s_end) for o in changed)
                feedback = (f"{what} although only the {domain.name(target)} should change; keep everything "
                            "else still")
            else:
                feedback = f"done: {action.text()}; nothing else changed"
        else:
            changed = _changed(s0, s_end)
            others = [o for o in changed if o != target]
            if target in changed and all(s_end.holds(p) for p in post):
                # the most likely reading meets the goal, but not with probability >= the threshold: say so, rather
                # than "moved onto X instead; it must end on X" (re-planning from the observed state keeps it)
                cause = "wrong_result"
                feedback = (f"{_change_text(target, s0, s_end)}, but it cannot be seen clearly there (probability "
                            f"{scores['action']:.2f}); {_goal_phrase(action)}, drawn whole and in place")
            elif target in changed and _obj_state(s_end, target) == _goal_state(action):
                # it got where the action takes it, yet a post-condition fails (e.g. the plan expected it to free
                # a slot that something else stands on): name the literal, not the move
                cause = "wrong_result"
                false = [str(p) for p in post if not s_end.holds(p)]
                feedback = (f"{_change_text(target, s0, s_end)}, but the step's post-condition "
                            f"{' and '.join(false)} is false at the end; re-plan from what is now on the table")
            elif target in changed:
                cause = "wrong_result"
                feedback = (f"{_change_text(target, s0, s_end)} instead; {_goal_phrase(action)}")
            elif others:
                cause = "wrong_object"
                feedback = (f"{' and '.join(_change_text(o, s0, s_end) for o in others)} instead of the requested "
                            f"step ({action.text()}); re-plan from what is now on the table")
            elif action.verb.startswith("switch") and float(r["pull"].max()) > cfg.pull_min:
                cause = "lamp_not_switched"
                feedback = (f"the cord was pulled but the lamp stayed {'on' if s_end.lamp_on else 'off'}; "
                            f"{_goal_phrase(action)}")
            else:
                cause = "no_change"
                feedback = f"nothing happened: {self._still_text(action, s0)}; {_goal_phrase(action)}"
        failure = CAUSE_KIND[cause] if cause else None
        decision: Decision = cfg.decisions[cause] if cause else "accept"
        return Verdict(scores={k: round(v, 6) for k, v in scores.items()}, passed=cause is None, decision=decision,
                       failure=failure, feedback=feedback, observed_state=s_end.to_dict())

    def _artifact_area(self, frame: np.ndarray, state: State, context: JudgeContext | None) -> float | None:
        """spiral.world.render.artifact_area of the last frame against a render of the state read there, in the
        scene's own look; None when the look is unknown (no hints.scene_seed: an image case) or the check is off."""
        if context is None or not self.config.artifact_area:
            return None
        seed = context.hints.get("scene_seed")
        if seed is None:
            return None
        from spiral.world.render import Appearance, artifact_area, render_state

        return artifact_area(frame, render_state(state, appearance=Appearance.sample(int(seed)), size=frame.shape[0]))

    # -- input checks
    @staticmethod
    def _check_segment(segment: Segment) -> np.ndarray:
        if not isinstance(segment, Segment):
            raise TypeError(f"judge expects a spiral.types.Segment, got {type(segment).__name__}")
        frames = check_frames(segment.frames, "segment frames")
        if len(frames) < 2:
            raise ValueError(f"segment has {len(frames)} frame; a segment needs at least 2 frames (start and end)")
        return frames

    @staticmethod
    def _check_sub_action(sub: SubAction) -> tuple[Action, list[Pred]]:
        if not isinstance(sub, SubAction):
            raise TypeError(f"judge expects a spiral.types.SubAction, got {type(sub).__name__}")
        try:
            action = Action(sub.verb, tuple(sub.objects))
            post = [Pred.parse(p) for p in sub.postconditions]
        except DomainError as e:
            raise ValueError(f"sub-action {sub.id} ({sub.text!r}) does not fit the tabletop world: {e}") from None
        return action, post

    def _context(self, context: JudgeContext | None, frames: np.ndarray) -> tuple[np.ndarray | None, State | None]:
        if context is None:
            return None, None
        anchor = context.anchor_frame
        if anchor is not None:
            check_frame(anchor, "context anchor frame")
            if anchor.shape != frames.shape[1:]:
                raise ValueError(f"the memory's anchor frame is {anchor.shape[0]}×{anchor.shape[1]} but the segment's "
                                 f"frames are {frames.shape[1]}×{frames.shape[2]}; generate at the anchor's size")
        st = context.state
        state = None
        if st is not None:
            try:
                state = State.from_dict(st)
            except DomainError as e:
                raise ValueError(f"the memory's state is not a valid tabletop state: {e}") from None
        return anchor, state

    # -- scores
    @staticmethod
    def _target(action: Action) -> str:
        return action.args[0]

    @staticmethod
    def _start_end(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Readings for decoding the start (frames 0 and 1 together: nothing moves that early in a physical
        clip, and two looks halve the misreadings) and the end state (last frame)."""
        first = [0, 1] if len(r["loc"]) > 2 else [0]
        out = {}
        for k in ("loc", "lid", "light"):
            lp = np.log(np.clip(r[k][first], 1e-9, 1)).sum(0)
            p0 = np.exp(lp - lp.max(-1, keepdims=True))
            out[k] = np.stack([p0 / p0.sum(-1, keepdims=True), r[k][-1]])
        for k in ("lid_level", "light_level"):
            out[k] = np.array([r[k][first].mean(), r[k][-1]])
        return out

    @staticmethod
    def _pred_prob(p: Pred, end: dict[str, np.ndarray]) -> float:
        """Probability that a predicate literal holds at the end (valid-layout marginals, lid and lamp classes)."""
        loc = end["loc"]
        a = p.args
        if p.name == "open":
            pos, neg = end["lid"][2], end["lid"][0]
        elif p.name == "on" and len(a) == 1:
            pos, neg = end["light"][2], end["light"][0]
        else:
            if p.name in ("at", "on", "in"):
                pos = loc[BLOCKS.index(a[0]), LOC_CLASSES.index(BOX if p.name == "in" else a[1])]
            elif p.name == "clear":
                pos = float(np.prod(1 - loc[:, LOC_CLASSES.index(a[0])]))
            else:  # free(slot)
                pos = float(np.prod(1 - loc[:, LOC_CLASSES.index(a[0])]))
            neg = 1 - pos
        return float(neg if p.negated else pos)

    @staticmethod
    def _same_prob(obj: str, s0: State, end: dict[str, np.ndarray]) -> float:
        if obj == BOX:
            return float(end["lid"][2 if s0.box_open else 0])
        if obj == LAMP:
            return float(end["light"][2 if s0.lamp_on else 0])
        return float(end["loc"][BLOCKS.index(obj), LOC_CLASSES.index(s0.where(obj))])

    def _continuity(self, r: dict[str, np.ndarray]) -> tuple[float, list[dict[str, Any]], dict[str, list[int]]]:
        """Continuity score, the violations found (strongest first) and each block's best physical path."""
        cfg = self.config
        nats = cfg.violation_nats
        events: list[dict[str, Any]] = []
        logp = np.log(np.clip(r["loc"], 1e-6, 1.0))
        paths: dict[str, list[int]] = {}
        for b, (gap, evs, path) in zip(BLOCKS, _violation(logp.transpose(1, 0, 2), _KINDS, nats), strict=True):
            paths[b] = path
            if evs:
                t, a, c, kind = evs[0]
                events.append({"object": b, "frame": t, "from": LOC_CLASSES[a], "to": LOC_CLASSES[c],
                               "kind": "jump" if kind == 1 else "moved_by_itself", "evidence": gap})
        # lid: closed ↔ open without a partial frame in between
        gap, evs, _ = _violation(np.log(np.clip(r["lid"], 1e-6, 1.0))[None], _LID_KINDS, nats)[0]
        if evs:
            t, a, c, _ = evs[0]
            events.append({"object": BOX, "frame": t, "from": LID_CLASSES[a], "to": LID_CLASSES[c], "kind": "jump",
                           "evidence": gap})
        # lamp: its reading may only change while the cord is pulled nearby (frames t-2 .. t+1)
        pull = r["pull"]
        pulled = np.array([pull[max(0, t - 2): t + 2].max() > cfg.pull_min for t in range(1, len(pull))], bool)
        kinds = np.where(pulled[:, None, None], 0, _LAMP_KINDS[None])
        gap, evs, _ = _violation(np.log(np.clip(r["light"], 1e-6, 1.0))[None], kinds, nats)[0]
        if evs:
            t, a, c, kind = evs[0]
            events.append({"object": LAMP, "frame": t, "from": LIGHT_CLASSES[a], "to": LIGHT_CLASSES[c],
                           "kind": "jump" if kind == 1 else "moved_by_itself", "evidence": gap})
        # gripper path: no teleporting arm
        g = r["gripper"]
        if len(g) > 1:
            limit = cfg.gripper_jump * 8 / (len(g) - 1)  # the threshold is per frame at 9 frames per segment
            step = np.abs(np.diff(g, axis=0)).max(-1)
            t = int(step.argmax())
            if step[t] > limit:
                events.append({"object": "gripper", "frame": t + 1, "kind": "jump",
                               "evidence": float(nats * step[t] / limit)})
        if not events:
            return 1.0, [], paths
        events.sort(key=lambda e: -e["evidence"])
        return _sigmoid_score(events[0]["evidence"], nats), events, paths

    def _anchor_colors(self, anchor: np.ndarray) -> tuple[np.ndarray, float]:
        key = (anchor.shape, hash(anchor.tobytes()))
        if key != self._anchor_key:
            rr = self.recognizer.predict(anchor[None])
            self._anchor_val = (band_colors(anchor[None])[0], float(rr["light_level"][0]))
            self._anchor_key = key
        assert self._anchor_val is not None
        return self._anchor_val

    def _drift(self, frames: np.ndarray, r: dict[str, np.ndarray], anchor: np.ndarray | None) -> tuple[float, float]:
        """Largest background change within the segment (vs frame 0) and against the anchor (RGB distance)."""
        colors = band_colors(frames)
        level = r["light_level"]
        norm = lamp_normalised(colors, level)
        steady = (level < 0.1) | (level > 0.9)
        same = steady & steady[0] & ((level > 0.5) == (level[0] > 0.5))
        d_table = np.linalg.norm(norm[:, 1] - norm[0, 1], axis=-1)
        d_wall = np.where(same, np.linalg.norm(colors[:, 0] - colors[0, 0], axis=-1), 0.0)
        within = float(max(d_table.max(), d_wall.max()))
        if anchor is None:
            return within, 0.0
        a_col, a_level = self._anchor_colors(anchor)
        a_norm = lamp_normalised(a_col[None], np.array([a_level]))[0]
        ends = [0, len(frames) - 1]
        d = np.linalg.norm(norm[ends, 1] - a_norm[1], axis=-1)
        if (a_level < 0.1 or a_level > 0.9):
            a_on = a_level > 0.5
            for i in ends:
                if steady[i] and (level[i] > 0.5) == a_on:
                    d = np.append(d, np.linalg.norm(colors[i, 0] - a_col[0]))
        return within, float(d.max())

    # -- feedback
    def _continuity_feedback(self, events: list[dict[str, Any]], action: Action) -> tuple[str, str]:
        """Cause and sentence for the strongest violation. An object the sub-action does not act on that changes
        without the gripper moved by itself (physical violation), abruptly or not; the acted-on object (or the
        gripper) changing abruptly is a sudden switch."""
        e = events[0]
        obj, t = e["object"], e["frame"]
        target = action.args[0]
        if obj == "gripper":
            return "jump", f"the gripper jumped across the scene between frames {t - 1} and {t}; its path must be continuous"
        cause = e["kind"] if obj == target else "moved_by_itself"
        what = {LAMP: "lamp", BOX: "lid"}.get(obj, domain.name(obj))
        if obj != target:
            change = (f"switched {e['to']}" if obj == LAMP else f"went {e['from']} → {e['to']}" if obj == BOX
                      else f"moved from {_where(e['from'])} to {_where(e['to'])}")
            return cause, (f"the {what} {change} by itself (frame {t}) with no gripper acting on it; only the "
                           f"{domain.name(target)} may change, and only through the gripper")
        if obj == LAMP:
            if cause == "jump":
                return cause, (f"the lamp switched {e['to']} between frames {t - 1} and {t} without the cord being pulled; "
                               "show the gripper pulling the cord")
            return cause, (f"the lamp changed ({e['from']} → {e['to']}, frame {t}) without the cord being pulled; "
                           "only the gripper may switch it")
        if obj == BOX:
            return cause, (f"the lid went from {e['from']} to {e['to']} between frames {t - 1} and {t} without moving "
                           "through the frames in between; show the gripper swinging it")
        if cause == "jump":
            return cause, (f"the {what} jumped from {_where(e['from'])} to {_where(e['to'])} between frames {t - 1} and "
                           f"{t} without being carried; show the gripper picking it up and carrying it")
        return cause, f"the {what} moved without the gripper holding it (frame {t}); it may only move in the gripper"

    @staticmethod
    def _not_rest_feedback(not_rest: list[tuple[str, int]], lid_partial: bool, action: Action,
                           r: dict[str, np.ndarray]) -> str:
        if not_rest:
            b, cls = not_rest[0]
            name = domain.name(b)
            if cls == HELD:
                gx = float(r["gripper"][-1, 0])
                where = " above the box" if 0.66 <= gx <= 0.97 else ""
                first = f"the {name} stopped{where} in the gripper"
            else:
                first = f"the {name} was put down at no valid location (between slots or in mid-air)"
            goal = _goal_phrase(action) if action.verb == "move" and action.args[0] == b else "it must end on a slot, a block or in the box"
            return f"{first}; {goal}"
        goal = _goal_phrase(action) if action.verb in ("open", "close") else "the lid must end fully open or closed"
        return f"the lid stopped part-way; {goal}"

    @staticmethod
    def _still_text(action: Action, s0: State) -> str:
        obj = action.args[0]
        if obj == BOX:
            return f"the box is still {'open' if s0.box_open else 'closed'}"
        if obj == LAMP:
            return f"the lamp is still {'on' if s0.lamp_on else 'off'}"
        return f"the {domain.name(obj)} is still {_where(s0.where(obj))}"
