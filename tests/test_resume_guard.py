"""`--resume` refuses what it would otherwise ignore (issue 22 item 2), accepts and records the settings that are
safe to change, and Ctrl-C says how to resume. Oracle world generator (configs/run/tabletop-oracle.yaml)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from spiral import atomic
from spiral.api import run
from spiral.cli import app

ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"
GOAL = "turn on the lamp and open the box"


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, one_thread):
    """A run stopped by its generation budget after one attempt (what a later resume may continue)."""
    out = tmp_path_factory.mktemp("guard") / "run"
    rec = run(GOAL, scene=4, seed=0, out=out, config=ORACLE,
              overrides=["generator.options.failure_rate=0.5", "loop.max_total_generations=1"])
    assert rec.status == "budget_exhausted" and len(rec.attempts) == 1
    return out


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


REFUSED = {  # name -> (arguments of `spiral run`, text the one line must contain)
    "another goal": (["put the red block in the box"], "the run's goal is 'turn on the lamp and open the box'"),
    "another seed": (["--seed", "3"], "--seed 3: the run's seed is 0"),
    "another scene": (["--scene", "5"], "--scene 5: the run started from scene 4"),
    "an image": (["--image", "{img}"], "--image {img}: the run started from scene 4"),
    "another config": (["--config", str(ORACLE)], "differs from the run's config.yaml at generator.options.failure_rate"),
    "another out": (["--out", "{tmp}/elsewhere"], "is not the run's folder"),
    "another mode": (["--mode", "plan_only"], "--mode plan_only: the run's mode is closed_loop"),
    "an unsafe --set": (["--set", "loop.max_refines_per_step=1"],
                        "--set loop.max_refines_per_step=1 would change loop.max_refines_per_step (3 -> 1)"),
    "a --set of the generator": (["--set", "generator.options.failure_rate=0.1"],
                                 "would change generator.options.failure_rate"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_resume_refuses_what_differs_from_the_run(case, stopped, tmp_path):
    """Before: each of these exited 0 having silently resumed the old run as it was."""
    img = tmp_path / "x.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    args, needle = REFUSED[case]
    args, needle = [a.format(img=img, tmp=tmp_path) for a in args], needle.format(img=img, tmp=tmp_path)
    before = _snapshot(stopped)
    r = CliRunner().invoke(app, ["run", *args, "--resume", str(stopped)])
    assert isinstance(r.exception, SystemExit) and r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "--resume" in lines[0], r.output
    assert _snapshot(stopped) == before  # nothing touched


def test_resume_accepts_the_same_values_and_records_a_safe_change(stopped, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(stopped, out)
    r = CliRunner().invoke(app, ["run", GOAL, "--scene", "4", "--seed", "0", "--resume", str(out), "--out", str(out),
                                 "--set", "generator.options.failure_rate=0.5", "--set",
                                 "loop.max_total_generations=60", "--set", "output.report=true"])
    assert r.exit_code == 0, r.output
    rec = json.loads((out / "record.json").read_text())
    assert rec["status"] == "success" and len(rec["attempts"]) > 1
    assert [x["changed"] for x in rec["resumes"]] == [{"loop.max_total_generations": [1, 60]}]
    assert json.loads((out / "meta.json").read_text())["resumes"] == rec["resumes"]
    assert "max_total_generations: 60" in (out / "config.yaml").read_text()
    assert "loop.max_total_generations from 1 to 60" in (out / "report.html").read_text()
    assert "changed on resume" in r.output
    # the same run made in one go has the same kept segments: the budget only moved the stop
    ref = run(GOAL, scene=4, seed=0, out=tmp_path / "ref", config=ORACLE, overrides=["generator.options.failure_rate=0.5"])
    assert rec["accepted"] == ref.accepted
    for rel in ref.accepted:
        assert (out / rel).read_bytes() == (tmp_path / "ref" / rel).read_bytes()


def test_ctrl_c_prints_the_resume_command_and_the_resume_finishes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    # 17 attempts (benchmarks/soak_resume.py): interrupted after the first, the run is far from done
    p = subprocess.Popen([sys.executable, "-m", "spiral.cli", "run",
                          "put every block in the box and close it, then turn on the lamp", "--scene", "7", "--seed",
                          "0", "--config", str(ORACLE), "--out", str(out), "--set", "generator.options.failure_rate=0.5",
                          "--set", "loop.max_replans=8"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         # a test run in the background inherits SIGINT ignored, and Python keeps it so
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while p.poll() is None and time.time() < deadline and not atomic.read_jsonl(out / "attempts.jsonl"):
        time.sleep(0.02)
    assert p.poll() is None, "the run ended before it could be interrupted"
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1].decode()
    assert p.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines[-1] == f"error: interrupted; continue with: spiral run --resume {out}", err
    assert "Traceback" not in err
    rec = run(resume=out)
    keys = [(x["plan_version"], x["step"], x["attempt"]) for x in atomic.read_jsonl(out / "attempts.jsonl")]
    assert rec.status == "success" and len(keys) == len(set(keys))
