"""Functions stay short enough to read: no function of the package runs past
``MAX_LINES`` lines, not counting its docstring (the docstrings cite the
paper's equations and may be long). ``config.base_config`` is exempt: it is
the list of every field with its default, one per line, and reads best whole."""

import ast
import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = sorted(os.path.relpath(p, REPO)
                 for p in glob.glob(os.path.join(REPO, "jaxseg", "**", "*.py"), recursive=True))
EXEMPT = {("jaxseg/config.py", "base_config")}
MAX_LINES = 60


def _code_lines(node: ast.FunctionDef) -> int:
  """Lines of ``node`` from its first decorator (or ``def``) to its end, less the docstring."""
  first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
  lines = node.end_lineno - first + 1
  if ast.get_docstring(node, clean=False) is not None:
    doc = node.body[0]
    lines -= doc.end_lineno - doc.lineno + 1
  return lines


@pytest.mark.parametrize("module", MODULES)
def test_no_function_is_too_long(module):
  path = os.path.join(REPO, module)
  with open(path, encoding="utf-8") as f:
    tree = ast.parse(f.read(), path)
  long = [f"{module}:{node.lineno} {node.name}: {_code_lines(node)} lines"
          for node in ast.walk(tree)
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and (module, node.name) not in EXEMPT and _code_lines(node) > MAX_LINES]
  assert not long, "\n".join(long)
