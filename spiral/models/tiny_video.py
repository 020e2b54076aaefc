"""TinyVideoDiT: a small text+image-to-video rectified-flow transformer that runs on a CPU.

Shaped like the real TI2V models (Wan 2.x, CogVideoX), scaled down to 64×64 and 3.9 M parameters;
every choice below is about CPU time, which is FLOPs ≈ 2 × tokens × parameters per forward. The
default (width 192, depth 6, 128 + 4 tokens) is ~0.85 GFLOP per forward, so 10 Euler steps stay
inside the 0.25 s-per-segment budget on 2 cores and training does tens of samples/s; width 256
at the same token count was ~1.5× slower per forward, and tubelet 8 (64 tokens, width 256) cost the
same as this but decodes 8 frames per token from one feature.

* **Pixel space, 8×8 patches.** A VAE would cost more CPU time than it saves at 64×64 and would
  blur the 6-pixel blocks that the critic has to read; 8×8 patches give 64 tokens per frame.
* **Tubelets over time.** The ``num_frames`` new frames are grouped into tubelets of ``tubelet``
  frames (the time compression that Wan's VAE does), so a segment is ``num_frames/tubelet × 64``
  tokens: 128 at the default 8 frames / tubelet 4.
* **Wan-style image conditioning.** Each token's input is its patch of x_t ‖ the conditioning
  frame ‖ the memory's scene anchor frame ‖ a mask over (known frame, new frames) that is 1 on the
  known frame — channel concatenation, so the static background is a pixel-aligned copy away.
  Wan puts the conditioning latent at frame 0 only and lets attention carry it; we give it to
  every tubelet because copying the background is most of the job at this size. Only the new
  frames are the flow state (like Wan 2.2 TI2V, which keeps the known latent clean).
* **Joint space-time attention with in-context text tokens** (MMDiT/CogVideoX style). At ~130
  tokens one full attention is cheaper than factorized space + time attention (one set of QKV/out
  projections instead of two; the N² score term is small), and 4 text tokens in the sequence give
  every patch cross-attention to the instruction at almost no cost.
* **Text**: a frozen 384-d sentence embedding (MiniLM) → 4 context tokens + the adaLN conditioning
  vector (with the noise level). A learned null embedding replaces the text 10 % of the time in
  training, which enables classifier-free guidance.
* **adaLN-single modulation** (PixArt-α): one projection of the conditioning vector shared by all
  blocks plus a learned per-block offset, gates zero-initialised, so blocks start as the identity
  and the parameter budget goes to attention and MLPs instead of modulation tables.
* **x-prediction, velocity interface.** A token outputs 4×8×8×3 = 768 numbers from a 192-wide
  feature; noise that dense cannot pass through that bottleneck, so (as in JiT, "Back to Basics:
  Let Denoising Generative Models Denoise") the network predicts the clean frames — as a residual
  on the conditioning frame, so an untrained model predicts "nothing moves" — and the velocity
  ``v = (x_t − x̂_0)/σ`` (σ clamped at ``sigma_min``) is what :meth:`TinyVideoDiT.forward` returns
  and what training regresses, so samplers and GRPO see an ordinary velocity model (:mod:`spiral.flow`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class TinyVideoConfig:
    """Architecture and conditioning of :class:`TinyVideoDiT`; stored in the weights file's metadata."""

    resolution: int = 64
    num_frames: int = 8  # new frames after the conditioning frame
    patch: int = 8
    tubelet: int = 4
    dim: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    text_dim: int = 384
    text_tokens: int = 4
    text_encoder: str = "minilm"
    shift: float = 2.0  # time shift of training noise levels and of the default sampling schedule
    sigma_min: float = 0.05  # clamp of σ in v = (x_t − x̂_0)/σ

    def __post_init__(self) -> None:
        if self.resolution % self.patch:
            raise ValueError(f"resolution {self.resolution} must be a multiple of the patch size {self.patch}")
        if self.num_frames % self.tubelet:
            raise ValueError(f"num_frames {self.num_frames} must be a multiple of the tubelet size {self.tubelet}")
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} must be divisible by heads {self.heads}")

    @property
    def slices(self) -> int:
        """Time slices (tubelets) in the token grid."""
        return self.num_frames // self.tubelet

    @property
    def patches_per_frame(self) -> int:
        return (self.resolution // self.patch) ** 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TinyVideoConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"weights were made by a newer TinyVideoDiT (unknown config keys {unknown})")
        return cls(**data)


def timestep_embedding(sigma: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of σ·1000 (B,) → (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=sigma.device) / half)
    args = sigma.float()[:, None] * 1000.0 * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale[:, None]) + shift[:, None]


class Block(nn.Module):
    """Pre-norm transformer block: joint self-attention + MLP, each with adaLN shift/scale/gate."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.q_norm = nn.LayerNorm(dim // heads, eps=1e-6)  # QK-norm keeps attention logits tame at high lr
        self.k_norm = nn.LayerNorm(dim // heads, eps=1e-6)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.mod_offset = nn.Parameter(torch.randn(6, dim) / dim**0.5)  # adaLN-single per-block table

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = (mod + self.mod_offset[None]).unbind(1)
        B, N, D = x.shape
        h = modulate(self.norm1(x), shift1, scale1)
        q, k, v = self.qkv(h).view(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(self.q_norm(q), self.k_norm(k), v)
        x = x + gate1[:, None] * self.proj(h.transpose(1, 2).reshape(B, N, D))
        h = modulate(self.norm2(x), shift2, scale2)
        return x + gate2[:, None] * self.mlp(h)


class TinyVideoDiT(nn.Module):
    """Predicts the velocity of the new frames given x_t, σ, text embedding, conditioning and anchor frames.

    Shapes: ``x_t`` (B, F, 3, H, W) in data units ([-1, 1] for clean frames); ``sigma`` (B,);
    ``text`` (B, text_dim); ``cond`` and ``anchor`` (B, 3, H, W) in [-1, 1]. Returns (B, F, 3, H, W).
    """

    def __init__(self, config: TinyVideoConfig | None = None):
        super().__init__()
        self.config = c = config or TinyVideoConfig()
        p2 = c.patch * c.patch
        in_features = (c.tubelet + 2) * 3 * p2 + (c.tubelet + 1) * p2  # x_t tubelet ‖ cond ‖ anchor ‖ mask
        self.patch_embed = nn.Linear(in_features, c.dim)
        self.pos_space = nn.Parameter(torch.randn(c.patches_per_frame, c.dim) * 0.02)
        self.pos_time = nn.Parameter(torch.randn(c.slices, c.dim) * 0.02)
        self.null_text = nn.Parameter(torch.randn(c.text_dim) / c.text_dim**0.5)
        self.text_tokens = nn.Linear(c.text_dim, c.text_tokens * c.dim) if c.text_tokens else None
        self.text_norm = nn.LayerNorm(c.dim, eps=1e-6)
        self.t_mlp = nn.Sequential(nn.Linear(c.dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.y_mlp = nn.Sequential(nn.Linear(c.text_dim, c.dim), nn.SiLU(), nn.Linear(c.dim, c.dim))
        self.mod = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 6 * c.dim))
        self.blocks = nn.ModuleList(Block(c.dim, c.heads, c.mlp_ratio) for _ in range(c.depth))
        self.norm_out = nn.LayerNorm(c.dim, eps=1e-6)
        self.mod_out = nn.Sequential(nn.SiLU(), nn.Linear(c.dim, 2 * c.dim))
        self.head = nn.Linear(c.dim, c.tubelet * 3 * p2)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        # adaLN-Zero: gates start at 0 so every block is the identity; the head starts at x̂_0 = conditioning frame.
        nn.init.zeros_(self.mod[1].weight)
        nn.init.zeros_(self.mod[1].bias)
        for blk in self.blocks:
            with torch.no_grad():
                blk.mod_offset[2].zero_()
                blk.mod_offset[5].zero_()
        nn.init.zeros_(self.mod_out[1].weight)
        nn.init.zeros_(self.mod_out[1].bias)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- tokens <-> frames -------------------------------------------------------------------
    def _tokens(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, T, C, H, W) with T a multiple of the tubelet → (B, T/tubelet, P, tubelet·C·p·p)."""
        c = self.config
        B, T, C, H, W = frames.shape
        p, k = c.patch, min(c.tubelet, T)
        x = frames.reshape(B, T // k, k, C, H // p, p, W // p, p).permute(0, 1, 4, 6, 2, 3, 5, 7)
        return x.reshape(B, T // k, (H // p) * (W // p), k * C * p * p)

    def _frames(self, tokens: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`_tokens` for the new frames: (B, S, P, tubelet·3·p·p) → (B, S·tubelet, 3, H, W)."""
        c = self.config
        B, S = tokens.shape[:2]
        p, g, k = c.patch, c.resolution // c.patch, c.tubelet
        x = tokens.reshape(B, S, g, g, k, 3, p, p).permute(0, 1, 4, 5, 2, 6, 3, 7)
        return x.reshape(B, S * k, 3, c.resolution, c.resolution)

    def embed_text(self, text: torch.Tensor | None, batch: int, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Text embeddings (B, text_dim), with the learned null embedding where ``text`` is None or ``drop`` is set."""
        null = self.null_text[None].expand(batch, -1)
        if text is None:
            return null
        if drop is not None:
            return torch.where(drop[:, None], null, text)
        return text

    def predict_x0(self, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, cond: torch.Tensor,
                   anchor: torch.Tensor) -> torch.Tensor:
        """The clean new frames x̂_0 (B, F, 3, H, W): the conditioning frame plus a predicted change."""
        c = self.config
        B, Fr = x_t.shape[:2]
        if Fr != c.num_frames or x_t.shape[-1] != c.resolution or x_t.shape[-2] != c.resolution:
            raise ValueError(f"x_t has shape {tuple(x_t.shape)}; this model generates "
                             f"(B, {c.num_frames}, 3, {c.resolution}, {c.resolution})")
        S, P, p2 = c.slices, c.patches_per_frame, c.patch * c.patch
        x_tok = self._tokens(x_t)  # (B, S, P, tubelet·3p²)
        cond_tok = self._tokens(cond[:, None])  # (B, 1, P, 3p²)
        anchor_tok = self._tokens(anchor[:, None])
        mask = torch.zeros(B, S, P, c.tubelet + 1, p2, dtype=x_t.dtype, device=x_t.device)
        mask[:, :, :, 0] = 1.0  # (known frame, new frames): only the conditioning frame is known
        feats = torch.cat([x_tok, cond_tok.expand(-1, S, -1, -1), anchor_tok.expand(-1, S, -1, -1),
                           mask.flatten(3)], dim=-1)
        h = self.patch_embed(feats) + self.pos_space[None, None] + self.pos_time[None, :, None]
        h = h.reshape(B, S * P, c.dim)

        cvec = self.t_mlp(timestep_embedding(sigma, c.dim)) + self.y_mlp(text)
        mod = self.mod(cvec).view(B, 6, c.dim)
        n_text = 0
        if self.text_tokens is not None:
            ctx = self.text_norm(self.text_tokens(text).view(B, c.text_tokens, c.dim))
            h = torch.cat([ctx, h], dim=1)
            n_text = c.text_tokens
        for blk in self.blocks:
            h = blk(h, mod)
        shift, scale = self.mod_out(cvec).chunk(2, dim=-1)
        h = self.head(modulate(self.norm_out(h[:, n_text:]), shift, scale))
        delta = self._frames(h.view(B, S, P, -1))
        return cond[:, None] + delta

    def forward(self, x_t: torch.Tensor, sigma: torch.Tensor, text: torch.Tensor, cond: torch.Tensor,
                anchor: torch.Tensor) -> torch.Tensor:
        """Velocity v = (x_t − x̂_0)/max(σ, sigma_min), shape of x_t."""
        x0 = self.predict_x0(x_t, sigma, text, cond, anchor)
        s = sigma.to(x_t.dtype).clamp(min=self.config.sigma_min).view(-1, 1, 1, 1, 1)
        return (x_t - x0) / s


# --- weights I/O (safetensors only) -----------------------------------------------------------

def save_weights(model: TinyVideoDiT, path: str | Path, extra_meta: dict[str, str] | None = None) -> Path:
    """Write the state dict as safetensors with the config (and any extra strings) in the metadata."""
    from safetensors.torch import save_file

    from spiral.atomic import atomic_path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": "pt", "model": "TinyVideoDiT", "config": model.config.to_json(), **(extra_meta or {})}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_weights(path: str | Path, map_location: str = "cpu") -> tuple[TinyVideoDiT, dict[str, str]]:
    """Build a model from a safetensors file written by :func:`save_weights`; returns (model, metadata).

    Unreadable files, foreign metadata, tensors that do not fit and NaN weights are clear ValueErrors
    (``spiral.models.checked_load``)."""
    from spiral.models.checked_load import build, load_checked, read_safetensors

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no TinyVideoDiT weights at {path} (train them with `spiral train generator`)")
    what = "TinyVideoDiT weights"
    tensors, meta = read_safetensors(path, what, device=map_location)
    if meta.get("model") != "TinyVideoDiT" or "config" not in meta:
        raise ValueError(f"{path} is not a TinyVideoDiT weights file (metadata model={meta.get('model')!r})")
    model = build(path, what, lambda: TinyVideoDiT(TinyVideoConfig.from_json(meta["config"])))
    return load_checked(model, tensors, path, what).eval(), meta


SAMPLER_KEYS = ("cfg_scale", "cfg_max_sigma", "cfg_tau", "keep_tau")


def set_sampler(path: str | Path, out: str | Path | None = None, **changes: float | None) -> Path:
    """Rewrite a weights file's default sampler (metadata ``sampler``, read by ``spiral.generators.tiny``)
    with the tensors untouched, e.g. a ``keep_tau`` chosen on the benchmark after training; None removes a
    key. Writes ``out`` (default: in place)."""
    import json

    unknown = sorted(set(changes) - set(SAMPLER_KEYS))
    if unknown:
        raise ValueError(f"unknown sampler option(s) {unknown}; the tiny generator's sampler takes {list(SAMPLER_KEYS)}")
    model, meta = load_weights(path)
    sampler = {**json.loads(meta.get("sampler", "{}")), **changes}
    meta["sampler"] = json.dumps({k: v for k, v in sampler.items() if v is not None})
    return save_weights(model, out or path, {k: v for k, v in meta.items() if k not in ("format", "model", "config")})
