"""VBench-comparable features and scorers for the benchmark, each loaded from a LOCAL path (DESIGN §7).

Which extractor makes which metric is one bench option, ``--features METRIC=SPEC`` (:class:`FeaturesConfig`):

=============  ==========================  ============================================================
metric         default (embedded, no       VBench's protocol and backbone
               weights)
=============  ==========================  ============================================================
subject        ``judge`` (judge backbone)  ``dino:PATH`` — DINO ViT-B/16, CLS token, short side → 224
background     ``colour-layout`` (8×8 RGB) ``clip:PATH`` — CLIP ViT-B/32 image embedding, 224 centre crop
motion         ``all-frames`` (every        ``vbench`` (odd frames from the even ones, linear stand-in) or
               interior frame, linear)      ``vbench:module:factory`` (a plugged interpolator, e.g. AMT-S)
aesthetic      off                         ``laion:CLIP_PATH,HEAD_FILE`` — LAION head on CLIP ViT-L/14
imaging        off                         ``musiq:WEIGHTS`` — MUSIQ from the pyiqa package
=============  ==========================  ============================================================

The preprocessing follows VBench's code (``vbench/utils.py``): a torchvision ``Resize`` of uint8 frames with
``antialias=False`` (bilinear for DINO, bicubic for CLIP; the result rounded back to uint8), CLIP's centre crop,
``/255`` and the backbone's mean/std. torchvision is not a dependency, so the resize is written here with
``torch.nn.functional.interpolate`` the way torchvision calls it. The models are read through transformers
(``ViTModel``/``Dinov2Model``, ``CLIPVisionModelWithProjection``), which loads both a full ``CLIPModel`` folder
and a vision-only one; open_clip checkpoints are not read (open_clip is not installed here).

Every extractor carries :class:`Comparability`: whether its number can be set beside a published VBench one. It
can when the protocol is VBench's AND the model has the published backbone's architecture (we check the shape
from the config; that the weights are the published ones — ``facebook/dino-vitb16``, OpenAI's ViT-B/32 and
ViT-L/14, ``sa_0_4_vit_l_14_linear``, AMT-S — is the user's to ensure). The embedded defaults are not comparable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from spiral.bench.metrics import linear_interpolation, motion_smoothness, vbench_motion_smoothness

DINO_MEAN, DINO_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
CLIP_ARCH = {  # the published OpenAI CLIP image towers VBench reads (vision config fields + projection size)
    "CLIP ViT-B/32": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 32,
                      "image_size": 224, "projection_dim": 512},
    "CLIP ViT-L/14": {"hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16, "patch_size": 14,
                      "image_size": 224, "projection_dim": 768},
}
METRICS = ("subject", "background", "motion", "aesthetic", "imaging")
METRIC_KEYS = {"subject": "subject_consistency", "background": "background_consistency",
               "motion": "motion_smoothness", "aesthetic": "aesthetic_quality", "imaging": "imaging_quality"}


class FeatureUnavailable(ValueError):
    """A requested extractor cannot be built (missing path, wrong model, missing package): one line with the fix."""


@dataclass(frozen=True)
class Comparability:
    """Whether a metric's number can be set beside a published VBench number (None: cannot be checked here)."""

    comparable: bool | None
    why: str

    def to_dict(self) -> dict[str, Any]:
        return {"comparable": self.comparable, "why": self.why}


NOT_VBENCH = Comparability(False, "embedded features, not VBench's model: comparable only between SPIRAL runs")


def comparability(obj: Any) -> Comparability:
    """An extractor's :class:`Comparability` (the embedded ones and plugged-in objects without one: not comparable)."""
    c = getattr(obj, "vbench", None)
    return c if isinstance(c, Comparability) else NOT_VBENCH


class FeaturesConfig(BaseModel):
    """Which features or scorer makes each temporal-coherence / quality metric (``--features METRIC=SPEC``)."""

    model_config = ConfigDict(extra="forbid")

    subject: str | None = Field(None, description="subject consistency: judge (default) | pixels | colour-layout | "
                                "dino:PATH (VBench: DINO ViT-B/16) | clip:PATH | module:factory")
    background: str | None = Field(None, description="background consistency: colour-layout (default) | pixels | "
                                   "clip:PATH (VBench: CLIP ViT-B/32) | dino:PATH | module:factory")
    motion: str | None = Field(None, description="motion smoothness: all-frames (default: every interior frame "
                               "from its neighbours, linear) | vbench (VBench's protocol, linear stand-in for AMT) "
                               "| vbench:module:factory (VBench's protocol, a plugged interpolator such as AMT-S)")
    aesthetic: str | None = Field(None, description="aesthetic quality (off by default): laion:CLIP_PATH,HEAD_FILE "
                                  "(VBench: sa_0_4_vit_l_14_linear on CLIP ViT-L/14)")
    imaging: str | None = Field(None, description="imaging quality (off by default): musiq:WEIGHTS (needs pyiqa)")

    @classmethod
    def parse(cls, items: list[str]) -> FeaturesConfig:
        """From ``METRIC=SPEC`` strings (one clear error for a malformed one or an unknown metric)."""
        out: dict[str, str] = {}
        for item in items:
            key, eq, spec = item.partition("=")
            key = key.strip()
            if not eq or not spec.strip():
                raise ValueError(f"--features {item!r}: expected METRIC=SPEC, e.g. subject=dino:/models/dino-vitb16")
            if key not in METRICS:
                raise ValueError(f"--features {item!r}: unknown metric {key!r}; one of {', '.join(METRICS)}")
            out[key] = spec.strip()
        return cls(**out)


# ---- VBench's preprocessing -------------------------------------------------------------------------------
def vbench_resize(frames: np.ndarray, n: int, mode: str, crop: bool = False) -> Any:
    """T×H×W×3 uint8 → T×3×h×w float tensor of uint8 values: torchvision ``Resize(n, antialias=False)`` (short
    side to ``n``, long side ``int(n·long/short)``, unchanged when already that size) rounded back to uint8 as
    torchvision does for uint8 input, then ``CenterCrop(n)`` when ``crop`` (VBench's ``clip_transform``)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    short, long = min(h, w), max(h, w)
    size = (n, int(n * long / short)) if h <= w else (int(n * long / short), n)
    if (h, w) != size:
        x = F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=False).round().clamp(0, 255)
    if crop:
        h, w = x.shape[-2:]
        top, left = int(round((h - n) / 2.0)), int(round((w - n) / 2.0))
        x = x[..., top:top + n, left:left + n]
    return x


def _normalise(x: Any, mean: tuple, std: tuple) -> Any:
    import torch

    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x / 255.0 - m) / s


def _model_dir(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FeatureUnavailable(f"{what}: no model folder at {path}; pass the local folder written by "
                                 "save_pretrained (nothing is downloaded)")
    if not (p / "config.json").is_file():
        raise FeatureUnavailable(f"{what}: {path} holds no config.json; pass a transformers model folder "
                                 "(save_pretrained)")
    return p


def _arch(cfg: Any, **want: Any) -> list[str]:
    """The config fields that differ from a published architecture (empty: same shape)."""
    return [f"{k}={getattr(cfg, k, None)} (published {v})" for k, v in want.items() if getattr(cfg, k, None) != v]


def _verdict(protocol_ok: bool, mismatch: list[str], published: str) -> Comparability:
    if not protocol_ok:
        return Comparability(False, "not VBench's protocol")
    if mismatch:
        return Comparability(False, f"not the published backbone ({published}): {', '.join(mismatch)}")
    return Comparability(True, f"VBench's protocol on the {published} architecture (the weights must be the "
                               "published ones; only the shape is checked)")


def _batches(frames: np.ndarray, batch: int):
    for i in range(0, len(frames), batch):
        yield frames[i:i + batch]


# ---- consistency features ---------------------------------------------------------------------------------
def dino_comparability(cfg: Any, size: int = 224) -> Comparability:
    """VBench's subject features are DINO ViT-B/16 at 224: a ViT config of that shape at that size is comparable."""
    mismatch = ([f"model_type={cfg.model_type} (published vit)"] if cfg.model_type != "vit" else
                _arch(cfg, hidden_size=768, num_hidden_layers=12, num_attention_heads=12, patch_size=16))
    return _verdict(size == 224, mismatch, "DINO ViT-B/16")


def clip_comparability(vision_cfg: Any, projection_dim: int, published: str = "CLIP ViT-B/32") -> Comparability:
    """VBench's background features are CLIP ViT-B/32's image embeddings, its aesthetic scorer reads ViT-L/14's."""
    want = CLIP_ARCH[published]
    mismatch = _arch(vision_cfg, **{k: v for k, v in want.items() if k != "projection_dim"})
    if projection_dim != want["projection_dim"]:
        mismatch.append(f"projection_dim={projection_dim} (published {want['projection_dim']})")
    return _verdict(True, mismatch, published)


class DinoFeatures:
    """VBench's subject features: the CLS token of a DINO ViT (last layer, after the final layer norm — what the
    DINO hub model returns), frames resized short side → 224 (bilinear), ImageNet mean/std, L2-normalised.
    Reads a transformers ``ViTModel`` (e.g. ``facebook/dino-vitb16``) or ``Dinov2Model`` folder."""

    def __init__(self, path: str, size: int = 224, batch: int = 16):
        from transformers import AutoConfig

        folder = _model_dir(path, "dino features")
        cfg = AutoConfig.from_pretrained(folder)
        if cfg.model_type == "vit":
            from transformers import ViTModel

            self.model = ViTModel.from_pretrained(folder, add_pooling_layer=False)
        elif cfg.model_type == "dinov2":
            from transformers import Dinov2Model

            self.model = Dinov2Model.from_pretrained(folder)
        else:
            raise FeatureUnavailable(f"dino features: {path} is a {cfg.model_type!r} model; expected a ViT (DINO) "
                                     "or DINOv2 folder")
        self.model.eval()
        self.size, self.batch, self.kind = size, batch, cfg.model_type
        self.name = f"dino:{path}"
        self.vbench = dino_comparability(cfg, size)

    def features(self, frames: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _batches(frames, self.batch):
                x = _normalise(vbench_resize(chunk, self.size, "bilinear"), DINO_MEAN, DINO_STD)
                kw = {"interpolate_pos_encoding": True} if self.kind == "vit" else {}
                cls = self.model(pixel_values=x, **kw).last_hidden_state[:, 0]
                out.append(torch.nn.functional.normalize(cls.float(), dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)


class ClipFeatures:
    """VBench's background features: the CLIP image embedding (``encode_image``: the projected pooled token),
    frames resized short side → the model's image size (224) bicubic, centre-cropped, CLIP mean/std,
    L2-normalised. Reads a transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection`` folder."""

    def __init__(self, path: str, batch: int = 16, published: str = "CLIP ViT-B/32"):
        from transformers import AutoConfig, CLIPModel, CLIPVisionModelWithProjection

        folder = _model_dir(path, "clip features")
        cfg = AutoConfig.from_pretrained(folder)
        if cfg.model_type == "clip":  # the full model: its projection size is a top-level field
            full = CLIPModel.from_pretrained(folder).eval()
            self.vision, self.projection = full.vision_model, full.visual_projection
            vcfg, self.dim = cfg.vision_config, int(cfg.projection_dim)
        elif cfg.model_type == "clip_vision_model":
            model = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
            self.vision, self.projection = model.vision_model, model.visual_projection
            vcfg, self.dim = model.config, int(model.config.projection_dim)
        else:
            raise FeatureUnavailable(f"clip features: {path} is a {cfg.model_type!r} model; expected a CLIP folder "
                                     "(CLIPModel or CLIPVisionModelWithProjection)")
        self.size, self.batch = int(vcfg.image_size), batch
        self.name = f"clip:{path}"
        self.vbench = clip_comparability(vcfg, self.dim, published)

    def features(self, frames: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for chunk in _batches(frames, self.batch):
                x = _normalise(vbench_resize(chunk, self.size, "bicubic", crop=True), CLIP_MEAN, CLIP_STD)
                emb = self.projection(self.vision(pixel_values=x).pooler_output)
                out.append(torch.nn.functional.normalize(emb.float(), dim=-1).numpy())
        return np.concatenate(out).astype(np.float32)


# ---- motion smoothness ------------------------------------------------------------------------------------
class MotionScorer:
    """Motion smoothness of a video under one frame protocol and one interpolator."""

    def __init__(self, protocol: str = "all-frames", interpolate: Any = None, interpolator: str = "linear"):
        if protocol not in ("all-frames", "vbench"):
            raise ValueError(f"motion protocol {protocol!r}: all-frames | vbench")
        self.protocol, self.interpolate = protocol, interpolate or linear_interpolation
        self.name = f"{protocol}:{interpolator}"
        if protocol != "vbench":
            self.vbench = Comparability(False, "every interior frame interpolated from its neighbours, not VBench's "
                                               "even→odd protocol")
        elif interpolate is None:
            self.vbench = Comparability(False, "VBench's even→odd protocol, but linear interpolation stands in for "
                                               "its AMT-S model")
        else:
            self.vbench = Comparability(None, f"VBench's even→odd protocol with the plugged interpolator "
                                              f"{interpolator!r}: comparable if it is AMT-S with the published weights")

    def score(self, frames: np.ndarray) -> float:
        fn = vbench_motion_smoothness if self.protocol == "vbench" else motion_smoothness
        return fn(frames, self.interpolate)


# ---- quality scorers --------------------------------------------------------------------------------------
def load_head(path: str) -> list[tuple[Any, Any]]:
    """An aesthetic head's linear layers, in order: ``weight``/``bias`` (LAION's linear predictor, VBench's) or
    ``layers.N.weight``/``bias`` (LAION's improved MLP predictor, whose layers have no activations between
    them). ``.safetensors``, or a ``.pth`` state dict read with ``weights_only=True``."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise FeatureUnavailable(f"aesthetic head: no file at {path}; pass the LAION predictor's weights "
                                 "(.safetensors, or a .pth state dict)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(p))
    else:
        try:
            sd = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FeatureUnavailable(f"aesthetic head: cannot read {path} as a weights-only state dict ({e})") from None
    if set(sd) == {"weight", "bias"}:
        return [(sd["weight"].float(), sd["bias"].float())]
    idx = sorted({int(m.group(1)) for k in sd if (m := re.fullmatch(r"layers\.(\d+)\.(weight|bias)", k))})
    if idx and all(f"layers.{i}.weight" in sd and f"layers.{i}.bias" in sd for i in idx) and len(sd) == 2 * len(idx):
        return [(sd[f"layers.{i}.weight"].float(), sd[f"layers.{i}.bias"].float()) for i in idx]
    raise FeatureUnavailable(f"aesthetic head: {path} has keys {sorted(sd)[:4]}…; expected weight/bias (LAION "
                             "linear) or layers.N.weight/bias (LAION MLP)")


class AestheticScorer:
    """VBench's aesthetic quality: the LAION predictor on L2-normalised CLIP ViT-L/14 image embeddings, divided by
    10, averaged over every frame. The head and the CLIP model are two local paths."""

    metric = "aesthetic_quality"

    def __init__(self, clip_path: str, head_path: str):
        self.clip = ClipFeatures(clip_path, published="CLIP ViT-L/14")
        self.layers = load_head(head_path)
        dim = self.clip.dim
        if self.layers[0][0].shape[1] != dim or self.layers[-1][0].shape[0] != 1:
            raise FeatureUnavailable(f"aesthetic head: {head_path} maps {self.layers[0][0].shape[1]} → "
                                     f"{self.layers[-1][0].shape[0]}; the CLIP model gives {dim}-d embeddings "
                                     "and the head must end in one score")
        self.name = f"laion:{clip_path},{head_path}"
        c = self.clip.vbench
        if c.comparable and len(self.layers) != 1:
            c = Comparability(False, "LAION's MLP predictor; VBench uses the linear one (sa_0_4_vit_l_14_linear)")
        self.vbench = c

    def score(self, frames: np.ndarray) -> float:
        import torch

        x = torch.from_numpy(self.clip.features(frames)).float()
        for w, b in self.layers:
            x = x @ w.T + b
        return float((x[:, 0] / 10.0).mean())


def _musiq_class(weights: str) -> Any:
    """pyiqa's MUSIQ class, once its package and the weights file are known to be there."""
    try:
        from pyiqa.archs.musiq_arch import MUSIQ
    except ImportError:
        raise FeatureUnavailable("imaging quality needs MUSIQ from the pyiqa package, which is not installed "
                                 "(pip install pyiqa); leave --features imaging unset to skip it") from None
    if not Path(weights).expanduser().is_file():
        raise FeatureUnavailable(f"imaging quality: no MUSIQ weights at {weights} (e.g. musiq_spaq_ckpt.pth)")
    return MUSIQ


class MusiqScorer:
    """VBench's imaging quality: MUSIQ (pyiqa's ``MUSIQ(pretrained_model_path=...)``) on every frame, frames whose
    longer side exceeds 512 resized to 512 (VBench's default ``longer`` mode), the mean score / 100.
    Needs the pyiqa package; not exercised by the tests of this checkout, where pyiqa is not installed."""

    metric = "imaging_quality"

    def __init__(self, path: str):
        MUSIQ = _musiq_class(path)
        self.model = MUSIQ(pretrained_model_path=str(Path(path).expanduser())).eval()
        self.name = f"musiq:{path}"
        self.vbench = Comparability(True, "VBench's protocol with pyiqa's MUSIQ (weights: the SPAQ checkpoint)")

    def score(self, frames: np.ndarray) -> float:
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        h, w = x.shape[-2:]
        if max(h, w) > 512:
            s = 512.0 / max(h, w)
            x = F.interpolate(x, size=(int(s * h), int(s * w)), mode="bilinear", align_corners=False,
                              antialias=False).round().clamp(0, 255)
        with torch.inference_mode():
            scores = [float(self.model(x[i:i + 1] / 255.0)) for i in range(len(x))]
        return float(np.mean(scores) / 100.0)


# ---- building them from specs -----------------------------------------------------------------------------
_CACHE: dict[tuple[str, str], Any] = {}


def _import(spec: str) -> Any:
    from spiral.bench.judge import _import as imp

    return imp(spec)


def make_extractor(metric: str, spec: str | None, judge: Any = None) -> Any:
    """The extractor of one metric from its spec (None: the embedded default, or nothing for aesthetic/imaging).
    Model-backed ones are loaded once per process."""
    if metric not in METRICS:
        raise ValueError(f"unknown feature metric {metric!r}; one of {', '.join(METRICS)}")
    if spec is None:
        if metric == "motion":
            return MotionScorer()
        if metric in ("aesthetic", "imaging"):
            return None
    key = (metric, spec or "")
    if key in _CACHE:
        return _CACHE[key]
    obj = _build(metric, spec, judge)
    if spec and spec.split(":", 1)[0] in ("dino", "clip", "laion", "musiq", "vbench"):
        _CACHE[key] = obj
    return obj


def _build(metric: str, spec: str | None, judge: Any) -> Any:
    head, _, rest = (spec or "").partition(":")
    if metric in ("subject", "background"):
        if head == "dino":
            return DinoFeatures(rest)
        if head == "clip":
            return ClipFeatures(rest)
        from spiral.bench.judge import make_features

        return make_features(spec, judge, metric)
    if metric == "motion":
        if spec in ("all-frames", "vbench"):
            return MotionScorer(spec)
        if head == "vbench" and rest:
            obj = _import(rest)
            fn = getattr(obj, "interpolate", obj)
            if not callable(fn):
                raise ValueError(f"motion {spec!r}: {rest} is not an interpolator (interpolate(prev, next) -> frame)")
            return MotionScorer("vbench", fn, getattr(obj, "name", rest))
        raise ValueError(f"motion features {spec!r}: all-frames | vbench | vbench:module:factory")
    if metric == "aesthetic":
        return AestheticScorer(*_laion_paths(spec or ""))
    return MusiqScorer(_musiq_path(spec or ""))


def _laion_paths(spec: str) -> tuple[str, str]:
    head, _, rest = spec.partition(":")
    clip_path, comma, head_path = rest.partition(",")
    if head != "laion" or not comma or not clip_path or not head_path:
        raise ValueError(f"aesthetic features {spec!r}: expected laion:CLIP_PATH,HEAD_FILE")
    return clip_path, head_path


def _musiq_path(spec: str) -> str:
    head, _, rest = spec.partition(":")
    if head != "musiq" or not rest:
        raise ValueError(f"imaging features {spec!r}: expected musiq:WEIGHTS")
    return rest


def check_specs(cfg: FeaturesConfig) -> None:
    """Fail early, before a benchmark writes anything, on a spec whose local files are missing or whose package is
    not installed (the models themselves are loaded where the scoring runs)."""
    for metric in METRICS:
        spec = getattr(cfg, metric)
        if not spec:
            continue
        head, _, rest = spec.partition(":")
        if head in ("dino", "clip") and metric in ("subject", "background"):
            _model_dir(rest, f"{head} features")
        elif metric == "aesthetic":
            clip_path, head_path = _laion_paths(spec)
            _model_dir(clip_path, "aesthetic clip")
            if not Path(head_path).expanduser().is_file():
                raise FeatureUnavailable(f"aesthetic head: no file at {head_path}; pass the LAION predictor's weights")
        elif metric == "imaging":
            _musiq_class(_musiq_path(spec))
        elif metric == "motion" and spec not in ("all-frames", "vbench"):
            _build(metric, spec, None)


FLICKER = Comparability(None, "VBench's formula on every pair of frames; VBench scores it on static-scene prompts "
                              "only, so it compares only on videos of static scenes (not the benchmark's action videos)")


@dataclass
class Extractors:
    """The features and scorers of one benchmark, one per metric (None: the metric is not computed)."""

    subject: Any
    background: Any
    motion: MotionScorer
    scorers: list[Any] = field(default_factory=list)  # aesthetic / imaging quality, when asked for

    def _by_metric(self) -> dict[str, Any]:
        extra = {s.metric: s for s in self.scorers}
        return {"subject_consistency": self.subject, "background_consistency": self.background,
                "motion_smoothness": self.motion, **extra}

    def names(self) -> dict[str, str]:
        """Which features made each metric (recorded with every scored case)."""
        keys = {v: k for k, v in METRIC_KEYS.items()}
        return {keys[m]: obj.name for m, obj in self._by_metric().items()}

    def comparability(self) -> dict[str, dict[str, Any]]:
        """Per metric: can the number be set beside a published VBench number, and why (or why not)."""
        return {"temporal_flickering": FLICKER.to_dict(),
                **{m: comparability(obj).to_dict() for m, obj in self._by_metric().items()}}


def features_config(features: dict[str, str] | None = None, subject: str | None = None,
                    background: str | None = None) -> FeaturesConfig:
    """One :class:`FeaturesConfig` from ``--features`` and the older ``--subject-features``/``--background-features``
    (the same metric given twice, differently, is an error)."""
    merged = dict(features or {})
    for key, spec in (("subject", subject), ("background", background)):
        if spec:
            if merged.get(key, spec) != spec:
                raise ValueError(f"--{key}-features {spec!r} and --features {key}={merged[key]!r} disagree; give one")
            merged[key] = spec
    unknown = sorted(set(merged) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown feature metric {unknown[0]!r}; one of {', '.join(METRICS)}")
    return FeaturesConfig(**merged)


def make_extractors(specs: dict[str, str] | FeaturesConfig, judge: Any = None) -> Extractors:
    """Every extractor of a benchmark from its specs (model-backed ones loaded once per process)."""
    cfg = specs if isinstance(specs, FeaturesConfig) else features_config(specs)
    scorers = [make_extractor(m, getattr(cfg, m)) for m in ("aesthetic", "imaging") if getattr(cfg, m)]
    return Extractors(subject=make_extractor("subject", cfg.subject, judge),
                      background=make_extractor("background", cfg.background, judge),
                      motion=make_extractor("motion", cfg.motion), scorers=scorers)
