"""Two-stream I3D features of a folder of videos, in the layout the readers take.

  python -m jaxseg.extract --videos DIR --weights WEIGHTS_DIR --out FEATURES_DIR
  python -m jaxseg.extract --videos DIR --streams rgb --weights-rgb rgb_i3d.npz --out FEATURES_DIR

``WEIGHTS_DIR`` holds ``rgb_i3d.npz`` and ``flow_i3d.npz`` (from
``python -m jaxseg.features.convert``), or name the files with
``--weights-rgb`` / ``--weights-flow``. Writes ``FEATURES_DIR/rgb/<vid>.npy``
and ``FEATURES_DIR/flow/<vid>.npy``, ``(T, 1024) float32`` each, ``T =
floor(frames at 25 fps / 16)``, ``<vid>`` the file's stem; then train with
``--config.data.features_dir=FEATURES_DIR
--config.data.feature_streams="('rgb','flow')"``.

``--streams rgb`` (or ``flow``) extracts one stream: with ``rgb`` alone no
flow weights are needed and no optical flow is computed; train on the
1024-d features with ``--config.data.feature_streams="('rgb',)"
--config.data.feature_dim=1024``.

* Resumable: a video whose files (one per stream) exist and are valid (2-D
  float32, the weights' feature width, the same ``T``) is skipped. Files are written to a
  temporary name in the same folder and renamed, so a file named ``<vid>.npy``
  is always whole; a stale temporary file (``.<vid>.npy.<pid>.tmp``) from an
  interrupted run is never read and is removed when the video is redone.
* A bad video (unreadable or empty file, shorter than one snippet, broken
  timestamps, an unsafe or duplicate id) is recorded with its named error and
  the others are processed; the failures are listed at the end. A bad weight
  file stops the run before any video.
* Exit status: 0 if every video has its features, 2 if any failed (or the
  weights or arguments are bad).

Conventions (25 fps, 256 then 224 center crop, TV-L1 flow) and speed:
``docs/feature-extraction.md``.
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import re
import sys
import time
from typing import Sequence

import numpy as np

from jaxseg import cli
from jaxseg.features import i3d
from jaxseg.features import video as video_lib
from jaxseg.features import weights as weights_lib
from jaxseg.features.errors import (DuplicateVideoIdError, ExtractionError,
                                    NonFiniteFeaturesError, UnsafeVideoIdError,
                                    WeightsError)

STREAMS = ("rgb", "flow")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg",
                    ".wmv", ".flv", ".3gp", ".ts", ".gif")
_SAFE_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,199}$")


def check_video_id(video_id: str, path: str) -> str:
  """``video_id`` if it is a safe file name, else UnsafeVideoIdError."""
  if not _SAFE_ID.match(video_id) or video_id.endswith(".tmp"):
    raise UnsafeVideoIdError(
        f"{path}: video id {video_id!r} (the file stem) is not a safe file name: use "
        "ASCII letters, digits, '_', '-', '.', '+', not starting with '.' or '-' "
        "(rename the file)")
  return video_id


def find_videos(source: str, extensions: Sequence[str] = VIDEO_EXTENSIONS
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str, ExtractionError]]]:
  """``([(video_id, path), ...], [(id, path, error), ...])`` of a folder or one file.

  Files whose extension is not in ``extensions`` and hidden files are ignored.
  """
  if os.path.isdir(source):
    names = sorted(n for n in os.listdir(source) if not n.startswith("."))
    paths = [os.path.join(source, n) for n in names
             if os.path.splitext(n)[1].lower() in extensions
             and os.path.isfile(os.path.join(source, n))]
  else:
    paths = [source]
  by_id: dict[str, list[str]] = {}
  for p in paths:
    by_id.setdefault(os.path.splitext(os.path.basename(p))[0], []).append(p)
  videos, bad = [], []
  for vid, ps in sorted(by_id.items()):
    if len(ps) > 1:
      for p in ps:
        bad.append((vid, p, DuplicateVideoIdError(
            f"{p}: video id {vid!r} is shared by {len(ps)} files: {ps}")))
      continue
    try:
      videos.append((check_video_id(vid, ps[0]), ps[0]))
    except UnsafeVideoIdError as e:
      bad.append((vid, ps[0], e))
  return videos, bad


def parse_streams(text: str) -> tuple[str, ...]:
  """``"rgb"``, ``"flow"``, ``"rgb,flow"`` -> the streams in :data:`STREAMS` order.

  Raises:
    ValueError: an unknown or repeated stream, or none.
  """
  names = [n.strip() for n in text.split(",") if n.strip()]
  unknown = [n for n in names if n not in STREAMS]
  if unknown or not names or len(set(names)) != len(names):
    raise ValueError(f"--streams {text!r}: give rgb, flow or rgb,flow")
  return tuple(s for s in STREAMS if s in names)


def output_paths(out_dir: str, video_id: str,
                 streams: Sequence[str] = STREAMS) -> dict[str, str]:
  return {s: os.path.join(out_dir, s, video_id + ".npy") for s in streams}


def is_done(out_dir: str, video_id: str, feature_dim: int,
            streams: Sequence[str] = STREAMS) -> bool:
  """Each stream's file exists and holds ``(T, feature_dim) float32``, the same
  ``T >= 1`` for all."""
  lengths = set()
  for path in output_paths(out_dir, video_id, streams).values():
    try:
      arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
      return False
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] != feature_dim \
        or arr.dtype != np.float32:
      return False
    lengths.add(arr.shape[0])
  return len(lengths) == 1


def write_npy_atomic(path: str, array: np.ndarray) -> None:
  """Writes ``path`` through a temporary file in its folder and ``os.replace``."""
  folder, name = os.path.split(path)
  tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
  try:
    with open(tmp, "wb") as f:
      np.save(f, array)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def remove_stale_tmp(out_dir: str, video_id: str) -> None:
  for stream in STREAMS:
    for p in glob.glob(os.path.join(glob.escape(os.path.join(out_dir, stream)),
                                    f".{glob.escape(video_id)}.npy.*.tmp")):
      try:
        os.remove(p)
      except OSError:
        pass


class Extractor:
  """The streams' networks and weights; :meth:`extract` runs one video.

  Args:
    rgb_weights, flow_weights: converted ``.npz`` files (only those of
      ``streams`` are read; the other may be ``None``).
    streams: ``("rgb", "flow")``, ``("rgb",)`` or ``("flow",)``. With RGB
      alone no optical flow is computed.
    batch_size: snippets per network call (one compiled shape per stream).
    video_config: frame preparation (defaults: 25 fps, 256, 224).
    precision: convolution precision (``None``: the backend's default).

  Raises:
    WeightsError: a bad weight file (named error, naming the tensor).
  """

  def __init__(self, rgb_weights: str | None, flow_weights: str | None, *,
               streams: Sequence[str] = STREAMS, batch_size: int = 8,
               video_config: video_lib.VideoConfig = video_lib.VideoConfig(),
               precision: str | None = None):
    self.streams = tuple(s for s in STREAMS if s in streams)
    if not self.streams or len(self.streams) != len(tuple(streams)):
      raise ValueError(f"streams must be a subset of {STREAMS}, got {streams!r}")
    paths = {"rgb": rgb_weights, "flow": flow_weights}
    self.variables, self.fns, self.infos = {}, {}, {}
    for stream in self.streams:
      variables, info = weights_lib.load_weights(paths[stream], stream=stream)
      self.variables[stream] = variables
      self.infos[stream] = info
      self.fns[stream] = i3d.feature_fn(info.in_channels, info.width_multiplier, precision)
    dims = {s: info.feature_dim for s, info in self.infos.items()}
    if len(set(dims.values())) > 1:
      raise WeightsError(f"{rgb_weights} gives {dims['rgb']}-d features but "
                         f"{flow_weights} {dims['flow']}-d")
    self.feature_dim = dims[self.streams[0]]
    self.batch_size = batch_size
    self.video_config = video_config

  def _snippets(self, path: str, stats: video_lib.VideoStats):
    """``{stream: (16, H, W, C)}`` per snippet; TV-L1 only when flow is wanted."""
    if self.streams == ("rgb",):
      for rgb in video_lib.iter_rgb_snippets(path, self.video_config, stats):
        yield {"rgb": rgb}
    else:
      for rgb, flow in video_lib.iter_snippets(path, self.video_config, stats):
        yield {"rgb": rgb, "flow": flow}

  def extract(self, path: str) -> tuple[dict[str, np.ndarray], video_lib.VideoStats]:
    """``({stream: (T, F) float32}, stats)`` of one video file.

    Batches go to the networks as soon as they are full; JAX's asynchronous
    dispatch lets the next snippets' decoding and flow run meanwhile.
    """
    stats = video_lib.VideoStats()
    pending: dict[str, list] = {s: [] for s in self.streams}
    outs: dict[str, list] = {s: [] for s in self.streams}

    def flush():
      for s in self.streams:
        n = len(pending[s])
        clips = np.stack(pending[s])
        if n < self.batch_size:
          clips = np.concatenate([clips, np.zeros((self.batch_size - n, *clips.shape[1:]),
                                                  clips.dtype)])
        outs[s].append((self.fns[s](self.variables[s], clips), n))
        pending[s].clear()

    for snippet in self._snippets(path, stats):
      for s in self.streams:
        pending[s].append(snippet[s])
      if len(pending[self.streams[0]]) == self.batch_size:
        flush()
    if pending[self.streams[0]]:
      flush()
    feats = {s: np.concatenate([np.asarray(o)[:n] for o, n in outs[s]]).astype(np.float32)
             for s in self.streams}
    for s, f in feats.items():
      if f.shape != (stats.snippets, self.feature_dim):
        raise AssertionError(f"{path}: {s} features {f.shape}, expected "
                             f"({stats.snippets}, {self.feature_dim})")
      if not np.all(np.isfinite(f)):
        raise NonFiniteFeaturesError(f"{path}: the {s} network gave NaN or inf")
    return feats, stats


def _weights_paths(args) -> dict[str, str]:
  """``{stream: .npz}`` for the streams of ``--streams``."""
  given = {"rgb": args.weights_rgb, "flow": args.weights_flow}
  names = " and ".join(f"{s}_i3d.npz" for s in args.streams)
  if args.weights:
    if not os.path.isdir(args.weights):
      raise WeightsError(f"--weights {args.weights}: not a folder (it should hold {names})")
    for s in args.streams:
      given[s] = given[s] or os.path.join(args.weights, f"{s}_i3d.npz")
  missing = [f"--weights-{s}" for s in args.streams if not given[s]]
  if missing:
    raise WeightsError(f"give --weights DIR (with {names}) or {' and '.join(missing)}")
  return {s: given[s] for s in args.streams}


def parse_args(argv: Sequence[str] | None):
  p = cli.ArgumentParser(prog="python -m jaxseg.extract",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--videos", required=True, help="a folder of videos, or one video file")
  p.add_argument("--out", required=True, help="FEATURES_DIR: writes rgb/<vid>.npy, flow/<vid>.npy")
  p.add_argument("--weights", default="", help="folder with rgb_i3d.npz and flow_i3d.npz")
  p.add_argument("--weights-rgb", default="", help="the RGB stream's .npz")
  p.add_argument("--weights-flow", default="", help="the flow stream's .npz")
  p.add_argument("--streams", default="rgb,flow",
                 help="rgb, flow or rgb,flow (default): the streams to extract; with rgb "
                      "alone no flow weights are needed and no optical flow is computed")
  p.add_argument("--batch-size", type=int, default=8, help="snippets per network call")
  p.add_argument("--fps", type=float, default=video_lib.FPS)
  p.add_argument("--short-side", type=int, default=video_lib.SHORT_SIDE,
                 help="resize the shorter side to this (256 for the standard features)")
  p.add_argument("--crop", type=int, default=video_lib.CROP,
                 help="center crop (224 for the standard features)")
  p.add_argument("--precision", default=None, choices=["default", "high", "highest"],
                 help="convolution precision on GPUs (CPU: always float32)")
  p.add_argument("--extensions", default=",".join(VIDEO_EXTENSIONS),
                 help="comma-separated extensions taken from a folder")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  try:
    args.streams = parse_streams(args.streams)
  except ValueError as e:
    p.error(str(e))
  if args.batch_size < 1:
    p.error("--batch-size must be >= 1")
  if not (math.isfinite(args.fps) and args.fps > 0):
    p.error(f"--fps must be a number > 0, got {args.fps}")
  if args.short_side < 1 or args.crop < 1:
    p.error("--short-side and --crop must be >= 1")
  if args.crop > args.short_side:
    p.error(f"--crop {args.crop} > --short-side {args.short_side}")
  return args


def _make_out(out: str, streams: Sequence[str]) -> None:
  """Creates ``out/<stream>/``.

  Raises:
    ExtractionError: ``out`` is, or is under, a file, or cannot be created.
  """
  for stream in streams:
    path = os.path.join(out, stream)
    try:
      os.makedirs(path, exist_ok=True)
    except FileExistsError:
      raise ExtractionError(f"--out {out}: {path} is in the way (a file, not a "
                            "folder)") from None
    except NotADirectoryError:
      raise ExtractionError(f"--out {out}: is, or is under, a file") from None
    except OSError as e:
      raise ExtractionError(f"--out {out}: cannot create {path}: "
                            f"{e.strerror or e}") from None


def main(argv: Sequence[str] | None = None) -> int:
  """Runs the command; returns the exit status (0, or 2 if anything failed)."""
  args = parse_args(argv)
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  try:
    paths = _weights_paths(args)
    extractor = Extractor(
        paths.get("rgb"), paths.get("flow"), streams=args.streams,
        batch_size=args.batch_size, precision=args.precision,
        video_config=video_lib.VideoConfig(fps=args.fps, short_side=args.short_side,
                                           crop=args.crop))
  except WeightsError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not os.path.exists(args.videos):
    print(f"error: --videos {args.videos}: not found", file=sys.stderr)
    return 2
  exts = tuple(e if e.startswith(".") else "." + e
               for e in (x.strip().lower() for x in args.extensions.split(",")) if e)
  videos, failures = find_videos(args.videos, exts)
  try:
    _make_out(args.out, args.streams)
  except ExtractionError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  done = skipped = 0
  vfr = []
  t0 = time.perf_counter()
  bar = tqdm(videos, unit="video", disable=args.no_progress or None, file=sys.stderr)
  for vid, path in bar:
    bar.set_postfix_str(vid)
    if is_done(args.out, vid, extractor.feature_dim, args.streams):
      skipped += 1
      continue
    try:
      remove_stale_tmp(args.out, vid)
      feats, stats = extractor.extract(path)
      for stream, out_path in output_paths(args.out, vid, args.streams).items():
        write_npy_atomic(out_path, feats[stream])
      done += 1
      if stats.variable_frame_rate:
        vfr.append(vid)
    except ExtractionError as e:
      failures.append((vid, path, e))
    except (KeyboardInterrupt, SystemExit):
      raise
    except Exception as e:  # pylint: disable=broad-except
      failures.append((vid, path, e))  # unexpected: still go on with the others
  bar.close()
  seconds = time.perf_counter() - t0
  print(f"{args.out}: {done} video(s) extracted, {skipped} already done (skipped), "
        f"{len(failures)} failed, in {seconds:.1f} s")
  if vfr:
    print(f"variable frame rate, resampled to {args.fps:g} fps by timestamps: "
          + ", ".join(vfr))
  if failures:
    print(f"{len(failures)} video(s) failed:", file=sys.stderr)
    for vid, path, e in failures:
      print(f"  {vid}: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
