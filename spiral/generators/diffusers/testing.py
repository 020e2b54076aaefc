"""Random-weight diffusers image-to-video pipelines built in code, for tests and benchmarks.

Nothing can be downloaded in CI, so the diffusers generators are exercised on pipelines
whose architectures match the real models' *kinds* (same classes, same VAE compression
ratios, same conditioning paths) but with tiny widths, and whose tokenizers are built from a
word list. ``save_tiny(name, folder)`` writes one with ``save_pretrained`` so that the
backends load it by path exactly as they would load a hub checkpoint.

``build_wan21_i2v(full=True)`` builds the full-size Wan 2.1 1.3B-style I2V architecture
(random weights) for GPU timing runs; see ``benchmarks/diffusers_overhead.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spiral.generators.diffusers.base import require_diffusers

# Enough words for the tabletop prompts; anything else falls back to characters / <unk>.
_WORDS = (
    "a an the and of to in on into onto from at with it its is are be now so far done nothing yet scene "
    "put move place pick up lift carry drop open close switch turn off lamp box lid block blocks table slot "
    "left right middle top red green blue yellow purple orange white black gripper arm hand smooth smoothly "
    "static blurry low quality worst flicker distorted important then first second third"
).split()


def tiny_tokenizer() -> Any:
    """A T5 (sentencepiece-unigram) tokenizer from a word list: no download, ~100 tokens."""
    require_diffusers()
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("\u2581" + w, -1.0) for w in _WORDS]
    vocab += [(c, -5.0) for c in "abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-()"]
    vocab += [("\u2581", -3.0)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def _t5_encoder(vocab_size: int, d_model: int = 32, umt5: bool = False) -> Any:
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    kw = dict(vocab_size=vocab_size, d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8, relative_attention_max_distance=32, pad_token_id=0,
              eos_token_id=1, decoder_start_token_id=0)
    if umt5:
        return UMT5EncoderModel(UMT5Config(**kw)).eval()
    return T5EncoderModel(T5Config(**kw)).eval()


def build_wan21_i2v(full: bool = False, seed: int = 0, device: str | torch.device | None = None) -> Any:
    """Wan 2.1 I2V: UMT5 text encoder, CLIP vision image encoder, Wan VAE (8x spatial, 4x temporal),
    36-channel transformer with image cross-attention (``added_kv_proj_dim``), UniPC flow scheduler.

    ``full=True`` uses the 1.3B transformer sizes (dim 1536, 30 layers) with the 14B model's I2V
    inputs, the full Wan VAE, a ViT-H/14 image encoder and a UMT5-XXL text encoder: the sizes
    a real segment costs. ``device="cuda"`` initialises the weights on the GPU (seconds, not
    minutes); ``device="meta"`` builds without memory, to count parameters.
    """
    require_diffusers()
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0)
    with torch.device(device or "cpu"):
        text_encoder, image_encoder, image_processor, vae, transformer = _wan21_modules(full, len(tokenizer))
    return WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   image_processor=image_processor, image_encoder=image_encoder,
                                   transformer=transformer)


def _wan21_modules(full: bool, vocab_size: int) -> tuple:
    from diffusers import AutoencoderKLWan, WanTransformer3DModel
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    if full:
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
            feed_forward_proj="gated-gelu", relative_attention_num_buckets=32, relative_attention_max_distance=128,
            pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
            image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")).eval()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        vae = AutoencoderKLWan()  # the full Wan 2.1 VAE configuration is diffusers' default
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=36, out_channels=16,
            text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=1280, added_kv_proj_dim=1536, rope_max_seq_len=1024)
    else:
        text_encoder = _t5_encoder(vocab_size, umt5=True)
        image_encoder = CLIPVisionModel(CLIPVisionConfig(
            hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8, projection_dim=8)).eval()
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        vae = AutoencoderKLWan(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True])
        transformer = WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads", image_dim=8, added_kv_proj_dim=24, rope_max_seq_len=32)
    return text_encoder, image_encoder, image_processor, vae, transformer


def build_wan22_ti2v(seed: int = 0) -> Any:
    """Wan 2.2 TI2V-5B layout: a ``WanPipeline`` with ``expand_timesteps`` (as on the hub), 48-channel
    residual VAE with 16x spatial compression, no image encoder; loaded as image-to-video by the backend."""
    require_diffusers()
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    vae = AutoencoderKLWan(base_dim=3, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
                           latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           scale_factor_spatial=16, scale_factor_temporal=4, temperal_downsample=[False, True, True])
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=256, ffn_dim=32, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0)
    return WanPipeline(tokenizer=tokenizer, text_encoder=_t5_encoder(len(tokenizer), umt5=True), vae=vae,
                       scheduler=scheduler, transformer=transformer, expand_timesteps=True)


def build_cogvideox_i2v(height: int = 32, width: int = 32, seed: int = 0) -> Any:
    """CogVideoX-5B-I2V layout: learned positional embeddings fix the size to ``sample_height/width``
    (latent units: pixels / 8), 226 text tokens, v-prediction DDIM scheduler."""
    require_diffusers()
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=2,
        text_embed_dim=32, num_layers=1, sample_width=width // 8, sample_height=height // 8, sample_frames=9,
        patch_size=2, temporal_compression_ratio=4, max_text_seq_length=226,
        use_rotary_positional_embeddings=True, use_learned_positional_embeddings=True)
    blocks = ("CogVideoXDownBlock3D",) * 4
    vae = AutoencoderKLCogVideoX(in_channels=3, out_channels=3, down_block_types=blocks,
                                 up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8),
                                 latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True, snr_shift_scale=1.0, clip_sample=False,
                                       set_alpha_to_one=True, beta_schedule="scaled_linear")
    return CogVideoXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=_t5_encoder(len(tokenizer)), vae=vae,
                                         transformer=transformer, scheduler=scheduler)


def build_ltx_i2v(seed: int = 0) -> Any:
    """LTX-Video layout: VAE with 32x spatial and 8x temporal compression (patch 4 + three scalings),
    patch-1 transformer over packed latents, flow-matching Euler scheduler with resolution-dependent shift."""
    require_diffusers()
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXImageToVideoPipeline,
        LTXVideoTransformer3DModel,
    )

    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    transformer = LTXVideoTransformer3DModel(in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                                             num_attention_heads=4, attention_head_dim=8, cross_attention_dim=32,
                                             num_layers=1, caption_channels=32)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
                                                base_image_seq_len=1024, max_image_seq_len=4096)
    return LTXImageToVideoPipeline(tokenizer=tokenizer, text_encoder=_t5_encoder(len(tokenizer)), vae=vae,
                                   transformer=transformer, scheduler=scheduler)


TINY_BUILDERS: dict[str, Callable[[], Any]] = {
    "wan21-i2v": build_wan21_i2v,
    "wan22-ti2v": build_wan22_ti2v,
    "cogvideox-i2v": build_cogvideox_i2v,
    "ltx-i2v": build_ltx_i2v,
}


def save_tiny(name: str, folder: str | Path) -> Path:
    """Build the tiny pipeline for backend ``name`` and ``save_pretrained`` it into ``folder``."""
    if name not in TINY_BUILDERS:
        raise ValueError(f"no tiny pipeline for {name!r}; known: {', '.join(TINY_BUILDERS)}")
    folder = Path(folder)
    TINY_BUILDERS[name]().save_pretrained(folder)
    return folder
