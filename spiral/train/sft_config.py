"""``SFTConfig``: every setting of a task-specific fine-tuning run (``spiral train sft``), with the source of
each default.

Sources: "diffusers cogvideox" is diffusers' ``examples/cogvideo/train_cogvideox_image_to_video_lora.py`` (the
published LoRA recipe of a video model in diffusers); "diffusers sd3" is
``examples/dreambooth/train_dreambooth_lora_sd3.py`` (where diffusers' flow-matching timestep sampling,
``training_utils.compute_density_for_timestep_sampling``, is used). Defaults marked "ours" have no published
counterpart. A YAML file (``configs/train/sft-*.yaml``) holds any subset of the fields; ``--set key=value``
overrides reach nested values (``--set generator.options.dtype=bfloat16``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spiral.config import BackendConfig

#: generators ``spiral train sft`` can fine-tune, and the objective each is trained with
OBJECTIVES = {"wan21-i2v": "flow_matching", "wan22-ti2v": "flow_matching", "ltx-i2v": "flow_matching",
              "cogvideox-i2v": "v_prediction"}
# what may change between a run and its resume: where and how long it runs, how often it reports
RUNTIME_FIELDS = {"out", "steps", "ckpt_every", "log_every", "sample_every", "sample_steps", "tensorboard"}


class SFTConfig(BaseModel):
    """Everything one fine-tuning run depends on; saved as ``config.json`` in the run folder."""

    model_config = ConfigDict(extra="forbid")

    # ---- run
    out: str = Field("runs/sft", description="run folder: config.json, log.jsonl, checkpoint/, samples/, lora/ "
                                             "(or pipeline/ after full fine-tuning), tb/")
    seed: int = Field(0, description="every random draw (data order, noise, timesteps) is a function of (seed, rank)")
    steps: int = Field(1000, ge=1, description="optimizer steps; ours")

    # ---- data
    data: str = Field(description="an ActVideoGen-Dataset folder (manifest.jsonl + videos/; `spiral data check` "
                                  "passes it)")
    split: str | None = Field("train", description="episodes of this split (None: all)")
    labels: list[str] = Field(default_factory=lambda: ["success"],
                              description="steps with these labels are trained on (failure clips are not targets)")
    condition: Literal["first_frame", "previous_last"] = Field(
        "first_frame", description="the conditioning frame: the step's own first frame, or the previous step's last "
                                   "frame (how the loop conditions a step on the accepted one before it; a first "
                                   "step uses its own first frame)")

    # ---- model
    generator: BackendConfig = Field(description="the generator to fine-tune, as in a run config: {name, options}; "
                                                 f"name one of {', '.join(OBJECTIVES)}; options as `spiral run` takes "
                                                 "them (model, dtype, device, prompt_source, prompt_template, ...)")
    height: int = Field(480, ge=8, description="training frame height (the run's video.height); snapped to the "
                                               "model's valid sizes exactly as `spiral run` snaps it")
    width: int = Field(832, ge=8, description="training frame width (the run's video.width)")
    num_frames: int = Field(33, ge=2, description="frames per training clip (the run's video.frames_per_step); a "
                                                  "step's frames are sampled evenly over its annotated range")

    # ---- what is trained
    mode: Literal["lora", "full"] = Field("lora", description="lora: peft LoRA on the transformer's attention "
                                                              "projections; full: every transformer weight")
    lora_rank: int = Field(64, ge=1, description="LoRA rank; diffusers cogvideox: 128 (smaller files here)")
    lora_alpha: float | None = Field(None, description="LoRA alpha (None: the rank, as diffusers cogvideox)")
    lora_targets: list[str] | None = Field(None, description="peft target modules (None: the family's: to_q, to_k, "
                                                             "to_v, to_out.0 as diffusers cogvideox; Wan adds the "
                                                             "image cross-attention's add_k_proj, add_v_proj)")
    trainable_dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the trained parameters (diffusers' cast_training_params upcasts LoRA "
                               "weights to float32 when the model runs in bf16)")
    gradient_checkpointing: bool = Field(True, description="transformer.enable_gradient_checkpointing(): recompute "
                                                           "block activations in backward (less memory, one more "
                                                           "forward per step)")

    # ---- objective
    timestep_sampling: Literal["logit_normal", "uniform", "mode"] = Field(
        "logit_normal", description="flow matching: density of u in compute_density_for_timestep_sampling, then the "
                                    "scheduler's shift; diffusers sd3 (weighting_scheme)")
    logit_mean: float = Field(0.0, description="logit_normal mean; diffusers sd3")
    logit_std: float = Field(1.0, description="logit_normal std; diffusers sd3")
    mode_scale: float = Field(1.29, description="scale of the 'mode' density; diffusers sd3")

    # ---- optimisation
    batch_size: int = Field(1, ge=1, description="examples per optimizer step per rank, run one at a time and "
                                                 "their gradients accumulated (the adapters condition one request "
                                                 "per call); diffusers cogvideox: 4 per device")
    lr: float = Field(1e-4, gt=0, description="AdamW learning rate; diffusers cogvideox: 1e-4 (LoRA)")
    betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas; diffusers cogvideox")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay; diffusers cogvideox")
    eps: float = Field(1e-8, gt=0, description="AdamW epsilon; diffusers cogvideox")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm; diffusers cogvideox")
    warmup_steps: int = Field(0, ge=0, description="linear learning-rate warm-up, then constant; diffusers "
                                                   "cogvideox: constant")
    ema_decay: float | None = Field(None, description="EMA of the trained weights with this decay, exported instead "
                                                      "of the live weights (None: off)")
    mixed_precision: Literal["no", "bf16"] = Field(
        "no", description="bf16: the transformer's forward and backward run under bfloat16 autocast (accelerate's "
                          "mixed precision; weights keep their dtype, outputs come back in float32), ~half the "
                          "activation memory; generator.options.dtype: bfloat16 instead stores the whole model in bf16")
    distributed: Literal["ddp", "fsdp"] = Field(
        "ddp", description="with several processes (torchrun / accelerate launch): ddp keeps a whole transformer per "
                           "GPU and averages gradients (accelerate's DistributedDataParallel); fsdp shards the "
                           "transformer's blocks, gradients and optimizer state over the processes (accelerate's "
                           "FSDP2 plugin, torch fully_shard): for a model that does not fit one GPU with its "
                           "optimizer. One process: no effect")
    cache_latents: bool = Field(False, description="keep each example's latents and text/image conditioning after "
                                                   "the first encode (memory for speed; the encoders are frozen)")

    # ---- logging, checkpoints, samples
    log_every: int = Field(1, ge=1, description="a log.jsonl record every N steps")
    ckpt_every: int = Field(100, ge=1, description="checkpoint (weights, optimizer, random states) every N steps")
    sample_every: int = Field(0, ge=0, description="a validation video in samples/ every N steps (0: off)")
    sample_steps: int = Field(20, ge=1, description="denoising steps of a validation sample")
    tensorboard: bool = Field(True, description="TensorBoard scalars in tb/ when tensorboard is installed")

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v: Any) -> Any:
        return "no" if v is False else v  # YAML reads an unquoted `no` as false

    @model_validator(mode="after")
    def _check(self) -> SFTConfig:
        if self.generator.name not in OBJECTIVES:
            raise ValueError(f"generator {self.generator.name!r} cannot be fine-tuned by spiral train sft; fix: use "
                             f"one of {', '.join(OBJECTIVES)}")
        from spiral import registry
        from spiral.config import _plain

        self.generator.options = _plain(registry.check_options("generator", self.generator.name,
                                                               self.generator.options))
        if self.distributed == "fsdp" and self.mode == "full":
            raise ValueError("distributed: fsdp trains LoRA only (the full export would need the sharded transformer "
                             "gathered into one process); fix: mode: lora, or distributed: ddp")
        if self.ema_decay is not None and not 0 <= self.ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        return self

    @property
    def objective(self) -> str:
        """flow_matching or v_prediction: the backbone's own training objective."""
        return OBJECTIVES[self.generator.name]

    def identity(self) -> str:
        """Hash of what makes two runs the same run (not how long or where they go on)."""
        keep = self.model_dump(mode="json", exclude=RUNTIME_FIELDS)
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_config(path: str | Path | None, overrides: list[str] | None = None, **fields: Any) -> SFTConfig:
    """An SFT config from YAML (``extends: FILE`` allowed), then ``key=value`` overrides (dotted keys reach nested
    values), then keyword ``fields`` (None leaves a key alone). Unknown keys are errors that name the key."""
    from spiral.config import load_yaml_model

    return load_yaml_model(SFTConfig, path, overrides, what="SFT config", **fields)
