"""What a bench worker keeps between cases: its agents, built once, on its own device.

A worker (the driver running cases itself, a process of the local pool, a Ray actor) runs many cases with one
config; loading a diffusers pipeline or a VLM for each case would cost more than the case. :class:`AgentCache`
builds each agent (planner, generator, critic) the first time a case asks for it and hands the same object to
the later cases whose backend name and options (after the case's overrides and the device placement) are the
same; a case with other options gets a new agent, and the old one of that kind is let go first, so a worker
holds one agent of each kind at most (GPU memory). Reusing an agent gives the same results as building it
again: agents hold no per-run state (the loop passes every seed in the request) and their caches are keyed by
content. Judges and feature extractors are cached per process in their own modules.

Devices: worker ``i`` of a machine with ``n > 1`` visible GPUs runs the backends whose ``device`` option is
``cuda`` or ``auto`` on ``cuda:(i mod n)`` (:func:`worker_device`); a Ray actor sees only the GPUs Ray gave it,
so the same rule spreads actors that share a node's GPUs and leaves one GPU per actor as it is. The run folder's
``config.yaml`` keeps the config as given; the case's result says where it ran (:func:`describe_agents`).
"""

from __future__ import annotations

import json
from typing import Any

from spiral import registry
from spiral.config import BackendConfig, Config
from spiral.loop import Agents

#: option names whose text value says which model a backend runs (hub id, folder, weights file), first found wins
MODEL_ID_OPTIONS = ("model", "weights", "recognizer")


def worker_device(device: str, worker: int, n_gpus: int) -> str:
    """The device worker ``worker`` runs a backend on whose ``device`` option is ``device``: ``cuda`` or ``auto``
    become ``cuda:(worker mod n_gpus)`` when several GPUs are visible; a CPU, a numbered GPU or a single GPU stay."""
    if n_gpus > 1 and device in ("cuda", "auto"):
        return f"cuda:{worker % n_gpus}"
    return device


def visible_gpus() -> int:
    """How many CUDA devices this process sees (0 without CUDA); does not initialise CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _full_options(kind: str, name: str, options: dict[str, Any]) -> dict[str, Any]:
    """Every option of the backend with its default filled in (by the names the config uses)."""
    from spiral.options import options_model

    model = options_model(registry.resolve(kind, name)).model_validate(options)
    return model.model_dump(by_alias=True)


class AgentCache:
    """One worker's agents, built on first use and reused by every case with the same backend config."""

    def __init__(self, worker: int = 0, n_gpus: int | None = None):
        self.worker = worker
        self._n_gpus = n_gpus
        self._slots: dict[str, tuple[str, Any]] = {}  # kind -> (key, agent)
        self.built = 0  # agents constructed so far (a reused one is not counted again)
        self._healthy: set[tuple[str, str]] = set()  # (kind, key) of agents whose endpoint answered

    @property
    def n_gpus(self) -> int:
        if self._n_gpus is None:
            self._n_gpus = visible_gpus()
        return self._n_gpus

    def placed(self, kind: str, backend: BackendConfig) -> dict[str, Any]:
        """The backend's options with its device moved to this worker's GPU (unchanged on a CPU or one GPU)."""
        options = dict(backend.options)
        if self.n_gpus > 1:
            device = _full_options(kind, backend.name, options).get("device")
            if isinstance(device, str) and worker_device(device, self.worker, self.n_gpus) != device:
                options["device"] = worker_device(device, self.worker, self.n_gpus)
        return options

    def agent(self, kind: str, backend: BackendConfig) -> Any:
        """The ``kind`` agent of ``backend``: the one built for the same name and options, else a new one."""
        options = self.placed(kind, backend)
        key = json.dumps([backend.name, options], sort_keys=True, default=str)
        slot = self._slots.get(kind)
        if slot is None or slot[0] != key:
            self._slots.pop(kind, None)  # let the old agent go before loading the next (memory)
            self._slots[kind] = (key, registry.create(kind, backend.name, **options))
            self.built += 1
        return self._slots[kind][1]

    def agents(self, cfg: Config) -> Agents:
        """The three agents of a run's config (``spiral.api.run(build=...)``); the planner and the critic are asked
        whether their endpoints answer (until they once do) before the generator loads (``spiral.agents.check_health``)."""
        from spiral.agents import check_health

        planner, critic = self.agent("planner", cfg.planner), self.agent("critic", cfg.critic)
        unchecked = {k: a for k, a in (("planner", planner), ("critic", critic)) if (k, self._slots[k][0]) not in
                     self._healthy}
        check_health(**unchecked)  # raises for the first that does not answer: asked again by the next case
        self._healthy |= {(k, self._slots[k][0]) for k in unchecked}
        return Agents(planner=planner, generator=self.agent("generator", cfg.generator), critic=critic)

    def describe(self, cfg: Config) -> dict[str, Any]:
        """Which backends, model ids and devices this worker runs ``cfg`` with (written into each case's result)."""
        out: dict[str, Any] = {}
        for kind in ("planner", "generator", "critic"):
            backend: BackendConfig = getattr(cfg, kind)
            full = _full_options(kind, backend.name, self.placed(kind, backend))
            entry: dict[str, Any] = {"name": backend.name}
            model = next((full[k] for k in MODEL_ID_OPTIONS if isinstance(full.get(k), str)), None)
            if model is not None:  # a backend on its shipped weights names none
                entry["model"] = model
            if isinstance(full.get("device"), str):
                entry["device"] = _resolved(full["device"])
            out[kind] = entry
        return out


def cuda_backends(cfg: Config) -> list[str]:
    """The agents of ``cfg`` whose ``device`` option names a CUDA device (``cuda``, ``cuda:1``), as ``kind name``."""
    out = []
    for kind in ("planner", "generator", "critic"):
        backend: BackendConfig = getattr(cfg, kind)
        device = _full_options(kind, backend.name, dict(backend.options)).get("device")
        if isinstance(device, str) and device.startswith("cuda"):
            out.append(f"{kind} {backend.name}")
    return out


def _resolved(device: str) -> str:
    """``auto`` as the backends resolve it (a GPU when one is visible); any other name as given."""
    return ("cuda" if visible_gpus() else "cpu") if device == "auto" else device
