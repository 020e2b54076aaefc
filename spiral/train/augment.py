"""Image augmentations that mimic generator artefacts, and the fixed degradations used to test robustness.

Training augments batches on the fly (torch, batched): blur, noise, colour shift, small warps,
partial occlusion, JPEG. Codec artefacts of H.264 are baked into part of the frame pool by
encoding clips through PyAV (:func:`h264_roundtrip`). The fixed degradations
(:data:`DEGRADATIONS`) are what ``spiral eval critic --degrade`` and the model cards report.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


@dataclass(frozen=True)
class AugConfig:
    """Probabilities and ranges of each augmentation (0..255 pixel scale)."""

    p_warp: float = 0.5
    max_shift_px: float = 1.2
    max_scale: float = 0.03
    max_rot_deg: float = 1.5
    p_blur: float = 0.4
    blur_sigma: tuple[float, float] = (0.3, 1.3)
    p_color: float = 0.6
    gain: float = 0.08
    offset: float = 8.0
    p_occlude: float = 0.2
    occlude_px: tuple[int, int] = (2, 6)
    p_noise: float = 0.5
    noise_sigma: tuple[float, float] = (1.0, 10.0)
    p_jpeg: float = 0.15
    jpeg_quality: tuple[int, int] = (35, 90)


#: the judge trains with different (milder colour, stronger blur/noise, no occlusion) augmentations
JUDGE_AUG = AugConfig(p_warp=0.4, max_shift_px=1.0, p_blur=0.5, blur_sigma=(0.4, 1.6), p_color=0.4, gain=0.05,
                      offset=5.0, p_occlude=0.0, p_noise=0.6, noise_sigma=(2.0, 12.0), p_jpeg=0.25)


def jpeg(frame: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip of one H×W×3 uint8 frame."""
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def h264_roundtrip(frames: np.ndarray, crf: int = 23, pix_fmt: str = "yuv420p", fps: float = 8.0) -> np.ndarray:
    """Encode T×H×W×3 uint8 frames with H.264 in memory and decode them back (codec artefacts, no files)."""
    h, w = frames.shape[1:3]
    pad = ((0, 0), (0, h % 2), (0, w % 2), (0, 0))
    src = np.pad(frames, pad, mode="edge") if pix_fmt == "yuv420p" and (h % 2 or w % 2) else frames
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        s.width, s.height, s.pix_fmt = src.shape[2], src.shape[1], pix_fmt
        s.options = {"crf": str(int(crf)), "preset": "veryfast"}
        for f in src:
            for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    buf.seek(0)
    with av.open(buf) as c:
        out = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    return out[:, :h, :w]


def _gauss_kernels(sigmas: torch.Tensor, radius: int = 3) -> torch.Tensor:
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(x[None] ** 2) / (2 * sigmas[:, None].clamp_min(1e-3) ** 2))
    return k / k.sum(1, keepdim=True)


def blur(x: torch.Tensor, sigmas: torch.Tensor, radius: int = 3) -> torch.Tensor:
    """Per-sample separable Gaussian blur of N×C×H×W (border pixels replicated), as two batched matmuls."""
    n, _, h, w = x.shape
    k = _gauss_kernels(sigmas, radius)

    def band(size: int) -> torch.Tensor:
        idx = torch.arange(size)
        m = torch.zeros(n, size, size)
        for j, o in enumerate(range(-radius, radius + 1)):
            m[:, idx, (idx + o).clamp(0, size - 1)] += k[:, j:j + 1]
        return m

    return band(h)[:, None] @ x @ band(w)[:, None].transpose(-1, -2)


def augment(x: torch.Tensor, g: torch.Generator, cfg: AugConfig = AugConfig()) -> torch.Tensor:
    """Augment a float batch N×3×H×W in 0..255; every random choice comes from ``g``."""
    n = x.shape[0]

    def pick(p: float) -> torch.Tensor:
        return torch.rand(n, generator=g) < p

    def u(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(*(shape or (n,)), generator=g)

    if cfg.p_jpeg > 0:
        sel = pick(cfg.p_jpeg).nonzero().flatten().tolist()
        qs = torch.randint(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1, (n,), generator=g)
        for i in sel:
            img = x[i].permute(1, 2, 0).clamp(0, 255).round().to(torch.uint8).numpy()
            x[i] = torch.from_numpy(jpeg(img, int(qs[i])).copy()).permute(2, 0, 1).float()
    h = x.shape[-1]
    m = pick(cfg.p_warp)
    if m.any():
        ang = u(-cfg.max_rot_deg, cfg.max_rot_deg) * math.pi / 180
        sc = 1 + u(-cfg.max_scale, cfg.max_scale)
        tx, ty = (u(-cfg.max_shift_px, cfg.max_shift_px) * 2 / h for _ in range(2))
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2] = sc * torch.cos(ang), -sc * torch.sin(ang), tx
        theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2] = sc * torch.sin(ang), sc * torch.cos(ang), ty
        grid = F.affine_grid(theta[m], list(x[m].shape), align_corners=False)
        x[m] = F.grid_sample(x[m], grid, mode="bilinear", padding_mode="border", align_corners=False)
    m = pick(cfg.p_blur)
    if m.any():
        x[m] = blur(x[m], u(*cfg.blur_sigma)[m])
    m = pick(cfg.p_color)
    if m.any():
        gain = 1 + u(-cfg.gain, cfg.gain, n, 3)
        off = torch.randn(n, 3, generator=g) * cfg.offset
        x[m] = x[m] * gain[m][..., None, None] + off[m][..., None, None]
    if cfg.p_occlude > 0:
        for i in pick(cfg.p_occlude).nonzero().flatten().tolist():
            s = int(torch.randint(cfg.occlude_px[0], cfg.occlude_px[1] + 1, (1,), generator=g))
            y0, x0 = (int(torch.randint(0, h - s, (1,), generator=g)) for _ in range(2))
            x[i, :, y0:y0 + s, x0:x0 + s] = torch.rand(3, 1, 1, generator=g) * 255
    m = pick(cfg.p_noise)
    if m.any():
        sig = u(*cfg.noise_sigma)[m]
        x[m] = x[m] + torch.randn(x[m].shape, generator=g) * sig[:, None, None, None]
    return x.clamp_(0, 255)


# ---------------------------------------------------------------- fixed degradations (robustness tables)
def _blur_np(frames: np.ndarray, sigma: float) -> np.ndarray:
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = blur(x, torch.full((len(x),), sigma))
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def _noise_np(frames: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).round().astype(np.uint8)


def degrade(frames: np.ndarray, kind: str = "generator", seed: int = 0) -> np.ndarray:
    """Apply one named degradation of :data:`DEGRADATIONS` to T×H×W×3 uint8 frames (deterministic in ``seed``)."""
    if kind not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(DEGRADATIONS)}")
    if kind == "clean":
        return frames
    if kind == "blur":
        return _blur_np(frames, 1.0)
    if kind == "noise":
        return _noise_np(frames, 8.0, seed)
    if kind == "jpeg":
        return np.stack([jpeg(f, 50) for f in frames])
    if kind == "h264":
        return h264_roundtrip(frames, crf=30)
    if kind == "color":
        rng = np.random.default_rng(seed)
        return np.clip(frames * rng.uniform(0.95, 1.05, 3) + rng.normal(0, 5, 3), 0, 255).round().astype(np.uint8)
    # "generator": blur σ=0.8 px then Gaussian noise σ=6/255, independently per frame
    return _noise_np(_blur_np(frames, 0.8), 6.0, seed)


#: named degradations and what each does (documented in docs/critic_eval.md and the model cards)
DEGRADATIONS: dict[str, str] = {
    "clean": "no change",
    "generator": "Gaussian blur σ=0.8 px, then additive Gaussian noise σ=6 (0..255), per frame",
    "blur": "Gaussian blur σ=1.0 px",
    "noise": "additive Gaussian noise σ=8 (0..255)",
    "jpeg": "JPEG quality 50",
    "h264": "H.264 4:2:0 at CRF 30 (in memory)",
    "color": "per-channel gain ±5 % and offset σ=5",
}
