"""deeplab_convert_checkpoint on a broken archive: one line naming the file (exit 2), no traceback."""
import gzip
import io
import os
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _truncated_tar_gz(path):
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as archive:
    data = os.urandom(64 * 1024)
    info = tarfile.TarInfo("deeplab/model.ckpt.data-00000-of-00001")
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))
  compressed = gzip.compress(buffer.getvalue())
  path.write_bytes(compressed[:len(compressed) // 2])  # an interrupted download


@pytest.mark.parametrize("kind", ["truncated", "not_a_tar"])
def test_broken_archive_is_one_line_naming_it(tmp_path, kind):
  archive = tmp_path / "deeplabv3_pascal_train_aug_2018_01_04.tar.gz"
  if kind == "truncated":
    _truncated_tar_gz(archive)
  else:
    archive.write_text("<html>404 Not Found</html>")
  done = subprocess.run(
      [sys.executable, "-m", "deeplab_tf.bin.convert_checkpoint", f"--checkpoint_path={archive}",
       f"--output_dir={tmp_path / 'out'}", "--model_variant=mobilenet_v2", "--num_classes=2"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, check=False,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT))
  assert done.returncode == 2, done.stderr[-3000:]
  assert "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("convert_checkpoint.py: error: --checkpoint_path ") and str(archive) in last, last
  assert "download it again" in last
  assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
