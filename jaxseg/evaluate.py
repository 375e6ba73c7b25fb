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
from jaxseg import config as config_lib
from jaxseg import classification_metrics
from jaxseg import inference
from jaxseg import map_summary
from jaxseg import metrics
from jaxseg import parallel
from jaxseg import provenance
from jaxseg import rules as rules_lib
from jaxseg import run_data
from jaxseg import workdir as workdir_lib
from jaxseg.data import batching
from jaxseg.data import io
from jaxseg.data.video import Dataset

def make_apply_fn(model) -> Callable:
  """Jitted deterministic forward pass ``(variables, features, mask) -> outputs``."""
  return jax.jit(functools.partial(model.apply, deterministic=True))


def forward(config, params, split: Dataset, *, apply_fn) -> list[tuple[dict, dict]]:
  """The model on every eval batch of ``split``, once: ``[(batch, outputs)]``.

  ``outputs`` keeps ``cas_cls`` and ``cas_loc`` ``(B, T, N)`` only (not the
  ``(B, T, E)`` features), so a whole split's outputs stay small; any number
  of rule sets can then be scored from them (:func:`score_outputs`).
  """
  batches = batching.eval_batches(split, batch_size=config.inference.batch_size,
                                  buckets=config.train.length_buckets)
  out = []
  for batch in batches:
    res = apply_fn({"params": params}, batch["features"], batch["mask"])
    out.append((batch, {k: res[k] for k in ("cas_cls", "cas_loc") if k in res}))
  return out


def score_outputs(config, split: Dataset, forwarded: list[tuple[dict, dict]], *,
                  rules: rules_lib.InferenceRules, with_cas: bool = False) -> dict:
  """Detections and metrics of :func:`forward`'s outputs on ``split`` under ``rules``.

  Returns:
    dict with ``predictions`` (ActivityNet results dict, see
    :func:`jaxseg.inference.predict`), ``table`` (per-class detection AP
    DataFrame of :func:`jaxseg.metrics.detection_map`) and ``summary`` (mAP per
    threshold, the ``config.eval.averages`` and ``cls_mAP``, in percent).
  """
  replay = iter([outputs for _, outputs in forwarded])
  pred = inference.predict(
      lambda variables, features, mask: next(replay), None, [b for b, _ in forwarded],
      videos={v.video_id: v for v in split.videos}, class_names=split.class_names,
      rules=rules, topk_ratio=config.loss.topk_ratio, return_cas=with_cas)
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


def evaluate_params(config, model, params, split: Dataset, *, rules: rules_lib.InferenceRules,
                    apply_fn=None, with_cas: bool = False) -> dict:
  """Detections and metrics of ``params`` on ``split`` under ``rules``
  (:func:`forward`, then :func:`score_outputs`)."""
  apply_fn = apply_fn or make_apply_fn(model)
  return score_outputs(config, split, forward(config, params, split, apply_fn=apply_fn),
                       rules=rules, with_cas=with_cas)


def selection_score(summary: dict) -> float:
  """The validation number checkpoints (and rules) are selected by: the mean mAP over thresholds."""
  vals = [v for k, v in summary.items() if k.startswith("mAP@")]
  return float(np.mean(vals))


def choose_rules(config, model, params, validation: Dataset | None, *,
                 apply_fn=None) -> tuple[rules_lib.InferenceRules, dict | None, dict]:
  """The rules ``params`` detect with, chosen on ``validation`` alone.

  Under ``config.inference.rules = "auto"`` the validation split is scored
  under every candidate of ``config.inference.rule_candidates`` (one model
  output, re-scored; candidates with the same rules are scored once) and the
  best :func:`selection_score` wins (the earlier candidate on ties). Under a
  named preset, that preset (scored on ``validation`` when there is one).
  The test split is not an argument: it cannot take part.

  Returns:
    ``(rules, result, scores)``: the chosen rules, their
    :func:`evaluate_params` result on ``validation`` (None without one) and
    ``{candidate: validation summary}`` (empty without one).

  Raises:
    ConfigError: ``"auto"`` without a validation split.
  """
  options = rules_lib.candidates(config.inference)
  if validation is None:
    if len(options) > 1:
      raise config_lib.ConfigError(
          "config.inference.rules: 'auto' chooses on the validation hold-out, and this "
          "run has none (train.validation_fraction = 0)")
    return next(iter(options.values())), None, {}
  forwarded = forward(config, params, validation, apply_fn=apply_fn or make_apply_fn(model))
  results: dict[str, dict] = {}
  for name, r in options.items():
    same = next((n for n in results if options[n].same_detections(r)), None)
    results[name] = results[same] if same is not None else score_outputs(
        config, validation, forwarded, rules=r)
  chosen = max(options, key=lambda n: selection_score(results[n]["summary"]))
  return options[chosen], results[chosen], {n: res["summary"] for n, res in results.items()}


def evaluate_and_report(config, workdir: str, model, data: run_data.RunData, state,
                        best_mngr, *, apply_fn=None) -> dict:
  """Evaluates the final and the selected checkpoint on test and writes the results.

  Each checkpoint detects with the rules :func:`choose_rules` picks for it on
  the validation split; the choice is written first (``rules.json``), then the
  test split is scored under it.

  Returns:
    ``{"final": summary, "selected": summary, "selected_step": int,
    "rules": {"final": record, "selected": record}}``.
  """
  apply_fn = apply_fn or make_apply_fn(model)  # one compile per bucket for both
  checkpoints = {"final": (int(state.step), state.params)}
  best_step = best_mngr.best_step()
  if best_step is not None and int(best_step) != int(state.step):
    best_state = checkpoints_lib.restore_selected(best_mngr, int(best_step), state,
                                                  workdir=workdir)
    checkpoints["selected"] = (int(best_step), best_state.params)
  chosen, choices = {}, {}
  for which, (step, params) in checkpoints.items():
    chosen[which], _, scores = choose_rules(config, model, params, data.validation,
                                            apply_fn=apply_fn)
    choices[which] = rules_lib.choice_record(step, chosen[which].name, scores,
                                             config.inference.rules, "validation")
  if "selected" not in checkpoints:
    checkpoints["selected"], chosen["selected"] = checkpoints["final"], chosen["final"]
    choices["selected"] = choices["final"]
  if parallel.is_main_process():
    rules_lib.write_choice(workdir, choices)
  results = {}
  for which, (step, params) in checkpoints.items():
    same = which == "selected" and step == checkpoints["final"][0]
    results[which] = results["final"] if same else evaluate_params(
        config, model, params, data.test, rules=chosen[which], apply_fn=apply_fn)
  write_results(config, workdir, data, results["final"], results["selected"],
                checkpoints["final"][0], checkpoints["selected"][0], choices)
  return {"final": results["final"]["summary"], "selected": results["selected"]["summary"],
          "selected_step": checkpoints["selected"][0], "rules": choices}


def write_results(config, workdir: str, data: run_data.RunData, final: dict,
                  selected: dict, final_step: int, selected_step: int,
                  choices: dict) -> None:
  """Writes detections, ``results.csv``, ``results.md`` and ``results.json``.

  ``choices``: ``{"final": record, "selected": record}`` of
  :func:`jaxseg.rules.choice_record`, the rules each checkpoint detected with.
  """
  if not parallel.is_main_process():
    return
  prov = provenance.collect(config, data.dataset, data.segment_labels, workdir)
  for name, which, res, step in (("detections.json", "final", final, final_step),
                                 ("detections_selected.json", "selected", selected,
                                  selected_step)):
    inference.write_detections(os.path.join(workdir, name), res["predictions"],
                               provenance={**prov, "checkpoint": which, "step": step,
                                           "rules": choices[which]["chosen"]})
  rows = pd.DataFrame(
      [{"checkpoint": "final", "step": final_step, "rules": choices["final"]["chosen"],
        **final["summary"]},
       {"checkpoint": "selected", "step": selected_step,
        "rules": choices["selected"]["chosen"], **selected["summary"]}]
  ).set_index("checkpoint")
  table = rows.copy()  # the metrics alone, for the markdown and the log
  for key, value in provenance.flat_columns(prov).items():
    rows[key] = value
  protocol = metrics.PROTOCOL_LABELS[config.eval.protocol]
  io.atomic_write_text(os.path.join(workdir, "results.csv"), rows.round(4).to_csv())
  io.atomic_write_text(os.path.join(workdir, "results.md"),
                       results_markdown(config, data, table, prov, choices))
  io.atomic_write_text(os.path.join(workdir, "results.json"), json.dumps(
      {"final": {"step": final_step, **final["summary"]},
       "selected": {"step": selected_step, **selected["summary"]},
       "rules": choices,
       "per_class_ap_final": final["table"].rename(columns=lambda c: f"{float(c):g}")
       .to_dict(orient="index"),
       "provenance": prov}, indent=2, sort_keys=True) + "\n")
  logging.info("Results on %s (%s), written to %s/results.md", data.test_subset,
               protocol, workdir)


def rules_markdown(choices: dict) -> list[str]:
  """The ``results.md`` section on the inference rules: each checkpoint's choice
  and every candidate's validation score."""
  md = ["## Inference rules", ""]
  first = choices["final"]
  how = ("chosen on the validation hold-out (`inference.rules = \"auto\"`): the best mean "
         "mAP over thresholds; the test split took no part" if first["rules"] == "auto"
         else f"`inference.rules = \"{first['rules']}\"`")
  md += [f"Rules {how}.", ""]
  rows = []
  for which in ("final", "selected"):
    rec = choices[which]
    for name, summary in rec["candidates"].items():
      rows.append({"checkpoint": which, "step": rec["step"], "candidate": name,
                   "chosen": "yes" if name == rec["chosen"] else "",
                   **{k: v for k, v in summary.items() if k.startswith(("mAP@", "avg"))}})
  if rows:
    md += [f"Validation (`{first['split']}`) mAP (%) per candidate:", "",
           pd.DataFrame(rows).round(2).to_markdown(index=False), ""]
  else:
    md += [f"Used: {choices['final']['chosen']} (no validation split to score it on).", ""]
  return md


def results_markdown(config, data: run_data.RunData, table: pd.DataFrame,
                     prov: dict, choices: dict) -> str:
  """``results.md``: the metrics table of both checkpoints and the provenance."""
  protocol = metrics.PROTOCOL_LABELS[config.eval.protocol]
  md = [f"# Results on `{data.test_subset}` ({len(data.test.videos)} videos)", "",
        f"Detection mAP (%) at temporal IoU, {protocol}; classification mAP (%) "
        "from the video-level scores. `selected` is the checkpoint with the best mean "
        "mAP on the validation split held out of the training videos "
        "(the test split is never looked at for selection).", "",
        table.round(2).to_markdown(), "", *rules_markdown(choices),
        "## Provenance", "", "```json", json.dumps(prov, indent=2, sort_keys=True), "```", ""]
  return "\n".join(md)


def evaluate_workdir(config, workdir: str) -> dict:
  """``--mode eval``: re-evaluates the final and selected checkpoints of a run.

  Reads the run with :func:`jaxseg.workdir.load_run` (which writes nothing),
  refuses a run that has not finished training
  (:func:`jaxseg.checkpoints.check_finished`) and rewrites only the reports
  and the rules choice (``rules.json``): ``detections.json``,
  ``detections_selected.json``, ``results.csv``, ``results.md``,
  ``results.json``; with ``config.eval.num_plot_videos > 0`` also the CAS
  timelines of that many test videos in ``workdir/plots/``.
  """
  run = workdir_lib.load_run(config, workdir, which="final")
  checkpoints_lib.check_finished(config, workdir, action="evaluating it")
  _, best_mngr = checkpoints_lib.checkpoint_managers(workdir, config, read_only=True)
  apply_fn = make_apply_fn(run.model)
  out = evaluate_and_report(config, workdir, run.model, run.data, run.state, best_mngr,
                            apply_fn=apply_fn)
  if config.eval.num_plot_videos > 0 and parallel.is_main_process():
    write_timelines(run, os.path.join(workdir, "plots"), config.eval.num_plot_videos,
                    rules=rules_lib.read_choice(config, workdir, "final", run.step),
                    apply_fn=apply_fn)
  return out


def timeline_figures(config, model, params, split: Dataset, num_videos: int, *,
                     rules: rules_lib.InferenceRules, apply_fn=None):
  """CAS timelines (paper Fig. 4/6) of the first ``num_videos`` videos of ``split``.

  Yields ``(video, figure)``; the caller closes each figure.
  """
  from jaxseg import plots  # pylint: disable=g-import-not-at-top
  videos = split.videos[:num_videos]
  sub = Dataset(split.class_names, videos)
  res = evaluate_params(config, model, params, sub, rules=rules, with_cas=True,
                        apply_fn=apply_fn)
  for v in videos:
    cas = res["predictions"]["cas"][v.video_id]
    yield v, plots.plot_cas_timeline(v, sub.class_names, cas_cls=cas["cas_cls"],
                                     cas_loc=cas["cas_loc"])


def write_timelines(run: workdir_lib.LoadedRun, out_dir: str, num_videos: int, *,
                    rules: rules_lib.InferenceRules, apply_fn=None) -> list[str]:
  """CAS timelines of the first ``num_videos`` test videos, as PNGs in ``out_dir``."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  paths = []
  for v, fig in timeline_figures(run.config, run.model, run.state.params, run.data.test,
                                 num_videos, rules=rules, apply_fn=apply_fn):
    path = io.child_path(out_dir, v.video_id, ".png")  # an id never writes outside out_dir
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    paths.append(path)
  return paths


def timeline_images(config, model, params, split: Dataset, num_videos: int, *,
                    rules: rules_lib.InferenceRules, apply_fn=None) -> dict[str, np.ndarray]:
  """``{"cas/<video id>": (H, W, 3) uint8}``: the timelines as images for a metric writer."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  images = {}
  for v, fig in timeline_figures(config, model, params, split, num_videos, rules=rules,
                                 apply_fn=apply_fn):
    fig.canvas.draw()
    images[f"cas/{v.video_id}"] = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
  return images


if __name__ == "__main__":  # the scoring command's earlier name
  import sys  # pylint: disable=g-import-not-at-top
  print("error: jaxseg.evaluate is a library module, not a command; score a results "
        "file with python -m jaxseg.score, or evaluate a run with python -m jaxseg.main "
        "--mode eval --workdir RUN", file=sys.stderr)
  sys.exit(2)
