"""Train the text aligner (``spiral train aligner``): wordings → their canonical wording's MiniLM vector.

Data: the training wordings of :mod:`spiral.world.splits` (canonical text and ``train`` templates)
of every tabletop action except the held-out (object, destination) moves, each with a few purely
syntactic variants (articles dropped, a polite prefix, capitals, a full stop). A fifth of the
non-canonical wordings is kept out for validation. Loss: a contrastive cross-entropy over the
canonical vectors of *all* actions (so "the red block to the left slot" must beat "... far left
slot") plus a cosine term that pins the output to the exact vector the generator knows.

Grounding threshold: ``min_cos`` = the lowest top-1 cosine of a correctly placed validation wording
minus ``slack`` (0.10), so unseen wordings as far from their target as validation ones still ground,
and unrelated text (cosine ~0.7) does not.

Reported, never trained on: the ``eval`` paraphrase templates (the paraphrase-robustness test),
as nearest-canonical accuracy before (mean pooling) and after alignment.

Configured like every trainer: :class:`AlignerConfig` (``spiral train aligner --set key=value``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch.nn import functional as F

from spiral.models.aligner import TextAligner, save_aligner

_PREFIXES = ("", "please ", "now ", "next, ", "then ")


class AlignerConfig(BaseModel):
    """One aligner run (defaults ours: the shipped text_aligner.safetensors' recipe)."""

    model_config = ConfigDict(extra="forbid")
    steps: int = Field(1000, ge=1, description="full-batch optimiser steps (~7 min on a shared 2-core CPU)")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    tau: float = Field(0.05, gt=0, description="temperature of the contrastive cross-entropy over canonical vectors")
    seed: int = Field(0, description="seed of the validation split, the variants and the init")
    hidden: int = Field(512, ge=1, description="hidden width of the aligner MLP")
    cos_weight: float = Field(4.0, ge=0, description="weight of the cosine term that pins the output to the exact "
                                                     "canonical vector")
    slack: float = Field(0.10, ge=0, description="grounding threshold = lowest correct validation top-1 cosine − this")


def _variants(text: str, rng: np.random.Generator, k: int) -> list[str]:
    """``text`` and up to ``k`` syntactic variants (no new content words)."""
    out = {text}
    for _ in range(k * 3):
        t = text
        if rng.random() < 0.5:
            t = " ".join(w for w in t.split() if w not in ("the", "a"))
        t = _PREFIXES[int(rng.integers(len(_PREFIXES)))] + t
        if rng.random() < 0.3:
            t = t[:1].upper() + t[1:]
        if rng.random() < 0.3:
            t += "."
        out.add(t)
        if len(out) > k:
            break
    return sorted(out)


def build_data(seed: int = 0, variants: int = 4) -> dict[str, Any]:
    """Training and validation texts with their target action index; action canonical texts."""
    from spiral.models.text import world_actions
    from spiral.world.splits import is_heldout, paraphrases

    rng = np.random.default_rng(seed)
    actions = world_actions()
    canon = [paraphrases(v, o, "train")[0] for v, o in actions]
    train, val = [], []
    for a, (verb, objs) in enumerate(actions):
        if is_heldout(verb, objs):
            continue
        for j, text in enumerate(paraphrases(verb, objs, "train")):
            dest = val if j > 0 and rng.random() < 0.2 else train
            dest += [(t, a) for t in _variants(text, rng, variants if dest is train else 0)]
    evals = [(t, a) for a, (v, o) in enumerate(actions) for t in paraphrases(v, o, "eval")]
    heldout = [is_heldout(v, o) for v, o in actions]
    return {"actions": actions, "canonical": canon, "train": train, "val": val, "eval": evals, "heldout": heldout}


def nn_accuracy(vecs: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor) -> float:
    return float(((vecs @ targets.T).argmax(1) == labels).float().mean())


def train_aligner(out: str | Path, cfg: AlignerConfig | None = None, **fields: Any) -> dict[str, Any]:
    """Train, pick the best validation step, write ``out`` (safetensors) and its ``.json`` report; ``fields``
    override ``cfg`` (default: :class:`AlignerConfig`)."""
    from spiral.models.text import MiniLMEncoder

    cfg = AlignerConfig.model_validate({**(cfg or AlignerConfig()).model_dump(), **fields})
    steps, lr, tau, seed, hidden = cfg.steps, cfg.lr, cfg.tau, cfg.seed, cfg.hidden
    cos_weight, slack = cfg.cos_weight, cfg.slack
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    data = build_data(seed)
    enc = MiniLMEncoder()
    targets = enc.encode(data["canonical"])  # (A, 384): what the generator was trained on

    def states(pairs: list[tuple[str, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h, m = enc.token_states([t for t, _ in pairs])
        return h, m, torch.tensor([a for _, a in pairs])

    tr, va, ev = states(data["train"]), states(data["val"]), states(data["eval"])
    model = TextAligner(hidden=hidden)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    best, best_state, history = -1.0, None, []
    for step in range(1, steps + 1):
        model.train()
        out_v = model(tr[0], tr[1])
        sims = out_v @ targets.T
        loss = F.cross_entropy(sims / tau, tr[2]) + cos_weight * (1 - (out_v * targets[tr[2]]).sum(-1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                acc = nn_accuracy(model(va[0], va[1]), va[2], targets)
            history.append({"step": step, "loss": round(loss.item(), 5), "val_nn_accuracy": round(acc, 4)})
            if acc >= best:  # later steps win ties: they fit the targets' exact vectors better
                best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        best_cos, idx = (model(va[0], va[1]) @ targets.T).max(dim=1)
    model.vocab = targets.clone()
    model.min_cos = (best_cos[idx == va[2]].min() - slack).clamp(max=1.0)
    report = evaluate(model, enc, data, targets, ev)
    report["min_cos"] = round(float(model.min_cos), 4)
    report |= {"train_texts": len(data["train"]), "val_texts": len(data["val"]), "steps": steps, "lr": lr,
               "tau": tau, "cos_weight": cos_weight, "hidden": hidden, "slack": slack, "seed": seed, "best_val_nn_accuracy": best, "seconds": round(time.perf_counter() - t0, 1),
               "history": history}
    path = save_aligner(model, out, {"train": json.dumps({k: report[k] for k in ("steps", "lr", "tau", "seed")})})
    Path(path).with_suffix(".json").write_text(json.dumps(report, indent=2))
    return report


@torch.no_grad()
def evaluate(model: TextAligner, enc: Any, data: dict[str, Any], targets: torch.Tensor,
             ev: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Nearest-canonical accuracy of the unseen ``eval`` paraphrases (mean pooling vs aligned) and the
    share that grounds onto its own action, onto another one, or nowhere."""
    raw = enc.encode([t for t, _ in data["eval"]])
    aligned = model(ev[0], ev[1])
    grounded, hit = model.ground(aligned)
    own = hit & ((grounded @ targets.T).argmax(1) == ev[2])
    held = torch.tensor([data["heldout"][int(a)] for a in ev[2]])
    move = torch.tensor([data["actions"][int(a)][0] == "move" for a in ev[2]])
    out: dict[str, Any] = {}
    for name, sel in (("all", torch.ones_like(held)), ("moves", move & ~held), ("heldout_moves", held),
                      ("other_verbs", ~move)):
        if sel.any():
            out[name] = {"n": int(sel.sum()),
                         "mean_pooling": round(nn_accuracy(raw[sel], ev[2][sel], targets), 4),
                         "aligned": round(nn_accuracy(aligned[sel], ev[2][sel], targets), 4),
                         "aligned_cosine": round(float((aligned[sel] * targets[ev[2][sel]]).sum(-1).mean()), 4),
                         "grounded_own": round(float(own[sel].float().mean()), 4),
                         "grounded_other": round(float((hit & ~own)[sel].float().mean()), 4),
                         "not_grounded": round(float((~hit)[sel].float().mean()), 4)}
    return {"eval_nn_accuracy": out}
