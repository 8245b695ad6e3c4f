"""The edge of every binary: absl's `app.run`, with a user's mistake printed as one line.

`run(main)` is what each console script calls. A `deeplab_tf.errors.UserError` or absl
`app.UsageError` raised by `main` (or by flag validation) ends the process with
`<program>: error: <message>` on stderr and exit status 2, no traceback; any other exception is a bug
and keeps absl's traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List

from absl import app

from deeplab_tf.errors import UserError


def _program() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "deeplab_tf"


def fail(message: str, exit_code: int = 2) -> None:
  """Prints `<program>: error: <message>` (its first line only) to stderr and exits."""
  first = str(message).strip().splitlines()[0] if str(message).strip() else "invalid input"
  print(f"{_program()}: error: {first}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def run(main: Callable[[List[str]], object]) -> None:
  """`app.run(main)` with `UserError` / `app.UsageError` from `main` as one line, exit status 2."""

  def guarded(argv):
    try:
      return main(argv)
    except (UserError, app.UsageError) as e:
      fail(str(e))
  app.run(guarded)
