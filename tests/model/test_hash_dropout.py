"""HashDropout: the same mask with and without XLA, Bernoulli(1 - rate) keep rate, identity at inference."""
import numpy as np
import tensorflow as tf

from deeplab_tf.model import layers


def test_mask_is_the_same_compiled_and_not_and_drops_rate_of_the_units():
  dropout = layers.HashDropout(0.1, seed=3)
  x = tf.ones([4, 17, 17, 64])
  state = dropout.seed_generator.state.numpy()
  plain = tf.function(lambda v: dropout(v, training=True))(x).numpy()
  dropout.seed_generator.state.assign(state)
  compiled = tf.function(lambda v: dropout(v, training=True), jit_compile=True)(x).numpy()
  np.testing.assert_array_equal(plain, compiled)
  # Kept units are scaled by 1 / 0.9; 73,984 draws: the kept share's standard deviation is 0.0011.
  kept = plain != 0
  np.testing.assert_allclose(plain[kept], 1 / 0.9, rtol=1e-6)
  assert abs(kept.mean() - 0.9) < 0.006
  # The next call draws another mask; inference is the identity.
  again = dropout(x, training=True).numpy()
  assert (again != plain).mean() > 0.1
  np.testing.assert_array_equal(dropout(x, training=False).numpy(), x.numpy())
