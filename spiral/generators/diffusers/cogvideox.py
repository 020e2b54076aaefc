"""CogVideoX image-to-video adapter (diffusers' ``CogVideoXImageToVideoPipeline``): ``generate`` only."""

from __future__ import annotations

from typing import Any

from spiral.generators.diffusers.base import DiffusersI2V, ModelSize
from spiral.types import GenerationRequest


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
