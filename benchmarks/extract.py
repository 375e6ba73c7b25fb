"""Frames per second of I3D feature extraction, by stage, against the FLOP floor.

Stages, each timed alone:

* ``rgb network`` / ``flow network``: the jitted I3D forward of a batch of
  16-frame snippets (random weights; timing does not depend on them), full
  width at 16 x 224 x 224 by default. Its floor is the convolutions' FLOPs
  (:func:`jaxseg.features.i3d.conv_flops`: 55.6 GFLOP per RGB snippet, 51.2
  per flow snippet) over the matmul rate measured in the same run
  (``benchmarks/common.py``).
* ``decode+resize``: PyAV decoding and the resize of a synthetic video written
  first (a textured background panning 2 px per frame plus a moving square,
  320 x 240 at 25 fps, 33 frames = 2 snippets, resized to 341 x 256).
* ``decode+resize+TV-L1 flow``: all of :func:`jaxseg.features.video.iter_snippets`
  (decoding, resizing, TV-L1 on 341 x 256 gray frames, cropping, scaling). TV-L1
  iterates until it converges, so its time depends on the footage.

  python benchmarks/extract.py           # full width, 224 x 224, a few snippets
  python benchmarks/extract.py --quick   # smoke run (1/8 width, 57 x 57; 32 x 32 video)

Writes ``extract.csv`` and ``extract.md`` to ``--out`` (default ``benchmarks/out/``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.features import i3d  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.features import video as video_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def synthetic_video(path: str, frames: int, height: int, width: int) -> str:
  """A panning smooth texture with a moving square, ``frames`` at 25 fps."""
  rng = np.random.default_rng(0)
  big = rng.uniform(0, 255, (height // 8 + 2, (width + 2 * frames) // 8 + 2))
  import cv2  # pylint: disable=g-import-not-at-top
  texture = cv2.resize(big.astype(np.float32), ((width + 2 * frames), height),
                       interpolation=cv2.INTER_CUBIC)
  out = np.empty((frames, height, width, 3), np.uint8)
  for i in range(frames):
    img = np.clip(texture[:, 2 * i:2 * i + width], 0, 255)
    img[height // 3:height // 3 + 40, 10 + 4 * i:50 + 4 * i] = 250
    out[i] = img[..., None].astype(np.uint8)
  return video_lib.write_video(path, out, 25.0)


def network_row(stream: str, width: float, batch: int, size: int, repeats: int,
                rate: float) -> dict:
  cin = 3 if stream == "rgb" else 2
  variables = i3d.init_variables(0, cin, width)
  clips = np.random.default_rng(1).uniform(
      -1, 1, (batch, i3d.SNIPPET_FRAMES, size, size, cin)).astype(np.float32)
  fn = i3d.feature_fn(cin, width)  # the extractor's own jitted function
  t0 = time.perf_counter()
  np.asarray(fn(variables, clips))  # compiles (or reuses this process's executable)
  compile_s = time.perf_counter() - t0
  t = common.time_compiled(fn, variables, clips, warmup=1, repeats=repeats)
  flops = i3d.conv_flops(cin, width, (i3d.SNIPPET_FRAMES, size, size))
  floor_ms = batch * flops / rate * 1e3
  return {"stage": f"{stream} network", "width": width,
          "input": f"{batch}x16x{size}x{size}x{cin}", "frames": batch * i3d.SNIPPET_FRAMES,
          "median_ms": t["median_ms"], "p10_ms": t["p10_ms"], "p90_ms": t["p90_ms"],
          "frames_per_s": batch * i3d.SNIPPET_FRAMES / (t["median_ms"] * 1e-3),
          "gflop_per_snippet": flops / 1e9, "floor_ms": floor_ms,
          "ratio_to_floor": t["median_ms"] / floor_ms, "first_call_s": compile_s}


def decode_rows(path: str, config: video_lib.VideoConfig, repeats: int) -> list[dict]:
  def decode_resize():
    n = 0
    for _, frame in video_lib.resample(video_lib.decode(path), config.fps):
      video_lib.resize_short_side(frame.to_ndarray(format="rgb24"), config.short_side)
      n += 1
    return n

  def full():
    stats = video_lib.VideoStats()
    for _ in video_lib.iter_snippets(path, config, stats):
      pass
    return stats.snippets * i3d.SNIPPET_FRAMES

  rows = []
  for stage, fn in (("decode+resize", decode_resize), ("decode+resize+TV-L1 flow", full)):
    times, frames = [], 0
    for _ in range(repeats):
      t0 = time.perf_counter()
      frames = fn()
      times.append(time.perf_counter() - t0)
    ms = np.asarray(times) * 1e3
    rows.append({"stage": stage, "width": np.nan,
                 "input": f"video -> {config.short_side} -> {config.crop}", "frames": frames,
                 "median_ms": float(np.median(ms)), "p10_ms": float(np.percentile(ms, 10)),
                 "p90_ms": float(np.percentile(ms, 90)),
                 "frames_per_s": frames / (np.median(ms) * 1e-3)})
  return rows


def main(argv=None) -> pd.DataFrame:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--quick", action="store_true")
  p.add_argument("--width", type=float, default=1.0, help="I3D width multiplier")
  p.add_argument("--batch", type=int, default=2, help="snippets per network call")
  p.add_argument("--size", type=int, default=224, help="crop size")
  p.add_argument("--repeats", type=int, default=3, help="timed network calls")
  p.add_argument("--video-repeats", type=int, default=1, help="timed passes over the video")
  p.add_argument("--video-frames", type=int, default=33, help="frames of the synthetic video")
  p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "out"))
  args = p.parse_args(argv)
  vh, vw, short = 240, 320, 256
  if args.quick:
    args.width, args.batch, args.size, args.repeats = 0.125, 2, 57, 2
    args.video_frames, vh, vw, short = 17, 32, 32, 32
  rate = common.matmul_rate(512 if args.quick else 4096)
  print(f"matmul rate: {rate / 1e12:.3f} TFLOP/s", flush=True)
  rows = []
  for stream in ("rgb", "flow"):
    r = network_row(stream, args.width, args.batch, args.size, args.repeats, rate)
    rows.append(r)
    print(f"{r['stage']:>26}: {r['frames_per_s']:8.1f} frames/s, "
          f"{r['median_ms']:.0f} ms per {args.batch} snippet(s), "
          f"{r['ratio_to_floor']:.1f}x the floor", flush=True)
  config = video_lib.VideoConfig(short_side=short, crop=min(args.size, short))
  with tempfile.TemporaryDirectory() as tmp:
    path = synthetic_video(os.path.join(tmp, "v.mp4"), args.video_frames, vh, vw)
    for r in decode_rows(path, config, args.video_repeats):
      rows.append(r)
      print(f"{r['stage']:>26}: {r['frames_per_s']:8.1f} frames/s", flush=True)
  df = pd.DataFrame(rows)
  net_fps = 1.0 / sum(1.0 / r["frames_per_s"] for r in rows[:2])
  notes = [f"- measured float32 matmul rate ({512 if args.quick else 4096}^3): "
           f"{rate / 1e12:.3f} TFLOP/s",
           f"- both networks together: {net_fps:.1f} frames/s; with decoding and "
           f"TV-L1 flow in series: {1.0 / (1.0 / net_fps + 1.0 / rows[-1]['frames_per_s']):.1f} "
           "frames/s (25 frames = 1 s of video)"]
  common.write_reports(df, args.out, "extract", "I3D feature extraction", notes)
  return df


if __name__ == "__main__":
  main()
