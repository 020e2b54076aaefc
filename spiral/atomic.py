"""Atomic file writes and crash-safe JSON-lines journals.

Whole files are written to a temporary file in the same folder, fsynced and renamed: a run killed at
any instant leaves either the old file or the new one (plus, at worst, a ``.*.tmp`` that
:func:`remove_temp_files` clears on resume), never half of one. Journals are appended one fsynced line
at a time; a crash mid-append can leave a torn last line, which :func:`repair_jsonl` moves aside.
That is what lets ``--resume`` trust every file it finds.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any, *, default: Callable[[Any], Any] | None = None) -> None:
    write_text(path, json.dumps(obj, indent=2, default=default) + "\n")


TEMP_SUFFIX = ".tmp"


def is_temp(path: str | Path) -> bool:
    """Whether ``path`` is the temporary file of an :func:`atomic_path` write (``.<stem>.<random><suffix>.tmp``)."""
    name = Path(path).name
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def remove_temp_files(folder: str | Path) -> list[Path]:
    """Delete what interrupted atomic writes left in ``folder`` (not recursive); returns what was removed.

    Only the folder's owner may call this, when no write to it is in flight (a resume, before it writes).
    """
    folder = Path(folder)
    removed = []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file() and is_temp(p):
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed


class JournalError(ValueError):
    """A JSON-lines journal is damaged before its last line (not what a crash leaves): names the file and line."""


def _parses(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line.decode("utf-8")), dict)
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False


def split_torn(data: bytes) -> tuple[bytes, bytes]:
    """A journal's bytes as (what to keep, the torn tail to move aside); see :func:`repair_jsonl`.

    The last line that is not blank is the one a crash can have torn (what :func:`read_jsonl` skips): if it
    is not a JSON object, it and what follows it go; if it is one, only a missing final newline is added."""
    end = len(data.rstrip(b" \t\r\n"))
    if end == 0:
        return data, b""
    start = data.rfind(b"\n", 0, end) + 1
    if not _parses(data[start:end]):
        return data[:start], data[start:]
    return (data, b"") if data.endswith(b"\n") else (data + b"\n", b"")


def repair_jsonl(path: str | Path) -> bytes:
    """Make a journal end with a complete line again; returns the bytes moved aside (``b""`` if none).

    A crash mid-append leaves a torn last line: bytes after the last newline, or a last line that is not a
    JSON object. That tail is appended to ``<path>.torn`` (kept for inspection) and the journal is truncated
    to its last complete line, so the next append starts a line of its own instead of merging into the
    fragment. A last line that is complete JSON but lacks only its newline gets the newline. Damage before
    the last line is not what a crash leaves: it stays, and :func:`read_jsonl` reports it.

    No fsync here: the repair is idempotent (a crash before it reaches the disk repairs again next time) and
    the next :func:`append_line` fsyncs the same file, truncation included.
    """
    path = Path(path)
    if not path.is_file():
        return b""
    data = path.read_bytes()
    keep, moved = split_torn(data)
    if keep == data:
        return b""
    if moved:
        with open(path.with_name(path.name + ".torn"), "ab") as f:
            f.write(moved if moved.endswith(b"\n") else moved + b"\n")
    if len(keep) > len(data):
        with open(path, "ab") as f:
            f.write(keep[len(data):])
    else:
        with open(path, "r+b") as f:
            f.truncate(len(keep))
    return moved


def append_line(path: str | Path, line: str) -> None:
    """Append one JSON line durably. A torn last line left by an earlier crash is moved aside first
    (:func:`repair_jsonl`), so the new line never merges into a fragment."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if "\n" in line.rstrip("\n"):
        raise ValueError("a journal line must not contain a newline")
    if path.is_file() and path.stat().st_size:
        with open(path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                repair_jsonl(path)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path, torn_tail_ok: bool = True) -> list[dict]:
    """Read a JSON-lines journal; a torn last line (a crash mid-append) is left out, damage before it is a
    :class:`JournalError` naming the file and the line. Reading never changes the file. After
    :func:`repair_jsonl` there is no torn line left: ``torn_tail_ok=False`` then treats the last line like any other
    (a crash tears one line, so two bad lines at the end are damage, not a crash)."""
    out: list[dict] = []
    p = Path(path)
    if not p.exists():
        return out
    lines = p.read_bytes().split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"a {type(obj).__name__}, not a JSON object")
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            if torn_tail_ok and i == len(lines) - 1:
                break
            msg = getattr(e, "msg", None) or str(e) or type(e).__name__
            raise JournalError(f"{p} line {i + 1} is damaged ({msg}); only a crash's torn last line is repaired "
                               f"automatically: restore the file or delete that line") from None
        out.append(obj)
    return out
