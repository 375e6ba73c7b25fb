"""The Flax I3D against an independent PyTorch reference, and the weight conversion.

The reference fixture (``tests/fixtures/i3d_tiny.npz``) was computed in float64
by ``tests/fixtures/make_i3d_fixture.py``, a separate PyTorch implementation of
the pytorch-i3d architecture, at 1/8 width; ``i3d_full_shapes.json`` lists the
full-width state dict. No PyTorch is needed here.
"""

import json
import os
import sys
import types

import numpy as np
import pytest

from jaxseg.features import convert
from jaxseg.features import i3d
from jaxseg.features import weights as W
from jaxseg.features.errors import (MissingWeightError, UnexpectedWeightError,
                                    WeightsError, WeightShapeError)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
FIRST = "Conv3d_1a_7x7.conv3d.weight"


@pytest.fixture(scope="module")
def ref():
  with np.load(os.path.join(FIXTURES, "i3d_tiny.npz"), allow_pickle=False) as z:
    data = {k: z[k] for k in z.files}
  state = {}
  for key, value in data.items():
    if key.startswith("q/"):
      name = key[2:]
      state[name] = value.astype(np.float32) * np.float32(2.0 ** -int(data["exp/" + name]))
    elif key.startswith("f/"):
      state[key[2:]] = value.astype(np.float32)
  flow_state = dict(state)
  flow_state[FIRST] = (data["flow_conv1a_q"].astype(np.float32)
                       * np.float32(2.0 ** -int(data["exp/" + FIRST])))
  rng = np.random.default_rng(int(data["input_seed"]))
  shape = tuple(int(v) for v in data["clip_shape"])
  rgb = rng.uniform(-1, 1, (*shape, 3)).astype(np.float32)
  flow = rng.uniform(-1, 1, (*shape, 2)).astype(np.float32)
  # The inputs are regenerated from the seed: make sure they are the ones used.
  assert rgb.astype(np.float64).sum() == pytest.approx(float(data["rgb_input_sum"]), abs=1e-6)
  assert flow.astype(np.float64).sum() == pytest.approx(float(data["flow_input_sum"]), abs=1e-6)
  return {"width": float(data["width_multiplier"]), "rgb_state": state,
          "flow_state": flow_state, "rgb": rgb, "flow": flow,
          "rgb_features": data["rgb_features"], "flow_features": data["flow_features"]}


@pytest.mark.parametrize("stream", ["rgb", "flow"])
def test_flax_features_equal_the_pytorch_reference(ref, stream):
  cin = W.STREAM_CHANNELS[stream]
  flat = W.torch_to_flax(ref[f"{stream}_state"], cin, ref["width"])
  variables = W.unflatten(flat)
  fn = i3d.feature_fn(cin, ref["width"])
  got = i3d.snippet_features(fn, variables, ref[stream], batch_size=2)
  want = ref[f"{stream}_features"]
  assert got.shape == want.shape == (2, i3d.feature_dim(ref["width"])) == (2, 128)
  assert got.dtype == np.float32
  # float32 against a float64 reference through 57 convolutions.
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())
  # Batching: one snippet at a time (padded batch) gives the same rows.
  one = i3d.snippet_features(fn, variables, ref[stream][1:], batch_size=2)
  np.testing.assert_allclose(one, got[1:], rtol=1e-5, atol=1e-6)


def test_conversion_round_trips_every_tensor(ref, tmp_path):
  state = ref["rgb_state"]
  flat = W.torch_to_flax(state, 3, ref["width"])
  assert len(flat) == len(state) == 57 * 5
  back = W.flax_to_torch(flat)
  assert set(back) == set(state)
  for name in state:
    assert back[name].shape == state[name].shape, name
    np.testing.assert_array_equal(back[name], state[name], err_msg=name)
  # Layout: PyTorch (O, I, T, H, W) -> Flax (T, H, W, I, O).
  np.testing.assert_array_equal(flat["params/Mixed_4b/b1b/conv3d/kernel"],
                                state["Mixed_4b.b1b.conv3d.weight"].transpose(2, 3, 4, 1, 0))
  assert W.flax_key("Mixed_4b.b1b.bn.running_var") == "batch_stats/Mixed_4b/b1b/bn/var"
  assert W.flax_key("Conv3d_1a_7x7.bn.weight") == "params/Conv3d_1a_7x7/bn/scale"
  # The .npz keeps every value, and is read back with allow_pickle=False.
  path = str(tmp_path / "rgb.npz")
  W.save_weights(path, flat, stream="rgb", width_multiplier=ref["width"])
  variables, info = W.load_weights(path, stream="rgb")
  assert (info.stream, info.in_channels, info.width_multiplier, info.feature_dim) == (
      "rgb", 3, ref["width"], 128)
  loaded = W.flatten(variables)
  assert set(loaded) == set(flat)
  for key in flat:
    np.testing.assert_array_equal(loaded[key], flat[key], err_msg=key)
  with np.load(path, allow_pickle=False) as z:
    assert all(z[k].dtype != object for k in z.files)
  assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_checkpoint_extras_are_ignored_and_a_dataparallel_prefix_removed(ref):
  state = {"module." + k: v for k, v in ref["rgb_state"].items()}
  state["module.Conv3d_1a_7x7.bn.num_batches_tracked"] = np.array(7)
  state["module.logits.conv3d.weight"] = np.zeros((400, 1024, 1, 1, 1), np.float32)
  state["module.logits.conv3d.bias"] = np.zeros((400,), np.float32)
  flat = W.torch_to_flax(state, 3, ref["width"])
  assert len(flat) == 285
  # X and module.X (different values): neither silently wins.
  both = {**state, FIRST: np.zeros_like(ref["rgb_state"][FIRST])}
  with pytest.raises(UnexpectedWeightError) as e:
    W.torch_to_flax(both, 3, ref["width"])
  assert f"'module.{FIRST}' and '{FIRST}' are the same variable" in str(e.value)


def test_full_width_variables_are_pytorch_i3d_s_tensors():
  with open(os.path.join(FIXTURES, "i3d_full_shapes.json")) as f:
    full = json.load(f)
  for stream, cin in W.STREAM_CHANNELS.items():
    expected = W.expected_shapes(cin)  # computed (jax.eval_shape): no weights
    as_torch = {W.torch_name(k): list(W.torch_shape(s, k)) for k, s in expected.items()}
    assert as_torch == full[stream]["tensors"], stream
    n_params = sum(int(np.prod(s)) for k, s in expected.items() if k.startswith("params/"))
    n_stats = sum(int(np.prod(s)) for k, s in expected.items() if k.startswith("batch_stats/"))
    assert n_params == full[stream]["num_params"]
    assert n_stats == full[stream]["num_buffers"] == 14560
  assert full["rgb"]["num_params"] == 12_287_264  # pytorch-i3d without its logits layer
  assert full["flow"]["num_params"] == 12_287_264 - 64 * 7 * 7 * 7
  assert full["rgb"]["tensors"][FIRST] == [64, 3, 7, 7, 7]
  assert full["rgb"]["tensors"]["Mixed_5c.b3b.conv3d.weight"] == [128, 832, 1, 1, 1]
  assert i3d.feature_dim() == 1024


def test_same_padding_follows_compute_pad():
  assert i3d.same_padding(224, 7, 2) == (2, 3)  # even: k - s = 5
  assert i3d.same_padding(57, 7, 2) == (3, 3)   # odd: k - s % r = 6
  assert i3d.same_padding(8, 3, 2) == (0, 1)
  assert i3d.same_padding(4, 2, 2) == (0, 0)
  assert i3d.same_padding(16, 1, 1) == (0, 0)
  assert i3d.same_padding(7, 3, 1) == (1, 1)


def test_conv_flops_from_layer_shapes():
  # First convolution alone: output (8, 112, 112, 64), kernel 7^3 x 3 inputs.
  first = 2 * 8 * 112 * 112 * 64 * 7 ** 3 * 3
  small = i3d.conv_flops(3, 1.0)
  flow = i3d.conv_flops(2, 1.0)
  assert small - flow == pytest.approx(first / 3)
  assert round(small / 1e8) == 556 and round(flow / 1e8) == 512  # 55.6, 51.2 GFLOP


def test_wrong_shape_or_name_is_a_named_error(ref, tmp_path):
  state = dict(ref["rgb_state"])
  with pytest.raises(WeightShapeError, match=r"'Mixed_4c.b2b.conv3d.weight' has shape "
                     r"\(3, 3, 3, 3, 3\), expected \(8, 3, 3, 3, 3\)"):
    W.torch_to_flax({**state, "Mixed_4c.b2b.conv3d.weight": np.zeros((3,) * 5)}, 3, 0.125)
  with pytest.raises(WeightShapeError, match="expected \\(64, 3, 7, 7, 7\\)"):
    W.torch_to_flax(state, 3, 1.0)  # the tiny checkpoint is not I3D
  with pytest.raises(WeightShapeError, match=FIRST):
    W.torch_to_flax(state, 2, 0.125)  # an RGB checkpoint for the flow stream
  missing = {k: v for k, v in state.items() if k != "Mixed_3b.b0.bn.running_mean"}
  with pytest.raises(MissingWeightError, match="Mixed_3b.b0.bn.running_mean"):
    W.torch_to_flax(missing, 3, 0.125)
  with pytest.raises(UnexpectedWeightError, match="Mixed_6a"):
    W.torch_to_flax({**state, "Mixed_6a.b0.conv3d.weight": np.zeros(1)}, 3, 0.125)

  flat = W.torch_to_flax(state, 3, 0.125)
  bad = dict(flat)
  bad["params/Mixed_5c/b0/conv3d/kernel"] = np.zeros((1, 1, 1, 104, 47), np.float32)
  path = str(tmp_path / "bad.npz")
  W.save_weights(path, bad, stream="rgb", width_multiplier=0.125)
  with pytest.raises(WeightShapeError, match=r"'params/Mixed_5c/b0/conv3d/kernel' has shape "
                     r"\(1, 1, 1, 104, 47\), expected \(1, 1, 1, 104, 48\)"):
    W.load_weights(path)
  good = str(tmp_path / "good.npz")
  W.save_weights(good, flat, stream="rgb", width_multiplier=0.125)
  with pytest.raises(WeightsError, match="'rgb' stream, expected 'flow'"):
    W.load_weights(good, stream="flow")
  (tmp_path / "junk.npz").write_bytes(b"not a zip")
  with pytest.raises(WeightsError, match="not an .npz weight file"):
    W.load_weights(str(tmp_path / "junk.npz"))
  np.savez(tmp_path / "other.npz", x=np.zeros(3))
  with pytest.raises(WeightsError, match="not a converted I3D weight file"):
    W.load_weights(str(tmp_path / "other.npz"))


class _FakeTensor:
  """Enough of torch.Tensor for read_torch_state_dict."""

  def __init__(self, array):
    self.array = array

  def detach(self):
    return self

  def cpu(self):
    return self

  def float(self):
    return _FakeTensor(self.array.astype(np.float32))

  def numpy(self):
    return self.array

  def is_floating_point(self):
    return np.issubdtype(self.array.dtype, np.floating)


def test_convert_command(ref, tmp_path, monkeypatch, capsys):
  """The CLI with a stand-in for torch.load (CI has no PyTorch)."""
  state = {k: _FakeTensor(v) for k, v in ref["flow_state"].items()}
  state["Conv3d_1a_7x7.bn.num_batches_tracked"] = _FakeTensor(np.array(3, np.int64))
  loaded = []

  def fake_load(path, map_location=None, weights_only=None):
    loaded.append((path, map_location, weights_only))
    return {"state_dict": state}

  monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(load=fake_load))
  out = str(tmp_path / "weights" / "flow_i3d.npz")  # the folder is created
  assert convert.main(["--torch", "flow.pt", "--stream", "flow", "--out", out,
                       "--width-multiplier", "0.125"]) == 0
  assert loaded == [("flow.pt", "cpu", True)]
  variables, info = W.load_weights(out, stream="flow")
  assert info.in_channels == 2
  np.testing.assert_array_equal(variables["params"]["Conv3d_1a_7x7"]["conv3d"]["kernel"],
                                ref["flow_state"][FIRST].transpose(2, 3, 4, 1, 0))
  # Wrong stream for the checkpoint: a named error and exit status 2.
  assert convert.main(["--torch", "flow.pt", "--stream", "rgb", "--out",
                       str(tmp_path / "x.npz"), "--width-multiplier", "0.125"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: flow.pt: tensor ")
  assert FIRST in err and "(8, 2, 7, 7, 7)" in err
  assert not os.path.exists(tmp_path / "x.npz")
  # A bad width or an output under a file: one line, nothing written.
  (tmp_path / "a_file").write_text("x")
  for args, start in (
      (["--width-multiplier", "nan"], "error: --width-multiplier must be a number in (0, 4]"),
      (["--width-multiplier", "0"], "error: --width-multiplier must be a number in (0, 4]"),
      (["--width-multiplier", "1e300"], "error: --width-multiplier must be a number in"),
      (["--out", str(tmp_path / "a_file" / "w.npz")], f"error: --out {tmp_path}/a_file/w.npz:")):
    argv = ["--torch", "flow.pt", "--stream", "flow", "--out", str(tmp_path / "y.npz"),
            "--width-multiplier", "0.125"]
    assert convert.main(argv + args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(start), err
  assert sorted(os.listdir(tmp_path)) == ["a_file", "weights"]


def test_convert_without_torch_says_what_to_install(monkeypatch, tmp_path, capsys):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
  with pytest.raises(WeightsError, match="needs PyTorch"):
    convert.read_torch_state_dict("rgb_imagenet.pt")
  assert convert.main(["--torch", "rgb_imagenet.pt", "--stream", "rgb", "--out",
                       str(tmp_path / "w.npz")]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and "pip install torch" in err


@pytest.mark.parametrize("meta, message", [
    ({"meta/stream": None}, "meta/stream missing"),
    ({"meta/width_multiplier": np.array(np.nan)}, "meta/width_multiplier must be a number in"),
    ({"meta/width_multiplier": np.array(-1.0)}, "meta/width_multiplier must be a number in"),
    ({"meta/width_multiplier": np.array(1e300)}, "meta/width_multiplier must be a number in"),
    ({"meta/in_channels": np.array("three")}, "meta/in_channels must be a single number"),
    ({"meta/stream": np.array([b"rgb"])}, "meta/stream must be a single name"),
])
def test_weight_metadata_is_checked_naming_the_key(ref, tmp_path, meta, message):
  good = str(tmp_path / "good.npz")
  W.save_weights(good, W.torch_to_flax(ref["rgb_state"], 3, 0.125), stream="rgb",
                 width_multiplier=0.125)
  with np.load(good) as z:
    data = {k: z[k] for k in z.files}
  for k, v in meta.items():
    if v is None:
      del data[k]
    else:
      data[k] = v
  bad = str(tmp_path / "bad.npz")
  np.savez(bad, **data)
  with pytest.raises(WeightsError, match=f"{bad}: {message}"):
    W.load_weights(bad)


def test_a_text_file_as_weights_says_it_is_not_an_npz(tmp_path):
  path = tmp_path / "rgb_i3d.npz"
  path.write_text("these are not weights\n")
  with pytest.raises(WeightsError, match="not an .npz weight file") as e:
    W.load_weights(str(path))
  assert "pickle" not in str(e.value)
  path.write_bytes(b"PK\x03\x04 a truncated zip")
  with pytest.raises(WeightsError, match="cannot read weight file"):
    W.load_weights(str(path))
