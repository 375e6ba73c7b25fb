"""Inference rules: how a CAS becomes detections, as one frozen, validated value.

:class:`InferenceRules` holds every field of ``config.inference`` that decides
a video's detections (class selection, the CAS proposals are cut from, their
score, the extent step, NMS; :func:`jaxseg.proposals.generate_proposals`). It
is built once from a config (:func:`from_config`) and passed down; no
function reads the config again per video.

A config names the rules it runs with in ``config.inference.rules``: a preset
of ``config.PRESETS`` (``"jaxseg"``: the config's own ``inference`` fields;
``"paper"`` and ``"printed"``: those fields with ``presets.PRESET_RULES``
applied), or ``"auto"``: after training, the validation hold-out is scored
under each preset of ``config.inference.rule_candidates`` and the best
(``jaxseg.evaluate.selection_score``) is used for the test split and for
``--mode predict`` (:func:`jaxseg.evaluate.choose_rules`). The choice is
written to ``<workdir>/rules.json`` (:func:`write_choice`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Mapping

from jaxseg.config import (CLASS_SCORES, CONTRAST_ON, EXTENTS, OUTER_OUTSIDE, PRESETS,
                           PROPOSAL_CAS, RULES, SCORE_SOURCES, ConfigError, require)
from jaxseg.presets import PRESET_RULES
from jaxseg.data import io
from jaxseg.data.video import DataError

CHOICE_FILE = "rules.json"


@dataclasses.dataclass(frozen=True)
class InferenceRules:
  """The detection rules of :func:`jaxseg.proposals.generate_proposals`.

  Each field is the ``config.inference`` field of the same name (its meaning
  is documented in ``jaxseg/config.py``); ``name`` is the preset the rules
  come from.
  """
  name: str
  score_source: str
  class_threshold: float
  class_top_ratio: float
  keep_top_class: bool
  cas_thresholds: tuple[float, ...]
  proposal_cas: str
  contrast_on: str
  contrast_loc_weight: float
  extent: str
  extent_fallback: bool
  class_score: str
  class_score_weight: float
  outer_scale: float
  outer_outside: str
  nms_iou: float
  max_proposals_per_video: int

  def fields(self) -> dict[str, Any]:
    """The rules as ``{config.inference field: value}`` (``name`` left out)."""
    out = dataclasses.asdict(self)
    del out["name"]
    out["cas_thresholds"] = list(self.cas_thresholds)
    return out

  def same_detections(self, other: "InferenceRules") -> bool:
    """Whether both give the same detections (every field but ``name`` equal)."""
    return self.fields() == other.fields()


RULE_FIELDS = tuple(f.name for f in dataclasses.fields(InferenceRules) if f.name != "name")


def _bad(field: str, message: str) -> ConfigError:
  return ConfigError(f"config.inference.{field}: {message}")


def _choice(values: Mapping[str, Any], field: str, choices: tuple) -> str:
  v = values[field]
  if not isinstance(v, str) or v not in choices:
    raise _bad(field, f"{v!r} is not one of {choices}")
  return v


def _number(values: Mapping[str, Any], field: str, lo: float, hi: float) -> float:
  v = values[field]
  if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
    raise _bad(field, f"must be a finite number, got {v!r}")
  if not lo <= v <= hi:
    raise _bad(field, f"must be in [{lo:g}, {hi:g}], got {v!r}")
  return float(v)


def _flag(values: Mapping[str, Any], field: str) -> bool:
  v = values[field]
  if not isinstance(v, bool):
    raise _bad(field, f"must be true or false, got {v!r}")
  return v


def preset_fields(inference: Any, preset: str) -> dict[str, Any]:
  """The rule fields of ``config.inference`` with preset ``preset`` applied.

  Raises:
    ConfigError: an unknown preset, or a field missing from ``inference``.
  """
  if preset not in PRESETS:
    raise _bad("rules", f"{preset!r} is not one of {PRESETS}")
  values = {f: require(inference, f, where="config.inference") for f in RULE_FIELDS}
  values.update(PRESET_RULES[preset])
  return values


def from_config(inference: Any, preset: str | None = None) -> InferenceRules:
  """The validated rules of ``config.inference`` under ``preset``.

  Args:
    inference: ``config.inference`` (a ConfigDict or a mapping).
    preset: one of ``config.PRESETS``; None: ``inference.rules``, which must
      then name a preset (``"auto"`` is resolved by
      :func:`jaxseg.evaluate.choose_rules`, after training).

  Raises:
    ConfigError: a missing or invalid field, named ``config.inference.<field>``.
  """
  if preset is None:
    preset = str(require(inference, "rules", where="config.inference"))
    if preset == "auto":
      raise _bad("rules", "'auto' is resolved on the validation split after training; "
                 "name a preset to build its rules")
  v = preset_fields(inference, preset)
  thresholds = v["cas_thresholds"]
  if (isinstance(thresholds, (str, bytes)) or not hasattr(thresholds, "__len__")
      or len(thresholds) == 0):
    raise _bad("cas_thresholds", "must be a non-empty list of values in [0, 1]")
  ts = []
  for x in thresholds:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0.0 <= x <= 1.0:
      raise _bad("cas_thresholds", f"must be a non-empty list of values in [0, 1], got {x!r}")
    ts.append(float(x))
  max_props = v["max_proposals_per_video"]
  if isinstance(max_props, bool) or not isinstance(max_props, int) or max_props < 1:
    raise _bad("max_proposals_per_video", f"must be an integer >= 1, got {max_props!r}")
  return InferenceRules(
      name=preset,
      score_source=_choice(v, "score_source", SCORE_SOURCES),
      class_threshold=_number(v, "class_threshold", -math.inf, math.inf),
      class_top_ratio=_number(v, "class_top_ratio", 0.0, 1.0),
      keep_top_class=_flag(v, "keep_top_class"),
      cas_thresholds=tuple(ts),
      proposal_cas=_choice(v, "proposal_cas", PROPOSAL_CAS),
      contrast_on=_choice(v, "contrast_on", CONTRAST_ON),
      contrast_loc_weight=_number(v, "contrast_loc_weight", 0.0, 1.0),
      extent=_choice(v, "extent", EXTENTS),
      extent_fallback=_flag(v, "extent_fallback"),
      class_score=_choice(v, "class_score", CLASS_SCORES),
      class_score_weight=_number(v, "class_score_weight", -math.inf, math.inf),
      outer_scale=_number(v, "outer_scale", 0.0, math.inf),
      outer_outside=_choice(v, "outer_outside", OUTER_OUTSIDE),
      nms_iou=_number(v, "nms_iou", 0.0, 1.0),
      max_proposals_per_video=max_props)


def candidates(inference: Any) -> dict[str, InferenceRules]:
  """``{preset: rules}`` a run chooses among: ``inference.rule_candidates`` under
  ``"auto"``, else the one preset ``inference.rules`` names.

  Raises:
    ConfigError: an unknown ``rules`` value or candidate, an empty or repeated
      candidate list, or an invalid field under any candidate.
  """
  mode = require(inference, "rules", where="config.inference")
  if not isinstance(mode, str) or mode not in RULES:
    raise _bad("rules", f"{mode!r} is not one of {RULES}")
  if mode != "auto":
    return {mode: from_config(inference, mode)}
  names = require(inference, "rule_candidates", where="config.inference")
  if isinstance(names, str) or not hasattr(names, "__len__") or len(names) == 0:
    raise _bad("rule_candidates", f"must be a non-empty list of presets {PRESETS}")
  for n in names:
    if n not in PRESETS:
      raise _bad("rule_candidates", f"{n!r} is not one of {PRESETS}")
  if len(set(names)) != len(names):
    raise _bad("rule_candidates", f"names a preset twice: {list(names)}")
  return {n: from_config(inference, n) for n in names}


# ----------------------------------------------------------- the choice


def choice_record(step: int, chosen: str, scores: Mapping[str, Mapping[str, float]],
                  mode: str, split: str) -> dict:
  """What one checkpoint's choice records: the preset, how it was chosen and
  every candidate's validation summary (percent)."""
  return {"step": int(step), "rules": mode, "chosen": chosen, "split": split,
          "candidates": {k: {m: float(x) for m, x in v.items()} for k, v in scores.items()}}


def write_choice(workdir: str, choices: Mapping[str, Mapping[str, Any]]) -> None:
  """``<workdir>/rules.json``: ``{"final": record, "selected": record}`` (atomic)."""
  io.atomic_write_text(os.path.join(workdir, CHOICE_FILE),
                       json.dumps(dict(choices), indent=2, sort_keys=True) + "\n")


def read_choice(config, workdir: str, which: str, step: int) -> InferenceRules:
  """The rules a run's checkpoint ``which`` ("final" or "selected") at ``step``
  detects with.

  Under a named preset, that preset's rules from ``config``; under ``"auto"``,
  the preset recorded in ``<workdir>/rules.json`` when the run was evaluated,
  which must be the choice made for that very checkpoint (its ``step``: a run
  trained further since has no choice for its new checkpoint yet).

  Raises:
    ConfigError: ``rules.json`` missing or malformed, made for another step, or
      naming a preset that is not a candidate of ``config``.
  """
  inference = config.inference
  options = candidates(inference)
  if require(inference, "rules", where="config.inference") != "auto":
    return next(iter(options.values()))
  path = os.path.join(workdir, CHOICE_FILE)
  again = "run --mode eval to choose the rules for it"
  if not os.path.isfile(path):
    raise ConfigError(f"{path}: missing; the run chooses its inference rules on validation "
                      "when it is evaluated (inference.rules = 'auto'): run --mode eval first")
  try:
    record = io.load_json(path, "inference rules choice")
  except DataError as e:
    raise ConfigError(str(e)) from None
  entry = record.get(which) if isinstance(record, dict) else None
  if not isinstance(entry, dict):
    raise ConfigError(f"{path}: field {which!r}: missing or not an object; {again}")
  chosen, made_for = entry.get("chosen"), entry.get("step")
  if not isinstance(chosen, str) or chosen not in options:
    raise ConfigError(f"{path}: field {which}.chosen: {chosen!r} is not one of the run's "
                      f"candidates {tuple(options)}; {again}")
  if type(made_for) is not int or made_for != int(step):
    raise ConfigError(f"{path}: field {which}.step: the choice was made for step "
                      f"{made_for!r}, the {which} checkpoint is step {int(step)}; {again}")
  return options[chosen]


def describe(rules: InferenceRules) -> str:
  """One line: the preset and what it sets over the config's ``inference`` fields."""
  over = PRESET_RULES[rules.name]
  what = ", ".join(f"{k}={v}" for k, v in over.items()) if over else "the config's fields"
  return f"{rules.name}: {what}"
