"""Evaluation of a model on a split, and the reports of a run.

:func:`evaluate_params` runs inference (:mod:`jaxseg.inference`) and scores
it (:mod:`jaxseg.metrics`); :func:`evaluate_and_report` does that for the
final and the selected checkpoint on the test split and :func:`write_results`
writes ``detections.json``, ``results.csv``, ``results.md`` and
``results.json``; :func:`evaluate_workdir` is ``--mode eval``.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Callable

import jax
import numpy as np
import pandas as pd
from absl import logging

from jaxseg import checkpoints as checkpoints_lib
from jaxseg import classification_metrics
from jaxseg import inference
from jaxseg import map_summary
from jaxseg import metrics
from jaxseg import parallel
from jaxseg import provenance
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from jaxseg.data import io
from jaxseg.data.video import Dataset

def make_apply_fn(model) -> Callable:
  """Jitted deterministic forward pass ``(variables, features, mask) -> outputs``."""
  return jax.jit(functools.partial(model.apply, deterministic=True))


def evaluate_params(config, model, params, split: Dataset, *, apply_fn=None,
                    with_cas: bool = False) -> dict:
  """Detections and metrics of ``params`` on ``split``.

  Returns:
    dict with ``predictions`` (ActivityNet results dict, see
    :func:`jaxseg.inference.predict`), ``table`` (per-class detection AP
    DataFrame of :func:`jaxseg.metrics.detection_map`) and ``summary`` (mAP per
    threshold, the ``config.eval.averages`` and ``cls_mAP``, in percent).
  """
  apply_fn = apply_fn or make_apply_fn(model)
  batches = batching.eval_batches(split, batch_size=config.inference.batch_size,
                                  buckets=config.train.length_buckets)
  pred = inference.predict(
      apply_fn, {"params": params}, batches,
      videos={v.video_id: v for v in split.videos}, class_names=split.class_names,
      config_inference=config.inference, topk_ratio=config.loss.topk_ratio,
      return_cas=with_cas)
  table = metrics.detection_map(split.ground_truth(), pred,
                                tuple(config.eval.tiou_thresholds),
                                protocol=config.eval.protocol,
                                class_names=split.class_names,
                                feature_rate=config.data.feature_rate,
                                ambiguous=split.ambiguous_of_videos())
  summary = map_summary.summarize(table, config.eval.averages, lenient=True).iloc[0].to_dict()
  ids = [v.video_id for v in split.videos]
  y = np.stack([v.video_labels(split.num_classes) for v in split.videos])
  scores = np.stack([np.asarray(pred["p_a"][i]) for i in ids])
  summary["cls_mAP"] = 100.0 * classification_metrics.classification_map(y, scores)
  return {"predictions": pred, "table": table, "summary": summary}


def selection_score(summary: dict) -> float:
  """The validation number checkpoints are selected by: the mean mAP over thresholds."""
  vals = [v for k, v in summary.items() if k.startswith("mAP@")]
  return float(np.mean(vals))


def evaluate_and_report(config, workdir: str, model, data: run_data.RunData, state,
                        best_mngr, *, apply_fn=None) -> dict:
  """Evaluates the final and the selected checkpoint on test and writes the results.

  Returns:
    ``{"final": summary, "selected": summary, "selected_step": int}``.
  """
  apply_fn = apply_fn or make_apply_fn(model)  # one compile per bucket for both
  final = evaluate_params(config, model, state.params, data.test, apply_fn=apply_fn)
  selected_step = int(state.step)
  selected = final
  best_step = best_mngr.best_step()
  if best_step is not None and int(best_step) != selected_step:
    best_state = checkpoints_lib.restore(best_mngr, int(best_step), state)
    selected = evaluate_params(config, model, best_state.params, data.test,
                               apply_fn=apply_fn)
    selected_step = int(best_step)
  write_results(config, workdir, data, final, selected, int(state.step), selected_step)
  return {"final": final["summary"], "selected": selected["summary"],
          "selected_step": selected_step}


def write_results(config, workdir: str, data: run_data.RunData, final: dict,
                  selected: dict, final_step: int, selected_step: int) -> None:
  """Writes detections, ``results.csv``, ``results.md`` and ``results.json``."""
  if not parallel.is_main_process():
    return
  prov = provenance.collect(config, data.dataset, data.segment_labels, workdir)
  inference.write_detections(os.path.join(workdir, "detections.json"), final["predictions"],
                             provenance={**prov, "checkpoint": "final", "step": final_step})
  inference.write_detections(os.path.join(workdir, "detections_selected.json"),
                             selected["predictions"],
                             provenance={**prov, "checkpoint": "selected",
                                         "step": selected_step})
  rows = pd.DataFrame(
      [{"checkpoint": "final", "step": final_step, **final["summary"]},
       {"checkpoint": "selected", "step": selected_step, **selected["summary"]}]
  ).set_index("checkpoint")
  table = rows.copy()  # the metrics alone, for the markdown and the log
  for key, value in provenance.flat_columns(prov).items():
    rows[key] = value
  protocol = metrics.PROTOCOL_LABELS[config.eval.protocol]
  io.atomic_write_text(os.path.join(workdir, "results.csv"), rows.round(4).to_csv())
  io.atomic_write_text(os.path.join(workdir, "results.md"),
                       results_markdown(config, data, table, prov))
  io.atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(
      {"final": {"step": final_step, **final["summary"]},
       "selected": {"step": selected_step, **selected["summary"]},
       "per_class_ap_final": final["table"].rename(columns=lambda c: f"{float(c):g}")
       .to_dict(orient="index"),
       "provenance": prov}, indent=2, sort_keys=True) + "\n")
  logging.info("Results on %s (%s), written to %s/results.md", data.test_subset,
               protocol, workdir)


def results_markdown(config, data: run_data.RunData, table: pd.DataFrame,
                     prov: dict) -> str:
  """``results.md``: the metrics table of both checkpoints and the provenance."""
  protocol = metrics.PROTOCOL_LABELS[config.eval.protocol]
  md = [f"# Results on `{data.test_subset}` ({len(data.test.videos)} videos)", "",
        f"Detection mAP (%) at temporal IoU, {protocol}; classification mAP (%) "
        "from the video-level scores. `selected` is the checkpoint with the best mean "
        "mAP on the validation split held out of the training videos "
        "(the test split is never looked at for selection).", "",
        table.round(2).to_markdown(), "",
        "## Provenance", "", "```json", json.dumps(prov, indent=2, sort_keys=True), "```", ""]
  return "\n".join(md)


def evaluate_workdir(config, workdir: str) -> dict:
  """``--mode eval``: re-evaluates the final and selected checkpoints of a run.

  Reads the run with :func:`jaxseg.workdir.load_run` (which writes nothing)
  and rewrites only the reports: ``detections.json``,
  ``detections_selected.json``, ``results.csv``, ``results.md``,
  ``results.json``; with ``config.eval.num_plot_videos > 0`` also the CAS
  timelines of that many test videos in ``workdir/plots/``.
  """
  run = workdir_lib.load_run(config, workdir, which="final")
  _, best_mngr = checkpoints_lib.checkpoint_managers(workdir, config, read_only=True)
  apply_fn = make_apply_fn(run.model)
  out = evaluate_and_report(config, workdir, run.model, run.data, run.state, best_mngr,
                            apply_fn=apply_fn)
  if config.eval.num_plot_videos > 0 and parallel.is_main_process():
    write_timelines(run, os.path.join(workdir, "plots"), config.eval.num_plot_videos,
                    apply_fn=apply_fn)
  return out


def timeline_figures(config, model, params, split: Dataset, num_videos: int, *,
                     apply_fn=None):
  """CAS timelines (paper Fig. 4/6) of the first ``num_videos`` videos of ``split``.

  Yields ``(video, figure)``; the caller closes each figure.
  """
  from jaxseg import plots  # pylint: disable=g-import-not-at-top
  videos = split.videos[:num_videos]
  sub = Dataset(split.class_names, videos)
  res = evaluate_params(config, model, params, sub, with_cas=True, apply_fn=apply_fn)
  for v in videos:
    cas = res["predictions"]["cas"][v.video_id]
    yield v, plots.plot_cas_timeline(v, sub.class_names, cas_cls=cas["cas_cls"],
                                     cas_loc=cas["cas_loc"])


def write_timelines(run: workdir_lib.LoadedRun, out_dir: str, num_videos: int, *,
                    apply_fn=None) -> list[str]:
  """CAS timelines of the first ``num_videos`` test videos, as PNGs in ``out_dir``."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  for v, fig in timeline_figures(run.config, run.model, run.state.params, run.data.test,
                                 num_videos, apply_fn=apply_fn):
    path = io.child_path(out_dir, v.video_id, ".png")  # an id never writes outside out_dir
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
  return paths


def timeline_images(config, model, params, split: Dataset, num_videos: int, *,
                    apply_fn=None) -> dict[str, np.ndarray]:
  """``{"cas/<video id>": (H, W, 3) uint8}``: the timelines as images for a metric writer."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  images = {}
  for v, fig in timeline_figures(config, model, params, split, num_videos,
                                 apply_fn=apply_fn):
    fig.canvas.draw()
    images[f"cas/{v.video_id}"] = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
  return images
