"""The benchmark's judge and feature extractors (DESIGN §7).

The judge reads a symbolic :class:`~spiral.world.domain.State` off a frame; it is never the
critic used inside the loop. The default is the independent judge recogniser
(``load_recognizer(role="judge")``: different weights from the critic's). ``truth`` is an
oracle that reads the states the world generator *reports* for the frames it rendered — only
valid for oracle generators, used by tests and to measure the learned judge's own error.

Feature extractors turn frames into vectors for the consistency metrics. They follow the
:class:`FeatureExtractor` protocol, so a user with DINO or CLIP weights plugs one in by
import path (``--subject-features mypkg.feats:dino``); the built-in ones need no weights.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from spiral.world.domain import State


@runtime_checkable
class StateReader(Protocol):
    """Reads the tabletop state shown in one H×W×3 uint8 frame."""

    name: str

    def read_state(self, frame: np.ndarray) -> State: ...


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps T×H×W×3 uint8 frames to T×D float features (compared by cosine similarity)."""

    name: str

    def features(self, frames: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class StepJudge(Protocol):
    """Answers questions about each executed step and the goal (a VLM, ``spiral.bench.judge_vlm``): for videos
    whose frames have no symbolic state to read. The metrics aggregate its answers instead of reading states."""

    name: str

    def judge_step(self, frames: np.ndarray, step: str, goal: str, done: list[str]) -> Any: ...

    def judge_goal(self, last_frame: np.ndarray, goal: str, reference: list[str] | None = None) -> Any: ...


#: judges that ask a vision-language model about each step (spiral.bench.judge_vlm); options from --judge-set
VLM_JUDGES = ("vlm", "transformers-vlm")
#: judges that read tabletop states; they refuse a suite of another world
TABLETOP_JUDGES = ("recognizer", "truth")


def is_tabletop_judge(spec: str) -> bool:
    return spec in TABLETOP_JUDGES or spec.startswith("recognizer:")


def check_judge_world(spec: str, world: str, suite: str) -> None:
    """Refuse to score a suite the judge cannot read (one line naming the fix)."""
    if is_tabletop_judge(spec) and world != "tabletop":
        raise ValueError(f"the tabletop judge (--judge {spec}) reads only tabletop frames; suite {suite} is world "
                         f"{world!r}: use --judge vlm (with --judge-set base_url=... --judge-set model=...)")


class JudgeUnavailable(ImportError):
    """The requested judge cannot be built in this checkout (e.g. its weights have not landed)."""


# ---- feature extractors -----------------------------------------------------------------------
def _pool(frames: np.ndarray, size: int) -> np.ndarray:
    """Area-average T×H×W×3 frames to T×size×size×3 (float, 0..1); H and W need not divide evenly."""
    f = frames.astype(np.float32) / 255.0
    t, h, w, c = f.shape
    ys = np.linspace(0, h, size + 1).astype(int)
    xs = np.linspace(0, w, size + 1).astype(int)
    out = np.empty((t, size, size, c), np.float32)
    for i in range(size):
        for j in range(size):
            out[:, i, j] = f[:, ys[i]:max(ys[i + 1], ys[i] + 1), xs[j]:max(xs[j + 1], xs[j] + 1)].mean(axis=(1, 2))
    return out


class PixelFeatures:
    """Centred, area-pooled RGB (``size``×``size``×3 − 0.5): a model-free stand-in for a backbone."""

    def __init__(self, size: int = 32):
        self.size = size
        self.name = f"pixels{size}"

    def features(self, frames: np.ndarray) -> np.ndarray:
        return (_pool(frames, self.size) - 0.5).reshape(len(frames), -1)


class ColourLayoutFeatures(PixelFeatures):
    """Coarse colour layout (8×8 pooled RGB): what the background looks like, blind to small objects.

    Used for background consistency in the embedded world, where CLIP would be used for real
    footage: it moves with wall/table colour, lighting and drift, barely with a block.
    """

    def __init__(self, size: int = 8):
        super().__init__(size)
        self.name = f"colour-layout{size}"


class RecognizerFeatures:
    """Features from the judge recogniser's backbone: its ``features(frames)`` method, or its net's
    ``features`` on the net's own input transform (``spiral.models.recognizer.to_input``)."""

    def __init__(self, recognizer: Any, name: str = "judge-backbone"):
        if not (callable(getattr(recognizer, "features", None)) or _net_features(recognizer) is not None):
            raise JudgeUnavailable("the judge recogniser exposes no backbone features (features(frames) or net.features)")
        self.recognizer, self.name = recognizer, name

    def features(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        fn = getattr(self.recognizer, "features", None)
        if callable(fn):
            out = fn(frames)
        else:
            out = np.concatenate([_net_features(self.recognizer)(frames[i:i + batch])
                                  for i in range(0, len(frames), batch)])
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        return np.asarray(out, dtype=np.float32).reshape(len(frames), -1)


def _net_features(recognizer: Any) -> Any:
    """A frames → features function from ``recognizer.net.features`` (None when there is none)."""
    net = getattr(recognizer, "net", None)
    if net is None or not callable(getattr(net, "features", None)):
        return None

    def run(frames: np.ndarray) -> np.ndarray:
        import torch

        from spiral.models.recognizer import to_input

        with torch.inference_mode():
            x = to_input(torch.from_numpy(np.ascontiguousarray(frames)))
            return net.features(x).float().numpy()

    return run


def has_backbone(recognizer: Any) -> bool:
    """Whether a recogniser can give backbone features."""
    return callable(getattr(recognizer, "features", None)) or _net_features(recognizer) is not None


def _import(spec: str) -> Any:
    module, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"expected 'module:attribute', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot import {spec!r}: {e}") from None
    return obj() if callable(obj) and not hasattr(obj, "features") and not hasattr(obj, "read_state") else obj


def make_features(spec: str | None, judge: Any = None, role: str = "subject") -> FeatureExtractor:
    """A feature extractor by spec: ``judge`` (the judge's backbone, falling back to pixels),
    ``pixels``, ``colour-layout``, or ``module:factory`` for a user's DINO/CLIP wrapper."""
    spec = spec or ("judge" if role == "subject" else "colour-layout")
    if spec == "judge":
        rec = getattr(judge, "recognizer", None)
        if rec is not None and has_backbone(rec):
            return RecognizerFeatures(rec)
        return PixelFeatures()
    if spec == "pixels":
        return PixelFeatures()
    if spec == "colour-layout":
        return ColourLayoutFeatures()
    obj = _import(spec)
    if not callable(getattr(obj, "features", None)):
        raise ValueError(f"{spec!r} is not a FeatureExtractor (needs a features(frames) method)")
    return obj


# ---- judges -----------------------------------------------------------------------------------
class RecognizerJudge:
    """The independent judge recogniser (``load_recognizer(role='judge')`` or given weights)."""

    def __init__(self, path: str | None = None):
        try:
            from spiral.critics.recognizer import load_recognizer, weights_path
        except ImportError as e:
            raise JudgeUnavailable(
                "the benchmark judge needs the state recogniser (spiral/critics/recognizer.py, "
                f"load_recognizer(role='judge')), which is not in this checkout ({e}); "
                "with an oracle generator use --judge truth") from None
        self._weights = Path(path) if path is not None else weights_path("judge")
        if path is not None and self._weights.resolve() == weights_path("critic").resolve():
            raise ValueError("the benchmark judge must not be the critic's recogniser "
                             f"({path}); use the judge weights (default) or other weights")
        try:
            self.recognizer = load_recognizer(path=path, role="judge")
        except FileNotFoundError as e:
            raise JudgeUnavailable(f"judge weights not found: {e}") from None
        self.name = f"recognizer:{path}" if path else "recognizer:judge"
        self._sha256: str | None = None

    @property
    def identity(self) -> dict[str, Any]:
        """Which weights read the frames (recorded per case): judge-read numbers from other weights are not
        comparable, and ``spiral bench compare`` refuses to pair them."""
        if self._sha256 is None:
            import hashlib

            self._sha256 = hashlib.sha256(self._weights.read_bytes()).hexdigest()
        return {"judge": "recognizer", "weights_sha256": self._sha256}  # the same weights anywhere: the same judge

    def read_state(self, frame: np.ndarray) -> State:
        s = self.recognizer.read_state(frame)
        return s if isinstance(s, State) else State.from_dict(s)

    def read_states(self, frames: np.ndarray) -> list[State]:
        """Batched reading when the recogniser has ``read_states`` (one forward pass for a whole run)."""
        fn = getattr(self.recognizer, "read_states", None)
        if fn is None:
            return [self.read_state(f) for f in frames]
        return [s if isinstance(s, State) else State.from_dict(s) for s in fn(frames)]


class TruthJudge:
    """Oracle judge: the state the world generator reported for each frame it rendered in one run.

    A frame it does not know (e.g. from a generator that reports no states) raises, which the
    metrics count as an unreadable frame.
    """

    name = "truth"

    def __init__(self, known: dict[bytes, State]):
        self._known = known

    @classmethod
    def from_run(cls, run_dir: str | Path) -> TruthJudge:
        from spiral import atomic
        from spiral.rundir import load_frames

        root = Path(run_dir)
        meta = json.loads((root / "meta.json").read_text())
        known: dict[bytes, State] = {}
        first = _first_frame(root)
        if meta.get("initial_state"):
            known[first.tobytes()] = State.from_dict(meta["initial_state"])
        for line in atomic.read_jsonl(root / "attempts.jsonl"):
            end = (line.get("generator_meta") or {}).get("end_state")
            seg = root / line["segment_file"]
            if end is not None and seg.is_file():
                known[np.ascontiguousarray(load_frames(seg)[-1]).tobytes()] = State.from_dict(end)
        return cls(known)

    def read_state(self, frame: np.ndarray) -> State:
        s = self._known.get(np.ascontiguousarray(frame).tobytes())
        if s is None:
            raise ValueError("the truth judge knows only frames the world generator rendered in this run")
        return s


def _first_frame(root: Path) -> np.ndarray:
    from PIL import Image

    return np.ascontiguousarray(np.asarray(Image.open(root / "first_frame.png").convert("RGB")))


_CACHE: dict[str, Any] = {}


def make_judge(spec: str, run_dir: str | Path | None = None, options: dict[str, Any] | None = None
               ) -> StateReader | StepJudge:
    """A judge by spec: ``recognizer`` (default), ``recognizer:PATH``, ``truth`` (per run), ``vlm`` or
    ``transformers-vlm`` (a :class:`StepJudge` built from ``options``) or ``module:factory``.

    Learned judges are loaded once per process and reused across cases.
    """
    if spec == "truth":
        if run_dir is None:
            raise ValueError("the truth judge reads a run directory; pass run_dir")
        return TruthJudge.from_run(run_dir)
    if options and spec not in VLM_JUDGES:
        raise ValueError(f"--judge-set options are for --judge vlm or transformers-vlm; the {spec} judge takes none")
    key = spec + (json.dumps(options, sort_keys=True, default=str) if options else "")
    if key in _CACHE:
        return _CACHE[key]
    if spec in VLM_JUDGES:
        from spiral.bench.judge_vlm import TransformersVLMJudge, VLMJudge

        _CACHE[key] = (VLMJudge if spec == "vlm" else TransformersVLMJudge).from_options(options or {})
        return _CACHE[key]
    if spec == "recognizer" or spec.startswith("recognizer:"):
        judge: Any = RecognizerJudge(spec.partition(":")[2] or None)
    else:
        judge = _import(spec)
        if not callable(getattr(judge, "read_state", None)) and not isinstance(judge, StepJudge):
            raise ValueError(f"{spec!r} is not a judge (needs read_state(frame) -> State, or judge_step and "
                             "judge_goal)")
    _CACHE[key] = judge
    return judge
