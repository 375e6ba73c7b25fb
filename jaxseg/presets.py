"""The presets of every dataset config (``configs/<data>.py:<preset>``): what each
sets on top of the dataset config, and the inference rules each names.

``config.PRESETS`` names them: ``"jaxseg"`` (the dataset config as is),
``"paper"`` (:data:`PAPER_PRESET`) and ``"printed"`` (:data:`PAPER_AS_PRINTED`);
docs/presets.md has the table of every field, why, and the evidence.
"""

from __future__ import annotations

import ml_collections

from jaxseg.config import PRESETS, ConfigError


# The fields where jaxseg departs from what the paper prints, and the printed
# value (docs/decisions.md#the-decisions-table has the table).
PAPER_AS_PRINTED = (
    ("labels.mode", "two-segment"),  # Table 2's headline model
    ("model.localization_embedding", "shared"),  # Fig. 3: one f for both heads
    ("loss.classification_normalization", "classes"),  # eq. 4: (1/N) sum -y log p
    ("loss.loc_classification_weight", 0.0),  # eq. 2-4 on C_cls only
    ("loss.sphere_classes", "all"),  # eq. 10: sum over all N classes
    ("loss.propagation_similarity", "dot"),  # eq. 13: S = f f^T
    ("loss.propagation_normalization", "none"),  # eq. 13: sum over pairs
    ("loss.propagation_grad_through_similarity", True),  # eq. 13 differentiated as printed
    ("loss.topk_mode", "labeled"),  # 5.1: r = 2Q
    ("loss.topk_count", "segments"),  # 5.1: Q = labeled segments
    ("loss.segment_normalization", "none"),  # eq. 6: sum over labeled segments
    ("inference.score_source", "average"),  # 4.7: s_a, p_a from C_a
    ("inference.contrast_on", "raw"),  # 4.7 prints no score: the contrast on raw C_a,
    ("inference.contrast_loc_weight", 0.5),  # the CAS the proposals are cut from
    ("inference.extent", "proposal"),  # 4.7: a proposal is a run of C_a above a threshold
    ("inference.proposal_cas", "average"),  # 4.7: proposals cut from C_a
    ("inference.class_score", "s_a"),  # 4.7: + s_a
    ("inference.class_top_ratio", 0.0),  # 4.7: only s_a > 0 keeps a class
    ("inference.keep_top_class", False),
)


# Each preset's inference rules, as overrides of config.inference: "jaxseg" is
# the section as configured; "paper" and "printed" are section 4.7 as printed
# (proposals cut from C_a, scored on C_a plus s_a, classes kept by s_a > 0, each
# proposal's own extent). The outer-inner score of a proposal is not printed;
# both take it on C_a.
PRESET_RULES = {
    "jaxseg": {},
    "paper": {k.split(".", 1)[1]: v for k, v in PAPER_AS_PRINTED if k.startswith("inference.")},
    "printed": {k.split(".", 1)[1]: v for k, v in PAPER_AS_PRINTED
                if k.startswith("inference.")},
}

# The "paper" preset: the printed network and inference, with jaxseg's readings
# only where the printed losses do not train without them (docs/presets.md):
# eq. 4 over the video's labels, eq. 6 averaged per labeled instance, Q of
# r = 2Q counting labeled instances, eq. 13 on cosine similarities averaged
# over pairs without a gradient through S. Those are the base config's values;
# these are the fields where jaxseg's defaults depart from the print otherwise.
PAPER_PRESET = (
    ("model.localization_embedding", "shared"),  # Fig. 3: one f for both heads
    ("loss.sphere_classes", "all"),  # eq. 10: sum over all N classes
    ("loss.loc_classification_weight", 0.0),  # eq. 2-4 on C_cls only
    ("inference.rules", "paper"),  # section 4.7
)


def _set(c: ml_collections.ConfigDict, pairs) -> ml_collections.ConfigDict:
  for key, value in pairs:
    node = c
    *path, leaf = key.split(".")
    for name in path:
      node = node[name]
    node[leaf] = value
  return c


def paper_as_printed(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``c`` with every choice of ``PAPER_AS_PRINTED`` (in place; returned)."""
  return _set(c, (*PAPER_AS_PRINTED, ("inference.rules", "printed")))


def apply_preset(c: ml_collections.ConfigDict, preset: str | None) -> ml_collections.ConfigDict:
  """``c`` (a dataset config) under a preset of :data:`PRESETS` (in place; returned).

  ``None`` or ``"jaxseg"``: unchanged. ``"paper"``: :data:`PAPER_PRESET`.
  ``"printed"``: :func:`paper_as_printed`.

  Raises:
    ConfigError: an unknown preset.
  """
  if preset in (None, "", "jaxseg"):
    return c
  if preset == "paper":
    return _set(c, PAPER_PRESET)
  if preset == "printed":
    return paper_as_printed(c)
  raise ConfigError(f"unknown preset {preset!r}; the presets are {PRESETS}")
