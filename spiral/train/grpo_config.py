"""``GRPOConfig``: every setting of a self-evolution run (``spiral train grpo``), with where its default comes from.

Flat fields, grouped like TRL's trainer configs: each field carries its group (``GROUPS``) and a description that
names the source of its default where there is one. "Flow-GRPO" is the reference implementation of Liu et al.,
*Flow-GRPO: Training Flow Matching Models via Online RL* (2025): ``config/base.py`` and the ``general_ocr_*``
recipes of ``config/grpo.py`` in github.com/yifan123/flow_grpo. Defaults marked "ours" were chosen for a 2-core
CPU and the tiny generator; ``docs/self_evolution.md`` (Findings) has the measurements behind them.

A YAML file holds any subset of the fields (``configs/train/grpo-*.yaml``); :func:`load_config` reads it through
:func:`spiral.config.load_yaml_model`, the parser every trainer config shares, and ``--set key=value`` overrides
reach nested values (``--set reward_weights.action=2``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from spiral.config import BackendConfig
from spiral.types import SCORES

GROUPS = ("run", "policy", "sampling", "prompts", "reward", "objective", "kl", "optimisation", "curriculum",
          "logging")
# what may change between a run and its resume: where and how long it runs, how often it reports
RUNTIME_FIELDS = {"out", "steps", "device", "text_table", "log_every", "sample_every", "eval_every", "ckpt_every",
                  "eval_prompts", "keep_ema"}
# options removed with the experiments that measured them (docs/self_evolution.md, Findings), and the value that
# meant "off": a saved config.json of an older run that left them off still resumes
RETIRED = {"white_noise": 1.0, "coarse_noise": 0.0, "coarse_patch": 8, "action_decades": None, "noise_penalty": 0.0,
           "artifact_penalty": 0.0, "pg_region": "frame", "reference_weights": None}
RETIRED_IN = "commit 15e7b3b, the last that had them (git checkout 15e7b3b)"
# fields added since runs were first saved: left at their default they stay out of identity(), so an older run's
# config.json still names the same run
ADDED = ("prompts",)


def _field(default: Any = ..., *, group: str, description: str, **kw: Any) -> Any:
    """A pydantic field with its description and its group (``GROUPS``) in the JSON schema."""
    assert group in GROUPS, group
    return Field(default, description=description, json_schema_extra={"group": group}, **kw)


class Stage(BaseModel):
    """One curriculum stage; the next starts at ``until_step`` or once the mean reward of the last
    ``reward_window`` steps reaches ``until_reward`` (whichever is set and comes first)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="label of the stage in logs and TensorBoard tags")
    kind: Literal["single", "continuation", "plan"] = Field(
        description="single: one sub-action from a render of the true state before it; continuation / plan: step "
                    "k ≥ 1 of a plan, conditioned on the policy's own chained outputs for steps 0..k−1")
    min_steps: int = Field(1, description="shortest plan of the sampled tasks")
    max_steps: int = Field(4, description="longest plan of the sampled tasks")
    until_step: int | None = Field(None, description="the next stage starts at this GRPO step")
    until_reward: float | None = Field(None, description="the next stage starts once the mean reward of the last "
                                                         "reward_window steps reaches this")
    reward_window: int = Field(5, description="steps averaged for until_reward")


class PromptSource(BaseModel):
    """Where GRPO's tasks come from: the tabletop task sampler, or the goals and first frames of an imported
    ActVideoGen-Dataset or of a bench suite (any world; the PlanAgent turns goal + first frame into sub-actions)."""

    model_config = ConfigDict(extra="forbid")
    source: Literal["tabletop", "dataset", "suite"] = Field(
        "tabletop", description="tabletop: sampled tabletop tasks (rendered states); dataset: the episodes of an "
                                "ActVideoGen-Dataset folder (`spiral data import` output); suite: the cases of a "
                                "bench suite (a shipped name or a .json file)")
    path: str | None = Field(None, description="dataset: the dataset folder; suite: the suite's name or file")
    split: str | None = Field(None, description="dataset: only the episodes of this split (default: every one)")
    limit: int | None = Field(None, ge=1, description="only the first N episodes / cases")
    plan: Literal["planner", "annotations"] = Field(
        "planner", description="dataset: planner: the PlanAgent plans from the episode's goal and first frame, and "
                               "sub-action k is conditioned on the first frame of annotated step k (plan steps "
                               "beyond the annotated ones are not drawn for single stages); annotations: the "
                               "annotated steps are the sub-actions (no planner call)")
    size: tuple[int, int] | None = Field(
        None, description="dataset / suite: (height, width) of the conditioning frames and the clips the critic "
                          "judges (default: diffusers_options height/width when both are set, else 64x64); frames "
                          "are center-cropped to its aspect, then resized")

    @model_validator(mode="after")
    def _check(self) -> PromptSource:
        if self.source == "tabletop":
            given = [k for k in ("path", "split", "limit", "size") if getattr(self, k) is not None]
            if given or self.plan != "planner":
                raise ValueError(f"prompts {given or ['plan']} apply to source dataset or suite, not tabletop")
        elif not self.path:
            raise ValueError(f"prompts source {self.source} needs path (the "
                             f"{'dataset folder' if self.source == 'dataset' else 'suite name or .json file'})")
        if self.source == "suite" and (self.plan != "planner" or self.split is not None):
            raise ValueError("prompts plan: annotations and split apply to source dataset (a suite's cases are "
                             "planned by the planner)")
        if self.size is not None and min(self.size) < 8:
            raise ValueError(f"prompts size {self.size} must be (height, width) of at least 8 pixels each")
        return self


def _default_stages() -> list[Stage]:
    return [Stage(name="single", kind="single", min_steps=1, max_steps=8, until_step=20),
            Stage(name="continuation", kind="continuation", min_steps=2, max_steps=5, until_step=45),
            Stage(name="plan", kind="plan", min_steps=6, max_steps=8)]


class GRPOConfig(BaseModel):
    """Everything one self-evolution run depends on; saved as ``config.json`` in the run folder."""

    model_config = ConfigDict(extra="forbid")

    # ---- run
    out: str = _field("runs/grpo", group="run", description="run folder: config.json, log.jsonl, checkpoint/, tb/, "
                                                            "samples/, evolved.safetensors (a diffusers LoRA: "
                                                            "evolved/, in load_lora_weights format)")
    seed: int = _field(0, group="run", description="every random draw is a function of (seed, rank, step)")
    steps: int = _field(60, group="run", description="GRPO steps (one batch of rollouts and its update each); ours")
    device: str = _field("cpu", group="run", description="cpu or cuda; under torchrun each rank takes its own")

    # ---- policy
    generator: Literal["tiny", "diffusers"] = _field(
        "tiny", group="policy", description="tiny: the embedded TinyVideoDiT; diffusers: a diffusers adapter with "
                                            "flow access (diffusers_backend), trained through LoRA")
    weights: str | None = _field(None, group="policy", description="tiny: the start weights (default: the shipped "
                                                                   "tiny.safetensors); also the frozen KL reference")
    diffusers_backend: str = _field("wan21-i2v", group="policy", description="diffusers: the generator registry name")
    diffusers_model: str | None = _field(None, group="policy", description="diffusers: model id or local folder")
    diffusers_options: dict[str, Any] = _field(
        {}, group="policy",
        description="diffusers: more generator options, as a run config's generator.options (dtype, height, width, "
                    "num_frames for the model's size, prompt_source, lora to start from, ...); model, device, "
                    "num_inference_steps and guidance_scale come from the fields above")
    lora_rank: int = _field(0, group="policy", description="0: full fine-tuning (tiny only); > 0: peft LoRA of this "
                                                           "rank (a diffusers policy defaults to 16)")
    lora_alpha: float | None = _field(None, group="policy", description="LoRA alpha (default: the rank)")
    lora_targets: list[str] | None = _field(
        None, group="policy", description="LoRA target modules (default tiny: qkv, proj; diffusers: to_q, to_k, to_v, "
                                          "to_out.0, as Flow-GRPO's lora_target_modules)")
    text_table: str | None = _field(None, group="policy", description="precomputed text embeddings "
                                                                      "(spiral.models.text.TableEncoder) for a machine "
                                                                      "without the text encoder's weights")

    # ---- sampling (rollouts)
    sample_steps: int = _field(10, group="sampling", description="denoising steps per rollout; Flow-GRPO samples "
                                                                 "with 10 while training (config/grpo.py)")
    noise_level: float = _field(0.7, group="sampling", description="a in the SDE's σ̃ = a·√(σ/(1−σ)); Flow-GRPO "
                                                                   "config/base.py sample.noise_level")
    sde_window: tuple[int, int] | None = _field(
        None, group="sampling", description="SDE only on steps [start, end), ODE elsewhere (None: every step); "
                                            "Flow-GRPO's sde_window, MixGRPO")
    cfg_scale: float = _field(1.0, group="sampling", description="classifier-free guidance of the rollouts (1: off); "
                                                                 "exported tiny weights keep it as their sampler")
    cfg_max_sigma: float | None = _field(None, group="sampling",
                                         description="tiny only: guidance only on the steps with σ ≤ this")
    cfg_tau: float | None = _field(None, group="sampling", description="tiny only: guidance only near pixels where "
                                                                       "the text changes the predicted frame by ≥ this")
    prompts_per_step: int = _field(8, group="sampling", description="prompts per step per rank; ours (2-core CPU)")
    group_size: int = _field(8, group="sampling", description="G rollouts per prompt, compared with each other; ours")

    # ---- prompts
    heldout_moves: Literal["exclude", "include", "only", "half"] = _field(
        "exclude", group="prompts",
        description="spiral.world.splits.HELDOUT_MOVES, never in the base model's supervised data: exclude keeps the "
                    "compositional-generalisation eval zero-shot; only trains on them; half alternates them with the "
                    "rest, so learning one does not make the model forget the other")
    focus_moves: list[tuple[str, str]] | None = _field(
        None, group="prompts", description="the held-out side (only, half of half) draws only these (block, "
                                           "destination) moves; gold evaluation keeps every held-out move")
    planner: str | BackendConfig = _field(
        "symbolic", group="prompts", description="the PlanAgent that plans the tasks: a registry name, or {name, "
                                                 "options} as in a run config (e.g. {name: llm, options: {base_url: "
                                                 "..., model: ...}}); options are checked when the config loads")
    prompts: PromptSource = _field(default_factory=PromptSource, group="prompts",
                                   description="where the tasks come from (tabletop sampler, a dataset or a suite)")

    # ---- reward
    critic: str | BackendConfig = _field(
        "tabletop", group="reward", description="the CriticAgent whose verdict scores are rewards: a registry name, or "
                                                "{name, options} as in a run config (e.g. {name: vlm, options: "
                                                "{base_url: ..., model: ...}}); only judge() is needed")
    reward_weights: dict[str, float] = _field(
        default_factory=lambda: {k: 1.0 for k in SCORES}, group="reward",
        description="weight of each critic score in the reward (a weighted mean; spiral.types.combine_scores)")

    # ---- objective (advantages and the clipped ratio)
    global_std: bool = _field(True, group="objective", description="normalise advantages by the std of the whole "
                                                                   "batch, not each group's; Flow-GRPO config/base.py")
    adv_clip: float = _field(5.0, group="objective", description="advantages clamped to ±this; Flow-GRPO "
                                                                 "config/base.py train.adv_clip_max")
    min_group_std: float = _field(
        0.0, ge=0, group="objective",
        description="groups whose reward std is below this get zero advantage, and a step where every group is that "
                    "quiet makes no update (DAPO's dynamic sampling, as a filter): normalisation would turn reward "
                    "noise into full-size advantages; 0 keeps every group")
    clip_range: float = _field(1e-4, group="objective", description="PPO clip of the ratio (log-probs are per-"
                                                                    "dimension means, so ratios stay near 1); "
                                                                    "Flow-GRPO config/base.py train.clip_range")
    timestep_fraction: float = _field(1.0, group="objective", description="share of the SDE steps trained on per "
                                                                          "step; Flow-GRPO config/base.py")

    # ---- KL to the frozen reference
    beta: float = _field(0.04, group="kl", description="weight of the KL to the reference on the SDE steps (the KL of "
                                                       "two Gaussian transitions); the Flow-GRPO paper's GenEval/OCR "
                                                       "runs (config/grpo.py)")
    beta_ode: float = _field(0.0, ge=0, group="kl",
                             description="KL weight on the deterministic (ODE) steps, which exploration never reaches "
                                         "and which paint the background; 0 is Flow-GRPO's objective")
    anchor_region: Literal["frame", "background"] = _field(
        "frame", group="kl", description="tiny only: background counts the beta_ode KL only outside the pixels where "
                                         "the text changes the predicted frame by ≥ anchor_tau, so the moved object "
                                         "stays free to learn; frame: every pixel")
    anchor_tau: float = _field(0.05, gt=0, group="kl", description="the text-change threshold of anchor_region "
                                                                   "(in [−1, 1] pixel units); ours")

    # ---- optimisation
    lr: float = _field(3e-4, group="optimisation", description="AdamW learning rate; Flow-GRPO config/base.py "
                                                               "train.learning_rate (LoRA)")
    weight_decay: float = _field(1e-4, group="optimisation", description="AdamW weight decay; Flow-GRPO "
                                                                         "config/base.py train.adam_weight_decay")
    minibatches: int = _field(2, group="optimisation", description="slices of each step's rollouts; the first is "
                                                                   "on-policy, later ones are clipped")
    grad_accum: int = _field(1, group="optimisation", description="minibatches whose gradients add up before one "
                                                                  "optimizer step")
    grad_clip: float = _field(1.0, group="optimisation", description="gradient norm clip (0: none); Flow-GRPO "
                                                                     "config/base.py train.max_grad_norm")
    ema: float = _field(0.9, group="optimisation", description="EMA decay of the trained weights per optimizer step, "
                                                               "exported and evaluated (0: none); Flow-GRPO's "
                                                               "training scripts (EMAModuleWrapper decay 0.9)")

    # ---- curriculum
    stages: list[Stage] = _field(default_factory=_default_stages, group="curriculum",
                                 description="the curriculum: which sub-action of which plan becomes a prompt")

    # ---- logging and checkpoints
    log_every: int = _field(1, ge=1, group="logging", description="a progress line every N steps (log.jsonl and "
                                                                  "TensorBoard get every step)")
    sample_every: int = _field(10, group="logging", description="a PNG of the first prompt's rollouts every N steps "
                                                                "(0: none)")
    eval_every: int = _field(10, group="logging", description="gold evaluation (fixed ODE prompts, critic and the "
                                                              "benchmark's judge) every N steps (0: none)")
    eval_prompts: int = _field(32, group="logging", description="prompts of the gold evaluation")
    ckpt_every: int = _field(10, group="logging", description="checkpoint every N steps (and at the end)")
    keep_ema: bool = _field(False, group="logging", description="also keep each checkpoint's EMA "
                                                                "(checkpoint/ema_00010.safetensors, ...) to judge "
                                                                "them afterwards (benchmarks/grpo_moves.py)")

    @field_validator("group_size")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"group_size must be ≥ 2 (GRPO compares rollouts of one prompt), got {v}")
        return v

    @field_validator("reward_weights")
    @classmethod
    def _weights(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(SCORES))
        if unknown:
            raise ValueError(f"reward_weights names unknown scores {unknown}; the critic's scores are {list(SCORES)}")
        if sum(v.values()) <= 0:
            raise ValueError("reward_weights must have a positive sum")
        return v

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if not 0 < self.timestep_fraction <= 1:
            raise ValueError(f"timestep_fraction must be in (0, 1], got {self.timestep_fraction}")
        if self.noise_level <= 0:
            raise ValueError("noise_level must be > 0: GRPO needs stochastic (SDE) steps")
        if self.sde_window is not None and not 0 <= self.sde_window[0] < self.sde_window[1] <= self.sample_steps:
            raise ValueError(f"sde_window {self.sde_window} must satisfy 0 ≤ start < end ≤ sample_steps")
        if not self.stages:
            raise ValueError("stages must name at least one curriculum stage")
        if self.minibatches < 1 or self.grad_accum < 1 or self.minibatches % self.grad_accum:
            raise ValueError(f"minibatches ({self.minibatches}) must be a positive multiple of grad_accum "
                             f"({self.grad_accum})")
        if self.cfg_max_sigma is not None and (self.generator != "tiny" or not 0 < self.cfg_max_sigma <= 1):
            raise ValueError(f"cfg_max_sigma (guidance on the late steps only) must be in (0, 1] and is a tiny-generator "
                             f"option; got {self.cfg_max_sigma} with generator {self.generator}")
        if self.cfg_tau is not None and (self.generator != "tiny" or self.cfg_tau <= 0):
            raise ValueError(f"cfg_tau (per-pixel guidance) must be > 0 and is a tiny-generator option; got "
                             f"{self.cfg_tau} with generator {self.generator}")
        if self.anchor_region == "background" and (self.generator != "tiny" or self.beta_ode <= 0):
            raise ValueError(f"anchor_region: background needs beta_ode > 0 (the anchor it restricts) and the tiny "
                             f"generator; got beta_ode {self.beta_ode} with generator {self.generator}")
        if self.focus_moves is not None:
            from spiral.world.splits import HELDOUT_MOVES

            bad = [m for m in self.focus_moves if tuple(m) not in HELDOUT_MOVES]
            if bad or not self.focus_moves or self.heldout_moves not in ("only", "half"):
                raise ValueError(f"focus_moves must be a non-empty list of held-out moves {list(HELDOUT_MOVES)} with "
                                 f"heldout_moves only or half; got {self.focus_moves} with {self.heldout_moves}")
        for kind in ("planner", "critic"):
            name, options = self.backend(kind)
            from spiral import registry
            from spiral.config import _plain

            checked = _plain(registry.check_options(kind, name, options))  # unknown names/options: one line
            if isinstance(getattr(self, kind), BackendConfig):
                getattr(self, kind).options = checked
        if self.prompts.source != "tabletop" and (self.heldout_moves != "exclude" or self.focus_moves is not None):
            raise ValueError("heldout_moves / focus_moves are tabletop splits; leave them out with prompts source "
                             f"{self.prompts.source}")
        if self.generator == "diffusers" and not self.diffusers_model:
            raise ValueError("generator: diffusers needs diffusers_model (a model id or a local folder)")
        if self.diffusers_options:
            owned = sorted({"model", "device", "num_inference_steps", "guidance_scale"} & set(self.diffusers_options))
            if owned:
                raise ValueError(f"diffusers_options {owned} are set by diffusers_model / device / sample_steps / "
                                 "cfg_scale; give them there")
            from spiral import registry
            from spiral.config import _plain

            self.diffusers_options = _plain(registry.check_options("generator", self.diffusers_backend,
                                                                   self.diffusers_options))
        return self

    def backend(self, kind: Literal["planner", "critic"]) -> tuple[str, dict[str, Any]]:
        """(registry name, options) of the planner or the critic, given as a name or as {name, options}."""
        spec = getattr(self, kind)
        return (spec, {}) if isinstance(spec, str) else (spec.name, dict(spec.options))

    @property
    def tabletop(self) -> bool:
        """Whether the tasks are tabletop tasks (the gold evaluation, held-out moves and state reading apply)."""
        return self.prompts.source == "tabletop"

    def identity(self) -> str:
        """Hash of what makes two runs the same run (not how long or where they go on)."""
        keep = self.model_dump(exclude=RUNTIME_FIELDS)
        for k in ADDED:
            if getattr(self, k) == type(self).model_fields[k].get_default(call_default_factory=True):
                keep.pop(k)
        return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16]

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> GRPOConfig:
        """The config of a run folder's ``config.json``, written by this or an older version: options retired since
        are dropped when they were off, and named when the run used them (it resumes only with the code it had)."""
        used = {k: data[k] for k in RETIRED if k in data and data[k] != RETIRED[k]}
        if used:
            raise ValueError(f"this run used options that were removed since: {used}; resume it with {RETIRED_IN}")
        return cls(**{k: v for k, v in data.items() if k not in RETIRED})


def load_config(path: str | Path, overrides: list[str] | None = None, **fields: Any) -> GRPOConfig:
    """A GRPO config from YAML (or JSON), then ``key=value`` overrides (nested keys with dots), then ``fields``
    (keyword values; None leaves a key alone). Unknown keys are errors that name the key. ``extends: FILE``
    (relative to the config) starts from another config, so a second stage of training names only what changes."""
    from spiral.config import load_yaml_model

    return load_yaml_model(GRPOConfig, path, overrides, what="GRPO config", **fields)
