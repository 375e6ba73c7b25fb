"""Fixtures the test modules share: a compilation cache for modules that train the
same config several times. Plain helpers are in ``tests/helpers.py``."""

import jax
import pytest


@pytest.fixture(scope="module")
def compilation_cache(tmp_path_factory):
  """A persistent XLA compilation cache for this module's runs: a program an earlier
  run compiled (same config, same shapes) is loaded instead of compiled again. A
  cache hit runs the same executable, so comparisons between runs are unaffected."""
  from jax.experimental.compilation_cache import compilation_cache as cc  # pylint: disable=g-import-not-at-top
  options = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla-cache")),
             "jax_persistent_cache_min_compile_time_secs": 0,
             "jax_persistent_cache_min_entry_size_bytes": -1}
  saved = {name: getattr(jax.config, name) for name in options}
  for name, value in options.items():
    jax.config.update(name, value)
  cc.reset_cache()
  yield
  for name, value in saved.items():
    jax.config.update(name, value)
  cc.reset_cache()
