"""PNG plots: ground truth, CAS timelines, similarity matrices, loss terms, training
curves, the ablation bar chart. Each function draws into a Matplotlib figure,
writes it when given ``path`` and returns the figure (the notebook shows it
inline; a script should ``plt.close(fig)`` once written).

Shapes: ``T`` segments of one video (its real length, no padding), ``N``
classes. Equation numbers refer to the paper.
"""

from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

# Matplotlib picks a non-interactive backend itself on a machine without a display,
# and the inline one in a notebook.
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Patch

from jaxseg.data.video import Video

# The order and names of the loss terms of eq. 1.
LOSS_TERMS = ("classification", "segment", "sphere", "propagation")
_LINESTYLES = ("-", "--", "-.", ":")


def _check_cas(where: str, video: Video, name: str, value, num_classes: int | None):
  """``value`` as a ``(T, N)`` float array for ``video``, or a ValueError naming both."""
  arr = np.asarray(value, np.float64)
  n_ok = num_classes is None or (arr.ndim == 2 and arr.shape[1] == num_classes)
  if arr.ndim != 2 or arr.shape[0] != video.num_segments or not n_ok:
    expected = f"({video.num_segments}, {num_classes if num_classes is not None else 'N'})"
    raise ValueError(f"{where}: video {video.video_id!r}: {name} has shape {arr.shape}, "
                     f"expected {expected} (T segments of the video, N classes)")
  return arr


def _default_classes(video: Video, *arrays) -> list[int]:
  """The classes present in ``video`` or labeled in any of ``arrays`` (T, N)."""
  present = {int(i.label) for i in video.instances}
  for arr in arrays:
    if arr is not None:
      present |= {int(n) for n in np.flatnonzero(np.asarray(arr).any(axis=0))}
  return sorted(present)


def _minmax(x: np.ndarray) -> np.ndarray:
  """Min-max normalises ``(T, N)`` over time per class; a constant column gives 1
  (as :func:`jaxseg.proposals.generate_proposals` does before thresholding)."""
  lo = x.min(axis=0, keepdims=True)
  span = x.max(axis=0, keepdims=True) - lo
  return np.divide(x - lo, span, out=np.ones_like(x), where=span > 0)


def _save(fig, path: str | None):
  if path:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
  return fig


def plot_cas_timeline(video: Video, class_names: Sequence[str], *, cas_cls: np.ndarray,
                      cas_loc: np.ndarray, segment_labels: np.ndarray | None = None,
                      classes: Sequence[int] | None = None, path: str | None = None,
                      title: str | None = None):
  """The paper's Fig. 4/6 for one video: ground truth, labeled segments, CAS.

  Args:
    video: the video (its instances are drawn as ground truth).
    class_names: names of the ``N`` classes.
    cas_cls: ``(T, N)`` classification CAS of this video (cut to its length).
    cas_loc: ``(T, N)`` localization CAS.
    segment_labels: optional ``(T, N)`` {0, 1} labeled segments.
    classes: the classes to draw; default the classes present in the video.
    path: where to write the PNG.
    title: figure title; default the video id.

  Raises:
    ValueError: an array whose shape is not ``(T, N)`` for this video.
  """
  where = "plot_cas_timeline"
  n_cls = len(class_names)
  cas_cls = _check_cas(where, video, "cas_cls", cas_cls, n_cls)
  cas_loc = _check_cas(where, video, "cas_loc", cas_loc, n_cls)
  if segment_labels is not None:
    segment_labels = _check_cas(where, video, "segment_labels", segment_labels, n_cls)
  t = np.arange(video.num_segments) / video.feature_rate
  if classes is None:
    classes = (sorted({i.label for i in video.instances})
               or [int(np.argmax(cas_cls.mean(0)))])
  cas_a = (cas_cls + cas_loc) / 2  # paper 4.7
  fig, axes = plt.subplots(len(classes), 1, figsize=(11, 2.6 * len(classes)), squeeze=False)
  for ax, n in zip(axes[:, 0], classes):
    for inst in video.instances:
      if inst.label == n:
        ax.axvspan(inst.start, inst.end, color="tab:green", alpha=0.18, lw=0)
    ax.plot(t, cas_cls[:, n], label="$C_{cls}$", lw=1.0)
    ax.plot(t, cas_loc[:, n], label="$C_{loc}$", lw=1.0)
    ax.plot(t, cas_a[:, n], label="$C_a$", lw=1.6, color="black")
    if segment_labels is not None:
      idx = np.flatnonzero(segment_labels[:, n])
      if len(idx):
        ax.scatter(idx / video.feature_rate, np.full(len(idx), cas_a[:, n].max()),
                   marker="v", color="tab:red", zorder=5, label="labeled segment")
    ax.set_ylabel(class_names[n])
    ax.set_xlim(0, max(video.duration, t[-1] if len(t) else 1.0))
    ax.grid(alpha=0.3)
  axes[0, 0].legend(loc="upper right", ncol=4, fontsize=8)
  axes[-1, 0].set_xlabel("time (s); green: ground-truth instances")
  fig.suptitle(title or video.video_id)
  fig.tight_layout()
  return _save(fig, path)


def _draw_similarity(fig, ax, similarity: np.ndarray, video: Video | None, title: str):
  im = ax.imshow(similarity, cmap="viridis", origin="upper", interpolation="nearest")
  if video is not None:
    # Pixel t spans [t - 0.5, t + 0.5]; time s is at s * rate - 0.5 in pixel units.
    for inst in video.instances:
      for sec in (inst.start, inst.end):
        x = sec * video.feature_rate - 0.5
        ax.axvline(x, color="white", lw=0.5, alpha=0.7)
        ax.axhline(x, color="white", lw=0.5, alpha=0.7)
  ax.set(xlabel="segment j", ylabel="segment i", title=title)
  fig.colorbar(im, ax=ax, fraction=0.046)


def _check_similarity(where: str, name: str, similarity, video: Video | None) -> np.ndarray:
  s = np.asarray(similarity, np.float64)
  if s.ndim != 2 or s.shape[0] != s.shape[1]:
    raise ValueError(f"{where}: {name} must be a square (T, T) matrix, got shape {s.shape}")
  if video is not None and s.shape[0] != video.num_segments:
    raise ValueError(f"{where}: video {video.video_id!r}: {name} has shape {s.shape}, "
                     f"expected ({video.num_segments}, {video.num_segments})")
  return s


def plot_similarity(similarity: np.ndarray, *, video: Video | None = None,
                    path: str | None = None, title: str = "S = f f^T"):
  """Heatmap of a ``(T, T)`` similarity matrix, with instance bounds when given.

  Args:
    similarity: ``(T, T)`` e.g. ``S = f f^T`` of paper 4.2
      (:func:`jaxseg.losses.similarity_matrix`).
    video: draws the bounds of its instances as white lines.
    path: where to write the PNG.
    title: axes title.
  """
  s = _check_similarity("plot_similarity", "similarity", similarity, video)
  fig, ax = plt.subplots(figsize=(5.5, 5))
  _draw_similarity(fig, ax, s, video, title)
  fig.tight_layout()
  return _save(fig, path)


def plot_similarity_grid(matrices: Mapping[str, np.ndarray], *, video: Video | None = None,
                         path: str | None = None, title: str | None = None):
  """Several ``(T, T)`` similarity matrices of one video side by side.

  Args:
    matrices: ``{panel title: (T, T)}``, e.g. ``S = f f^T`` of the models of a
      loss ablation, in panel order.
    video: draws the bounds of its instances as white lines.
    path: where to write the PNG.
    title: figure title.
  """
  if not matrices:
    raise ValueError("plot_similarity_grid: no matrix given")
  checked = {name: _check_similarity("plot_similarity_grid", repr(name), m, video)
             for name, m in matrices.items()}
  fig, axes = plt.subplots(1, len(checked), figsize=(4.6 * len(checked), 4.2), squeeze=False)
  for ax, (name, s) in zip(axes[0], checked.items()):
    _draw_similarity(fig, ax, s, video, str(name))
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def plot_ground_truth(video: Video, class_names: Sequence[str], *,
                      segment_labels: np.ndarray | None = None,
                      classes: Sequence[int] | None = None, path: str | None = None,
                      title: str | None = None):
  """The paper's Fig. 4 (a) for one video: its instances and labeled segments.

  One row per class: the ground-truth instances (green bars, in seconds) and
  the labeled segments ``u(t, n) = 1`` of paper 4.1 (red; segment ``t``
  covers ``[t / rate, (t + 1) / rate)`` seconds).

  Args:
    video: the video.
    class_names: names of the ``N`` classes.
    segment_labels: optional ``(T, N)`` {0, 1} ``u``.
    classes: the rows; default the classes present or labeled in the video.
    path: where to write the PNG.
    title: figure title; default the video id.

  Raises:
    ValueError: ``segment_labels`` is not ``(T, N)`` for this video.
  """
  if segment_labels is not None:
    segment_labels = _check_cas("plot_ground_truth", video, "segment_labels",
                                segment_labels, len(class_names))
  if classes is None:
    classes = _default_classes(video, segment_labels)
  rate = float(video.feature_rate)
  fig, ax = plt.subplots(figsize=(11, 0.9 + 0.5 * max(len(classes), 1)))
  for row, n in enumerate(classes):
    spans = [(i.start, i.end - i.start) for i in video.instances if i.label == n]
    if spans:
      ax.broken_barh(spans, (row - 0.35, 0.7), facecolors="tab:green", alpha=0.55)
    if segment_labels is not None:
      idx = np.flatnonzero(segment_labels[:, n])
      if len(idx):
        ax.broken_barh([(t / rate, 1.0 / rate) for t in idx], (row - 0.2, 0.4),
                       facecolors="tab:red")
  ax.set_yticks(range(len(classes)), [class_names[n] for n in classes])
  ax.set_ylim(len(classes) - 0.5, -0.5)
  ax.set_xlim(0, max(float(video.duration), video.num_segments / rate, 1e-6))
  ax.set_xlabel("time (s)")
  handles = [Patch(color="tab:green", alpha=0.55, label="ground-truth instance")]
  if segment_labels is not None:
    handles.append(Patch(color="tab:red", label="labeled segment"))
  ax.legend(handles=handles, loc="upper right", fontsize=8, ncol=2)
  ax.grid(axis="x", alpha=0.3)
  ax.set_title(title or video.video_id)
  fig.tight_layout()
  return _save(fig, path)


def plot_cas_overlay(video: Video, class_names: Sequence[str],
                     cas_by_name: Mapping[str, np.ndarray], *,
                     segment_labels: np.ndarray | None = None,
                     classes: Sequence[int] | None = None, normalize: bool = True,
                     path: str | None = None, title: str | None = None):
  """One CAS per model for the same video, overlaid (the paper's Fig. 4 (b)-(e)).

  Args:
    video: the video (its instances are shaded as ground truth).
    class_names: names of the ``N`` classes.
    cas_by_name: ``{legend label: (T, N)}``, e.g. ``C_a`` of the models of a
      loss ablation (``"CL"``, ``"CL+PSL"``, ...), in legend order.
    segment_labels: optional ``(T, N)`` {0, 1}; labeled segments are marked.
    classes: one axes per class; default the classes present in the video.
    normalize: min-max normalise each curve over the video, per class, as
      inference does before thresholding (paper 4.7), so that models with
      different scales compare; a constant curve becomes 1.
    path: where to write the PNG.
    title: figure title; default the video id.

  Raises:
    ValueError: no CAS given, or one that is not ``(T, N)`` for this video.
  """
  where = "plot_cas_overlay"
  if not cas_by_name:
    raise ValueError(f"{where}: video {video.video_id!r}: no CAS given")
  n_cls = len(class_names)
  curves = {name: _check_cas(where, video, f"cas_by_name[{name!r}]", c, n_cls)
            for name, c in cas_by_name.items()}
  if normalize:
    curves = {name: _minmax(c) for name, c in curves.items()}
  if segment_labels is not None:
    segment_labels = _check_cas(where, video, "segment_labels", segment_labels, n_cls)
  if classes is None:
    first = next(iter(curves.values()))
    classes = _default_classes(video) or [int(np.argmax(first.mean(0)))]
  t = np.arange(video.num_segments) / video.feature_rate
  fig, axes = plt.subplots(len(classes), 1, figsize=(11, 2.6 * len(classes)), squeeze=False)
  for ax, n in zip(axes[:, 0], classes):
    for inst in video.instances:
      if inst.label == n:
        ax.axvspan(inst.start, inst.end, color="tab:green", alpha=0.18, lw=0)
    for i, (name, c) in enumerate(curves.items()):
      # Distinct dashes too, so that curves which coincide stay visible.
      ax.plot(t, c[:, n], lw=1.4, ls=_LINESTYLES[i % len(_LINESTYLES)], label=str(name))
    if segment_labels is not None:
      idx = np.flatnonzero(segment_labels[:, n])
      if len(idx):
        top = max(float(np.max([c[:, n].max() for c in curves.values()])), 0.0)
        ax.scatter(idx / video.feature_rate, np.full(len(idx), top), marker="v",
                   color="tab:red", zorder=5, label="labeled segment")
    ax.set_ylabel(class_names[n] + (" (min-max)" if normalize else ""))
    ax.set_xlim(0, max(float(video.duration), t[-1] if len(t) else 1.0))
    ax.grid(alpha=0.3)
  axes[0, 0].legend(loc="upper right", ncol=min(len(curves) + 1, 5), fontsize=8)
  axes[-1, 0].set_xlabel("time (s); green: ground-truth instances")
  fig.suptitle(title or video.video_id)
  fig.tight_layout()
  return _save(fig, path)


def plot_loss_terms(values: Mapping[str, float], grad_norms: Mapping[str, float], *,
                    weights: Mapping[str, float] | None = None, path: str | None = None,
                    title: str | None = None):
  """Each loss term of eq. 1: its value and the norm of its gradient.

  Two panels of bars, one bar group per term: the unweighted value
  (``L_cls``, ``L_segment``, ``L_sphere``, ``L_prop``) and, with ``weights``,
  the weighted one (``1, alpha, beta, gamma`` times it, hatched), i.e. what
  the term contributes to ``L`` and to its gradient. The y axis is
  logarithmic when every bar is positive.

  Args:
    values: ``{term: unweighted value}``.
    grad_norms: ``{term: global L2 norm of the gradient of the unweighted term
      with respect to the model parameters}``; same keys as ``values``.
    weights: optional ``{term: weight in eq. 1}``.
    path: where to write the PNG.
    title: figure title.

  Raises:
    ValueError: the mappings have different keys, or are empty.
  """
  terms = list(values)
  if not terms:
    raise ValueError("plot_loss_terms: no term given")
  if set(grad_norms) != set(terms) or (weights is not None and not set(terms) <= set(weights)):
    raise ValueError(f"plot_loss_terms: values has terms {sorted(terms)} but grad_norms has "
                     f"{sorted(grad_norms)}" + ("" if weights is None
                                                 else f" and weights {sorted(weights)}"))
  fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
  x = np.arange(len(terms))
  for ax, data, label in ((axes[0], values, "value"), (axes[1], grad_norms, "gradient norm")):
    raw = np.array([float(data[k]) for k in terms])
    series = [(f"unweighted {label}", raw, None)]
    if weights is not None:
      w = np.array([float(weights[k]) for k in terms])
      series.append((f"weighted (eq. 1) {label}", w * raw, "//"))
    width = 0.8 / len(series)
    for i, (name, heights, hatch) in enumerate(series):
      ax.bar(x + (i - (len(series) - 1) / 2) * width, heights, width, label=name,
             hatch=hatch, alpha=0.85 if hatch is None else 0.6)
    shown = np.concatenate([h for _, h, _ in series])
    if np.all(np.isfinite(shown)) and np.all(shown > 0):
      ax.set_yscale("log")
    ax.set_xticks(x, terms)
    ax.set(ylabel=label)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return _save(fig, path)


def read_metrics(path: str) -> pd.DataFrame:
  """``metrics.jsonl`` as a DataFrame (one row per record; ``kind`` column)."""
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return pd.DataFrame(rows)


def plot_training_curves(metrics_path: str, *, path: str | None = None):
  """Loss terms over steps and validation mAP from a run's ``metrics.jsonl``.

  The loss panel is logarithmic when every drawn value is positive; the
  validation panel is drawn only when the log holds validation mAP records.

  Raises:
    ValueError: the file holds no record with ``kind`` and ``step``.
  """
  df = read_metrics(metrics_path)
  if "kind" not in df or "step" not in df:
    raise ValueError(f"plot_training_curves: {metrics_path} holds no training record "
                     "(no 'kind' and 'step' fields)")
  tr = df[df["kind"] == "train"]
  val = df[df["kind"] == "validation"]
  val_cols = [c for c in val.columns if c.startswith("mAP@") and val[c].notna().any()]
  with_val = bool(len(val)) and bool(val_cols)
  fig, axes = plt.subplots(1, 2 if with_val else 1, figsize=(11 if with_val else 6.5, 3.8),
                           squeeze=False)
  axes = axes[0]
  for name in ("total",) + LOSS_TERMS:
    if name in tr and np.any(tr[name].to_numpy() != 0):
      axes[0].plot(tr["step"], tr[name].to_numpy(float), label=name)
  drawn = [np.asarray(line.get_ydata(), float) for line in axes[0].get_lines()]
  if drawn and all(np.all(y > 0) for y in drawn):
    axes[0].set_yscale("log")
  axes[0].set(xlabel="step", ylabel="loss (unweighted terms)", title="training")
  if drawn:
    axes[0].legend(fontsize=8)
  if with_val:
    for col in val_cols:
      axes[1].plot(val["step"], val[col], marker="o", label=col)
    axes[1].set(xlabel="step", ylabel="mAP (%)", title="validation")
    axes[1].legend(fontsize=7, ncol=2)
  for ax in axes:
    ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


def plot_ablation(df: pd.DataFrame | str, *, metric: str = "mAP@0.5",
                  checkpoint: str = "final", path: str | None = None):
  """Bar chart of an ablation (``ablation.csv`` or its DataFrame): mean ± std over seeds."""
  if isinstance(df, str):
    df = pd.read_csv(df)
  sub = df[df["checkpoint"] == checkpoint]
  combos = list(dict.fromkeys(sub["losses"]))
  modes = list(dict.fromkeys(sub["label_mode"]))
  width = 0.8 / max(len(modes), 1)
  fig, ax = plt.subplots(figsize=(10, 3.8))
  x = np.arange(len(combos))
  for i, mode in enumerate(modes):
    g = sub[sub["label_mode"] == mode].groupby("losses")[metric]
    mean = g.mean().reindex(combos).to_numpy()
    std = g.std().reindex(combos).fillna(0).to_numpy()
    ax.bar(x + (i - (len(modes) - 1) / 2) * width, mean, width, yerr=std, label=mode,
           capsize=2)
  ax.set_xticks(x, combos, rotation=20)
  ax.set(ylabel=f"{metric} (%)", title=f"loss ablation ({checkpoint} checkpoint)")
  ax.legend()
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)


def plot_annotation_time(points: pd.DataFrame, *, metric: str, path: str | None = None,
                         title: str = "mAP against annotation time (paper Fig. 5)"):
  """Paper Fig. 5: one point per supervision level, mean ± std over seeds.

  Args:
    points: rows with ``label_mode``, ``annotation_time`` (fraction of the
      video's duration), ``mean`` and ``std`` (NaN for one seed) of ``metric``,
      as :func:`jaxseg.report.annotation_time_points` returns.
    metric: the metric's name, for the axis.
    path: where to write the PNG.
  """
  pts = points.sort_values("annotation_time")
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.errorbar(pts["annotation_time"], pts["mean"], yerr=pts["std"].fillna(0), marker="o",
              capsize=3)
  for row in pts.itertuples():
    ax.annotate(row.label_mode, (row.annotation_time, row.mean), textcoords="offset points",
                xytext=(6, -12), fontsize=8)
  ax.set(xlabel="annotation time (fraction of the video's duration)",
         ylabel=f"{metric} (%)", title=title)
  ax.margins(x=0.12, y=0.1)  # room for the labels
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return _save(fig, path)
