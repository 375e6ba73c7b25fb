"""The invariant fuzzer of tests/test_invariants.py, for a long time.

  python -m benchmarks.fuzz_invariants --minutes 30 --out /tmp/fuzz-long.md

Runs the test module's properties (its strategies, checks and valid world,
imported, not copied) round-robin in batches with random seeds until the time
is up, and writes a markdown summary to ``--out`` after every batch: examples
per property, per entry point and exit status, and every distinct failure with
hypothesis's minimal reproducer (the case, the command line, what broke). The
inputs of each failure's minimal example are kept under ``--keep`` (default:
next to ``--out``), so the command line in the summary can be rerun as is.

``--include-known`` also explores the input classes of ``KNOWN_BUGS`` (which the
test suite excludes until they are fixed); ``--properties a,b`` runs only those;
``--keep-world`` keeps the valid base and the scratch folder (removed by default).
"""

from __future__ import annotations

import argparse
import collections
import datetime
import os
import random
import re
import shutil
import sys
import tempfile
import time
import traceback

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

from hypothesis import HealthCheck, given, seed, settings  # pylint: disable=g-import-not-at-top

from tests import test_invariants as ti  # pylint: disable=g-import-not-at-top

# Examples per batch: a failure found late in a batch still leaves the next
# property its turn soon (the cheap properties run bigger batches).
BATCH = {"changed_config": 6, "leftovers": 15, "symlinks": 30, "outputs": 30}
DEFAULT_BATCH = 60


def _compilation_cache(folder: str) -> None:
  """The persistent XLA cache tests/conftest.py gives the suite's modules."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import compilation_cache  # pylint: disable=g-import-not-at-top
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  compilation_cache.compilation_cache.reset_cache()


def _signature(prop: str, text: str) -> str:
  """What makes two failures the same bug: the property and the first broken
  promise, with paths and numbers taken out."""
  problems = [l.strip() for l in text.splitlines() if l.strip().startswith("- ")]
  head = problems[0] if problems else text.strip().splitlines()[-1] if text.strip() else "?"
  tb = [l for l in text.splitlines() if re.match(r"\s*\w+(Error|Exception)\b", l.strip())]
  if "traceback" in head and tb:
    head += " " + tb[-1].strip()
  head = re.sub(r"/[^\s'\"]*", "<path>", head)
  head = re.sub(r"\d+", "N", head)
  return f"{prop}: {head[:200]}"


def _falsifying(e: BaseException) -> str:
  """Hypothesis's minimal case(s) from the exception's notes."""
  notes = []
  for exc in getattr(e, "exceptions", None) or [e]:
    notes += [n for n in getattr(exc, "__notes__", []) if "Falsifying" in n or "case=" in n]
  return "\n".join(notes)


def _messages(e: BaseException) -> list[str]:
  out = []
  for exc in getattr(e, "exceptions", None) or [e]:
    if isinstance(exc, AssertionError):
      out.append(str(exc))
    else:
      out.append("".join(traceback.format_exception(exc))[-3000:])
  return out


def _printable(text: str) -> str:
  """``text`` with control characters and lone surrogates escaped (the summary stays text)."""
  return "".join(c if c in "\n\t" or (c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF)
                 else repr(c)[1:-1] for c in text)


class Run:
  """The long run's state: counts, failures and the summary file."""

  def __init__(self, args, world):
    self.args = args
    self.world = world
    self.start = time.time()
    self.examples = collections.Counter()  # property -> examples run
    self.entries = collections.Counter()  # (property, entry point) -> examples
    self.batches = collections.Counter()
    self.failures: dict[str, dict] = {}
    self.errors: list[str] = []

  def wrap(self, prop):
    def check(world, case):
      self.examples[prop.name] += 1
      self.entries[(prop.name, prop.entry_point(case))] += 1
      prop.check(world, case)
    return check

  def batch(self, prop) -> None:
    n = BATCH.get(prop.name, DEFAULT_BATCH)
    check = self.wrap(prop)

    @seed(random.getrandbits(64))
    @settings(max_examples=n, deadline=None, derandomize=False, database=None,
              print_blob=False, suppress_health_check=list(HealthCheck), report_multiple_bugs=True)
    @given(case=prop.strategy)
    def test(case):
      check(self.world, case)

    self.batches[prop.name] += 1
    try:
      test()
    except Exception as e:  # pylint: disable=broad-except
      self.record(prop, e)
    for stale in self.world.keep.glob("ex-*"):  # the failing steps of the shrinking
      shutil.rmtree(stale, ignore_errors=True)

  def record(self, prop, e: BaseException) -> None:
    case = _falsifying(e)
    for text in _messages(e):
      sig = _signature(prop.name, text)
      f = self.failures.get(sig)
      if f is None:
        kept = ""
        m = re.search(r"/scratch/(ex-\d+)", text)
        if self.world.keep is not None and m and (self.world.keep / m.group(1)).exists():
          kept = str(self.world.keep / f"failure-{len(self.failures) + 1}-{m.group(1)}")
          shutil.rmtree(kept, ignore_errors=True)
          shutil.move(self.world.keep / m.group(1), kept)
        self.failures[sig] = {"property": prop.name, "count": 1, "case": case, "text": text,
                              "kept": kept, "first": time.time() - self.start}
      else:
        f["count"] += 1

  def write(self) -> None:
    elapsed = time.time() - self.start
    total = sum(self.examples.values())
    lines = [f"# Invariant fuzzing: {total} examples in {elapsed / 60:.1f} minutes", "",
             f"{datetime.datetime.now().isoformat(timespec='seconds')}; "
             f"`python -m benchmarks.fuzz_invariants {' '.join(sys.argv[1:])}`; "
             f"known bugs {'explored' if self.args.include_known else 'excluded'}: "
             f"{', '.join(sorted(ti.KNOWN_BUGS)) or 'none'}; world in {self.world.root}.", "",
             "## Examples per property", "", "| property | promise | batches | examples |",
             "| --- | --- | ---: | ---: |"]
    for prop in ti.PROPERTIES:
      lines.append(f"| {prop.name} | {prop.promise} | {self.batches[prop.name]} | "
                   f"{self.examples[prop.name]} |")
    per_entry = collections.Counter()
    for (_, entry), n in self.entries.items():
      per_entry[entry] += n
    lines += ["", "## Examples per entry point", "", "| entry point | examples |",
              "| --- | ---: |"]
    lines += [f"| {entry} | {n} |" for entry, n in sorted(per_entry.items())]
    lines += ["", "## Examples per property and entry point", "",
              "| property | entry point | examples |", "| --- | --- | ---: |"]
    for (name, entry), n in sorted(self.entries.items()):
      lines.append(f"| {name} | {entry} | {n} |")
    lines += ["", "## Runs per command and exit status (shrinking included)", "",
              "| command | exit status | runs |", "| --- | --- | ---: |"]
    for (cmd, rc), n in sorted(self.world.outcomes.items(), key=str):
      lines.append(f"| {cmd} | {rc} | {n} |")
    lines += ["", f"## Failures: {len(self.failures)} distinct", ""]
    for i, (sig, f) in enumerate(self.failures.items(), 1):
      lines += [f"### {i}. {sig}", "",
                f"found {f['count']} time(s), first after {f['first'] / 60:.1f} min"
                + (f"; the minimal example's inputs are kept in `{f['kept']}` (copy them "
                   "back to the example folder of the command line to rerun it)"
                   if f["kept"] else ""), "",
                "minimal case:", "", "```", f["case"] or "(not reported)", "```", "",
                "what happened:", "", "```", f["text"].strip()[-4000:], "```", ""]
    for e in self.errors:
      lines += ["", "## Harness error", "", "```", e, "```"]
    tmp = self.args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
      fh.write(_printable("\n".join(lines)) + "\n")
    os.replace(tmp, self.args.out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--minutes", type=float, default=30.0)
  p.add_argument("--out", required=True, help="the markdown summary")
  p.add_argument("--keep", default=None,
                 help="folder for the failing examples' inputs (default: <out>.inputs)")
  p.add_argument("--properties", default="", help="comma-separated names (default: all)")
  p.add_argument("--include-known", action="store_true",
                 help="explore the input classes of KNOWN_BUGS too")
  p.add_argument("--seed", type=int, default=None)
  p.add_argument("--keep-world", action="store_true",
                 help="keep the valid base and the scratch folder (default: removed at the end)")
  args = p.parse_args(argv)
  random.seed(args.seed)
  if args.include_known:
    os.environ["JAXSEG_FUZZ_INCLUDE_KNOWN"] = "1"
  ti.COLLECT_AFTER_EACH_CALL = True  # late output is the command's, not the next one's
  props = [ti.PROPERTY[n] for n in args.properties.split(",") if n] or ti.PROPERTIES
  keep = args.keep or args.out + ".inputs"
  shutil.rmtree(keep, ignore_errors=True)
  os.makedirs(keep)
  root = tempfile.mkdtemp(prefix="fuzz-invariants-")
  _compilation_cache(os.path.join(root, "xla-cache"))
  world = ti.World(os.path.join(root, "world"), keep=keep)
  run = Run(args, world)
  deadline = run.start + args.minutes * 60
  i = 0
  while time.time() < deadline:
    prop = props[i % len(props)]
    i += 1
    try:
      run.batch(prop)
    except Exception:  # pylint: disable=broad-except  # the harness itself
      run.errors.append(traceback.format_exc()[-3000:])
    run.write()
  run.write()
  if not args.keep_world:  # the failing examples' inputs are under --keep
    shutil.rmtree(root, ignore_errors=True)
  print(f"{sum(run.examples.values())} examples, {len(run.failures)} distinct failures: "
        f"{args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
