"""Training clips rendered straight from the tabletop world, in memory (``--data world:EPISODES[:SEED]``).

``spiral data build`` writes mp4s, which is what users inspect and share; a GPU that trains on
tens of thousands of clips in minutes is better fed from the renderer directly (no codec, no
disk, all cores). Each episode ``i`` gives two kinds of clip:

* the steps of the optimal plan of ``sample_task(task_seed(seed, i))``, exactly the clips
  ``spiral data build --seed SEED`` would write for that episode (anchor: the episode's first frame);
* one uniformly drawn applicable action from a freshly sampled state (anchor: its own first
  frame), the distribution of the open-loop quality eval's (scene, sub-action) pairs.

Held-out (object, destination) combinations (:data:`spiral.world.splits.HELDOUT_MOVES`) go to a
separate set that is only used for the validation loss. Scene seeds come from ``sample_task``,
which never draws the benchmark's reserved seeds.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np

WORLD_PREFIX = "world:"


@dataclass
class WorldClips:
    """Clips (N, T, H, W, 3) uint8, anchors (E, H, W, 3), anchor index per clip and (verb, objects) per clip."""

    clips: list[np.ndarray] = field(default_factory=list)
    anchors: list[np.ndarray] = field(default_factory=list)
    anchor_of: list[int] = field(default_factory=list)
    actions: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)

    def add_anchor(self, frame: np.ndarray) -> int:
        self.anchors.append(frame)
        return len(self.anchors) - 1

    def extend(self, other: WorldClips) -> None:
        base = len(self.anchors)
        self.clips += other.clips
        self.anchors += other.anchors
        self.anchor_of += [base + a for a in other.anchor_of]
        self.actions += other.actions


def parse_world_spec(spec: str) -> tuple[int, int]:
    """``world:EPISODES[:SEED]`` → (episodes, seed), with an error that shows the form."""
    parts = spec[len(WORLD_PREFIX):].split(":")
    try:
        episodes, seed = int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
        if len(parts) > 2 or episodes < 1 or seed < 0:  # task seeds come from SeedSequence: no negatives
            raise ValueError
    except ValueError:
        raise ValueError(f"--data {spec!r}: write world:EPISODES or world:EPISODES:SEED with EPISODES ≥ 1 and "
                         f"SEED ≥ 0, e.g. world:12000:1") from None
    return episodes, seed


def _render_range(seed: int, start: int, stop: int, frames: int, size: int) -> tuple[WorldClips, WorldClips]:
    from spiral.data.build import task_seed
    from spiral.planners.symbolic import SymbolicPlanner
    from spiral.world import domain
    from spiral.world.render import Appearance, render_action, render_plan
    from spiral.world.splits import is_heldout
    from spiral.world.tasks import sample_state, sample_task

    planner = SymbolicPlanner()
    train, held = WorldClips(), WorldClips()
    for i in range(start, stop):
        ts = task_seed(seed, i)
        task = sample_task(ts, 1, 8)
        actions = planner.solve(task.state, task.goal)
        video, bounds, _ = render_plan(task.state, actions, appearance=Appearance.sample(task.scene_seed), seed=ts,
                                       size=size, frames=frames)
        anchor = {id(train): -1, id(held): -1}
        for action, (s, e) in zip(actions, bounds):
            bank = held if is_heldout(action.verb, action.args) else train
            if anchor[id(bank)] < 0:
                anchor[id(bank)] = bank.add_anchor(video[0])
            bank.clips.append(video[s:e + 1])
            bank.anchor_of.append(anchor[id(bank)])
            bank.actions.append((action.verb, tuple(action.args)))
        rng = np.random.default_rng([ts, 7])
        state = sample_state(rng)
        options = domain.applicable_actions(state)
        action = options[int(rng.integers(len(options)))]
        res = render_action(state, action, appearance=Appearance.sample(int(rng.integers(2**31))),
                            seed=int(rng.integers(2**31)), size=size, frames=frames)
        bank = held if is_heldout(action.verb, action.args) else train
        bank.anchor_of.append(bank.add_anchor(res.frames[0]))
        bank.clips.append(res.frames)
        bank.actions.append((action.verb, tuple(action.args)))
    return train, held


def render_world_clips(episodes: int, seed: int, frames: int, size: int, workers: int | None = None,
                       progress: bool = True) -> tuple[WorldClips, WorldClips]:
    """(training clips, held-out-combination clips) of ``episodes`` episodes, rendered on ``workers`` processes."""
    workers = max(1, min(workers or os.cpu_count() or 1, episodes // 50 or 1))
    chunk = max(1, min(500, -(-episodes // (workers * 4))))
    ranges = [(s, min(episodes, s + chunk)) for s in range(0, episodes, chunk)]
    train, held = WorldClips(), WorldClips()
    if workers == 1:
        results = (_render_range(seed, a, b, frames, size) for a, b in ranges)
    else:  # spawn: the parent may already hold torch's thread pools, which fork would copy in a bad state
        pool = ProcessPoolExecutor(workers, mp_context=get_context("spawn"))
        results = pool.map(_render_range, *zip(*[(seed, a, b, frames, size) for a, b in ranges]))
    if progress:
        from rich.progress import track

        results = track(results, total=len(ranges), description=f"rendering {episodes} episodes ({workers} processes)")
    for t, h in results:
        train.extend(t)
        held.extend(h)
    if workers > 1:
        pool.shutdown()
    return train, held
