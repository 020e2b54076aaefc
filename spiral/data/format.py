"""ActVideoGen-Dataset format (DESIGN §5): a folder with ``manifest.jsonl`` and ``videos/*.mp4``.

Each manifest line is one :class:`Episode`. Validation is per line: a bad line is reported
by number with the reason and the fix, and every other line stays usable. What is checked is
what the consumers need: the fields and their types; paths inside the folder; each video's
frame ranges and resolution (from its header, or by decoding every frame with ``decode=True``,
which ``spiral data check`` does unless ``--fast``); and, for episodes of the tabletop world
(``source`` tabletop*, an ``initial_state`` or a ``scene_seed``), that the states, actions and
pre/post-conditions name the world's objects and that each step can happen where it starts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spiral.video import decode_digest, video_info

MANIFEST = "manifest.jsonl"
Label = Literal["success", "incomplete", "wrong_object", "extra_motion", "teleport", "drift", "no_motion"]


class StepRecord(BaseModel):
    """One sub-action of an episode and the inclusive frame range that shows it. ``text`` is the step; ``verb`` and
    ``objects`` are optional (imported real videos often carry text only), but a tabletop episode needs them."""

    model_config = ConfigDict(extra="forbid")

    text: str
    verb: str | None = None
    objects: list[str] = Field(default_factory=list)
    pre: list[str] = Field(default_factory=list)
    post: list[str] = Field(default_factory=list)
    start_frame: int = Field(ge=0)
    end_frame: int = Field(ge=0)
    label: Label = "success"
    failure_kind: str | None = None
    end_state: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _order(self) -> StepRecord:
        if self.end_frame <= self.start_frame:
            raise ValueError(f"end_frame {self.end_frame} must be after start_frame {self.start_frame}")
        return self


class Episode(BaseModel):
    """One video with its goal and step annotations."""

    model_config = ConfigDict(extra="forbid")

    id: str
    goal: str
    video: str
    fps: float = Field(gt=0)
    resolution: tuple[int, int]  # (height, width)
    steps: list[StepRecord] = Field(min_length=1)
    initial_state: dict[str, Any] | None = None
    scene_seed: int | None = None
    parent: str | None = None
    source: str = ""
    split: str = "train"
    license: str = ""
    frames_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$", description=(
        "SHA-256 of the video's decoded frames (spiral.video.decode_digest); `spiral data check` compares it, "
        "which catches damage that decodes without an error (H.264 conceals some)"))


@dataclass
class LineError:
    """A manifest line that cannot be used, and why."""

    line: int
    id: str | None
    message: str

    def __str__(self) -> str:
        from spiral.options import printable

        who = f" ({printable(self.id)})" if self.id else ""
        return f"line {self.line}{who}: {printable(self.message)}"


@dataclass
class CheckReport:
    """Result of validating a dataset folder: usable episodes and per-line errors."""

    root: Path
    episodes: list[Episode] = field(default_factory=list)
    errors: list[LineError] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors


def _pydantic_message(e: ValidationError) -> str:
    from spiral.options import printable

    parts = []
    for err in e.errors():
        loc = printable(".".join(str(x) for x in err["loc"]))
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}' (remove it; allowed fields are listed in DESIGN §5)")
        elif err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _resolve_inside(root: Path, rel: str) -> Path | None:
    try:
        p = (root / rel).resolve()
    except (OSError, ValueError):  # e.g. a NUL byte in the path
        return None
    return p if p.is_relative_to(root.resolve()) and not Path(rel).is_absolute() else None


def check_dataset(root: str | Path, *, check_videos: bool = True, decode: bool = False) -> CheckReport:
    """Validate every manifest line; returns the usable episodes and an error per bad line.

    ``check_videos`` reads each video's header (frame count, size); ``decode`` also decodes every frame, so a
    damaged file is caught where its header still looks whole. A manifest without a single episode line is
    an error: there is nothing to use.
    """
    root = Path(root)
    report = CheckReport(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a dataset: {MANIFEST} is missing (build one with `spiral data build`)")
    try:
        text = manifest.read_bytes().decode("utf-8")  # not read_text: it would turn a "\r" inside a line into "\n"
    except UnicodeDecodeError as e:
        raise ValueError(f"{manifest} is not UTF-8 text ({e.reason} at byte {e.start}); it must be JSON lines") from None
    # JSON lines end at "\n" only: str.splitlines() would also split inside a line at \x1e, \u2028, ... (which
    # JSON strings may hold unescaped), turning one episode into broken halves (found by fuzzing)
    lines = [(n, line) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise ValueError(f"{manifest} holds no episodes (it is empty); build one with `spiral data build`")
    info_cache: dict[Path, dict | str] = {}
    seen: set[str] = set()
    for n, line in lines:
        try:
            raw = json.loads(line)
        except (json.JSONDecodeError, RecursionError) as e:
            where = f" ({e.msg} at column {e.colno})" if isinstance(e, json.JSONDecodeError) else " (nested too deep)"
            report.errors.append(LineError(n, None, f"not valid JSON{where}"))
            continue
        rid = raw.get("id") if isinstance(raw, dict) and isinstance(raw.get("id"), str) else None
        try:
            ep = Episode.model_validate(raw)
        except ValidationError as e:
            report.errors.append(LineError(n, rid, _pydantic_message(e)))
            continue
        if ep.id in seen:
            report.errors.append(LineError(n, ep.id, "duplicate id (ids must be unique)"))
            continue
        problem = _world_problem(ep) or _video_problem(root, ep, check_videos, decode, info_cache)
        if problem:
            report.errors.append(LineError(n, ep.id, problem))
            continue
        seen.add(ep.id)
        report.episodes.append(ep)
    return report


def _video_problem(root: Path, ep: Episode, check_videos: bool, decode: bool, cache: dict[Path, dict | str]) -> str:
    """Why the episode's video cannot serve its annotations ("" when it can)."""
    video = _resolve_inside(root, ep.video)
    if video is None:
        return f"video path {ep.video!r} leaves the dataset folder (use a path relative to {root})"
    if not check_videos:
        return ""
    if not video.is_file():
        return f"video {ep.video} is missing"
    if video not in cache:
        try:
            info = video_info(video)
            if decode:
                got, digest = decode_digest(video)
                if got != info["frames"]:
                    raise ValueError(f"its header says {info['frames']} frames, {got} decode")
                if ep.frames_sha256 and digest != ep.frames_sha256:
                    raise ValueError("its frames differ from the manifest's frames_sha256 (damaged or replaced "
                                     "since it was written)")
            cache[video] = info
        except Exception as e:  # noqa: BLE001 - any decoder failure makes this line unusable
            cache[video] = f"video {ep.video} cannot be {'fully decoded' if decode else 'read'}: " \
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
    info = cache[video]
    if isinstance(info, str):
        return info
    bad = [i for i, s in enumerate(ep.steps) if s.end_frame >= info["frames"]]
    if bad:
        s = ep.steps[bad[0]]
        return f"step {bad[0]} frame range {s.start_frame}..{s.end_frame} is outside the video ({info['frames']} frames)"
    if (info["height"], info["width"]) != tuple(ep.resolution):
        return f"resolution {list(ep.resolution)} does not match the video ({info['height']}x{info['width']})"
    return ""


def is_tabletop(ep: Episode) -> bool:
    """Whether an episode claims to show the tabletop world (its states and actions are then checked)."""
    return ep.source.startswith("tabletop") or ep.initial_state is not None or ep.scene_seed is not None


def _world_problem(ep: Episode) -> str:
    """For a tabletop episode: the first state, action or condition that does not fit the world ("" if none).

    Each step's action must exist (a known verb on known objects) and be possible in the state where the step
    starts (the initial state, then the previous step's end state); a success step's end state must be what the
    action leads to. A failure clip (label other than success) shows a wrong end state on purpose.
    """
    if not is_tabletop(ep):
        return ""
    from spiral.world import domain
    from spiral.world.domain import State

    def state(d: Any, what: str) -> State:
        try:
            if not isinstance(d, dict) or not isinstance(d.get("loc"), dict):
                raise ValueError("expected {'loc': {block: location}, 'box_open': bool, 'lamp_on': bool}")
            for flag in ("box_open", "lamp_on"):
                if not isinstance(d.get(flag, False), bool):
                    raise ValueError(f"{flag} must be true or false, got {d[flag]!r}")
            return State.from_dict(d)
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"{what}: {e}") from None

    try:
        now = state(ep.initial_state, "initial_state") if ep.initial_state is not None else None
        for i, s in enumerate(ep.steps):
            if s.verb is None:
                raise ValueError(f"step {i} ({s.text!r}) has no verb: tabletop steps need verb and objects")
            try:
                action = domain.Action(s.verb, tuple(s.objects))
                for lit in s.pre + s.post:
                    domain.Pred.parse(lit)
            except ValueError as e:
                raise ValueError(f"step {i} ({s.text!r}): {e}") from None
            end = state(s.end_state, f"step {i} end_state") if s.end_state is not None else None
            if now is not None:
                try:
                    after = domain.apply(now, action)
                except ValueError as e:
                    raise ValueError(f"step {i} ({s.text!r}) cannot happen where it starts ({now}): {e}") from None
                if s.label == "success" and end is not None and end != after:
                    raise ValueError(f"step {i} ({s.text!r}) ends in {end}, but the action leads to {after}")
                end = end if end is not None else after
            now = end
    except ValueError as e:
        return str(e)
    return ""


def write_manifest(root: str | Path, episodes: list[Episode]) -> Path:
    """Write the manifest atomically, one episode per line."""
    from spiral.atomic import write_text

    path = Path(root) / MANIFEST
    write_text(path, "".join(ep.model_dump_json(exclude_none=True) + "\n" for ep in episodes))
    return path
