"""pyproject.toml builds a wheel with the console scripts, every module and the data.

The wheel is built from a copy of the sources in a temporary folder, offline
(``pip wheel --no-deps --no-build-isolation --no-index``, with the setuptools of
requirements.txt), and only read: nothing is installed.
"""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement

from jaxseg import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"jaxseg": "jaxseg.main:run", "jaxseg-score": "jaxseg.score:main",
           "jaxseg-report": "jaxseg.report:main", "jaxseg-extract": "jaxseg.extract:main"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
  src = tmp_path_factory.mktemp("src")
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(os.path.join(ROOT, name), src)
  for name in ("jaxseg", "configs"):
    shutil.copytree(os.path.join(ROOT, name), src / name,
                    ignore=shutil.ignore_patterns("__pycache__"))
  dist = tmp_path_factory.mktemp("dist")
  proc = subprocess.run(
      [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
       "--no-index", "-q", "-w", str(dist), str(src)],
      capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  (path,) = glob.glob(str(dist / "jaxseg-*.whl"))
  with zipfile.ZipFile(path) as z:
    return {n: z.read(n) for n in z.namelist()}


def _dist_info(wheel, name):
  (key,) = [n for n in wheel if n.endswith(".dist-info/" + name)]
  return wheel[key].decode()


def test_console_scripts(wheel):
  lines = _dist_info(wheel, "entry_points.txt").splitlines()
  assert lines[0] == "[console_scripts]"
  scripts = dict(l.replace(" ", "").split("=", 1) for l in lines[1:] if "=" in l)
  assert scripts == SCRIPTS
  for target in scripts.values():  # each names a function of the package
    module, func = target.split(":")
    assert callable(getattr(__import__(module, fromlist=[func]), func)), target


def test_every_module_and_the_data_files(wheel):
  record = {l.split(",")[0] for l in _dist_info(wheel, "RECORD").splitlines() if l}
  assert set(wheel) == record
  for package in ("jaxseg", "configs"):
    here = {os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, package, "**", "*.py"),
                                                        recursive=True)}
    assert here <= record, sorted(here - record)
  assert "configs/thumos14_i3d.py" in record and "configs/__init__.py" in record
  assert "jaxseg/features/kinetics400_labels.txt" in record
  assert not [n for n in record if "__pycache__" in n or n.startswith("tests/")]


def test_dependency_ranges_hold_the_pinned_versions(wheel):
  """Each range in pyproject.toml admits the version requirements.txt pins."""
  pins = {}
  for name in ("requirements.txt",):
    with open(os.path.join(ROOT, name)) as f:
      for line in f:
        line = line.split("#")[0].strip()
        if "==" in line:
          package, version = line.split("==")
          pins[package.lower()] = version
  requires = [Requirement(l.split(":", 1)[1].strip())
              for l in _dist_info(wheel, "METADATA").splitlines()
              if l.startswith("Requires-Dist:")]
  assert len(requires) >= 13
  for req in requires:
    name = req.name.lower()
    assert name in pins, f"{name} is a dependency but not pinned in requirements.txt"
    assert req.specifier.contains(pins[name]), f"{req} excludes the pinned {pins[name]}"


def test_help_lists_the_flags_and_exits_0():
  """``jaxseg --help`` (the console script runs jaxseg.main:run, as -m does)."""
  proc = subprocess.run([sys.executable, "-c", "import sys; sys.argv[0] = 'jaxseg'; "
                         "from jaxseg import main; main.run()", "--help"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT, check=False)
  assert proc.returncode == 0, proc.stderr
  for flag in ("--config", "--workdir", "--mode", "--seeds", "--predict_out"):
    assert flag in proc.stdout, flag
  # Which config and preset to start from: every dataset config and every preset.
  configs = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                   if f.endswith(".py") and f != "__init__.py")
  for name in configs:
    assert name in proc.stdout, name
  for preset in config_lib.PRESETS:
    assert f":{preset}" in proc.stdout, preset
