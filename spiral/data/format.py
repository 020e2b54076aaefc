"""ActVideoGen-Dataset format (DESIGN §5): a folder with ``manifest.jsonl`` and ``videos/*.mp4``.

Each manifest line is one :class:`Episode`. Validation is per line: a bad line is reported
by number with the reason and the fix, and every other line stays usable.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from spiral.video import video_info

MANIFEST = "manifest.jsonl"
Label = Literal["success", "incomplete", "wrong_object", "extra_motion", "teleport", "drift", "no_motion"]


class StepRecord(BaseModel):
    """One sub-action of an episode and the inclusive frame range that shows it."""

    model_config = ConfigDict(extra="forbid")

    text: str
    verb: str
    objects: list[str]
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


@dataclass
class LineError:
    """A manifest line that cannot be used, and why."""

    line: int
    id: str | None
    message: str

    def __str__(self) -> str:
        who = f" ({self.id})" if self.id else ""
        return f"line {self.line}{who}: {self.message}"


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
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field '{loc}' (remove it; allowed fields are listed in DESIGN §5)")
        elif err["type"] == "missing":
            parts.append(f"missing field '{loc}'")
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _resolve_inside(root: Path, rel: str) -> Path | None:
    p = (root / rel).resolve()
    return p if p.is_relative_to(root.resolve()) and not Path(rel).is_absolute() else None


def check_dataset(root: str | Path, *, check_videos: bool = True) -> CheckReport:
    """Validate every manifest line; returns the usable episodes and an error per bad line."""
    root = Path(root)
    report = CheckReport(root)
    manifest = root / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(f"{root} is not a dataset: {MANIFEST} is missing (build one with `spiral data build`)")
    info_cache: dict[Path, dict] = {}
    seen: set[str] = set()
    for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            report.errors.append(LineError(n, None, f"not valid JSON ({e.msg} at column {e.colno})"))
            continue
        rid = raw.get("id") if isinstance(raw, dict) else None
        try:
            ep = Episode.model_validate(raw)
        except ValidationError as e:
            report.errors.append(LineError(n, rid, _pydantic_message(e)))
            continue
        if ep.id in seen:
            report.errors.append(LineError(n, ep.id, "duplicate id (ids must be unique)"))
            continue
        video = _resolve_inside(root, ep.video)
        if video is None:
            report.errors.append(LineError(n, ep.id, f"video path {ep.video!r} leaves the dataset folder (use a path relative to {root})"))
            continue
        if check_videos:
            if not video.is_file():
                report.errors.append(LineError(n, ep.id, f"video {ep.video} is missing"))
                continue
            try:
                info = info_cache.get(video) or info_cache.setdefault(video, video_info(video))
            except Exception as e:  # noqa: BLE001 - any decoder failure makes this line unusable
                report.errors.append(LineError(n, ep.id, f"video {ep.video} cannot be read: {e}"))
                continue
            bad = [i for i, s in enumerate(ep.steps) if s.end_frame >= info["frames"]]
            if bad:
                s = ep.steps[bad[0]]
                report.errors.append(LineError(
                    n, ep.id, f"step {bad[0]} frame range {s.start_frame}..{s.end_frame} is outside the video ({info['frames']} frames)"))
                continue
            if (info["height"], info["width"]) != tuple(ep.resolution):
                report.errors.append(LineError(
                    n, ep.id, f"resolution {list(ep.resolution)} does not match the video ({info['height']}x{info['width']})"))
                continue
        seen.add(ep.id)
        report.episodes.append(ep)
    return report


def write_manifest(root: str | Path, episodes: list[Episode]) -> Path:
    """Write the manifest atomically, one episode per line."""
    from spiral.atomic import write_text

    path = Path(root) / MANIFEST
    write_text(path, "".join(ep.model_dump_json(exclude_none=True) + "\n" for ep in episodes))
    return path
