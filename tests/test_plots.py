"""Tests of jaxseg.plots: every function writes a real PNG and draws what it is given.

Small hand-built inputs; each test checks the PNG on disk (readable, plausible pixel
size, not blank) and the drawn data against values computed here independently.
"""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import pandas as pd  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxseg import plots  # pylint: disable=g-import-not-at-top,wrong-import-position
from jaxseg.data.video import Instance, Video  # pylint: disable=g-import-not-at-top

RATE = 2.0  # segments per second
T = 40  # segments
CLASS_NAMES = ["run", "jump", "throw"]
N = len(CLASS_NAMES)
DPI = 110  # plots._save


@pytest.fixture(autouse=True)
def _close_figures():
  yield
  plt.close("all")


@pytest.fixture
def video():
  # Class 0 at 2-6 s and 15-17 s, class 2 at 10-12.5 s; class 1 absent.
  return Video(video_id="vid_a", subset="test", features=np.zeros((T, 4), np.float32),
               feature_rate=RATE, duration=20.3,
               instances=[Instance(2.0, 6.0, 0), Instance(10.0, 12.5, 2),
                          Instance(15.0, 17.0, 0)])


@pytest.fixture
def labels():
  u = np.zeros((T, N), np.uint8)
  u[5, 0] = u[31, 0] = u[22, 2] = 1
  return u


def _cas(seed: int) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(T, N)).astype(np.float32)


def _check_png(path, width_in: float, height_in: float) -> np.ndarray:
  """The PNG exists, is readable, about ``width_in x height_in`` inches at DPI, not blank."""
  assert path.is_file() and path.stat().st_size > 2000
  img = mpimg.imread(str(path))
  assert img.ndim == 3 and img.shape[2] in (3, 4)
  h, w = img.shape[:2]
  # bbox_inches="tight" trims the margins or grows the box for outside labels a little.
  assert 0.6 * width_in * DPI <= w <= 1.2 * width_in * DPI, (w, width_in)
  assert 0.6 * height_in * DPI <= h <= 1.2 * height_in * DPI, (h, height_in)
  assert np.ptp(img[..., :3]) > 0.3  # something is drawn
  return img


def _bar_spans(collection) -> set[tuple[float, float]]:
  """(x0, x1) of each rectangle of a broken_barh collection, rounded."""
  return {(round(p.get_extents().x0, 6), round(p.get_extents().x1, 6))
          for p in collection.get_paths()}


# ------------------------------------------------------------------ CAS timeline


def test_cas_timeline_draws_each_sequence(tmp_path, video, labels):
  cas_cls, cas_loc = _cas(0), _cas(1)
  path = tmp_path / "timeline.png"
  fig = plots.plot_cas_timeline(video, CLASS_NAMES, cas_cls=cas_cls, cas_loc=cas_loc,
                                segment_labels=labels, path=str(path))
  _check_png(path, 11, 2.6 * 2)
  axes = fig.axes
  assert [ax.get_ylabel() for ax in axes] == ["run", "throw"]  # the classes present
  t = np.arange(T) / RATE
  for ax, n in zip(axes, (0, 2)):
    cls_line, loc_line, a_line = ax.get_lines()[:3]
    np.testing.assert_allclose(cls_line.get_xdata(), t)
    np.testing.assert_allclose(cls_line.get_ydata(), cas_cls[:, n], rtol=1e-6)
    np.testing.assert_allclose(loc_line.get_ydata(), cas_loc[:, n], rtol=1e-6)
    expected_a = 0.5 * (cas_cls[:, n].astype(np.float64) + cas_loc[:, n])  # paper 4.7
    np.testing.assert_allclose(a_line.get_ydata(), expected_a, rtol=1e-6, atol=1e-7)
    marks = ax.collections[0].get_offsets()[:, 0]
    np.testing.assert_allclose(sorted(marks), np.flatnonzero(labels[:, n]) / RATE)


def test_cas_timeline_rejects_a_wrong_shape(video):
  with pytest.raises(ValueError, match=r"vid_a.*cas_loc.*\(39, 3\).*\(40, 3\)"):
    plots.plot_cas_timeline(video, CLASS_NAMES, cas_cls=_cas(0), cas_loc=_cas(1)[:-1])
  with pytest.raises(ValueError, match=r"vid_a.*segment_labels"):
    plots.plot_cas_timeline(video, CLASS_NAMES, cas_cls=_cas(0), cas_loc=_cas(1),
                            segment_labels=np.zeros((T, N + 1)))


# ------------------------------------------------------------------ ground truth


def test_ground_truth_bars_and_labels(tmp_path, video, labels):
  path = tmp_path / "gt.png"
  fig = plots.plot_ground_truth(video, CLASS_NAMES, segment_labels=labels, path=str(path))
  _check_png(path, 11, 0.9 + 0.5 * 2)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_yticklabels()] == ["run", "throw"]
  run_gt, run_labels, throw_gt, throw_labels = ax.collections
  assert _bar_spans(run_gt) == {(2.0, 6.0), (15.0, 17.0)}
  assert _bar_spans(throw_gt) == {(10.0, 12.5)}
  # Segment t covers [t / rate, (t + 1) / rate).
  assert _bar_spans(run_labels) == {(2.5, 3.0), (15.5, 16.0)}
  assert _bar_spans(throw_labels) == {(11.0, 11.5)}


def test_ground_truth_adds_a_labeled_class_without_instance(tmp_path, video, labels):
  labels[0, 1] = 1
  fig = plots.plot_ground_truth(video, CLASS_NAMES, segment_labels=labels,
                                path=str(tmp_path / "gt.png"))
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["run", "jump", "throw"]


# ---------------------------------------------------------------------- similarity


def test_similarity_heatmap_and_instance_bounds(tmp_path, video):
  f = np.abs(np.random.default_rng(2).normal(size=(T, 5)))
  s = f @ f.T
  path = tmp_path / "sim.png"
  fig = plots.plot_similarity(s, video=video, path=str(path))
  _check_png(path, 5.5, 5)
  ax = fig.axes[0]
  np.testing.assert_allclose(ax.get_images()[0].get_array(), s)
  # Pixel t spans [t - 0.5, t + 0.5], so time x sits at x * rate - 0.5.
  vertical = {round(ln.get_xdata()[0], 6) for ln in ax.get_lines()
              if ln.get_xdata()[0] == ln.get_xdata()[1]}
  assert vertical == {3.5, 11.5, 19.5, 24.5, 29.5, 33.5}


def test_similarity_rejects_a_non_square_matrix(video):
  with pytest.raises(ValueError, match="square"):
    plots.plot_similarity(np.zeros((T, T - 1)))
  with pytest.raises(ValueError, match=r"vid_a.*\(30, 30\)"):
    plots.plot_similarity(np.zeros((30, 30)), video=video)


def test_similarity_grid_one_panel_per_matrix(tmp_path, video):
  mats = {"dot": np.outer(np.arange(T), np.arange(T)).astype(float),
          "cosine": np.eye(T)}
  path = tmp_path / "grid.png"
  fig = plots.plot_similarity_grid(mats, video=video, path=str(path), title="S")
  _check_png(path, 4.6 * 2, 4.2)
  panels = [ax for ax in fig.axes if ax.get_images()]
  assert [ax.get_title() for ax in panels] == ["dot", "cosine"]
  for ax, m in zip(panels, mats.values()):
    np.testing.assert_allclose(ax.get_images()[0].get_array(), m)
  with pytest.raises(ValueError, match="no matrix"):
    plots.plot_similarity_grid({})


# ------------------------------------------------------------------- CAS overlay


def test_cas_overlay_min_max_normalises_each_curve(tmp_path, video, labels):
  flat = np.full((T, N), 0.3, np.float32)  # a constant curve normalises to 1
  curves = {"CL": _cas(3), "CL+PSL": 5.0 * _cas(4) + 2.0, "flat": flat}
  path = tmp_path / "overlay.png"
  fig = plots.plot_cas_overlay(video, CLASS_NAMES, curves, segment_labels=labels,
                               path=str(path))
  _check_png(path, 11, 2.6 * 2)
  assert len(fig.axes) == 2  # classes 0 and 2
  for ax, n in zip(fig.axes, (0, 2)):
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == list(curves)
    assert len({ln.get_linestyle() for ln in lines}) == 3  # coinciding curves stay visible
    for ln, c in zip(lines, curves.values()):
      x = c[:, n].astype(np.float64)
      span = x.max() - x.min()
      expected = (x - x.min()) / span if span > 0 else np.ones_like(x)
      np.testing.assert_allclose(ln.get_ydata(), expected, rtol=1e-6, atol=1e-7)


def test_cas_overlay_raw_values_and_errors(video):
  c = _cas(5)
  fig = plots.plot_cas_overlay(video, CLASS_NAMES, {"a": c}, normalize=False, classes=[1])
  np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), c[:, 1], rtol=1e-6)
  with pytest.raises(ValueError, match="no CAS"):
    plots.plot_cas_overlay(video, CLASS_NAMES, {})
  with pytest.raises(ValueError, match=r"vid_a.*'b'"):
    plots.plot_cas_overlay(video, CLASS_NAMES, {"a": c, "b": c[:, :2]})


# -------------------------------------------------------------------- loss terms


def test_loss_terms_bars(tmp_path):
  values = {"classification": 1.2, "segment": 40.0, "sphere": 7.0, "propagation": 0.25}
  grads = {"classification": 0.4, "segment": 6.0, "sphere": 8.0, "propagation": 0.6}
  weights = {"classification": 1.0, "segment": 0.1, "sphere": 1e-4, "propagation": 0.02}
  path = tmp_path / "terms.png"
  fig = plots.plot_loss_terms(values, grads, weights=weights, path=str(path), title="t")
  _check_png(path, 11, 3.8)
  for ax, data in zip(fig.axes, (values, grads)):
    heights = [p.get_height() for p in ax.patches]
    raw = [data[k] for k in values]
    np.testing.assert_allclose(heights, raw + [weights[k] * data[k] for k in values])
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)
    assert ax.get_yscale() == "log"


def test_loss_terms_linear_scale_with_a_zero_and_key_check():
  fig = plots.plot_loss_terms({"a": 0.0, "b": 2.0}, {"a": 0.0, "b": 1.0})
  assert [ax.get_yscale() for ax in fig.axes] == ["linear", "linear"]
  assert [p.get_height() for p in fig.axes[0].patches] == [0.0, 2.0]
  with pytest.raises(ValueError, match="grad_norms"):
    plots.plot_loss_terms({"a": 1.0}, {"b": 1.0})
  with pytest.raises(ValueError, match="weights"):
    plots.plot_loss_terms({"a": 1.0}, {"a": 1.0}, weights={"b": 1.0})


# ---------------------------------------------------------------- training curves


def _write_metrics(path, with_validation: bool):
  recs = [{"step": 10, "kind": "train", "total": 3.0, "classification": 1.0,
           "segment": 20.0, "sphere": 0.0, "propagation": 0.5},
          {"step": 20, "kind": "train", "total": 2.0, "classification": 0.5,
           "segment": 15.0, "sphere": 0.0, "propagation": 0.4}]
  if with_validation:
    recs.append({"step": 20, "kind": "validation", "selection": 30.0,
                 "mAP@0.1": 40.0, "mAP@0.5": 20.0})
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in recs))
    f.write('{"step": 30, "kind": "tr')  # a line cut by a crash is skipped


def test_training_curves_with_validation(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  _write_metrics(metrics, with_validation=True)
  path = tmp_path / "curves.png"
  fig = plots.plot_training_curves(str(metrics), path=str(path))
  _check_png(path, 11, 3.8)
  loss_ax, val_ax = fig.axes
  drawn = {ln.get_label(): list(ln.get_ydata()) for ln in loss_ax.get_lines()}
  # The all-zero sphere term is left out.
  assert drawn == {"total": [3.0, 2.0], "classification": [1.0, 0.5],
                   "segment": [20.0, 15.0], "propagation": [0.5, 0.4]}
  assert loss_ax.get_yscale() == "log"
  assert {ln.get_label(): list(ln.get_ydata()) for ln in val_ax.get_lines()} == {
      "mAP@0.1": [40.0], "mAP@0.5": [20.0]}


def test_training_curves_without_validation_and_empty_log(tmp_path):
  metrics = tmp_path / "metrics.jsonl"
  _write_metrics(metrics, with_validation=False)
  path = tmp_path / "curves.png"
  fig = plots.plot_training_curves(str(metrics), path=str(path))
  _check_png(path, 6.5, 3.8)
  assert len(fig.axes) == 1
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  with pytest.raises(ValueError, match="empty.jsonl"):
    plots.plot_training_curves(str(empty))


# ----------------------------------------------------------------------- ablation


def test_ablation_bars_are_means_over_seeds(tmp_path):
  rows = []
  for mode, base in (("one-segment", 20.0), ("two-segment", 30.0)):
    for combo, add in (("CL", 0.0), ("CL+PSL", 5.0)):
      for seed, noise in enumerate((-1.0, 1.0, 3.0)):
        for checkpoint in ("final", "selected"):
          rows.append({"label_mode": mode, "losses": combo, "seed": seed,
                       "checkpoint": checkpoint, "mAP@0.5": base + add + noise})
  csv = tmp_path / "ablation.csv"
  pd.DataFrame(rows).to_csv(csv, index=False)
  path = tmp_path / "ablation.png"
  fig = plots.plot_ablation(str(csv), path=str(path))
  _check_png(path, 10, 3.8)
  ax = fig.axes[0]
  heights = [p.get_height() for p in ax.patches]
  # Mean of (-1, 1, 3) is 1: one-segment CL, CL+PSL, then two-segment.
  np.testing.assert_allclose(heights, [21.0, 26.0, 31.0, 36.0])
  assert [t.get_text() for t in ax.get_xticklabels()] == ["CL", "CL+PSL"]
