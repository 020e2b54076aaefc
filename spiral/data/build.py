"""Build an ActVideoGen-Dataset from the tabletop world: sampled tasks, planned, rendered.

Each episode is the ground-truth video of a sampled goal's optimal plan (one segment per
step; consecutive steps share their boundary frame). With ``failures > 0`` each step also
gets, at that rate, a labelled failure clip rendered from the same start state; it is
written as its own one-step episode whose ``parent`` is the episode id, so the parent's
video stays a valid execution.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from spiral.data.format import Episode, StepRecord, write_manifest
from spiral.planners.symbolic import SymbolicPlanner
from spiral.video import decode_digest, write_video
from spiral.world import domain
from spiral.world.render import FAILURE_KIND, FAILURES, Appearance, render_action, render_plan
from spiral.world.tasks import sample_task


@dataclass
class BuildConfig:
    """What to build; seeds are disjoint between splits when the caller picks disjoint ``seed`` values."""

    episodes: int
    seed: int = 0
    resolution: int = 64
    failures: float = 0.0
    frames_per_step: int = 9
    fps: float = 8.0
    min_steps: int = 1
    max_steps: int = 8
    split: str = "train"


def task_seed(seed: int, index: int) -> int:
    """Per-episode seed derived from the build seed, so builds with different seeds never share tasks."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def build_tabletop(out: str | Path, cfg: BuildConfig, progress: bool = True) -> list[Episode]:
    """Render ``cfg.episodes`` episodes into ``out`` and write the manifest; returns the episodes."""
    if not 0.0 <= cfg.failures <= 1.0:
        raise ValueError(f"--failures must be a rate in [0, 1], got {cfg.failures}")
    if cfg.episodes < 1:
        raise ValueError(f"--episodes must be ≥ 1, got {cfg.episodes}")
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "frames").mkdir(exist_ok=True)
    planner = SymbolicPlanner()
    episodes: list[Episode] = []
    it = range(cfg.episodes)
    if progress:
        from rich.progress import track

        it = track(it, description=f"rendering {cfg.episodes} episodes")
    for i in it:
        episodes += _build_episode(out, cfg, i, planner)
    write_manifest(out, episodes)
    return episodes


def _build_episode(out: Path, cfg: BuildConfig, i: int, planner: SymbolicPlanner) -> list[Episode]:
    ts = task_seed(cfg.seed, i)
    task = sample_task(ts, cfg.min_steps, cfg.max_steps)
    look = Appearance.sample(task.scene_seed)
    rng = np.random.default_rng(ts)
    eid = f"{cfg.split}-s{cfg.seed}-{i:06d}"
    size, T = cfg.resolution, cfg.frames_per_step
    actions = planner.solve(task.state, task.goal)
    video, bounds, results = render_plan(task.state, actions, appearance=look, seed=ts, size=size, frames=T)
    steps: list[StepRecord] = []
    extra: list[Episode] = []
    state = task.state
    for k, (action, (start, end), res) in enumerate(zip(actions, bounds, results)):
        pre, post = domain.preconditions(state, action), domain.effects(state, action)
        steps.append(StepRecord(text=action.text(), verb=action.verb, objects=list(action.args), pre=pre, post=post,
                                start_frame=start, end_frame=end, end_state=res.end_state.to_dict()))
        if rng.random() < cfg.failures:
            mode = FAILURES[int(rng.integers(len(FAILURES)))]
            bad = render_action(state, action, appearance=look, seed=int(rng.integers(2**31)), size=size, frames=T,
                                failure=mode)
            fid = f"{eid}-f{k}"
            write_video(out / "videos" / f"{fid}.mp4", bad.frames, cfg.fps)
            label = bad.failure or mode
            extra.append(Episode(
                id=fid, goal=action.text(), video=f"videos/{fid}.mp4", fps=cfg.fps, resolution=(size, size),
                steps=[StepRecord(text=action.text(), verb=action.verb, objects=list(action.args), pre=pre, post=post,
                                  start_frame=0, end_frame=T - 1, label=label, failure_kind=FAILURE_KIND[label],
                                  end_state=bad.end_state.to_dict())],
                initial_state=state.to_dict(), scene_seed=task.scene_seed, parent=eid, source="tabletop-failure",
                split=cfg.split, license="CC0-1.0", frames_sha256=decode_digest(out / "videos" / f"{fid}.mp4")[1]))
        state = res.end_state
    write_video(out / "videos" / f"{eid}.mp4", video, cfg.fps)
    Image.fromarray(video[0]).save(out / "frames" / f"{eid}.png")
    main = Episode(id=eid, goal=task.goal.text, video=f"videos/{eid}.mp4", fps=cfg.fps, resolution=(size, size),
                   steps=steps, initial_state=task.state.to_dict(), scene_seed=task.scene_seed, source="tabletop",
                   split=cfg.split, license="CC0-1.0", frames_sha256=decode_digest(out / "videos" / f"{eid}.mp4")[1])
    return [main, *extra]
