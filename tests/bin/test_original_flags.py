"""Every research/deeplab flag is accepted, renamed or refused by our binaries as docs/FLAGS.md states.

The statuses live in `deeplab_tf.bin.original_flags.ROWS` (docs/FLAGS.md is generated from them). Each of
our four binaries is imported in a fresh process, so that a flag defined by another binary's module does
not count; the defaults are compared after parsing the original's default with our flag's own parser.
"""
import json
import os
import subprocess
import sys

import pytest
from absl import flags
from absl.testing import flagsaver

from deeplab_tf.bin import original_flags
from deeplab_tf.bin.original_flags import NOT_APPLICABLE, ROWS, SAME

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")

# The original's flags per file, counted from its DEFINE_* calls (tensorflow/models master).
ORIGINAL_COUNTS = {"common.py": 33, "train.py": 48, "eval.py": 15, "vis.py": 17, "export_model.py": 10}

_PROBE = r"""
import importlib, json, sys
from absl import flags
from deeplab_tf.bin import original_flags
importlib.import_module("deeplab_tf.bin." + sys.argv[1])
FLAGS = flags.FLAGS
out = {}
for row in original_flags.ROWS:
  if row.name not in FLAGS:
    continue
  flag = FLAGS[row.name]
  try:
    expected = None if row.default is None else flag._parse(row.default)
  except Exception as e:  # the original's default does not even parse here
    expected = "unparsable: %s" % e
  out[row.file + ":" + row.name] = {"default": flag.default, "expected": expected}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def binaries():
  """{binary: {"file:flag": {"default", "expected"}}} of each binary imported alone."""
  result = {}
  for binary in original_flags.ALL_BINARIES:
    done = subprocess.run([sys.executable, "-c", _PROBE, binary], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), check=True, timeout=300)
    result[binary] = json.loads(done.stdout.strip().splitlines()[-1])
  return result


def test_every_flag_of_the_original_files_has_one_row():
  for file, count in ORIGINAL_COUNTS.items():
    names = [row.name for row in ROWS if row.file == file]
    assert len(names) == count == len(set(names)), file


def _problem(row, probed):
  """Why `row` does not hold in one binary's flags, or None."""
  key = f"{row.file}:{row.name}"
  if key not in probed:
    return "not defined"
  if row.status == NOT_APPLICABLE and row.kind is None and not any(
      r.name == row.name and r.kind for r in ROWS):
    return None  # our flag of that name, documented as differing
  value = probed[key]
  if value["default"] != value["expected"]:
    return f"default {value['default']!r}, the original's {row.default!r} parses to {value['expected']!r}"
  return None


@pytest.mark.parametrize("row", ROWS, ids=[f"{r.file}:{r.name}" for r in ROWS])
def test_each_binary_accepts_the_flag_with_the_original_default(row, binaries):
  problems = {b: _problem(row, binaries[b]) for b in row.binaries}
  problems = {b: p for b, p in problems.items() if p}
  if problems and row.room:
    pytest.skip(f"built by room {row.room}, not merged here: {problems}")
  assert not problems, f"--{row.name} ({row.file}, {row.status}): {problems}"


@pytest.mark.parametrize("row", [r for r in ROWS if r.kind], ids=lambda r: r.name)
def test_refused_values_stop_with_the_documented_message(row):
  other = {"integer": 7, "boolean": not row.default, "float": 0.5, "string": "other",
           "multi_float": [0.5, 1.0]}[row.kind]
  with flagsaver.flagsaver():
    with pytest.raises(flags.IllegalFlagValueError) as raised:
      setattr(flags.FLAGS, row.name, other)
  assert row.message in str(raised.value)
  assert (row.accepted or row.status) in row.message


def test_a_refused_flag_stops_the_binary_at_parse_time():
  done = subprocess.run([sys.executable, "-m", "deeplab_tf.bin.train", "--num_clones=2"], capture_output=True,
                        text=True, cwd=ROOT, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), timeout=300)
  assert done.returncode != 0
  assert "--strategy=mirrored --num_gpus=N" in done.stderr


def test_docs_flags_md_is_generated_from_the_rows():
  with open(os.path.join(ROOT, "docs", "FLAGS.md"), encoding="utf-8") as f:
    assert f.read() == original_flags.render_markdown(), (
        "docs/FLAGS.md is stale: python -m deeplab_tf.bin.original_flags docs/FLAGS.md")


def test_counts_add_up():
  total = original_flags.counts()
  assert sum(total[s] for s in original_flags.STATUSES) == len(ROWS) == sum(ORIGINAL_COUNTS.values())
  assert total[SAME] > total["refused"]
