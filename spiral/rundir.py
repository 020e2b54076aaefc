"""The run directory (DESIGN §8) and its journal, which makes runs resumable.

Layout: ``config.yaml``, ``meta.json`` (goal, seed, initial state), ``first_frame.png``,
``plan.json`` (every plan version), ``attempts.jsonl`` (one line per attempt: request,
seed, segment file, verdict, decision, seconds), ``segments/`` (each attempt's frames as
lossless ``.npz`` plus a viewable ``.mp4``), ``final.mp4``, ``record.json``, ``report.html``.

The loop is deterministic given its inputs, so resuming is replay: an attempt or plan
already in the journal is read back instead of being generated again. Every file is
written atomically and an attempt's line is appended only after its segment file exists,
so a crash at any point loses at most the attempt in flight.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from spiral import atomic
from spiral.types import Attempt, Plan

RUN_MARKER = "meta.json"
#: the journal's plan version of the open-loop fallback's attempts (spiral.loop): never a plan version of the loop,
#: so a resume that raises the loop's budgets cannot mistake them for its own
OPEN_LOOP = -1
# RunDir.create writes this first and deletes it after the marker: a folder holding it is a creation cut short.
CREATING = ".spiral-creating"


class RunDir:
    """A run's folder: creates it fresh or opens an existing one for resume."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.segments = self.path / "segments"
        self._attempts: dict[tuple[int, int, int], dict] = {}
        self._plans: list[dict] = []
        self._reasons: list[str] = []
        self.torn = b""  # the torn journal tail that open() moved aside, if any

    # ---- creation / opening -------------------------------------------------------------
    @classmethod
    def check_new(cls, path: str | Path) -> None:
        """Refuse a folder that already holds a run or anything else (call before any work is done)."""
        path = Path(path)
        if (path / RUN_MARKER).exists():
            raise FileExistsError(f"{path} already holds a run; resume it with --resume {path} or pick another --out")
        if path.exists() and not path.is_dir():
            raise FileExistsError(f"{path} is a file; pick a new --out folder")
        if path.is_dir() and any(path.iterdir()) and not (path / CREATING).is_file():
            raise FileExistsError(f"{path} is not empty; pick an empty or new --out folder")

    @classmethod
    def create(cls, path: str | Path, meta: dict[str, Any], config_yaml: str, first_frame: np.ndarray) -> RunDir:
        """A new run folder; refuses to write over an existing run (use --resume instead).

        ``meta.json`` is written last, after a ``.spiral-creating`` marker and the other files: a folder with
        the marker is a creation that was cut short, which a rerun of the same command completes.
        """
        rd = cls(path)
        cls.check_new(rd.path)
        rd.path.mkdir(parents=True, exist_ok=True)
        atomic.write_text(rd.path / CREATING, "")
        atomic.remove_temp_files(rd.path)
        rd.segments.mkdir(exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(first_frame).save(buf, format="PNG")
        atomic.write_bytes(rd.path / "first_frame.png", buf.getvalue())
        atomic.write_text(rd.path / "config.yaml", config_yaml)
        atomic.write_json(rd.path / RUN_MARKER, meta)
        (rd.path / CREATING).unlink()
        return rd

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        """An existing run folder, with its journal loaded; a folder that is not a run is an error.

        Opening is where a crash is cleaned up: a torn last journal line is moved to ``attempts.jsonl.torn``
        and the journal truncated to its last complete line, and temporary files of interrupted atomic
        writes are deleted. The caller must be the only process using the folder.
        """
        rd = cls(path)
        rd.check_is_run()
        for folder in (rd.path, rd.segments):
            atomic.remove_temp_files(folder)
        journal = rd.path / "attempts.jsonl"
        rd.torn = atomic.repair_jsonl(journal)
        for n, line in enumerate(atomic.read_jsonl(journal, torn_tail_ok=False), start=1):
            key, rel = _check_record(line, journal, n)
            if _inside(rd.path, rel) and (rd.path / rel).is_file():
                rd._attempts[key] = line
        if (rd.path / "plan.json").is_file():
            try:
                saved = json.loads((rd.path / "plan.json").read_text())
                rd._plans, rd._reasons = list(saved["plans"]), list(saved.get("reasons", [""] * len(saved["plans"])))
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{rd.path / 'plan.json'} is damaged ({e}); restore it, or delete it to plan again") from None
        return rd

    def check_is_run(self) -> None:
        """Raise a clear error unless this folder holds a run (read-only)."""
        if not (self.path / RUN_MARKER).is_file() or not (self.path / "config.yaml").is_file():
            raise FileNotFoundError(f"{self.path} is not a SPIRAL run directory (no {RUN_MARKER} / config.yaml); "
                                    "start a new run without --resume")

    @property
    def meta(self) -> dict[str, Any]:
        try:
            meta = json.loads((self.path / RUN_MARKER).read_text(encoding="utf-8"))
        except (ValueError, OSError) as e:
            raise ValueError(f"{self.path / RUN_MARKER} is damaged ({e}); restore it from a copy") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("goal"), str):
            raise ValueError(f"{self.path / RUN_MARKER} is damaged (no goal); restore it from a copy")
        return meta

    def record_resume(self, changes: dict[str, list[Any]], config_yaml: str) -> None:
        """Save the config a resume changed (settings of ``spiral.config.RESUME_SAFE``) and note the change in
        meta.json's ``resumes`` (the record and the report show it). Config first: a crash between the two
        leaves the new config in force and only the note missing."""
        import time

        atomic.write_text(self.path / "config.yaml", config_yaml)
        meta = self.meta
        meta["resumes"] = [*meta.get("resumes", []), {"at": time.strftime("%Y-%m-%dT%H:%M:%S"), "changed": changes}]
        atomic.write_json(self.path / RUN_MARKER, meta)

    def first_frame(self) -> np.ndarray:
        return np.asarray(Image.open(self.path / "first_frame.png").convert("RGB"))

    # ---- journal ------------------------------------------------------------------------
    def logged_plan(self, version: int) -> Plan | None:
        return Plan.model_validate(self._plans[version]) if version < len(self._plans) else None

    def log_plan(self, version: int, plan: Plan, reason: str = "") -> None:
        """Record plan ``version`` and why it was made ("" for the first plan)."""
        del self._plans[version:]
        del self._reasons[version:]
        self._plans.append(plan.model_dump(mode="json"))
        self._reasons.append(reason)
        atomic.write_json(self.path / "plan.json", {"plans": self._plans, "reasons": self._reasons})

    def logged_attempt(self, version: int, step: int, attempt: int) -> tuple[dict, np.ndarray] | None:
        line = self._attempts.get((version, step, attempt))
        if line is None:
            return None
        return line, load_frames(self.path / line["segment_file"])

    def segment_file(self, version: int, step: int, attempt: int) -> str:
        """The segment of an attempt; the open-loop fallback's (``version`` OPEN_LOOP) has names of its own."""
        if version == OPEN_LOOP:
            return f"segments/open_loop_s{step:02d}.npz"
        return f"segments/v{version}_s{step:02d}_a{attempt:02d}.npz"

    def log_attempt(self, version: int, entry: Attempt, frames: np.ndarray, fps: float, extra: dict,
                    video: bool = True) -> dict:
        """Write the segment (lossless npz, plus an mp4 for viewing if ``video``) then append the attempt line."""
        from spiral.video import write_video

        rel = self.segment_file(version, entry.step, entry.attempt)
        save_frames(self.path / rel, frames)
        if video:
            write_video(self.path / rel.replace(".npz", ".mp4"), frames, fps, quality="web")
        line = {"plan_version": version, **entry.model_dump(mode="json"), "segment_file": rel, **extra}
        atomic.append_line(self.path / "attempts.jsonl", json.dumps(line))
        self._attempts[(version, entry.step, entry.attempt)] = line
        return line

    def attempts(self) -> list[dict]:
        return atomic.read_jsonl(self.path / "attempts.jsonl")


def _check_record(line: dict, journal: Path, n: int) -> tuple[tuple[int, int, int], str]:
    """The replay key and segment file of journal record ``n``, after checking it is a whole attempt record
    (what the loop replays from it), so that a damaged record is one error here, not a failure mid-run."""
    from pydantic import ValidationError

    try:
        if not isinstance(line.get("plan_version"), int) or isinstance(line.get("plan_version"), bool):
            raise ValueError("plan_version: an integer is needed")
        if not isinstance(line.get("segment_file"), str):
            raise ValueError("segment_file: a path is needed")
        entry = Attempt.model_validate({k: line[k] for k in Attempt.model_fields if k in line})
        if not isinstance(line.get("seconds", {}), dict):
            raise ValueError("seconds: an object is needed")
    except (ValidationError, ValueError) as e:
        why = str(e).splitlines()[0] if not isinstance(e, ValidationError) else "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:2])
        raise atomic.JournalError(f"{journal} record {n} is not an attempt record ({why}); restore the file or "
                                  "delete that line") from None
    return (line["plan_version"], entry.step, entry.attempt), line["segment_file"]


def _inside(root: Path, rel: str) -> bool:
    """Whether the relative path ``rel`` (read from the journal) stays inside the run folder."""
    return not Path(rel).is_absolute() and (root / rel).resolve().is_relative_to(root.resolve())


def save_frames(path: Path, frames: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez(buf, frames=frames)  # uncompressed: zlib costs more time per attempt than the loop itself
    atomic.write_bytes(path, buf.getvalue())


def load_frames(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as z:
        return z["frames"]
