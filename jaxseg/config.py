"""The base configuration every ``configs/*.py`` starts from (checked by
:mod:`jaxseg.config_checks`).

Every knob of a run lives here, with its default and meaning. ``configs/*.py``
override what differs; the command line overrides further
(``--config.train.learning_rate=3e-4``).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

# The choices of every enumerated field, defined here only. Library functions
# dispatch on these values; ``config_checks.validate`` is the one place that
# checks them.
LABEL_MODES = ("one-segment", "two-segment", "video-level", "full", "points")
DATASET_FORMATS = ("synthetic", "activitynet", "wtalc")
COMPUTE_DTYPES = ("float32", "bfloat16")
DROPOUT_RNGS = ("threefry2x32", "rbg")
LOCALIZATION_EMBEDDINGS = ("shared", "detached", "separate")
METRIC_BACKENDS = ("tensorboard", "wandb", "mlflow")  # metrics.jsonl is always written
TOPK_MODES = ("labeled", "fixed")
PROPAGATION_METHODS = ("naive", "dense", "factorized", "fused", "pallas")
CLASSIFICATION_NORMALIZATIONS = ("classes", "labels")
PROPAGATION_SIMILARITIES = ("dot", "cosine")
PROPAGATION_NORMALIZATIONS = ("none", "pairs")
SCHEDULES = ("constant", "cosine")
CROP_MODES = ("uniform", "crop")
DEVICE_DATA_MODES = ("auto", "on", "off")
SCORE_SOURCES = ("average", "classification")
CONTRAST_ON = ("raw", "normalized")
# Where a detection's segment comes from: its own proposal, or the run of C_a
# of best C_loc contrast that contains it (jaxseg.proposals.generate_proposals).
EXTENTS = ("proposal", "localization")
# The CAS whose thresholded runs are the ranked proposals: "average" C_a (4.7)
# or "classification" C_cls (jaxseg.proposals.generate_proposals).
PROPOSAL_CAS = ("average", "classification")
# With inference.extent_fallback, a detection whose grown segment is suppressed
# keeps its own segment with its score lowered by this: more than the spread of
# detection scores (contrasts and class scores are CAS values), so these rank
# after every detection that kept its grown segment.
EXTENT_FALLBACK_OFFSET = 1000.0
# How the outer-inner contrast of a proposal near a video's end treats the part
# of its outer region past the end: "ignored" (the outer mean over the part
# inside) or "neutral" (it counts as the inner mean: no contrast either way).
OUTER_OUTSIDE = ("ignored", "neutral")
CLASS_SCORES = ("s_a", "p_a")
# The named presets of every dataset config (``configs/<data>.py:<preset>``,
# jaxseg.presets.apply_preset): "jaxseg" (jaxseg's defaults), "paper" (Fig. 3's one
# embedding, section 4.7's inference, and only the readings the printed losses
# need to train: presets.PAPER_PRESET) and "printed" (the paper as printed, a
# diagnostic: presets.PAPER_AS_PRINTED).
PRESETS = ("jaxseg", "paper", "printed")
# inference.rules: one preset's inference rules (presets.PRESET_RULES), or "auto": the
# candidate with the best validation score, chosen after training (jaxseg.rules).
RULES = ("auto", *PRESETS)
PROTOCOLS = ("activitynet", "wtalc")
# data.train_subset / data.test_subset = SUBSET_AUTO: the first (train, test)
# pair of these present in the annotations: THUMOS14 as W-TALC and the official
# release name it (validation/test), as BaSNet and LACP ship it (train/test),
# and ActivityNet (training/validation; its "testing" has no annotations).
SUBSET_AUTO = "auto"
AUTO_SUBSET_PAIRS = (("validation", "test"), ("train", "test"), ("training", "validation"))
TOPK_COUNTS = ("segments", "instances")
SPHERE_CLASSES = ("present", "all")
SEGMENT_NORMALIZATIONS = ("none", "instances")
PROPAGATION_FEATURES = ("dropout", "clean")
SUBSAMPLE_MODES = ("uniform", "keep_labeled")
ABLATION_NON_PSL_CELLS = ("video_level", "label_informed")
ABLATION_SPLITS = ("validation", "test")
# Table 1's loss combinations, in its column order (CL is always on).
ABLATION_LOSSES = ("CL", "CL+PSL", "CL+SL", "CL+PL", "CL+PSL+SL", "CL+PSL+PL", "CL+SL+PL",
                   "CL+PSL+SL+PL")
# Where the synthetic generator puts an instance's class evidence
# (data.synthetic.class_evidence; jaxseg/data/synthetic.py): one short "core",
# a smooth bump "spread" over the whole instance, or several short "cores".
CLASS_EVIDENCE = ("core", "spread", "cores")

# Detection thresholds and the averages papers report (THUMOS14: Table 2 of the
# paper; ActivityNet: Tables 3-4).
THUMOS14_TIOU = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
ACTIVITYNET_TIOU = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)
THUMOS14_AVERAGES = (("avg0.1:0.5", 0.1, 0.5), ("avg0.1:0.7", 0.1, 0.7))
ACTIVITYNET_AVERAGES = (("avg0.5:0.95", 0.5, 0.95),)

# Paper Fig. 5: annotation time of each supervision level (labels.mode), as a
# fraction of the video's duration.
THUMOS14_ANNOTATION_TIME = (("video-level", 0.24), ("one-segment", 0.30),
                            ("two-segment", 0.32), ("full", 1.17))
ACTIVITYNET_ANNOTATION_TIME = (("video-level", 0.25), ("one-segment", 0.33),
                               ("two-segment", 0.38), ("full", 1.45))


def base_config() -> ml_collections.ConfigDict:
  """All fields with jaxseg's defaults (THUMOS14 I3D; ``jaxseg.presets`` for the print)."""
  c = ml_collections.ConfigDict()
  c.seed = 0  # parameter init, dropout and data order

  # ----------------------------------------------------------------- data
  c.data = d = ml_collections.ConfigDict()
  d.format = "synthetic"  # one of DATASET_FORMATS
  # ActivityNet-style JSON + features folder (BaSNet / LACP layout).
  d.annotation_path = ""
  d.features_dir = ""
  # Sub-folders of features_dir concatenated on D, e.g. ("rgb", "flow"); empty:
  # features_dir/<vid>.npy.
  d.feature_streams = ()
  d.train_split_file = ""  # optional text file, one video id per line
  d.test_split_file = ""
  # W-TALC bundle folder (features .npy + videoname.npy, subset.npy, ...).
  d.wtalc_dir = ""
  d.wtalc_features_file = ""  # e.g. "Thumos14reduced-I3D-JOINTFeatures.npy"
  d.train_subset = "validation"  # THUMOS14 trains on its validation split
  d.test_subset = "test"  # either may be SUBSET_AUTO ("auto"): see AUTO_SUBSET_PAIRS
  # Intervals the evaluation ignores (THUMOS14's "Ambiguous"): a text file of
  # "video start end" lines in seconds (W-TALC's Ambiguous_test.txt) or a JSON
  # {vid: [[start, end], ...]}. "" : none, except that format "wtalc" reads
  # wtalc_dir/Ambiguous_test.txt when it is there.
  d.ambiguous_path = ""
  d.feature_dim = 2048  # checked against the files
  d.feature_rate = 25.0 / 16.0  # segments per second
  d.skip_bad_videos = False  # skip (and report) unreadable videos instead of failing
  # Synthetic THUMOS14-shaped dataset, generated into <workdir>/data if absent.
  d.synthetic = s = ml_collections.ConfigDict()
  s.seed = 0
  s.num_classes = 20
  s.num_train = 200
  s.num_test = 200
  s.feature_dim = 64
  s.max_length = 2600
  s.output_dir = ""  # default: <workdir>/data
  # The world (jaxseg/data/synthetic.py SyntheticParams; benchmarks/robustness.py
  # varies them): noise scale (SNR), its temporal correlation (< 0: the [1, 2, 1]
  # kernel; rho in [0, 1): AR(1)), "softplus" or "relu" features, instance length
  # and coverage, and the signal strengths (class core and rest, action, distractors, scene).
  s.noise = 0.75
  s.noise_ar = -1.0
  s.activation = "softplus"
  s.instance_length_median = 5.5
  s.coverage_mean = 0.25
  s.core_strength = 4.0
  s.weak_class_strength = 0.5
  s.action_strength = 3.5
  s.distractor_action_strength = 3.0
  s.distractor_class_strength = 1.0
  s.scene_strength = 1.0
  # Where the class evidence sits and what surrounds the instances:
  s.class_evidence = "core"  # one of CLASS_EVIDENCE: one core, a smooth "spread" bump, "cores"
  s.core_fraction = 0.25  # the core's share of an instance ("cores": all cores together)
  s.num_cores = 2  # cores per instance with class_evidence "cores" (fewer where they do not fit)
  s.context_strength = 0.0  # the instance's class on background within one instance length
  s.foreign_action_rate = 0.0  # share of background in action-like runs of a non-label class
  s.foreign_action_strength = 3.0  # that class's signal in those runs
  s.two_class_fraction = 0.15  # share of videos holding two classes (co-occurring classes)

  # ------------------------------------------------- segment-level labels
  c.labels = l = ml_collections.ConfigDict()
  l.mode = "one-segment"  # one of LABEL_MODES
  l.seed = 0  # which segments get sampled
  l.points_csv = ""  # LACP-style point labels, with mode="points"
  l.fps_json = ""  # per-video original fps for points_csv

  # ---------------------------------------------------------------- model
  c.model = m = ml_collections.ConfigDict()
  m.embed_dim = -1  # -1: same as the feature dimension (paper: D -> D)
  m.dropout_rate = 0.7  # as W-TALC
  # FC arithmetic: "float32" or "bfloat16" (mixed precision: float32 parameters,
  # optimizer and losses; bfloat16 matmuls, the fast path on GPU/TPU).
  m.compute_dtype = "float32"
  # PRNG of the dropout masks (jax.random key impl): "threefry2x32" (JAX's
  # default, the same bits on every backend) or "rbg" (XLA's RngBitGenerator:
  # much cheaper on a GPU, where the (B, T, E) mask is a visible share of the step).
  m.dropout_rng = "threefry2x32"
  # The f of the C_loc head (and of eq. 8-13): "shared" with C_cls (paper
  # Fig. 3), "detached" (the same f, but the losses on C_loc train only its
  # head) or "separate" (an embedding of its own: eq. 4 alone trains C_cls's).
  # Chosen on validation across synthetic worlds:
  # docs/decisions.md#fig-3-the-localization-embedding.
  m.localization_embedding = "separate"

  # ----------------------------------------------------------------- loss
  c.loss = lo = ml_collections.ConfigDict()
  lo.use_classification = True
  lo.use_segment = True
  lo.use_sphere = True
  lo.use_propagation = True
  lo.alpha = 0.1  # partial segment loss weight (eq. 1)
  lo.beta = 1e-4  # sphere loss weight
  lo.gamma = 0.02  # propagation loss weight
  lo.margin = 4  # SphereFace m (integer >= 1)
  # top-k for eq. 2: "labeled": r = 2 Q (paper 5.1); "fixed": r = topk_ratio.
  lo.topk_mode = "labeled"
  lo.topk_ratio = 8.0
  # What Q of r = 2Q counts: labeled "segments" (paper 5.1, literally) or labeled
  # "instances" (runs of labeled segments of a class; one per labeled instance
  # for every label mode; the same Q for one-segment labels). Chosen on
  # validation across synthetic worlds:
  # docs/decisions.md#eq-2-and-section-51-the-top-k-and-q.
  lo.topk_count = "instances"
  # Eq. 6 summed over every labeled segment ("none", as printed) or averaged
  # within each labeled instance ("instances": the term counts instances, so
  # two-segment and full labels weigh it as one-segment labels do; the same
  # value for one-segment labels). Chosen as topk_count:
  # docs/decisions.md#eq-6-summed-over-labeled-segments.
  lo.segment_normalization = "instances"
  # Eq. 10 over the classes "present" in the video (jaxseg) or "all" N (as printed).
  lo.sphere_classes = "present"
  # The f that S of eq. 13 is built from: post-"dropout" (what the heads see) or
  # the "clean" pre-dropout f (the model returns both).
  lo.propagation_features = "dropout"
  lo.propagation_method = "fused"  # one of PROPAGATION_METHODS (equal values; "fused" is fastest)
  # Whether the propagation loss back-propagates into f through S (eq. 13).
  lo.propagation_grad_through_similarity = False
  # Eq. 4 scale: "classes" (1/N, as printed) or "labels" (y / sum y, W-TALC's loss).
  lo.classification_normalization = "labels"
  # Eq. 2-4 on C_loc as well, with this weight (0: on C_cls only, as printed):
  # the classification term is L_cls(C_cls) + this * L_cls(C_loc). It gives the
  # localization branch the class evidence eq. 5-13 cannot (they are invariant
  # to a class's offset and softmaxed over time); score videos from C_a with it
  # (inference.score_source = "average"). Measured across synthetic worlds, not
  # the default: docs/decisions.md#eq-2-4-on-c_loc-an-option.
  lo.loc_classification_weight = 0.0
  # The r of that term's top-k on C_loc: 0 uses C_cls's k (r = 2Q, or
  # topk_ratio); > 0 a fixed k = floor(l / r) (2: the top half of the video).
  lo.loc_classification_topk_ratio = 0.0
  # Eq. 13: S from "dot" products (as printed) or "cosine" similarities, and the
  # sum over pairs as printed ("none") or divided by l^2 ("pairs").
  lo.propagation_similarity = "cosine"
  lo.propagation_normalization = "pairs"

  # ------------------------------------------------------------- training
  c.train = t = ml_collections.ConfigDict()
  t.batch_size = 16
  t.num_steps = 5000
  t.learning_rate = 1e-4
  t.weight_decay = 5e-4
  t.warmup_steps = 0
  t.schedule = "constant"  # "constant" or "cosine"
  t.grad_clip_norm = 0.0  # 0: off
  t.max_length = 750  # training videos longer than this are sampled down
  t.crop_mode = "uniform"  # "uniform" sampling or random "crop" to max_length
  # With crop_mode "uniform": "uniform" as is, or "keep_labeled": every labeled
  # segment is kept and the rest of max_length sampled uniformly from the others.
  t.subsample = "uniform"
  t.length_buckets = (64, 128, 256, 512, 750, 1024, 2048, 4096)
  t.log_every = 50
  t.eval_every = 500
  t.checkpoint_every = 500
  t.keep_checkpoints = 3
  # Held out of training for checkpoint selection and the choice of the
  # inference rules (inference.rules = "auto" needs it > 0).
  t.validation_fraction = 0.1
  t.skip_nonfinite = False  # skip a batch with non-finite gradients instead of stopping
  t.progress = True
  # Keep the training features on the accelerator and send each step only row
  # indices (jaxseg/data/device_data.py): "auto" (on for a GPU/TPU when they
  # take at most a quarter of its memory), "on" or "off".
  t.device_data = "auto"
  # Where metrics go besides metrics.jsonl (jaxseg/metric_writers.py): any of
  # METRIC_BACKENDS; "wandb" and "mlflow" need their package installed.
  t.log_to = ("tensorboard",)
  t.log_project = ""  # W&B project / MLflow experiment (default "jaxseg" / MLflow's)
  t.log_images = 2  # CAS timelines of this many validation videos at each validation

  # ------------------------------------------------------------ inference
  c.inference = i = ml_collections.ConfigDict()
  i.batch_size = 8
  # Video-level class scores from "average" (C_a, paper 4.7) or "classification"
  # (C_cls: C_loc carries no class evidence unless loss.loc_classification_weight > 0).
  i.score_source = "classification"
  i.class_threshold = 0.0  # keep classes whose s_a exceeds this (paper 4.7)
  i.class_top_ratio = 0.2  # and p_a >= this * max p_a (0: off)
  i.keep_top_class = True  # always keep the top class (jaxseg); False: the paper's rule only
  i.cas_thresholds = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)  # on the min-max normalised CAS
  # The CAS the ranked proposals are cut from: "average" (C_a, 4.7) or
  # "classification" (C_cls). The containers of extent = "localization" are
  # always cut from C_a.
  i.proposal_cas = "classification"
  i.contrast_on = "raw"  # outer-inner contrast on the "raw" CAS or its per-class "normalized" form
  # The CAS of that contrast: (1 - w) C_cls + w C_loc (0.5: C_a; 4.7 prints no
  # proposal score). 0: detections are ranked by the classification module's
  # evidence (docs/decisions.md#section-47-proposals-their-score-and-extent).
  i.contrast_loc_weight = 0.0
  # "localization": a kept proposal takes the extent of the run of C_a containing
  # it with the best contrast on C_loc (if better than its own), and keeps its
  # score; "proposal": its own.
  # "localization" needs a trained C_loc (a localization loss on).
  i.extent = "localization"
  # With "localization": a detection whose grown segment NMS suppresses falls
  # back to its own segment (unless that overlaps a kept one), ranked after the
  # others (config.EXTENT_FALLBACK_OFFSET); False drops it.
  i.extent_fallback = True
  i.class_score = "s_a"  # the video score added to a proposal's: "s_a" (eq. 2, 4.7) or "p_a" (eq. 3)
  i.outer_scale = 0.25  # outer region = this fraction of the proposal on each side
  # The outer region's part past the video's ends: "neutral" (counts as the
  # inner mean, so a run reaching an end is not judged on a few outer segments)
  # or "ignored" (the outer mean over the rest). Chosen on validation across
  # worlds: docs/decisions.md#section-47-the-outer-region-past-a-videos-end.
  i.outer_outside = "neutral"
  i.class_score_weight = 1.0  # proposal score = inner-outer + w * class score
  # The rules detections are made with (jaxseg/rules.py): "auto" (after
  # training, the validation hold-out is scored under each preset of
  # rule_candidates, from the same CAS, and the best is used for the test split
  # and predict; needs train.validation_fraction > 0), or one of PRESETS:
  # "jaxseg" (the fields of this section as they are), "paper" or "printed"
  # (these fields with presets.PRESET_RULES applied).
  i.rules = "auto"
  i.rule_candidates = PRESETS
  # Class-wise NMS: drop a proposal whose tIoU with a better one of its class is
  # above this (not printed; chosen on validation across worlds:
  # docs/decisions.md#section-47-nms).
  i.nms_iou = 0.3
  i.max_proposals_per_video = 100

  # -------------------------------------------------------------- parallel
  c.parallel = pa = ml_collections.ConfigDict()
  pa.num_devices = -1  # data-parallel over this many devices (-1: all)
  # Multi-host: jax.distributed.initialize(coordinator_address, num_processes,
  # process_id), or auto=True on SLURM / Open MPI / Cloud TPU.
  c.distributed = di = ml_collections.ConfigDict()
  di.coordinator_address = ""
  di.num_processes = 1
  di.process_id = 0
  di.auto = False

  # ----------------------------------------------------------- evaluation
  c.eval = e = ml_collections.ConfigDict()
  e.protocol = "activitynet"  # or "wtalc" (non-interpolated, first match)
  e.tiou_thresholds = THUMOS14_TIOU
  # Averages reported: name -> (low, high) inclusive range of thresholds.
  e.averages = THUMOS14_AVERAGES
  e.num_plot_videos = 0  # --mode eval writes CAS timelines for this many videos

  # --------------------------------------------------------------- ablation
  c.ablation = a = ml_collections.ConfigDict()
  a.label_modes = ("one-segment", "two-segment")
  a.num_seeds = 1
  # Fig. 5 (mAP against annotation time): (labels.mode, time) pairs, the time a
  # fraction of the video's duration (the paper's THUMOS14 ratios; use your own).
  a.annotation_time = THUMOS14_ANNOTATION_TIME
  # Cells without PSL: "video_level" (as the paper: no segment label, fixed r,
  # trained once per seed and shown in every label row) or "label_informed"
  # (trained per label mode, r = 2Q from its labels).
  a.non_psl_cells = "video_level"
  # Where cells are scored: "validation" (the hold-out; the test split is never
  # read: for tuning) or "test" (the final report, once).
  a.split = "test"
  a.losses = ABLATION_LOSSES  # the combinations to train (Table 1: all of them)
  return c


# Fields added after runs were made, each with the value that does what a run
# made before it did. A run's config.json without one is read with that value
# (jaxseg.workdir.config_diff, jaxseg.predict.run_config), so an older run is
# re-evaluated and predicts as it was trained and scored.
ADDED_FIELDS = (
    ("loss.loc_classification_weight", 0.0),  # eq. 2-4 on C_cls only
    ("loss.loc_classification_topk_ratio", 0.0),
    ("inference.contrast_loc_weight", 0.5),  # the contrast on C_a
    ("inference.extent", "proposal"),  # each proposal's own segment
    ("inference.proposal_cas", "average"),  # proposals cut from C_a
    ("inference.extent_fallback", False),
    ("inference.outer_outside", "ignored"),  # the outer mean over its part inside
    ("inference.rules", "jaxseg"),  # the inference fields as they are
    ("inference.rule_candidates", PRESETS),
    # The synthetic world's structure knobs: the world generated before them.
    ("data.synthetic.class_evidence", "core"),
    ("data.synthetic.core_fraction", 0.25),
    ("data.synthetic.num_cores", 2),
    ("data.synthetic.context_strength", 0.0),
    ("data.synthetic.foreign_action_rate", 0.0),
    ("data.synthetic.foreign_action_strength", 3.0),
    ("data.synthetic.two_class_fraction", 0.15),
)


def trains_localization(loss: Mapping[str, Any]) -> bool:
  """Whether a ``config.loss`` trains ``C_loc``: PSL, SL or PL on, or eq. 2-4 on it.

  Without one (CL alone) ``C_loc`` is an untrained head, and a detection's
  extent cannot be chosen on it (``inference.extent = "proposal"``).
  """
  return bool(loss["use_segment"] or loss["use_sphere"] or loss["use_propagation"]
              or loss["loc_classification_weight"] > 0)


def with_added_fields(d: Mapping[str, Any]) -> dict[str, Any]:
  """A copy of a run's config dict with each missing field of
  :data:`ADDED_FIELDS` set to its earlier behaviour (its section must exist)."""
  out = copy.deepcopy(dict(d))
  for key, value in ADDED_FIELDS:
    *path, name = key.split(".")
    node = out
    for section in path:
      node = node.get(section) if isinstance(node, dict) else None
    if isinstance(node, dict):
      node.setdefault(name, value)
  return out


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """A nested config (or its ``to_dict()`` / JSON form) as ``{"train.learning_rate": v}``.

  Lists become tuples, so a config read back from JSON compares equal to the
  config it was written from.
  """
  out = {}
  for key, value in d.items():
    name = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(flatten(value, name + "."))
    else:
      out[name] = tuple(value) if isinstance(value, list) else value
  return out


def with_overrides(c: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
  """A copy of ``c`` with dotted-name overrides, e.g. ``**{"loss.alpha": 0.5}``."""
  c = ml_collections.ConfigDict(c.to_dict())
  for key, value in overrides.items():
    node = c
    *path, leaf = key.split(".")
    for name in path:
      node = node[name]
    node[leaf] = value
  return c


class ConfigError(ValueError):
  """A configuration value is invalid; the message names the field."""


def require(c, field: str, *, where: str = "config"):
  """The value of the dotted ``field`` of config ``c`` (or of one of its sections).

  Args:
    c: a config, a section of one (``config.inference``) or a mapping.
    field: dotted name inside ``c``, e.g. ``"loss.margin"`` or ``"nms_iou"``.
    where: what ``c`` is, for the message (``"config.inference"``).

  Library functions read the fields they need through this, so that a config
  missing one fails naming it instead of running some other default.

  Raises:
    ConfigError: ``<where>.<field>: missing``.
  """
  node = c
  for name in field.split("."):
    try:
      node = node[name]
    except (KeyError, AttributeError, TypeError):
      raise ConfigError(f"{where}.{field}: missing (every field is listed in "
                        "jaxseg/config.py base_config)") from None
  return node
