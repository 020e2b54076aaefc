"""Where GRPO's prompts come from when they are not sampled tabletop tasks: an imported ActVideoGen-Dataset or a
bench suite (``GRPOConfig.prompts``; the tabletop sampler stays in :mod:`spiral.train.grpo`).

A *task* is a goal and the first frame it starts from. The PlanAgent turns goal + first frame into sub-actions once
per task (the plan of the same input is kept, not asked for again each step); a curriculum stage then picks which
sub-action becomes the prompt and what it is conditioned on:

* ``single`` stages take a sub-action whose true "before" frame is known: for a dataset, sub-action k is conditioned
  on the first frame of annotated step k (read from the episode's video); for a suite only step 0 has one (the
  case's first frame), so only step 0 is drawn;
* ``continuation`` / ``plan`` stages take a step k ≥ 1 and condition it on the policy's *own* chained outputs for
  steps 0..k−1 (:meth:`spiral.train.grpo.GRPOTrainer._chain`), as plan-only generation would, from the task's first
  frame.

A stage's ``min_steps`` / ``max_steps`` choose the length of sampled tabletop tasks; a dataset's or a suite's tasks are
taken as they are.

Every draw is a function of the trainer's random stream (seed, rank, step). Under torchrun each rank draws from
its own share of the tasks (every ``world``-th one, as ``DistributedSampler`` splits data) when there are at least as
many tasks as ranks, so different ranks get different prompts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from spiral.train.grpo_config import PromptSource, Stage
from spiral.types import Observation, Plan, SubAction, TaskGoal

log = logging.getLogger("spiral.train")


class Prompt(BaseModel):
    """One GRPO prompt: a sub-action, the frames it is generated from and what the memory knows at that point."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    sub_action: SubAction
    cond_frame: Any
    anchor_frame: Any
    state: dict | None  # the symbolic state before the step, when known (the critic's reading, or the scene's truth)
    task_seed: int
    index: int  # step index in its plan
    scene_seed: int | None = None  # the scene's look (spiral.world.render.Appearance.sample)
    task: str = ""  # the episode or case id (dataset / suite); empty for sampled tabletop tasks
    goal: str = ""
    history: list[str] = []  # the texts of the plan's steps before this one


@dataclass
class Task:
    """A goal and its first frame (at the prompt size), with what a source knows besides."""

    key: str  # episode / case id
    number: int  # its index in the whole source (the task_seed of its prompts)
    goal: str
    first: np.ndarray
    state: dict | None = None  # the first frame's symbolic state, when the source knows it (a tabletop scene)
    scene_seed: int | None = None
    steps: list[SubAction] = field(default_factory=list)  # annotated sub-actions (dataset)
    step_frames: list[np.ndarray] = field(default_factory=list)  # the first frame of each annotated step (dataset)


@dataclass
class Draw:
    """One drawn prompt before its frame is known: ``cond`` is None when it is chained from the policy's outputs."""

    task: Task
    plan: Plan
    k: int
    cond: np.ndarray | None


def fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An H×W×3 uint8 frame at ``size`` (height, width): center-cropped to its aspect, then resized (bicubic)."""
    from PIL import Image, ImageOps

    if frame.shape[:2] == tuple(size):
        return np.ascontiguousarray(frame)
    img = ImageOps.fit(Image.fromarray(np.ascontiguousarray(frame)), (size[1], size[0]), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


class TaskPool:
    """The tasks of a dataset or a suite, this rank's share of them, and their plans (see the module docstring)."""

    def __init__(self, cfg: PromptSource, size: tuple[int, int], planner: Any, planner_name: str, rank: int = 0,
                 world: int = 1):
        self.cfg, self.size, self.planner, self.planner_name = cfg, size, planner, planner_name
        refs = self._dataset() if cfg.source == "dataset" else self._suite()
        if cfg.limit is not None:
            refs = refs[:cfg.limit]
        if not refs:
            raise ValueError(f"prompts: {cfg.path} has no usable {'episodes' if cfg.source == 'dataset' else 'cases'}"
                             f"{f' in split {cfg.split!r}' if cfg.split else ''}; fix: check it with "
                             f"`spiral {'data check' if cfg.source == 'dataset' else 'bench --dry-run --suite'} "
                             f"{cfg.path}` or point prompts.path elsewhere")
        self.total = len(refs)
        numbered = list(enumerate(refs))  # (index in the whole source, ref)
        self.refs = numbered[rank::world] if len(refs) >= world else numbered
        if len(refs) < world:
            log.warning("prompts: %d tasks for %d ranks; every rank draws from all of them", len(refs), world)
        self._tasks: dict[int, Task] = {}
        self._plans: dict[int, Plan] = {}

    # ---- reading the source ------------------------------------------------------------------------------------
    def _dataset(self) -> list[Any]:
        from spiral.data.format import check_dataset

        root = Path(self.cfg.path or "")
        if not root.is_dir():
            raise FileNotFoundError(f"prompts: dataset folder {root} not found; fix: import one with `spiral data "
                                    "import` and set prompts.path to its --out")
        report = check_dataset(root)
        if report.errors:
            log.warning("prompts: %d manifest lines of %s are not usable (spiral data check %s lists them)",
                        len(report.errors), root, root)
        eps = [e for e in report.episodes if e.parent is None and (self.cfg.split is None or e.split == self.cfg.split)]
        return [(root, ep) for ep in eps]

    def _suite(self) -> list[Any]:
        from spiral.bench.suite import load_suite

        suite = load_suite(self.cfg.path or "", check_plans=False)
        if suite.errors:
            log.warning("prompts: %d cases of suite %s are not usable and left out", len(suite.errors), suite.name)
        return list(suite.cases)

    def task(self, i: int) -> Task:
        """The ``i``-th task of this rank's share, its frames read once."""
        if i not in self._tasks:
            number, ref = self.refs[i]
            self._tasks[i] = self._read_episode(ref, number) if self.cfg.source == "dataset" else \
                self._read_case(ref, number)
        return self._tasks[i]

    def _read_episode(self, ref: Any, number: int) -> Task:
        from spiral.train.sft import read_frames

        root, ep = ref
        frames = read_frames(root / ep.video, [s.start_frame for s in ep.steps])
        steps = [SubAction(id=j, text=s.text, verb=s.verb or "", objects=list(s.objects), preconditions=list(s.pre),
                           postconditions=list(s.post)) for j, s in enumerate(ep.steps)]
        starts = [fit(frames[s.start_frame], self.size) for s in ep.steps]
        return Task(key=ep.id, number=number, goal=ep.goal, first=starts[0], state=ep.initial_state,
                    scene_seed=ep.scene_seed, steps=steps, step_frames=starts)

    def _read_case(self, case: Any, number: int) -> Task:
        from spiral.api import load_image, scene_frame

        if case.image is not None:
            return Task(key=case.id, number=number, goal=case.goal, first=load_image(case.image, self.size))
        first, state = scene_frame(int(case.scene), self.size)
        return Task(key=case.id, number=number, goal=case.goal, first=first, state=state, scene_seed=case.scene)

    # ---- plans and draws ---------------------------------------------------------------------------------------
    def plan(self, i: int) -> Plan:
        """The plan of task ``i``: the PlanAgent's from goal + first frame (kept), or the annotated steps."""
        if i in self._plans:
            return self._plans[i]
        t = self.task(i)
        if self.cfg.plan == "annotations":
            plan = Plan(goal=t.goal, steps=t.steps)
        else:
            try:
                goal = TaskGoal.read(t.goal, required=self.planner_name == "symbolic")
                plan = self.planner.plan(goal, Observation(frame=t.first, state=t.state))
            except ValueError as e:
                raise ValueError(f"prompts: planner {self.planner_name} cannot plan task {t.key!r} ({t.goal!r}): "
                                 f"{str(e).splitlines()[0]}; fix: a planner for this world (e.g. llm with domain "
                                 "null) or, for a dataset, prompts.plan: annotations") from None
        self._plans[i] = plan
        return plan

    def draw(self, n: int, stage: Stage, rng: np.random.Generator, max_tries: int = 50) -> list[Draw]:
        """``n`` prompts of the stage's kind from this rank's tasks (see the module docstring)."""
        out: list[Draw] = []
        tries = 0
        while len(out) < n:
            i = int(rng.integers(len(self.refs)))
            plan, t = self.plan(i), self.task(i)
            if stage.kind == "single":
                known = len(t.step_frames) if t.step_frames else 1  # a suite knows only the first frame
                choices = list(range(min(len(plan.steps), known)))
            else:
                choices = list(range(min(1, len(plan.steps) - 1), len(plan.steps)))
            if not choices:
                tries += 1
                if tries > max_tries:
                    raise ValueError(f"prompts: the plans of {self.cfg.path} have no step a {stage.kind} stage can "
                                     "use (empty plans?); fix: another planner or prompts.plan: annotations")
                continue
            k = choices[int(rng.integers(len(choices)))]
            cond = (t.step_frames[k] if t.step_frames else t.first) if stage.kind == "single" else None
            out.append(Draw(task=t, plan=plan, k=k, cond=cond))
        return out
