"""What every trainer repeats: the EMA of the trained weights, checkpoints that resume exactly, the run log.

* :class:`EMA` — an exponential moving average of named tensors (optionally with the warm-up ramp of the
  generator's pretraining), swapped into the live weights for evaluation and export.
* :func:`save_tensors` / :func:`save_state` / :func:`load_state` — a checkpoint folder: weights as safetensors,
  the rest (optimizer, counters, random-generator states) as a ``torch.save`` dict of tensors and numbers that is
  read back with ``weights_only=True``; every file is written atomically. :func:`rng_state` and
  :func:`set_rng_state` put the torch generators into that dict, so ``--resume`` takes exactly the step an
  uninterrupted run would.
* :class:`RunLog` — ``log.jsonl`` (one JSON record per line, appended) plus TensorBoard scalars when tensorboard
  is installed.
* :func:`end_distributed` — the last call of a torchrun run: every rank leaves the process group together.

Used by ``spiral.train.generator`` (pretraining), ``spiral.train.grpo`` (self-evolution) and
``spiral.train.reverse`` (hindsight by time reversal).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch


class EMA(Mapping[str, torch.Tensor]):
    """Exponential moving average of named tensors: ``shadow ← shadow + (1 − d)·(live − shadow)`` per update.
    Reads like the mapping of averaged tensors (``ema[name]``, ``ema.items()``).

    ``shadow`` may be given (e.g. the parameters of a separate EMA copy of a module, updated in place);
    otherwise it starts as a copy of ``params``. With ``warmup``, the decay of update k is
    ``min(decay, (1 + k) / (10 + k))``, so the average is not dominated by the random init (the generator's
    pretraining); without it the decay is constant (GRPO and the reversal fine-tune, as Flow-GRPO).
    """

    def __init__(self, params: Mapping[str, torch.Tensor], decay: float, warmup: bool = False,
                 shadow: Mapping[str, torch.Tensor] | None = None):
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.shadow: dict[str, torch.Tensor] = (dict(shadow) if shadow is not None
                                                else {n: p.detach().clone() for n, p in params.items()})

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.shadow[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.shadow)

    def __len__(self) -> int:
        return len(self.shadow)

    @torch.no_grad()
    def update(self, params: Mapping[str, torch.Tensor], step: int = 0) -> None:
        """Move the average towards ``params``; ``step`` (0-based) sets the warm-up decay."""
        d = min(self.decay, (1 + step) / (10 + step)) if self.warmup else self.decay
        names = list(self.shadow)
        torch._foreach_lerp_([self.shadow[n] for n in names], [params[n].detach() for n in names], 1 - d)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """A CPU copy of the average (later updates do not change it)."""
        return {n: t.detach().to("cpu", copy=True).contiguous() for n, t in self.shadow.items()}

    @torch.no_grad()
    def load_state_dict(self, tensors: Mapping[str, torch.Tensor]) -> None:
        for n, t in self.shadow.items():
            t.copy_(tensors[n].to(t.device))

    @contextlib.contextmanager
    def swapped_in(self, params: Mapping[str, torch.Tensor]) -> Iterator[None]:
        """The average copied into ``params`` for the duration (evaluation, export); the live values after."""
        live = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.shadow[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(live[n])


# ------------------------------------------------------------------------------------------- checkpoints


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], meta: dict[str, str] | None = None) -> Path:
    """Tensors as one safetensors file, written atomically."""
    from safetensors.torch import save_file

    from spiral.atomic import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp), metadata=meta)
    return Path(path)


def save_state(path: Path, state: dict[str, Any]) -> Path:
    """Optimizer state, counters and generator states (tensors, numbers, lists, dicts) with ``torch.save``,
    written atomically; read back by :func:`load_state`."""
    from spiral.atomic import atomic_path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_state(path: Path) -> dict[str, Any]:
    """A :func:`save_state` dict; never unpickles code (``weights_only=True``)."""
    return torch.load(path, weights_only=True, map_location="cpu")


def rng_state(generators: Mapping[str, torch.Generator | None]) -> dict[str, torch.Tensor]:
    """The states of named generators; ``None`` names torch's global CPU generator."""
    return {k: (torch.get_rng_state() if g is None else g.get_state()) for k, g in generators.items()}


def set_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator | None]) -> None:
    """Restore what :func:`rng_state` saved (names missing from ``state`` are left alone)."""
    for k, g in generators.items():
        if k in state:
            torch.set_rng_state(state[k]) if g is None else g.set_state(state[k])


# ------------------------------------------------------------------------------------------------ devices


def rank_device(device: str) -> str:
    """The device of this process: under torchrun (``LOCAL_RANK`` set) a CUDA device — ``cuda``, or ``auto`` on a
    machine with CUDA — becomes ``cuda:<LOCAL_RANK>``, so each rank takes its own GPU; anything else is kept."""
    import os

    local = os.environ.get("LOCAL_RANK")
    if local is not None and (device == "cuda" or (device == "auto" and torch.cuda.is_available())):
        return f"cuda:{int(local)}"
    return device


# ------------------------------------------------------------------------------------------------- logs


def end_distributed() -> None:
    """Leave the process group, if any: a barrier (no rank exits while another still exports or checkpoints),
    then ``destroy_process_group``. A rank that exits with gloo's threads still running can abort at interpreter
    exit ("terminate called without an active exception", SIGABRT), failing a run that had finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def tensorboard_writer(out: Path) -> Any:
    """A TensorBoard ``SummaryWriter`` in ``out/tb``, or None when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    return SummaryWriter(str(Path(out) / "tb"))


class RunLog:
    """A run's ``log.jsonl`` (appended, one record per line) and its TensorBoard scalars."""

    def __init__(self, out: Path, name: str = "log.jsonl", tensorboard: bool = True):
        self.path = Path(out) / name
        self.writer = tensorboard_writer(out) if tensorboard else None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record to the jsonl file."""
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """TensorBoard scalars ``{tag: value}`` at ``step`` (nothing without tensorboard)."""
        if self.writer is not None:
            for tag, v in values.items():
                self.writer.add_scalar(tag, v, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
