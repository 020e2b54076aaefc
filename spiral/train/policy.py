"""Flow-matching generators seen as policies for GRPO: the same few calls for the tiny model and diffusers.

A policy turns a group of rollout requests into conditioning once (:meth:`prepare`), gives the
velocity of a state at a noise level (:meth:`velocity`, differentiable in the trainable weights),
the velocity of the frozen reference (:meth:`reference_velocity`), and decodes final states to
:class:`~spiral.types.Segment`. ``spiral.flow`` does the rest, so the trainer never branches on
the backend.

* :class:`TinyPolicy` — :class:`~spiral.generators.tiny.TinyGenerator`; full fine-tuning (the
  reference is a frozen copy of the starting weights) or LoRA (the reference is the same model
  with the adapter disabled). Requests of several prompts are batched together.
* :class:`DiffusersPolicy` — a diffusers adapter with flow access (Wan 2.1/2.2, LTX): LoRA on its
  transformer, one prompt group per call (the adapters prepare one request at a time).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from spiral.types import GenerationRequest, Segment


def add_lora(model: torch.nn.Module, rank: int, alpha: float, targets: list[str]) -> None:
    """Freeze ``model`` and inject peft LoRA adapters into the named linear layers."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'spiral-video[diffusers]' (or set lora_rank: 0 "
                          "for full fine-tuning of the tiny generator)") from None
    model.requires_grad_(False)
    if hasattr(model, "add_adapter"):  # diffusers models carry peft integration
        model.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=True))
    else:
        inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets), model)


@contextlib.contextmanager
def lora_disabled(model: torch.nn.Module) -> Iterator[None]:
    """The base model: every peft LoRA layer of ``model`` bypassed for the duration."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in model.modules() if isinstance(m, LoraLayer)]
    for m in layers:
        m.enable_adapters(False)
    try:
        yield
    finally:
        for m in layers:
            m.enable_adapters(True)


@dataclass
class Batch:
    """Prepared conditioning of some rollout requests, plus what decoding needs."""

    requests: list[GenerationRequest]
    cond: Any


class TinyPolicy:
    """The tiny generator as a policy (see module docstring)."""

    batches_groups = True

    def __init__(self, weights: str | None = None, steps: int = 10, cfg_scale: float = 1.0,
                 cfg_max_sigma: float | None = None, cfg_tau: float | None = None, lora_rank: int = 0,
                 lora_alpha: float | None = None, lora_targets: list[str] | None = None, device: str = "cpu",
                 text_encoder: Any = None, model: Any = None):
        """The frozen KL reference is a copy of the start weights (full fine-tuning) or the model with the LoRA
        adapter disabled."""
        from spiral.generators.tiny import TinyGenerator

        self.gen = TinyGenerator(weights=weights, steps=steps, cfg_scale=cfg_scale, cfg_max_sigma=cfg_max_sigma,
                                 cfg_tau=cfg_tau, device=device, text_encoder=text_encoder, model=model)
        self.model = self.gen.model
        self.lora = lora_rank > 0
        if self.lora:
            add_lora(self.model, lora_rank, lora_alpha or lora_rank, lora_targets or ["qkv", "proj"])
            self.ref_model = None
        else:
            self.model.requires_grad_(True)
            self.ref_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.device = self.gen.device

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def sigmas(self) -> torch.Tensor:
        return self.gen.sigmas()

    def clip_shape(self) -> tuple[int, int]:
        """The one clip the model makes: (frame size, frames including the conditioning one)."""
        c = self.gen.config
        return c.resolution, c.num_frames + 1

    def prepare(self, requests: list[GenerationRequest]) -> Batch:
        return Batch(requests, self.gen.prepare(requests))

    def initial_noise(self, batch: Batch) -> torch.Tensor:
        return self.gen.initial_noise(batch.requests)

    def subset(self, batch: Batch, sl: slice) -> Batch:
        c = batch.cond
        return Batch(batch.requests[sl], dataclasses.replace(c, text=c.text[sl], cond=c.cond[sl], anchor=c.anchor[sl]))

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self.gen.denoiser(x, sigma, batch.cond)

    def unguided(self, batch: Batch) -> Batch:
        """The batch without classifier-free guidance: what the model itself predicts, not what guidance amplifies."""
        return Batch(batch.requests, dataclasses.replace(batch.cond, cfg_scale=1.0))

    @torch.no_grad()
    def reference_velocity(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
        if self.lora:
            with lora_disabled(self.model):
                return self.gen.denoiser(x, sigma, batch.cond)
        live, self.gen.model = self.gen.model, self.ref_model
        try:
            return self.gen.denoiser(x, sigma, batch.cond)
        finally:
            self.gen.model = live

    @torch.no_grad()
    def action_region(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch, tau: float) -> torch.Tensor:
        """(B, F, 1, H, W) bool: where the text changes the predicted frame by ≥ ``tau`` for the policy or the
        reference (``TinyGenerator.text_region``). The union, so neither what the policy has learned to move
        nor what the reference moves counts as background."""
        def region(model: Any) -> torch.Tensor:
            return self.gen.text_region(*self.gen.text_and_null_velocity(x, sigma, batch.cond, model), sigma, tau)

        live = region(self.model)
        if self.lora:
            with lora_disabled(self.model):
                return live | region(self.model)
        return live | region(self.ref_model)

    def decode(self, x0: torch.Tensor, batch: Batch) -> list[Segment]:
        import numpy as np

        from spiral.generators.tiny import tensor_to_frames

        out = []
        for r, frames in zip(batch.requests, tensor_to_frames(x0.detach())):
            video = np.concatenate([np.asarray(r.cond_frame, dtype=np.uint8)[None], frames])
            out.append(Segment(frames=video, fps=self.gen.fps, seed=r.seed, backend="tiny"))
        return out

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def export_model(self) -> torch.nn.Module:
        """The trained network with any LoRA merged into plain weights (a TinyVideoDiT again)."""
        if not self.lora:
            return self.model
        from spiral.models.tiny_video import TinyVideoDiT

        merged = TinyVideoDiT(self.model.config)
        state = {}
        sd = self.model.state_dict()
        for key, value in sd.items():
            if "lora_" in key:
                continue
            key_plain = key.replace(".base_layer", "")
            state[key_plain] = value
        for name, module in self.model.named_modules():
            if hasattr(module, "merge") and hasattr(module, "lora_A"):
                w = module.get_delta_weight("default")
                state[f"{name}.weight"] = state[f"{name}.weight"] + w
        merged.load_state_dict(state)
        return merged


class DiffusersPolicy:
    """A diffusers adapter with flow access (``prepare``/``velocity``/``decode``) as a LoRA policy."""

    batches_groups = False

    def __init__(self, adapter: Any, steps: int | None = None, lora_rank: int = 16, lora_alpha: float | None = None,
                 lora_targets: list[str] | None = None):
        if not hasattr(adapter, "velocity"):
            raise ValueError(f"{type(adapter).__name__} has no flow access (velocity/prepare): GRPO needs a "
                             f"flow-matching backend such as wan21-i2v, wan22-ti2v or ltx-i2v")
        if lora_rank < 1:
            raise ValueError("a diffusers policy is trained through LoRA: set lora_rank ≥ 1")
        self.adapter, self.steps = adapter, steps
        self.model = adapter.denoiser
        add_lora(self.model, lora_rank, lora_alpha or lora_rank, lora_targets or adapter.lora_targets)
        if hasattr(self.model, "enable_gradient_checkpointing"):  # activations of a video model: recompute them
            self.model.enable_gradient_checkpointing()
        self.device = adapter.pipe._execution_device
        self._sigmas: torch.Tensor | None = None

    def trainable(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def sigmas(self) -> torch.Tensor:
        if self._sigmas is None:
            raise RuntimeError("call prepare() first: the schedule comes from the pipeline's scheduler")
        return self._sigmas

    def prepare(self, requests: list[GenerationRequest]) -> Batch:
        first = requests[0]
        import numpy as np

        if any(r.prompt != first.prompt or not np.array_equal(r.cond_frame, first.cond_frame) for r in requests[1:]):
            raise ValueError("a diffusers policy prepares one prompt group at a time (requests differing only in seed)")
        inputs = self.adapter.prepare(first, num_inference_steps=self.steps)
        self._sigmas = inputs.sigmas.to(self.device)
        # positions that conditioning fixes (free_mask 0) get zero velocity under both the policy and the
        # reference, so their SDE noise cancels out of every ratio and KL term and decode overwrites them
        return Batch(requests, inputs)

    def initial_noise(self, batch: Batch) -> torch.Tensor:
        shape = batch.cond.latents.shape[1:]
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(r.seed)) for r in batch.requests]
        return torch.stack(noise).to(self.device, batch.cond.latents.dtype)

    def subset(self, batch: Batch, sl: slice) -> Batch:
        return Batch(batch.requests[sl], batch.cond)  # one prompt group: the conditioning is shared

    def _fn(self, batch: Batch) -> Any:
        return self.adapter.flow_fn(batch.cond)

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
        return self._fn(batch)(x, sigma[:1])

    def unguided(self, batch: Batch) -> Batch:
        """As it is: the pipeline's guidance lives in its prepared conditioning."""
        return batch

    @torch.no_grad()
    def reference_velocity(self, x: torch.Tensor, sigma: torch.Tensor, batch: Batch) -> torch.Tensor:
        with lora_disabled(self.model):
            return self._fn(batch)(x, sigma[:1])

    def decode(self, x0: torch.Tensor, batch: Batch) -> list[Segment]:
        segs = [self.adapter.decode(x0[i:i + 1], batch.cond) for i in range(len(x0))]
        return [seg.model_copy(update={"seed": r.seed}) for seg, r in zip(segs, batch.requests)]

    def train(self, mode: bool = True) -> None:
        self.model.train(mode)

    def export_model(self) -> torch.nn.Module:
        return self.model

    def export_lora(self, folder: Any) -> Any:
        """The trained LoRA in the format diffusers' ``load_lora_weights`` reads (``generator.options.lora``)."""
        from spiral.generators.diffusers.lora import save_lora

        return save_lora(type(self.adapter.pipe), self.model, folder).parent
