"""Composition of accepted segments into one video with frame-accurate step boundaries.

Every segment's frame 0 is its conditioning frame, i.e. the previous segment's last frame,
so it is dropped for all but the first segment: no duplicated boundary frames.
"""

from __future__ import annotations

import numpy as np

from spiral.types import check_frames


def compose(segments: list[np.ndarray], crossfade: int = 0) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Concatenate segments; returns the video and each step's inclusive (start, end) frame range.

    With ``crossfade = k`` the first ``k`` new frames of a segment are blended linearly with
    the previous segment's last frame (a soft cut where a generator's boundary jumps).
    """
    if not segments:
        raise ValueError("nothing to compose: no accepted segments")
    for i, s in enumerate(segments):
        check_frames(s, f"segment {i}")
        if s.shape[1:] != segments[0].shape[1:]:
            raise ValueError(f"segment {i} is {s.shape[1:3]}, segment 0 is {segments[0].shape[1:3]}: resize before composing")
    parts = [segments[0]]
    bounds = [(0, len(segments[0]) - 1)]
    total = len(segments[0])
    for s in segments[1:]:
        new = s[1:].copy()
        k = min(crossfade, len(new))
        if k:
            prev = parts[-1][-1].astype(np.float32)
            for j in range(k):
                w = (j + 1) / (k + 1)
                new[j] = np.round((1 - w) * prev + w * new[j].astype(np.float32)).astype(np.uint8)
        bounds.append((total - 1, total - 1 + len(new)))
        parts.append(new)
        total += len(new)
    return np.concatenate(parts), bounds
