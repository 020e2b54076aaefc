"""`spiral data import`: COIN, CrossTask, Ego4D GoalStep and CSV/JSONL annotations (small files in each published
schema) + synthetic mp4s made here → datasets that `spiral data check` passes, with frame ranges that match the
annotated seconds; bad videos reported and skipped; resume; paths outside --videos refused; bad input refused.

Every synthetic frame shows its own index as ten black/white bars, so a frame of an imported clip says which
source frame (and so which second) it is.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from spiral.cli import app
from spiral.data.format import check_dataset
from spiral.data.import_videos import ImportConfig, import_dataset
from spiral.video import ClipStats, read_clip, read_video

BITS = 10
runner = CliRunner()


def frame_for(i: int, h: int, w: int) -> np.ndarray:
    f = np.zeros((h, w, 3), np.uint8)
    bw = w // BITS
    for b in range(BITS):
        if (i >> b) & 1:
            f[:, b * bw:(b + 1) * bw] = 255
    return f


def code_of(f: np.ndarray) -> int:
    """The source frame index a (possibly resized) frame shows."""
    w = f.shape[1]
    bw = w / BITS
    return sum(1 << b for b in range(BITS) if f[:, int(b * bw + bw / 4):int((b + 1) * bw - bw / 4)].mean() > 127)


def make_video(path: Path, n: int, fps: float = 10, gop: int = 10, h: int = 48, w: int = 80) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height = w, h
        s.pix_fmt = "yuv444p" if h % 2 or w % 2 else "yuv420p"
        s.options = {"g": str(gop), "crf": "18"}
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_for(i, h, w), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def assert_frames_match_seconds(out: Path, annotated: dict[str, list[tuple[float, float]]], src_fps: dict[str, float]):
    """Each step's first and last frame show the source frame at its annotated start and end: the nearest frame, so
    within half a frame (plus half a source frame where the clip was resampled) — tighter than the one frame the
    format promises, so that a frame index off by one fails."""
    report = check_dataset(out, decode=True)
    assert report.ok, [str(e) for e in report.errors]
    assert {e.id for e in report.episodes} == set(annotated)
    for ep in report.episodes:
        video = read_video(out / ep.video)
        assert len(annotated[ep.id]) == len(ep.steps)
        for (start, end), step in zip(annotated[ep.id], ep.steps):
            for frame, t in ((step.start_frame, start), (step.end_frame, end)):
                shown = code_of(video[frame]) / src_fps[ep.id]
                slack = 0.5 / ep.fps + (0.5 / src_fps[ep.id] if ep.fps != src_fps[ep.id] else 0.0)
                assert abs(shown - t) <= slack + 1e-6, (ep.id, step.text, frame, shown, t)


def write_coin(path: Path, videos: dict[str, tuple[str, str, list[tuple[float, float, str]]]]) -> Path:
    """COIN.json as published: database → youtube id → class, recipe_type, subset, annotation list."""
    db = {vid: {"recipe_type": 13, "class": cls, "subset": subset, "start": 0.0, "end": 30.0,
                "video_url": f"https://www.youtube.com/embed/{vid}", "duration": 30.0,
                "annotation": [{"id": str(259 + k), "segment": [s, e], "label": text}
                               for k, (s, e, text) in enumerate(steps)]}
          for vid, (cls, subset, steps) in videos.items()}
    path.write_text(json.dumps({"database": db}))
    return path


COIN_STEPS = {
    "-2-8dyeFz0s": ("ChangeCarTire", "training", [(1.0, 3.45, "unscrew the screw"), (3.5, 6.0, "jack up the car"),
                                                  (6.02, 9.87, "remove the tire")]),
    "Xy_9-abc": ("MakeFrenchFries", "testing", [(0.0, 1.35, "cut potato into strips"), (2.0, 4.0, "fry the strips")]),
}


def test_coin_import_passes_check_and_frames_match_seconds(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "13" / "-2-8dyeFz0s.mp4", 110, fps=10)          # COIN keeps videos in folders per task
    make_video(vids / "Xy_9-abc.mp4", 60, fps=12.5, h=50, w=81)       # odd size: made even for H.264 4:2:0
    ann = write_coin(tmp_path / "COIN.json", COIN_STEPS)
    r = runner.invoke(app, ["data", "import", "coin", str(ann), "--videos", str(vids), "--out", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    assert "2 episodes imported" in r.output
    r = runner.invoke(app, ["data", "check", str(tmp_path / "ds")])
    assert r.exit_code == 0, r.output
    annotated = {vid: [(s, e) for s, e, _ in steps] for vid, (_, _, steps) in COIN_STEPS.items()}
    assert_frames_match_seconds(tmp_path / "ds", annotated, {"-2-8dyeFz0s": 10, "Xy_9-abc": 12.5})
    eps = {e.id: e for e in check_dataset(tmp_path / "ds").episodes}
    car = eps["-2-8dyeFz0s"]
    assert car.goal == "change car tire" and car.split == "train" and eps["Xy_9-abc"].split == "test"
    assert [s.text for s in car.steps] == ["unscrew the screw", "jack up the car", "remove the tire"]
    assert (car.steps[1].verb, car.steps[1].objects) == ("jack up", ["car"])
    assert tuple(eps["Xy_9-abc"].resolution) == (50, 80)
    # the clip spans the steps only: it starts at the first step (1.0 s = source frame 10), not at the video's start
    assert code_of(read_video(tmp_path / "ds" / car.video)[0]) == 10


def test_resampled_fps_and_size_still_match_seconds(tmp_path):
    vids = tmp_path / "v"
    make_video(vids / "-2-8dyeFz0s.mp4", 110, fps=10)
    ann = write_coin(tmp_path / "COIN.json", {"-2-8dyeFz0s": COIN_STEPS["-2-8dyeFz0s"]})
    res = import_dataset(ImportConfig(format="coin", source=ann, videos=vids, out=tmp_path / "ds", fps=4,
                                      size=(24, 40), quality="data"), progress=False)
    assert res.imported == ["-2-8dyeFz0s"]
    ep = check_dataset(tmp_path / "ds", decode=True).episodes[0]
    assert ep.fps == 4 and tuple(ep.resolution) == (24, 40)
    assert read_video(tmp_path / "ds" / ep.video).shape[1:3] == (24, 40)
    assert_frames_match_seconds(tmp_path / "ds", {ep.id: [(s, e) for s, e, _ in COIN_STEPS[ep.id][2]]},
                                {ep.id: 10})


def test_crosstask_release_folder(tmp_path):
    src = tmp_path / "crosstask_release"
    (src / "annotations").mkdir(parents=True)
    (src / "tasks_primary.txt").write_text(
        "23521\nMake Jello Shots\nhttps://www.wikihow.com/Make-Jello-Shots\n3\npour water,add jello,stir mixture\n\n"
        "59684\nBuild Simple Floating Shelves\nhttps://www.wikihow.com/Build-Floating-Shelves\n2\ncut shelf,"
        "drill holes\n\n")
    (src / "annotations" / "23521_abc_DEF-1.csv").write_text("1,0.6,2.2\n3,4.0,6.5\n2,2.5,3.9\n")
    (src / "annotations" / "59684_zzz.csv").write_text("2,1.0,2.0\n")
    (src / "videos_val.csv").write_text("59684,zzz,https://www.youtube.com/watch?v=zzz\n")
    vids = tmp_path / "videos"
    make_video(vids / "abc_DEF-1.mp4", 80, fps=10)
    make_video(vids / "zzz.webm.mp4", 5, fps=10)  # a name that is not the id: not found, reported
    res = import_dataset(ImportConfig(format="crosstask", source=src, videos=vids, out=tmp_path / "ds"), progress=False)
    assert res.imported == ["23521_abc_DEF-1"]
    assert [s["id"] for s in res.skipped] == ["59684_zzz"] and "not found" in res.skipped[0]["reason"]
    ep = check_dataset(tmp_path / "ds", decode=True).episodes[0]
    assert ep.goal == "Make Jello Shots"
    # steps in time order, named by their 1-based index in tasks_primary.txt
    assert [s.text for s in ep.steps] == ["pour water", "add jello", "stir mixture"]
    assert_frames_match_seconds(tmp_path / "ds", {ep.id: [(0.6, 2.2), (2.5, 3.9), (4.0, 6.5)]}, {ep.id: 10})
    report = json.loads((tmp_path / "ds" / "import_report.json").read_text())
    assert report["counts"] == {"imported": 1, "resumed": 0, "skipped": 1, "notes": 0}


GOALSTEP = {
    "version": "1.0", "date": "231129", "description": "Ego4D Goal-Step (val)", "split": "val",
    "videos": [{
        "video_uid": "c2d06df7-5d3a-4116-9edb-f1c81a4f669b", "start_time": 0.02, "end_time": 12.0,
        "goal_category": "COOKING:MAKE_BREAD", "goal_description": "Makes the bread", "goal_wikihow_url": "",
        "summary": [], "is_procedural": True,
        "segments": [
            {"start_time": 0.5, "end_time": 3.0, "step_category": "Make baked goods: Knead the dough",
             "step_description": "Kneads the dough with the mixer.", "is_continued": False, "is_procedural": True,
             "is_relevant": "essential", "summary": [], "segments": []},
            {"start_time": 3.2, "end_time": 8.0, "step_category": "Make recipes: Cook or prepare bread",
             "step_description": "Prepares the bread", "is_continued": True, "is_procedural": True,
             "is_relevant": "essential", "summary": ["weighs the dough"],
             "segments": [
                 {"start_time": 3.1, "end_time": 5.0, "step_category": "General cooking activity: Measure dough",
                  "step_description": "weigh the dough", "is_continued": False, "is_procedural": False,
                  "is_relevant": "essential", "summary": []},
                 {"start_time": 5.0, "end_time": 7.9, "step_category": "Make baked goods: Shape the dough",
                  "step_description": "shape dough", "is_continued": False, "is_procedural": True,
                  "is_relevant": "essential", "summary": []}]}]}]}


@pytest.mark.parametrize("level,texts,spans", [
    ("step", ["Kneads the dough with the mixer.", "Prepares the bread"], [(0.5, 3.0), (3.2, 8.0)]),
    ("substep", ["Kneads the dough with the mixer.", "weigh the dough", "shape dough"],
     [(0.5, 3.0), (3.1, 5.0), (5.0, 7.9)]),
])
def test_ego4d_goalstep_levels(tmp_path, level, texts, spans):
    uid = GOALSTEP["videos"][0]["video_uid"]
    vids = tmp_path / "v2" / "full_scale"
    make_video(vids / f"{uid}.mp4", 100, fps=10)
    ann = tmp_path / "goalstep_val.json"
    ann.write_text(json.dumps(GOALSTEP))
    r = runner.invoke(app, ["data", "import", "ego4d-goalstep", str(ann), "--videos", str(tmp_path / "v2"),
                            "--out", str(tmp_path / "ds"), "--level", level])
    assert r.exit_code == 0, r.output
    ep = check_dataset(tmp_path / "ds", decode=True).episodes[0]
    assert ep.goal == "Makes the bread" and ep.split == "val" and [s.text for s in ep.steps] == texts
    assert_frames_match_seconds(tmp_path / "ds", {uid: spans}, {uid: 10})


def test_generic_csv_and_jsonl_and_text_only_steps(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "kitchen" / "a.mp4", 80, fps=10)
    make_video(vids / "b.mp4", 40, fps=8)
    csv_file = tmp_path / "steps.csv"
    csv_file.write_text("video,goal,start_time,end_time,step\n"
                        "kitchen/a.mp4,make tea,1.0,3.5,boil the water\n"
                        "kitchen/a.mp4,make tea,3.5,7.25,pour water into the cup\n"
                        "b.mp4,wipe the table,0.25,4.0,wipe the table\n")
    res = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "c",
                                      parse_steps=False), progress=False)
    assert len(res.imported) == 2 and not res.skipped
    r = runner.invoke(app, ["data", "check", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output  # text-only steps (no verb, no objects) are valid
    eps = check_dataset(tmp_path / "c").episodes
    assert all(s.verb is None and s.objects == [] for e in eps for s in e.steps)
    assert_frames_match_seconds(tmp_path / "c", {eps[0].id: [(1.0, 3.5), (3.5, 7.25)], eps[1].id: [(0.25, 4.0)]},
                                {eps[0].id: 10, eps[1].id: 8})
    # JSONL: one step per line, or one episode per line with its steps
    jl = tmp_path / "steps.jsonl"
    jl.write_text(json.dumps({"video": "b", "goal": "wipe", "start": 0.5, "end": 2.0, "text": "wipe the table"}) + "\n"
                  + json.dumps({"episode": "tea", "video": "kitchen/a.mp4", "goal": "make tea",
                                "steps": [{"text": "boil the water", "start": 1.0, "end": 3.5}]}) + "\n")
    res = import_dataset(ImportConfig(format="jsonl", source=jl, videos=vids, out=tmp_path / "j"), progress=False)
    assert sorted(res.imported) == ["b", "tea"]
    assert check_dataset(tmp_path / "j", decode=True).ok


def test_corrupt_and_missing_videos_are_reported_and_skipped(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "good.mp4", 60, fps=10)
    whole = make_video(tmp_path / "whole.mp4", 60, fps=10).read_bytes()
    (vids / "truncated.mp4").write_bytes(whole[: len(whole) // 2])   # a download cut short
    (vids / "garbage.mp4").write_bytes(os.urandom(4000))
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\n" + "".join(
        f"{v},g,0.5,3.0,do it\n" for v in ("good", "truncated", "garbage", "absent")))
    out = tmp_path / "ds"
    r = runner.invoke(app, ["data", "import", "csv", str(csv_file), "--videos", str(vids), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "1 episodes imported" in r.output and "3 skipped" in r.output
    for vid in ("truncated", "garbage", "absent"):
        assert f"skipped {vid}:" in r.output
    report = json.loads((out / "import_report.json").read_text())
    reasons = {s["id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"truncated", "garbage", "absent"}
    assert "unreadable" in reasons["garbage"] and "not found" in reasons["absent"]
    assert [e.id for e in check_dataset(out, decode=True).episodes] == ["good"]
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["good.mp4"]


def test_interrupted_import_resumes_without_redoing_finished_videos(tmp_path):
    vids = tmp_path / "videos"
    for k in range(3):
        make_video(vids / f"v{k}.mp4", 50, fps=10)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\n" + "".join(f"v{k},g,0.5,4.0,step {k}\n" for k in range(3)))
    cfg = ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "ds")

    def crash(eid: str, res: dict) -> None:
        raise KeyboardInterrupt  # killed right after the first video was journalled

    with pytest.raises(KeyboardInterrupt):
        import_dataset(cfg, progress=False, on_done=crash)
    first = tmp_path / "ds" / "videos" / "v0.mp4"
    before = first.stat()
    (tmp_path / "ds" / "videos" / ".v1.abc.mp4.tmp").write_bytes(b"half a video")  # what a kill mid-write leaves
    seen: list[str] = []
    res = import_dataset(cfg, progress=False, on_done=lambda eid, r: seen.append(eid))
    assert res.resumed == ["v0"] and sorted(res.imported) == ["v1", "v2"] and seen == ["v1", "v2"]
    after = first.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not written again
    assert not list((tmp_path / "ds" / "videos").glob(".*.tmp"))
    assert [e.id for e in check_dataset(tmp_path / "ds", decode=True).episodes] == ["v0", "v1", "v2"]
    # a third run has nothing left to do
    assert import_dataset(cfg, progress=False).imported == []
    # other settings into the same folder are refused, nothing written over
    manifest = (tmp_path / "ds" / "manifest.jsonl").read_bytes()
    with pytest.raises(ValueError, match="other settings"):
        import_dataset(cfg.model_copy(update={"fps": 5.0}), progress=False)
    assert (tmp_path / "ds" / "manifest.jsonl").read_bytes() == manifest


def test_paths_that_escape_the_video_folder_are_refused(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "ok.mp4", 30, fps=10)
    make_video(tmp_path / "private" / "secret.mp4", 30, fps=10)  # a real video, but outside --videos
    (vids / "link.mp4").symlink_to(tmp_path / "private" / "secret.mp4")
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\n"
                        "ok,g,0,2,a\n../private/secret.mp4,g,0,2,b\n"
                        f"{tmp_path / 'private' / 'secret.mp4'},g,0,2,c\nlink,g,0,2,d\n")
    res = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "ds"), progress=False)
    assert res.imported == ["ok"]
    assert len(res.skipped) == 3 and all("outside --videos" in s["reason"] for s in res.skipped), res.skipped
    assert sorted(p.name for p in (tmp_path / "ds" / "videos").iterdir()) == ["ok.mp4"]


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "a.mp4", 30)
    goalstep = tmp_path / "goalstep_val.json"
    goalstep.write_text(json.dumps(GOALSTEP))
    out = tmp_path / "ds"

    def refused(args: list[str], *needles: str) -> None:
        r = runner.invoke(app, ["data", "import", *args, "--videos", str(vids), "--out", str(out)])
        assert r.exit_code != 0, r.output
        lines = [x for x in r.output.strip().splitlines() if x.strip()]
        assert len(lines) <= 2 and "Traceback" not in r.output, r.output  # one message (rich may wrap it once)
        text = " ".join(lines)
        for n in needles:
            assert n in text, text

    refused(["youcook2", str(goalstep)], "unknown import format", "coin, crosstask")
    refused(["coin", str(goalstep)], "not a coin annotation source", "looks like ego4d-goalstep")
    refused(["crosstask", str(goalstep)], "not a crosstask annotation source")
    refused(["csv", str(goalstep)], "not a csv annotation source")
    refused(["ego4d-goalstep", str(tmp_path / "nope.json")], "does not exist")
    bad_coin = tmp_path / "COIN.json"
    bad_coin.write_text(json.dumps({"database": {"v": {"class": "X", "annotation": [{"segment": [1.0], "label": "a"}]}}}))
    refused(["coin", str(bad_coin)], "video v annotation 0", "'segment' must be [start, end]")
    bad_csv = tmp_path / "a.csv"
    bad_csv.write_text("video,goal,start,end,text\na,g,zero,2,s\n")
    refused(["csv", str(bad_csv)], "a.csv line 2", "'zero' is not a number of seconds")
    refused(["csv", str(bad_csv), "--size", "480x83"], "even")
    assert not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    refused(["ego4d-goalstep", str(goalstep)], "not an import")
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_read_clip_decodes_only_the_range_it_needs(tmp_path):
    v = make_video(tmp_path / "long.mp4", 300, fps=10, gop=10)
    stats = ClipStats()
    frames = list(read_clip(v, 25.0, 27.0, stats=stats))
    assert [code_of(f) for f in frames] == list(range(250, 271))
    assert stats.decoded <= 21 + 10 + 2, stats.decoded  # the range plus at most a group of pictures, not 270 frames
    resampled = [code_of(f) for f in read_clip(v, 25.0, 27.0, fps=4)]
    assert resampled == [250, 253, 255, 258, 260, 263, 265, 268, 270][: len(resampled)] and len(resampled) == 9


def test_stats_counts_durations_and_histogram(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "a.mp4", 100, fps=10)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\na,g,0,0.7,x\na,g,1,2.5,y\na,g,3,9,z\n")
    import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "ds"), progress=False)
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "ds"), "--json"])
    assert r.exit_code == 0, r.output
    st = json.loads(r.output)
    assert (st["episodes"], st["steps"], st["videos"], st["bad_lines"]) == (1, 3, 1, 0)
    # steps of 8, 16 and 61 frames at 10 fps (inclusive ranges): 0.8 s, 1.6 s, 6.1 s
    assert st["step_length_histogram"]["0.5–1 s"] == 1 and st["step_length_histogram"]["1–2 s"] == 1
    assert st["step_length_histogram"]["4–8 s"] == 1 and sum(st["step_length_histogram"].values()) == 3
    assert st["video_seconds"]["total"] == pytest.approx(9.1, abs=0.01)  # 0 .. 9 s inclusive at 10 fps
    r = runner.invoke(app, ["data", "stats", str(tmp_path / "ds")])
    assert r.exit_code == 0 and "step length" in r.output and "steps per episode" in r.output


def test_process_pool_gives_the_same_dataset(tmp_path):
    vids = tmp_path / "videos"
    for k in range(3):
        make_video(vids / f"v{k}.mp4", 40, fps=10)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\n" + "".join(f"v{k},g,0.5,3.0,step {k}\n" for k in range(3)))
    one = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "one"),
                         progress=False)
    two = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "two", workers=2),
                         progress=False)
    assert sorted(one.imported) == sorted(two.imported) == ["v0", "v1", "v2"]
    assert (tmp_path / "one" / "manifest.jsonl").read_text() == (tmp_path / "two" / "manifest.jsonl").read_text()


def test_check_accepts_text_only_steps_but_a_tabletop_step_needs_its_verb(tmp_path):
    from spiral.data.build import BuildConfig, build_tabletop

    build_tabletop(tmp_path / "t", BuildConfig(episodes=1, seed=5, min_steps=2, max_steps=2), progress=False)
    manifest = tmp_path / "t" / "manifest.jsonl"
    ep = json.loads(manifest.read_text().splitlines()[0])
    assert check_dataset(tmp_path / "t").ok
    del ep["steps"][1]["verb"]
    manifest.write_text(json.dumps(ep) + "\n")
    report = check_dataset(tmp_path / "t")
    assert not report.ok and "has no verb" in str(report.errors[0])
    ep["source"], ep["initial_state"], ep["scene_seed"] = "csv", None, None  # a real video: text is enough
    for s in ep["steps"]:
        s.pop("verb", None), s.pop("objects", None), s.pop("end_state", None)
    manifest.write_text(json.dumps({k: v for k, v in ep.items() if v is not None}) + "\n")
    assert check_dataset(tmp_path / "t").ok


def test_segment_dataset_reads_a_large_videos_steps_by_seeking(tmp_path, monkeypatch):
    from spiral.data import loaders

    vids = tmp_path / "videos"
    make_video(vids / "a.mp4", 120, fps=10)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\na,g,0.5,3.0,x\na,g,3.0,6.04,y\na,g,8.0,11.0,z\n")
    import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "ds"), progress=False)
    whole = read_video(tmp_path / "ds" / "videos" / "a.mp4")
    small = loaders.SegmentDataset(tmp_path / "ds")
    monkeypatch.setattr(loaders, "WHOLE_VIDEO_BYTES", 0)  # every video counts as large: steps are read by seeking
    large = loaders.SegmentDataset(tmp_path / "ds")
    assert len(large) == 3
    for k in range(3):
        step = large.episodes[0].steps[k]
        a, b = small[k]["clip"].numpy(), large[k]["clip"].numpy()
        assert np.array_equal(a, b) and np.array_equal(b, whole[step.start_frame:step.end_frame + 1])
        assert large[k]["text"] == "xyz"[k] and large[k]["verb"] == "xyz"[k]


def test_ambiguous_names_are_reported_and_the_output_is_not_taken_for_a_source(tmp_path):
    vids = tmp_path / "videos"
    make_video(vids / "a.mp4", 30)
    make_video(vids / "x" / "dup.mp4", 30)
    make_video(vids / "y" / "dup.mp4", 30)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\na,g,0,2,s\ndup,g,0,2,s\n")
    cfg = ImportConfig(format="csv", source=csv_file, videos=vids, out=vids / "ds")  # --out inside --videos
    res = import_dataset(cfg, progress=False)
    assert res.imported == ["a"] and [s["id"] for s in res.skipped] == ["dup"]
    assert "ambiguous" in res.skipped[0]["reason"] and "x/dup.mp4" in res.skipped[0]["reason"]
    # killed after a's clip was written but before its journal line: the rerun must take videos/a.mp4 as a's source,
    # not also its own output ds/videos/a.mp4 (which would make "a" ambiguous)
    (vids / "ds" / "import.jsonl").write_text("")
    res = import_dataset(cfg, progress=False)
    assert res.imported == ["a"] and [s["id"] for s in res.skipped] == ["dup"]


def test_killed_import_process_resumes_without_redoing_finished_videos(tmp_path):
    """SIGKILL the real command once the first clip is journalled; the rerun keeps that clip and does the rest."""
    import signal
    import subprocess
    import sys
    import time

    vids = tmp_path / "videos"
    make_video(vids / "v0.mp4", 20, fps=10)
    for k in range(1, 4):
        make_video(vids / f"v{k}.mp4", 300, fps=10, h=96, w=160)  # slow enough to be killed while in flight
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\nv0,g,0,1.5,s\n" + "".join(f"v{k},g,0,29,s\n" for k in range(1, 4)))
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "spiral.cli", "data", "import", "csv", str(csv_file), "--videos", str(vids), "--out",
           str(out), "--quality", "data"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = out / "import.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_text().count("\n") >= 1:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = [json.loads(x)["episode"]["id"] for x in journal.read_text().splitlines()]
    assert finished and len(finished) < 4, finished  # killed in the middle
    stats = {e: (out / "videos" / f"{e}.mp4").stat() for e in finished}
    res = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=out, quality="data"),
                         progress=False)
    assert res.resumed == finished and sorted(res.imported + res.resumed) == ["v0", "v1", "v2", "v3"]
    for e, st in stats.items():
        now = (out / "videos" / f"{e}.mp4").stat()
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    assert not list((out / "videos").glob(".*.tmp"))
    assert [e.id for e in check_dataset(out, decode=True).episodes] == ["v0", "v1", "v2", "v3"]


def test_ray_local_cluster_gives_the_same_dataset(tmp_path):
    pytest.importorskip("ray")
    vids = tmp_path / "videos"
    for k in range(2):
        make_video(vids / f"v{k}.mp4", 30, fps=10)
    csv_file = tmp_path / "a.csv"
    csv_file.write_text("video,goal,start,end,text\n" + "".join(f"v{k},g,0.5,2.0,step {k}\n" for k in range(2)))
    one = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "one"),
                         progress=False)
    ray = import_dataset(ImportConfig(format="csv", source=csv_file, videos=vids, out=tmp_path / "ray", ray="local",
                                      workers=2), progress=False)
    assert sorted(ray.imported) == sorted(one.imported) == ["v0", "v1"]
    assert (tmp_path / "one" / "manifest.jsonl").read_text() == (tmp_path / "ray" / "manifest.jsonl").read_text()
