"""The HTML run report: content from a synthetic run directory, escaping, and a real headless-browser render."""

from __future__ import annotations

import html
import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spiral import atomic
from spiral.report import chromium_command, find_chromium, write_report
from spiral.rundir import RunDir
from spiral.types import Attempt, Plan, RunRecord, SubAction, Verdict
from spiral.video import write_video

EVIL = "<script>alert('x')</script> & try again"
GOAL = 'put the red block in the box & close it <b>now</b>'
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"  # the world generator
CONFIG = "loop:\n  mode: closed_loop\nvideo:\n  fps: 8.0\n  height: 64\n  width: 64\n"


def _sub(i: int, text: str, obj: str) -> SubAction:
    return SubAction(id=i, text=text, verb=text.split()[0], objects=[obj],
                     preconditions=[f"clear({obj})"], postconditions=[f"in({obj}, box)"])


def _frames(rng: np.random.Generator, t: int = 9) -> np.ndarray:
    return rng.integers(0, 256, size=(t, 64, 64, 3), dtype=np.uint8)


def _verdict(decision: str, feedback: str, failure: str | None = None) -> Verdict:
    ok = decision == "accept"
    return Verdict(scores={"action": 0.9 if ok else 0.3, "consistency": 0.8}, passed=ok, decision=decision,
                   failure=failure, feedback=feedback, observed_state={"in": ["red_block"]} if ok else None)


def _attempt(rd: RunDir, rng: np.random.Generator, version: int, sub: SubAction, attempt: int,
             verdict: Verdict | None) -> Attempt:
    entry = Attempt(step=sub.id, attempt=attempt, prompt=sub.text, seed=100 + attempt, verdict=verdict,
                    decision=verdict.decision if verdict else "accept", seconds={"generate": 0.01, "judge": 0.002},
                    segment_path=rd.segment_file(version, sub.id, attempt))
    rd.log_attempt(version, entry, _frames(rng), 8.0, {"backend": "test", "sub_action": sub.model_dump(mode="json")})
    return entry


def make_run(root: Path, *, replan: bool = True, critic: bool = True, status: str = "success") -> Path:
    """A small run on disk: plan v0 (refine then accept, then a step that asks to re-plan) and plan v1."""
    rng = np.random.default_rng(0)
    rd = RunDir.create(root, {"goal": GOAL, "scene": 3, "image": None, "initial_state": {"on": ["red_block"]}},
                       CONFIG, _frames(rng, 1)[0])
    s0, s1 = _sub(0, "move red_block to box", "red_block"), _sub(1, "close box", "box")
    plans = [Plan(goal=GOAL, steps=[s0, s1], rationale="two steps")]
    rd.log_plan(0, plans[0])
    record = RunRecord(goal=GOAL, status=status, mode="closed_loop" if critic else "plan_only", plans=plans)
    v = (lambda d, f, k=None: _verdict(d, f, k)) if critic else (lambda *a: None)
    record.attempts.append(_attempt(rd, rng, 0, s0, 0, v("refine", EVIL, "incomplete_action")))
    record.attempts.append(_attempt(rd, rng, 0, s0, 1, v("accept", "looks right")))
    accepted = [record.attempts[-1].segment_path]
    if replan and critic:
        record.attempts.append(_attempt(rd, rng, 0, s1, 0, v("replan", "the lid fell off", "physical_violation")))
        plans.append(Plan(goal=GOAL, steps=[_sub(0, "close box again", "box")]))
        rd.log_plan(1, plans[1])
        record.attempts.append(_attempt(rd, rng, 1, plans[1].steps[0], 0, v("accept", "closed")))
    else:
        record.attempts.append(_attempt(rd, rng, 0, s1, 0, v("accept", "closed")))
    accepted.append(record.attempts[-1].segment_path)
    record.accepted = [a for a in accepted if a]
    record.step_boundaries = [0, 8, 8, 16]
    record.counts = {"generations": len(record.attempts), "accepted": 2, "replans": len(plans) - 1, "plan_steps": 1,
                     "plan_calls": len(plans), "generate_calls": len(record.attempts),
                     "judge_calls": len(record.attempts) if critic else 0, "replayed_calls": 0}
    record.costs = {"plan_seconds": 0.1, "generate_seconds": 2.0, "judge_seconds": 0.5, "other_seconds": 0.3,
                    "compose_seconds": 0.1, "wall_seconds": 3.0, "generations_per_accepted_step": 2.0}
    write_video(root / "final.mp4", _frames(rng, 17), 8.0, quality="web")
    record.final_video = "final.mp4"
    atomic.write_text(root / "record.json", record.model_dump_json(indent=2))
    return root


def test_report_content_and_escaping(tmp_path: Path) -> None:
    out = write_report(make_run(tmp_path / "run"))
    assert out == tmp_path / "run" / "report.html"
    doc = out.read_text()
    assert 'id="plan-table"' in doc and 'id="plan-table-v0"' in doc  # current plan + the superseded one
    assert "re-plan reason: critic asked to re-plan at step 2: the lid fell off" in doc
    for v, s, a in [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]:
        assert f'id="attempt-v{v}-s{s}-a{a}"' in doc
    assert doc.count('class="attempt kept"') == 2  # the two accepted attempts are highlighted
    assert doc.count('class="attempt rejected"') == 2
    assert "<script>" not in doc and html.escape(EVIL) in doc
    assert html.escape(GOAL) in doc and "<b>now</b>" not in doc
    assert "incomplete_action" in doc and "clear(red_block)" in doc and "in(red_block, box)" in doc
    assert '<video id="final-video" controls loop muted src="final.mp4"' in doc
    assert 'id="final-fallback"' in doc and "data:image/png;base64," in doc
    assert "budget" not in doc.split("<main>")[1].split("</header>")[0]  # status badge says success
    assert ">success<" in doc
    assert "16.7%" in doc  # share of wall time outside generator + critic: (3 - 2 - 0.5) / 3
    assert not re.search(r"(src|href)=\"(https?:)?//", doc)  # nothing from the network


def test_report_plan_only_and_budget_exhausted(tmp_path: Path) -> None:
    doc = write_report(make_run(tmp_path / "po", replan=False, critic=False)).read_text()
    assert "no verdict" in doc and 'id="plan-table"' in doc
    doc = write_report(make_run(tmp_path / "be", status="budget_exhausted")).read_text()
    assert "budget exhausted" in doc


def test_report_partial_run_and_not_a_run(tmp_path: Path) -> None:
    run = make_run(tmp_path / "run")
    (run / "record.json").unlink()
    (run / "final.mp4").unlink()
    doc = write_report(run).read_text()
    assert "No record.json" in doc and "no final.mp4 yet" in doc
    with pytest.raises(FileNotFoundError, match="not a SPIRAL run"):
        write_report(tmp_path)


def test_cli_report(tmp_path: Path) -> None:
    from spiral.cli import app

    run = make_run(tmp_path / "run")
    res = CliRunner().invoke(app, ["report", str(run)])
    assert res.exit_code == 0, res.output
    assert res.output.strip() == str(run / "report.html")
    res = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert res.exit_code != 0 and "not a SPIRAL run" in res.output


# Appended to a copy of report.html: once the report's own <video> is playing and its clock has advanced, pause
# it, draw the frame it shows on a canvas and write what the browser knows about the video into the DOM. (No seek,
# and the frame shown may lag the clock: under virtual time the DOM can be dumped before a new frame is decoded.)
PROBE_JS = """<script>
(function () {
  const v = document.getElementById('final-video'), out = document.createElement('pre');
  out.id = 'probe'; document.body.appendChild(out);
  const say = (o) => { out.textContent = JSON.stringify(o); };
  v.addEventListener('error', () => say({error: v.error ? v.error.code : -1}));
  const probe = () => {
    if (v.paused || v.currentTime <= 0 || v.readyState < 2) { setTimeout(probe, 50); return; }
    v.pause();
    const c = document.createElement('canvas'); c.width = v.videoWidth; c.height = v.videoHeight;
    const g = c.getContext('2d'); g.drawImage(v, 0, 0);
    say({readyState: v.readyState, duration: v.duration, width: v.videoWidth, height: v.videoHeight,
         time: v.currentTime, error: v.error, rgba: Array.from(g.getImageData(0, 0, c.width, c.height).data)});
  };
  setTimeout(probe, 50);
})();
</script>"""


def test_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    """A real browser opens the page offline: the DOM has the plan table and the video; the screenshot is a page;
    and final.mp4 plays in the page's own <video>: it has the file's duration and size, its clock advances, and the
    frame the browser shows is a frame of the file (decoded, not blank)."""
    from spiral.video import read_video

    run = make_run(tmp_path / "run")
    report, png = write_report(run), tmp_path / "shot.png"
    assert Path(find_chromium()).is_file(), "chromium is required (.ci/run installs it: apt-get install chromium)"
    subprocess.run(chromium_command(report, tmp_path / "profile", screenshot=png, window=(1200, 1600)),
                   check=True, timeout=60, capture_output=True)
    dom = subprocess.run(chromium_command(report, tmp_path / "profile2", dump_dom=True),
                         check=True, timeout=60, capture_output=True, text=True).stdout
    assert 'id="plan-table"' in dom and '<video id="final-video"' in dom and 'id="attempt-v1-s0-a0"' in dom
    assert png.is_file()
    with Image.open(png) as im:
        assert im.size == (1200, 1600)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # a real page, not a blank or single-colour canvas

    frames = read_video(run / "final.mp4")
    probe = run / "probe.html"  # next to report.html, so that src="final.mp4" resolves the same way
    probe.write_text(report.read_text().replace("</body>", PROBE_JS + "</body>"))
    got = None
    for budget_ms in (10000, 20000, 40000, 80000, 160000):  # virtual time; on a loaded machine playback may start late
        cmd = chromium_command(probe, tmp_path / f"profile-{budget_ms}", dump_dom=True)
        # file:// pages may read their own folder's pixels; virtual time lets the page play without waiting
        cmd[-1:-1] = ["--allow-file-access-from-files", "--autoplay-policy=no-user-gesture-required",
                      f"--virtual-time-budget={budget_ms}"]
        dom = subprocess.run(cmd, check=True, timeout=90, capture_output=True, text=True).stdout
        found = re.search(r'<pre id="probe">([^<]*)</pre>', dom)
        if found and found.group(1):
            got = json.loads(html.unescape(found.group(1)))
            break
    assert got is not None, "the report's video never started playing (nor reported an error)"
    assert "rgba" in got, f"the browser cannot play final.mp4: MediaError {got}"
    assert got["readyState"] >= 2 and got["error"] is None and got["time"] > 0
    assert (got["width"], got["height"]) == (64, 64) and got["duration"] == pytest.approx(len(frames) / 8.0, abs=0.01)
    # the frame on screen is a frame of the file, no later than its clock (random frames: any other is ~60 off)
    shown = np.array(got["rgba"], dtype=np.int16).reshape(64, 64, 4)[..., :3]
    errors = [float(np.abs(shown - f).mean()) for f in frames.astype(np.int16)]
    assert min(errors) < 8 and int(np.argmin(errors)) <= got["time"] * 8.0 + 1, (got["time"], errors)
    assert shown.std() > 40  # make_run's frames are uniform noise (std ~74): not a blank or single-colour frame


def test_record_json_is_valid(tmp_path: Path) -> None:
    """The synthetic record must parse as a RunRecord, so the report is tested on the real format."""
    run = make_run(tmp_path / "run")
    RunRecord.model_validate(json.loads((run / "record.json").read_text()))


def test_report_names_the_oracle_generator(tmp_path):
    from spiral.api import run

    run("tidy up: put every block in the box", scene=1, out=tmp_path / "r", config=ORACLE)
    html = (tmp_path / "r" / "report.html").read_text()
    assert "used as an oracle" in html and 'id="plan-table"' in html
