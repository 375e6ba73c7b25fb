"""Reading ``.npy`` files that come from outside: no code runs, no huge allocation.

``np.load(allow_pickle=True)`` runs whatever a pickle asks for (a ``__reduce__``
payload in any object array runs arbitrary code). jaxseg never does that:

* :func:`load_array` reads the header first and checks that the file is as
  long as its shape and dtype say, so a header claiming ``(10**12, 16)`` is a
  named error instead of a memory error;
* an array of a plain dtype is then read with ``allow_pickle=False``;
* an *object* array (W-TALC stores per-video features, segments and labels as
  pickled object arrays) is read only where the caller allows it, and then
  with a restricted unpickler that rebuilds numpy arrays, numpy scalars,
  numbers, strings, lists and tuples, and refuses every other class or
  function the pickle names (``os.system``, ``builtins.eval``, ...).

Every failure is one :class:`DataError` naming the file.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

from jaxseg.data.video import DataError

# What a pickled numpy object array may reference (numpy 1.x and 2.x names;
# Python 2 pickles name them the same way).
_ALLOWED_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
})


class _RestrictedUnpickler(pickle.Unpickler):
  """Rebuilds numpy arrays and plain values only; anything else is refused."""

  def find_class(self, module: str, name: str):
    if (module, name) in _ALLOWED_GLOBALS:
      return super().find_class(module, name)
    raise pickle.UnpicklingError(
        f"refusing to unpickle {module}.{name} (only numpy arrays, numbers and "
        "strings are read from a pickled array)")


def read_header(path: str) -> tuple[tuple[int, ...], np.dtype, int]:
  """``(shape, dtype, data_offset)`` of the ``.npy`` file ``path``.

  Raises:
    DataError: not an ``.npy`` file, or (for a plain dtype) shorter than its
      header says (a header claiming more data than the file holds).
  """
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
      offset = f.tell()
  except (OSError, ValueError, EOFError, SyntaxError) as e:
    raise DataError(f"{path}: not a readable .npy file: {e}") from None
  if not dtype.hasobject:
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size - offset:
      raise DataError(f"{path}: the header claims shape {tuple(shape)} of {dtype} "
                      f"({need} bytes) but the file holds {size - offset} bytes of data")
  return tuple(shape), dtype, offset


def load_array(path: str, *, allow_objects: bool = False, what: str = "array") -> np.ndarray:
  """The array in ``path``, read without running any pickled code.

  Args:
    path: the ``.npy`` file.
    allow_objects: read an object array with the restricted unpickler; False:
      an object array is refused.
    what: what the file is, for the messages.

  Raises:
    DataError: naming ``path``: missing, unreadable, truncated, an object array
      where none is allowed, or a pickle naming anything but numpy arrays.
  """
  if not os.path.isfile(path):
    raise DataError(f"{path}: {what} file not found")
  _, dtype, offset = read_header(path)
  if not dtype.hasobject:
    try:
      return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
      raise DataError(f"{path}: cannot read {what}: {e}") from None
  if not allow_objects:
    raise DataError(f"{path}: {what} is a pickled object array; jaxseg reads it only as "
                    "a plain (string or number) array")
  try:
    with open(path, "rb") as f:
      f.seek(offset)
      out = _RestrictedUnpickler(f, encoding="bytes").load()
  except (pickle.UnpicklingError, OSError, ValueError, EOFError, TypeError,
          AttributeError, IndexError, KeyError) as e:
    raise DataError(f"{path}: cannot read {what}: {e}") from None
  if not isinstance(out, np.ndarray):
    raise DataError(f"{path}: {what}: the pickle holds a {type(out).__name__}, "
                    "not an array")
  return out


def check_plain(value: Any, *, path: str, what: str) -> None:
  """Refuses anything in an unpickled array but arrays, numbers and strings."""
  if isinstance(value, np.ndarray):
    if value.dtype.hasobject:
      for x in value.ravel():
        check_plain(x, path=path, what=what)
    return
  if value is None or isinstance(value, (str, bytes, int, float, np.generic)):
    return
  if isinstance(value, (list, tuple)):
    for x in value:
      check_plain(x, path=path, what=what)
    return
  raise DataError(f"{path}: {what} holds a {type(value).__name__}; expected arrays, "
                  "numbers and strings only")
