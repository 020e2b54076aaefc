"""Wan adapters: Wan 2.1 I2V (also Wan 2.2 A14B I2V, two experts) and Wan 2.2 TI2V-5B used as image-to-video.

Both drive diffusers' ``WanImageToVideoPipeline``. ``prepare``/``velocity``/``decode`` mirror the steps of
its ``__call__`` in diffusers 0.42.1 (the version tested; ``pyproject.toml`` bounds diffusers by it) so that the
hand-written flow sampler (``spiral/flow.py``, GRPO) gives the pipeline's video; each method names the
steps it mirrors. ``tests/test_diffusers_backends.py`` checks that hand-driven sampling equals the pipeline's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from spiral.generators.diffusers.base import DiffusersI2V, FlowAccess, FlowInputs, _execution_device
from spiral.types import GenerationRequest, Segment

_NEGATIVE = ("static frame, blurry, low quality, worst quality, jpeg artifacts, distorted objects, deformed gripper, "
             "flicker, sudden cuts, text, watermark")


class WanI2VAdapter(FlowAccess, DiffusersI2V):
    """Wan 2.1 I2V (CLIP image embeddings + channel-concatenated first-frame latents); also Wan 2.2
    A14B I2V checkpoints (two experts switched at ``boundary_ratio``)."""

    name = "wan21-i2v"
    display = "Wan 2.1 I2V"
    default_model = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
    default_pipeline_class = "WanImageToVideoPipeline"
    default_steps = 50
    default_guidance = 5.0
    default_fps = 16.0
    default_negative_prompt = _NEGATIVE
    default_max_sequence_length = 512  # the I2V attention splits image/text tokens assuming 512 text tokens
    default_vae_dtype = "float32"  # the Wan VAE loses detail in bf16; it is small (~0.5 GB) in float32
    needs_ftfy = True
    # the attention projections plus the image cross-attention's key/value (Wan 2.1 I2V; absent in TI2V, skipped):
    # without them diffusers' load_lora_weights pads a Wan I2V LoRA with zero add_k_proj/add_v_proj entries
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_k_proj", "add_v_proj"]

    @property
    def denoiser(self) -> torch.nn.Module:
        """The flow-matching transformer (the high-noise expert for two-expert checkpoints)."""
        return self.pipe.transformer if self.pipe.transformer is not None else self.pipe.transformer_2

    def _expand(self) -> bool:
        return bool(self.pipe.config.get("expand_timesteps", False))

    @torch.no_grad()
    def prepare(self, request: GenerationRequest, num_inference_steps: int | None = None,
                guidance_scale: float | None = None) -> FlowInputs:
        """Encode prompt, image and first-frame latents exactly as the pipeline does, seed the noise."""
        # mirrors WanImageToVideoPipeline.__call__ (diffusers 0.42.1) steps 3-5: encode_prompt (cast to the
        # transformer's dtype), encode_image when the transformer has image_dim (Wan 2.1), scheduler.set_timesteps,
        # video_processor.preprocess in float32, prepare_latents -> (latents, condition[, first_frame_mask]).
        # With expand_timesteps the pipeline mixes the condition into the latents inside the loop; doing it
        # here once is the same because velocity() mixes again and is zero on the fixed frame.
        pipe = self.pipe
        t0 = time.perf_counter()
        size, image, prompt, generator, device, scale = self._request_inputs(request, guidance_scale)
        cfg = scale > 1.0
        model = self.denoiser
        prompt_embeds, negative_embeds = pipe.encode_prompt(
            prompt=prompt, negative_prompt=self.negative_prompt, do_classifier_free_guidance=cfg,
            max_sequence_length=self.max_sequence_length, device=device)
        prompt_embeds = prompt_embeds.to(model.dtype)
        negative_embeds = negative_embeds.to(model.dtype) if negative_embeds is not None else None
        image_embeds = None
        if model.config.image_dim is not None:
            image_embeds = pipe.encode_image(image, device).to(model.dtype)
        pipe.scheduler.set_timesteps(num_inference_steps or self.num_inference_steps, device=device)
        pixels = pipe.video_processor.preprocess(image, height=size.height, width=size.width).to(device, torch.float32)
        out = pipe.prepare_latents(pixels, 1, pipe.vae.config.z_dim, size.height, size.width, size.num_frames,
                                   torch.float32, device, generator)
        cond: dict[str, Any] = {"prompt_embeds": prompt_embeds, "negative_prompt_embeds": negative_embeds,
                                "image_embeds": image_embeds, "prompt": prompt}
        free_mask = None
        if self._expand():
            latents, condition, first_frame_mask = out
            cond.update(condition=condition, first_frame_mask=first_frame_mask)
            latents = (1 - first_frame_mask) * condition + first_frame_mask * latents
            free_mask = first_frame_mask
        else:
            latents, condition = out
            cond["condition"] = condition
        return FlowInputs(latents=latents, timesteps=pipe.scheduler.timesteps.clone(),
                          sigmas=pipe.scheduler.sigmas.clone().to(torch.float32), guidance_scale=scale,
                          cond=cond, size=size, request=request, generator=generator, free_mask=free_mask,
                          timings={"prepare": time.perf_counter() - t0})

    def velocity(self, latents: torch.Tensor, t: torch.Tensor | float, inputs: FlowInputs) -> torch.Tensor:
        """Guided velocity v(x, t) in float32, as the pipeline computes it; differentiable (LoRA/GRPO).

        ``latents`` may hold B rollouts of the same request; conditioning is repeated to match.
        Positions fixed by conditioning (``free_mask == 0``) get zero velocity.
        """
        # mirrors the body of WanImageToVideoPipeline.__call__'s denoising loop (diffusers 0.42.1, step 6): the expert
        # switch at boundary_ratio * num_train_timesteps (transformer_2 + guidance_scale_2 below it), the
        # expand_timesteps input (condition mixed in, per-token timestep 0 on the first latent frame; the
        # pipeline hard-codes the 2x2 patch, we read it from the config), the "cond"/"uncond" cache_context
        # calls and the CFG combination; the scheduler step itself is the caller's (spiral/flow.py).
        pipe, c = self.pipe, inputs.cond
        b = latents.shape[0]
        t = torch.as_tensor(t, device=latents.device, dtype=torch.float32).reshape(-1).expand(b)
        boundary = pipe.config.get("boundary_ratio")
        low_noise = None if boundary is None else t < boundary * pipe.scheduler.config.num_train_timesteps
        if low_noise is not None and bool(low_noise.any()) != bool(low_noise.all()):
            raise ValueError("a two-expert Wan model needs all rollouts of a batch on the same side of boundary_ratio")
        if low_noise is not None and bool(low_noise.all()):
            model = pipe.transformer_2
            scale = float(self.call_kwargs.get("guidance_scale_2", inputs.guidance_scale))
        else:
            model, scale = self.denoiser, inputs.guidance_scale
        if self._expand():
            # Wan 2.2 TI2V: latent frame 0 is the image's latents, its tokens are at timestep 0
            mask = c["first_frame_mask"]
            x = ((1 - mask) * c["condition"] + mask * latents).to(model.dtype)
            p_h, p_w = model.config.patch_size[1], model.config.patch_size[2]
            per_token = mask[0][0][:, ::p_h, ::p_w].flatten()
            timestep = t[:, None] * per_token[None]
        else:
            x = torch.cat([latents, c["condition"].expand(b, -1, -1, -1, -1)], dim=1).to(model.dtype)
            timestep = t
        image = c["image_embeds"].expand(b, -1, -1) if c["image_embeds"] is not None else None

        def run(embeds: torch.Tensor, name: str) -> torch.Tensor:
            with model.cache_context(name):
                return self.call_denoiser(model, hidden_states=x, timestep=timestep,
                                          encoder_hidden_states=embeds.expand(b, -1, -1),
                                          encoder_hidden_states_image=image, return_dict=False)[0]

        v = run(c["prompt_embeds"], "cond")
        if scale > 1.0 and c["negative_prompt_embeds"] is not None:
            v_uncond = run(c["negative_prompt_embeds"], "uncond")
            v = v_uncond + scale * (v - v_uncond)
        v = v.float()
        if inputs.free_mask is not None:
            v = v * inputs.free_mask
        return v

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, inputs: FlowInputs) -> torch.Tensor:
        """Clean latents of a clip at the model's size, normalized as ``prepare_latents`` normalizes the
        condition ((x − latents_mean) / latents_std, argmax of the VAE posterior): what ``decode`` inverts."""
        # mirrors WanImageToVideoPipeline.prepare_latents (diffusers 0.42.1): video_processor.preprocess_video,
        # retrieve_latents(vae.encode(...), sample_mode="argmax"), (latents - mean) * (1 / std); here for the whole
        # clip instead of [image, zeros...]
        from diffusers.pipelines.wan.pipeline_wan_i2v import retrieve_latents

        pipe, vae = self.pipe, self.pipe.vae
        device = _execution_device(vae, pipe._execution_device)
        video = [self._pil(f) for f in frames]
        pixels = pipe.video_processor.preprocess_video(video, height=inputs.size.height, width=inputs.size.width)
        latents = retrieve_latents(vae.encode(pixels.to(device, vae.dtype)), sample_mode="argmax").float()
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        return ((latents - mean) * inv_std).to(inputs.latents.device)

    @staticmethod
    def _pil(frame: np.ndarray) -> Any:
        from PIL import Image

        return Image.fromarray(np.ascontiguousarray(frame))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, inputs: FlowInputs) -> Segment:
        """Final latents → Segment, with the same restore/frame-0 rule as ``generate``."""
        # mirrors WanImageToVideoPipeline.__call__ after the loop (diffusers 0.42.1): first-frame re-injection with
        # expand_timesteps, latents / (1 / latents_std) + latents_mean on the VAE's device and dtype,
        # vae.decode, video_processor.postprocess_video.
        pipe, vae = self.pipe, self.pipe.vae
        t0 = time.perf_counter()
        if self._expand():
            mask = inputs.cond["first_frame_mask"]
            latents = (1 - mask) * inputs.cond["condition"] + mask * latents
        latents = latents[:1].to(device=_execution_device(vae, pipe._execution_device), dtype=vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        video = pipe.video_processor.postprocess_video(video, output_type="np")[0]
        timings = dict(inputs.timings, decode=time.perf_counter() - t0)
        return self._segment(np.asarray(video), inputs.request, inputs.size, inputs.cond["prompt"], timings)


class Wan22TI2VAdapter(WanI2VAdapter):
    """Wan 2.2 TI2V-5B used as image-to-video: the first frame's latents replace latent frame 0
    (``expand_timesteps``), its tokens get timestep 0; 16x VAE x 2x2 patches → multiples of 32."""

    name = "wan22-ti2v"
    display = "Wan 2.2 TI2V"
    default_model = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
    default_fps = 24.0

    def check_pipeline(self) -> None:
        if not self.pipe.config.get("expand_timesteps", False):
            # hub folders of TI2V-5B say so in model_index.json; a folder without it is another Wan model
            raise ValueError(f"{self.model} is not a Wan 2.2 TI2V checkpoint (model_index.json has no "
                             "expand_timesteps: true); fix: use generator 'wan21-i2v' for Wan 2.1 I2V checkpoints")
