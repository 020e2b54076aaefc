"""Video files: mp4 read/write through PyAV (no ffmpeg binary needed), written atomically.

Two encodings: ``quality="data"`` (H.264 4:4:4, near-lossless; datasets and segments,
so colours of 64×64 frames survive) and ``quality="web"`` (H.264 4:2:0, plays in browsers;
final videos for reports).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
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
    with VideoWriter(path, fps, quality) as w:
        for f in frames:
            w.write(f)
    return Path(path)


class VideoWriter:
    """Stream frames into an mp4 one at a time (atomically: the file appears only when the writer closes without
    an error), so a long clip never has to be held in memory. The size is taken from the first frame."""

    def __init__(self, path: str | Path, fps: float, quality: str = "data"):
        if quality not in _PRESETS:
            raise ValueError(f"unknown video quality {quality!r}; use one of {list(_PRESETS)}")
        self.path, self.fps, self.preset = Path(path), fps, _PRESETS[quality]
        self.frames = 0
        self._atomic = self._container = self._stream = None

    def __enter__(self) -> VideoWriter:
        self._atomic = atomic_path(self.path)
        tmp = self._atomic.__enter__()
        self._container = av.open(str(tmp), mode="w", format="mp4")
        return self

    def write(self, frame: np.ndarray) -> None:
        """Append one H×W×3 uint8 frame (odd sizes are padded by one edge pixel for 4:2:0)."""
        if self.preset["pix_fmt"] == "yuv420p" and (frame.shape[0] % 2 or frame.shape[1] % 2):
            frame = np.pad(frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge")
        if self._stream is None:
            self._stream = self._container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1000))
            self._stream.width, self._stream.height = frame.shape[1], frame.shape[0]
            self._stream.pix_fmt = self.preset["pix_fmt"]
            self._stream.options = dict(self.preset["options"])
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(vf):
            self._container.mux(packet)
        self.frames += 1

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: object) -> None:
        try:
            if et is None:
                if self._stream is None:
                    raise ValueError(f"no frames to write to {self.path}")
                for packet in self._stream.encode():
                    self._container.mux(packet)
            self._container.close()
        except BaseException as e:  # noqa: BLE001 - the temporary file goes, the error propagates
            with contextlib.suppress(Exception):
                self._container.close()
            self._atomic.__exit__(type(e), e, e.__traceback__)
            raise
        self._atomic.__exit__(et, ev, tb)


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


def probe(path: str | Path) -> dict:
    """A video's fps, width, height and duration in seconds from its container (nothing is decoded, so it is cheap
    on an hour-long file; ``duration`` is None when the container does not say)."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("it has no video stream")
            s = container.streams.video[0]
            rate = s.average_rate or s.guessed_rate or s.base_rate
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif container.duration is not None:
                duration = container.duration / av.time_base
            else:
                duration = None
            if not rate or not s.width or not s.height:
                raise ValueError("its video stream has no frame rate or size")
            return {"fps": float(rate), "width": s.width, "height": s.height, "duration": duration}
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot read video {path}: {str(e).splitlines()[0]}") from None


class ClipStats:
    """What :func:`read_clip` decoded: the number of frames and the time of the first one (to show it seeked)."""

    def __init__(self) -> None:
        self.decoded = 0
        self.first_time: float | None = None


def read_clip(path: str | Path, start: float, end: float, fps: float | None = None,
              size: tuple[int, int] | None = None, stats: ClipStats | None = None) -> Iterator[np.ndarray]:
    """Yield the frames showing seconds ``start``..``end`` of a video, decoding only that range.

    The container seeks to the keyframe before ``start`` and decoding stops just after ``end``, so a clip from an
    hour-long file costs its own length (plus at most one group of pictures), not the file's. Output frame ``j``
    is the decoded frame whose timestamp is nearest to ``start + j / fps``, up to the ``j`` nearest ``end`` (``fps``
    defaults to the video's own rate: then every source frame in the range appears once, in order); ``size`` (height, width) resizes with
    swscale. Times count from the stream's first frame. Ends early when the video does (the caller compares
    counts). A damaged file raises ValueError naming where decoding stopped.
    """
    stats = stats if stats is not None else ClipStats()
    try:
        yield from _clip(path, start, end, fps, size, stats, seek=True)
    except _Overshot:  # an imprecise index put the seek after ``start``: decode from the top instead
        yield from _clip(path, start, end, fps, size, stats, seek=False)


class _Overshot(Exception):
    pass


def _clip(path: str | Path, start: float, end: float, fps: float | None, size: tuple[int, int] | None,
          stats: ClipStats, seek: bool) -> Iterator[np.ndarray]:
    info = probe(path)
    src_period = 1.0 / info["fps"]
    out_fps = fps or info["fps"]
    n_out = int(np.floor((end - start) * out_fps + 0.5 + 1e-9)) + 1  # up to the frame nearest ``end``
    stats.first_time = None
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            tb = stream.time_base
            t_first = float(stream.start_time * tb) if stream.start_time is not None else 0.0
            seek = seek and start > src_period
            if seek:
                container.seek(int((start + t_first) / tb), stream=stream, backward=True, any_frame=False)
            j, prev, prev_t = 0, None, 0.0
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * tb) - t_first
                stats.decoded += 1
                if stats.first_time is None:
                    stats.first_time = t
                    if seek and t > start + src_period / 2:
                        raise _Overshot
                while j < n_out:
                    target = start + j / out_fps
                    if t < target:
                        break
                    nearer_prev = prev is not None and abs(prev_t - target) < abs(t - target)
                    yield _to_rgb(prev if nearer_prev else frame, size)
                    j += 1
                if j >= n_out:
                    return
                prev, prev_t = frame, t
            while prev is not None and j < n_out and start + j / out_fps <= prev_t + src_period / 2:
                yield _to_rgb(prev, size)  # the last frame still covers the targets within half a frame of it
                j += 1
    except av.error.FFmpegError as e:
        raise ValueError(f"cannot decode {Path(path).name} after {stats.decoded} frames: "
                         f"{str(e).splitlines()[0] or type(e).__name__}") from None


def _to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None) -> np.ndarray:
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=size[1], height=size[0], format="rgb24").to_ndarray()
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
