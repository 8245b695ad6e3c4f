"""Two logical CPU devices for the in-process MirroredStrategy tests.

Logical devices must be configured before TensorFlow initialises its devices, i.e. before any test
runs an op; pytest imports this file while collecting tests/training, before any test runs.
"""
import pytest
import tensorflow as tf
from absl import flags

try:
  _cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # Devices already initialised by an earlier test module; the test says so.
  pass


@pytest.fixture
def parse_flags():
  """Parses deeplab_train's flags from `*args` (the binary's module must be imported); unparsed after."""
  def parse(*args):
    flags.FLAGS(["deeplab_train", *args])
  yield parse
  flags.FLAGS.unparse_flags()
