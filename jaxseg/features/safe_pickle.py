"""Reads a pickled checkpoint of nested dicts of NumPy arrays, and nothing else.

A pickle is a program: loading one calls whatever callables it names. NumPy's
array pickling (protocols 3 and 4) names three globals, and ``pickletools.dis``
of such a checkpoint shows ``STACK_GLOBAL`` for these and for no other name:

* ``numpy.core.multiarray._reconstruct`` (``numpy._core.multiarray`` in files
  written by NumPy 2), called as ``_reconstruct(numpy.ndarray, (0,), b"b")``;
  the array's state ``(1, shape, dtype, fortran_order, raw_bytes)`` follows;
* ``numpy.ndarray``, the class passed to it;
* ``numpy.dtype``, called as ``dtype("f4", False, True)``, its state
  ``(3, byte_order, None, None, None, -1, -1, 0)`` following.

The unpickler here resolves these three names to stand-ins of its own that only
record their arguments and states; no NumPy code runs on the file's data while
it loads. Any other global, a persistent id or a copyreg extension raises
:class:`~jaxseg.features.errors.UnsafePickleError` as the unpickler meets it,
before anything it names is called. The recorded arrays are then checked
(numeric dtype, a plain state, as many bytes as the shape needs) and made with
``np.frombuffer``; the tree around them must be dicts with string keys, lists
and tuples, else :class:`~jaxseg.features.errors.PickleContentError` names
where. Protocol 5's ``_frombuffer`` and protocol 2's ``_codecs.encode`` are not
admitted.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from jaxseg.features.errors import PickleContentError, UnsafePickleError

MAX_DEPTH = 32  # nesting of dicts / lists / tuples (a checkpoint needs about 6)
# bool, signed and unsigned integers, floats: the dtypes an array may have.
_DTYPES = frozenset(["b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"])
_BYTE_ORDERS = frozenset("<>|=")


class _NdarrayClass:
  """Stands for ``numpy.ndarray`` (only ever passed to ``_reconstruct``)."""


_NDARRAY = _NdarrayClass()


class _DtypeStub:
  """What ``numpy.dtype(spec, align, copy)`` and its state asked for."""

  def __init__(self, spec=None, align=False, copy=True):
    self.spec, self.align, self.copy, self.state = spec, align, copy, None

  def __setstate__(self, state):
    self.state = state

  def dtype(self, where: str) -> np.dtype:
    s = self.state
    if (not isinstance(self.spec, str) or self.spec not in _DTYPES or self.align
        or not isinstance(s, tuple) or len(s) != 8 or s[0] != 3 or s[1] not in _BYTE_ORDERS
        or s[2:5] != (None, None, None) or s[5:] != (-1, -1, 0)):
      raise PickleContentError(f"{where}: dtype {self.spec!r} with state {s!r} is not "
                               "a plain numeric type")
    order = "|" if self.spec[1] == "1" else s[1]
    return np.dtype(order + self.spec)


class _ArrayStub:
  """What ``_reconstruct(numpy.ndarray, ...)`` and its state asked for."""

  def __init__(self, cls=None, shape=None, typecode=None):
    if cls is not _NDARRAY:
      raise UnsafePickleError(f"_reconstruct of {type(cls).__name__}, not numpy.ndarray")
    self.state = None

  def __setstate__(self, state):
    self.state = state

  def array(self, where: str) -> np.ndarray:
    s = self.state
    if not (isinstance(s, tuple) and len(s) == 5 and s[0] == 1):
      raise PickleContentError(f"{where}: an array without a plain state")
    _, shape, dtype, fortran, data = s
    if not isinstance(dtype, _DtypeStub):
      raise PickleContentError(f"{where}: an array whose dtype is a {type(dtype).__name__}")
    dtype = dtype.dtype(where)
    if (not isinstance(shape, tuple) or len(shape) > 32
        or not all(type(n) is int and n >= 0 for n in shape)):
      raise PickleContentError(f"{where}: array shape {shape!r}")
    if not isinstance(data, bytes) or type(fortran) is not bool:
      raise PickleContentError(f"{where}: array data of type {type(data).__name__}, "
                               "not bytes")
    if len(data) != math.prod(shape) * dtype.itemsize:
      raise PickleContentError(f"{where}: array of shape {shape} and dtype {dtype} "
                               f"with {len(data)} bytes of data")
    arr = np.frombuffer(data, dtype).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), copy=True)


_ADMITTED = {
    ("numpy.core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy._core.multiarray", "_reconstruct"): _ArrayStub,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DtypeStub,
}


class _ArrayUnpickler(pickle.Unpickler):
  """Resolves only the globals of NumPy's array pickling, to stand-ins."""

  def find_class(self, module: str, name: str) -> Any:
    try:
      return _ADMITTED[(module, name)]
    except KeyError:
      raise UnsafePickleError(f"refers to {module}.{name}, which is not admitted "
                              "(only dicts, lists, tuples and NumPy arrays are)") from None

  def persistent_load(self, pid: Any) -> Any:
    raise UnsafePickleError("holds a persistent id, which is not admitted")


def loads(data: bytes, source: str = "pickle") -> dict[str, np.ndarray]:
  """``{"a/b/c": array}`` of a pickle of dicts, lists, tuples and numeric arrays.

  Keys are the dict keys (and list / tuple indices) joined by ``/``.

  Raises:
    UnsafePickleError: a global other than the three above, a persistent id
      (nothing it names is called).
    PickleContentError: not a valid pickle; anything else in it (naming
      where); an array whose state is not plain numeric data.
  """
  try:
    obj = _ArrayUnpickler(io.BytesIO(data)).load()
  except UnsafePickleError as e:
    raise UnsafePickleError(f"{source}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except  # truncated, corrupt, bad states
    raise PickleContentError(f"{source}: not a readable pickle of arrays: "
                             f"{type(e).__name__}: {e}") from None
  return _flat_arrays(obj, source)


def load(path: str) -> dict[str, np.ndarray]:
  """:func:`loads` of a file (the errors name the file)."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except FileNotFoundError:
    raise PickleContentError(f"{path}: checkpoint not found") from None
  except OSError as e:
    raise PickleContentError(f"{path}: cannot read: {e.strerror or e}") from None
  return loads(data, path)


def _flat_arrays(obj: Any, source: str) -> dict[str, np.ndarray]:
  out: dict[str, np.ndarray] = {}
  seen: set[int] = set()
  stack = [("", obj, 0)]
  while stack:
    name, node, depth = stack.pop()
    where = f"{source}: {name or 'the top level'}"
    if type(node) is _ArrayStub:
      if name in out:
        raise PickleContentError(f"{where}: two arrays of this name")
      out[name] = node.array(where)
      continue
    if type(node) not in (dict, list, tuple):
      raise PickleContentError(f"{where}: a {type(node).__name__}, not a dict, list, "
                               "tuple or NumPy array")
    if id(node) in seen:
      raise PickleContentError(f"{where}: a container referenced twice")
    seen.add(id(node))
    if depth >= MAX_DEPTH:
      raise PickleContentError(f"{where}: nested more than {MAX_DEPTH} deep")
    if type(node) is dict:
      for key in node:
        if type(key) is not str or not key:
          raise PickleContentError(f"{where}: key {key!r} is not a non-empty string")
      items = list(node.items())
    else:
      items = [(str(i), v) for i, v in enumerate(node)]
    for key, child in items:
      stack.append((f"{name}/{key}" if name else key, child, depth + 1))
  return out
