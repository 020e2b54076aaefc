"""``spiral data import``: annotated source videos → an ActVideoGen-Dataset folder (DESIGN §5).

For each episode read by :mod:`spiral.data.importers`, the span from its first step's start to its last step's end
is cut from the source video by seeking (:func:`spiral.video.read_clip`: only that range is decoded), optionally
resampled to a target fps and size, and written to ``videos/<id>.mp4``; the steps' seconds become frame indices of
that clip at its real frame rate. Work spreads over a process pool (``workers``) or a Ray cluster (``ray``).

What makes it safe to stop and run again:

- every video is written atomically, then its episode is appended (fsynced) to ``import.jsonl``; a second run
  with the same settings skips the episodes found there whose video is still in place (nothing is redone);
- ``import.json`` holds the settings: a run into a folder made with other settings, or into a folder that is not
  an import, is refused before anything is written;
- ``manifest.jsonl`` and ``import_report.json`` are rewritten (atomically) at the end from the journal; the report
  lists every episode skipped (missing, unreadable or corrupt video, a path outside ``--videos``, no step left) and
  every step dropped or clipped, each with its reason: nothing is left out silently.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from spiral import atomic
from spiral.data.format import MANIFEST, Episode, StepRecord, write_manifest
from spiral.data.importers import VIDEO_EXTS, SourceEpisode, parse_step, read_source

SETTINGS, JOURNAL, REPORT = "import.json", "import.jsonl", "import_report.json"


class ImportConfig(BaseModel):
    """What ``spiral data import`` reads and how it writes the clips."""

    model_config = ConfigDict(extra="forbid")

    format: str = Field(description="annotation format: coin, crosstask, ego4d-goalstep, csv or jsonl")
    source: Path = Field(description="the annotation file (COIN.json, goalstep_*.json, CSV/JSONL) or CrossTask folder")
    videos: Path = Field(description="folder of the source videos, found as <video id>.<ext> anywhere below it")
    out: Path = Field(description="dataset folder to write (new, or an earlier import with the same settings)")
    fps: float | None = Field(None, gt=0, le=240, description="frame rate of the written clips (default: the source's)")
    size: tuple[int, int] | None = Field(None, description="(height, width) of the written clips (default: the "
                                                           "source's, made even)")
    quality: Literal["data", "web"] = Field("web", description="clip encoding: 'web' (H.264 4:2:0, CRF 17) or 'data' "
                                                               "(near-lossless 4:4:4, large)")
    level: Literal["step", "substep"] = Field("step", description="Ego4D GoalStep: steps or their substeps")
    parse_steps: bool = Field(True, description="fill each step's verb/objects from its text (spiral.data."
                                                "importers.parse_step); off: text-only steps")
    workers: int = Field(1, ge=1, le=256, description="processes decoding and encoding in parallel")
    ray: str | None = Field(None, description="Ray cluster address (auto, ray://host:port) or 'local' instead of "
                                              "the process pool")
    limit: int | None = Field(None, ge=1, description="import only the first N episodes of the source")

    @field_validator("size")
    @classmethod
    def _even(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and (v[0] < 2 or v[1] < 2 or v[0] % 2 or v[1] % 2):
            raise ValueError(f"size {v[0]}x{v[1]} must be two even numbers ≥ 2 (height x width)")
        return v

    def key(self) -> dict[str, Any]:
        """The settings a resume must share with the run it continues (the output of each episode depends on them)."""
        return {"format": self.format, "source": str(self.source.resolve()), "videos": str(self.videos.resolve()),
                "fps": self.fps, "size": list(self.size) if self.size else None, "quality": self.quality,
                "level": self.level, "parse_steps": self.parse_steps}


@dataclass
class ImportResult:
    """What an import did: episodes written now, found done from an earlier run, skipped (with reasons)."""

    out: Path
    imported: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    notes: list[dict] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"imported": self.imported, "resumed": self.resumed, "skipped": self.skipped, "notes": self.notes,
                "counts": {"imported": len(self.imported), "resumed": len(self.resumed),
                           "skipped": len(self.skipped), "notes": len(self.notes)}}


def safe_id(raw: str) -> str:
    """An episode id usable as a file name: characters outside ``[A-Za-z0-9._-]`` become ``_``, no leading dot."""
    s = re.sub(r"[^A-Za-z0-9._-]", "_", raw).lstrip(".") or "episode"
    return s if s == raw else f"{s}-{hashlib.sha1(raw.encode()).hexdigest()[:6]}"


def locate_video(videos: Path, name: str, index: dict[str, list[Path]]) -> tuple[Path | None, str]:
    """The source file of ``name`` (a path relative to ``videos``, or a video id found as ``<id>.<ext>`` below it),
    or ``(None, reason)``. A name that leads outside ``videos`` (``..``, an absolute path, a link out) is refused."""
    root = videos.resolve()
    if Path(name).is_absolute() or "\x00" in name:
        return None, f"video path {name!r} is outside --videos {videos} (use a path relative to it)"
    direct = (videos / name).resolve()
    if not direct.is_relative_to(root):
        return None, f"video path {name!r} leads outside --videos {videos}; refused"
    if direct.is_file():
        return direct, ""
    hits = index.get(Path(name).name) or index.get(name, [])
    if len(hits) > 1:
        shown = ", ".join(str(p.relative_to(videos)) for p in hits[:3])
        return None, (f"video {name!r} is ambiguous: {len(hits)} files match ({shown}); name the file's path "
                      f"relative to --videos in the annotations")
    for p in hits:
        rp = p.resolve()
        if not rp.is_relative_to(root):
            return None, f"video {p} links outside --videos {videos}; refused"
        return rp, ""
    return None, f"video {name!r} not found under {videos} (looked for {name} and {name}.{{{','.join(e[1:] for e in VIDEO_EXTS)}}})"


def index_videos(videos: Path, exclude: Path | None = None) -> dict[str, list[Path]]:
    """Every video file below ``videos`` by its stem and by its name (one walk, so ids resolve without a glob each),
    leaving out what lies in ``exclude`` (the import's own output, when --out is inside --videos)."""
    out: dict[str, list[Path]] = {}
    skip = exclude.resolve() if exclude is not None else None
    for p in sorted(videos.rglob("*")):
        if skip is not None and p.resolve().is_relative_to(skip):
            continue
        if p.suffix.lower() in VIDEO_EXTS and (p.is_file() or p.is_symlink()):
            out.setdefault(p.stem, []).append(p)
            out.setdefault(p.name, []).append(p)
    return out


def import_dataset(cfg: ImportConfig, progress: bool = True,
                   on_done: Callable[[str, dict], None] | None = None) -> ImportResult:
    """Run (or resume) an import; returns what was imported, resumed and skipped. Everything that can be checked
    before writing (format, annotation file, folders, an existing ``--out``) is checked first. ``on_done(id, result)``
    is called in the main process after each episode is journalled."""
    from spiral.data.importers import normalize_format

    cfg = cfg.model_copy(update={"format": normalize_format(cfg.format)})
    if not cfg.videos.is_dir():
        raise FileNotFoundError(f"--videos {cfg.videos} is not a folder")
    episodes = read_source(cfg.format, cfg.source, cfg.level)
    if cfg.limit:
        episodes = episodes[: cfg.limit]
    done = _prepare_out(cfg)
    out = cfg.out
    result = ImportResult(out)
    index = index_videos(cfg.videos, exclude=out)
    jobs, order, used = [], [], set()
    for ep in episodes:
        eid = safe_id(ep.id)
        while eid in used:
            eid = f"{eid}_"
        used.add(eid)
        order.append(eid)
        if eid in done:
            result.resumed.append(eid)
            continue
        src, why = locate_video(cfg.videos, ep.video, index)
        if src is None:
            result.skipped.append({"id": eid, "video": ep.video, "reason": why})
            continue
        jobs.append({"id": eid, "source": ep.model_dump(), "src": str(src), "out": str(out), "fps": cfg.fps,
                     "size": cfg.size, "quality": cfg.quality, "format": cfg.format, "parse": cfg.parse_steps})

    def finish(res: dict) -> None:
        eid = res["id"]
        result.notes += [{"id": eid, "note": n} for n in res.get("notes", [])]
        if "episode" not in res:
            result.skipped.append({"id": eid, "video": res["video"], "reason": res["error"]})
        else:
            atomic.append_line(out / JOURNAL, json.dumps({"episode": res["episode"], "notes": res.get("notes", [])}))
            done[eid] = res["episode"]
            result.imported.append(eid)
        if on_done:
            on_done(eid, res)

    _run(jobs, cfg, finish, progress)
    eps = [Episode.model_validate(done[e]) for e in order if e in done]
    if eps:
        write_manifest(out, eps)
    elif (out / MANIFEST).exists():
        (out / MANIFEST).unlink()
    atomic.write_json(out / REPORT, result.to_json())
    return result


def _prepare_out(cfg: ImportConfig) -> dict[str, dict]:
    """Check ``--out`` and return the episodes an earlier run with the same settings finished (id → episode)."""
    out = cfg.out
    settings = out / SETTINGS
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder")
    if settings.is_file():
        try:
            old = json.loads(settings.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ValueError(f"{settings} is damaged; import into a new --out folder") from None
        if old != cfg.key():
            diff = ", ".join(f"{k}: {old.get(k)!r} → {v!r}" for k, v in cfg.key().items() if old.get(k) != v)
            raise ValueError(f"--out {out} holds an import made with other settings ({diff}); nothing was written: "
                             f"use the same settings to resume, or a new --out")
    elif out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} already holds files that are not an import (nothing was written); "
                              f"choose a new or empty folder")
    (out / "videos").mkdir(parents=True, exist_ok=True)
    atomic.remove_temp_files(out / "videos")
    atomic.remove_temp_files(out)
    if not settings.is_file():
        atomic.write_json(settings, cfg.key())
    done: dict[str, dict] = {}
    atomic.repair_jsonl(out / JOURNAL)
    for rec in atomic.read_jsonl(out / JOURNAL, torn_tail_ok=False):
        ep = rec.get("episode") or {}
        if isinstance(ep.get("id"), str) and (out / str(ep.get("video", ""))).is_file():
            done[ep["id"]] = ep
    return done


def _run(jobs: list[dict], cfg: ImportConfig, finish: Callable[[dict], None], progress: bool) -> None:
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"importing {len(jobs)} videos", total=len(jobs))

        def done(res: dict) -> None:
            finish(res)
            bar.advance(task)

        if cfg.ray:
            _run_ray(jobs, cfg, done)
        elif cfg.workers > 1 and len(jobs) > 1:
            _run_pool(jobs, cfg.workers, done)
        else:
            for job in jobs:
                done(import_episode(job))


def _run_pool(jobs: list[dict], workers: int, done: Callable[[dict], None]) -> None:
    """Local processes (spawn: no forked decoder state); a worker that dies fails only its episode."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(import_episode, j): j for j in jobs}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as e:  # noqa: BLE001 - the worker process died (killed, out of memory)
                j = futures[fut]
                res = {"id": j["id"], "video": j["source"]["video"], "error": f"worker died: {type(e).__name__}: {e}"}
            done(res)


def _run_ray(jobs: list[dict], cfg: ImportConfig, done: Callable[[dict], None]) -> None:
    """Episodes as Ray tasks (``ray`` = a cluster address, or 'local' for a local cluster of ``workers`` CPUs). The
    workers must see the same ``--videos`` and ``--out`` paths (a shared file system)."""
    try:
        import ray
    except ImportError:
        raise ImportError("--ray needs Ray: pip install 'spiral-video[ray]'") from None
    started = not ray.is_initialized()
    if started:
        if cfg.ray == "local":
            ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=cfg.ray, log_to_driver=False)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(import_episode)
        refs = {remote.remote(j): j for j in jobs}
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                res = ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the worker died
                j = refs[ready[0]]
                res = {"id": j["id"], "video": j["source"]["video"], "error": f"worker died: {type(e).__name__}: {e}"}
            done(res)
    finally:
        if started:
            ray.shutdown()


def frame_index(seconds: float, t0: float, fps: float) -> int:
    """The clip frame showing ``seconds`` of the source, for a clip starting at source time ``t0`` at ``fps``: the
    nearest one (halves round up, also when float noise puts them a hair below)."""
    return math.floor((seconds - t0) * fps + 0.5 + 1e-9)


def import_episode(job: dict) -> dict:
    """Cut one episode's clip and return ``{"id", "episode", "notes"}`` or ``{"id", "video", "error"}`` (runs in a
    worker; never raises for a bad video: the reason goes into the import report)."""
    from spiral.video import ClipStats, VideoWriter, decode_digest, probe, read_clip

    src = SourceEpisode.model_validate(job["source"])
    eid, notes = job["id"], []
    try:
        info = probe(job["src"])
    except ValueError as e:
        return {"id": eid, "video": src.video, "error": f"unreadable video: {e}"}
    src_fps = info["fps"]
    out_fps = job["fps"] or src_fps
    steps = []
    for i, s in enumerate(src.steps):
        if s.end <= s.start:
            notes.append(f"step {i} ({s.text!r}) dropped: it ends ({s.end} s) before it starts ({s.start} s)")
        elif s.end <= 0:
            notes.append(f"step {i} ({s.text!r}) dropped: it ends before the video starts")
        else:
            steps.append(s)
    if not steps:
        return {"id": eid, "video": src.video, "error": "no step with a valid time span", "notes": notes}
    # the clip starts on the source frame nearest the first step's start, so output frame 0 *is* a source frame
    t0 = max(0.0, frame_index(min(s.start for s in steps), 0.0, src_fps) / src_fps)
    t1 = max(s.end for s in steps)
    if info["duration"] is not None:
        t1 = min(t1, info["duration"])
    if job["size"]:
        size = tuple(job["size"])
    else:
        size = (info["height"] - info["height"] % 2, info["width"] - info["width"] % 2) \
            if job["quality"] == "web" else (info["height"], info["width"])
    if min(size) < 2:
        return {"id": eid, "video": src.video, "error": f"video is {info['height']}x{info['width']}: too small"}
    path = Path(job["out"]) / "videos" / f"{eid}.mp4"
    stats = ClipStats()
    try:
        with VideoWriter(path, out_fps, job["quality"]) as w:
            for frame in read_clip(job["src"], t0, t1, fps=out_fps,
                                   size=None if size == (info["height"], info["width"]) else size, stats=stats):
                w.write(frame)
        n, digest = decode_digest(path)
    except ValueError as e:
        return {"id": eid, "video": src.video, "error": f"corrupt video: {e}", "notes": notes}
    if n != w.frames:
        path.unlink(missing_ok=True)
        return {"id": eid, "video": src.video, "error": f"wrote {w.frames} frames but {n} decode back"}
    t_last = t0 + (n - 1) / out_fps
    records = []
    for i, s in enumerate(src.steps):
        if s not in steps:
            continue
        a, b = frame_index(max(s.start, t0), t0, out_fps), frame_index(s.end, t0, out_fps)
        if a > n - 1:
            notes.append(f"step {i} ({s.text!r}) dropped: it starts at {s.start:.2f} s, after the video's last frame "
                         f"({t_last:.2f} s)")
            continue
        if b > n - 1:
            if s.end - t_last > 1.0 / out_fps:
                notes.append(f"step {i} ({s.text!r}) clipped: it ends at {s.end:.2f} s, the video at {t_last:.2f} s")
            b = n - 1
        if b <= a:
            if a + 1 > n - 1:
                notes.append(f"step {i} ({s.text!r}) dropped: shorter than two frames at the video's end")
                continue
            b = a + 1  # a step shorter than one frame still spans two (StepRecord needs end > start)
        verb, objects = parse_step(s.text) if job["parse"] else (None, [])
        records.append(StepRecord(text=s.text, verb=verb, objects=objects, start_frame=a, end_frame=b))
    if not records:
        path.unlink(missing_ok=True)
        return {"id": eid, "video": src.video, "error": "no step lies inside the video", "notes": notes}
    ep = Episode(id=eid, goal=src.goal, video=f"videos/{eid}.mp4", fps=out_fps, resolution=(size[0], size[1]),
                 steps=records, source=job["format"], split=src.split, frames_sha256=digest)
    return {"id": eid, "episode": json.loads(ep.model_dump_json(exclude_none=True)), "notes": notes,
            "decoded": stats.decoded}
