"""Guard: file operations in the library, the converters and the binaries go through tf.io.gfile.

Why: TPU and multi-host users must keep logdirs, datasets and exports on `gs://`. Python's own file
calls only reach the local disk, and fail silently there: `os.makedirs("gs://b/run")` makes a local
folder `gs:`, `os.path.abspath("ram://x")` becomes `<cwd>/ram:/x` (issue 11). `tf.io.gfile` handles
every filesystem TensorFlow has registered and raises for a scheme it does not know; atomic writes go
through `deeplab_tf/io_utils.py`. This cheap grep keeps new direct calls out; the ram:// tests beside
each module check the behaviour. It cannot see file objects handed to other libraries (Pillow, scipy,
NumPy): those get a `tf.io.gfile.GFile`, which review and the ram:// tests check.

A line that must touch the local disk on purpose (e.g. locating the package's own files) ends with
`# not-gfile: <reason>`.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

DIRECT_FILE_CALL = re.compile(
    r"\bos\.(makedirs|mkdir|remove|unlink|rename|replace|listdir|scandir|walk|rmdir|stat)\("
    r"|\bos\.path\.(exists|isfile|isdir|getsize|getmtime|abspath|realpath)\("
    r"|\bshutil\.|\bglob\.i?glob\(|\btempfile\.|\bpathlib\b"
    r"|(?<![.\w])open\(")

# Files (or folders, ending in "/") allowed to call the local filesystem directly, and why.
ALLOWED = {
    # The one home of atomic writes and of the local scratch folder (tarfile extraction).
    "deeplab_tf/io_utils.py": "the gfile helpers themselves",
    # Owned by other rooms at the time of writing (issue 11's trainer, issue 9's export); remove each
    # entry when its module is converted.
    "deeplab_tf/export.py": "pending: export (issue 9)",
    "deeplab_tf/bin/export_model.py": "pending: export (issue 9)",
    "deeplab_tf/bin/predict.py": "pending: export (issue 9)",
}


def _sources():
  for top in ("deeplab_tf", "datasets"):
    for folder, _, files in os.walk(os.path.join(ROOT, top)):
      for name in sorted(files):
        if name.endswith(".py"):
          yield os.path.relpath(os.path.join(folder, name), ROOT)


def direct_file_calls(text):
  """(line number, line) of each direct local-filesystem call outside comments and docstring prose."""
  found = []
  for number, line in enumerate(text.splitlines(), start=1):
    code = line.split("#", 1)[0]
    if DIRECT_FILE_CALL.search(code) and "# not-gfile:" not in line:
      found.append((number, line.strip()))
  return found


def test_the_pattern_catches_what_it_should():
  bad = ['os.makedirs(d, exist_ok=True)', 'with open(p) as f:', 'shutil.rmtree(d)', 'glob.glob(p)',
         'os.path.isfile(p)', 'folder = os.path.dirname(os.path.abspath(path))', 'tempfile.mkdtemp()']
  good = ['tf.io.gfile.makedirs(d)', 'with tf.io.gfile.GFile(p) as f:', 'Image.open(f)',
          'os.path.join(a, b)', 'os.path.basename(p)', '# os.makedirs is not used', 'x.open(y)',
          'REPO = os.path.abspath(__file__)  # not-gfile: own source']
  assert [len(direct_file_calls(line)) for line in bad] == [1] * len(bad)
  assert [len(direct_file_calls(line)) for line in good] == [0] * len(good)


def _allowed(path):
  return any(path == entry or (entry.endswith("/") and path.startswith(entry)) for entry in ALLOWED)


@pytest.mark.parametrize("path", [p for p in _sources() if not _allowed(p)])
def test_no_direct_file_calls(path):
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    calls = direct_file_calls(f.read())
  assert not calls, (f"{path} calls the local filesystem directly; use tf.io.gfile or "
                     f"deeplab_tf/io_utils.py (atomic writes) so gs:// works:\n" +
                     "\n".join(f"  line {n}: {line}" for n, line in calls))
