"""Atomic file output: nothing half-written is ever left under a final name.

Every writer of the project that produces a single file (options JSON, metrics, descriptors, PNGs,
`.keras` models) goes through `atomic_output`: the content is written to a hidden temporary file in
the destination folder, renamed over the final name only once complete, and removed on any error
(a crash or kill leaves at most a `.<name>.*.tmp` file, never a truncated `<name>`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it to `path` when the block completes.

  Args:
    path: the final file name; its folder is created if needed.
    suffix: ending of the temporary name (some writers choose the format from it, e.g. ".keras").

  Yields:
    The temporary path to write to.

  Raises:
    Whatever the block raises; the temporary file is removed first.
  """
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
  os.close(fd)
  try:
    yield tmp
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def atomic_write_text(path: str, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
  with atomic_output(path) as tmp:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
  return path
