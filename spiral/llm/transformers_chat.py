"""A chat backend that runs a local Qwen2-VL / Qwen2.5-VL with transformers (extra ``spiral[vlm]``).

Same contract as the HTTP :class:`spiral.llm.client.ChatClient` (``request`` → reply text), so the
planner and critic keep their prompts, schemas, validation and repair (``spiral.llm.structured``)
and only the transport changes:

- the model is loaded once per (folder, device, dtype) with ``from_pretrained`` from a local folder
  (or a model id already in the Hugging Face cache; downloads stay off unless ``local_files_only: false``)
  and shared by the agents that name it;
- messages are rendered with the checkpoint's chat template (``chat_template.jinja`` /
  ``chat_template.json`` / the tokenizer's; a built-in ChatML template with Qwen's vision tokens
  otherwise); each image or video placeholder is expanded to as many pad tokens as the vision tower
  yields, and the pixels are patchified by hand (``spiral.llm.qwen_vision``: no torchvision);
- with ``constrained: true`` (default) decoding is limited to valid prefixes of the task's JSON
  schema (llguidance, see ``spiral.llm.constrained``), so even random weights write schema-valid
  JSON; the agent's validators and repair loop still run on top (e.g. the planner's domain
  simulation). With ``constrained: false`` the schema is spelled out in the prompt and replies are
  parsed and repaired.

Decoding settings come from the options (``temperature`` 0 → greedy), never from the checkpoint's
``generation_config.json``, so a run is reproducible from its config.
"""

from __future__ import annotations

import base64
import inspect
import io
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from spiral.llm.constrained import SchemaLogitsProcessor, grammar_tokenizer, require_llguidance, schema_grammar
from spiral.llm.qwen_vision import VisionSpec, patchify_image, patchify_video, specs_for
from spiral.llm.structured import JsonTask, LLMError, with_format

INSTALL = "pip install 'spiral-video[vlm]'"
SUPPORTED = ("qwen2_5_vl", "qwen2_vl")
# Used only when a checkpoint ships no chat template: ChatML with Qwen-VL's vision placeholders.
FALLBACK_TEMPLATE = (
    "{%- for m in messages -%}"
    "{{ '<|im_start|>' + m['role'] + '\\n' }}"
    "{%- if m['content'] is string -%}{{ m['content'] }}"
    "{%- else -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] == 'text' -%}{{ p['text'] }}"
    "{%- elif p['type'] == 'image' -%}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{%- elif p['type'] == 'video' -%}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def require_transformers() -> Any:
    """Import transformers or explain which extra installs it."""
    try:
        import transformers
    except ImportError as e:
        raise ImportError(f"the transformers VLM agents need transformers: {INSTALL}") from e
    return transformers


# -- loading ----------------------------------------------------------------------------------------


@dataclass
class LoadedVLM:
    """A loaded checkpoint and what decoding needs from it (shared by every agent that names it)."""

    model: Any
    tokenizer: Any
    folder: Path | None
    image_spec: VisionSpec
    video_spec: VisionSpec
    chat_template: str
    eos_ids: list[int]
    accepts: frozenset[str]
    _grammar_tokenizer: Any = field(default=None, repr=False)

    @property
    def vocab_size(self) -> int:
        """Rows of the output layer (can exceed the tokenizer's size: padding ids are never allowed)."""
        return int(self.model.get_output_embeddings().weight.shape[0])

    def grammar_tokenizer(self) -> Any:
        """The tokenizer as llguidance sees it, built once per checkpoint (seconds for a 150k vocabulary)."""
        if self._grammar_tokenizer is None:
            self._grammar_tokenizer = grammar_tokenizer(self.tokenizer, self.vocab_size, self.eos_ids)
        return self._grammar_tokenizer


_CACHE: dict[tuple, LoadedVLM] = {}
_LOCK = threading.Lock()


def clear_model_cache() -> None:
    """Forget loaded checkpoints (frees their memory once no agent holds them)."""
    with _LOCK:
        _CACHE.clear()


def _looks_like_path(s: str) -> bool:
    return s.startswith(("/", ".", "~")) or "\\" in s or s.count("/") != 1


def _resolve_device_dtype(device: str, dtype: str) -> tuple[str, Any]:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    names = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype == "auto":
        return device, torch.float32 if device == "cpu" else torch.bfloat16
    if dtype not in names:
        raise ValueError(f"dtype must be auto, float32, bfloat16 or float16; got {dtype!r}")
    return device, names[dtype]


def load_vlm(model: str, device: str = "auto", dtype: str = "auto", attn_implementation: str | None = None,
             local_files_only: bool = True) -> LoadedVLM:
    """Load (or reuse) a Qwen-VL checkpoint; a bad path or model is one line that names the fix."""
    transformers = require_transformers()
    device, torch_dtype = _resolve_device_dtype(device, dtype)
    src = str(model)
    folder = Path(src).expanduser()
    fix = ("fix: set the agent's model option to a local Qwen2.5-VL or Qwen2-VL checkpoint folder, e.g. one made by "
           "`huggingface-cli download Qwen/Qwen2.5-VL-3B-Instruct --local-dir DIR`")
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise LLMError(f"cannot load a transformers VLM from {src}: the folder has no config.json; {fix}")
        src = str(folder.resolve())
    elif _looks_like_path(src):
        raise LLMError(f"cannot load a transformers VLM from {src}: no such folder; {fix}")
    key = (src, device, str(torch_dtype), attn_implementation)
    with _LOCK:
        if key in _CACHE:
            return _CACHE[key]
        try:
            config = transformers.AutoConfig.from_pretrained(src, local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            where = "not found in the local Hugging Face cache (downloads are off)" if local_files_only else str(e)
            raise LLMError(f"cannot load a transformers VLM from {src}: {where}; {fix}") from None
        if config.model_type not in SUPPORTED:
            raise LLMError(f"cannot use {src} as a transformers VLM: it is a {config.model_type!r} model; "
                           f"transformers-vlm supports {', '.join(SUPPORTED)} checkpoints")
        kwargs: dict[str, Any] = {"dtype": torch_dtype, "local_files_only": local_files_only}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            net = transformers.AutoModelForImageTextToText.from_pretrained(src, **kwargs)
            tok = transformers.AutoTokenizer.from_pretrained(src, local_files_only=local_files_only)
        except (OSError, ValueError) as e:
            raise LLMError(f"cannot load a transformers VLM from {src}: {' '.join(str(e).split())[:300]}; {fix}") \
                from None
        net = net.to(device).eval()
        local = Path(src) if Path(src).is_dir() else _snapshot_folder(src, local_files_only)
        image_spec, video_spec = specs_for(net.config, local)
        loaded = LoadedVLM(net, tok, local, image_spec, video_spec, _chat_template(local, tok),
                           _eos_ids(net, tok), frozenset(inspect.signature(net.forward).parameters))
        _check_vision_tokens(loaded, src)
        _CACHE[key] = loaded
        return loaded


def _snapshot_folder(model_id: str, local_files_only: bool) -> Path | None:
    """The cache folder of a model loaded by id (its preprocessor configs and chat template live there)."""
    try:
        from transformers.utils import cached_file

        return Path(cached_file(model_id, "config.json", local_files_only=local_files_only)).parent
    except Exception:  # noqa: BLE001 - without it the Qwen defaults apply
        return None


def _chat_template(folder: Path | None, tokenizer: Any) -> str:
    """The checkpoint's multimodal chat template, else the tokenizer's, else the built-in one."""
    if folder is not None:
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return jinja.read_text(encoding="utf-8")
        js = folder / "chat_template.json"
        if js.is_file():
            try:
                t = json.loads(js.read_text(encoding="utf-8")).get("chat_template")
            except ValueError:
                t = None
            if isinstance(t, str) and t:
                return t
    t = getattr(tokenizer, "chat_template", None)
    return t if isinstance(t, str) and t else FALLBACK_TEMPLATE


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    for tok in ("<|im_end|>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i != tokenizer.unk_token_id and i >= 0:
            ids.append(i)
    for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        for i in src if isinstance(src, list) else [src]:
            if isinstance(i, int) and i not in ids:
                ids.append(i)
    if not ids:
        raise LLMError("the checkpoint's tokenizer has no end-of-turn token (<|im_end|> or an eos_token)")
    return ids


def _check_vision_tokens(loaded: LoadedVLM, src: str) -> None:
    cfg, tok = loaded.model.config, loaded.tokenizer
    for name in ("image_token_id", "video_token_id"):
        tid = getattr(cfg, name)
        text = tok.convert_ids_to_tokens(tid)
        if text is None or tok.convert_tokens_to_ids(text) != tid or tid not in tok.added_tokens_decoder:
            raise LLMError(f"the tokenizer of {src} does not match its config: {name}={tid} is not a special token; "
                           "fix: use the tokenizer that ships with the checkpoint")


# -- the backend ------------------------------------------------------------------------------------


class TransformersChat:
    """ChatBackend over a local Qwen-VL checkpoint (see the module docstring)."""

    def __init__(
        self,
        model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        attn_implementation: str | None = None,
        local_files_only: bool = True,
        constrained: bool = True,
        schema_in_prompt: bool | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        seed: int = 0,
        repair_retries: int = 2,
        min_pixels: int | None = None,
        max_pixels: int | None = None,
        video_min_pixels: int | None = None,
        video_max_pixels: int | None = None,
    ):
        if max_tokens < 1 or repair_retries < 0 or temperature < 0:
            raise ValueError("max_tokens must be >= 1, repair_retries and temperature >= 0")
        require_transformers()
        if constrained:
            require_llguidance()  # before the (slow) model load
        if not model:
            raise LLMError("the transformers VLM agents need the model option: a local Qwen2.5-VL or Qwen2-VL "
                           "checkpoint folder (e.g. --set planner.options.model=/models/Qwen2.5-VL-3B-Instruct)")
        self.vlm = load_vlm(model, device, dtype, attn_implementation, local_files_only)
        self.where = str(self.vlm.folder or model)
        self.label = f"the local model at {self.where} (transformers)"
        self.constrained = bool(constrained)
        self.schema_in_prompt = (not self.constrained) if schema_in_prompt is None else bool(schema_in_prompt)
        self.temperature, self.max_tokens, self.seed = float(temperature), int(max_tokens), int(seed)
        self.repair_retries = int(repair_retries)
        self.image_spec = _bounded(self.vlm.image_spec, min_pixels, max_pixels)
        self.video_spec = _bounded(self.vlm.video_spec, video_min_pixels, video_max_pixels)
        self.stats: Counter[str] = Counter()

    def __repr__(self) -> str:
        return f"TransformersChat(model={self.where!r}, constrained={self.constrained})"

    @property
    def device(self) -> Any:
        """Where the model's weights are."""
        return self.vlm.model.device

    # -- inputs ----------------------------------------------------------------------------------

    def encode(self, messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The model inputs for a conversation: token ids with expanded vision placeholders, patches, grids."""
        import torch

        tok, cfg = self.vlm.tokenizer, self.vlm.model.config
        hf_messages, media = _to_template_messages(messages)
        text = tok.apply_chat_template(hf_messages, chat_template=self.vlm.chat_template, tokenize=False,
                                       add_generation_prompt=True)
        image_tok, video_tok = tok.convert_ids_to_tokens([cfg.image_token_id, cfg.video_token_id])
        pieces = re.split(f"({re.escape(image_tok)}|{re.escape(video_tok)})", text)
        if sum(p in (image_tok, video_tok) for p in pieces) != len(media):
            raise LLMError(f"the chat template of {self.where} placed {sum(p in (image_tok, video_tok) for p in pieces)} "
                           f"vision placeholders for {len(media)} images/videos; fix: use the checkpoint's own template")
        images, image_grids, videos, video_grids, seconds = [], [], [], [], []
        out_text, k = [], 0
        for p in pieces:
            if p not in (image_tok, video_tok):
                out_text.append(p)
                continue
            kind, data, fps = media[k]
            k += 1
            if (kind == "image") != (p == image_tok):
                raise LLMError(f"the chat template of {self.where} reordered images and videos")
            if kind == "image":
                rows, grid = patchify_image(data, self.image_spec)
                images.append(rows)
                image_grids.append(grid)
                out_text.append(p * self.image_spec.tokens(grid))
            else:
                rows, grid = patchify_video(data, self.video_spec)
                videos.append(rows)
                video_grids.append(grid)
                seconds.append(self.video_spec.temporal_patch_size / fps)
                out_text.append(p * self.video_spec.tokens(grid))
        ids = tok("".join(out_text), add_special_tokens=False, return_tensors="pt")["input_ids"]
        dev = self.device
        inputs: dict[str, Any] = {"input_ids": ids.to(dev), "attention_mask": torch.ones_like(ids).to(dev)}
        if images:
            inputs["pixel_values"] = torch.from_numpy(np.concatenate(images)).to(dev, self.vlm.model.dtype)
            inputs["image_grid_thw"] = torch.tensor(image_grids, dtype=torch.long, device=dev)
        if videos:
            inputs["pixel_values_videos"] = torch.from_numpy(np.concatenate(videos)).to(dev, self.vlm.model.dtype)
            inputs["video_grid_thw"] = torch.tensor(video_grids, dtype=torch.long, device=dev)
            if "second_per_grid_ts" in self.vlm.accepts:
                inputs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32, device=dev)
        if (images or videos) and "mm_token_type_ids" in self.vlm.accepts:
            mm = (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()
            inputs["mm_token_type_ids"] = mm.to(dev)
        n_img, n_vid = int((ids == cfg.image_token_id).sum()), int((ids == cfg.video_token_id).sum())
        want_img = sum(self.image_spec.tokens(g) for g in image_grids)
        want_vid = sum(self.video_spec.tokens(g) for g in video_grids)
        if (n_img, n_vid) != (want_img, want_vid):
            raise LLMError(f"the tokenizer of {self.where} split the vision placeholders ({n_img}/{want_img} image, "
                           f"{n_vid}/{want_vid} video tokens); fix: use the checkpoint's own tokenizer")
        return inputs

    # -- requests --------------------------------------------------------------------------------

    def next_token_logits(self, messages: list[dict[str, Any]]) -> Any:
        """The model's scores for the first reply token (a probe that shows what reaches the model)."""
        import torch

        inputs = self.encode(messages)
        with torch.inference_mode():
            out = self.vlm.model(**inputs, use_cache=False)
        return out.logits[0, -1].float().cpu()

    def request(self, messages: list[dict[str, Any]], task: JsonTask[Any]) -> tuple[str, str | None]:
        """One reply (constrained to ``task.schema`` when ``constrained``); finish is ``stop`` or ``length``."""
        import torch
        from transformers import GenerationConfig, LogitsProcessorList

        msgs = with_format(messages, task) if self.schema_in_prompt else messages
        inputs = self.encode(msgs)
        self.stats["requests"] += 1
        call_seed = self.seed * 1_000_003 + self.stats["requests"]
        tok = self.vlm.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else self.vlm.eos_ids[0]
        sample = self.temperature > 0
        gen = GenerationConfig(max_new_tokens=self.max_tokens, do_sample=sample, eos_token_id=self.vlm.eos_ids,
                               pad_token_id=pad, **({"temperature": self.temperature, "top_k": 0} if sample else {}))
        processors = LogitsProcessorList()
        proc = None
        if self.constrained:
            proc = SchemaLogitsProcessor(self.vlm.grammar_tokenizer(), schema_grammar(task.schema, task.name),
                                         self.vlm.vocab_size, self.vlm.eos_ids, task.name)
            processors.append(proc)
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.inference_mode(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(call_seed)
            out = self.vlm.model.generate(**inputs, generation_config=gen, logits_processor=processors)
        new = out[0, inputs["input_ids"].shape[1]:].tolist()
        ended = bool(new) and new[-1] in self.vlm.eos_ids
        self.stats["tokens"] += len(new)
        if proc is not None and proc.error is not None:
            self.stats["constraint_errors"] += 1
        text = tok.decode(new, skip_special_tokens=True)
        return text, "stop" if ended else "length"


def _bounded(spec: VisionSpec, lo: int | None, hi: int | None) -> VisionSpec:
    return replace(spec, min_pixels=spec.min_pixels if lo is None else int(lo),
                   max_pixels=spec.max_pixels if hi is None else int(hi))


def _decode_data_url(url: str) -> np.ndarray:
    from PIL import Image

    if not url.startswith("data:image/"):
        raise LLMError("a local model takes images as arrays or data: URLs, not links to fetch")
    raw = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"), dtype=np.uint8)


def _sized(frames: np.ndarray, size: int | None) -> np.ndarray:
    """Frames resized to size×size (the agents' ``image_size`` option), as the HTTP client does for PNGs."""
    from PIL import Image

    if not size or frames.shape[1:3] == (size, size):
        return frames
    return np.stack([np.asarray(Image.fromarray(f, "RGB").resize((size, size), Image.BICUBIC)) for f in frames])


def _to_template_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple]]:
    """Neutral (or OpenAI image_url) messages → chat-template messages and the media in order."""
    out, media = [], []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, list):
            out.append({"role": m["role"], "content": "" if content is None else str(content)})
            continue
        parts = []
        for p in content:
            kind = p.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": p["text"]})
            elif kind in ("image", "image_url"):
                img = p["image"] if kind == "image" else _decode_data_url(p["image_url"]["url"])
                media.append(("image", _sized(np.asarray(img, dtype=np.uint8)[None], p.get("size"))[0], None))
                parts.append({"type": "image"})
            elif kind == "video":
                media.append(("video", _sized(np.asarray(p["video"], dtype=np.uint8), p.get("size")),
                              float(p.get("fps") or 1.0)))
                parts.append({"type": "video"})
            else:
                raise LLMError(f"unsupported message part type {kind!r} for a local model")
        out.append({"role": m["role"], "content": parts})
    return out, media
