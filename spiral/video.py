"""Video files: mp4 read/write through PyAV (no ffmpeg binary needed), written atomically.

Two encodings: ``quality="data"`` (H.264 4:4:4, near-lossless; datasets and segments,
so colours of 64×64 frames survive) and ``quality="web"`` (H.264 4:2:0, plays in browsers;
final videos for reports).
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from spiral.atomic import atomic_path
from spiral.types import check_frames

_PRESETS = {
    "data": {"pix_fmt": "yuv444p", "options": {"crf": "4", "preset": "medium"}},
    "web": {"pix_fmt": "yuv420p", "options": {"crf": "17", "preset": "medium"}},
}


def write_video(path: str | Path, frames: np.ndarray, fps: float = 8.0, quality: str = "data") -> Path:
    """Encode T×H×W×3 uint8 frames to an mp4 at ``path`` (atomically). Odd sizes are padded for 4:2:0."""
    check_frames(frames)
    if quality not in _PRESETS:
        raise ValueError(f"unknown video quality {quality!r}; use one of {list(_PRESETS)}")
    preset = _PRESETS[quality]
    if preset["pix_fmt"] == "yuv420p" and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = preset["pix_fmt"]
            stream.options = dict(preset["options"])
            for f in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def read_video(path: str | Path) -> np.ndarray:
    """Decode every frame of a video file to T×H×W×3 uint8."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    try:
        with av.open(str(path)) as container:
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode video {path}: {e}") from None
    if not frames:
        raise ValueError(f"video {path} has no frames")
    return np.stack(frames)


def video_info(path: str | Path) -> dict:
    """Frame count, fps, width and height, read from the container (decodes if the count is not stored)."""
    with av.open(str(path)) as container:
        s = container.streams.video[0]
        n = s.frames or sum(1 for _ in container.decode(video=0))
        return {"frames": int(n), "fps": float(s.average_rate or 0), "width": s.width, "height": s.height}


def decode_digest(path: str | Path) -> tuple[int, str]:
    """Decode every frame strictly (the decoder stops at the first damaged packet instead of hiding it); return
    the frame count and the SHA-256 of the frames in the stream's own pixel format. H.264 decoding is bit-exact,
    so the digest is the same on every machine, and it changes when damage alters a picture (which a decoder may
    otherwise conceal). A damaged or unreadable file is a ValueError saying where decoding stopped."""
    import hashlib

    h, n = hashlib.sha256(), 0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.codec_context.options = {"err_detect": "explode"}
            for frame in container.decode(stream):
                if getattr(frame, "is_corrupt", False):
                    raise ValueError(f"frame {n} is damaged")
                h.update(_pixels(frame).tobytes())
                n += 1
    except (av.error.FFmpegError, IndexError, ValueError) as e:
        raise ValueError(f"cannot decode frame {n}: {str(e).splitlines()[0] or type(e).__name__}") from None
    return n, h.hexdigest()


def _pixels(frame: av.VideoFrame) -> np.ndarray:
    """A frame's pixels in its own format without row padding (no colour conversion, which could differ by
    machine); formats PyAV cannot unpack fall back to RGB."""
    try:
        return frame.to_ndarray()
    except ValueError:
        return frame.to_ndarray(format="rgb24")


def read_frame(path: str | Path, index: int) -> np.ndarray:
    """Decode one frame (0-based, in decoding order) of a video file as H×W×3 uint8, stopping there."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video not found: {path}")
    if index < 0:
        raise ValueError(f"frame index {index} of {path} is negative")
    count = 0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                if count == index:
                    return frame.to_ndarray(format="rgb24")
                count += 1
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode video {path}: {e}") from None
    raise ValueError(f"video {path} has {count} frames; frame {index} does not exist")
