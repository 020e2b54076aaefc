"""The text aligner: maps any wording of a sub-action onto the embedding of its canonical wording.

The tiny generator is conditioned on one pooled MiniLM vector per sub-action. Mean pooling weighs
every token alike, so a re-worded instruction ("carry the red one over to the far left spot") lands
nearer to other actions than to its own: only 72 % of unseen move paraphrases had their own action
as nearest training wording. The aligner reads MiniLM's *token* states instead, learns which tokens
carry the action (colour, destination, verb) with an attention pooling, and adds a residual MLP.
At initialisation it is exactly MiniLM's mean pooling, so it only learns a correction.

Aligned is not enough for this generator: it learned a closed set of instruction vectors, and
aligned vectors of unseen wordings (cosine ~0.94 to their target) still fail half the time. So the
aligner also *grounds*: it keeps the vectors of the world's canonical instructions (``vocab``) and
returns the nearest one when the cosine clears ``min_cos`` (set from the validation wordings, see
``spiral/train/aligner.py``). Text that grounds nowhere ("replace the laptop's RAM") keeps its
aligned vector, so the generator still sees what it was asked.

It is trained on the training wordings alone (``spiral train aligner``), never on the
paraphrase-evaluation templates nor on the held-out (object, destination) moves.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

ALIGNER_WEIGHTS = Path(__file__).resolve().parent / "weights" / "text_aligner.safetensors"


class TextAligner(nn.Module):
    """Attention pooling over token states plus a residual MLP; starts as mean pooling."""

    def __init__(self, dim: int = 384, hidden: int = 256):
        super().__init__()
        self.dim, self.hidden = dim, hidden
        self.register_buffer("vocab", torch.zeros(0, dim))  # canonical instruction vectors, set by training
        self.register_buffer("min_cos", torch.tensor(1.0))
        self.score = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        self.mlp = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        for last in (self.score[-1], self.mlp[-1]):  # zero: uniform attention, no correction
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, T, dim) token states and their (N, T) attention mask → (N, dim) unit vectors."""
        valid = mask.bool()
        logits = self.score(hidden).squeeze(-1).masked_fill(~valid, float("-inf"))
        pooled = (logits.softmax(dim=-1).unsqueeze(-1) * hidden).sum(1)
        return F.normalize(pooled + self.mlp(pooled), dim=-1)

    def ground(self, aligned: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Snap each aligned vector to its nearest ``vocab`` vector where the cosine is ≥ ``min_cos``;
        returns the vectors and which rows were grounded."""
        if not len(self.vocab):
            return aligned, torch.zeros(len(aligned), dtype=torch.bool)
        best, idx = (aligned @ self.vocab.T).max(dim=1)
        hit = best >= self.min_cos
        return torch.where(hit.unsqueeze(1), self.vocab[idx], aligned), hit


def save_aligner(model: TextAligner, path: str | Path, meta: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    from spiral.atomic import atomic_path

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    with atomic_path(Path(path)) as tmp:
        save_file(state, str(tmp), metadata={"dim": str(model.dim), "hidden": str(model.hidden), **(meta or {})})
    return Path(path)


def load_aligner(path: str | Path = ALIGNER_WEIGHTS) -> TextAligner:
    """A trained aligner from safetensors (no pickle)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"no text aligner at {path}: train one with `spiral train aligner --out {path}`")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    state = load_file(str(path))
    model = TextAligner(int(meta.get("dim", 384)), int(meta.get("hidden", 256)))
    model.vocab = torch.zeros_like(state.get("vocab", model.vocab))  # its size is the world's action count
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)
