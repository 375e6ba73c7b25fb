"""Video -> flow -> both I3D streams -> .npy, on tiny videos the tests write themselves.

The networks are 1/8 width with random weights and the frames 64 x 64 cropped
to 57 (``--short-side 64 --crop 57``), so everything runs in seconds on a CPU;
the conventions are the same as at 256 / 224.
"""

import json
import os

import numpy as np
import pytest

from jaxseg import extract
from jaxseg.data import readers
from jaxseg.features import i3d
from jaxseg.features import video as V
from jaxseg.features import weights as W
from jaxseg.features.errors import VideoTimestampError, VideoTooShortError

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


WIDTH = 0.125
SMALL = ["--short-side", "64", "--crop", "57", "--batch-size", "2", "--no-progress"]


def _frames(n, h=64, w=64):
  """(n, h, w, 3) uint8: a bright 16 x 16 square moving right 1 px per frame on grey,
  and the frame index in the brightness of the top rows (10 + 5 i)."""
  f = np.full((n, h, w, 3), 60, np.uint8)
  for i in range(n):
    f[i, :6] = 10 + 5 * i
    f[i, 24:40, 8 + i:24 + i] = 230
  return f


def _index(frame_rgb):
  """The source index written by _frames, read back from a decoded frame."""
  return int(round((float(frame_rgb[1:5, 4:-4].mean()) - 10) / 5))


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("weights")
  for k, (stream, cin) in enumerate(W.STREAM_CHANNELS.items()):
    variables = i3d.init_variables(k, cin, WIDTH)
    W.save_weights(str(d / f"{stream}_i3d.npz"), variables, stream=stream,
                   width_multiplier=WIDTH)
  return d


def test_extract_folder_with_bad_videos_then_resume(tmp_path, weights_dir, capsys):
  vids = tmp_path / "videos"
  vids.mkdir()
  V.write_video(str(vids / "good.mp4"), _frames(40))
  V.write_video(str(vids / "short.mp4"), _frames(10))
  (vids / "empty.mp4").write_bytes(b"")
  (vids / "garbage.avi").write_bytes(np.random.default_rng(0).bytes(5000))
  V.write_video(str(vids / "bad name.mp4"), _frames(2))
  (vids / "notes.txt").write_text("not a video")
  out = tmp_path / "features"
  argv = ["--videos", str(vids), "--weights", str(weights_dir), "--out", str(out), *SMALL]

  assert extract.main(argv) == 2
  cap = capsys.readouterr()
  assert "1 video(s) extracted, 0 already done (skipped), 4 failed" in cap.out
  err = cap.err
  assert "empty: EmptyVideoError" in err and "0 bytes" in err
  assert "garbage: UnreadableVideoError" in err
  assert "short: VideoTooShortError" in err and "10 frame(s) at 25 fps" in err
  assert "bad name: UnsafeVideoIdError" in err
  for stream in ("rgb", "flow"):
    assert sorted(os.listdir(out / stream)) == ["good.npy"]  # nothing half-written
  rgb = np.load(out / "rgb" / "good.npy", allow_pickle=False)
  flow = np.load(out / "flow" / "good.npy", allow_pickle=False)
  # 40 frames at 25 fps -> floor(40 / 16) = 2 snippets; 1024 / 8 channels each.
  assert rgb.shape == flow.shape == (2, 128)
  assert rgb.dtype == flow.dtype == np.float32
  assert np.all(np.isfinite(rgb)) and not np.allclose(rgb, flow)

  # The readers take the layout as it is (streams concatenated on D).
  gt = tmp_path / "gt.json"
  gt.write_text(json.dumps({"database": {"good": {
      "subset": "validation", "annotations": [{"segment": [0.2, 1.0], "label": "Move"}]}}}))
  ds = readers.read_activitynet(str(gt), str(out), feature_streams=("rgb", "flow"),
                                feature_dim=256)
  assert ds.videos[0].video_id == "good"
  np.testing.assert_array_equal(ds.videos[0].features, np.concatenate([rgb, flow], 1))

  # Second run: the finished video is skipped (files untouched), the bad ones fail again.
  mtimes = [os.stat(out / s / "good.npy").st_mtime_ns for s in ("rgb", "flow")]
  assert extract.main(argv) == 2
  assert "0 video(s) extracted, 1 already done (skipped), 4 failed" in capsys.readouterr().out
  assert [os.stat(out / s / "good.npy").st_mtime_ns for s in ("rgb", "flow")] == mtimes
  # Only good videos: exit status 0.
  assert extract.main([*argv[:1], str(vids / "good.mp4"), *argv[2:]]) == 0


def test_stale_tmp_and_incomplete_outputs_are_redone(tmp_path, weights_dir, monkeypatch,
                                                     capsys):
  """A stale temporary file is never taken for output; partial outputs are redone."""
  vids = tmp_path / "videos"
  vids.mkdir()
  for vid in ("a", "b", "c", "d"):
    (vids / f"{vid}.mp4").write_bytes(b"stand-in")
  calls = []

  def fake_snippets(path, config, stats):  # 3 snippets, no decoding or flow
    calls.append(os.path.basename(path))
    rng = np.random.default_rng(len(calls))
    for _ in range(3):
      stats.snippets += 1
      yield (rng.uniform(-1, 1, (16, 57, 57, 3)).astype(np.float32),
             rng.uniform(-1, 1, (16, 57, 57, 2)).astype(np.float32))

  monkeypatch.setattr(V, "iter_snippets", fake_snippets)
  out = tmp_path / "features"
  for s in ("rgb", "flow"):
    (out / s).mkdir(parents=True)
  good = np.zeros((3, 128), np.float32)
  # a: only stale temporary files (even holding a valid array) from a killed run.
  for s in ("rgb", "flow"):
    np.save(open(out / s / ".a.npy.99999.tmp", "wb"), good)
  # b: rgb truncated mid-write by some other tool; flow fine.
  np.save(out / "b.npy", good)
  (out / "rgb" / "b.npy").write_bytes((out / "b.npy").read_bytes()[:100])
  np.save(out / "flow" / "b.npy", good)
  # c: rgb only. d: both, but of another feature width.
  np.save(out / "rgb" / "c.npy", good)
  for s in ("rgb", "flow"):
    np.save(out / s / "d.npy", np.zeros((3, 1024), np.float32))
  argv = ["--videos", str(vids), "--weights", str(weights_dir), "--out", str(out), *SMALL]
  assert extract.main(argv) == 0
  assert sorted(calls) == ["a.mp4", "b.mp4", "c.mp4", "d.mp4"]
  assert "4 video(s) extracted, 0 already done" in capsys.readouterr().out
  for s in ("rgb", "flow"):
    assert sorted(os.listdir(out / s)) == ["a.npy", "b.npy", "c.npy", "d.npy"]
    for vid in "abcd":
      assert np.load(out / s / f"{vid}.npy").shape == (3, 128)
  assert extract.is_done(str(out), "a", 128) and not extract.is_done(str(out), "a", 1024)
  calls.clear()
  assert extract.main(argv) == 0 and calls == []


def test_wrong_weights_stop_before_any_video(tmp_path, weights_dir, capsys):
  vids = tmp_path / "videos"
  vids.mkdir()
  (vids / "v.mp4").write_bytes(b"x")
  variables, _ = W.load_weights(str(weights_dir / "flow_i3d.npz"))
  flat = W.flatten(variables)
  flat["params/Mixed_4d/b2b/conv3d/kernel"] = np.zeros((3, 3, 3, 3, 7), np.float32)
  bad = tmp_path / "flow_bad.npz"
  W.save_weights(str(bad), flat, stream="flow", width_multiplier=WIDTH)
  out = tmp_path / "features"
  base = ["--videos", str(vids), "--out", str(out), *SMALL]
  assert extract.main([*base, "--weights-rgb", str(weights_dir / "rgb_i3d.npz"),
                       "--weights-flow", str(bad)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "'params/Mixed_4d/b2b/conv3d/kernel' has shape" in err
  assert "(3, 3, 3, 3, 7), expected (3, 3, 3, 3, 8)" in err
  assert not out.exists()
  # The RGB file given for the flow stream, and a missing file: named errors too.
  assert extract.main([*base, "--weights-rgb", str(weights_dir / "rgb_i3d.npz"),
                       "--weights-flow", str(weights_dir / "rgb_i3d.npz")]) == 2
  assert "'rgb' stream, expected 'flow'" in capsys.readouterr().err
  assert extract.main([*base, "--weights", str(tmp_path)]) == 2
  assert "weight file not found" in capsys.readouterr().err


def test_resampling_to_25_fps_follows_timestamps(tmp_path):
  def sources(path):
    return [_index(frame.to_ndarray(format="rgb24"))
            for _, frame in V.resample(V.decode(path), 25.0, path=path)]

  V.write_video(str(tmp_path / "cfr25.mp4"), _frames(20), 25)
  assert sources(str(tmp_path / "cfr25.mp4")) == list(range(20))
  # 30 fps, 30 frames = 1 s -> 25 frames: every sixth frame dropped.
  V.write_video(str(tmp_path / "cfr30.mp4"), _frames(30), 30)
  assert sources(str(tmp_path / "cfr30.mp4")) == [i for i in range(30) if i % 6 != 5]
  # Variable frame rate: 20 frames at 50 fps, then 20 at 12.5 fps (ends at 2.0 s).
  times = [0.02 * i for i in range(20)] + [0.4 + 0.08 * i for i in range(20)]
  V.write_video(str(tmp_path / "vfr.mp4"), _frames(40), times=times)
  stats = V.VideoStats()
  got = [i for i, _ in V.resample(V.decode(str(tmp_path / "vfr.mp4"), stats), 25.0,
                                  stats=stats)]
  want = [2 * k for k in range(10)] + [20 + (k - 10) // 2 for k in range(10, 50)]
  assert got == want
  assert stats.variable_frame_rate and stats.duration_s == pytest.approx(2.0)
  assert sources(str(tmp_path / "vfr.mp4")) == want  # the frames are those frames
  # Timestamps that go back cannot be resampled: a named error.
  with pytest.raises(VideoTimestampError, match="frame 2 at 0.040000 s does not come after"):
    list(V.resample(iter([(0.0, "a"), (0.04, "b"), (0.04, "c")]), 25.0))


def test_snippet_rgb_and_flow_conventions(tmp_path):
  # 16 frames 48 x 64 -> shorter side 32 (-> 32 x 43) -> center 32 x 32; one snippet.
  path = V.write_video(str(tmp_path / "v.mp4"), _frames(16, 48, 64))
  stats = V.VideoStats()
  snippets = list(V.iter_snippets(path, V.VideoConfig(short_side=32, crop=32), stats))
  assert len(snippets) == 1 and (stats.frames, stats.snippets) == (16, 1)
  rgb, flow = snippets[0]
  assert rgb.shape == (16, 32, 32, 3) and flow.shape == (16, 32, 32, 2)
  assert rgb.dtype == flow.dtype == np.float32
  assert rgb.min() >= -1 and rgb.max() <= 1 and flow.min() >= -1 and flow.max() <= 1
  frames = [f.to_ndarray(format="rgb24") for _, f in V.decode(path)]
  first = V.center_crop(V.resize_short_side(frames[0], 32), 32)
  assert first.shape == (32, 32, 3)
  np.testing.assert_allclose(rgb[0], first / 127.5 - 1, atol=1e-6)
  # The square moves right by 1 px per source frame = 0.5 px at half size:
  # dx ~ 0.5 / 20 on it (flow in [-1, 1] is pixels / 20), dy ~ 0.
  on_square = flow[4, 14:19, 10:14]
  assert np.median(on_square[..., 0]) == pytest.approx(0.5 / 20, abs=0.01)
  assert abs(np.median(on_square[..., 1])) < 0.01
  # The last frame has no successor: it repeats the flow before it.
  np.testing.assert_array_equal(flow[15], flow[14])
  assert not np.array_equal(flow[14], flow[13])
  # Clipping at +-20 px and scaling to [-1, 1].
  np.testing.assert_allclose(V.scale_flow(np.array([-45.0, -10.0, 0.0, 20.0, 33.0])),
                             [-1.0, -0.5, 0.0, 1.0, 1.0])
  with pytest.raises(VideoTooShortError):
    list(V.iter_snippets(V.write_video(str(tmp_path / "s.mp4"), _frames(15, 32, 32)),
                         V.VideoConfig(short_side=32, crop=32)))


def test_video_ids_must_be_safe_and_unique(tmp_path):
  for name in ("a.mp4", "a.avi", "v_-0RfEvYtQVw.mkv", ".hidden.mp4", "bad name.mp4",
               "caf\u00e9.mp4", "x.txt", "video_test_0000004.MP4"):
    (tmp_path / name).write_bytes(b"x")
  videos, bad = extract.find_videos(str(tmp_path))
  assert [v for v, _ in videos] == ["v_-0RfEvYtQVw", "video_test_0000004"]
  assert sorted((v, type(e).__name__) for v, _, e in bad) == [
      ("a", "DuplicateVideoIdError"), ("a", "DuplicateVideoIdError"),
      ("bad name", "UnsafeVideoIdError"), ("caf\u00e9", "UnsafeVideoIdError")]


def test_extract_benchmark_quick(tmp_path):
  from benchmarks import extract as bench  # pylint: disable=g-import-not-at-top
  df = bench.main(["--quick", "--out", str(tmp_path)])
  for name in ("extract.csv", "extract.md"):
    assert os.path.getsize(tmp_path / name) > 0
  assert set(df["stage"]) == {"rgb network", "flow network", "decode+resize",
                              "decode+resize+TV-L1 flow"}
  assert np.all(df["frames_per_s"] > 0)
  net = df[df["stage"].str.endswith("network")]
  assert np.all(net["gflop_per_snippet"] > 0) and np.all(net["ratio_to_floor"] > 0)


def test_one_stream_extraction(tmp_path, weights_dir, monkeypatch, capsys):
  """--streams rgb: no flow weights, no TV-L1, the same RGB features as both streams."""
  vids = tmp_path / "videos"
  vids.mkdir()
  V.write_video(str(vids / "good.mp4"), _frames(40))
  both, rgb_only, flow_only = (tmp_path / n for n in ("both", "rgb", "flow"))
  assert extract.main(["--videos", str(vids), "--weights", str(weights_dir),
                       "--out", str(both), *SMALL]) == 0

  def no_flow(*args, **kwargs):
    raise AssertionError("TV-L1 must not run for --streams rgb")

  with monkeypatch.context() as m:
    m.setattr(V, "TVL1", no_flow)
    argv = ["--videos", str(vids), "--streams", "rgb", "--weights-rgb",
            str(weights_dir / "rgb_i3d.npz"), "--out", str(rgb_only), *SMALL]
    assert extract.main(argv) == 0
    assert os.listdir(rgb_only) == ["rgb"]
    np.testing.assert_array_equal(np.load(rgb_only / "rgb" / "good.npy"),
                                  np.load(both / "rgb" / "good.npy"))
    capsys.readouterr()
    assert extract.main(argv) == 0  # resumable: one stream's file is the whole output
    assert "0 video(s) extracted, 1 already done" in capsys.readouterr().out
  assert extract.main(["--videos", str(vids), "--streams", "flow", "--weights",
                       str(weights_dir), "--out", str(flow_only), *SMALL]) == 0
  assert os.listdir(flow_only) == ["flow"]
  np.testing.assert_array_equal(np.load(flow_only / "flow" / "good.npy"),
                                np.load(both / "flow" / "good.npy"))
  # The readers take a one-stream folder with data.feature_streams=('rgb',).
  gt = tmp_path / "gt.json"
  gt.write_text(json.dumps({"database": {"good": {
      "subset": "validation", "annotations": [{"segment": [0.2, 1.0], "label": "Move"}]}}}))
  ds = readers.read_activitynet(str(gt), str(rgb_only), feature_streams=("rgb",),
                                feature_dim=128)
  assert ds.videos[0].features.shape == (2, 128)
  # Only the weights of the streams asked for are needed; a bad --streams is a usage error.
  capsys.readouterr()
  assert extract.main(["--videos", str(vids), "--streams", "rgb", "--out",
                       str(tmp_path / "x"), *SMALL]) == 2
  assert capsys.readouterr().err.strip() == (
      "error: give --weights DIR (with rgb_i3d.npz) or --weights-rgb")
  for bad in (["--streams", "rgb,depth"], ["--fps", "0"], ["--fps", "nan"],
              ["--crop", "0"]):
    with pytest.raises(SystemExit) as e:
      extract.main(["--videos", str(vids), "--weights", str(weights_dir),
                    "--out", str(tmp_path / "x"), *SMALL, *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and bad[0] in err, err
  # --out is, or is under, a file: one line, nothing extracted.
  (tmp_path / "a_file").write_text("x")
  for out in (tmp_path / "a_file", tmp_path / "a_file" / "feats"):
    assert extract.main(["--videos", str(vids), "--weights", str(weights_dir),
                         "--streams", "rgb", "--out", str(out), *SMALL]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --out {out}: "), err
  assert (tmp_path / "a_file").read_text() == "x"
  assert extract.parse_streams("flow, rgb") == ("rgb", "flow")
