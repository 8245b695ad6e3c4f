"""The reference comparisons (tests marked `reference`) under both oneDNN settings in one `make test`.

This process runs them under its own setting (TensorFlow's default, oneDNN on, unless
TF_ENABLE_ONEDNN_OPTS=0); here they run again in a subprocess under the other one. oneDNN changes the
order of float sums, so near-tied labels can differ between the two (`tie_aware`'s rule covers it).
"""
import os
import re
import subprocess
import sys

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def reference_test_files():
  """The test files using the `reference` marker (only these are collected, to save time)."""
  found = []
  for root, _, names in os.walk(TESTS_DIR):
    for name in names:
      if name.startswith("test_") and name.endswith(".py") and name != os.path.basename(__file__):
        with open(os.path.join(root, name)) as f:
          if "pytest.mark.reference" in f.read():
            found.append(os.path.join(root, name))
  return sorted(found)


def onednn_enabled_here() -> bool:
  """Whether this process's TensorFlow uses oneDNN (its default depends on the platform)."""
  try:
    from tensorflow.python.util import _pywrap_util_port
    return bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0"


@pytest.mark.parametrize("setting", ["0", "1"], ids=["onednn_off", "onednn_on"])
def test_reference_comparisons_under_onednn(setting):
  if (setting == "1") == onednn_enabled_here():
    pytest.skip(f"this process runs with TF_ENABLE_ONEDNN_OPTS={setting}: its reference tests ran here")
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting}
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-m", "reference", "-p", "no:cacheprovider",
       *reference_test_files()],
      env=env, cwd=os.path.dirname(TESTS_DIR), capture_output=True, text=True, timeout=900)
  summary = result.stdout[-3000:] + result.stderr[-2000:]
  assert result.returncode == 0, summary
  passed = re.search(r"(\d+) passed", result.stdout)
  assert passed and int(passed.group(1)) >= 1, summary
