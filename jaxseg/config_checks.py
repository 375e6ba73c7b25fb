"""Checks a configuration before anything is loaded or compiled.

:func:`validate` checks every field's type, range and choice (the choices are
defined in :mod:`jaxseg.config`); :func:`check_fields` refuses unknown and
missing fields against ``config.base_config()``. Every error names the field.
"""

from __future__ import annotations

import math

import ml_collections

from jaxseg.config import (ConfigError, ABLATION_LOSSES, ABLATION_NON_PSL_CELLS,
                           ABLATION_SPLITS, CLASS_EVIDENCE, CLASSIFICATION_NORMALIZATIONS,
                           CLASS_SCORES,
                           COMPUTE_DTYPES, CONTRAST_ON, EXTENTS, CROP_MODES, DATASET_FORMATS,
                           DEVICE_DATA_MODES, DROPOUT_RNGS, LABEL_MODES,
                           LOCALIZATION_EMBEDDINGS,
                           METRIC_BACKENDS, PROPAGATION_FEATURES, PROPAGATION_METHODS,
                           OUTER_OUTSIDE, PROPOSAL_CAS,
                           PROPAGATION_NORMALIZATIONS, PROPAGATION_SIMILARITIES,
                           PRESETS, PROTOCOLS, SCHEDULES, SCORE_SOURCES, SEGMENT_NORMALIZATIONS,
                           SPHERE_CLASSES, SUBSAMPLE_MODES, SUBSET_AUTO, TOPK_COUNTS,
                           TOPK_MODES, base_config, require,
                           trains_localization)
from jaxseg import rules as rules_lib
from jaxseg.data import io
from jaxseg.data import synthetic
from jaxseg.data.video import DataError


def _check(ok: bool, field: str, message: str) -> None:
  if not ok:
    raise ConfigError(f"config.{field}: {message}")


def _choice(c: ml_collections.ConfigDict, field: str, choices: tuple) -> None:
  value = require(c, field)
  _check(value in choices, field, f"{value!r} is not one of {choices}")


def validate(c: ml_collections.ConfigDict, *, num_devices: int = 1) -> None:
  """Rejects a bad configuration before anything is loaded or compiled.

  The checks run section by section, in a fixed order: the first offending
  field is the one named.

  Raises:
    ConfigError: naming the first offending field.
  """
  check_fields(c)
  _check_data(c)
  _check_labels_and_model(c)
  _check_loss(c)
  _check_train(c, num_devices=num_devices)
  _check_inference(c)
  _check_eval(c)
  _check_ablation(c)
  _check_distributed(c)


def _check_distributed(c: ml_collections.ConfigDict) -> None:
  """``distributed``: ``coordinator_address`` empty or ``host:port``; the process
  count and id in range."""
  d = c.distributed
  address = d.coordinator_address
  if address:
    host, sep, port = address.rpartition(":")
    _check(bool(sep and host) and port.isdigit() and 0 < int(port) < 65536,
           "distributed.coordinator_address",
           f"expected host:port (the port 1-65535), got {address!r}")
  _check(d.num_processes >= 1, "distributed.num_processes", "must be >= 1")
  _check(0 <= d.process_id < d.num_processes, "distributed.process_id",
         f"must be in [0, distributed.num_processes = {d.num_processes}), got {d.process_id}")


def _check_data(c: ml_collections.ConfigDict) -> None:
  """``data``: the format and the inputs it needs, the rate, the streams, the splits."""
  _choice(c, "data.format", DATASET_FORMATS)
  if c.data.format == "activitynet":
    _check(bool(c.data.annotation_path), "data.annotation_path",
           "is required with data.format='activitynet'")
    _check(bool(c.data.features_dir), "data.features_dir",
           "is required with data.format='activitynet'")
  if c.data.format == "wtalc":
    _check(bool(c.data.wtalc_dir), "data.wtalc_dir", "is required with data.format='wtalc'")
  _check(c.data.feature_rate > 0, "data.feature_rate", "must be > 0")
  streams = tuple(require(c, "data.feature_streams"))
  for stream in streams:  # folder names under data.features_dir: never a path
    try:
      io.plain_name(stream, what="stream")
    except DataError as e:
      raise ConfigError(f"config.data.feature_streams: {e}") from None
  _check(len(set(streams)) == len(streams), "data.feature_streams",
         f"names a stream twice: {streams}")
  for split in ("train", "test"):
    _check(not (c.data[f"{split}_split_file"] and c.data[f"{split}_subset"] == SUBSET_AUTO),
           f"data.{split}_subset", f"a split file defines a subset: name it (not "
           f"{SUBSET_AUTO!r}) with data.{split}_split_file")


def _check_labels_and_model(c: ml_collections.ConfigDict) -> None:
  """``labels`` (the mode and its files), ``model`` and the metric logging of ``train``."""
  _choice(c, "labels.mode", LABEL_MODES)
  if c.labels.mode == "points":
    _check(bool(c.labels.points_csv), "labels.points_csv", "is required with labels.mode='points'")
    _check(bool(c.labels.fps_json), "labels.fps_json", "is required with labels.mode='points'")
  _check(0.0 <= c.model.dropout_rate < 1.0, "model.dropout_rate", "must be in [0, 1)")
  _choice(c, "model.compute_dtype", COMPUTE_DTYPES)
  _choice(c, "model.dropout_rng", DROPOUT_RNGS)
  _choice(c, "model.localization_embedding", LOCALIZATION_EMBEDDINGS)
  for backend in require(c, "train.log_to"):
    _check(backend in METRIC_BACKENDS, "train.log_to",
           f"{backend!r} is not one of {METRIC_BACKENDS}")
  _check(int(require(c, "train.log_images")) >= 0, "train.log_images", "must be >= 0")
  _check(c.model.embed_dim == -1 or c.model.embed_dim > 0, "model.embed_dim",
         "must be > 0, or -1 for the feature dimension")


def _check_loss(c: ml_collections.ConfigDict) -> None:
  """``loss`` (eq. 1 weights, the margin, the top-k, every term's choices, at least
  one term on), with the choices of ``train.subsample`` and the ablation cells."""
  for name in ("alpha", "beta", "gamma", "loc_classification_weight"):
    v = getattr(c.loss, name)
    _check(0 <= v < math.inf, f"loss.{name}", f"loss weights must be finite and >= 0, got {v}")
  _check(int(c.loss.margin) == c.loss.margin and c.loss.margin >= 1, "loss.margin",
         f"the SphereFace margin m must be an integer >= 1, got {c.loss.margin}")
  _choice(c, "loss.topk_mode", TOPK_MODES)
  _check(c.loss.topk_ratio >= 1, "loss.topk_ratio",
         f"the top-k ratio r must be >= 1, got {c.loss.topk_ratio}")
  r_loc = c.loss.loc_classification_topk_ratio
  _check(r_loc == 0 or 1 <= r_loc < math.inf, "loss.loc_classification_topk_ratio",
         f"must be 0 (C_cls's k) or a finite r >= 1, got {r_loc}")
  _choice(c, "loss.propagation_method", PROPAGATION_METHODS)
  _choice(c, "loss.topk_count", TOPK_COUNTS)
  _choice(c, "loss.sphere_classes", SPHERE_CLASSES)
  _choice(c, "loss.segment_normalization", SEGMENT_NORMALIZATIONS)
  _choice(c, "loss.propagation_features", PROPAGATION_FEATURES)
  _choice(c, "train.subsample", SUBSAMPLE_MODES)
  _choice(c, "ablation.non_psl_cells", ABLATION_NON_PSL_CELLS)
  _choice(c, "ablation.split", ABLATION_SPLITS)
  _choice(c, "loss.classification_normalization", CLASSIFICATION_NORMALIZATIONS)
  _choice(c, "loss.propagation_similarity", PROPAGATION_SIMILARITIES)
  _choice(c, "loss.propagation_normalization", PROPAGATION_NORMALIZATIONS)
  _check(c.loss.use_classification or c.loss.use_segment or c.loss.use_sphere
         or c.loss.use_propagation, "loss", "at least one loss term must be on")


def _check_train(c: ml_collections.ConfigDict, *, num_devices: int) -> None:
  """``train`` (sizes, the optimizer, cropping, intervals, the hold-out) and
  ``parallel.num_devices``; the batch divides over ``num_devices``."""
  t = c.train
  _check(t.batch_size >= 1, "train.batch_size", "must be >= 1")
  _check(c.parallel.num_devices == -1 or c.parallel.num_devices >= 1,
         "parallel.num_devices", "must be >= 1, or -1 for all devices")
  _check(t.batch_size % num_devices == 0, "train.batch_size",
         f"{t.batch_size} is not divisible by the number of devices ({num_devices})")
  _check(t.num_steps >= 1, "train.num_steps", "must be >= 1")
  _check(0 < t.learning_rate < math.inf, "train.learning_rate", "must be finite and > 0")
  _check(t.weight_decay >= 0, "train.weight_decay", "must be >= 0")
  _choice(c, "train.schedule", SCHEDULES)
  _check(t.max_length >= 1, "train.max_length", "must be >= 1")
  _choice(c, "train.crop_mode", CROP_MODES)
  _choice(c, "train.device_data", DEVICE_DATA_MODES)
  _check(len(t.length_buckets) > 0 and all(b > 0 for b in t.length_buckets),
         "train.length_buckets", "must be a non-empty list of positive lengths")
  for name in ("log_every", "eval_every", "checkpoint_every", "keep_checkpoints"):
    _check(getattr(t, name) >= 1, f"train.{name}", "must be >= 1")
  _check(0.0 <= t.validation_fraction < 1.0, "train.validation_fraction", "must be in [0, 1)")


def _check_inference(c: ml_collections.ConfigDict) -> None:
  """``inference``: the batch size and every rule set the run may detect with."""
  i = c.inference
  _check(i.batch_size >= 1, "inference.batch_size", "must be >= 1")
  # Every rule set the run may detect with, checked as jaxseg.rules builds it.
  for name, r in rules_lib.candidates(i).items():
    _check(r.extent != "localization" or trains_localization(c.loss),
           "inference.extent" if name == "jaxseg" else "inference.rule_candidates",
           f"the {name!r} rules take extent 'localization', which needs a trained C_loc "
           "(loss.use_segment, use_sphere, use_propagation or loc_classification_weight > 0)"
           + ("; use 'proposal'" if name == "jaxseg" else ""))
  _check(i.rules != "auto" or c.train.validation_fraction > 0, "inference.rules",
         "'auto' chooses the rules on the validation hold-out: it needs "
         "train.validation_fraction > 0 (or name a preset of "
         f"{PRESETS})")


def _check_eval(c: ml_collections.ConfigDict) -> None:
  """``eval``: the protocol, the tIoU thresholds and the averages over them."""
  _choice(c, "eval.protocol", PROTOCOLS)
  _check(len(c.eval.tiou_thresholds) > 0
         and all(0.0 < x <= 1.0 for x in c.eval.tiou_thresholds),
         "eval.tiou_thresholds", "must be a non-empty list of values in (0, 1]")
  for name, lo_, hi_ in c.eval.averages:
    _check(lo_ <= hi_, "eval.averages", f"{name}: low {lo_} > high {hi_}")


def _check_ablation(c: ml_collections.ConfigDict) -> None:
  """``ablation``: label modes, seeds, annotation times, loss combinations, split."""
  _check(len(c.ablation.label_modes) > 0, "ablation.label_modes",
         "must name at least one label mode")
  for mode in c.ablation.label_modes:
    _check(mode in LABEL_MODES, "ablation.label_modes", f"{mode!r} is not one of {LABEL_MODES}")
  _check(c.ablation.num_seeds >= 1, "ablation.num_seeds", "must be >= 1")
  for pair in require(c, "ablation.annotation_time"):
    ok = (len(pair) == 2 and pair[0] in LABEL_MODES and isinstance(pair[1], (int, float))
          and math.isfinite(pair[1]) and pair[1] > 0)
    _check(ok, "ablation.annotation_time",
           f"{pair!r} is not a (label mode, positive time) pair")
  for combo in require(c, "ablation.losses"):
    _check(combo in ABLATION_LOSSES, "ablation.losses", f"{combo!r} is not one of {ABLATION_LOSSES}")
  _check(len(c.ablation.losses) > 0, "ablation.losses", "must name at least one combination")
  _check(c.ablation.split != "validation" or c.train.validation_fraction > 0,
         "ablation.split", "'validation' needs train.validation_fraction > 0")


def check_fields(c: ml_collections.ConfigDict) -> None:
  """Every field of ``c`` is a field of :func:`base_config`, of its type, and finite.

  The generic half of :func:`validate`: an unknown field (a typo in a config
  file) or a missing one (a damaged ``config.json`` of a run), a value of another type (``"8"`` for an integer, ``1.5`` for one), a
  NaN or inf anywhere (every float field, and floats inside lists), a negative
  seed, sizes that cannot be, and schedules or subsets that cannot work.
  An integer field takes an integral float (``2.0``), a float field an
  integer; a field whose default is ``None`` takes any type.

  Raises:
    ConfigError: naming the field.
  """
  _check_node(c, base_config(), "")
  for field in ("seed", "labels.seed", "data.synthetic.seed"):
    _check(require(c, field) >= 0, field, f"must be >= 0, got {require(c, field)}")
  for field in ("num_classes", "num_train", "num_test", "feature_dim", "max_length"):
    v = require(c, f"data.synthetic.{field}")
    _check(v >= 1, f"data.synthetic.{field}", f"must be >= 1, got {v}")
  # The generator's world: finite strengths and noise (a NaN would give NaN
  # features, not an error), a correlation below 1, lengths and coverage in range.
  for field in synthetic.SIGNAL_STRENGTHS:
    v = require(c, f"data.synthetic.{field}")
    _check(0 <= v < math.inf, f"data.synthetic.{field}", f"must be finite and >= 0, got {v}")
  v = require(c, "data.synthetic.noise")
  _check(0 <= v < math.inf, "data.synthetic.noise", f"must be finite and >= 0, got {v}")
  v = require(c, "data.synthetic.noise_ar")
  _check(-math.inf < v < 1, "data.synthetic.noise_ar",
         f"must be < 1 (< 0: the [1, 2, 1] kernel; [0, 1): AR(1)), got {v}")
  v = require(c, "data.synthetic.instance_length_median")
  _check(0 < v < math.inf, "data.synthetic.instance_length_median", f"must be > 0, got {v}")
  v = require(c, "data.synthetic.coverage_mean")
  _check(0 < v < 1, "data.synthetic.coverage_mean", f"must be in (0, 1), got {v}")
  # Where the class evidence sits and what surrounds the instances.
  v = require(c, "data.synthetic.class_evidence")
  _check(v in CLASS_EVIDENCE, "data.synthetic.class_evidence",
         f"{v!r} is not one of {CLASS_EVIDENCE}")
  v = require(c, "data.synthetic.core_fraction")
  _check(0 < v <= 1, "data.synthetic.core_fraction", f"must be in (0, 1], got {v}")
  v = require(c, "data.synthetic.num_cores")
  _check(v >= 1, "data.synthetic.num_cores", f"must be an integer >= 1, got {v}")
  for field in ("context_strength", "foreign_action_strength"):
    v = require(c, f"data.synthetic.{field}")
    _check(0 <= v < math.inf, f"data.synthetic.{field}", f"must be finite and >= 0, got {v}")
  v = require(c, "data.synthetic.foreign_action_rate")
  _check(0 <= v < 1, "data.synthetic.foreign_action_rate", f"must be in [0, 1), got {v}")
  _check(v == 0 or require(c, "data.synthetic.num_classes") >= 2,
         "data.synthetic.foreign_action_rate", "> 0 needs data.synthetic.num_classes >= 2")
  v = require(c, "data.synthetic.two_class_fraction")
  _check(0 <= v <= 1, "data.synthetic.two_class_fraction", f"must be in [0, 1], got {v}")
  _check(v == 0 or require(c, "data.synthetic.num_classes") >= 2,
         "data.synthetic.two_class_fraction", "> 0 needs data.synthetic.num_classes >= 2")
  t = c.train
  _check(t.grad_clip_norm >= 0, "train.grad_clip_norm", "must be >= 0 (0: off)")
  _check(t.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
  if t.schedule == "cosine":
    _check(t.num_steps > max(t.warmup_steps, 1), "train.num_steps",
           f"the cosine schedule needs more steps ({t.num_steps}) than its warmup "
           f"({max(t.warmup_steps, 1)})")
  _check(c.data.train_subset != c.data.test_subset or c.data.train_subset == SUBSET_AUTO,
         "data.train_subset",
         f"{c.data.train_subset!r} is also data.test_subset: a model would be tested "
         "on its training videos")


def _check_node(node, base, prefix: str) -> None:
  for key in base.keys():  # a run's config.json can lack one (a config file cannot)
    _check(key in node, f"{prefix}{key}", "missing (every field is listed in "
           "jaxseg/config.py base_config)")
  for key in node.keys():
    field = f"{prefix}{key}"
    _check(key in base, field, "unknown field (every field is listed in "
           "jaxseg/config.py base_config)")
    value, ref = node[key], base[key]
    if isinstance(ref, ml_collections.ConfigDict):
      _check(isinstance(value, (ml_collections.ConfigDict, dict)), field,
             f"expected a section, got {value!r}")
      _check_node(value, ref, field + ".")
    else:
      _check_value(value, ref, field)


def _leaves(value):
  """``value`` itself, or the items of a (nested) list or tuple."""
  if isinstance(value, (list, tuple)):
    for v in value:
      yield from _leaves(v)
  else:
    yield value


# Every integer field (sizes, counts, steps, seeds) fits in int32; a larger one
# reaches JAX or numpy as an overflow, not a named error.
MAX_INT_FIELD = 2 ** 31


def _check_value(value, ref, field: str) -> None:
  """``value`` has the type of the default ``ref``, and every float in it is finite."""
  def kind(v):
    if isinstance(v, bool):
      return "bool"
    if isinstance(v, int):
      return "int"
    if isinstance(v, float):
      return "float"
    if isinstance(v, str):
      return "str"
    if isinstance(v, (tuple, list)):
      return "list"
    return type(v).__name__
  want, got = kind(ref), kind(value)
  ok = (ref is None or got == want or (want == "float" and got == "int")
        or (want == "int" and got == "float" and math.isfinite(value)
            and value == int(value)))
  names = {"int": "an integer", "float": "a number", "bool": "True or False",
           "str": "a string", "list": "a list"}
  _check(ok, field, f"expected {names.get(want, want)}, got {value!r}")
  _check(not isinstance(value, str) or "\x00" not in value, field,
         "holds a NUL byte (no path or name can)")
  integral = [r for r in _leaves(ref) if isinstance(r, int) and not isinstance(r, bool)]
  big = [v for v in _leaves(value)
         if isinstance(v, (int, float)) and not isinstance(v, bool)
         and (isinstance(v, int) or integral) and abs(v) >= MAX_INT_FIELD]
  _check(not big, field,
         f"{big[0] if big else ''} is out of range (|x| < 2**31: every size, count and "
         "step fits)")
  _check_finite(value, field)
  if want == "list" and ref:
    if len({kind(r) if kind(r) != "int" else "float" for r in ref}) == 1:
      for v in value:  # a list of one kind: each entry like the first default
        _check_value(v, ref[0], field)
    else:  # a record, e.g. ("avg0.1:0.5", 0.1, 0.5): entry by entry
      _check(len(value) == len(ref), field, f"expected {len(ref)} entries like "
             f"{ref!r}, got {value!r}")
      for v, r in zip(value, ref):
        _check_value(v, r, field)


def _check_finite(value, field: str) -> None:
  for v in _leaves(value):
    if isinstance(v, float):
      _check(math.isfinite(v), field, f"must be finite, got {v}")
