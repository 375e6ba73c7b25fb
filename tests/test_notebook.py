"""Runs notebooks/loss_inspection.ipynb top to bottom on CPU, as a reader would.

The notebook is executed with nbclient in a fresh kernel of *this* interpreter: a
``python3`` kernelspec pointing at ``sys.executable`` is installed into a temporary
``JUPYTER_PATH`` (first on the search path), so neither a user-wide kernelspec nor a
missing one in the environment can send it elsewhere. Like papermill, the test
injects one cell after the ``parameters`` cell (``OUTPUT_DIR`` in ``tmp_path``;
``NUM_STEPS``: 100 steps a run instead of the notebook's 500, the checks hold either
way) and appends one that checks the notebook's own variables against the equations.
The committed file must carry no outputs.
"""

from __future__ import annotations

import pathlib
import sys
import time

import nbformat
from nbclient import NotebookClient
import pytest

# End-to-end: trains, runs subprocesses or full-size networks (pytest -m "not slow"
# skips the module).
pytestmark = pytest.mark.slow

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "loss_inspection.ipynb"
BUDGET_S = 120.0  # the notebook test finishes in under 2 minutes on CPU
NUM_STEPS = 100  # the notebook's parameter: optimizer steps of each of its runs
SETTINGS = ("CL", "CL+PSL", "CL+PSL+SL", "CL+PSL+SL+PL")
FIGURE_NAMES = (
    ["ground_truth_{}.png", "cas_{}.png", "similarity_{}.png", "ablation_cas_{}.png"],
    ["loss_terms_initialisation.png", "loss_terms_trained.png", "training_curves.png"])

# Appended to the notebook: runs in its kernel, on its variables.
CHECKS = r'''
# --- appended by tests/test_notebook.py ---
import sys as _sys
import numpy as _np
import matplotlib.image as _mpimg


assert _sys.prefix == EXPECTED_PREFIX, (_sys.prefix, EXPECTED_PREFIX)
assert len(videos) == 2 and len({v.video_id for v in videos}) == 2
assert all(v.video_id in test_videos for v in videos)

# Sections 3 and 6: one CAS per video and setting, C_a = (C_cls + C_loc) / 2 (paper 4.7).
assert tuple(abl) == EXPECTED_SETTINGS, tuple(abl)
for v in videos:
  for name, r in [("run", {"cas": cas})] + list(abl.items()):
    c = r["cas"][v.video_id]
    for key in ("cas_cls", "cas_loc", "cas_a"):
      assert c[key].shape == (v.num_segments, NUM_CLASSES), (name, key, c[key].shape)
      assert _np.all(_np.isfinite(c[key])), (name, key)
    _np.testing.assert_allclose(c["cas_a"], 0.5 * (c["cas_cls"] + c["cas_loc"]),
                                rtol=1e-5, atol=1e-5)
# The inspected run is reused for its own setting, not trained again; the others differ.
same = [n for n, (d, _) in runs.items() if d == RUN_DIR]
assert len(same) == 1, same
vid = videos[0].video_id
_np.testing.assert_allclose(abl[same[0]]["cas"][vid]["cas_a"], cas[vid]["cas_a"], rtol=1e-6)
assert not _np.allclose(abl["CL"]["cas"][vid]["cas_a"], abl["CL+PSL"]["cas"][vid]["cas_a"])

# Section 5: which parameters each term reaches (Fig. 3 and eq. 2-13).
for table in (terms_init, terms_trained):
  assert list(table.index) == ["classification", "segment", "sphere", "propagation"]
  assert _np.all(_np.isfinite(table.to_numpy(float)))
  g = lambda term, group: table.loc[term, f"|grad| {group}"]
  for term in ("segment", "sphere", "propagation"):
    assert g(term, "cls_head") == 0.0, term
  for term in ("classification", "segment", "propagation"):
    assert g(term, "sphere_weight") == 0.0, term
  # Eq. 2-4 reaches C_loc's head when loss.loc_classification_weight > 0.
  reaches_loc = config.loss.loc_classification_weight > 0
  assert (g("classification", "loc_head") > 0) == reaches_loc
  assert g("classification", "cls_head") > 0 and g("classification", "embedding") > 0
  assert g("segment", "loc_head") > 0
  # model.localization_embedding: C_loc's losses reach the shared embedding
  # (Fig. 3) or, with "separate", only the localization branch's own.
  if config.model.localization_embedding == "separate":
    assert g("segment", "loc_embedding") > 0 and g("segment", "embedding") == 0.0
    assert (g("classification", "loc_embedding") > 0) == reaches_loc
    assert g("propagation", "embedding") == 0.0
  else:
    assert g("segment", "embedding") > 0
  assert g("sphere", "sphere_weight") > 0
  assert g("propagation", "loc_head") > 0
  for col in ("value", "grad_norm"):
    _np.testing.assert_allclose(table[f"weighted {col}"], table["weight"] * table[col],
                                rtol=1e-12)
assert terms_trained.loc["classification", "value"] < terms_init.loc["classification", "value"]

# Eq. 5-6 in float64 NumPy, straight from the paper, on the same batch and parameters.
_out = model.apply({"params": params}, batch["features"], batch["mask"], deterministic=True)
_loc = _np.asarray(_out["cas_loc"], _np.float64)
_per_video = []
for _b in range(_loc.shape[0]):
  _l = int(batch["lengths"][_b])
  if _l == 0:
    continue
  _x = _loc[_b, :_l]
  _a = _np.exp(_x - _x.max(0)) / _np.exp(_x - _x.max(0)).sum(0)
  _u = batch["segment_labels"][_b, :_l] > 0
  _per_video.append(-_np.log(_a[_u]).sum())
_np.testing.assert_allclose(terms_trained.loc["segment", "value"], _np.mean(_per_video),
                            rtol=2e-4)

# Every figure was also written as a PNG.
_expected = [p.format(v.video_id) for p in EXPECTED_FIGURES[0] for v in videos]
_expected += EXPECTED_FIGURES[1] + [f"ablation_similarity_{videos[0].video_id}.png"]
for _name in _expected:
  _img = _mpimg.imread(str(FIGURES / _name))
  assert _img.ndim == 3 and _img.shape[0] > 100 and _img.shape[1] > 300, (_name, _img.shape)
  assert _np.ptp(_img[..., :3]) > 0.3, _name
print("notebook checks passed")
'''


def _kernel_env(tmp_path: pathlib.Path, monkeypatch) -> None:
  """A ``python3`` kernelspec for this interpreter, first on JUPYTER_PATH; CPU JAX."""
  from ipykernel import kernelspec  # pylint: disable=g-import-not-at-top
  prefix = tmp_path / "jupyter"
  monkeypatch.setenv("JUPYTER_PATH", str(prefix / "share" / "jupyter"))
  kernelspec.install(kernel_name="python3", prefix=str(prefix))  # argv: sys.executable
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))  # no user profile/startup
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")
  monkeypatch.delenv("MPLBACKEND", raising=False)  # let ipykernel pick the inline backend
  tmp = tmp_path / "tmp"
  tmp.mkdir()
  monkeypatch.setenv("TMPDIR", str(tmp))


def _prepared_notebook(output_dir: pathlib.Path) -> nbformat.NotebookNode:
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  idx = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
  injected = nbformat.v4.new_code_cell(
      f"OUTPUT_DIR = {str(output_dir)!r}\n"
      f"NUM_STEPS = {NUM_STEPS}\n"
      f"EXPECTED_PREFIX = {sys.prefix!r}\n"
      f"EXPECTED_SETTINGS = {SETTINGS!r}\n"
      f"EXPECTED_FIGURES = {FIGURE_NAMES!r}")
  injected.metadata["tags"] = ["injected-parameters"]
  nb.cells.insert(idx + 1, injected)
  nb.cells.append(nbformat.v4.new_code_cell(CHECKS))
  return nb


def test_notebook_runs_top_to_bottom(tmp_path, monkeypatch):
  _kernel_env(tmp_path, monkeypatch)
  nb = _prepared_notebook(tmp_path / "out")
  client = NotebookClient(nb, timeout=BUDGET_S, startup_timeout=90, kernel_name="python3",
                          resources={"metadata": {"path": str(ROOT)}})
  start = time.monotonic()
  client.execute()  # raises CellExecutionError, with the cell and traceback, on a failure
  elapsed = time.monotonic() - start
  print(f"notebook executed in {elapsed:.1f} s")

  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  assert not [o for o in outputs if o.output_type == "error"]
  images = [o for o in outputs if o.output_type in ("display_data", "execute_result")
            and "image/png" in o.get("data", {})]
  assert len(images) >= 12, len(images)  # every figure is shown inline too
  texts = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "notebook checks passed" in texts
  assert "Traceback" not in texts
  assert elapsed < BUDGET_S, f"the notebook took {elapsed:.0f} s (budget {BUDGET_S:.0f} s)"


def test_committed_notebook_is_stripped():
  nb = nbformat.read(str(NOTEBOOK), as_version=4)
  nbformat.validate(nb)
  assert nb.metadata["kernelspec"]["name"] == "python3"
  code = [c for c in nb.cells if c.cell_type == "code"]
  assert code
  for c in code:
    assert c.outputs == [], c.source[:60]
    assert c.execution_count is None, c.source[:60]
    assert "execution" not in c.metadata, c.source[:60]  # nbclient's timing record
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1 and "CHECKPOINT_DIR = None" in params[0].source


if __name__ == "__main__":
  sys.exit(pytest.main([__file__, "-q", "-s"]))
