"""Readers of published step annotations of procedural videos, as their datasets ship them (DESIGN §5).

Each reader turns one annotation source into :class:`SourceEpisode` records (video name, goal, steps in seconds);
:mod:`spiral.data.import_videos` then cuts the clips and writes an ActVideoGen-Dataset. The formats:

- ``coin``: ``COIN.json`` — ``{"database": {youtube_id: {"class": task, "recipe_type": task id, "subset":
  "training"|"testing", "annotation": [{"id": step id, "segment": [start, end], "label": step text}]}}}``.
- ``crosstask``: the release folder — ``tasks_primary.txt`` (blocks of task id, name, url, number of steps,
  comma-separated step names, blank line; ``tasks_related.txt`` too if present), ``annotations/<task>_<video>.csv``
  (lines ``step,start,end``; steps count from 1) and optionally ``videos_val.csv`` (``task,video,url``: split val).
- ``ego4d-goalstep``: ``goalstep_{train,val}.json`` — ``{"videos": [{"video_uid", "goal_description",
  "goal_category", "segments": [{"start_time", "end_time", "step_description", "segments": [substeps]}]}]}``;
  ``level="substep"`` takes each step's substeps where it has some.
- ``csv`` / ``jsonl``: one step per row — ``video``, ``goal``, ``start``, ``end`` (seconds), ``text``, optional
  ``episode`` (to split one video into several episodes) and ``split``; a JSONL line may instead be a whole
  episode with ``steps: [{text, start, end}]``. Common synonyms of the column names are accepted.

A file of another format is refused with one line that names the format it looks like.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")
FORMATS = ("coin", "crosstask", "ego4d-goalstep", "csv", "jsonl")
ALIASES = {"goalstep": "ego4d-goalstep", "ego4d": "ego4d-goalstep"}


class ImportFormatError(ValueError):
    """The annotation source cannot be read as the named format (the message names the fix)."""


class SourceStep(BaseModel):
    """One annotated step: its text and its time span in seconds of the source video."""

    text: str = Field(description="the step as the annotators wrote it")
    start: float = Field(description="seconds from the start of the source video")
    end: float = Field(description="seconds from the start of the source video (after start)")


class SourceEpisode(BaseModel):
    """One goal performed in one source video, with its steps in time order."""

    id: str = Field(description="episode id, unique within the import (the video id unless a video holds several)")
    video: str = Field(description="the video's id (found as <id>.<ext> under --videos) or a path relative to it")
    goal: str
    steps: list[SourceStep]
    split: str = "train"


def normalize_format(name: str) -> str:
    """The canonical format name, or an ImportFormatError listing the known ones."""
    key = name.strip().lower()
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ImportFormatError(f"unknown import format {name!r}; use one of: {', '.join(FORMATS)}")
    return key


def read_source(fmt: str, source: str | Path, level: Literal["step", "substep"] = "step") -> list[SourceEpisode]:
    """Read an annotation source in format ``fmt`` (see the module doc) into episodes with at least one step."""
    fmt = normalize_format(fmt)
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"annotation source {source} does not exist")
    if fmt in ("csv", "jsonl"):
        episodes = _read_table(source, fmt)
    elif fmt == "ego4d-goalstep":
        episodes = _read_goalstep(source, level)
    else:
        episodes = {"coin": _read_coin, "crosstask": _read_crosstask}[fmt](source)
    episodes = [e for e in episodes if e.steps]
    if not episodes:
        raise ImportFormatError(f"{source} holds no annotated steps to import")
    _unique_ids(episodes)
    return episodes


def guess_format(source: str | Path) -> str | None:
    """Which known format a file or folder looks like (None when none): used to name the fix in an error."""
    p = Path(source)
    if p.is_dir():
        return "crosstask" if (p / "tasks_primary.txt").is_file() or (p / "annotations").is_dir() else None
    try:
        head = p.read_bytes()[:1 << 20].decode("utf-8", errors="replace")
    except OSError:
        return None
    stripped = head.lstrip()
    if stripped.startswith("{"):
        if re.search(r'"database"\s*:', head) and '"annotation"' in head:
            return "coin"
        if re.search(r'"videos"\s*:', head) and '"segments"' in head:
            return "ego4d-goalstep"
        if '"video"' in stripped.split("\n", 1)[0]:
            return "jsonl"
        return None
    first = stripped.split("\n", 1)[0].lower()
    cols = {c.strip() for c in first.split(",")}
    if cols & _SYNONYMS["video"] and cols & _SYNONYMS["start"]:
        return "csv"
    if re.fullmatch(r"\s*\d+\s*,\s*[\d.]+\s*,\s*[\d.]+\s*", first):
        return "crosstask"  # one of its per-video annotation files
    return None


def _not_format(source: Path, fmt: str, why: str) -> ImportFormatError:
    guess = guess_format(source)
    hint = (f"; it looks like {guess}: use `spiral data import {guess} {source} ...`" if guess and guess != fmt
            else f"; see docs/data_import.md for the {fmt} layout")
    return ImportFormatError(f"{source} is not a {fmt} annotation source ({why}){hint}")


def _load_json(source: Path, fmt: str) -> Any:
    if source.is_dir():
        raise _not_format(source, fmt, "it is a folder, expected a JSON file")
    try:
        return json.loads(source.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _not_format(source, fmt, f"not JSON: {getattr(e, 'msg', None) or e.reason}") from None


def _seconds(x: Any, what: str) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: {x!r} is not a number of seconds") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise ValueError(f"{what}: {x!r} is not a number of seconds")
    return v


def _words_of_camel(name: str) -> str:
    """'ChangeCarTire' → 'change car tire' (COIN's task names)."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", name).replace("_", " ").strip().lower()


# --- COIN -------------------------------------------------------------------------------------------------


def _read_coin(source: Path) -> list[SourceEpisode]:
    data = _load_json(source, "coin")
    db = data.get("database") if isinstance(data, dict) else None
    if not isinstance(db, dict):
        raise _not_format(source, "coin", "no 'database' object of videos")
    out = []
    for vid, entry in db.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("annotation"), list):
            raise _not_format(source, "coin", f"video {vid!r} has no 'annotation' list")
        steps = []
        for k, a in enumerate(entry["annotation"]):
            where = f"{source.name}: video {vid} annotation {k}"
            seg = a.get("segment") if isinstance(a, dict) else None
            if not isinstance(seg, list) or len(seg) != 2:
                raise ImportFormatError(f"{where}: 'segment' must be [start, end] in seconds")
            steps.append(SourceStep(text=str(a.get("label", "")).strip(), start=_seconds(seg[0], where),
                                    end=_seconds(seg[1], where)))
        subset = str(entry.get("subset", "training")).lower()
        split = {"training": "train", "testing": "test", "validation": "val"}.get(subset, subset)
        goal = _words_of_camel(str(entry.get("class") or entry.get("recipe_type") or "")) or "unknown task"
        out.append(SourceEpisode(id=str(vid), video=str(vid), goal=goal, steps=_ordered(steps), split=split))
    return out


# --- CrossTask --------------------------------------------------------------------------------------------


def _read_task_file(path: Path) -> dict[str, dict]:
    """CrossTask's tasks_*.txt: blocks of five lines (id, name, url, number of steps, steps) and a blank line."""
    lines = path.read_text(encoding="utf-8").split("\n")
    tasks, i = {}, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        block = [x.strip() for x in lines[i:i + 5]]
        if len(block) < 5 or not block[3].isdigit():
            raise ImportFormatError(f"{path} line {i + 1}: expected a task block (id, name, url, number of steps, "
                                    f"comma-separated steps)")
        steps = [s.strip() for s in block[4].split(",")]
        if len(steps) != int(block[3]):
            raise ImportFormatError(f"{path} line {i + 5}: task {block[0]} says {block[3]} steps but lists "
                                    f"{len(steps)}")
        tasks[block[0]] = {"name": block[1], "url": block[2], "steps": steps}
        i += 5
    return tasks


def _read_crosstask(source: Path) -> list[SourceEpisode]:
    if not source.is_dir() or not (source / "tasks_primary.txt").is_file():
        raise _not_format(source, "crosstask", "expected the release folder with tasks_primary.txt and annotations/")
    tasks = _read_task_file(source / "tasks_primary.txt")
    if (source / "tasks_related.txt").is_file():
        tasks.update(_read_task_file(source / "tasks_related.txt"))
    val: set[tuple[str, str]] = set()
    if (source / "videos_val.csv").is_file():
        for row in csv.reader((source / "videos_val.csv").read_text(encoding="utf-8").splitlines()):
            if len(row) >= 2:
                val.add((row[0].strip(), row[1].strip()))
    ann_dir = source / "annotations"
    if not ann_dir.is_dir():
        raise _not_format(source, "crosstask", "no annotations/ folder")
    out = []
    for f in sorted(ann_dir.glob("*.csv")):
        task, sep, vid = f.stem.partition("_")
        if not sep or task not in tasks:
            raise ImportFormatError(f"{f}: expected the name <task id>_<video id>.csv with a task of tasks_*.txt "
                                    f"(got task {task!r})")
        names = tasks[task]["steps"]
        steps = []
        for n, row in enumerate(csv.reader(f.read_text(encoding="utf-8").splitlines()), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) != 3 or not row[0].strip().isdigit():
                raise ImportFormatError(f"{f} line {n}: expected 'step,start,end' (step counted from 1), got "
                                        f"{','.join(row)!r}")
            k = int(row[0])
            if not 1 <= k <= len(names):
                raise ImportFormatError(f"{f} line {n}: step {k} is not one of task {task}'s {len(names)} steps")
            where = f"{f.name} line {n}"
            steps.append(SourceStep(text=names[k - 1], start=_seconds(row[1], where), end=_seconds(row[2], where)))
        out.append(SourceEpisode(id=f"{task}_{vid}", video=vid, goal=tasks[task]["name"], steps=_ordered(steps),
                                 split="val" if (task, vid) in val else "train"))
    return out


# --- Ego4D GoalStep ---------------------------------------------------------------------------------------


def _read_goalstep(source: Path, level: str) -> list[SourceEpisode]:
    data = _load_json(source, "ego4d-goalstep")
    videos = data.get("videos") if isinstance(data, dict) else None
    if not isinstance(videos, list):
        raise _not_format(source, "ego4d-goalstep", "no 'videos' list")
    split = {"valid": "val", "validation": "val"}.get(str(data.get("split", "train")), str(data.get("split", "train")))
    out = []
    for k, v in enumerate(videos):
        if not isinstance(v, dict) or "video_uid" not in v or not isinstance(v.get("segments"), list):
            raise _not_format(source, "ego4d-goalstep", f"videos[{k}] has no 'video_uid' and 'segments'")
        steps = []
        for i, seg in enumerate(v["segments"]):
            kids = seg.get("segments") if isinstance(seg, dict) else None
            for j, s in enumerate(kids if level == "substep" and kids else [seg]):
                where = f"{source.name}: video {v['video_uid']} segment {i}" + (f".{j}" if s is not seg else "")
                if not isinstance(s, dict):
                    raise ImportFormatError(f"{where}: expected an object with start_time, end_time, step_description")
                text = s.get("step_description") or s.get("step_category") or ""
                steps.append(SourceStep(text=str(text).strip(), start=_seconds(s.get("start_time"), where),
                                        end=_seconds(s.get("end_time"), where)))
        goal = v.get("goal_description") or _words_of_camel(str(v.get("goal_category", "")).split(":")[-1])
        out.append(SourceEpisode(id=str(v["video_uid"]), video=str(v["video_uid"]), goal=str(goal).strip(),
                                 steps=_ordered(steps), split=split))
    return out


# --- generic CSV / JSONL ----------------------------------------------------------------------------------

_SYNONYMS = {
    "video": {"video", "video_id", "video_uid", "video_path", "path", "file", "filename"},
    "goal": {"goal", "task", "task_name", "goal_description", "instruction"},
    "start": {"start", "start_time", "start_sec", "start_s", "start_seconds", "begin", "t0"},
    "end": {"end", "end_time", "end_sec", "end_s", "end_seconds", "stop", "t1"},
    "text": {"text", "step", "step_text", "step_description", "description", "caption", "label", "action"},
    "episode": {"episode", "episode_id", "id"},
    "split": {"split", "subset"},
}


def _field(row: dict, key: str) -> Any:
    for name in _SYNONYMS[key]:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _read_table(source: Path, fmt: str) -> list[SourceEpisode]:
    if source.is_dir():
        raise _not_format(source, fmt, "it is a folder, expected a file")
    try:
        text = source.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _not_format(source, fmt, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
    rows: list[tuple[int, dict]] = []
    if fmt == "csv":
        reader = csv.DictReader(text.splitlines())
        header = {(h or "").strip().lower() for h in (reader.fieldnames or [])}
        missing = [k for k in ("video", "goal", "start", "end", "text") if not header & _SYNONYMS[k]]
        if missing:
            raise _not_format(source, fmt, f"its header has no {', '.join(missing)} column (need video, goal, "
                                           f"start, end, text)")
        for n, row in enumerate(reader, start=2):
            rows.append((n, {(k or "").strip().lower(): (v.strip() if isinstance(v, str) else v)
                             for k, v in row.items()}))
    else:
        for n, line in enumerate(text.split("\n"), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise _not_format(source, fmt, f"line {n} is not JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise _not_format(source, fmt, f"line {n} is not a JSON object")
            rows.append((n, {k.lower(): v for k, v in obj.items()}))
    episodes: dict[str, SourceEpisode] = {}
    for n, row in rows:
        where = f"{source.name} line {n}"
        video, goal = _field(row, "video"), _field(row, "goal")
        if video is None or goal is None:
            raise ImportFormatError(f"{where}: needs a video and a goal")
        if isinstance(row.get("steps"), list):  # a whole episode on one JSONL line
            steps = []
            for k, s in enumerate(row["steps"]):
                if not isinstance(s, dict):
                    raise ImportFormatError(f"{where}: steps[{k}] must be an object with text, start, end")
                steps.append(_row_step(s, f"{where} steps[{k}]"))
            eid = str(_field(row, "episode") or _video_stem(str(video)))
            if eid in episodes:
                raise ImportFormatError(f"{where}: episode {eid!r} appears twice")
            episodes[eid] = SourceEpisode(id=eid, video=str(video), goal=str(goal), steps=steps,
                                          split=str(_field(row, "split") or "train"))
            continue
        eid = str(_field(row, "episode") or _video_stem(str(video)))
        ep = episodes.get(eid)
        if ep is None:
            ep = episodes[eid] = SourceEpisode(id=eid, video=str(video), goal=str(goal), steps=[],
                                               split=str(_field(row, "split") or "train"))
        elif ep.video != str(video) or ep.goal != str(goal):
            raise ImportFormatError(f"{where}: episode {eid!r} changes its video or goal; give each its own "
                                    f"'episode' value")
        ep.steps.append(_row_step(row, where))
    for ep in episodes.values():
        ep.steps = _ordered(ep.steps)
    return list(episodes.values())


def _video_stem(video: str) -> str:
    """The default episode id of a video path: without its extension ('kitchen/a.mp4' → 'kitchen/a')."""
    p = Path(video)
    return str(p.with_suffix("")) if p.suffix.lower() in VIDEO_EXTS else video


def _row_step(row: dict, where: str) -> SourceStep:
    text, start, end = _field(row, "text"), _field(row, "start"), _field(row, "end")
    if text is None or start is None or end is None:
        raise ImportFormatError(f"{where}: a step needs text, start and end (seconds)")
    return SourceStep(text=str(text).strip(), start=_seconds(start, where), end=_seconds(end, where))


# --- shared -----------------------------------------------------------------------------------------------


def _ordered(steps: list[SourceStep]) -> list[SourceStep]:
    return sorted(steps, key=lambda s: (s.start, s.end))


def _unique_ids(episodes: list[SourceEpisode]) -> None:
    """Several goals of one video (or repeated ids) get suffixes ``-2``, ``-3``, ... in their order."""
    taken: set[str] = set()
    for ep in episodes:
        base, n = ep.id, 1
        while ep.id in taken:
            n += 1
            ep.id = f"{base}-{n}"
        taken.add(ep.id)


_PARTICLES = {"up", "down", "off", "out", "on", "in", "over", "away", "back", "together", "apart"}
_PREPOSITIONS = {"into", "onto", "on", "in", "to", "from", "with", "at", "of", "off", "out", "over", "under",
                 "inside", "for", "by", "using", "and", "then", "through", "around", "across", "until", "before",
                 "after", "while", "near", "next", "beside", "between", "up", "down", "upon", "within", "without"}
_DETERMINERS = {"the", "a", "an", "some", "your", "his", "her", "their", "its", "this", "that", "these", "those",
                "all", "any", "each", "more", "few", "it", "them"}


def parse_step(text: str) -> tuple[str | None, list[str]]:
    """Verb and objects of a step's text: the tabletop action when the text is one (its exact wording), else a
    rough split of an imperative phrase — the first word (with a particle: "jack up") and the noun phrases between
    prepositions ("add flour into the dough mixer" → "add", ["flour", "dough mixer"]). ``(None, [])`` when there is
    no word to take. It is a heuristic, good for COIN/CrossTask's imperative steps, rough for descriptions such as
    Ego4D's "Kneads the dough"; the step text stays the reference."""
    action = _tabletop_actions().get(text.strip().lower())
    if action is not None:
        return action.verb, list(action.args)
    words = re.findall(r"[a-z][a-z'-]*", text.lower())
    if not words:
        return None, []
    verb, rest = words[0], words[1:]
    if len(rest) >= 2 and rest[0] in _PARTICLES and rest[1] not in _PREPOSITIONS:
        verb, rest = f"{verb} {rest[0]}", rest[1:]
    objects, cur = [], []
    for w in rest + ["and"]:
        if w in _PREPOSITIONS:
            if cur:
                objects.append(" ".join(cur))
            cur = []
        elif w not in _DETERMINERS:
            cur.append(w)
    return verb, list(dict.fromkeys(objects))


_ACTIONS: dict | None = None


def _tabletop_actions() -> dict:
    global _ACTIONS
    if _ACTIONS is None:
        from spiral.world import domain

        _ACTIONS = {a.text(): a for a in domain.all_actions()}
    return _ACTIONS
