"""Atomic outputs: the final name appears only complete; a failure leaves nothing behind."""
import os

import pytest

import tensorflow as tf

from deeplab_tf.io_utils import (atomic_open, atomic_output, atomic_write_text, basename, dirname, isdir,
                                 read_text)


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


def test_ram_filesystem_gets_the_file_and_no_local_folder(tmp_path, monkeypatch):
  # os.makedirs("ram://x") would quietly make a local folder "ram:"; gfile writes to TF's in-memory
  # filesystem instead.
  monkeypatch.chdir(tmp_path)
  path = "ram://io_utils_test/sub/metrics.json"
  assert atomic_write_text(path, '{"miou": 1}\n') == path
  assert read_text(path) == '{"miou": 1}\n'
  assert tf.io.gfile.listdir("ram://io_utils_test/sub") == ["metrics.json"]
  with atomic_open("ram://io_utils_test/sub/bytes.bin") as f:
    f.write(b"\x00\x01")
  with tf.io.gfile.GFile("ram://io_utils_test/sub/bytes.bin", "rb") as f:
    assert f.read() == b"\x00\x01"
  assert os.listdir(tmp_path) == []


def test_a_failure_on_ram_removes_the_temporary():
  folder = "ram://io_utils_test/failure"
  atomic_write_text(folder + "/a.json", "old")
  with pytest.raises(RuntimeError, match="killed"):
    with atomic_open(folder + "/a.json", "w") as f:
      f.write("half")
      raise RuntimeError("killed")
  assert tf.io.gfile.listdir(folder) == ["a.json"]
  assert read_text(folder + "/a.json") == "old"


def test_unknown_scheme_fails_loudly(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(tf.errors.UnimplementedError, match="nosuchfs"):
    atomic_write_text("nosuchfs://bucket/x.json", "{}")
  assert os.listdir(tmp_path) == []


def test_dirname_and_basename_of_urls_and_local_paths():
  assert dirname("gs://b/x/f.json") == "gs://b/x"
  assert dirname("ram://f.json") == "ram://"
  assert dirname("f.json") == ""
  assert dirname("/a/b/f.json") == "/a/b"
  assert basename("gs://b/x/f.json") == "f.json"


def test_relative_path_writes_in_the_working_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  atomic_write_text("rel.json", "{}")
  assert os.listdir(tmp_path) == ["rel.json"]


def test_read_text_of_a_missing_file_names_it():
  with pytest.raises(FileNotFoundError, match="ram://io_utils_test/none.json"):
    read_text("ram://io_utils_test/none.json")


def test_isdir_is_exact_on_ram():
  # TF's ram:// answers gfile.isdir for any string prefix of a stored name; io_utils.isdir does not.
  atomic_write_text("ram://io_utils_test/isdir/ckpt-3.index", "x")
  assert tf.io.gfile.isdir("ram://io_utils_test/isdir/ckpt-3")  # The quirk worked around.
  assert not isdir("ram://io_utils_test/isdir/ckpt-3")
  assert not isdir("ram://io_utils_test/isdir/ckpt-3.index")
  assert isdir("ram://io_utils_test/isdir") and isdir("ram://io_utils_test/isdir/")
  assert not isdir("ram://io_utils_test/none")
