"""Test helper: copies local fixture trees onto TensorFlow's in-memory `ram://` filesystem.

Tests run the library on `ram://` to prove every file operation goes through `tf.io.gfile` (what `gs://`
users rely on): a stray `open`/`os.makedirs` would miss the files there, or write a local `ram:` folder.
"""
import os

import tensorflow as tf


def copy_to_ram(local_dir, ram_dir, keep=lambda relative_path: True):
  """Copies the files under `local_dir` whose relative path passes `keep` to `ram_dir`; returns `ram_dir`."""
  local_dir = str(local_dir)
  for folder, _, files in os.walk(local_dir):
    for name in files:
      relative = os.path.relpath(os.path.join(folder, name), local_dir)
      if keep(relative):
        target = f"{ram_dir}/{relative}"
        tf.io.gfile.makedirs(os.path.dirname(target))
        tf.io.gfile.copy(os.path.join(folder, name), target, overwrite=True)
  return ram_dir
