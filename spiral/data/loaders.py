"""torch Datasets over an ActVideoGen-Dataset folder: segments (one per step) and episodes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spiral.data.format import CheckReport, Episode, check_dataset
from spiral.video import read_video


class _VideoCache:
    """Keeps the most recently decoded videos; episodes are read step by step."""

    def __init__(self, size: int = 64):
        self.size, self._d = size, OrderedDict[Path, np.ndarray]()

    def get(self, path: Path) -> np.ndarray:
        if path in self._d:
            self._d.move_to_end(path)
            return self._d[path]
        v = read_video(path)
        self._d[path] = v
        if len(self._d) > self.size:
            self._d.popitem(last=False)
        return v


def _load(root: str | Path, split: str | None) -> tuple[Path, list[Episode], CheckReport]:
    root = Path(root)
    report = check_dataset(root)
    eps = [e for e in report.episodes if split is None or e.split == split]
    return root, eps, report


class SegmentDataset(Dataset):
    """One item per annotated step: first frame, step text, clip and label.

    ``clip`` is a uint8 tensor T×H×W×3 (frame 0 is the conditioning frame);
    ``label`` is ``"success"`` or the rendered failure mode.
    """

    def __init__(self, root: str | Path, split: str | None = None, labels: set[str] | None = None, cache: int = 64):
        self.root, self.episodes, self.report = _load(root, split)
        self.index = [
            (i, j) for i, ep in enumerate(self.episodes) for j, s in enumerate(ep.steps) if labels is None or s.label in labels
        ]
        self._cache = _VideoCache(cache)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict[str, Any]:
        i, j = self.index[k]
        ep, step = self.episodes[i], self.episodes[i].steps[j]
        video = self._cache.get(self.root / ep.video)
        clip = torch.from_numpy(np.ascontiguousarray(video[step.start_frame : step.end_frame + 1]))
        return {
            "episode": ep.id,
            "step": j,
            "text": step.text,
            "verb": step.verb or "",
            "objects": list(step.objects),
            "post": list(step.post),
            "label": step.label,
            "failure_kind": step.failure_kind,
            "first_frame": clip[0],
            "clip": clip,
        }


class EpisodeDataset(Dataset):
    """One item per episode: the whole video (uint8 T×H×W×3) with its goal and steps."""

    def __init__(self, root: str | Path, split: str | None = None, include_failures: bool = False):
        self.root, eps, self.report = _load(root, split)
        self.episodes = [e for e in eps if include_failures or e.parent is None]

    def __len__(self) -> int:
        return len(self.episodes)

    def __getitem__(self, k: int) -> dict[str, Any]:
        ep = self.episodes[k]
        return {"id": ep.id, "goal": ep.goal, "video": torch.from_numpy(read_video(self.root / ep.video)),
                "steps": [s.model_dump() for s in ep.steps], "initial_state": ep.initial_state}
