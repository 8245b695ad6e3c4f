"""Two logical CPU devices for the in-process MirroredStrategy tests.

Logical devices must be configured before TensorFlow initialises its devices, i.e. before any test
runs an op; pytest imports this file while collecting tests/training, before any test runs.
"""
import tensorflow as tf

try:
  _cpus = tf.config.list_physical_devices("CPU")
  tf.config.set_logical_device_configuration(
      _cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)
except RuntimeError:  # Devices already initialised by an earlier test module; the test says so.
  pass
