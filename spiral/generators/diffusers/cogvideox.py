"""CogVideoX image-to-video adapter (diffusers' ``CogVideoXImageToVideoPipeline``): ``generate``, plus the
conditioning and the v-prediction forward that ``spiral train sft`` trains through."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spiral.generators.diffusers.base import DiffusersI2V, ModelSize, _execution_device
from spiral.types import GenerationRequest


@dataclass
class VPredInputs:
    """The conditioning of one request for a v-prediction training step (prompt, first-frame latents, RoPE)."""

    prompt_embeds: torch.Tensor
    image_latents: torch.Tensor  # (1, F, C, h, w): the image's latents, zero-padded over time
    rotary: Any
    ofs: torch.Tensor | None
    size: ModelSize
    generator: torch.Generator
    prompt: str


class CogVideoXI2VAdapter(DiffusersI2V):
    """CogVideoX I2V (v-prediction DDIM/DPM, not flow matching: no ``velocity`` access).

    CogVideoX 1.0 I2V has learned positional embeddings: it generates exactly its transformer's
    ``sample_height × sample_width`` (latent units, ×8 in pixels); the run's frames are mapped to it.
    """

    name = "cogvideox-i2v"
    display = "CogVideoX I2V"
    default_model = "THUDM/CogVideoX-5b-I2V"
    default_pipeline_class = "CogVideoXImageToVideoPipeline"
    default_steps = 50
    default_guidance = 6.0
    default_fps = 8.0
    default_negative_prompt = ""

    def frame_step(self) -> int:
        return 2 * int(self.pipe.vae_scale_factor_temporal)  # 8k+1 frames, as the model cards ask

    def spatial_multiple(self) -> int:
        return int(self.pipe.vae_scale_factor_spatial) * int(self.pipe.transformer.config.patch_size)

    def fixed_size(self) -> tuple[int, int] | None:
        cfg = self.pipe.transformer.config
        if not cfg.use_learned_positional_embeddings:
            return None
        s = int(self.pipe.vae_scale_factor_spatial)
        return cfg.sample_height * s, cfg.sample_width * s

    def _default_max_sequence_length(self) -> int | None:
        return int(self.pipe.transformer.config.max_text_seq_length)

    def call_arguments(self, request: GenerationRequest, size: ModelSize) -> dict[str, Any]:
        kwargs = super().call_arguments(request, size)
        kwargs.setdefault("use_dynamic_cfg", True)
        return kwargs

    # ------------------------------------------------------------------------------------ training

    @property
    def denoiser(self) -> torch.nn.Module:
        """The v-prediction transformer."""
        return self.pipe.transformer

    @torch.no_grad()
    def prepare_training(self, request: GenerationRequest) -> VPredInputs:
        """Prompt embeddings, first-frame latents and rotary embeddings of ``request``, as the pipeline makes them."""
        # mirrors CogVideoXImageToVideoPipeline.__call__ (diffusers 0.42.1) steps 3-7 without guidance: encode_prompt,
        # video_processor.preprocess in the embeddings' dtype, prepare_latents -> image_latents (scaled by the VAE's
        # scaling_factor, zero-padded to the latent frames), _prepare_rotary_positional_embeddings, ofs = 2.0 when
        # the transformer has an ofs embedding
        pipe = self.pipe
        if pipe.transformer.config.patch_size_t is not None:
            raise ValueError("CogVideoX 1.5 checkpoints (patch_size_t) are not supported by spiral train sft yet; "
                             "fix: fine-tune a CogVideoX 1.0 I2V checkpoint (THUDM/CogVideoX-5b-I2V)")
        size = self.model_size(request)
        image, prompt, generator = self.cond_image(request, size), self.prompt_for(request), self.make_generator(request)
        device = pipe._execution_device
        embeds, _ = pipe.encode_prompt(prompt=prompt, negative_prompt=None, do_classifier_free_guidance=False,
                                       max_sequence_length=self.max_sequence_length, device=device)
        pixels = pipe.video_processor.preprocess(image, height=size.height, width=size.width).to(device, embeds.dtype)
        latents, image_latents = pipe.prepare_latents(pixels, 1, pipe.transformer.config.in_channels // 2,
                                                      size.num_frames, size.height, size.width, embeds.dtype,
                                                      device, generator)
        rotary = (pipe._prepare_rotary_positional_embeddings(size.height, size.width, latents.size(1), device)
                  if pipe.transformer.config.use_rotary_positional_embeddings else None)
        ofs = latents.new_full((1,), 2.0) if pipe.transformer.config.ofs_embed_dim is not None else None
        return VPredInputs(prompt_embeds=embeds, image_latents=image_latents, rotary=rotary, ofs=ofs, size=size,
                           generator=generator, prompt=prompt)

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, inputs: VPredInputs) -> torch.Tensor:
        """Clean latents x0 (1, F, C, h, w) of a clip at the model's size: a VAE posterior sample × scaling_factor,
        the layout and scale the denoiser works in (``decode_latents`` divides by it)."""
        # as diffusers' examples/cogvideo/train_cogvideox_image_to_video_lora.py encodes videos:
        # vae.encode(video).latent_dist.sample() * vae.config.scaling_factor, permuted to [B, F, C, H, W]
        from diffusers.pipelines.cogvideo.pipeline_cogvideox_image2video import retrieve_latents
        from PIL import Image

        pipe, vae = self.pipe, self.pipe.vae
        video = [Image.fromarray(np.ascontiguousarray(f)) for f in frames]
        pixels = pipe.video_processor.preprocess_video(video, height=inputs.size.height, width=inputs.size.width)
        device = _execution_device(vae, pipe._execution_device)
        latents = retrieve_latents(vae.encode(pixels.to(device, vae.dtype)), inputs.generator)
        return (latents * vae.config.scaling_factor).permute(0, 2, 1, 3, 4).float()

    def v_prediction(self, noisy: torch.Tensor, timesteps: torch.Tensor, inputs: VPredInputs) -> torch.Tensor:
        """The transformer's output (v) for noisy latents (B, F, C, h, w) at integer ``timesteps``; differentiable."""
        # mirrors the transformer call of the pipeline's denoising loop: [noisy, image_latents] concatenated on the
        # channel axis, encoder_hidden_states, timestep, ofs, image_rotary_emb
        model = self.denoiser
        b = noisy.shape[0]
        x = torch.cat([noisy, inputs.image_latents.expand(b, -1, -1, -1, -1).to(noisy)], dim=2).to(model.dtype)
        out = self.call_denoiser(model, hidden_states=x, encoder_hidden_states=inputs.prompt_embeds.expand(b, -1, -1),
                                 timestep=timesteps.to(x.device), ofs=inputs.ofs, image_rotary_emb=inputs.rotary,
                                 return_dict=False)[0]
        return out.float()
