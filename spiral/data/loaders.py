"""torch Datasets over an ActVideoGen-Dataset folder: segments (one per step) and episodes."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from spiral.data.format import CheckReport, Episode, check_dataset
from spiral.video import read_clip, read_video, video_info

WHOLE_VIDEO_BYTES = 32 << 20  # videos whose decoded frames fit in this are decoded once and kept (tabletop clips)


class _VideoCache:
    """Keeps the most recently decoded small videos, whose steps are read one after another; a larger video (a real
    one) is never decoded whole: each step's frames are read by seeking (:func:`spiral.video.read_clip`)."""

    def __init__(self, size: int = 64):
        self.size, self._d = size, OrderedDict[Path, np.ndarray]()
        self._small: dict[Path, bool] = {}

    def clip(self, path: Path, fps: float, start: int, end: int) -> np.ndarray:
        """Frames ``start``..``end`` (inclusive) of the video."""
        if path not in self._small:
            info = video_info(path)
            self._small[path] = info["frames"] * info["height"] * info["width"] * 3 <= WHOLE_VIDEO_BYTES
        if not self._small[path]:
            frames = list(read_clip(path, start / fps, end / fps))
            if len(frames) != end - start + 1:
                raise ValueError(f"{path} has no frames {start}..{end} (got {len(frames)})")
            return np.stack(frames)
        if path in self._d:
            self._d.move_to_end(path)
        else:
            self._d[path] = read_video(path)
            if len(self._d) > self.size:
                self._d.popitem(last=False)
        return self._d[path][start:end + 1]


def _load(root: str | Path, split: str | None) -> tuple[Path, list[Episode], CheckReport]:
    root = Path(root)
    report = check_dataset(root)
    eps = [e for e in report.episodes if split is None or e.split == split]
    return root, eps, report


class SegmentDataset(Dataset):
    """One item per annotated step: first frame, step text, clip and label (a large video's clip is read by seeking,
    not by decoding the whole file).

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
        frames = self._cache.clip(self.root / ep.video, ep.fps, step.start_frame, step.end_frame)
        clip = torch.from_numpy(np.ascontiguousarray(frames))
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
