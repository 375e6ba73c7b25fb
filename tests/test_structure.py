"""The code's shape: one home for each choice, no silent defaults, no cycles, no leaks.

* every enumerated choice (and the tIoU lists) is defined in ``jaxseg/config.py``
  only: no other module holds a tuple of the same values;
* functions that run the method take config-owned fields without defaults, and
  a config missing a field fails naming it;
* the modules import each other without a cycle, and the data layer imports
  nothing above it (not the config; only ``jaxseg.cli``, which imports no
  jaxseg module);
* no module, test or benchmark reaches into another module's private names.
"""

import ast
import importlib
import inspect
import os
import pkgutil

import numpy as np
import pytest

import jaxseg
from jaxseg import config as config_lib
from jaxseg import proposals
from jaxseg import rules as rules_lib
from jaxseg import losses

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules():
  """``{module name: path}`` of every module of the jaxseg package."""
  out = {"jaxseg": os.path.join(REPO, "jaxseg", "__init__.py")}
  for info in pkgutil.walk_packages(jaxseg.__path__, "jaxseg."):
    spec = importlib.util.find_spec(info.name)
    out[info.name] = spec.origin
  return out


def _parse(path):
  with open(path, encoding="utf-8") as f:
    return ast.parse(f.read(), path)


def _config_tuples():
  """The enum tuples and threshold lists ``config.py`` defines, by name."""
  return {name: value for name, value in vars(config_lib).items()
          if name.isupper() and isinstance(value, tuple)}


def test_no_choice_tuple_is_defined_twice():
  owned = {}
  for name, value in _config_tuples().items():
    owned[value] = name
    if all(isinstance(v, str) for v in value):
      owned[frozenset(value)] = name
  found = []
  for module, path in _modules().items():
    if module == "jaxseg.config":
      continue
    for node in ast.walk(_parse(path)):
      if not isinstance(node, ast.Tuple) or len(node.elts) < 2:
        continue
      try:
        value = ast.literal_eval(node)
      except ValueError:
        continue
      keys = [value]
      if all(isinstance(v, str) for v in value):
        keys.append(frozenset(value))
      for key in keys:
        try:
          hit = key in owned
        except TypeError:  # holds a list or a dict
          hit = False
        if hit:
          found.append(f"{path}:{node.lineno}: {value} duplicates config.{owned[key]}")
  assert not found, "\n".join(found)


def _config_fields():
  """Leaf field names of the config sections library functions take."""
  c = config_lib.base_config()
  return {name: c[section][name]
          for section in ("model", "loss", "inference", "train", "eval")
          for name in c[section]}


# Modules whose functions run the method from a config: no defaults for its fields.
PIPELINE = ("jaxseg.model", "jaxseg.losses", "jaxseg.inference", "jaxseg.proposals", "jaxseg.state", "jaxseg.train",
            "jaxseg.workdir", "jaxseg.evaluate", "jaxseg.rules", "jaxseg.data.batching",
            "jaxseg.data.device_data")


def test_pipeline_functions_have_no_defaults_for_config_fields():
  fields = _config_fields()
  bad = []
  for module in PIPELINE:
    mod = importlib.import_module(module)
    for name, fn in vars(mod).items():
      if not (inspect.isfunction(fn) or inspect.isclass(fn)) or fn.__module__ != module:
        continue
      target = fn.__init__ if inspect.isclass(fn) else fn
      try:
        params = inspect.signature(target).parameters.values()
      except (TypeError, ValueError):
        continue
      for p in params:
        if p.name in fields and p.default is not inspect.Parameter.empty:
          bad.append(f"{module}.{name}({p.name}={p.default!r})")
  assert not bad, bad


def test_total_loss_takes_exactly_the_loss_config():
  params = inspect.signature(losses.total_loss).parameters
  fields = set(config_lib.base_config().loss)
  assert fields <= set(params)
  assert all(params[f].default is inspect.Parameter.empty for f in fields)
  assert set(params) - fields == {"outputs", "batch", "weight", "log_disabled_terms"}


def _batch():
  rng = np.random.default_rng(0)
  mask = np.ones((2, 6), bool)
  return ({"features": rng.normal(size=(2, 6, 4)).astype(np.float32),
           "cas_cls": rng.normal(size=(2, 6, 3)).astype(np.float32),
           "cas_loc": rng.normal(size=(2, 6, 3)).astype(np.float32)},
          {"mask": mask, "lengths": np.array([6, 6], np.int32),
           "video_labels": np.eye(3, dtype=np.float32)[[0, 1]],
           "segment_labels": np.zeros((2, 6, 3), np.float32),
           "num_labeled": np.zeros((2,), np.int32)})


def test_a_loss_config_missing_a_field_fails_naming_it():
  c = config_lib.base_config()
  c.loss.use_sphere = False
  out, batch = _batch()
  losses.total_loss(out, batch, **c.loss)
  del c.loss["propagation_similarity"]
  with pytest.raises(TypeError, match="propagation_similarity"):
    losses.total_loss(out, batch, **c.loss)


@pytest.mark.parametrize("field", ["contrast_on", "class_score", "nms_iou", "cas_thresholds",
                                   "extent", "proposal_cas", "extent_fallback",
                                   "outer_outside"])
def test_an_inference_config_missing_a_field_fails_naming_it(field):
  c = config_lib.base_config().inference
  cas = np.random.default_rng(0).normal(size=(10, 3)).astype(np.float32)
  s_a = np.array([0.5, 0.1, -0.2])
  p_a = np.exp(s_a) / np.exp(s_a).sum()
  kw = dict(feature_rate=1.0, duration=10.0, cas_extent=cas[::-1].copy(), cas_cls=cas + 0.1)
  proposals.generate_proposals(cas, s_a, p_a, rules=rules_lib.from_config(c, "jaxseg"), **kw)
  del c[field]
  with pytest.raises(config_lib.ConfigError, match=f"config.inference.{field}: missing"):
    rules_lib.from_config(c, "jaxseg")


def _imports(module, path):
  """The jaxseg modules ``module`` imports (anywhere in the file)."""
  known = _modules()
  out = set()
  package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(_parse(path)):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
      # `from pkg import mod` imports pkg.mod; `from pkg import name` imports pkg.
      names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
               for a in node.names]
    else:
      continue
    out.update(n for n in names if n in known and n != module)
  return out


BELOW_DATA = ("jaxseg.cli",)


def test_no_import_cycle_and_the_data_layer_stays_below():
  graph = {m: _imports(m, p) for m, p in _modules().items()}
  state = {}

  def visit(m, stack):
    state[m] = "open"
    for n in sorted(graph[m]):
      if state.get(n) == "open":
        cycle = stack[stack.index(n):] + [n]
        pytest.fail("import cycle: " + " -> ".join(cycle))
      if n not in state:
        visit(n, stack + [n])
    state[m] = "done"

  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  for m in BELOW_DATA:  # the command-line parser: below everything, imports no jaxseg
    assert not graph[m], f"{m} imports {sorted(graph[m])}: it must stay below the data layer"
  for m, deps in graph.items():
    if m.startswith("jaxseg.data"):
      above = sorted(d for d in deps if not d.startswith("jaxseg.data") and d not in BELOW_DATA)
      assert not above, f"{m} imports {above}: the data layer must stay at the bottom"


def _python_files():
  for folder in ("jaxseg", "tests", "benchmarks", "configs"):
    for root, _, files in os.walk(os.path.join(REPO, folder)):
      for f in files:
        if f.endswith(".py"):
          yield os.path.join(root, f)


def test_no_private_name_is_used_across_modules():
  bad = []
  for path in _python_files():
    tree = _parse(path)
    modules = set()  # local names bound to imported modules
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        modules.update((a.asname or a.name).split(".")[0] for a in node.names)
      elif isinstance(node, ast.ImportFrom):
        for a in node.names:
          if a.name.startswith("_") and not a.name.startswith("__"):
            bad.append(f"{path}:{node.lineno}: from {node.module} import {a.name}")
          if node.module and node.module.startswith(("jaxseg", "tests", "benchmarks",
                                                     "configs")):
            modules.add(a.asname or a.name)
    for node in ast.walk(tree):
      if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
          and node.value.id in modules and node.attr.startswith("_")
          and not node.attr.startswith("__")):
        bad.append(f"{path}:{node.lineno}: {node.value.id}.{node.attr}")
      if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "setattr"
          and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
          and str(node.args[1].value).startswith("_")
          and not str(node.args[1].value).startswith("__")):
        bad.append(f"{path}:{node.lineno}: setattr of {node.args[1].value}")
  assert not bad, "\n".join(bad)


def test_a_run_from_before_an_added_field_is_read_with_its_earlier_behaviour(tmp_path):
  # A config.json written before loss.loc_classification_* and the proposal
  # scoring fields existed: re-evaluating it with those fields at their earlier
  # behaviour is no config change; with today's scoring defaults it is one, and
  # predict reads the run with the scoring it had.
  import json
  from jaxseg import predict
  from jaxseg import workdir as workdir_lib
  from configs import test as test_config
  c = test_config.get_config()
  old = workdir_lib.config_to_dict(c)
  for key, _ in config_lib.ADDED_FIELDS:
    *path, name = key.split(".")
    node = old
    for section in path:
      node = node[section]
    del node[name]
  (tmp_path / "config.json").write_text(json.dumps(old))
  diff = workdir_lib.config_diff(c, str(tmp_path))
  assert diff == ["inference.contrast_loc_weight: 0.5 -> 0.0",
                  "inference.extent: 'proposal' -> 'localization'",
                  "inference.extent_fallback: False -> True",
                  "inference.outer_outside: 'ignored' -> 'neutral'",
                  "inference.proposal_cas: 'average' -> 'classification'",
                  "inference.rules: 'jaxseg' -> 'auto'"]
  earlier = config_lib.with_overrides(c, **{k: v for k, v in config_lib.ADDED_FIELDS})
  assert workdir_lib.config_diff(earlier, str(tmp_path)) == []
  run = predict.run_config(str(tmp_path))
  assert run.inference.contrast_loc_weight == 0.5 and run.inference.extent == "proposal"
  assert run.inference.proposal_cas == "average" and run.inference.extent_fallback is False
  assert run.inference.outer_outside == "ignored"
  assert run.loss.loc_classification_weight == 0.0
  # A field the run has is never replaced.
  old["inference"]["extent"] = "localization"
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert predict.run_config(str(tmp_path)).inference.extent == "localization"
  # A run with the C_loc extent but made before proposals were cut from C_cls.
  old["inference"]["contrast_loc_weight"] = 0.0
  (tmp_path / "config.json").write_text(json.dumps(old))
  assert workdir_lib.config_diff(c, str(tmp_path)) == [
      "inference.extent_fallback: False -> True",
      "inference.outer_outside: 'ignored' -> 'neutral'",
      "inference.proposal_cas: 'average' -> 'classification'",
      "inference.rules: 'jaxseg' -> 'auto'"]
