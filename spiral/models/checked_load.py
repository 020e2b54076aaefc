"""Loading shipped or user-given ``.safetensors`` weights with every check a user needs a clear line for.

A weights file can be unreadable (not safetensors, truncated), describe an architecture the code cannot build,
hold tensors of the wrong names, shapes or kinds (weights of another model), or hold NaN / infinite values (a
training run that diverged). Each of these is one ``ValueError`` naming the file, what is wrong and the fix,
raised when the model is built, which ``spiral run`` does before it creates the run folder. NaN weights would
otherwise load and draw black frames for every attempt.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

M = TypeVar("M", bound=nn.Module)


def read_safetensors(path: str | Path, what: str, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of a safetensors file; anything unreadable is a ValueError naming ``what``."""
    from safetensors import safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
    except Exception as e:  # noqa: BLE001 - safetensors' Rust error type is not importable in every version
        raise ValueError(f"cannot read {what} {path}: not a .safetensors file ({str(e).splitlines()[0]}); give "
                         "the file the trainer wrote") from None
    return tensors, meta


def build(path: str | Path, what: str, make: Callable[[], M]) -> M:
    """``make()`` the architecture a file's metadata describes; a bad description is a ValueError naming it."""
    try:
        return make()
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"{what} {path}: its metadata does not describe a model this version can build "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else e!r})") from None


def load_checked(module: M, tensors: dict[str, torch.Tensor], path: str | Path, what: str) -> M:
    """Load ``tensors`` into ``module`` after checking names, shapes, kinds and finiteness against it."""
    want = module.state_dict()
    missing, unexpected = sorted(set(want) - set(tensors)), sorted(set(tensors) - set(want))
    if missing or unexpected:
        raise ValueError(f"{what} {path} does not fit the architecture in its metadata (missing tensors "
                         f"{missing[:3]}, unexpected {unexpected[:3]}); it is damaged or belongs to another model")
    for name, t in tensors.items():
        w = want[name]
        if tuple(t.shape) != tuple(w.shape):
            raise ValueError(f"{what} {path}: tensor {name} has shape {tuple(t.shape)}, the architecture needs "
                             f"{tuple(w.shape)}; the file is damaged or belongs to another model")
        if t.dtype.is_floating_point != w.dtype.is_floating_point or t.dtype.is_complex:
            raise ValueError(f"{what} {path}: tensor {name} is {t.dtype}, the architecture needs {w.dtype}")
        if t.dtype.is_floating_point and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{what} {path}: tensor {name} holds NaN or infinite values (a diverged training "
                             "run?); retrain, or use an earlier checkpoint")
    module.load_state_dict(tensors)
    return module
