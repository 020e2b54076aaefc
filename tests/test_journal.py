"""Crash safety of a run folder (issue 22 item 1): a torn last journal line is moved aside and the run resumes to
the same video from any byte offset; temporary files of interrupted writes and a cut-short creation are cleaned.

The runs use the oracle world generator (configs/run/tabletop-oracle.yaml): fast, and deterministic by seed."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from spiral import atomic
from spiral.api import run
from spiral.compose import compose
from spiral.rundir import CREATING, RunDir, load_frames

ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
GOAL = "turn on the lamp and open the box"
ARGS = dict(scene=4, seed=9, config=ORACLE, overrides=["generator.options.failure_rate=0.5", "output.report=false"])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_thread):
    """One finished run whose journal holds a refine, a re-plan and two plan versions (5 lines)."""
    out = tmp_path_factory.mktemp("tear") / "ref"
    rec = run(GOAL, out=out, **ARGS)
    assert rec.status == "success" and [a.decision for a in rec.attempts] == ["refine", "replan", "regenerate", "accept",
                                                                               "accept"]
    return out


def _video(out: Path) -> np.ndarray:
    rec = json.loads((out / "record.json").read_text())
    return compose([load_frames(out / p) for p in rec["accepted"]], 0)[0]


def test_torn_tail_is_moved_aside_and_the_next_line_starts_on_its_own(tmp_path):
    j = tmp_path / "attempts.jsonl"
    atomic.append_line(j, json.dumps({"a": 1}))
    with open(j, "ab") as f:
        f.write(b'{"a": 2, "b": [1, 2')  # a crash mid-append
    assert atomic.read_jsonl(j) == [{"a": 1}]  # readers skip it and change nothing
    assert j.read_bytes().endswith(b"[1, 2")
    atomic.append_line(j, json.dumps({"a": 3}))  # before issue 22 this line merged into the fragment
    assert atomic.read_jsonl(j) == [{"a": 1}, {"a": 3}]
    assert (tmp_path / "attempts.jsonl.torn").read_bytes() == b'{"a": 2, "b": [1, 2\n'
    # a complete record that lost only its newline is kept
    with open(j, "ab") as f:
        f.write(b'{"a": 4}')
    atomic.append_line(j, json.dumps({"a": 5}))
    assert [x["a"] for x in atomic.read_jsonl(j)] == [1, 3, 4, 5]
    # damage before the last line is not a crash's doing: one clear error naming file and line
    j.write_bytes(b'{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(atomic.JournalError, match=r"attempts.jsonl line 2 is damaged"):
        atomic.read_jsonl(j)


def test_a_torn_journal_resumes_instead_of_bricking_the_run(reference, tmp_path):
    """The issue's reproduction: the last line cut in half, then --resume, report and --resume again."""
    from spiral.report import write_report

    run_dir = tmp_path / "r"
    shutil.copytree(reference, run_dir)
    j = run_dir / "attempts.jsonl"
    lines = j.read_bytes().splitlines(keepends=True)
    j.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    rec = run(resume=run_dir)
    assert rec.status == "success" and np.array_equal(_video(run_dir), _video(reference))
    assert len(atomic.read_jsonl(j)) == len(lines)  # the cut attempt was made again, once
    assert (run_dir / "attempts.jsonl.torn").read_bytes() == lines[-1][: len(lines[-1]) // 2] + b"\n"
    assert write_report(run_dir).is_file()
    assert run(resume=run_dir).accepted == rec.accepted


def test_every_byte_offset_of_the_journal_resumes_to_the_same_video(reference, tmp_path, bench_script):
    """Cut the journal at every byte offset (what a crash mid-append can leave at any point of the run).

    At every offset the repair keeps exactly the complete lines before the cut (the fragment goes to
    attempts.jsonl.torn), so the repaired folder is byte-identical to one of len(lines) + 2 states; the loop
    is a pure function of that folder. Each of those states, and offsets inside lines, are resumed to the
    reference video here through the file-level path (RunDir.open); a full resume from every single offset
    (~0.2 s each) is benchmarks/journal_tear.py (results: benchmarks/results/journal_tear.json)."""
    tear = bench_script("journal_tear")
    journal = (reference / "attempts.jsonl").read_bytes()
    ends = np.cumsum([len(x) for x in journal.splitlines(keepends=True)]).tolist()
    for k in range(len(journal) + 1):
        complete = max([0] + [e for e in ends if e <= k])  # the complete lines before the cut
        whole = k + 1 in ends  # the cut took only the newline: the record is complete and kept
        keep, moved = atomic.split_torn(journal[:k])
        assert keep == (journal[: k + 1] if whole else journal[:complete]), k
        assert moved == (b"" if whole else journal[complete:k]), k
    for k in (0, 5, ends[0] - 1, ends[0], ends[1] + 7, len(journal) - 1):  # the same through the files
        got, torn = tear.repair_at(reference, journal, k, tmp_path / "scratch")
        assert got == atomic.split_torn(journal[:k])[0]
        assert torn == (atomic.split_torn(journal[:k])[1] + b"\n" if atomic.split_torn(journal[:k])[1] else b"")
    # every distinct repaired state, plus offsets inside lines and around the boundaries, resumes to the video
    rng = np.random.default_rng(0)
    offsets = sorted({0, *ends, *[e - 1 for e in ends], *[e + 1 for e in ends[:-1]],
                      *rng.integers(1, len(journal), 8).tolist()})
    results = tear.resume_at(reference, offsets, tmp_path / "runs")
    assert [r["offset"] for r in results] == offsets
    bad = [r for r in results if not (r["same_video"] and r["same_accepted"] and r["no_duplicates"])]
    assert not bad, bad


def test_resume_cleans_temporary_files_of_interrupted_writes(reference, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(reference, run_dir)
    (run_dir / "final.mp4").unlink()
    leftovers = [run_dir / ".final.k3j_x9.mp4.tmp", run_dir / ".record.ab12.json.tmp",
                 run_dir / "segments" / ".v0_s01_a00.zz9.npz.tmp"]
    for p in leftovers:
        p.write_bytes(b"half a file")
    keep = run_dir / "notes.tmp.txt"
    keep.write_text("mine")
    run(resume=run_dir)
    assert not any(p.exists() for p in leftovers)
    assert keep.read_text() == "mine" and (run_dir / "final.mp4").is_file()


def test_a_creation_cut_short_is_completed_by_rerunning_the_command(tmp_path):
    """Killed inside RunDir.create (before meta.json): rerunning the same command finishes the folder instead of
    refusing it as 'not empty' while --resume refuses it as 'not a run'."""
    out = tmp_path / "r"
    out.mkdir()
    (out / CREATING).write_text("")
    (out / "first_frame.png").write_bytes(b"\x89PNG half")
    (out / ".config.x1.yaml.tmp").write_text("half")
    rec = run(GOAL, out=out, **ARGS)
    assert rec.status == "success" and not (out / CREATING).exists() and not (out / ".config.x1.yaml.tmp").exists()
    with pytest.raises(FileExistsError, match="not empty"):  # anything else in a folder is never written over
        other = tmp_path / "mine"
        other.mkdir()
        (other / "config.yaml").write_text("my own file")
        run(GOAL, out=other, **ARGS)
    assert (other / "config.yaml").read_text() == "my own file"


def test_a_journal_line_that_is_not_an_attempt_is_one_clear_error(reference, tmp_path):
    run_dir = tmp_path / "r"
    shutil.copytree(reference, run_dir)
    j = run_dir / "attempts.jsonl"
    j.write_bytes(b'{"plan_version": 0}\n' + j.read_bytes())
    with pytest.raises(atomic.JournalError, match="record 1 is not an attempt record"):
        RunDir.open(run_dir)
    # a journal line pointing outside the folder is never read
    line = json.loads(j.read_bytes().splitlines()[1])
    j.write_text(json.dumps({**line, "segment_file": "../../../etc/passwd"}) + "\n")
    assert RunDir.open(run_dir).logged_attempt(line["plan_version"], line["step"], line["attempt"]) is None
