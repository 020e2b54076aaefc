"""The embedded learned VideoGenerator: TinyVideoDiT (``spiral.models.tiny_video``) sampled with ``spiral.flow``.

``generate`` runs the Euler ODE from seeded noise (optionally with classifier-free guidance
against the learned null text); frame 0 of every segment is the request's conditioning frame,
byte for byte. For GRPO the pieces are public: :meth:`TinyGenerator.prepare` turns requests into
a :class:`TinyCond`, :meth:`TinyGenerator.initial_noise` gives the seeded x_T,
:meth:`TinyGenerator.denoiser` is ``(x_t, σ, cond) → v`` and :meth:`TinyGenerator.sigmas` the
schedule, so ``flow.sample(lambda x, s: gen.denoiser(x, s, cond), x_T, gen.sigmas(), mode="sde")``
rolls out with per-step log-probabilities.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from spiral import flow
from spiral.models.text import TextEncoder, get_text_encoder
from spiral.models.tiny_video import TinyVideoDiT, load_weights
from spiral.options import BackendOptions
from spiral.types import GenerationRequest, Segment, check_frame

EVOLVED_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights" / "tiny_evolved.safetensors"
DEFAULT_WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights" / "tiny.safetensors"


@dataclass
class TinyCond:
    """Everything but x_t and σ that the denoiser needs, batched."""

    text: torch.Tensor  # (B, text_dim)
    cond: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    anchor: torch.Tensor  # (B, 3, H, W) in [-1, 1]
    cfg_scale: float = 1.0
    cfg_max_sigma: float | None = None  # guidance only at noise levels σ ≤ this (None: at every step)
    cfg_tau: float | None = None  # guidance only near pixels where the text moves x̂_0 by ≥ this (None: everywhere)


def frames_to_tensor(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 (…, H, W, 3) → float (…, 3, H, W) in [-1, 1]."""
    t = torch.as_tensor(np.asarray(frames)) if not isinstance(frames, torch.Tensor) else frames
    return t.movedim(-1, -3).float() / 127.5 - 1.0


def tensor_to_frames(x: torch.Tensor) -> np.ndarray:
    """float (…, 3, H, W) in [-1, 1] → uint8 (…, H, W, 3), rounded and clipped."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).movedim(-3, -1).cpu().numpy()


def keep_unchanged(x0: torch.Tensor, cond: torch.Tensor, tau: float) -> torch.Tensor:
    """Set each pixel of the new frames x0 (B, F, 3, H, W) that, as shown (clamped to [-1, 1]), lies within
    ``tau`` of the conditioning frame ``cond`` (B, 3, H, W) in every channel back to it. What moves (an object,
    the gripper, the lamp's light) differs by far more than a few grey levels; the sampler's noise on a still
    background does not."""
    c = cond.unsqueeze(1).expand_as(x0)
    same = ((x0.clamp(-1, 1) - c).abs().amax(dim=2, keepdim=True) < tau).expand_as(x0)
    return torch.where(same, c, x0)


class TinyOptions(BackendOptions):
    """Options of the ``tiny`` and ``tiny-evolved`` generators (the sampler ones default to the weights' metadata)."""

    weights: str | None = Field(None, description="a .safetensors file from `spiral train generator` or "
                                                  "`spiral train grpo` (default: the shipped weights)")
    steps: int = Field(10, ge=1, description="Euler steps per segment")
    cfg_scale: float | None = Field(None, ge=0, description="classifier-free guidance scale (1: none)")
    shift: float | None = Field(None, gt=0, description="time shift of the noise schedule (default: the model's)")
    fps: float = Field(8.0, gt=0, description="frame rate of the segments")
    device: str = Field("cpu", description="torch device, e.g. cpu or cuda")
    threads: int | None = Field(None, ge=0, description="torch CPU threads for the process (0/None: leave as is)")
    text_encoder: str | None = Field(None, description="text encoder name (default: the one the weights were "
                                                       "trained with)")
    refinements: bool = Field(False, description="let the critic's feedback reach the prompt of a refined attempt")
    cfg_max_sigma: float | None = Field(None, gt=0, le=1, description="guide only at noise levels <= this")
    cfg_tau: float | None = Field(None, gt=0, description="guide only pixels the text changes by >= this")
    keep_tau: float | None = Field(None, gt=0, lt=2, description="keep pixels within this of the conditioning frame")


class TinyGenerator:
    """Text+image-to-video flow-matching generator trained on the tabletop world (registered as ``tiny``)."""

    name = "tiny"
    is_oracle = False
    options_model = TinyOptions

    def __init__(self, weights: str | Path | None = None, steps: int = 10, cfg_scale: float | None = None,
                 shift: float | None = None, fps: float = 8.0, device: str = "cpu", threads: int | None = None,
                 text_encoder: str | TextEncoder | None = None, model: TinyVideoDiT | None = None,
                 refinements: bool = False, cfg_max_sigma: float | None = None, cfg_tau: float | None = None,
                 keep_tau: float | None = None):
        """``cfg_max_sigma``: apply ``cfg_scale`` only on the late steps (σ ≤ cfg_max_sigma), where the model
        paints what a moved object looks like at its destination; guidance on the early steps moves the
        whole scene (drift); docs/self_evolution.md (Findings) measures both. ``cfg_tau``: guide only the pixels
        within 2 of one where the text changes the predicted clean frame by ≥ cfg_tau ([-1, 1] units), so
        the moved object is painted while the background, where the conditional and unconditional
        predictions differ only by noise, is not amplified into drift (docs/self_evolution.md, Findings).
        ``keep_tau``: in every new frame, a pixel within keep_tau ([-1, 1] units, all channels) of the
        conditioning frame is set back to it, so what the segment leaves in place stays byte for byte and
        small sampling errors in the background do not add up over a long plan (drift). Left unset,
        all four come from the weights' ``sampler`` metadata (what ``spiral train grpo`` trained the weights
        under, or chose afterwards), else 1 / None / None / None."""
        if threads:
            torch.set_num_threads(threads)
        meta: dict[str, str] = {}
        if model is None:
            model, meta = load_weights(Path(weights) if weights is not None else DEFAULT_WEIGHTS, map_location=device)
        sampler = json.loads(meta.get("sampler", "{}"))
        cfg_scale = float(sampler.get("cfg_scale", 1.0)) if cfg_scale is None else cfg_scale
        cfg_max_sigma = sampler.get("cfg_max_sigma") if cfg_max_sigma is None else cfg_max_sigma
        cfg_tau = sampler.get("cfg_tau") if cfg_tau is None else cfg_tau
        keep_tau = sampler.get("keep_tau") if keep_tau is None else keep_tau
        if cfg_max_sigma is not None and not 0 < cfg_max_sigma <= 1:
            raise ValueError(f"cfg_max_sigma must be in (0, 1] (a noise level; 1 guides every step), got {cfg_max_sigma}")
        if cfg_tau is not None and not cfg_tau > 0:
            raise ValueError(f"cfg_tau must be > 0 (a change of the predicted frame, in [-1, 1] units), got {cfg_tau}; "
                             "leave it unset to guide every pixel")
        if keep_tau is not None and not 0 < keep_tau < 2:
            raise ValueError(f"keep_tau must be in (0, 2) (a pixel difference in [-1, 1] units; 0.05 is ~6 grey "
                             f"levels), got {keep_tau}; leave it unset to keep every sampled pixel")
        self.model = model.to(device).eval()
        self.config = self.model.config
        self.steps, self.cfg_scale, self.fps, self.device = steps, cfg_scale, fps, torch.device(device)
        self.shift = self.config.shift if shift is None else shift
        if text_encoder is None or isinstance(text_encoder, str):
            text_encoder = get_text_encoder(text_encoder or self.config.text_encoder)
        self.text_encoder = text_encoder
        self.refinements = refinements
        self.cfg_max_sigma, self.cfg_tau, self.keep_tau = cfg_max_sigma, cfg_tau, keep_tau

    # --- pieces GRPO reuses ---------------------------------------------------------------------
    def check_request(self, request: GenerationRequest) -> None:
        """Raise a clear error for what this model cannot make (size, length, missing frame)."""
        c = self.config
        if (request.height, request.width, request.num_frames) != (c.resolution, c.resolution, c.num_frames + 1):
            raise ValueError(
                f"the tiny generator makes {c.resolution}x{c.resolution} segments of {c.num_frames + 1} frames "
                f"(1 conditioning + {c.num_frames} new); the request asks for {request.height}x{request.width} "
                f"with {request.num_frames} frames (set height/width/num_frames to the supported values)")
        if request.cond_frame is None:
            raise ValueError("the tiny generator is image-to-video: the request needs a cond_frame")
        for what, f in (("cond_frame", request.cond_frame), ("anchor_frame", request.anchor_frame)):
            if f is not None and check_frame(f, what).shape[:2] != (c.resolution, c.resolution):
                raise ValueError(f"{what} is {f.shape[0]}x{f.shape[1]}; the tiny generator needs "
                                 f"{c.resolution}x{c.resolution} frames")

    def conditioning_text(self, request: GenerationRequest) -> str:
        """The text the model sees: the instruction, without the critic's feedback (``request.feedback``) unless
        ``refinements`` is on. The model learned one-sentence sub-action wordings; an appended
        "Important: …" sentence moves the embedding off that distribution and measurably lowers
        success, so by default a *refine* acts on this model as a retry with a new seed."""
        return request.prompt_text() if self.refinements else request.prompt

    def prepare(self, requests: list[GenerationRequest], cfg_scale: float | None = None) -> TinyCond:
        """Batch the requests' text embeddings, conditioning and anchor frames."""
        for r in requests:
            self.check_request(r)
        text = self.text_encoder.encode([self.conditioning_text(r) for r in requests]).to(self.device)
        cond = frames_to_tensor(np.stack([r.cond_frame for r in requests])).to(self.device)
        anchor = frames_to_tensor(np.stack([r.anchor_frame if r.anchor_frame is not None else r.cond_frame
                                            for r in requests])).to(self.device)
        return TinyCond(text, cond, anchor, self.cfg_scale if cfg_scale is None else cfg_scale, self.cfg_max_sigma,
                        self.cfg_tau)

    def initial_noise(self, requests: list[GenerationRequest]) -> torch.Tensor:
        """x_T (B, F, 3, H, W): each request's noise from its own seed, so batching never changes a result."""
        c = self.config
        shape = (c.num_frames, 3, c.resolution, c.resolution)
        return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(r.seed))
                            for r in requests]).to(self.device)

    def sigmas(self, steps: int | None = None) -> torch.Tensor:
        """The sampling schedule (steps + 1 noise levels, 1 → 0) with this model's time shift."""
        return flow.sigma_schedule(steps or self.steps, self.shift).to(self.device)

    def denoiser(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: TinyCond) -> torch.Tensor:
        """Velocity (B, F, 3, H, W); with cfg_scale ≠ 1, guided against the learned null text (at σ ≤
        cfg_max_sigma only, if set; only near where the text changes x̂_0 by ≥ cfg_tau, if set)."""
        late = cond.cfg_max_sigma is None or float(sigma.max()) <= cond.cfg_max_sigma
        if cond.cfg_scale == 1.0 or not late:
            return self.model(x_t, sigma, cond.text, cond.cond, cond.anchor)
        v_c, v_u = self.text_and_null_velocity(x_t, sigma, cond)
        if cond.cfg_tau is None:
            return v_u + cond.cfg_scale * (v_c - v_u)
        near = self.text_region(v_c, v_u, sigma, cond.cfg_tau)
        weight = torch.where(near, cond.cfg_scale, 1.0).to(v_c.dtype)
        return v_u + weight * (v_c - v_u)

    def text_and_null_velocity(self, x_t: torch.Tensor, sigma: torch.Tensor, cond: TinyCond,
                               model: torch.nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The velocity with the text and with the learned null text, in one batched forward of ``model``
        (default: this generator's; the trainer passes its reference too)."""
        model = model or self.model
        null = model.embed_text(None, x_t.shape[0])
        v = model(torch.cat([x_t, x_t]), torch.cat([sigma, sigma]), torch.cat([cond.text, null]),
                  torch.cat([cond.cond, cond.cond]), torch.cat([cond.anchor, cond.anchor]))
        return v.chunk(2)

    def text_region(self, v_c: torch.Tensor, v_u: torch.Tensor, sigma: torch.Tensor, tau: float) -> torch.Tensor:
        """(B, F, 1, H, W) bool: pixels within 2 of one (same frame) where the text (conditional velocity ``v_c``
        against the null text's ``v_u``) changes the predicted clean frame by ≥ ``tau``: where the action
        happens. The rest is background the text leaves alone; it is what ``cfg_tau`` leaves unguided and what
        the trainer's background anchor holds."""
        s = sigma.to(v_c.dtype).clamp(min=self.config.sigma_min).view(-1, 1, 1, 1, 1)
        change = (s * (v_c - v_u)).abs().amax(dim=2)  # |x̂0_c − x̂0_u| per pixel (v = (x_t − x̂0)/σ)
        return (torch.nn.functional.max_pool2d(change, 5, 1, 2) >= tau).unsqueeze(2)  # with the object's edges

    # --- VideoGenerator -------------------------------------------------------------------------
    @torch.no_grad()
    def generate_batch(self, requests: list[GenerationRequest]) -> list[Segment]:
        """One segment per request, sampled together (ODE, deterministic by each request's seed)."""
        if not requests:
            return []
        t0 = time.perf_counter()
        cond = self.prepare(requests)
        x0, _, _ = flow.sample(lambda x, s: self.denoiser(x, s, cond), self.initial_noise(requests), self.sigmas())
        if self.keep_tau is not None:
            x0 = keep_unchanged(x0, cond.cond, self.keep_tau)
        new = tensor_to_frames(x0)
        seconds = (time.perf_counter() - t0) / len(requests)
        out = []
        for r, frames in zip(requests, new):
            video = np.concatenate([np.asarray(r.cond_frame, dtype=np.uint8)[None], frames])
            out.append(Segment(frames=video, fps=self.fps, seed=r.seed, backend=self.name,
                               timings={"generate": seconds},
                               meta={"steps": self.steps, "cfg_scale": self.cfg_scale,
                                     "cfg_max_sigma": self.cfg_max_sigma, "cfg_tau": self.cfg_tau,
                                     "keep_tau": self.keep_tau,
                                     "shift": self.shift}))
        return out

    def generate(self, request: GenerationRequest) -> Segment:
        """One segment; frame 0 is ``request.cond_frame`` exactly."""
        return self.generate_batch([request])[0]


class TinyEvolvedGenerator(TinyGenerator):
    """The tiny generator after self-evolution (``spiral train grpo``; registered as ``tiny-evolved``)."""

    name = "tiny-evolved"

    def __init__(self, weights: str | Path | None = None, **options: Any):
        super().__init__(weights=weights if weights is not None else EVOLVED_WEIGHTS, **options)
