"""Converts a W-TALC bundle to the pickle-free ActivityNet-JSON + per-video ``.npy`` layout.

  python -m jaxseg.data.wtalc_convert --wtalc-dir Thumos14reduced-Annotations \\
      --features-file Thumos14reduced-I3D-JOINTFeatures.npy --out thumos14-anet

The W-TALC bundle keeps per-video features, segments and labels in pickled
object arrays. jaxseg reads them with an unpickler that runs no code
(:mod:`jaxseg.data.npy`), but the safest input is one with no pickle at all:
this writes

* ``OUT/annotations.json``: ``{"database": {vid: {"subset", "duration",
  "annotations": [{"segment": [start, end], "label": name}],
  "video_labels": [name, ...]}}, "classes": [...]}`` (format 1 of
  :mod:`jaxseg.data.readers`; ``classes`` keeps W-TALC's class order, which
  ``read_activitynet(class_names=...)`` takes; ``video_labels``, when the
  bundle has ``labels_all.npy``, every class the video shows, also without
  annotated instances);
* ``OUT/features/<vid>.npy``: each video's ``(T, D) float32`` features, plain
  arrays read with ``allow_pickle=False``;
* ``OUT/Ambiguous_test.txt``: the bundle's file, byte for byte, when it has one.

Then train with ``data.format="activitynet"``, ``data.annotation_path=OUT/annotations.json``,
``data.features_dir=OUT/features`` and, when written, ``data.ambiguous_path=
OUT/Ambiguous_test.txt`` (the command prints these flags). Every file is written
atomically; ``OUT`` must not hold an ``annotations.json`` already (nothing is
overwritten).
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Sequence

import numpy as np

from jaxseg import cli
from jaxseg.data import io
from jaxseg.data import reader_common
from jaxseg.data import readers
from jaxseg.data import wtalc
from jaxseg.data.video import I3D_FEATURE_RATE, DataError, Dataset

ANNOTATION_FILE = "annotations.json"
FEATURES_DIR = "features"


def to_annotation_json(dataset: Dataset) -> dict:
  """The ActivityNet-format annotations of ``dataset`` (plus its ``classes`` in order)."""
  db = {}
  for v in dataset.videos:
    db[v.video_id] = {
        "subset": v.subset, "duration": float(v.duration),
        "annotations": [{"segment": [float(i.start), float(i.end)],
                         "label": dataset.class_names[i.label]} for i in v.instances]}
    if v.extra_labels:
      db[v.video_id]["video_labels"] = [dataset.class_names[c] for c in v.extra_labels]
  return {"database": db, "classes": list(dataset.class_names)}


def convert(wtalc_dir: str, features_file: str, out_dir: str, *,
            feature_rate: float = I3D_FEATURE_RATE) -> Dataset:
  """Reads the W-TALC bundle (checked like any input) and writes it to ``out_dir``.

  Returns:
    The dataset read (what ``read_activitynet`` on the output gives back).

  Raises:
    DataError: bad bundle (naming file and video), or ``out_dir`` holds a
      conversion already.
  """
  if not (math.isfinite(feature_rate) and feature_rate > 0):
    raise DataError(f"--feature-rate: segments per second must be a number > 0, got "
                    f"{feature_rate}")
  dataset = wtalc.read_wtalc(wtalc_dir, features_file, feature_rate=feature_rate)
  ann_path = os.path.join(out_dir, ANNOTATION_FILE)
  if os.path.exists(ann_path):
    raise DataError(f"{ann_path}: exists; refusing to overwrite (choose another --out)")
  feat_dir = os.path.join(out_dir, FEATURES_DIR)
  os.makedirs(feat_dir, exist_ok=True)
  for v in dataset.videos:
    with io.atomic_open(io.child_path(feat_dir, v.video_id, ".npy"), "wb") as f:
      np.save(f, np.asarray(v.features, np.float32), allow_pickle=False)
  amb = os.path.join(wtalc_dir, wtalc.WTALC_AMBIGUOUS_FILE)
  if os.path.isfile(amb):  # read_wtalc has checked it
    with open(amb, "rb") as src:
      data = src.read()
    with io.atomic_open(os.path.join(out_dir, wtalc.WTALC_AMBIGUOUS_FILE), "wb") as f:
      f.write(data)
  # The annotations last: a crash leaves no annotations.json, so a rerun redoes it all.
  io.atomic_write_text(ann_path, json.dumps(to_annotation_json(dataset), indent=1) + "\n")
  return dataset


def read_converted(out_dir: str, *, feature_rate: float = I3D_FEATURE_RATE) -> Dataset:
  """Reads a conversion back with the ActivityNet reader, in W-TALC's class order."""
  ann_path = os.path.join(out_dir, ANNOTATION_FILE)
  classes = io.load_json(ann_path, "annotation").get("classes")
  ds = readers.read_activitynet(ann_path, os.path.join(out_dir, FEATURES_DIR),
                                feature_rate=feature_rate, class_names=classes)
  amb = os.path.join(out_dir, wtalc.WTALC_AMBIGUOUS_FILE)
  return reader_common.attach_ambiguous(ds, amb) if os.path.isfile(amb) else ds


def config_flags(out_dir: str) -> list[str]:
  """The ``--config.data.*`` flags that train on a conversion in ``out_dir``."""
  flags = ['--config.data.format=activitynet',
           f"--config.data.annotation_path={os.path.join(out_dir, ANNOTATION_FILE)}",
           f"--config.data.features_dir={os.path.join(out_dir, FEATURES_DIR)}"]
  amb = os.path.join(out_dir, wtalc.WTALC_AMBIGUOUS_FILE)
  if os.path.isfile(amb):
    flags.append(f"--config.data.ambiguous_path={amb}")
  return flags


def main(argv: Sequence[str] | None = None) -> int:
  p = cli.ArgumentParser(prog="python -m jaxseg.data.wtalc_convert",
                              description=__doc__.splitlines()[0])
  p.add_argument("--wtalc-dir", required=True, help="the W-TALC bundle folder")
  p.add_argument("--features-file", required=True,
                 help="the features array, e.g. Thumos14reduced-I3D-JOINTFeatures.npy")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--feature-rate", type=float, default=I3D_FEATURE_RATE,
                 help="segments per second (default 25/16, I3D)")
  args = p.parse_args(argv)
  try:
    ds = convert(args.wtalc_dir, args.features_file, args.out, feature_rate=args.feature_rate)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: {e.filename or args.out}: {e.strerror or e}", file=sys.stderr)
    return 2
  print(f"wrote {len(ds.videos)} videos, {len(ds.class_names)} classes to {args.out}; "
        "train on it with\n  " + " \\\n  ".join(config_flags(args.out)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
