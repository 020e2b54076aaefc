"""LoRA adapters of the diffusers generators in the one format diffusers reads: ``pipeline.load_lora_weights``.

``save_lora`` writes what ``spiral train sft`` (and GRPO) trained: peft's ``get_peft_model_state_dict`` of the
transformer, saved by the pipeline class's own ``save_lora_weights`` (keys prefixed ``transformer.``, the LoRA
config — rank, alpha, targets — in the safetensors metadata, so a rank ≠ alpha adapter loads with its scale).
``load_loras`` puts one or more of them (each with a scale) into a loaded pipeline through
``load_lora_weights`` + ``set_adapters`` and refuses, in one line, a LoRA whose layers the model does not have
(one trained for another architecture): diffusers would otherwise load part of it or none with a warning.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

#: peft target modules of the transformer's attention projections (self- and cross-attention), the same for
#: every family: diffusers' Wan, CogVideoX and LTX attention blocks all name them so. Source: diffusers'
#: examples/cogvideo/train_cogvideox_image_to_video_lora.py (``target_modules=["to_k", "to_q", "to_v",
#: "to_out.0"]``) and Flow-GRPO's ``lora_target_modules``.
ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' name, what load_lora_weights looks for in a folder


class LoraSpec(BaseModel):
    """One LoRA to load into a diffusers generator."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="a folder written by `spiral train sft` / save_lora_weights, or its .safetensors file")
    scale: float = Field(1.0, description="strength of this adapter (0: off, 1: as trained)")


def save_lora(pipeline_class: type, transformer: torch.nn.Module, folder: str | Path,
              adapter_name: str = "default", state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The transformer's trained peft adapter as ``folder/pytorch_lora_weights.safetensors``, written by the
    pipeline class's ``save_lora_weights`` (atomic: a temporary folder renamed into place). ``state_dict``: the
    transformer's LoRA tensors gathered whole when the module itself holds only shards (FSDP)."""
    import shutil

    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    layers = get_peft_model_state_dict(transformer, state_dict=state_dict, adapter_name=adapter_name)
    meta = transformer.peft_config[adapter_name].to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])  # a set: not JSON
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipeline_class.save_lora_weights(tmp, transformer_lora_layers={k: v.detach().cpu().contiguous()
                                                                   for k, v in layers.items()},
                                     weight_name=WEIGHT_NAME, transformer_lora_adapter_metadata=meta)
    if folder.exists():  # replace an earlier export, never a folder with anything else in it
        extra = sorted(p.name for p in folder.iterdir() if p.name not in (WEIGHT_NAME, "spiral_sft.json"))
        if extra:
            shutil.rmtree(tmp)
            raise FileExistsError(f"{folder} holds other files ({', '.join(extra[:3])}); fix: export the LoRA to an "
                                  "empty or new folder")
        shutil.rmtree(folder)
    tmp.rename(folder)
    return folder / WEIGHT_NAME


def _weights_file(path: Path) -> Path:
    return path / WEIGHT_NAME if path.is_dir() else path


def lora_modules(path: str | Path) -> set[str]:
    """The module names a LoRA file adapts (``transformer.`` prefix and the lora_A/B suffixes removed)."""
    from safetensors import safe_open

    with safe_open(str(_weights_file(Path(path))), "pt") as f:
        keys = list(f.keys())
    out = set()
    for k in keys:
        for tag in (".lora_A.", ".lora_down."):
            if tag in k:
                out.add(k.split(tag)[0].removeprefix("transformer."))
    return out


def _adapted(model: torch.nn.Module, adapter: str) -> set[str]:
    from peft.tuners.lora import LoraLayer

    return {n for n, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


class _quiet:
    """A logger silenced for the duration."""

    def __init__(self, log: logging.Logger):
        self.log = log

    def __enter__(self) -> None:
        self.was, self.log.disabled = self.log.disabled, True

    def __exit__(self, *exc: object) -> None:
        self.log.disabled = self.was


def load_loras(pipe: Any, specs: list[LoraSpec], display: str) -> list[str]:
    """Load ``specs`` into ``pipe`` as adapters ``lora0, lora1, …`` with their scales; returns the adapter names.

    A missing file, a file diffusers cannot read, or a LoRA with layers this model does not have (trained for
    another architecture) is a ValueError of one line that names the file and the fix."""
    names = []
    fix = ("fix: use a LoRA trained for this model (spiral train sft with the same generator and model), "
           "or remove it from generator.options.lora")
    for i, spec in enumerate(specs):
        path = Path(spec.path).expanduser()
        if not _weights_file(path).is_file():
            raise FileNotFoundError(f"LoRA {path} not found (a folder needs {WEIGHT_NAME}); fix: point "
                                    "generator.options.lora[].path at a folder written by `spiral train sft`")
        try:
            wanted = lora_modules(path)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types for a damaged file
            raise ValueError(f"LoRA {path} is not a readable safetensors file ({str(e).splitlines()[0]}); {fix}") \
                from None
        name = f"lora{i}"
        model = pipe.transformer
        peft_log = logging.getLogger("diffusers.loaders.peft")  # logs the error we re-raise as one line
        with warnings.catch_warnings(), _quiet(peft_log):
            warnings.simplefilter("ignore", RuntimeWarning)  # peft's key-mismatch notice; checked below instead
            try:
                pipe.load_lora_weights(str(path), adapter_name=name)
            except Exception as e:  # noqa: BLE001 - peft/diffusers raise ValueError, RuntimeError (shapes), KeyError
                first = (str(e).strip().splitlines() or [type(e).__name__])[-1][:200]
                raise ValueError(f"LoRA {path} does not fit {display} ({first}); {fix}") from None
        got = _adapted(model, name)
        missing = sorted(wanted - got)
        if not got or missing:
            if got:
                pipe.delete_adapters(name)
            raise ValueError(f"LoRA {path} does not fit {display}: {len(missing)} of its {len(wanted)} layers are not "
                             f"in this model (e.g. {missing[0] if missing else '?'}); {fix}")
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[float(s.scale) for s in specs])
        logger.info("loaded LoRA %s", ", ".join(f"{s.path}×{s.scale:g}" for s in specs))
    return names
