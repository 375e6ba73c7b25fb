"""Video to I3D snippets: decode, resample to 25 fps, resize and crop, TV-L1 flow.

The conventions of the public THUMOS14 / ActivityNet I3D features (and of the
extractors that made them):

* **25 fps.** Frames are decoded with PyAV and resampled by their timestamps:
  output frame ``k`` (at ``k / 25`` s after the first frame) is the last source
  frame whose timestamp is at most that time. A constant-rate 25 fps video is
  passed through unchanged; other rates are dropped or repeated evenly; a
  variable-frame-rate file is resampled correctly by the same rule (it is
  reported, not refused). The last frame lasts as long as the interval before
  it (containers often record no usable duration for the last frame). Frames without timestamps (where the stream has no average rate
  to number them by) or with timestamps that do not increase raise
  :class:`VideoTimestampError`.
* **Size.** Shorter side resized to 256 (bilinear, aspect kept), then the
  center 224 x 224 crop, the same crop for both streams.
* **RGB** in ``[-1, 1]``: ``x / 127.5 - 1``.
* **Flow**: TV-L1 (OpenCV contrib's ``DualTVL1OpticalFlow``, default
  parameters) on the grayscale resized frames, then the same crop, clipped to
  ``[-20, 20]`` pixels and divided by 20, channels ``(dx, dy)``. The flow of
  frame ``i`` is computed from frames ``i`` and ``i + 1``; the last frame of
  the video, having no successor, repeats the flow of the frame before it.
  Where resampling repeats a frame the flow between the two copies is zero
  (not computed).
* **Snippets**: non-overlapping 16-frame windows, ``T = floor(frames / 16)`` at
  25 fps; the frames after the last whole snippet are dropped (the first of
  them still serves as the successor for the last snippet's flow).

Everything streams: a video of any length is held 17 frames at a time.
"""

from __future__ import annotations

import dataclasses
import os
from fractions import Fraction
from typing import Iterator, Sequence

import numpy as np

from jaxseg.features.errors import (EmptyVideoError, UnreadableVideoError,
                                    VideoTimestampError, VideoTooShortError)

FPS = 25.0
SNIPPET_FRAMES = 16
SHORT_SIDE = 256
CROP = 224
FLOW_BOUND = 20.0
_TIME_TOLERANCE = 1e-4  # s: timestamps this close to an output time count as on it


def _cv2():
  try:
    import cv2  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("feature extraction needs OpenCV with the contrib modules: "
                      "pip install -r requirements-extract.txt") from None
  if not hasattr(cv2, "optflow"):
    raise ImportError("OpenCV is installed without the contrib modules (cv2.optflow): "
                      "pip uninstall opencv-python opencv-python-headless && "
                      "pip install -r requirements-extract.txt")
  return cv2


def _av():
  try:
    import av  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("feature extraction needs PyAV: "
                      "pip install -r requirements-extract.txt") from None
  return av


@dataclasses.dataclass(frozen=True)
class VideoConfig:
  """How frames are prepared. The defaults are the standard I3D features'."""
  fps: float = FPS
  short_side: int = SHORT_SIDE
  crop: int = CROP
  flow_bound: float = FLOW_BOUND


@dataclasses.dataclass
class VideoStats:
  """What decoding found; filled while :func:`iter_snippets` runs."""
  source_frames: int = 0
  frames: int = 0  # at the target rate
  snippets: int = 0
  source_fps: float = 0.0  # the container's average rate (0 if unknown)
  duration_s: float = 0.0
  variable_frame_rate: bool = False


def decode(path: str, stats: VideoStats | None = None) -> Iterator[tuple[float, object]]:
  """``(time_s, av.VideoFrame)`` of every frame in presentation order.

  Raises:
    EmptyVideoError: a zero-byte file.
    UnreadableVideoError: missing, not a media file, no video stream, a decoding
      error (naming the frame), or no frame at all.
    VideoTimestampError: a frame without a timestamp in a stream without an
      average rate.
  """
  av = _av()
  stats = stats if stats is not None else VideoStats()
  try:
    size = os.path.getsize(path)
  except OSError as e:
    raise UnreadableVideoError(f"{path}: {e.strerror or e}") from None
  if size == 0:
    raise EmptyVideoError(f"{path}: the file is empty (0 bytes)")
  try:
    container = av.open(path)
  except (av.error.FFmpegError, OSError, ValueError) as e:
    raise UnreadableVideoError(f"{path}: cannot open as a video: {e}") from None
  with container:
    if not container.streams.video:
      raise UnreadableVideoError(f"{path}: no video stream")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate
    stats.source_fps = float(rate) if rate else 0.0
    index = 0
    try:
      for frame in container.decode(stream):
        t = frame.time
        if t is None:
          if not rate:
            raise VideoTimestampError(f"{path}: frame {index} has no timestamp and the "
                                      "stream no average frame rate")
          t = float(Fraction(index) / rate)
        index += 1
        stats.source_frames = index
        yield float(t), frame
    except av.error.FFmpegError as e:
      raise UnreadableVideoError(f"{path}: decoding failed after {index} frame(s): {e}") from None
  if index == 0:
    raise UnreadableVideoError(f"{path}: no video frames could be decoded")


def resample(frames: Iterator[tuple[float, object]], fps: float = FPS, *,
             path: str = "video", stats: VideoStats | None = None
             ) -> Iterator[tuple[int, object]]:
  """Frames at ``fps`` by timestamps: ``(source index, frame)``, see the module doc.

  Raises:
    VideoTimestampError: a timestamp not greater than the one before.
  """
  stats = stats if stats is not None else VideoStats()
  start = prev_t = None
  prev = None
  k = 0  # next output frame, at time k / fps after the first frame
  intervals: list[float] = []
  for i, (t, frame) in enumerate(frames):
    if start is None:
      start = t
    rel = t - start
    if prev is not None:
      if rel <= prev_t:
        raise VideoTimestampError(f"{path}: frame {i} at {t:.6f} s does not come after "
                                  f"frame {i - 1} at {prev_t + start:.6f} s")
      intervals.append(rel - prev_t)
      while k / fps + _TIME_TOLERANCE < rel:
        yield i - 1, prev
        k += 1
    prev, prev_t = frame, rel
  if prev is None:
    return
  typical = float(np.median(intervals)) if intervals else (
      1.0 / stats.source_fps if stats.source_fps else 1.0 / fps)
  end = prev_t + (intervals[-1] if intervals else typical)  # as long as the one before
  stats.duration_s = end
  if intervals:
    dev = np.abs(np.asarray(intervals) - typical)
    stats.variable_frame_rate = bool(np.any(dev > 0.1 * typical))
  while k / fps + _TIME_TOLERANCE < end:
    yield i, prev
    k += 1


def resize_short_side(image: np.ndarray, short_side: int) -> np.ndarray:
  """``(H, W, C) uint8`` with its shorter side resized to ``short_side`` (bilinear)."""
  cv2 = _cv2()
  h, w = image.shape[:2]
  scale = short_side / min(h, w)
  size = (max(short_side, int(round(w * scale))), max(short_side, int(round(h * scale))))
  if size == (w, h):
    return image
  return cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The central ``(size, size)`` of ``(H, W, ...)``."""
  h, w = image.shape[:2]
  top, left = (h - size) // 2, (w - size) // 2
  return image[top:top + size, left:left + size]


class TVL1:
  """TV-L1 optical flow between grayscale frames (OpenCV contrib, default parameters)."""

  def __init__(self):
    self._cv2 = _cv2()
    self._tvl1 = self._cv2.optflow.DualTVL1OpticalFlow_create()

  def __call__(self, prev_gray: np.ndarray, gray: np.ndarray) -> np.ndarray:
    """``(H, W) uint8`` x 2 -> ``(H, W, 2) float32`` pixels, ``(dx, dy)``."""
    return self._tvl1.calc(prev_gray, gray, None)


def scale_rgb(frames: np.ndarray) -> np.ndarray:
  """``(..., 3) uint8`` -> ``float32`` in ``[-1, 1]``."""
  return frames.astype(np.float32) / 127.5 - 1.0


def scale_flow(flow: np.ndarray, bound: float = FLOW_BOUND) -> np.ndarray:
  """Pixels -> ``float32`` in ``[-1, 1]``: clipped to ``[-bound, bound]``, divided by it."""
  return np.clip(flow, -bound, bound).astype(np.float32) / np.float32(bound)


def iter_frames(path: str, config: VideoConfig = VideoConfig(),
                stats: VideoStats | None = None) -> Iterator[tuple[int, np.ndarray]]:
  """``(source index, (H, W, 3) uint8 RGB)`` at ``config.fps``, the shorter side
  resized to ``config.short_side`` (not cropped). A frame that resampling
  repeats is converted once: its copies are the same array.

  Raises:
    The errors of :func:`decode` and :func:`resample`.
  """
  stats = stats if stats is not None else VideoStats()
  if config.crop > config.short_side:
    raise ValueError(f"crop {config.crop} > short side {config.short_side}")
  cached_src, cached = -1, None
  for src, frame in resample(decode(path, stats), config.fps, path=path, stats=stats):
    stats.frames += 1
    if src != cached_src:
      cached_src = src
      cached = resize_short_side(frame.to_ndarray(format="rgb24"), config.short_side)
    yield src, cached


def _too_short(path: str, config: VideoConfig, stats: VideoStats) -> VideoTooShortError:
  return VideoTooShortError(
      f"{path}: {stats.frames} frame(s) at {config.fps:g} fps "
      f"({stats.duration_s:.3f} s), fewer than one {SNIPPET_FRAMES}-frame snippet")


def iter_rgb_snippets(path: str, config: VideoConfig = VideoConfig(),
                      stats: VideoStats | None = None) -> Iterator[np.ndarray]:
  """The RGB stream's input alone (no optical flow), one 16-frame snippet at a
  time: ``(16, crop, crop, 3) float32`` in ``[-1, 1]``, the snippets of
  :func:`iter_snippets`.

  Raises:
    As :func:`iter_snippets`.
  """
  stats = stats if stats is not None else VideoStats()
  buf: list[np.ndarray] = []
  for _, rgb in iter_frames(path, config, stats):
    buf.append(scale_rgb(center_crop(rgb, config.crop)))
    if len(buf) == SNIPPET_FRAMES:
      stats.snippets += 1
      yield np.stack(buf)
      buf.clear()
  if stats.snippets == 0:
    raise _too_short(path, config, stats)


def read_rgb_clip(path: str, config: VideoConfig = VideoConfig(), max_frames: int = 0,
                  stats: VideoStats | None = None) -> np.ndarray:
  """The RGB input of a whole clip as one array: ``(N, crop, crop, 3) float32``
  in ``[-1, 1]``, every frame at ``config.fps`` (the first ``max_frames``
  when that is positive), prepared as :func:`iter_snippets` prepares them.

  Raises:
    As :func:`iter_snippets` (VideoTooShortError below 16 frames).
  """
  stats = stats if stats is not None else VideoStats()
  frames = []
  for _, rgb in iter_frames(path, config, stats):
    frames.append(scale_rgb(center_crop(rgb, config.crop)))
    if len(frames) == max_frames:
      break
  if len(frames) < SNIPPET_FRAMES:
    raise _too_short(path, config, stats)
  return np.stack(frames)


def iter_snippets(path: str, config: VideoConfig = VideoConfig(),
                  stats: VideoStats | None = None
                  ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The two streams' inputs, one 16-frame snippet at a time.

  Yields:
    ``(rgb, flow)``: ``(16, crop, crop, 3) float32`` and ``(16, crop, crop, 2)
    float32``, both in ``[-1, 1]`` (``crop = 224`` by default).

  Raises:
    The errors of :func:`decode` and :func:`resample`; VideoTooShortError if the
    video has fewer than 16 frames at ``config.fps``.
  """
  cv2 = _cv2()
  stats = stats if stats is not None else VideoStats()
  flow_fn = TVL1()
  rgb_buf: list[np.ndarray] = []
  flow_buf: list[np.ndarray] = []
  prev_gray = prev_src = None
  cached_src, gray = -1, None
  for src, rgb in iter_frames(path, config, stats):
    if src != cached_src:  # a repeated frame is converted once
      cached_src, gray = src, cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if prev_gray is not None:  # the flow of the previous frame
      if src == prev_src:
        flow = np.zeros((config.crop, config.crop, 2), np.float32)
      else:
        flow = center_crop(flow_fn(prev_gray, gray), config.crop)
      flow_buf.append(scale_flow(flow, config.flow_bound))
    prev_gray, prev_src = gray, src
    if len(flow_buf) == SNIPPET_FRAMES:
      yield _snippet(rgb_buf, flow_buf, stats)
    rgb_buf.append(scale_rgb(center_crop(rgb, config.crop)))
  if len(rgb_buf) == SNIPPET_FRAMES and len(flow_buf) == SNIPPET_FRAMES - 1:
    flow_buf.append(flow_buf[-1])  # the video's last frame: repeat the flow before it
    yield _snippet(rgb_buf, flow_buf, stats)
  if stats.snippets == 0:
    raise _too_short(path, config, stats)


def _snippet(rgb_buf: list, flow_buf: list, stats: VideoStats):
  rgb = np.stack(rgb_buf[:SNIPPET_FRAMES])
  flow = np.stack(flow_buf[:SNIPPET_FRAMES])
  del rgb_buf[:SNIPPET_FRAMES], flow_buf[:SNIPPET_FRAMES]
  stats.snippets += 1
  return rgb, flow


def write_video(path: str, frames: np.ndarray, fps: float = FPS, *,
                times: Sequence[float] | None = None, codec: str = "mpeg4") -> str:
  """Writes ``(N, H, W, 3) uint8`` frames (``H``, ``W`` even) with PyAV.

  For tests and benchmarks. ``times`` (seconds, increasing) gives each frame
  its own timestamp (a variable-frame-rate file, millisecond time base);
  otherwise the rate is ``fps``.
  """
  av = _av()
  with av.open(path, "w") as out:
    if times is None:
      stream = out.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
    else:
      stream = out.add_stream(codec, rate=1000)
      stream.codec_context.time_base = Fraction(1, 1000)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p"
    stream.bit_rate = 20_000_000  # near-lossless for small test frames
    for i, image in enumerate(frames):
      frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
      if times is not None:
        frame.pts = int(round(times[i] * 1000))
        frame.time_base = Fraction(1, 1000)
      for packet in stream.encode(frame):
        out.mux(packet)
    for packet in stream.encode():
      out.mux(packet)
  return path
