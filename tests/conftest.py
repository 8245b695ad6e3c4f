"""Test-wide settings: quiet TF, and the `reference` marker.

oneDNN is left at TensorFlow's default (on for x86 CPUs), which users run; run the suite with
TF_ENABLE_ONEDNN_OPTS=0 to have it off. Tests comparing with outputs computed elsewhere (the original's
reference outputs) are marked `reference` and follow `tie_aware`'s rule; `test_onednn.py` reruns them in
a subprocess under the other oneDNN setting, so that one `make test` checks both. This must run before
TensorFlow is imported.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
  config.addinivalue_line(
      "markers", "reference: compares with reference outputs of the original; rerun by test_onednn.py "
      "under the other oneDNN setting")
