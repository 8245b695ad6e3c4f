"""Atomic outputs: the final name appears only complete; a failure leaves nothing behind."""
import os

import pytest

from deeplab_tf.io_utils import atomic_output, atomic_write_text


def test_text_is_written_and_no_temporary_is_left(tmp_path):
  path = tmp_path / "sub" / "metrics.json"
  assert atomic_write_text(str(path), "{}\n") == str(path)
  assert path.read_text() == "{}\n"
  assert os.listdir(path.parent) == ["metrics.json"]


def test_a_failure_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path):
  path = tmp_path / "model.keras"
  path.write_text("old")
  with pytest.raises(RuntimeError, match="killed"):
    with atomic_output(str(path), suffix=".keras") as tmp:
      assert tmp.endswith(".keras") and os.path.dirname(tmp) == str(tmp_path)
      with open(tmp, "w") as f:
        f.write("half")
      raise RuntimeError("killed")
  assert path.read_text() == "old"
  assert os.listdir(tmp_path) == ["model.keras"]
