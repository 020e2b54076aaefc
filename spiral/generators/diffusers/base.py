"""What every diffusers image-to-video adapter shares (extra ``spiral-video[diffusers]``): loading, the
options every model family takes (:class:`DiffusersI2V`), sizes, conditioning, output and the flow-access glue.

The memory context reaches the model as its two conditioning inputs: the last accepted frame
(``request.cond_frame``) becomes the pipeline's image, and the memory-composed prompt
(``request.context``) or the bare step instruction (``request.prompt``) its text.

What every adapter does around the pipeline call:

1. **Model size.** Each model only accepts certain shapes (Wan 2.1: frames 4k+1, H/W multiples
   of 16; Wan 2.2 TI2V: multiples of 32; CogVideoX: frames 8k+1 and the transformer's trained
   size; LTX: frames 8k+1, multiples of 32). The run's size is snapped to the closest valid one
   (frames rounded up) or, with ``snap=False``, refused with a message that names valid values.
2. **Conditioning frame.** Center-cropped to the model's aspect ratio and resized (``resize="crop"``),
   or resized without cropping (``resize="stretch"``).
3. **Output.** Frames come back as uint8 T×H×W×3 at the run's size. With ``crop`` the generated
   pixels go back into the crop box and the pixels the model never saw keep their values from the
   conditioning frame, so every frame shares frame 0's geometry.
4. **Frame 0.** Replaced by the request's conditioning frame itself. The decoded frame 0 is a VAE
   round trip (plus two resizes) of that frame, close but not equal; ``compose()`` drops frame 0 of
   every later segment because it *is* the previous segment's last frame, and the critic compares
   frame 0 with the state it had accepted. Replacing it keeps both assumptions exact, so
   reconstruction error does not enter the video at step boundaries. How far the decoded frame 0
   was from the conditioning frame is kept in ``segment.meta["frame0_mae"]`` (a drift diagnostic).
5. **Seeds.** One ``torch.Generator`` seeded by ``request.seed + seed_offset``, created on
   ``generator_device`` (CPU by default: the same seed gives the same noise on any GPU).

Flow-matching backbones (Wan, LTX) also expose ``denoiser``, ``scheduler``, ``prepare(request)``,
``velocity(latents, t, inputs)`` and ``decode(latents, inputs)`` (:class:`FlowAccess`) so that a
hand-written sampler (``spiral/flow.py``: Euler ODE / SDE steps with log-probabilities for GRPO) can
drive the transformer step by step and end with the same post-processing as ``generate``.

An option every family takes belongs to :class:`DiffusersI2V` here; a family module (``wan``, ``ltx``,
``cogvideox``) only sets its defaults and overrides the model-specific hooks (``spatial_multiple``,
``frame_step``, ``fixed_size``, ``call_arguments``, ``check_pipeline``) and the flow access.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from spiral.generators.diffusers.lora import ATTENTION_TARGETS, LoraSpec, load_loras
from spiral.options import BackendOptions
from spiral.types import GenerationRequest, Segment, check_frame

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'spiral-video[diffusers]'"


def require_diffusers() -> Any:
    """Import diffusers (and transformers) or fail with one line that says how to install them."""
    try:
        import diffusers
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"the diffusers video generators need the optional extra: {INSTALL_HINT} "
                          f"(missing: {e.name or e})") from None
    return diffusers


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _device(name: str) -> torch.device:
    """The device an option names; CUDA that this torch cannot see is an error naming the fix, not a traceback
    from deep inside the first ``.to()``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; fix: set generator.options.device to auto, cpu or cuda[:i]") \
            from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise ValueError(f"device {name!r} asked but {why}; fix: set generator.options.device: cpu (or auto), "
                             "or install a CUDA build of torch on a machine with a GPU")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r} asked but only {torch.cuda.device_count()} CUDA device(s) are "
                             f"visible; fix: use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def _dtype(name: str | None, device: torch.device) -> torch.dtype:
    """The dtype an option names, checked against the device: half precision on a CPU (kernels missing or
    emulated) or bfloat16 on a GPU without it is an error naming the dtype that works there."""
    if name is None or name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use one of: auto, {', '.join(_DTYPES)}")
    dtype = _DTYPES[name]
    if device.type == "cpu" and dtype == torch.float16:
        raise ValueError(f"dtype {name} does not run on the CPU (no float16 kernels for video models); fix: set "
                         "generator.options.dtype: float32 (or auto), or device: cuda")
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ValueError(f"dtype {name}: this GPU has no bfloat16 support; fix: set generator.options.dtype: "
                         "float16 (or float32)")
    return dtype


def _execution_device(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a (possibly CPU-offloaded) module runs; older diffusers lack the helper."""
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:
        return fallback
    return get_module_execution_device(module)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_like_path(model: str) -> bool:
    """Hub ids are exactly ``owner/name``; anything else (absolute, relative, ~, deeper) is a path."""
    return (os.path.isabs(model) or model.startswith((".", "~")) or "\\" in model
            or model.count("/") != 1 or model.endswith("/"))


# ----------------------------------------------------------------------------------------------- sizes


def snap_frames(n: int, step: int) -> int:
    """Smallest frame count ``k*step + 1`` (k >= 1) that is >= ``n``."""
    return step * max(1, math.ceil((n - 1) / step)) + 1


def snap_side(x: int, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (at least one multiple)."""
    return max(multiple, int(round(x / multiple)) * multiple)


def crop_box(height: int, width: int, aspect: float) -> tuple[int, int, int, int]:
    """Centered (top, left, h, w) box of a height×width image with aspect ratio ``aspect`` = w / h."""
    if width / height > aspect:
        w = max(1, min(width, int(round(height * aspect))))
        return 0, (width - w) // 2, height, w
    h = max(1, min(height, int(round(width / aspect))))
    return (height - h) // 2, 0, h, width


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    if image.shape[:2] == (height, width):
        return image
    from PIL import Image

    return np.asarray(Image.fromarray(image).resize((width, height), Image.BICUBIC), dtype=np.uint8)


def to_uint8(video: np.ndarray) -> np.ndarray:
    """Pipeline output in [0, 1] (float) → uint8."""
    return np.clip(np.round(np.asarray(video, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class ModelSize:
    """The shape the model generates: height, width, frames."""

    height: int
    width: int
    num_frames: int


@dataclass
class FlowInputs:
    """Everything a hand-written flow-matching sampler needs for one request (DESIGN §6).

    ``latents`` is the seeded starting noise x(σ=1) in the model's latent layout (B, C, F, h, w);
    ``timesteps[i]`` goes to the denoiser at noise level ``sigmas[i]``; ``sigmas`` ends with 0;
    ``free_mask`` is 1 where latents are generated and 0 where they are fixed by conditioning
    (an SDE sampler must not add noise there); ``cond`` holds model-specific tensors.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    guidance_scale: float
    cond: dict[str, Any]
    size: ModelSize
    request: GenerationRequest
    generator: torch.Generator
    free_mask: torch.Tensor | None = None
    timings: dict[str, float] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- base


class DiffusersOptions(BackendOptions):
    """Options of the diffusers generators (``diffusers``, ``wan21-i2v``, ``wan22-ti2v``, ``cogvideox-i2v``,
    ``ltx-i2v``); None means the adapter's default for its model family."""

    model: str | None = Field(None, description="hub id or local pipeline folder")
    pipeline_class: str | None = Field(None, description="diffusers class name or module:Class")
    dtype: str = Field("auto", description="auto | bfloat16 | float16 | float32")
    vae_dtype: str | None = Field(None, description="dtype of the VAE (Wan VAEs are best kept in float32)")
    device: str = Field("auto", description="auto | cpu | cuda[:i]")
    num_inference_steps: int | None = Field(None, ge=1, description="denoising steps per segment")
    guidance_scale: float | None = Field(None, ge=0, description="classifier-free guidance scale")
    negative_prompt: str | None = Field(None, description="negative prompt")
    height: int | None = Field(None, ge=8, description="model frame height (default: the run's)")
    width: int | None = Field(None, ge=8, description="model frame width (default: the run's)")
    num_frames: int | None = Field(None, ge=2, description="model frames per segment (default: the run's)")
    snap: bool = Field(True, description="round sizes the model cannot make to ones it can (else refuse)")
    resize: Literal["crop", "stretch"] = Field("crop", description="how frames are mapped to the model's size")
    cpu_offload: bool | Literal["none", "model", "sequential", "group"] = Field(False, description=(
        "false | model (each component on the GPU while it runs) | sequential (each layer; lowest memory, slowest) | "
        "group (diffusers' group offloading: the transformer's blocks one at a time, streamed ahead on CUDA)"))
    compile: bool = Field(False, description="torch.compile the transformer (compiled at the first segment)")
    vae_tiling: bool = Field(False, description="decode the VAE in tiles (less memory)")
    fps: float | None = Field(None, gt=0, description="frame rate of the segments")
    seed_offset: int = Field(0, description="added to every request's seed")
    generator_device: str = Field("cpu", description="device of the torch.Generator that draws the noise")
    prompt_source: Literal["context", "instruction"] = Field(
        "context", description="the memory-composed context or the step's instruction")
    prompt_template: str = Field("{text}", description="prompt with {text}, {instruction}, {context}")
    max_sequence_length: int | None = Field(None, ge=1, description="text tokens")
    scheduler: str | None = Field(None, description="a diffusers scheduler class built from the pipeline's config")
    scheduler_kwargs: dict[str, Any] | None = Field(None, description="extra scheduler config")
    local_files_only: bool | None = Field(None, description="never download (also on when HF_HUB_OFFLINE=1)")
    call_kwargs: dict[str, Any] | None = Field(None, description="passed to the pipeline call")
    load_kwargs: dict[str, Any] | None = Field(None, description="passed to from_pretrained")
    lora: list[LoraSpec] = Field(default_factory=list, description=(
        "LoRA adapters to load ({path, scale} each; a folder written by `spiral train sft` or any file "
        "diffusers' load_lora_weights reads); one trained for another architecture is refused"))


class DiffusersI2V:
    """Generic image-to-video adapter around any diffusers pipeline that takes ``image`` + ``prompt``.

    Options (all keyword, all from the config's ``generator.options``):
    ``model`` hub id or local folder; ``pipeline_class`` diffusers class name or ``module:Class``;
    ``dtype`` auto|bfloat16|float16|float32; ``vae_dtype`` (Wan VAEs are best kept in float32);
    ``device`` auto|cpu|cuda[:i]; ``num_inference_steps``; ``guidance_scale``; ``negative_prompt``;
    ``height``/``width``/``num_frames`` model-size overrides (the run's size otherwise);
    ``snap`` round invalid sizes to valid ones (else raise); ``resize`` crop|stretch;
    ``cpu_offload`` false|model|sequential|group; ``compile``; ``vae_tiling``; ``fps``; ``seed_offset``;
    ``generator_device``; ``prompt_source`` context|instruction; ``prompt_template`` with
    ``{text}``, ``{instruction}``, ``{context}``; ``max_sequence_length``; ``scheduler`` a diffusers
    scheduler class name built ``from_config`` of the pipeline's (+ ``scheduler_kwargs``);
    ``local_files_only`` (also on when ``HF_HUB_OFFLINE=1``); ``call_kwargs`` passed to the pipeline;
    ``load_kwargs`` passed to ``from_pretrained``; ``lora`` a list of ``{path, scale}`` LoRA adapters
    (:mod:`~spiral.generators.diffusers.lora`). From Python, ``pipeline=`` wraps an already built
    pipeline object (e.g. with a quantized transformer) instead of loading one.
    """

    name = "diffusers"
    display = "diffusers pipeline"
    options_model = DiffusersOptions
    default_model: str | None = None
    default_pipeline_class: str | None = None
    default_steps = 50
    default_guidance = 5.0
    default_fps = 16.0
    default_negative_prompt = ""
    default_max_sequence_length: int | None = None
    default_vae_dtype: str | None = None
    needs_ftfy = False
    spatial_multiple_fallback = 8
    frame_step_fallback = 4
    #: the transformer's modules a LoRA adapts by default (``spiral train sft``, GRPO)
    lora_targets: list[str] = ATTENTION_TARGETS
    #: what the hand-driven denoiser calls go through instead of the transformer itself: a
    #: ``DistributedDataParallel`` wrapper of it, set by ``spiral train sft`` so that backward synchronises the
    #: gradients across ranks (DDP hooks run only on calls through the wrapper). Attributes (config, dtype,
    #: cache_context) are still read from the transformer. None: the transformer is called directly.
    denoiser_wrapper: torch.nn.Module | None = None

    def call_denoiser(self, model: torch.nn.Module, **kwargs: Any) -> Any:
        """``model(**kwargs)``, through :attr:`denoiser_wrapper` when that wraps this very module."""
        wrapper = self.denoiser_wrapper
        if wrapper is not None and getattr(wrapper, "module", None) is model:
            return wrapper(**kwargs)
        return model(**kwargs)

    def __init__(
        self,
        model: str | None = None,
        pipeline_class: str | None = None,
        dtype: str = "auto",
        vae_dtype: str | None = None,
        device: str = "auto",
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        negative_prompt: str | None = None,
        height: int | None = None,
        width: int | None = None,
        num_frames: int | None = None,
        snap: bool = True,
        resize: Literal["crop", "stretch"] = "crop",
        cpu_offload: bool | Literal["none", "model", "sequential", "group"] = False,
        compile: bool = False,
        vae_tiling: bool = False,
        fps: float | None = None,
        seed_offset: int = 0,
        generator_device: str = "cpu",
        prompt_source: Literal["context", "instruction"] = "context",
        prompt_template: str = "{text}",
        max_sequence_length: int | None = None,
        scheduler: str | None = None,
        scheduler_kwargs: dict[str, Any] | None = None,
        local_files_only: bool | None = None,
        call_kwargs: dict[str, Any] | None = None,
        load_kwargs: dict[str, Any] | None = None,
        lora: list[LoraSpec | dict[str, Any]] | None = None,
        pipeline: Any = None,
    ):
        self.diffusers = require_diffusers()
        if self.needs_ftfy and importlib.util.find_spec("ftfy") is None:
            raise ImportError(f"{self.display} pipelines need 'ftfy' to clean prompts: {INSTALL_HINT} "
                              "(or pip install ftfy)")
        model = model or (type(pipeline).__name__ if pipeline is not None else self.default_model)
        if not model:
            raise ValueError(f"generator '{self.name}' needs options.model (a hub id or a local pipeline folder)")
        pipeline_class = pipeline_class or self.default_pipeline_class
        if not pipeline_class and pipeline is None:
            raise ValueError(f"generator '{self.name}' needs options.pipeline_class, e.g. WanImageToVideoPipeline")
        if prompt_source not in ("context", "instruction"):
            raise ValueError(f"prompt_source must be 'context' or 'instruction', got {prompt_source!r}")
        if resize not in ("crop", "stretch"):
            raise ValueError(f"resize must be 'crop' or 'stretch', got {resize!r}")
        offload = {False: "none", True: "model", None: "none"}.get(cpu_offload, cpu_offload)  # type: ignore[arg-type]
        if offload not in ("none", "model", "sequential", "group"):
            raise ValueError(f"cpu_offload must be false, true/'model', 'sequential' or 'group', got {cpu_offload!r}")
        try:
            prompt_template.format(text="", instruction="", context="")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"prompt_template {prompt_template!r} is invalid ({e}); "
                             "use {text}, {instruction}, {context}") from None

        self.model = model
        self.device = _device(device)
        self.dtype = _dtype(dtype, self.device)
        vae_dtype = vae_dtype or self.default_vae_dtype
        self.vae_dtype = _dtype(vae_dtype, self.device) if vae_dtype else None
        self.num_inference_steps = int(num_inference_steps or self.default_steps)
        self.guidance_scale = float(self.default_guidance if guidance_scale is None else guidance_scale)
        self.negative_prompt = self.default_negative_prompt if negative_prompt is None else negative_prompt
        self.height, self.width, self.num_frames = height, width, num_frames
        self.snap, self.resize = snap, resize
        self.fps = float(fps or self.default_fps)
        self.seed_offset = int(seed_offset)
        self.generator_device = generator_device
        self.prompt_source, self.prompt_template = prompt_source, prompt_template
        self.call_kwargs = dict(call_kwargs or {})
        self._warned: set[tuple] = set()

        if pipeline is not None:  # Python API: a pipeline built or quantized by the caller
            self.pipe = pipeline
        else:
            cls = self._pipeline_class(pipeline_class)
            self.pipe = self._load(cls, model, local_files_only, dict(load_kwargs or {}))
        self.check_pipeline()
        if scheduler:
            self._swap_scheduler(scheduler, dict(scheduler_kwargs or {}))
        self.loras = [s if isinstance(s, LoraSpec) else LoraSpec.model_validate(s) for s in (lora or [])]
        self.lora_adapters = load_loras(self.pipe, self.loras, self.display)
        if self.vae_dtype is not None and self.pipe.vae.dtype != self.vae_dtype:
            self.pipe.vae.to(self.vae_dtype)
        if offload == "model":
            self.pipe.enable_model_cpu_offload(device=self.device)
        elif offload == "sequential":
            self.pipe.enable_sequential_cpu_offload(device=self.device)
        elif offload == "group":
            # diffusers' group offloading of every model component: block by block, prefetched on a CUDA stream
            self.pipe.enable_group_offload(onload_device=self.device, offload_device=torch.device("cpu"),
                                           offload_type="block_level", num_blocks_per_group=1,
                                           use_stream=self.device.type == "cuda")
        else:
            self.pipe.to(self.device)
        if vae_tiling:
            if not hasattr(self.pipe.vae, "enable_tiling"):
                raise ValueError(f"{type(self.pipe.vae).__name__} has no tiling; set vae_tiling: false")
            self.pipe.vae.enable_tiling()
        if compile:
            self.pipe.transformer.compile()  # nn.Module.compile: in place, so the pipeline keeps its module
        self.pipe.set_progress_bar_config(disable=True)
        self.max_sequence_length = max_sequence_length or self._default_max_sequence_length()

    # ------------------------------------------------------------------------------------- loading

    def check_pipeline(self) -> None:
        """Refuse a loaded pipeline that is not the kind this adapter drives (subclasses)."""

    def _pipeline_class(self, name: str) -> type:
        if ":" in name:
            module, _, attr = name.partition(":")
            try:
                return getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as e:
                raise ValueError(f"cannot import pipeline_class {name!r}: {e}") from None
        cls = getattr(self.diffusers, name, None)
        if cls is None or not isinstance(cls, type):
            known = [n for n in dir(self.diffusers) if n.endswith("Pipeline")]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"diffusers has no pipeline class {name!r}{hint}")
        return cls

    def _load(self, cls: type, model: str, local_files_only: bool | None, load_kwargs: dict[str, Any]) -> Any:
        """``from_pretrained`` with errors that name the model and the fix; never a hanging download
        when the hub is off (``HF_HUB_OFFLINE=1`` or ``local_files_only``)."""
        path = Path(model).expanduser()
        example = self.default_model or "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
        if path.exists():
            if not (path / "model_index.json").is_file():
                raise FileNotFoundError(
                    f"{path} is not a diffusers pipeline folder (no model_index.json); fix: point "
                    "generator.options.model at a folder written by pipeline.save_pretrained() or at a hub id")
            source, offline = str(path), True
        elif _looks_like_path(model):
            raise FileNotFoundError(
                f"model path {model} does not exist; fix: set generator.options.model to an existing pipeline "
                f"folder or to a hub id such as {example}")
        else:
            source, offline = model, bool(local_files_only) or _hub_offline()
        # newer diffusers call the argument ``dtype`` and warn about ``torch_dtype``
        from diffusers.utils import deprecation_utils

        dtype_key = "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"
        try:
            return cls.from_pretrained(source, local_files_only=offline, **{dtype_key: self.dtype}, **load_kwargs)
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if source != model or path.exists():
                raise ValueError(f"cannot load {cls.__name__} from {source}: {first}") from None
            if offline:
                raise FileNotFoundError(
                    f"model {model!r} is not in the local Hugging Face cache and downloads are off "
                    f"(HF_HUB_OFFLINE=1 or local_files_only); fix: run `hf download {model}` where there is "
                    "network, or set generator.options.model to a local folder") from None
            raise ValueError(f"cannot load {model!r} from the Hugging Face Hub: {first}; fix: check the id "
                          f"(e.g. {example}), your network and HF token, or use a local folder") from None

    def _swap_scheduler(self, name: str, kwargs: dict[str, Any]) -> None:
        cls = getattr(self.diffusers, name, None)
        if cls is None or not hasattr(cls, "from_config"):
            known = [n for n in dir(self.diffusers) if n.endswith("Scheduler")]
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ValueError(f"diffusers has no scheduler {name!r}{hint}")
        self.pipe.scheduler = cls.from_config(self.pipe.scheduler.config, **kwargs)

    def _default_max_sequence_length(self) -> int | None:
        return self.default_max_sequence_length

    # ----------------------------------------------------------------------------- model constraints

    def spatial_multiple(self) -> int:
        """H and W must be multiples of this."""
        vae_scale = getattr(self.pipe, "vae_scale_factor_spatial", None) or self.spatial_multiple_fallback
        patch = getattr(getattr(self.pipe, "transformer", None), "config", None)
        p = getattr(patch, "patch_size", 1) if patch is not None else 1
        p = p[-1] if isinstance(p, (tuple, list)) else (p or 1)
        return int(vae_scale) * int(p)

    def frame_step(self) -> int:
        """Frame counts must be ``k * frame_step + 1``."""
        return int(getattr(self.pipe, "vae_scale_factor_temporal", None) or self.frame_step_fallback)

    def fixed_size(self) -> tuple[int, int] | None:
        """(H, W) when the model only generates one size (learned positional embeddings)."""
        return None

    def model_size(self, request: GenerationRequest) -> ModelSize:
        """The valid (H, W, frames) closest to the options' overrides or the run's size."""
        want_h, want_w = self.height or request.height, self.width or request.width
        want_f = self.num_frames or request.num_frames
        step, mult = self.frame_step(), self.spatial_multiple()
        frames = snap_frames(want_f, step)
        fixed = self.fixed_size()
        if fixed is not None:
            if (self.height and self.height != fixed[0]) or (self.width and self.width != fixed[1]):
                raise ValueError(
                    f"{self.display} only generates {fixed[0]}x{fixed[1]} (its transformer's sample size); "
                    f"fix: remove generator.options.height/width or set them to {fixed[0]}/{fixed[1]}")
            h, w = fixed
        else:
            h, w = snap_side(want_h, mult), snap_side(want_w, mult)
        if frames != want_f or (fixed is None and (h, w) != (want_h, want_w)):
            msg = (f"{self.display} needs num_frames = {step}k+1 and height/width multiples of {mult}; "
                   f"asked {want_h}x{want_w}x{want_f}, valid nearby: {h}x{w}x{frames}")
            if not self.snap:
                raise ValueError(msg + "; fix: set video.frames_per_step / video.height / video.width (or "
                                 "generator.options.num_frames/height/width) to valid values, or snap: true")
            key = (want_h, want_w, want_f)
            if key not in self._warned:
                self._warned.add(key)
                logger.warning("%s; generating %dx%dx%d", msg, h, w, frames)
        return ModelSize(h, w, frames)

    # ------------------------------------------------------------------------------------ conditioning

    def prompt_for(self, request: GenerationRequest) -> str:
        """The text the model sees: the memory-composed context or the step's instruction."""
        instruction = request.prompt_text()  # the critic's feedback, on a refine, goes with the instruction
        text = request.context if self.prompt_source == "context" and request.context else instruction
        return self.prompt_template.format(text=text, instruction=instruction, context=request.context)

    def cond_image(self, request: GenerationRequest, size: ModelSize) -> Any:
        """The conditioning frame at the model's size, as a PIL image (what every pipeline accepts)."""
        from PIL import Image

        if request.cond_frame is None:
            raise ValueError(f"{self.display} is image-to-video: the request has no conditioning frame "
                             "(request.cond_frame); the loop always sets it from memory")
        return Image.fromarray(self.fit_frame(check_frame(request.cond_frame, "cond_frame"), size))

    def fit_frame(self, frame: np.ndarray, size: ModelSize) -> np.ndarray:
        """One H×W×3 uint8 frame at the model's size: center-cropped to its aspect (``resize="crop"``) or
        stretched, then resized. The conditioning frame and the frames a trainer learns from go through it."""
        if self.resize == "crop":
            top, left, h, w = crop_box(frame.shape[0], frame.shape[1], size.width / size.height)
            frame = frame[top:top + h, left:left + w]
        return np.ascontiguousarray(_resize(frame, size.height, size.width))

    def make_generator(self, request: GenerationRequest) -> torch.Generator:
        """The one source of randomness for a request."""
        return torch.Generator(device=self.generator_device).manual_seed(int(request.seed) + self.seed_offset)

    def call_arguments(self, request: GenerationRequest, size: ModelSize) -> dict[str, Any]:
        """Keyword arguments of the pipeline call for this request (minus image and generator)."""
        kwargs: dict[str, Any] = dict(
            prompt=self.prompt_for(request), negative_prompt=self.negative_prompt, height=size.height,
            width=size.width, num_frames=size.num_frames, num_inference_steps=self.num_inference_steps,
            guidance_scale=self.guidance_scale, output_type="np",
        )
        if self.max_sequence_length is not None:
            kwargs["max_sequence_length"] = self.max_sequence_length
        kwargs.update(self.call_kwargs)
        return kwargs

    # ---------------------------------------------------------------------------------------- output

    def restore(self, video: np.ndarray, request: GenerationRequest) -> np.ndarray:
        """Model-size uint8 frames → the run's size, geometry aligned with the conditioning frame;
        frame 0 becomes the conditioning frame itself (see the module docstring)."""
        out_h, out_w = request.height, request.width
        cond = request.cond_frame
        if cond is not None and cond.shape[:2] != (out_h, out_w):
            cond = _resize(cond, out_h, out_w)
        t, h, w = video.shape[:3]
        if self.resize == "crop" and cond is not None:
            top, left, bh, bw = crop_box(out_h, out_w, w / h)
            frames = np.repeat(cond[None], t, axis=0)
            for i in range(t):
                frames[i, top:top + bh, left:left + bw] = _resize(video[i], bh, bw)
        else:
            frames = np.stack([_resize(video[i], out_h, out_w) for i in range(t)])
        if cond is not None:
            frames[0] = cond
        return np.ascontiguousarray(frames)

    def _segment(self, video: np.ndarray, request: GenerationRequest, size: ModelSize, prompt: str,
                 timings: dict[str, float]) -> Segment:
        t0 = time.perf_counter()
        raw = to_uint8(video)
        # how far the decoded frame 0 is from the image the model was given (VAE round trip, drift)
        given = np.asarray(self.cond_image(request, size), dtype=np.int16)
        mae = float(np.abs(raw[0].astype(np.int16) - given).mean()) if raw[0].shape == given.shape else float("nan")
        frames = self.restore(raw, request)
        timings["postprocess"] = time.perf_counter() - t0
        meta = {"model": self.model, "pipeline": type(self.pipe).__name__, "prompt": prompt,
                "model_size": [size.height, size.width, size.num_frames], "steps": self.num_inference_steps,
                "guidance_scale": self.guidance_scale, "frame0_mae": round(mae, 4)}
        return Segment(frames=frames, fps=self.fps, seed=request.seed, backend=self.name,
                       timings={k: round(v, 6) for k, v in timings.items()}, meta=meta)

    # -------------------------------------------------------------------------------------- generate

    def generate(self, request: GenerationRequest) -> Segment:
        """One segment: frame 0 is ``request.cond_frame``; the rest comes from the pipeline."""
        t0 = time.perf_counter()
        size = self.model_size(request)
        image = self.cond_image(request, size)
        kwargs = self.call_arguments(request, size)
        generator = self.make_generator(request)
        t1 = time.perf_counter()
        try:
            video = self.pipe(image=image, generator=generator, **kwargs).frames[0]
        except torch.OutOfMemoryError:
            raise self.out_of_memory(size) from None
        t2 = time.perf_counter()
        return self._segment(np.asarray(video), request, size, kwargs["prompt"],
                             {"preprocess": t1 - t0, "pipeline": t2 - t1})


    def out_of_memory(self, size: ModelSize, fixes: str = "") -> ValueError:
        """The one-line error for an out-of-memory at ``size``, naming what lowers the peak (the cache is freed
        first so that the process can go on, e.g. to write what it has)."""
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        hints = fixes or ("generator.options.cpu_offload: model (or sequential), vae_tiling: true, a smaller video "
                          "(video.height/width/frames_per_step), or a GPU of its own for the generator")
        return ValueError(f"out of GPU memory generating {size.height}x{size.width}x{size.num_frames} with "
                          f"{self.display} on {self.device}; fix: {hints}")


# ----------------------------------------------------------------------------------------------- flow access


class FlowAccess:
    """Glue between an adapter's ``velocity`` (scheduler timesteps, 0..1000) and ``spiral.flow`` (σ in [0, 1]).

    Mixed into the flow-matching adapters before :class:`DiffusersI2V`; each one provides ``denoiser``,
    ``scheduler``, ``prepare``, ``velocity`` and ``decode`` by mirroring its diffusers pipeline's ``__call__``.
    """

    @property
    def scheduler(self) -> Any:
        """The pipeline's flow-matching scheduler; its sigmas are the noise levels."""
        return self.pipe.scheduler  # type: ignore[attr-defined]

    def velocity(self, latents: torch.Tensor, t: torch.Tensor | float, inputs: FlowInputs) -> torch.Tensor:
        raise NotImplementedError

    def flow_fn(self, inputs: FlowInputs) -> Any:
        """``fn(x, sigma) -> v`` for ``spiral.flow.sample``: σ is mapped to the timestep σ·num_train_timesteps."""
        scale = float(self.scheduler.config.get("num_train_timesteps", 1000))

        def fn(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.velocity(x, torch.as_tensor(sigma, device=x.device, dtype=torch.float32) * scale, inputs)

        return fn

    def _request_inputs(self, request: GenerationRequest, guidance_scale: float | None = None
                        ) -> tuple[ModelSize, Any, str, torch.Generator, Any, float]:
        """What every hand-driven ``prepare`` starts from: model size, conditioning image, prompt, seeded
        generator, execution device and the guidance scale (the adapter's unless given; > 1 turns CFG on)."""
        size = self.model_size(request)  # type: ignore[attr-defined]
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)  # type: ignore[attr-defined]
        return (size, self.cond_image(request, size), self.prompt_for(request),  # type: ignore[attr-defined]
                self.make_generator(request), self.pipe._execution_device, scale)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------------------------ training

    def encode_video(self, frames: np.ndarray, inputs: FlowInputs) -> torch.Tensor:
        """Clean latents x0 of ``frames`` (T×H×W×3 uint8 at the model's size) in the layout of ``inputs.latents``,
        normalized as the model's sampler ends (the inverse of ``decode``): the flow-matching target's data end."""
        raise NotImplementedError

    def train_sigmas(self, u: torch.Tensor, inputs: FlowInputs) -> torch.Tensor:
        """Noise levels for training from uniform-ish ``u`` in [0, 1], shifted the way the scheduler shifts its
        inference schedule: a static ``flow_shift``/``shift`` s (Wan: σ = s·u / (1 + (s − 1)·u)) or the
        resolution-dependent exponential shift ``mu`` of a dynamic-shifting scheduler (LTX)."""
        cfg = self.scheduler.config
        if cfg.get("use_dynamic_shifting", False):
            return self.scheduler.time_shift(float(inputs.cond["mu"]), 1.0, u)
        s = float(cfg.get("flow_shift", cfg.get("shift", 1.0)) or 1.0)
        return s * u / (1 + (s - 1) * u)
