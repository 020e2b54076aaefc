"""LTX-Video image-to-video adapter (diffusers' ``LTXImageToVideoPipeline``).

``prepare``/``velocity``/``decode`` mirror the steps of the pipeline's ``__call__`` in diffusers 0.42.1 (the version
tested; ``pyproject.toml`` bounds diffusers by it) so that the hand-written flow sampler (``spiral/flow.py``,
GRPO) gives the pipeline's video; each method names the steps it mirrors. ``tests/test_diffusers_backends.py``
checks that hand-driven sampling equals the pipeline's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from spiral.generators.diffusers.base import DiffusersI2V, FlowAccess, FlowInputs, ModelSize
from spiral.types import GenerationRequest, Segment


class LTXI2VAdapter(FlowAccess, DiffusersI2V):
    """LTX-Video image-to-video: first-frame latents are kept clean (timestep 0) inside packed tokens."""

    name = "ltx-i2v"
    display = "LTX-Video I2V"
    default_model = "Lightricks/LTX-Video"
    default_pipeline_class = "LTXImageToVideoPipeline"
    default_steps = 50
    default_guidance = 3.0
    default_fps = 24.0
    default_negative_prompt = "worst quality, inconsistent motion, blurry, jittery, distorted"
    default_max_sequence_length = 128

    def spatial_multiple(self) -> int:
        p = self.pipe
        natural = p.vae_spatial_compression_ratio * p.transformer_spatial_patch_size
        return int(np.lcm(32, natural))  # the pipeline itself refuses anything not divisible by 32

    def frame_step(self) -> int:
        return int(self.pipe.vae_temporal_compression_ratio * self.pipe.transformer_temporal_patch_size)

    def call_arguments(self, request: GenerationRequest, size: ModelSize) -> dict[str, Any]:
        kwargs = super().call_arguments(request, size)
        kwargs.setdefault("frame_rate", int(round(self.fps)))
        return kwargs

    @property
    def denoiser(self) -> torch.nn.Module:
        """The flow-matching transformer."""
        return self.pipe.transformer

    def _grid(self, size: ModelSize) -> tuple[int, int, int]:
        p = self.pipe
        return ((size.num_frames - 1) // p.vae_temporal_compression_ratio + 1,
                size.height // p.vae_spatial_compression_ratio, size.width // p.vae_spatial_compression_ratio)

    @torch.no_grad()
    def prepare(self, request: GenerationRequest, num_inference_steps: int | None = None,
                guidance_scale: float | None = None) -> FlowInputs:
        """Encode the prompt and first frame, seed the noise and set the shifted sigma schedule like the pipeline."""
        # mirrors LTXImageToVideoPipeline.__call__ (diffusers 0.42.1) steps 3-5: encode_prompt with [negative,
        # positive] concatenated under CFG, video_processor.preprocess in the embeddings' dtype, prepare_latents ->
        # packed latents + conditioning_mask, sigmas linspace(1, 1/n, n) shifted by calculate_shift(latent
        # sequence length) through retrieve_timesteps; latents are kept unpacked (B, C, F, h, w) here.
        from diffusers.pipelines.ltx.pipeline_ltx_image2video import calculate_shift, retrieve_timesteps

        pipe = self.pipe
        t0 = time.perf_counter()
        size, image, prompt, generator, device, scale = self._request_inputs(request, guidance_scale)
        cfg = scale > 1.0
        pe, pm, npe, npm = pipe.encode_prompt(prompt=prompt, negative_prompt=self.negative_prompt,
                                              do_classifier_free_guidance=cfg,
                                              max_sequence_length=self.max_sequence_length, device=device)
        if cfg:
            pe, pm = torch.cat([npe, pe], dim=0), torch.cat([npm, pm], dim=0)
        pixels = pipe.video_processor.preprocess(image, height=size.height, width=size.width).to(device, pe.dtype)
        packed, cmask = pipe.prepare_latents(pixels, 1, pipe.transformer.config.in_channels, size.height,
                                             size.width, size.num_frames, torch.float32, device, generator)
        f, h, w = self._grid(size)
        n = num_inference_steps or self.num_inference_steps
        sc = pipe.scheduler.config
        mu = calculate_shift(f * h * w, sc.get("base_image_seq_len", 256), sc.get("max_image_seq_len", 4096),
                             sc.get("base_shift", 0.5), sc.get("max_shift", 1.15))
        timesteps, _ = retrieve_timesteps(pipe.scheduler, n, device, None,
                                          sigmas=np.linspace(1.0, 1 / n, n), mu=mu)
        latents = self._unpack(packed, size)
        free_mask = torch.ones_like(latents[:, :1])
        free_mask[:, :, 0] = 0
        frame_rate = float(self.call_arguments(request, size)["frame_rate"])
        cond = {"prompt_embeds": pe, "prompt_attention_mask": pm, "conditioning_mask": cmask, "cfg": cfg,
                "prompt": prompt, "grid": (f, h, w), "frame_rate": frame_rate, "mu": mu}
        return FlowInputs(latents=latents, timesteps=timesteps.clone(), sigmas=pipe.scheduler.sigmas.clone().float(),
                          guidance_scale=scale, cond=cond, size=size, request=request,
                          generator=generator, free_mask=free_mask, timings={"prepare": time.perf_counter() - t0})

    def _pack(self, latents: torch.Tensor) -> torch.Tensor:
        p = self.pipe
        return p._pack_latents(latents, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size)

    def _unpack(self, packed: torch.Tensor, size: ModelSize) -> torch.Tensor:
        p = self.pipe
        f, h, w = self._grid(size)
        return p._unpack_latents(packed, f, h, w, p.transformer_spatial_patch_size, p.transformer_temporal_patch_size)

    def velocity(self, latents: torch.Tensor, t: torch.Tensor | float, inputs: FlowInputs) -> torch.Tensor:
        """Guided velocity on unpacked latents (B, C, F, h, w), float32; zero on the conditioning frame."""
        # mirrors the body of LTXImageToVideoPipeline.__call__'s denoising loop (diffusers 0.42.1, step 7): packed input
        # doubled under CFG, timestep * (1 - conditioning_mask), rope_interpolation_scale from frame_rate, one
        # "cond_uncond" transformer call, float32 CFG combination, unpack; the pipeline steps only latent frames
        # 1.. (frame 0 stays the image), which free_mask expresses. guidance_rescale (default 0) is not mirrored.
        pipe, c = self.pipe, inputs.cond
        model = self.denoiser
        b = latents.shape[0]
        f, h, w = c["grid"]
        x = self._pack(latents)
        reps = 2 if c["cfg"] else 1
        x = torch.cat([x] * reps) if reps > 1 else x
        if reps > 1:  # [neg]*B then [pos]*B, in the pipeline's order
            neg, pos = c["prompt_embeds"].chunk(2)
            nm, pm = c["prompt_attention_mask"].chunk(2)
            embeds = torch.cat([neg.expand(b, -1, -1), pos.expand(b, -1, -1)])
            mask = torch.cat([nm.expand(b, -1), pm.expand(b, -1)])
        else:
            embeds, mask = c["prompt_embeds"].expand(b, -1, -1), c["prompt_attention_mask"].expand(b, -1)
        cmask = c["conditioning_mask"][:1].expand(x.shape[0], -1)
        t = torch.as_tensor(t, device=x.device, dtype=torch.float32).reshape(-1).expand(b)
        timestep = torch.cat([t] * reps).unsqueeze(-1) * (1 - cmask)
        rope_scale = (pipe.vae_temporal_compression_ratio / c["frame_rate"],
                      pipe.vae_spatial_compression_ratio, pipe.vae_spatial_compression_ratio)
        with model.cache_context("cond_uncond"):
            v = self.call_denoiser(model, hidden_states=x.to(embeds.dtype), encoder_hidden_states=embeds,
                                   timestep=timestep, encoder_attention_mask=mask, num_frames=f, height=h, width=w,
                                   rope_interpolation_scale=rope_scale, return_dict=False)[0].float()
        if reps > 1:
            v_uncond, v_text = v.chunk(2)
            v = v_uncond + inputs.guidance_scale * (v_text - v_uncond)
        v = self._unpack(v, inputs.size)
        return v * inputs.free_mask

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, inputs: FlowInputs) -> torch.Tensor:
        """Clean, normalized latents of a clip at the model's size, unpacked (B, C, F, h, w) like ``prepare``'s."""
        # mirrors LTXImageToVideoPipeline.prepare_latents (diffusers 0.42.1) for the image, applied to the whole clip:
        # retrieve_latents(vae.encode(...)) (its default sample mode, with the request's generator), then
        # _normalize_latents(latents_mean, latents_std, scaling_factor)
        from diffusers.pipelines.ltx.pipeline_ltx_image2video import retrieve_latents
        from PIL import Image

        pipe, vae = self.pipe, self.pipe.vae
        dtype = inputs.cond["prompt_embeds"].dtype
        video = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
        pixels = pipe.video_processor.preprocess_video(video, height=inputs.size.height, width=inputs.size.width)
        latents = retrieve_latents(vae.encode(pixels.to(inputs.latents.device, dtype)), inputs.generator)
        latents = pipe._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        return latents.float()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, inputs: FlowInputs) -> Segment:
        """Final latents → Segment (denormalize, optional decode-timestep noise, VAE decode, restore)."""
        # mirrors LTXImageToVideoPipeline.__call__ after the loop (diffusers 0.42.1): _denormalize_latents, cast to the
        # embeddings' dtype, decode_timestep / decode_noise_scale noise when the VAE is timestep-conditioned,
        # vae.decode, video_processor.postprocess_video.
        pipe, vae = self.pipe, self.pipe.vae
        t0 = time.perf_counter()
        dtype = inputs.cond["prompt_embeds"].dtype
        latents = pipe._denormalize_latents(latents[:1], vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        latents = latents.to(dtype)
        timestep = None
        if vae.config.timestep_conditioning:
            decode_t = float(self.call_kwargs.get("decode_timestep", 0.0))
            scale = self.call_kwargs.get("decode_noise_scale")
            scale = decode_t if scale is None else float(scale)
            noise = torch.randn(latents.shape, generator=inputs.generator, device=latents.device, dtype=latents.dtype)
            timestep = torch.tensor([decode_t], device=latents.device, dtype=latents.dtype)
            latents = (1 - scale) * latents + scale * noise
        video = vae.decode(latents, timestep, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type="np")[0]
        timings = dict(inputs.timings, decode=time.perf_counter() - t0)
        return self._segment(np.asarray(video), inputs.request, inputs.size, inputs.cond["prompt"], timings)
