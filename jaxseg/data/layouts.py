"""Where a features folder keeps each video's ``.npy``: the public layouts, detected.

The public weakly supervised code bases ship I3D features in four layouts
(``DIR`` is ``data.features_dir``, ``<stream>`` each of ``data.feature_streams``,
e.g. ``rgb`` and ``flow``, concatenated on D in that order):

==================  ========================================  ==========================
layout              a video's file(s)                         shipped by
==================  ========================================  ==========================
``stream``          ``DIR/<stream>/<vid>.npy``                ``jaxseg.extract``
``subset/stream``   ``DIR/<subset>/<stream>/<vid>.npy``       BaSNet, LACP (THUMOS14)
``flat``            ``DIR/<vid>.npy`` (streams joined)        ActivityNet feature dumps
``subset``          ``DIR/<subset>/<vid>.npy`` (joined)       per-split dumps
==================  ========================================  ==========================

:func:`detect_layout` picks ONE layout for a whole dataset (never a guess per
video, which could silently mix files of two layouts): the layout that holds
the files of the most videos. A video that another layout would hold instead
is a mixed folder: :class:`~jaxseg.data.video.DataError` listing the paths
tried for it. :func:`scan_folder` finds the layout and the video ids of a
folder without annotations (``--mode predict``).

Every path built from a video id or a subset name goes through
:func:`jaxseg.data.io.child_path`.
"""

from __future__ import annotations

import dataclasses
import errno
import os
from typing import Sequence

from jaxseg.data import io
from jaxseg.data.video import DataError

# The layouts, in the order they are preferred when several fit equally.
STREAM_LAYOUTS = ("stream", "subset/stream")
JOINT_LAYOUTS = ("flat", "subset")


@dataclasses.dataclass(frozen=True)
class Layout:
  """One feature layout of a folder.

  Attributes:
    root: the features folder.
    name: one of ``STREAM_LAYOUTS + JOINT_LAYOUTS``.
    streams: the stream sub-folders concatenated on D (empty for a joint layout).
  """
  root: str
  name: str
  streams: tuple[str, ...] = ()

  def paths(self, video_id: str, subset: str = "") -> list[str]:
    """The file(s) of one video, in stream order.

    Raises:
      DataError: the id or the subset is not usable as a file name.
    """
    base = self.root
    if self.name.startswith("subset"):
      base = io.child_path(self.root, subset, what="subset")
    if self.streams:
      return [io.child_path(io.child_path(base, s, what="stream"), video_id, ".npy")
              for s in self.streams]
    return [io.child_path(base, video_id, ".npy")]

  def pattern(self) -> str:
    """The layout as a path pattern, e.g. ``DIR/<subset>/{rgb,flow}/<vid>.npy``."""
    parts = [self.root]
    if self.name.startswith("subset"):
      parts.append("<subset>")
    if self.streams:
      parts.append(self.streams[0] if len(self.streams) == 1
                   else "{" + ",".join(self.streams) + "}")
    return os.path.join(*parts, "<vid>.npy")

  def describe(self) -> str:
    """The line the data summary prints."""
    return f"features: {self.pattern()} (layout {self.name!r}, detected)"


def candidates(root: str, streams: Sequence[str]) -> list[Layout]:
  """The layouts a folder may have: the stream layouts first when streams are
  configured, then the joint ones (features already concatenated on D)."""
  streams = tuple(streams)
  out = [Layout(root, n, streams) for n in STREAM_LAYOUTS] if streams else []
  return out + [Layout(root, n) for n in JOINT_LAYOUTS]


def _fits(layout: Layout, video_id: str, subset: str) -> bool:
  try:
    return all(os.path.isfile(p) for p in layout.paths(video_id, subset))
  except DataError:
    return False


def tried_paths(root: str, streams: Sequence[str], video_id: str, subset: str) -> list[str]:
  """Every path any layout would read for one video (for error messages)."""
  out = []
  for lay in candidates(root, streams):
    try:
      out += lay.paths(video_id, subset)
    except DataError:
      pass
  return out


def detect_layout(root: str, videos: Sequence[tuple[str, str]],
                  streams: Sequence[str], *, allow_missing: bool = False) -> Layout:
  """The one layout of ``root`` that holds the files of ``videos``.

  Args:
    root: the features folder.
    videos: ``[(video_id, subset), ...]`` from the annotations.
    streams: the configured stream sub-folders (may be empty).
    allow_missing: videos no layout holds are left to the caller (which
      skips them, ``data.skip_bad_videos``) instead of raising.

  Returns:
    The layout holding the most videos (ties: the order of :func:`candidates`).

  Raises:
    DataError: ``root`` is not a folder; no layout holds any video; a video
      is held by another layout than the chosen one (mixed folder); or, unless
      ``allow_missing``, a video no layout holds. The message lists the paths
      tried for the first such video.
  """
  if not os.path.isdir(root):
    raise DataError(f"{root}: features folder not found")
  for vid, subset in videos:  # ids and subsets are file names, checked once
    io.child_path(root, vid, ".npy")
    if subset:
      io.child_path(root, subset, what="subset")
  lays = candidates(root, streams)
  fits = [[_fits(lay, vid, sub) for vid, sub in videos] for lay in lays]
  counts = [sum(f) for f in fits]
  best = max(range(len(lays)), key=lambda i: (counts[i], -i))
  if counts[best] == 0:
    vid, sub = videos[0]
    tried = ", ".join(tried_paths(root, streams, vid, sub))
    raise DataError(f"{root}: no feature file found for any annotated video; for video "
                    f"{vid!r} (subset {sub!r}) these paths were tried: {tried}")
  layout = lays[best]
  for k, (vid, sub) in enumerate(videos):
    if fits[best][k]:
      continue
    other = [lays[i] for i in range(len(lays)) if fits[i][k]]
    tried = ", ".join(tried_paths(root, streams, vid, sub))
    if other:
      raise DataError(
          f"{root}: mixed feature layouts: {counts[best]} video(s) are in layout "
          f"{layout.pattern()} but video {vid!r} (subset {sub!r}) is in "
          f"{other[0].pattern()}; put every video in one layout. Paths tried for "
          f"{vid!r}: {tried}")
    if not allow_missing:
      for p in layout.paths(vid, sub):
        explain_unreadable(p, vid)
      missing = [p for p in layout.paths(vid, sub) if not os.path.isfile(p)]
      raise DataError(
          f"{missing[0]}: feature file missing for annotated video "
          f"{vid!r} (subset {sub!r}; the folder's layout is {layout.pattern()}). "
          f"Paths tried: {tried}")
  return layout


def explain_unreadable(path: str, video_id: str) -> None:
  """Raises the DataError for a feature path that exists but is no readable file.

  A symbolic-link loop, a dangling link, a folder or an unreadable entry each
  get their own message; a path that is simply absent returns (the caller
  says "missing").
  """
  try:
    os.stat(path)
  except OSError as e:
    if e.errno == errno.ELOOP:
      raise DataError(f"{path}: video {video_id!r}: symbolic link loop") from None
    if os.path.islink(path):
      raise DataError(f"{path}: video {video_id!r}: dangling symbolic link to "
                      f"{os.readlink(path)!r}") from None
    if e.errno not in (errno.ENOENT, errno.ENOTDIR):
      raise DataError(f"{path}: video {video_id!r}: {e.strerror}") from None
  else:
    if os.path.isdir(path):
      raise DataError(f"{path}: video {video_id!r}: is a directory, not a feature file")


def _npy_stems(folder: str) -> list[str]:
  if not os.path.isdir(folder):
    return []
  return sorted(n[:-4] for n in os.listdir(folder)
                if n.endswith(".npy") and not n.startswith(".")
                and os.path.isfile(os.path.join(folder, n)))


def _stream_stems(folder: str, streams: Sequence[str]) -> list[str]:
  """The ids with a file in any stream folder of ``folder`` (a video missing
  from one stream is then reported, never dropped)."""
  return sorted(set().union(*(_npy_stems(os.path.join(folder, s)) for s in streams)))


def _check_stream_folders(folder: str, streams: Sequence[str]) -> None:
  """Every stream folder is in ``folder`` once one of them is.

  Raises:
    DataError: naming the missing stream folder and the ones present.
  """
  present = [s for s in streams if os.path.isdir(os.path.join(folder, s))]
  for s in streams:
    if s not in present:
      raise DataError(f"{os.path.join(folder, s)}: stream folder missing (data."
                      f"feature_streams is {list(streams)}; {folder} has "
                      f"{', '.join(present)})")


def _subdirs(folder: str) -> list[str]:
  return sorted(n for n in os.listdir(folder)
                if not n.startswith(".") and os.path.isdir(os.path.join(folder, n)))


def scan_folder(root: str, streams: Sequence[str]) -> tuple[Layout, list[tuple[str, str]]]:
  """The layout and the videos of a folder without annotations (ids: file stems).

  With streams configured, ``DIR/<stream>/`` is the ``stream`` layout and
  ``DIR/<sub>/<stream>/`` the ``subset/stream`` one; otherwise, or when no
  stream folder is there, ``DIR/*.npy`` is ``flat`` and ``DIR/<sub>/*.npy`` is
  ``subset``. The videos are the ids of every stream folder together, and
  each must have the file of every stream: a video (or a subset's stream
  folder) missing from one stream is an error, never a dropped video.

  Returns:
    ``(layout, [(video_id, subset), ...])`` sorted by subset then id.

  Raises:
    DataError: not a folder; no ``.npy``; ``.npy`` files in two layouts; a
      stream folder missing where another is; a video missing one stream's
      file; the same id in two subsets.
  """
  if not os.path.isdir(root):
    raise DataError(f"{root}: features folder not found")
  streams = tuple(streams)
  found: dict[str, list[tuple[str, str]]] = {}
  subdirs = _subdirs(root)
  if streams and any(s in subdirs for s in streams):
    vids = [(v, "") for v in _stream_stems(root, streams)]
    if vids:  # empty stream folders (beside DIR/<vid>.npy files) hold no layout
      _check_stream_folders(root, streams)
      found["stream"] = vids
  elif streams:
    subs = [d for d in subdirs if _stream_stems(os.path.join(root, d), streams)]
    for d in subs:
      _check_stream_folders(os.path.join(root, d), streams)
    vids = [(v, d) for d in subs for v in _stream_stems(os.path.join(root, d), streams)]
    if vids:
      found["subset/stream"] = vids
  flat = [(v, "") for v in _npy_stems(root)]
  if flat:
    found["flat"] = flat
  if not any(n in found for n in STREAM_LAYOUTS):
    nested = [(v, d) for d in subdirs if d not in streams
              for v in _npy_stems(os.path.join(root, d))]
    if nested:
      found["subset"] = nested
  if not found:
    want = "{" + ",".join(streams) + "}/" if streams else ""
    looked = [f"{root}/{want}<vid>.npy", f"{root}/<subset>/{want}<vid>.npy"]
    if streams:
      looked += [f"{root}/<vid>.npy", f"{root}/<subset>/<vid>.npy"]
    raise DataError(f"{root}: no .npy features found (looked for "
                    f"{', '.join(looked[:-1])} and {looked[-1]})")
  if len(found) > 1:
    names = sorted(found)
    raise DataError(f"{root}: mixed feature layouts: .npy files both in layout "
                    f"{names[0]!r} (e.g. video {found[names[0]][0][0]!r}) and in layout "
                    f"{names[1]!r} (e.g. video {found[names[1]][0][0]!r}); give a "
                    "folder holding one layout")
  (name, vids), = found.items()
  layout = Layout(root, name, streams if name in STREAM_LAYOUTS else ())
  seen: dict[str, str] = {}
  for vid, sub in vids:
    io.child_path(root, vid, ".npy")
    if vid in seen:
      raise DataError(f"{root}: video {vid!r} is in two subsets ({seen[vid]!r} and "
                      f"{sub!r})")
    seen[vid] = sub
    paths = layout.paths(vid, sub)
    for p in paths:
      if not os.path.isfile(p):
        explain_unreadable(p, vid)
        have = ", ".join(q for q in paths if os.path.isfile(q))
        raise DataError(f"{p}: feature file missing for video {vid!r} (its {have} "
                        f"exists; layout {layout.pattern()})")
  return layout, sorted(vids, key=lambda x: (x[1], x[0]))
