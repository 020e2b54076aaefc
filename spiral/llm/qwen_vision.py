"""Qwen2-VL / Qwen2.5-VL vision inputs from numpy frames, without torchvision.

Why by hand: in the transformers versions SPIRAL supports, the Qwen-VL *processor* cannot even be
constructed without torchvision (its video processor imports it), and no torchvision wheel matches
the CPU torch we pin (see docs/transformers_vlm.md for the cost of the alternative). The official
*image* processor has a PIL backend (``Qwen2VLImageProcessorPil``) that works without torchvision;
the tests check :func:`patchify_image` against it, and :func:`patchify_video` against the layout
formula below.

What the vision tower expects (the same for images and videos):

1. resize each frame (bicubic) to ``smart_resize``'s size: both sides multiples of
   ``factor = patch_size * merge_size``, the pixel count within ``[min_pixels, max_pixels]``, the
   aspect ratio kept as well as possible;
2. scale to [0, 1] and normalise per channel with ``image_mean``/``image_std`` (CLIP's by default);
3. group ``temporal_patch_size`` frames (an image is repeated; a video's last frame is repeated to fill
   the last group), cut ``patch_size``² patches, and order them so that each ``merge_size``² block of
   neighbouring patches is contiguous: row ``((t·(H/m) + bh)·(W/m) + bw)·m² + mh·m + mw`` holds, for
   channel ``c``, time ``τ`` and in-patch offsets ``(ph, pw)`` at column
   ``((c·T_p + τ)·p + ph)·p + pw``, the pixel of frame ``t·T_p + τ`` at row ``(bh·m + mh)·p + ph``
   and column ``(bw·m + mw)·p + pw``;
4. ``grid_thw = (frames / T_p, H / p, W / p)``; the language model sees ``prod(grid_thw) / m²`` tokens.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The Qwen processors' defaults when a checkpoint's preprocessor config does not say otherwise.
IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS = 56 * 56, 28 * 28 * 1280
VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS = 128 * 28 * 28, 28 * 28 * 768


@dataclass(frozen=True)
class VisionSpec:
    """Patch geometry (from the model config) and pixel normalisation and size bounds (from the preprocessor)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    min_pixels: int = IMAGE_MIN_PIXELS
    max_pixels: int = IMAGE_MAX_PIXELS

    @property
    def factor(self) -> int:
        """Both sides of a resized frame are multiples of this."""
        return self.patch_size * self.merge_size

    def tokens(self, grid_thw: tuple[int, int, int]) -> int:
        """How many placeholder tokens the language model gets for one image or video of this grid."""
        t, h, w = grid_thw
        return t * h * w // (self.merge_size**2)


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """The (height, width) the Qwen processors resize to: multiples of ``factor``, pixel count in bounds."""
    if min(height, width) <= 0:
        raise ValueError(f"cannot resize a {height}×{width} frame")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio {max(height, width) / min(height, width):.0f} is over Qwen-VL's limit of 200")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / scale / factor) * factor)
        w = max(factor, math.floor(width / scale / factor) * factor)
    elif h * w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * scale / factor) * factor
        w = math.ceil(width * scale / factor) * factor
    if h <= 0 or w <= 0:
        raise ValueError(f"a {height}×{width} frame resizes to nothing; raise min_pixels")
    return h, w


def _prepare(frames: np.ndarray, spec: VisionSpec) -> np.ndarray:
    """T×H×W×3 uint8 → T×3×H'×W' float32, resized (PIL bicubic, as the official PIL processor) and normalised."""
    from PIL import Image

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected T×H×W×3 uint8 frames, got shape {frames.shape} dtype {frames.dtype}")
    t, height, width, _ = frames.shape
    rh, rw = smart_resize(height, width, spec.factor, spec.min_pixels, spec.max_pixels)
    out = np.empty((t, 3, rh, rw), dtype=np.float32)
    mean = np.asarray(spec.image_mean, dtype=np.float32)[:, None, None]
    std = np.asarray(spec.image_std, dtype=np.float32)[:, None, None]
    for i, f in enumerate(frames):
        if (rh, rw) != (height, width):
            f = np.asarray(Image.fromarray(f, "RGB").resize((rw, rh), Image.BICUBIC))
        out[i] = (f.transpose(2, 0, 1).astype(np.float32) * np.float32(1 / 255) - mean) / std
    return out


def _patchify(x: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """T×3×H×W (T a multiple of the temporal patch) → (rows, 3·T_p·p·p) in the merge-block order."""
    p, tp, m = spec.patch_size, spec.temporal_patch_size, spec.merge_size
    t, c, h, w = x.shape
    gt, gh, gw = t // tp, h // p, w // p
    x = x.reshape(gt, tp, c, gh // m, m, p, gw // m, m, p)
    # axes: (gt, tp, c, bh, mh, ph, bw, mw, pw) → (gt, bh, bw, mh, mw, c, tp, ph, pw)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return np.ascontiguousarray(x.reshape(gt * gh * gw, c * tp * p * p)), (gt, gh, gw)


def patchify_image(frame: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """One H×W×3 uint8 image as ``pixel_values`` rows and its ``image_grid_thw`` (the frame fills a whole group)."""
    x = _prepare(np.asarray(frame)[None], spec)
    return _patchify(np.repeat(x, spec.temporal_patch_size, axis=0), spec)


def patchify_video(frames: np.ndarray, spec: VisionSpec) -> tuple[np.ndarray, tuple[int, int, int]]:
    """T×H×W×3 uint8 frames as ``pixel_values_videos`` rows and ``video_grid_thw`` (last frame repeated to fill)."""
    x = _prepare(frames, spec)
    pad = -len(x) % spec.temporal_patch_size
    if pad:
        x = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)])
    return _patchify(x, spec)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _pixels(cfg: dict[str, Any], lo: int, hi: int) -> tuple[int, int]:
    size = cfg.get("size") if isinstance(cfg.get("size"), dict) else {}
    return (int(cfg.get("min_pixels") or size.get("shortest_edge") or lo),
            int(cfg.get("max_pixels") or size.get("longest_edge") or hi))


def specs_for(model_config: Any, folder: str | Path | None) -> tuple[VisionSpec, VisionSpec]:
    """(image spec, video spec) for a loaded model: geometry from its config, the rest from the preprocessor files.

    ``preprocessor_config.json`` holds the image settings; ``video_preprocessor_config.json`` the video
    ones when present (else the Qwen video defaults, with mean/std from the image settings).
    """
    vc = model_config.vision_config
    geometry = {"patch_size": int(vc.patch_size), "temporal_patch_size": int(vc.temporal_patch_size),
                "merge_size": int(vc.spatial_merge_size)}
    img_cfg = _read_json(Path(folder) / "preprocessor_config.json") if folder else {}
    vid_cfg = _read_json(Path(folder) / "video_preprocessor_config.json") if folder else {}
    mean = tuple(img_cfg.get("image_mean", CLIP_MEAN))
    std = tuple(img_cfg.get("image_std", CLIP_STD))
    image = VisionSpec(**geometry, image_mean=mean, image_std=std,  # type: ignore[arg-type]
                       min_pixels=_pixels(img_cfg, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)[0],
                       max_pixels=_pixels(img_cfg, IMAGE_MIN_PIXELS, IMAGE_MAX_PIXELS)[1])
    vmin, vmax = _pixels(vid_cfg, VIDEO_MIN_PIXELS, VIDEO_MAX_PIXELS)
    video = replace(image, image_mean=tuple(vid_cfg.get("image_mean", mean)),  # type: ignore[arg-type]
                    image_std=tuple(vid_cfg.get("image_std", std)), min_pixels=vmin, max_pixels=vmax)
    return image, video
