"""--mode ablate: the paper's Table 1 layout, seeds, and resumable cells."""

import os

import numpy as np
import pandas as pd
import pytest

from configs import test as test_config
from jaxseg import ablation, config_checks

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def _cache(compilation_cache):
  """This module's runs share one persistent XLA compilation cache."""
  yield


def test_combinations_are_table_1_columns():
  names = [c[0] for c in ablation.COMBINATIONS]
  assert names == ["CL", "CL+PSL", "CL+SL", "CL+PL", "CL+PSL+SL", "CL+PSL+PL", "CL+SL+PL",
                   "CL+PSL+SL+PL"]
  for name, psl, sl, pl in ablation.COMBINATIONS:
    assert ("PSL" in name) == psl and ("+SL" in name) == sl and ("PL" in name.replace(
        "PSL", "")) == pl


def test_run_config_switches_losses_and_seeds():
  base = test_config.get_config()
  c = ablation.run_config(base, "two-segment", ablation.COMBINATIONS[5], 2)
  assert (c.loss.use_classification, c.loss.use_segment, c.loss.use_sphere,
          c.loss.use_propagation) == (True, True, False, True)
  assert c.labels.mode == "two-segment"
  assert c.seed == base.seed + 2 and c.labels.seed == base.labels.seed + 2
  assert base.labels.mode == "one-segment"  # the base config is not modified
  assert c.inference.extent == base.inference.extent == "localization"


def test_cells_without_a_localization_loss_keep_their_proposals_extent():
  # CL alone trains no C_loc, so it cannot choose an extent on it; every cell
  # with PSL, SL or PL keeps the configured extent.
  base = test_config.get_config()
  for combo in ablation.COMBINATIONS:
    c = ablation.run_config(base, "one-segment", combo, 0)
    want = "localization" if any(combo[1:]) else "proposal"
    assert c.inference.extent == want, combo[0]
    config_checks.validate(c)


def test_table_mean_and_std_over_seeds():
  rows = []
  for seed, (a, b) in enumerate([(10.0, 20.0), (14.0, 22.0)]):
    rows += [{"label_mode": "one-segment", "losses": "CL", "seed": seed,
              "checkpoint": "final", "mAP@0.5": a},
             {"label_mode": "one-segment", "losses": "CL+PSL", "seed": seed,
              "checkpoint": "final", "mAP@0.5": b}]
  table = ablation.ablation_table(pd.DataFrame(rows), "mAP@0.5")
  assert list(table.columns) == ["CL", "CL+PSL"]
  # mean ± sample std: (10, 14) -> 12.0 ± 2.8; (20, 22) -> 21.0 ± 1.4
  assert table.loc["one-segment", "CL"] == "12.0 ± 2.8"
  assert table.loc["one-segment", "CL+PSL"] == "21.0 ± 1.4"


def test_run_ablation_end_to_end_and_resume(tmp_path, monkeypatch):
  c = test_config.get_config()
  c.data.synthetic.output_dir = str(tmp_path / "data")
  c.train.num_steps = 6
  c.ablation.losses = ("CL", "CL+PSL")
  # A video-level row adds no run: its cells are the video-level CL runs.
  c.ablation.label_modes = ("one-segment", "video-level")
  df = ablation.run_ablation(c, str(tmp_path / "abl"), num_seeds=2)
  assert len(df) == 2 * 2 * 2 * 2  # label modes x combinations x seeds x {final, selected}
  runs = sorted(str(p.relative_to(tmp_path / "abl" / "runs"))
                for p in (tmp_path / "abl" / "runs").glob("*/*/seed*"))
  assert runs == ["one-segment/CL+PSL/seed0", "one-segment/CL+PSL/seed1",
                  "video-level/CL/seed0", "video-level/CL/seed1"]
  # Paper Fig. 5 from the last combination's rows: one point per label mode.
  fig5 = pd.read_csv(tmp_path / "abl" / "fig5.csv")
  assert list(fig5["label_mode"]) == ["video-level", "one-segment"]
  assert list(fig5["annotation_time"]) == [0.24, 0.30]
  final = df[(df.checkpoint == "final") & (df.losses == "CL+PSL")]
  for row in fig5.itertuples():
    vals = final[final.label_mode == row.label_mode]["mAP@0.5"].to_numpy(float)
    assert row.mean == pytest.approx(vals.mean(), abs=1e-3)
    assert row.std == pytest.approx(vals.std(ddof=1), abs=1e-3)
  assert (tmp_path / "abl" / "fig5.png").stat().st_size > 0
  df = df[df.label_mode == "one-segment"].reset_index(drop=True)
  for name in ("ablation.csv", "ablation.md"):
    assert os.path.getsize(tmp_path / "abl" / name) > 0
  saved = pd.read_csv(tmp_path / "abl" / "ablation.csv")
  assert set(saved["losses"]) == {"CL", "CL+PSL"} and set(saved["seed"]) == {0, 1}
  # The test-split path too: CL is trained on video-level labels, shown in the row.
  assert set(saved["label_mode"]) == {"one-segment", "video-level"}
  assert set(saved[saved.losses == "CL"]["trained_on"]) == {"video-level"}
  assert {"git_commit", "dataset_fingerprint", "label_seed", "jax"} <= set(saved.columns)
  assert np.all((saved["mAP@0.5"] >= 0) & (saved["mAP@0.5"] <= 100))
  # Seeds differ, so the two seeds of a cell are different runs.
  cl = saved[(saved.losses == "CL") & (saved.checkpoint == "final")
              & (saved.label_mode == "one-segment")]
  assert cl["label_seed"].nunique() == 2
  md = (tmp_path / "abl" / "ablation.md").read_text()
  assert "mAP@0.5" in md and "±" in md
  # A rerun trains no step of a finished cell (it resumes at its last step and is
  # scored again, with the same numbers: never read from an earlier report).
  from jaxseg import train

  def no_step(*a, **k):
    def fail(*args, **kwargs):
      raise AssertionError("a finished cell was trained again")
    return fail

  monkeypatch.setattr(train, "make_train_step", no_step)
  again = ablation.run_ablation(c, str(tmp_path / "abl"), num_seeds=2)
  pd.testing.assert_frame_equal(again[again.label_mode == "one-segment"].reset_index(drop=True),
                                df)
