"""File helpers every module shares: one atomic writer, one JSON loader.

They sit in the data layer (the bottom of the import graph) so that readers,
label files and run reports can all use them.

A crash never leaves a truncated output file: :func:`atomic_open` writes to a
temporary file in the target's folder, flushes it to disk and renames it over
the target (``os.replace``). :func:`load_json` reads a JSON file and turns
every way it can fail into one :class:`DataError` line naming the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import tempfile
from typing import Any, Iterator

from jaxseg.data.video import DataError


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", *,
                make_dirs: bool = False) -> Iterator[Any]:
  """Opens a temporary file that replaces ``path`` when the block ends without error.

  The file gets mode ``0644`` (as a plain ``open`` under the usual umask); on
  an exception the temporary file is removed and ``path`` is left as it was.

  Args:
    path: the file to write.
    mode: ``"w"`` (text, UTF-8) or ``"wb"``.
    make_dirs: create missing parent folders (else a missing folder raises
      ``FileNotFoundError``).
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open: mode must be 'w' or 'wb', got {mode!r}")
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  if make_dirs:
    os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    kwargs = {"encoding": "utf-8", "newline": ""} if mode == "w" else {}
    with os.fdopen(fd, mode, **kwargs) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.chmod(tmp, 0o644)  # mkstemp creates 0600
    os.replace(tmp, path)
  except BaseException as e:
    if os.path.exists(tmp):
      os.remove(tmp)
    if isinstance(e, OSError) and e.filename is None and e.errno is not None:
      raise OSError(e.errno, e.strerror, path) from e  # name the file (disk full, ...)
    raise


def atomic_write_text(path: str | os.PathLike, text: str, *, make_dirs: bool = False) -> None:
  """Writes ``text`` to ``path`` so that a crash never leaves a truncated file."""
  with atomic_open(path, "w", make_dirs=make_dirs) as f:
    f.write(text)


def load_json(path: str, what: str = "JSON") -> Any:
  """Reads the JSON file ``path``.

  Args:
    path: the file.
    what: what the file is, for the messages (``"annotation"``, ``"fps"``, ...).

  Raises:
    DataError: one line naming ``path``: the file is missing, a folder,
      unreadable, not UTF-8, or not valid JSON (with line and column).
  """
  try:
    with open(path, encoding="utf-8") as f:
      text = f.read()
  except FileNotFoundError:
    raise DataError(f"{path}: {what} file not found") from None
  except IsADirectoryError:
    raise DataError(f"{path}: is a directory, not a {what} file") from None
  except PermissionError:
    raise DataError(f"{path}: permission denied") from None
  except UnicodeDecodeError as e:
    raise DataError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
  except OSError as e:
    raise DataError(f"{path}: cannot read {what} file: {e.strerror or e}") from None
  try:
    data = json.loads(text, object_pairs_hook=functools.partial(_unique_keys, path))
  except json.JSONDecodeError as e:
    raise DataError(
        f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
  except RecursionError:
    raise DataError(f"{path}: {what} JSON nested too deeply to read") from None
  except ValueError as e:  # e.g. an integer past Python's digit limit
    if isinstance(e, DataError):  # a key given twice
      raise
    raise DataError(f"{path}: {what} JSON unreadable: {e}") from None
  if _deeper_than(data, MAX_JSON_DEPTH):  # no reader needs more; copies would recurse
    raise DataError(f"{path}: {what} JSON nested deeper than {MAX_JSON_DEPTH} levels")
  if _SURROGATE_ESCAPE.search(text):  # a pair is one character; a lone half is no text
    try:
      json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
      raise DataError(f"{path}: {what} JSON holds a string that is not valid Unicode (a "
                      f"lone surrogate escape {e.object[e.start:e.end]!r})") from None
  return data


# The deepest JSON any reader takes is a few levels (ActivityNet: database,
# video, annotations, annotation, segment); anything deeper is refused.
MAX_JSON_DEPTH = 64


def _deeper_than(data: Any, limit: int) -> bool:
  """Whether lists and objects nest deeper than ``limit`` (iteratively: no recursion)."""
  stack = [(data, 1)]
  while stack:
    node, depth = stack.pop()
    if isinstance(node, (dict, list)):
      if depth > limit:
        return True
      children = node.values() if isinstance(node, dict) else node
      stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
  return False


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _unique_keys(path: str, pairs: list) -> dict:
  """A JSON object, refusing a key given twice (json would keep the last silently)."""
  out = {}
  for key, value in pairs:
    if key in out:
      raise DataError(f"{path}: duplicate key {key!r} in a JSON object (an id or a "
                      "field given twice)")
    out[key] = value
  return out


def plain_name(name: str, *, what: str = "video id") -> str:
  """``name`` when it is one plain file name (an id, a label, a stream or subset name).

  A name that is empty, ``.`` or ``..``, holds a path separator or a NUL byte,
  or is absolute is refused: such a name is never a path.

  Raises:
    DataError: naming ``what`` and the name.
  """
  bad = (not isinstance(name, str) or name in ("", ".", "..") or "/" in name
         or "\\" in name or "\x00" in name or os.path.isabs(name) or not _encodable(name))
  if bad:
    raise DataError(f"{what} {name!r}: not usable as a file name (an id must be one "
                    "plain name: no '/', '\\\\', '..' or absolute path)")
  return name


def _encodable(name: str) -> bool:
  """A file name must be valid Unicode (a lone surrogate is not)."""
  try:
    name.encode("utf-8")
  except UnicodeEncodeError:
    return False
  return all(ord(c) <= 0x10FFFF for c in name)  # numpy's '<U' can hold any 32-bit value


def within(inner: str, outer: str) -> bool:
  """Whether real path ``inner`` is ``outer`` or lies inside it (both from
  ``os.path.realpath``)."""
  return inner == outer or inner.startswith(outer.rstrip(os.sep) + os.sep)


def child_path(folder: str, name: str, suffix: str = "", *, what: str = "video id") -> str:
  """``folder/<name><suffix>`` for a name read from an input file (an id, a label):
  :func:`plain_name`, so nothing read or written through this stays outside
  ``folder``.

  Raises:
    DataError: naming ``what`` and the name.
  """
  return os.path.join(folder, plain_name(name, what=what) + suffix)


def read_lines(path: str, what: str) -> list[str]:
  """The lines of the UTF-8 text file ``path``.

  Raises:
    DataError: one line naming ``path`` and ``what`` it is: missing, unreadable
      or not UTF-8.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().splitlines()
  except FileNotFoundError:
    raise DataError(f"{path}: {what} not found") from None
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: cannot read {what}: {e}") from None
