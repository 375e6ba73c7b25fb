"""Small copies of the public THUMOS14 / ActivityNet data trees, for the tests.

Each builder writes a folder exactly as the public code base ships it (names,
nesting, file formats), with few videos and random features of the real width
(1024 per stream, 2048 joint), and returns the paths a user would pass.
"""

from __future__ import annotations

import json
import os

import numpy as np

RATE = 25.0 / 16.0
CLASSES = ("BaseballPitch", "Diving")


def _feats(rng, t, d):
  return rng.normal(size=(t, d)).astype(np.float32)


def _videos(prefix, n, first_len, rng):
  """``n`` videos of distinct lengths, each with one instance of each class
  (so every class has ground truth in every subset)."""
  out = []
  for k in range(n):
    t = first_len + 7 * k
    dur = round(t / RATE + 0.3, 2)  # >= T / rate, as floor(frames / 16) gives
    anns = [(round(0.1 * dur, 2), round(0.35 * dur, 2), CLASSES[k % 2]),
            (round(0.55 * dur, 2), round(0.8 * dur, 2), CLASSES[(k + 1) % 2])]
    out.append((f"{prefix}_{k + 1:07d}", t, dur, anns))
  return out


def basnet_tree(root, *, seed=0, n_train=6, n_test=4):
  """BaSNet's / LACP's THUMOS14: ``gt.json`` with subsets ``train`` / ``test``
  and ``features/{train,test}/{rgb,flow}/<vid>.npy`` ``(T, 1024)`` each.

  Returns:
    ``(gt_json, features_dir, {subset: [(vid, T, duration, anns)]})``.
  """
  rng = np.random.default_rng(seed)
  root = str(root)
  subsets = {"train": _videos("video_validation", n_train, 20, rng),
             "test": _videos("video_test", n_test, 24, rng)}
  database = {}
  for subset, vids in subsets.items():
    for vid, t, dur, anns in vids:
      database[vid] = {"subset": subset, "duration": dur,
                       "annotations": [{"segment": [s, e], "label": l,
                                        "label_id": CLASSES.index(l)} for s, e, l in anns]}
      for stream in ("rgb", "flow"):
        folder = os.path.join(root, "features", subset, stream)
        os.makedirs(folder, exist_ok=True)
        np.save(os.path.join(folder, vid + ".npy"), _feats(rng, t, 1024))
  gt = os.path.join(root, "gt.json")
  with open(gt, "w") as f:
    json.dump({"version": "Thumos14-30fps", "database": database}, f)
  return gt, os.path.join(root, "features"), subsets


def _obj(items):
  out = np.empty(len(items), dtype=object)
  for i, x in enumerate(items):
    out[i] = x
  return out


def wtalc_tree(root, *, seed=1, full=False):
  """W-TALC's bundle: ``Thumos14reduced-I3D-JOINTFeatures.npy`` beside
  ``Thumos14reduced-Annotations/`` (``videoname``, ``subset``, ``duration``,
  ``segments``, ``labels``, ``labels_all``, ``classlist`` ``.npy`` and
  ``Ambiguous_test.txt``). With ``full``, the 101-class ``Thumos14-*`` naming
  and class list, where some videos have a video-level label and no instance.

  Returns:
    ``(annotations_dir, features_file_name, info)`` with ``info`` holding
    ``names``, ``subsets``, ``ambiguous`` (``{vid: [(s, e)]}``) and
    ``label_only`` (the training video with labels but no instance).
  """
  rng = np.random.default_rng(seed)
  prefix = "Thumos14" if full else "Thumos14reduced"
  classes = list(CLASSES) + (["Archery", "Bowling", "Drumming"] if full else [])
  vids = ([(v, "validation") for v in _videos("video_validation", 6, 20, rng)]
          + [(v, "test") for v in _videos("video_test", 4, 24, rng)])
  # A training video with a video-level label and no annotated instance.
  label_only = ("video_validation_0000099", 30, round(30 / RATE + 0.3, 2), [])
  vids.insert(3, (label_only, "validation"))
  names, subsets, durations, segments, labels, labels_all, feats = [], [], [], [], [], [], []
  for (vid, t, dur, anns), subset in vids:
    names.append(vid.encode())
    subsets.append(subset.encode())
    durations.append([dur])
    segments.append([[s, e] for s, e, _ in anns])
    labels.append([l.encode() for _, _, l in anns])
    extra = ["Archery"] if full and subset == "validation" else []
    all_labels = sorted({l for _, _, l in anns} | set(extra))
    labels_all.append([l.encode() for l in (all_labels or ["Diving"])])
    feats.append(_feats(rng, t, 2048))
  ann_dir = os.path.join(str(root), f"{prefix}-Annotations")
  os.makedirs(ann_dir)
  np.save(os.path.join(ann_dir, "videoname.npy"), np.array(names))
  np.save(os.path.join(ann_dir, "subset.npy"), np.array(subsets))
  np.save(os.path.join(ann_dir, "duration.npy"), np.array(durations))
  np.save(os.path.join(ann_dir, "classlist.npy"), np.array([c.encode() for c in classes]))
  for name, arr in (("segments", segments), ("labels", labels), ("labels_all", labels_all)):
    np.save(os.path.join(ann_dir, f"{name}.npy"), _obj(arr), allow_pickle=True)
  features_file = f"{prefix}-I3D-JOINTFeatures.npy"
  np.save(os.path.join(str(root), features_file), _obj(feats), allow_pickle=True)
  # Half of each test video is ambiguous: every model's detections overlap it.
  ambiguous = {}
  for (vid, t, dur, _), subset in vids:
    if subset == "test":
      ambiguous[vid] = [(round(0.4 * dur, 1), round(0.9 * dur, 1))]
  with open(os.path.join(ann_dir, "Ambiguous_test.txt"), "w") as f:
    for vid, segs in ambiguous.items():
      for s, e in segs:
        f.write(f"{vid} {s} {e}\n")
  return ann_dir, features_file, {
      "names": [n.decode() for n in names], "subsets": [s.decode() for s in subsets],
      "ambiguous": ambiguous, "label_only": label_only[0], "classes": classes}


def anet13_tree(root, *, seed=2):
  """ActivityNet 1.3: ``activity_net.v1-3.min.json`` (version, taxonomy,
  database with ``training`` / ``validation`` / ``testing``; testing without
  annotations) and ``features/<vid>.npy`` ``(T, 2048)``.

  Returns:
    ``(json_path, features_dir)``.
  """
  rng = np.random.default_rng(seed)
  root = str(root)
  fdir = os.path.join(root, "features")
  os.makedirs(fdir)
  database = {}
  for subset, n, first in (("training", 6, 20), ("validation", 4, 24), ("testing", 2, 22)):
    for vid, t, dur, anns in _videos(f"v_{subset[:3]}", n, first, rng):
      vid = vid.replace("_0000", "X")  # YouTube-like ids
      database[vid] = {
          "subset": subset, "duration": dur, "resolution": "1280x720",
          "url": f"https://www.youtube.com/watch?v={vid}",
          "annotations": [] if subset == "testing" else
          [{"segment": [s, e], "label": l} for s, e, l in anns]}
      np.save(os.path.join(fdir, vid + ".npy"), _feats(rng, t, 2048))
  taxonomy = [{"nodeId": i, "nodeName": c, "parentId": 0, "parentName": "Root"}
              for i, c in enumerate(CLASSES, 1)]
  path = os.path.join(root, "activity_net.v1-3.min.json")
  with open(path, "w") as f:
    json.dump({"version": "VERSION 1.3", "taxonomy": taxonomy, "database": database}, f)
  return path, fdir
