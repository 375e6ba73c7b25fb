"""The argument parser of jaxseg's argparse commands (score, report, extract,
convert, classify, wtalc_convert): a usage error is one line.

A bad or missing argument prints ``error: <what>; see <prog> --help`` on
stderr and exits with status 2, as every other user error of jaxseg does,
instead of argparse's usage block.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class ArgumentParser(argparse.ArgumentParser):
  """``argparse.ArgumentParser`` whose errors are one ``error:`` line, exit 2."""

  def error(self, message: str):  # argparse's hook for every usage error
    print(f"error: {message}; see {self.prog} --help", file=sys.stderr)
    sys.exit(EXIT_USAGE)
