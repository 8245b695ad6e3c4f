"""File output on any filesystem, atomically: nothing half-written is ever left under a final name.

Every file operation of the project goes through `tf.io.gfile`, so a path may be local or a URL of any
filesystem TensorFlow has registered: `gs://` (Cloud Storage, what TPU and multi-host jobs must use),
`ram://` (in memory, used by the tests), or `s3://`/`hdfs://` once tensorflow-io registers them. A
scheme TensorFlow does not know fails loudly (`tf.errors.UnimplementedError`, naming the path) instead
of becoming a local folder called `gs:` (what `os.makedirs("gs://b/x")` does).

Every writer that produces a single file (options JSON, metrics, descriptors, PNGs, `.keras` models)
goes through `atomic_output` or `atomic_open`: the content is written to a hidden temporary file in the
destination folder, renamed over the final name only once complete, and removed on any error (a crash
or kill leaves at most a `.<name>.*.tmp` file, never a truncated `<name>`). On a local disk the rename
is atomic (rename(2)); on object stores, where TensorFlow renames by copy and delete, the final object
still appears only once complete.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
import uuid
from typing import IO, Iterator

import tensorflow as tf


def has_scheme(path: str) -> bool:
  """True for a URL such as `gs://bucket/x` or `ram://x`, False for a local path."""
  return "://" in path


def dirname(path: str) -> str:
  """The folder of `path`, for local paths and URLs alike (`gs://b/x/f` -> `gs://b/x`)."""
  if not has_scheme(path):
    return os.path.dirname(path)
  folder = posixpath.dirname(path)
  return folder if "://" in folder else path[:path.index("://") + 3]  # "ram://f" -> "ram://"


def basename(path: str) -> str:
  """The last component of `path`, for local paths and URLs alike."""
  return posixpath.basename(path) if has_scheme(path) else os.path.basename(path)


def isdir(path: str) -> bool:
  """`tf.io.gfile.isdir(path)`, also exact on TensorFlow's in-memory `ram://` filesystem.

  That filesystem answers "is a folder" for any string prefix of a stored name (with
  `ram://d/ckpt-3.index` stored, `ram://d/ckpt-3` and `ram://d/ckpt` are "folders"), which would
  make a checkpoint prefix look like a log directory; there the name must also be listed in its parent.
  """
  if not tf.io.gfile.isdir(path):
    return False
  if not path.startswith("ram://"):
    return True
  path = path.rstrip("/")
  parent = dirname(path)
  return parent == path or basename(path) in tf.io.gfile.listdir(parent)


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ".tmp") -> Iterator[str]:
  """Yields a temporary path beside `path`; renames it to `path` when the block completes.

  The block writes the temporary path with `tf.io.gfile` or any writer that accepts such a path
  (Keras 3's `model.save` does, copying through a local file for URLs).

  Args:
    path: the final file name, local or a URL; its folder is created if needed.
    suffix: ending of the temporary name (some writers choose the format from it, e.g. ".keras").

  Yields:
    The temporary path to write to (same folder, same filesystem as `path`).

  Raises:
    tf.errors.UnimplementedError: `path` has a scheme no TensorFlow filesystem handles.
    Whatever the block raises; the temporary file is removed first.
  """
  folder = dirname(path)
  if folder:
    tf.io.gfile.makedirs(folder)
  name = f".{basename(path)}.{uuid.uuid4().hex[:12]}{suffix}"
  tmp = posixpath.join(folder, name) if has_scheme(path) else os.path.join(folder, name)
  try:
    yield tmp
    tf.io.gfile.rename(tmp, path, overwrite=True)
  except BaseException:
    with contextlib.suppress(tf.errors.OpError):
      if tf.io.gfile.exists(tmp):
        tf.io.gfile.remove(tmp)
    raise


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "wb") -> Iterator[IO]:
  """`tf.io.gfile.GFile(path, mode)` written under a temporary name and renamed when complete.

  Args:
    path: the final file name, local or a URL; its folder is created if needed.
    mode: "wb" (bytes) or "w" (text, UTF-8).

  Yields:
    A writable file object (Pillow, NumPy and `json.dump` write to it).
  """
  if mode not in ("w", "wb"):
    raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', got {mode!r}.")
  with atomic_output(path) as tmp:
    with tf.io.gfile.GFile(tmp, mode) as f:
      yield f


def atomic_write_text(path: str, text: str) -> str:
  """Writes `text` (UTF-8) to `path` atomically; returns `path`."""
  with atomic_open(path, "w") as f:
    f.write(text)
  return path


def read_text(path: str) -> str:
  """The UTF-8 text of `path`, local or a URL.

  Raises:
    FileNotFoundError: nothing at `path`.
  """
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: no such file.")
  with tf.io.gfile.GFile(path, "r") as f:
    return f.read()


@contextlib.contextmanager
def local_scratch_dir(prefix: str = "deeplab_") -> Iterator[str]:
  """A local temporary folder, removed when the block exits, for tools that only write local files
  (e.g. `tarfile` extraction). The one place the project touches the local disk directly."""
  folder = tempfile.mkdtemp(prefix=prefix)
  try:
    yield folder
  finally:
    shutil.rmtree(folder, ignore_errors=True)
