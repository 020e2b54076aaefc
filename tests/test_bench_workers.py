"""Bench workers keep their agents: each builds them once, on its own GPU, and a reused agent runs a case exactly as
a fresh one would (spiral.bench.workers).

The construction count comes from a generator registered the way a third-party backend is, through a
``spiral.backends`` entry point of a distribution written into ``tmp_path``: the spawned pool processes and Ray
workers find it on their path, and every construction appends its process id to a file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from spiral.bench.runner import BenchConfig, run_bench
from spiral.bench.workers import AgentCache, worker_device
from spiral.config import BackendConfig, load_config
from spiral.world.seeds import TESTS

LIGHT = ["output.report=false", "output.segment_videos=false"]
ORACLE = Path(__file__).resolve().parents[1] / "configs" / "run" / "tabletop-oracle.yaml"  # the world generator


def _cfg(out: Path, **kw) -> BenchConfig:
    base = dict(suite="tabletop-smoke", out=str(out), modes=["plan_only"], config=str(ORACLE), overrides=list(LIGHT))
    return BenchConfig(**{**base, **kw})

COUNTING = '''
from pathlib import Path
import os

from pydantic import Field

from spiral.generators.world import WorldGenerator, WorldOptions


class CountingOptions(WorldOptions):
    counter: str = Field(description="file that gets one line per construction")


class CountingGenerator(WorldGenerator):
    """The world generator that writes down each time it is built."""

    name = "counting"
    options_model = CountingOptions

    def __init__(self, counter: str, **options):
        super().__init__(**options)
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
'''


@pytest.fixture
def counting(tmp_path, monkeypatch) -> tuple[list[str], Path]:
    """Overrides that run the counting generator, and its counter file."""
    site = tmp_path / "site"
    (site / "spiral_counting-0.1.dist-info").mkdir(parents=True)
    (site / "counting_gen.py").write_text(COUNTING)
    (site / "spiral_counting-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: spiral-counting\nVersion: 0.1\n")
    (site / "spiral_counting-0.1.dist-info" / "entry_points.txt").write_text(
        "[spiral.backends]\ngenerator.counting = counting_gen:CountingGenerator\n")
    monkeypatch.syspath_prepend(str(site))  # this process and the spawned pool (spawn passes sys.path on)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))  # Ray workers
    counter = tmp_path / "built.txt"
    return [*LIGHT, "generator.name=counting", f"generator.options.counter={counter}"], counter


def _built(counter: Path) -> list[int]:
    return [int(x) for x in counter.read_text().split()] if counter.is_file() else []


def test_each_worker_builds_its_agents_once(tmp_path, counting):
    overrides, counter = counting
    res = run_bench(_cfg(tmp_path / "one", limit=4, overrides=overrides), progress=False)
    assert not res["errors"] and len(res["cases"]) == 4
    assert _built(counter) == [os.getpid()]  # the driver ran the 4 cases with one generator

    counter.unlink()
    res = run_bench(_cfg(tmp_path / "pool", limit=4, overrides=overrides, workers=2), progress=False)
    assert not res["errors"] and len(res["cases"]) == 4
    built, ran = _built(counter), {c["worker"]["pid"] for c in res["cases"]}
    # once per worker process, not once per case (both workers normally get cases: then exactly twice)
    assert sorted(built) == sorted(ran) and 1 <= len(built) <= 2, (built, ran)
    for c in res["cases"]:
        assert c["agents"]["generator"] == {"name": "counting"} and c["device"] is None  # no device option
        assert c["agents"]["planner"] == {"name": "symbolic"} and c["agents"]["critic"]["name"] == "tabletop"


def test_each_ray_actor_builds_its_agents_once(tmp_path, counting):
    overrides, counter = counting
    res = run_bench(_cfg(tmp_path / "ray", limit=4, overrides=overrides, ray="local", workers=2), progress=False)
    assert not res["errors"] and len(res["cases"]) == 4
    built, ran = _built(counter), {c["worker"]["pid"] for c in res["cases"]}
    assert sorted(built) == sorted(ran) and 1 <= len(built) <= 2, (built, ran)
    assert all(c["worker"].get("ray_task") for c in res["cases"])


def test_reused_agents_run_each_case_as_fresh_ones_would(tmp_path):
    """One goal whose words mean other moves in each scene ("swap" reads the scene it starts from): the world
    generator in single_shot and the planner remember their reading for a run, and must forget it for the next."""
    from spiral.api import run
    from spiral.bench.runner import case_seed

    goal = "swap the red and the blue blocks"
    scenes = [TESTS.start + 202, TESTS.start + 203, TESTS.start + 205]  # read as three different sets of moves
    cases = [{"id": f"swap-{i}", "goal": goal, "scene": s, "length_class": "medium", "n_steps": 3}
             for i, s in enumerate(scenes)]
    (tmp_path / "suite.json").write_text(json.dumps({"name": "swaps", "version": "1", "cases": cases}))
    res = run_bench(_cfg(tmp_path / "bench", suite=str(tmp_path / "suite.json"), modes=["single_shot"], limit=None),
                    progress=False)
    assert not res["errors"] and len(res["cases"]) == 3
    for case in cases:
        fresh = tmp_path / "fresh" / case["id"]  # its own agents, built for this run alone
        run(goal, scene=case["scene"], config=ORACLE, out=fresh, seed=case_seed(0, case["id"]), mode="single_shot",
            overrides=list(LIGHT))
        ours = tmp_path / "bench" / "single_shot" / case["id"]
        segments = sorted(p.name for p in (fresh / "segments").glob("*.npz"))
        assert segments == sorted(p.name for p in (ours / "segments").glob("*.npz")) and segments
        for name in segments:
            assert np.array_equal(np.load(fresh / "segments" / name)["frames"],
                                  np.load(ours / "segments" / name)["frames"]), (case["id"], name)


def test_workers_are_spread_over_the_gpus():
    assert [worker_device("cuda", i, 4) for i in range(6)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3",
                                                               "cuda:0", "cuda:1"]
    assert worker_device("auto", 5, 2) == "cuda:1"
    for device, n in (("cpu", 4), ("cuda:2", 4), ("cuda", 1), ("cuda", 0), ("auto", 1), ("mps", 2)):
        assert worker_device(device, 3, n) == device, (device, n)

    two = AgentCache(worker=3, n_gpus=2)
    assert two.placed("generator", BackendConfig(name="tiny", options={"device": "cuda"})) == {"device": "cuda:1"}
    assert two.placed("generator", BackendConfig(name="tiny")) == {}  # its default is the CPU
    wan = BackendConfig(name="diffusers", options={"model": "/models/wan"})  # its default is auto
    assert two.placed("generator", wan) == {"model": "/models/wan", "device": "cuda:1"}
    assert two.placed("planner", BackendConfig(name="symbolic")) == {}  # no device option
    assert AgentCache(worker=3, n_gpus=0).placed("generator", wan) == {"model": "/models/wan"}

    cfg = load_config(None, ["generator.name=diffusers", "generator.options.model=/models/wan",
                             "generator.options.device=cuda"])
    described = two.describe(cfg)
    assert described["generator"] == {"name": "diffusers", "model": "/models/wan", "device": "cuda:1"}
    assert described["planner"] == {"name": "symbolic"}
    assert AgentCache(worker=3, n_gpus=0).describe(cfg)["generator"]["device"] == "cuda"


def test_a_case_with_other_options_gets_other_agents():
    cache = AgentCache(n_gpus=0)
    world = BackendConfig(name="world", options={"failure_rate": 0.1})
    first = cache.agent("generator", world)
    assert cache.agent("generator", BackendConfig(name="world", options={"failure_rate": 0.1})) is first
    other = cache.agent("generator", BackendConfig(name="world", options={"failure_rate": 0.2}))
    assert other is not first and other.failure_rate == 0.2
    assert cache.agent("generator", world) is not first  # one agent per kind is kept: the first was let go
    assert cache.built == 3


def test_ray_refuses_cuda_backends_without_gpus_per_worker(tmp_path):
    from typer.testing import CliRunner

    from spiral.cli import app

    out = tmp_path / "out"
    args = ["bench", "--suite", "tabletop-smoke", "--out", str(out), "--ray", "local", "--quiet",
            "--set", "generator.options.device=cuda"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and "add --gpus-per-worker 1" in r.output and "generator tiny-evolved" in r.output, r.output
    assert not out.exists()  # refused before anything was written
    r = CliRunner().invoke(app, [*args[:-2], "--gpus-per-worker", "-1"])
    assert r.exit_code != 0 and "--gpus-per-worker must be ≥ 0" in r.output, r.output
