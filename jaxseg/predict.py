"""``--mode predict``: a finished run on a folder of features without annotations.

  python -m jaxseg.main --mode predict --workdir runs/thumos14 \\
      --predict_features FEATURES_DIR --predict_out predictions/

reads the run from its work directory only (``config.json``, ``classes.json``
and the selected checkpoint; nothing there is written) and the ``.npy``
features of ``FEATURES_DIR`` in any layout :mod:`jaxseg.data.layouts` knows,
with the run's ``data.feature_streams`` (the video ids are the file stems).
It writes, all at once (a temporary folder renamed into place: an error leaves
no partial output):

* ``detections.json``: the ActivityNet result format, as training writes it;
* ``cas/<vid>.npz``: ``cas_cls``, ``cas_loc`` and ``cas_a`` ``(T, N)``
  (``cas_a = (cas_cls + cas_loc) / 2``, the CAS proposals come from),
  ``s_a``, ``p_a`` ``(N,)``, ``class_names`` and ``feature_rate``;
* with ``plots=True``, ``plots/<vid>.png``: the CAS timeline of the video's
  detected classes.

Each video's duration is ``T / data.feature_rate``: a detection ends at most
at the end of the features (``--mode eval`` clips at the annotation's duration
instead, the same when the annotation's duration is at least ``T / rate``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile

import ml_collections
import numpy as np

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import config as config_lib
from jaxseg import config_checks
from jaxseg import evaluate as evaluate_lib
from jaxseg import inference
from jaxseg import rules as rules_lib
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from jaxseg.data import io
from jaxseg.data import layouts
from jaxseg.data import reader_common
from jaxseg.data.video import DataError, Dataset, Video

CHECKPOINTS = ("selected", "final")
PREDICT_SUBSET = "predict"  # the subset of videos of a flat or stream layout


def run_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was trained with, from ``workdir/config.json``, validated
  as a config file is (fields added since the run read with their earlier
  behaviour: ``config.ADDED_FIELDS``).

  Raises:
    ConfigError: no run there, the file is unreadable, or a field is invalid
      (naming the file and the field).
  """
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise config_lib.ConfigError(f"{workdir} holds no run (no config.json); train first")
  try:
    raw = io.load_json(path, "run config")
  except DataError as e:
    raise config_lib.ConfigError(str(e)) from None
  if not isinstance(raw, dict):
    raise config_lib.ConfigError(f"{path}: expected a JSON object of config sections, got "
                                 f"{type(raw).__name__}")
  try:
    config = ml_collections.ConfigDict(config_lib.with_added_fields(raw))
    config_checks.check_fields(config)
    config_checks.validate(config)
  except config_lib.ConfigError as e:
    raise config_lib.ConfigError(f"{path}: {e}") from None
  return config


def run_classes(config, workdir: str) -> tuple[list[str], int, dict[str, int]]:
  """``(class_names, D, stream_widths)`` of a run: ``classes.json``, or (a run
  from before that file) its dataset read back as
  :func:`jaxseg.run_data.read_data` does."""
  got = run_data.load_run_classes(workdir)
  if got is not None:
    return got
  data = run_data.read_data(config, workdir)
  return (list(data.dataset.class_names), data.dataset.feature_dim,
          dict(data.dataset.stream_widths))


# The stream folders jaxseg.extract writes; a run trained on joined features
# (W-TALC's JOINT arrays: RGB then flow) reads them joined in this order.
EXTRACT_STREAMS = ("rgb", "flow")


def _streams(config, features_dir: str) -> tuple[str, ...]:
  """The run's stream sub-folders; for a run on joined features, the
  ``jaxseg.extract`` folders ``features_dir`` (or its subset folders) has
  (both, joined in that order, or one: a run on RGB-only features)."""
  if config.data.format == "activitynet" and config.data.feature_streams:
    return tuple(config.data.feature_streams)
  def has(stream):  # DIR/<stream>/ or DIR/<subset>/<stream>/
    if os.path.isdir(os.path.join(features_dir, stream)):
      return True
    subs = os.listdir(features_dir) if os.path.isdir(features_dir) else []
    return any(os.path.isdir(os.path.join(features_dir, d, stream)) for d in subs
               if not d.startswith("."))
  # rgb and flow joined, or one of them alone (jaxseg.extract --streams)
  return tuple(s for s in EXTRACT_STREAMS if has(s))


def read_folder(features_dir: str, class_names, feature_dim: int, *, feature_rate: float,
                streams=(), stream_widths=None, source: str = "the run") -> Dataset:
  """The videos of a features folder (no annotations) as a :class:`Dataset`.

  Args:
    stream_widths: ``{stream: width}`` the run was trained on (each stream's
      file is checked against it); None or empty: the total D only.

  Raises:
    DataError: no features, a mixed layout, a missing stream file, bad values,
      a stream of another width than the run's, or a video whose D is not
      ``feature_dim`` (naming the file, expected and got).
  """
  layout, found = layouts.scan_folder(features_dir, streams)
  videos = []
  for vid, sub in found:
    raw, path, files = reader_common.load_feature_files(layout.paths(vid, sub), vid)
    reader_common.check_stream_widths(files, stream_widths or {}, video_id=vid,
                                      source=source)
    if getattr(raw, "ndim", 0) == 2 and raw.shape[1] != feature_dim:
      raise DataError(f"{path}: video {vid!r}: feature dimension D={raw.shape[1]}, but "
                      f"{source} takes D={feature_dim} (expected {feature_dim}, got "
                      f"{raw.shape[1]}; layout {layout.pattern()})")
    feats = reader_common.check_features(raw, path=path, video_id=vid, feature_dim=feature_dim)
    videos.append(Video(video_id=vid, subset=sub or PREDICT_SUBSET, features=feats,
                        feature_rate=float(feature_rate),
                        duration=feats.shape[0] / float(feature_rate)))
  return Dataset(list(class_names), videos, notes=[layout.describe()])


# Written into every output folder of predict: --overwrite replaces only a
# folder that holds it (one this command made), never another folder.
OUTPUT_MARKER = ".jaxseg-predictions"


def _is_run(path: str) -> bool:
  """Whether ``path`` is a jaxseg run directory (a config and checkpoints)."""
  return (os.path.isfile(os.path.join(path, "config.json"))
          and os.path.isdir(os.path.join(path, "checkpoints")))


def _check_out(out_dir: str, overwrite: bool, *, inputs: dict[str, str]) -> None:
  """The output rule of ``--predict_out``.

  It may not be a symlink, nor be, contain or lie inside an input (``inputs``:
  ``{"the features folder": path, "the run": path}``) or any other run
  directory; an existing non-empty folder is replaced only with ``overwrite``
  and only when this command made it (:data:`OUTPUT_MARKER`).
  """
  bad = config_lib.ConfigError
  if os.path.islink(out_dir):
    raise bad(f"{out_dir}: --predict_out is a symlink; give the folder itself")
  real = os.path.realpath(out_dir)
  for what, path in inputs.items():
    other = os.path.realpath(path)
    if io.within(real, other) or io.within(other, real):
      raise bad(f"{out_dir}: --predict_out may not be, contain or lie inside {what} "
                f"({path}); give a folder of its own")
  parent = real
  while True:
    if _is_run(parent):
      raise bad(f"{out_dir}: --predict_out lies inside the run {parent}; give a folder "
                "outside every run directory")
    up = os.path.dirname(parent)
    if up == parent:
      break
    parent = up
  if os.path.lexists(out_dir) and not os.path.isdir(out_dir):
    raise bad(f"{out_dir}: --predict_out exists and is not a folder")
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    if not overwrite:
      raise bad(f"{out_dir}: already exists and is not an empty folder; pass --overwrite "
                "to replace it, or give another --predict_out")
    if not os.path.isfile(os.path.join(out_dir, OUTPUT_MARKER)):
      raise bad(f"{out_dir}: --overwrite replaces only a folder --mode predict wrote "
                f"(it holds {OUTPUT_MARKER}); this one it did not: give another --predict_out")
    for dirpath, dirnames, _ in os.walk(out_dir):  # a run moved in since: never replaced
      if _is_run(dirpath):
        raise bad(f"{out_dir}: --overwrite would remove the run {dirpath} inside it; "
                  "move it out or give another --predict_out")
      dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]


def _remove_leftovers(out_dir: str) -> None:
  """Removes the temporary folders a killed predict left beside ``out_dir``."""
  parent, base = os.path.split(out_dir)
  if not os.path.isdir(parent):
    return
  # tempfile.mkdtemp's names: ".<base>." + 8 random characters + ".tmp" / ".old".
  pattern = re.compile(rf"\.{re.escape(base)}\.[a-z0-9_]{{8}}\.(tmp|old)")
  for name in os.listdir(parent):
    path = os.path.join(parent, name)
    ours = (pattern.fullmatch(name) is not None and os.path.isdir(path)
            and not os.path.islink(path))
    if ours and (os.path.isfile(os.path.join(path, OUTPUT_MARKER)) or not os.listdir(path)):
      shutil.rmtree(path, ignore_errors=True)


def _install(tmp: str, out_dir: str) -> None:
  """Moves the finished folder ``tmp`` to ``out_dir`` (replacing it)."""
  if os.path.isdir(out_dir):
    old = tempfile.mkdtemp(dir=os.path.dirname(out_dir),
                           prefix=f".{os.path.basename(out_dir)}.", suffix=".old")
    os.rmdir(old)
    os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    shutil.rmtree(old)
  else:
    os.rename(tmp, out_dir)


def predict_folder(workdir: str, features_dir: str, out_dir: str, *,
                   which: str = "selected", plots: bool = False,
                   overwrite: bool = False) -> dict:
  """``--mode predict`` (see the module docstring).

  Args:
    workdir: a finished run's work directory (read only).
    features_dir: the features folder.
    out_dir: the output folder (must be absent or empty unless ``overwrite``).
    which: ``"selected"`` (the validation-selected checkpoint) or ``"final"``.
    plots: also write ``plots/<vid>.png``.
    overwrite: replace an existing ``out_dir``.

  Returns:
    ``{"out_dir", "num_videos", "num_detections", "step", "layout"}``.

  Raises:
    ConfigError: no run in ``workdir``, no checkpoint, ``out_dir`` in the way.
    DataError: bad features (nothing is written).
  """
  if which not in CHECKPOINTS:
    raise ValueError(f"predict: which must be one of {CHECKPOINTS}, got {which!r}")
  out_dir = os.path.abspath(out_dir)
  inputs = {"the features folder": features_dir, "the run": workdir}
  _check_out(out_dir, overwrite, inputs=inputs)
  config = run_config(workdir)
  checkpoints_lib.check_finished(config, workdir, action="predicting with it")
  class_names, feature_dim, stream_widths = run_classes(config, workdir)
  streams = _streams(config, features_dir)
  ds = read_folder(features_dir, class_names, feature_dim,
                   feature_rate=float(config.data.feature_rate), streams=streams,
                   stream_widths=stream_widths,
                   source=f"the run in {workdir}" + (f" (streams {'+'.join(streams)})"
                                                     if streams else ""))
  model, state, step = checkpoints_lib.load_checkpoint(config, workdir, feature_dim,
                                                       len(class_names), which=which)
  rules = rules_lib.read_choice(config, workdir, which, step)  # as its evaluation chose
  batches = batching.eval_batches(ds, batch_size=config.inference.batch_size,
                                  buckets=config.train.length_buckets)
  pred = inference.predict(
      evaluate_lib.make_apply_fn(model), {"params": state.params}, batches,
      videos=ds, class_names=class_names, rules=rules,
      topk_ratio=config.loss.topk_ratio, return_cas=True)
  os.makedirs(os.path.dirname(out_dir), exist_ok=True)
  _remove_leftovers(out_dir)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(out_dir),
                         prefix=f".{os.path.basename(out_dir)}.", suffix=".tmp")
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # as a folder made by os.makedirs, not mkdtemp's 0700
    with open(os.path.join(tmp, OUTPUT_MARKER), "w") as f:
      f.write("Written by python -m jaxseg.main --mode predict; --overwrite may replace it.\n")
    _write(tmp, ds, pred, plots=plots, provenance={
        "workdir": os.path.abspath(workdir), "checkpoint": which, "step": step,
        "rules": rules.name,
        "features_dir": os.path.abspath(features_dir), "features": ds.notes[0],
        "config": json.loads(config.to_json_best_effort())})
    _check_out(out_dir, overwrite, inputs=inputs)  # nothing appeared meanwhile
    _install(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return {"out_dir": out_dir, "num_videos": len(ds.videos), "step": step,
          "num_detections": sum(len(d) for d in pred["results"].values()),
          "layout": ds.notes[0]}


def _write(folder: str, ds: Dataset, pred: dict, *, plots: bool, provenance: dict) -> None:
  inference.write_detections(os.path.join(folder, "detections.json"), pred,
                             provenance=provenance)
  cas_dir = os.path.join(folder, "cas")
  os.makedirs(cas_dir)
  names = np.asarray(ds.class_names)
  for v in ds.videos:
    cas = pred["cas"][v.video_id]
    with open(io.child_path(cas_dir, v.video_id, ".npz"), "wb") as f:
      np.savez_compressed(f, cas_cls=cas["cas_cls"], cas_loc=cas["cas_loc"],
                          cas_a=cas["cas_a"], s_a=pred["s_a"][v.video_id],
                          p_a=pred["p_a"][v.video_id], class_names=names,
                          feature_rate=np.float64(v.feature_rate))
  if not plots:
    return
  from jaxseg import plots as plots_lib  # pylint: disable=g-import-not-at-top
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  index = {n: i for i, n in enumerate(ds.class_names)}
  plot_dir = os.path.join(folder, "plots")
  for v in ds.videos:
    cas = pred["cas"][v.video_id]
    dets = pred["results"][v.video_id]
    classes = list(dict.fromkeys(index[d["label"]] for d in dets))[:3]
    fig = plots_lib.plot_cas_timeline(
        v, ds.class_names, cas_cls=cas["cas_cls"], cas_loc=cas["cas_loc"],
        classes=classes or None, path=io.child_path(plot_dir, v.video_id, ".png"))
    plt.close(fig)
