"""Test-wide settings: quiet TF, oneDNN off for bit-stable comparisons against the reference outputs.

The reference outputs in tests/testdata were produced with oneDNN off (../shared/reference/README.md);
with it on, near-tied argmax pixels can flip. This must run before TensorFlow is imported.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
