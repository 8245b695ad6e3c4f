"""Converters under faults (issue 22): a full disk, a killed run's temporaries, file names that are not
UTF-8, --skip_bad_inputs leaving nothing or empty shards. Each ends in one message naming the file or
folder and what to do, with no temporary file left behind."""
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import VOC_NAMES, save, voc_crop
from datasets import build_data, build_folder_data
from datasets.build_data import InputError
from deeplab_tf.data import writer
from deeplab_tf.errors import UserError


def _pairs(tmp_path, n=4):
  images, labels = tmp_path / "images", tmp_path / "labels"
  for i in range(n):
    image, label = voc_crop(VOC_NAMES[i % len(VOC_NAMES)])
    save(str(images / f"img{i}.png"), image)
    save(str(labels / f"img{i}.png"), (label > 0).astype(np.uint8))
  return dict(image_folder=str(images), label_folder=str(labels), num_classes=2)


def _temporaries(folder):
  return sorted(n for n in tf.io.gfile.listdir(folder) if n.startswith(".tmp-") or n.endswith(".tmp"))


class _FullDiskWriter:
  """A TFRecordWriter on a full disk: the first write lands, the next raises ENOSPC, and so does close()."""

  def __init__(self, path):
    self._file = tf.io.gfile.GFile(path, "wb")
    self._writes = 0

  def write(self, record):
    self._writes += 1
    if self._writes > 1:
      raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")
    self._file.write(record)
    self._file.flush()

  def close(self):
    raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")


def test_full_disk_leaves_no_temporary_shard_and_names_the_folder(tmp_path, monkeypatch):
  out = str(tmp_path / "out")
  monkeypatch.setattr(tf.io, "TFRecordWriter", _FullDiskWriter)
  with pytest.raises(InputError, match=f"to {out} failed .*No space left on device.*Free space"):
    build_folder_data.convert(**_pairs(tmp_path), output_dir=out, num_shards=2, num_workers=1, progress=False)
  assert tf.io.gfile.listdir(out) == []  # no shard, no temporary


def test_next_run_removes_a_killed_runs_temporaries_and_keeps_a_live_ones(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                        text=True, check=True)
  dead_pid = int(dead.stdout)
  host = writer._temporary_prefix().split("@", 1)[1][:-1]  # pylint: disable=protected-access
  killed = out / f".tmp-{dead_pid}@{host}-0badf00d-train-00000.tfrecord"      # a SIGKILLed run, this host
  old = out / ".tmp-1a2b3c4d-train-00000-of-00002.tfrecord"                   # an older name, 2 hours old
  descriptor = out / ".custom.json.0123456789ab.tmp"                           # atomic_output's, 2 hours old
  live = out / f".tmp-{os.getpid()}@{host}-12345678-val-00000.tfrecord"        # a converter still writing
  for path in (killed, old, descriptor, live):
    path.write_bytes(b"partial")
  two_hours_ago = time.time() - 7200
  for path in (old, descriptor):
    os.utime(path, (two_hours_ago, two_hours_ago))
  report = build_folder_data.convert(**_pairs(tmp_path, 2), output_dir=str(out), num_workers=1, progress=False)
  assert _temporaries(str(out)) == [live.name]
  assert any("removed 3 temporary file(s)" in note for note in report.notes), report.notes
  assert report.splits["train"].num_examples == 2


def test_a_file_name_that_is_not_utf8_is_named(tmp_path):
  kwargs = _pairs(tmp_path, 2)
  with open(os.path.join(os.fsencode(kwargs["image_folder"]), b"caf\xe9.png"), "wb") as f:
    f.write(b"not read")
  with pytest.raises(InputError) as raised:
    build_folder_data.convert(**kwargs, output_dir=str(tmp_path / "out"), num_workers=1, progress=False)
  message = str(raised.value)
  assert "caf\\xe9.png" in message and kwargs["image_folder"] in message and "Rename it" in message
  assert "\n" not in message


def test_skip_bad_inputs_writes_no_empty_shard_and_refuses_an_empty_split(tmp_path):
  kwargs = _pairs(tmp_path, 4)
  for i in range(3):  # the first three inputs are bad: only img3 is left
    os.remove(os.path.join(kwargs["label_folder"], f"img{i}.png"))
  out = str(tmp_path / "out")
  report = build_folder_data.convert(**kwargs, output_dir=out, num_shards=4, skip_bad_inputs=True,
                                     num_workers=1, progress=False)
  assert len(report.splits["train"].skipped) == 3
  assert sorted(n for n in tf.io.gfile.listdir(out) if n.endswith(".tfrecord")) == [
      "train-00000-of-00001.tfrecord"]
  assert writer.count_records([os.path.join(out, "train-00000-of-00001.tfrecord")]) == 1
  os.remove(os.path.join(kwargs["label_folder"], "img3.png"))
  for check_only in (False, True):
    with pytest.raises(InputError, match="(No example was written|No example of split) .*'train'"):
      build_folder_data.convert(**kwargs, output_dir=str(tmp_path / "out2"), skip_bad_inputs=True,
                                check_only=check_only, num_workers=1, progress=False)
  assert _temporaries(str(tmp_path / "out2")) == []


def test_run_main_refusal_is_a_user_error_after_the_list(capsys):
  def refuse():
    raise build_data.ConversionError("Refused 2 bad input(s) in split 'train'; no shard of it was written "
                                     "(or pass --skip_bad_inputs to skip them):\n  - a.png: bad\n  - b.png: bad")
  with pytest.raises(UserError, match=r"^Refused 2 bad input\(s\) in split 'train'.* \(listed above\)\.$"):
    build_data.run_main(refuse)
  assert capsys.readouterr().err.splitlines() == ["  - a.png: bad", "  - b.png: bad"]
