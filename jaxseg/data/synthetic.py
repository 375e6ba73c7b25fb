"""A synthetic THUMOS14-shaped dataset, so the tool runs with no download.

:func:`generate_synthetic` writes the dataset in the ActivityNet JSON + features
folder layout (format 1 of ``docs/data-formats.md``), so loading it exercises
the same reader as real data::

  <output_dir>/annotations.json     {"database": {vid: {"subset", "duration",
                                                        "annotations": [...]}}}
  <output_dir>/features/<vid>.npy   (T, D) float32, non-negative
  <output_dir>/generator.json       the generator's parameters and class list

The generative model (:mod:`jaxseg.data.synthetic_world`; ``docs/synthetic-data.md`` has the full description and
the measured statistics of the default dataset) reproduces the difficulty the
paper's Fig. 4 shows on THUMOS14: a class is clearly recognisable only in a
short *discriminative core* of each instance; the rest of the instance carries
a class-agnostic "action" pattern and only a weak class signal; the background
holds noise and class-agnostic distractors. A classifier trained with the
video-level loss alone (eq. 2-4) therefore fires on the cores, while labels on
random segments of each instance (eq. 5-6) teach the whole extent.

Every annotation also carries ``"core_segments": [first, last]``, the
(inclusive) segment indices of its discriminative core: readers ignore it;
tests and plots may use it.

Other worlds move the class evidence (``class_evidence``: one short core, a
smooth bump over the whole instance, or several short cores), put the
instance's class on the background around it (``context_strength``), add
action-like background runs of a class the video is not labeled with
(``foreign_action_rate``), or make classes co-occur (``two_class_fraction``);
``docs/synthetic-data.md`` describes them. At their defaults these knobs draw no
random number and write nothing, so the default world is the same, byte for
byte, as before they existed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from jaxseg.data.synthetic_world import (sample_layout, sample_length, unit_vectors,
                                         video_features)
from jaxseg.data.video import DataError, I3D_FEATURE_RATE

GENERATOR_NAME = "jaxseg.data.synthetic"
GENERATOR_VERSION = 1
ANNOTATION_FILE = "annotations.json"
FEATURES_DIR = "features"
GENERATOR_FILE = "generator.json"
TRAIN_SUBSET = "validation"  # THUMOS14 trains on its validation split
TEST_SUBSET = "test"
# The signal strengths of SyntheticParams (lengths along unit directions), and
# the knobs of the world that config.data.synthetic exposes.
SIGNAL_STRENGTHS = ("core_strength", "weak_class_strength", "action_strength",
                    "distractor_action_strength", "distractor_class_strength", "scene_strength")
CONFIG_WORLD_KNOBS = ("noise", "noise_ar", "activation", "instance_length_median",
                      "coverage_mean", *SIGNAL_STRENGTHS, "class_evidence", "core_fraction",
                      "num_cores", "context_strength", "foreign_action_rate",
                      "foreign_action_strength", "two_class_fraction")
# Fields added after datasets of GENERATOR_VERSION 1 were generated. At its
# default each draws no random number and generator.json leaves it out, so a
# dataset generated before them with the same parameters is the same record
# (and is reused, not regenerated).
ADDED_PARAMS = {"class_evidence": "core", "num_cores": 2, "context_strength": 0.0,
                "foreign_action_rate": 0.0, "foreign_action_strength": 3.0}


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  """Every knob of the generator. Defaults give the THUMOS14-shaped dataset.

  Signal strengths are in units of the per-direction noise standard deviation
  of the pre-activation ``z`` (see ``docs/synthetic-data.md``): a strength of
  ``s`` along a unit direction gives a single-segment signal-to-noise ratio of
  about ``s`` for the best linear read-out.

  Attributes:
    seed: seed of everything below.
    num_classes: number of action classes (THUMOS14: 20).
    num_train: videos in subset "validation" (THUMOS14 trains on it).
    num_test: videos in subset "test".
    feature_dim: ``D`` (I3D: 2048; 64 keeps the CPU demo fast).
    max_length: longest video, in segments.
    feature_rate: segments per second.
    min_length: shortest video, in segments.
    median_length: median video length, in segments (log-normal).
    length_sigma: log-normal sigma of the video length.
    coverage_mean: mean fraction of a video covered by actions (Beta).
    coverage_concentration: Beta concentration of that fraction.
    two_class_fraction: fraction of videos holding two classes.
    instance_length_median: median over classes of the per-class median
      instance length, in segments.
    class_length_sigma: log-normal sigma of the per-class median length.
    instance_length_sigma: log-normal sigma of an instance's length around
      its class median.
    long_instance_prob: probability that an instance is "very long".
    long_instance_factor: (low, high) of the uniform factor a very long
      instance's length is multiplied by.
    core_fraction: the discriminative core's share of an instance (at least
      one segment); with ``class_evidence="cores"`` the share of all its cores
      together.
    core_strength: class signal in the core.
    weak_class_strength: class signal in the rest of the instance.
    action_strength: class-agnostic action pattern, in the whole instance.
    distractor_rate: fraction of background segments inside distractor runs.
    distractor_action_strength: action pattern (no class signal) in a
      class-agnostic distractor run.
    distractor_class_strength: class signal of a random class in a weak
      class-like distractor run.
    distractor_action_prob: share of distractor runs that are action-like
      (the others are weak class-like).
    scene_strength: per-video random offset ("scene appearance").
    noise: noise scale of ``z`` (1 = the unit the strengths are given in).
    bias: offset of ``z`` before the softplus.
    noise_ar: temporal correlation of the noise: ``< 0``: the [1, 2, 1]
      kernel (neighbour correlation 2/3, the default world); ``rho`` in
      ``[0, 1)``: unit-variance AR(1) noise with coefficient ``rho`` (0: white).
    activation: ``"softplus"`` (smooth, every feature > 0) or ``"relu"``
      (exact zeros, as I3D's post-ReLU features).
    class_evidence: where an instance's class signal sits (the choices of
      ``jaxseg.config.CLASS_EVIDENCE``). ``"core"``: ``core_strength`` on one core of
      ``core_fraction`` of the instance at a uniform place, ``weak_class_strength``
      on the rest. ``"spread"``: no core; a raised-cosine (Hann) bump over the
      whole instance, ``weak + (core - weak) * sin^2(pi (k + 0.5) / L)``
      divided by its largest value, so it peaks at ``core_strength`` in the
      middle and never falls below ``weak_class_strength``. ``"cores"``:
      ``num_cores`` cores of ``max(1, round(core_fraction / num_cores * L))``
      segments each at uniform places, at least one segment apart (fewer where
      the instance is too short for that). The layout, noise, scene and
      distractors of a video are the same in the three worlds.
    num_cores: cores per instance with ``class_evidence="cores"`` (>= 1).
    context_strength: signal of an instance's class on the background segments
      within one instance length before and after it (0: none). Overlapping
      bands of one class count once.
    foreign_action_rate: share of the background covered by runs that look
      like an instance of a class the video is not labeled with: the action
      pattern at ``action_strength`` plus that class's signal at
      ``foreign_action_strength``, as long as the class's median instance
      (0: none). The runs lie on background segments outside distractor runs
      (and outside the context bands when ``context_strength > 0``), one
      segment apart from each other.
    foreign_action_strength: the class signal in those runs.
  """
  seed: int = 0
  num_classes: int = 20
  num_train: int = 200
  num_test: int = 200
  feature_dim: int = 64
  max_length: int = 2600
  feature_rate: float = I3D_FEATURE_RATE
  min_length: int = 15
  median_length: float = 240.0
  length_sigma: float = 0.8
  coverage_mean: float = 0.25
  coverage_concentration: float = 10.0
  two_class_fraction: float = 0.15
  instance_length_median: float = 5.5
  class_length_sigma: float = 0.35
  instance_length_sigma: float = 0.5
  long_instance_prob: float = 0.03
  long_instance_factor: tuple[float, float] = (3.0, 8.0)
  core_fraction: float = 0.25
  core_strength: float = 4.0
  weak_class_strength: float = 0.5
  action_strength: float = 3.5
  distractor_rate: float = 0.08
  distractor_action_strength: float = 3.0
  distractor_class_strength: float = 1.0
  distractor_action_prob: float = 0.5
  scene_strength: float = 1.0
  noise: float = 0.75
  bias: float = -0.5
  noise_ar: float = -1.0
  activation: str = "softplus"
  class_evidence: str = "core"
  num_cores: int = 2
  context_strength: float = 0.0
  foreign_action_rate: float = 0.0
  foreign_action_strength: float = 3.0

  def validate(self) -> None:
    """Raises ValueError on an impossible setting."""
    checks = [
        (self.num_classes >= 1, "num_classes must be >= 1"),
        (self.num_train >= 0 and self.num_test >= 0,
         "num_train and num_test must be >= 0"),
        (self.num_train + self.num_test >= 1, "at least one video is needed"),
        (self.feature_dim >= 1, "feature_dim must be >= 1"),
        (self.min_length >= 2, "min_length must be >= 2"),
        (self.max_length >= self.min_length, "max_length must be >= min_length"),
        (self.feature_rate > 0, "feature_rate must be > 0"),
        (self.median_length > 0 and self.length_sigma >= 0,
         "median_length must be > 0 and length_sigma >= 0"),
        (0 < self.coverage_mean < 1, "coverage_mean must be in (0, 1)"),
        (self.coverage_concentration > 0, "coverage_concentration must be > 0"),
        (0 <= self.two_class_fraction <= 1, "two_class_fraction must be in [0, 1]"),
        (self.num_classes >= 2 or self.two_class_fraction == 0,
         "two_class_fraction > 0 needs num_classes >= 2"),
        (self.instance_length_median > 0, "instance_length_median must be > 0"),
        (0 <= self.long_instance_prob <= 1, "long_instance_prob must be in [0, 1]"),
        (0 < self.core_fraction <= 1, "core_fraction must be in (0, 1]"),
        (0 <= self.distractor_rate < 1, "distractor_rate must be in [0, 1)"),
        (0 <= self.distractor_action_prob <= 1,
         "distractor_action_prob must be in [0, 1]"),
        (0 <= self.noise < math.inf, "noise must be finite and >= 0"),
        *[(0 <= getattr(self, name) < math.inf, f"{name} must be finite and >= 0")
          for name in SIGNAL_STRENGTHS],
        (self.noise_ar < 1, "noise_ar must be < 1"),
        (self.activation == "softplus" or self.activation == "relu",
         "activation must be 'softplus' or 'relu'"),
        # The choices are config.CLASS_EVIDENCE (the data layer does not import
        # jaxseg.config; tests/test_synthetic.py keeps the two the same).
        (self.class_evidence == "core" or self.class_evidence == "spread"
         or self.class_evidence == "cores",
         f"class_evidence must be 'core', 'spread' or 'cores', got {self.class_evidence!r}"),
        (isinstance(self.num_cores, (int, np.integer)) and not isinstance(self.num_cores, bool)
         and self.num_cores >= 1, f"num_cores must be an integer >= 1, got {self.num_cores!r}"),
        *[(0 <= getattr(self, name) < math.inf, f"{name} must be finite and >= 0")
          for name in ("context_strength", "foreign_action_strength")],
        (0 <= self.foreign_action_rate < 1, "foreign_action_rate must be in [0, 1)"),
        (self.num_classes >= 2 or self.foreign_action_rate == 0,
         "foreign_action_rate > 0 needs num_classes >= 2"),
    ]
    for ok, msg in checks:
      if not ok:
        raise ValueError(f"synthetic dataset: {msg}")

  def to_json(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    d["long_instance_factor"] = list(self.long_instance_factor)
    for name, default in ADDED_PARAMS.items():
      if d[name] == default:
        del d[name]  # the record of a dataset generated before the field existed
    return d


def class_names(num_classes: int) -> list[str]:
  """``["Class00", "Class01", ...]``."""
  width = max(2, len(str(num_classes - 1)))
  return [f"Class{i:0{width}d}" for i in range(num_classes)]


def video_id(subset: str, index: int) -> str:
  """THUMOS14-style id, e.g. ``video_validation_0000001``."""
  return f"video_{subset}_{index + 1:07d}"


# ------------------------------------------------------------------ writing


def _generate_into(directory: str, p: SyntheticParams) -> None:
  names = class_names(p.num_classes)
  root = np.random.SeedSequence([p.seed, 0x5E6])
  global_rng = np.random.default_rng(root.spawn(1)[0])
  d = p.feature_dim
  dirs = unit_vectors(global_rng, p.num_classes + 1, d)
  class_dirs, action_dir = dirs[:-1], dirs[-1]
  class_medians = p.instance_length_median * np.exp(
      p.class_length_sigma * global_rng.standard_normal(p.num_classes))
  feat_dir = os.path.join(directory, FEATURES_DIR)
  os.makedirs(feat_dir)
  database: dict[str, Any] = {}
  for subset_code, (subset, count) in enumerate(
      ((TRAIN_SUBSET, p.num_train), (TEST_SUBSET, p.num_test))):
    for i in range(count):
      # One stream per video: a video does not depend on the number of others.
      rng = np.random.default_rng([p.seed, 0x5E6, subset_code + 1, i])
      # A second stream for the draws of the structure knobs (ADDED_PARAMS),
      # so that ``rng`` makes the same draws whatever they are.
      extra_rng = np.random.default_rng([p.seed, 0x5E6, subset_code + 1, i, 1])
      t_len = sample_length(rng, p)
      instances = sample_layout(rng, t_len, class_medians, p, extra_rng)
      foreign_runs: list[tuple[int, int, int]] = []
      feats = video_features(rng, t_len, instances, class_dirs, action_dir, p,
                             extra_rng=extra_rng, class_medians=class_medians,
                             foreign_runs=foreign_runs)
      vid = video_id(subset, i)
      np.save(os.path.join(feat_dir, vid + ".npy"), feats)
      rate = p.feature_rate
      annotations = []
      for inst in instances:
        # Inside the first/last segment, so that segment t <-> [t, t+1)/rate.
        start = (inst.first + rng.uniform(0.0, 0.4)) / rate
        end = (inst.last + 1 - rng.uniform(0.0, 0.4)) / rate
        annotations.append({
            "segment": [round(start, 3), round(end, 3)],
            "label": names[inst.label],
            "core_segments": [inst.core_first, inst.core_last],
        })
        if p.class_evidence == "cores":
          annotations[-1]["core_segments_all"] = [list(c) for c in inst.cores]
      database[vid] = {
          "subset": subset,
          "duration": round((t_len + rng.uniform(0.0, 0.99)) / rate, 3),
          "annotations": annotations,
      }
      if p.foreign_action_rate > 0:  # not actions of the video's classes: no annotation
        database[vid]["foreign_actions"] = [
            {"segments": [first, last], "label": names[c]} for first, last, c in foreign_runs]
  with open(os.path.join(directory, ANNOTATION_FILE), "w") as f:
    json.dump({"version": f"{GENERATOR_NAME}-{GENERATOR_VERSION}",
               "database": database}, f)
  with open(os.path.join(directory, GENERATOR_FILE), "w") as f:
    json.dump(_generator_record(p), f, indent=1)


def _generator_record(p: SyntheticParams) -> dict[str, Any]:
  return {"generator": GENERATOR_NAME, "version": GENERATOR_VERSION,
          "params": p.to_json(), "class_names": class_names(p.num_classes)}


def read_generator_record(output_dir: str) -> dict[str, Any] | None:
  """The ``generator.json`` of a generated dataset, or None if there is none."""
  path = os.path.join(output_dir, GENERATOR_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      rec = json.load(f)
  except (OSError, json.JSONDecodeError):
    return None
  if not isinstance(rec, dict) or rec.get("generator") != GENERATOR_NAME:
    return None
  return rec


def _is_complete(output_dir: str, record: dict[str, Any]) -> bool:
  if not os.path.isfile(os.path.join(output_dir, ANNOTATION_FILE)):
    return False
  par = record.get("params", {})
  expected = int(par.get("num_train", -1)) + int(par.get("num_test", -1))
  feat_dir = os.path.join(output_dir, FEATURES_DIR)
  if not os.path.isdir(feat_dir):
    return False
  return len([n for n in os.listdir(feat_dir) if n.endswith(".npy")]) == expected


def generate_synthetic(output_dir: str, *, seed: int = 0, num_classes: int = 20,
                       num_train: int = 200, num_test: int = 200,
                       feature_dim: int = 64, max_length: int = 2600,
                       feature_rate: float = I3D_FEATURE_RATE,
                       **knobs: Any) -> str:
  """Writes (or reuses) the synthetic dataset; returns the annotation JSON path.

  The dataset is first written into a temporary folder next to ``output_dir``
  and then renamed into place, so a crash never leaves a half dataset. If
  ``output_dir`` already holds a dataset generated with exactly these
  parameters (its ``generator.json``), it is reused as is; one generated with
  other parameters is replaced. A non-empty ``output_dir`` that this generator
  did not write is never touched.

  Args:
    output_dir: where the dataset goes.
    seed, num_classes, num_train, num_test, feature_dim, max_length,
      feature_rate: see :class:`SyntheticParams`.
    **knobs: any other field of :class:`SyntheticParams` (core_fraction,
      core_strength, weak_class_strength, action_strength, noise, ...).

  Returns:
    ``<output_dir>/annotations.json``.

  Raises:
    DataError: if ``output_dir`` is a file or a non-empty folder this
      generator did not write.
    ValueError: on an unknown knob or an impossible setting.
  """
  params = _params(seed=seed, num_classes=num_classes, num_train=num_train,
                   num_test=num_test, feature_dim=feature_dim, max_length=max_length,
                   feature_rate=feature_rate, knobs=knobs)
  output_dir = os.path.abspath(output_dir)
  annotation_path = os.path.join(output_dir, ANNOTATION_FILE)
  record = _generator_record(params)

  def reusable() -> bool:
    existing = read_generator_record(output_dir)
    return (existing is not None and
            json.loads(json.dumps(existing)) == json.loads(json.dumps(record)) and
            _is_complete(output_dir, existing))

  if os.path.exists(output_dir):
    if not os.path.isdir(output_dir):
      raise DataError(f"{output_dir}: synthetic output_dir exists and is not a folder")
    if reusable():
      return annotation_path
    if os.listdir(output_dir) and read_generator_record(output_dir) is None:
      raise DataError(
          f"{output_dir}: folder is not empty and holds no {GENERATOR_FILE} "
          "from the synthetic generator; refusing to overwrite it (choose "
          "another data.synthetic.output_dir)")
  parent = os.path.dirname(output_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".synthetic-tmp-", dir=parent)
  try:
    _generate_into(tmp, params)
    _install(tmp, output_dir, reusable)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp, ignore_errors=True)
  return annotation_path


def _params(*, seed, num_classes, num_train, num_test, feature_dim, max_length,
            feature_rate, knobs: dict) -> SyntheticParams:
  """The checked :class:`SyntheticParams` of :func:`generate_synthetic`'s arguments.

  Raises:
    ValueError: an unknown knob or an impossible setting.
  """
  fields = {f.name for f in dataclasses.fields(SyntheticParams)}
  unknown = sorted(set(knobs) - fields)
  if unknown:
    raise ValueError(f"generate_synthetic: unknown parameter(s) {unknown}; "
                     f"known: {sorted(fields)}")
  if "long_instance_factor" in knobs:
    knobs["long_instance_factor"] = tuple(float(x) for x in knobs["long_instance_factor"])
  n = knobs.get("num_cores")
  if isinstance(n, float) and n.is_integer():
    knobs["num_cores"] = int(n)  # a config's integral float (2.0)
  params = SyntheticParams(
      seed=int(seed), num_classes=int(num_classes), num_train=int(num_train),
      num_test=int(num_test), feature_dim=int(feature_dim),
      max_length=int(max_length), feature_rate=float(feature_rate), **knobs)
  params.validate()
  return params


def _install(tmp: str, output_dir: str, reusable) -> None:
  """Renames the finished dataset ``tmp`` to ``output_dir``, replacing an
  older generated one; leaves ``tmp`` (the caller removes it) where
  ``output_dir`` already holds the same dataset (``reusable()``)."""
  if os.path.isdir(output_dir) and not os.listdir(output_dir):
    os.rmdir(output_dir)
  if os.path.exists(output_dir):
    # An older generated dataset with other parameters (or one another
    # process has just finished): move it aside, then swap.
    if reusable():
      return
    old = tempfile.mkdtemp(prefix=".synthetic-old-", dir=os.path.dirname(output_dir))
    os.rmdir(old)
    os.rename(output_dir, old)
    os.rename(tmp, output_dir)
    shutil.rmtree(old, ignore_errors=True)
  else:
    try:
      os.rename(tmp, output_dir)
    except OSError:
      if reusable():  # another process won the race with the same dataset
        return
      raise
