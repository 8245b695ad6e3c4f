"""Predictions run the network through one cached `tf.function` with bounded retracing."""
import gc
import weakref

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf import EvalOptions, ModelOptions, build_deeplab
from deeplab_tf.evaluation import inference


def _model():
  keras.utils.set_random_seed(0)
  return build_deeplab(ModelOptions(model_variant="mobilenet_v2", num_classes=3))


def test_predictions_use_one_cached_function_and_equal_the_eager_network():
  model = _model()
  network = inference.low_resolution_logits_model(model)
  images = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype(np.float32)
  probabilities = inference.predict_probabilities(model, images).numpy()
  function = inference.compiled_network(network)
  assert inference.compiled_network(network) is function
  assert function.experimental_get_tracing_count() == 1
  # The same numbers run eagerly (float32 ops fused in another order: ulps of values <= 1).
  tf.config.run_functions_eagerly(True)
  try:
    eager = inference.predict_probabilities(model, images).numpy()
  finally:
    tf.config.run_functions_eagerly(False)
  np.testing.assert_allclose(probabilities, eager, atol=1e-5)
  assert function.experimental_get_tracing_count() == 1  # The eager run traced nothing.


def test_retracing_is_bounded_across_image_sizes():
  model = _model()
  options = EvalOptions(eval_scales=(0.75, 1.0), add_flipped_images=True)
  rng = np.random.default_rng(1)
  for size in [(33, 33), (41, 29), (17, 49), (65, 33)]:
    images = rng.uniform(0, 255, (1,) + size + (3,)).astype(np.float32)
    out = inference.predict_probabilities(model, images, options)
    assert tuple(out.shape) == (1,) + size + (3,)
  function = inference.compiled_network(inference.low_resolution_logits_model(model))
  # 8 distinct input shapes (4 sizes x 2 scales): one exact trace, then one relaxed trace for all.
  assert function.experimental_get_tracing_count() <= 2


def test_the_cache_does_not_keep_models_alive():
  model = _model()
  inference.predict_labels(model, np.zeros((1, 17, 17, 3), np.float32))
  assert inference.low_resolution_logits_model(model) in inference._COMPILED_NETWORKS  # pylint: disable=protected-access
  reference = weakref.ref(model)
  del model
  gc.collect()
  assert reference() is None


def test_compiled_predictions_follow_weight_changes():
  """The compiled network folds BN from the live variables: a later change of a BN is seen."""
  model = _model()
  rng = np.random.default_rng(2)
  for weight in model.weights:  # Weights whose logits are not all ~0 (unlike the initial ones).
    positive = "variance" in weight.path or "gamma" in weight.path
    weight.assign(rng.uniform(0.5, 1.5, weight.shape) if positive else
                  0.3 * rng.standard_normal(weight.shape))
  images = rng.uniform(0, 255, (1, 33, 33, 3)).astype(np.float32)
  before = inference.predict_probabilities(model, images).numpy()
  bn = model.get_layer("MobilenetV2.Conv.BatchNorm")
  bn.gamma.assign(bn.gamma * 3.0)
  bn.moving_mean.assign(bn.moving_mean + 0.5)
  after = inference.predict_probabilities(model, images).numpy()
  # Expected: the unfolded model's own logits (with its final align-corners upsampling), softmaxed.
  expected = tf.nn.softmax(model(images, training=False)).numpy()
  assert np.abs(after - before).max() > 1e-3
  np.testing.assert_allclose(after, expected, atol=1e-5)


def test_xla_compiled_inference_equals_the_plain_graph():
  model = _model()
  rng = np.random.default_rng(2)
  # He-scaled random kernels and identity BN: logits of order 1 that differ between pixels and classes
  # (a fresh model's are ~1e-10, all near ties).
  for weight in model.weights:
    name, shape = weight.path, tuple(weight.shape)
    if "moving_variance" in name or "gamma" in name:
      value = np.ones(shape)
    elif "moving_mean" in name or "beta" in name or "bias" in name:
      value = np.zeros(shape)
    else:
      fan_in = np.prod(shape[:2]) if "depthwise" in name else np.prod(shape[:-1])
      value = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
    weight.assign(value.astype(np.float32))
  network = inference.low_resolution_logits_model(model)
  images = rng.uniform(0, 255, (1, 33, 33, 3)).astype(np.float32)
  xla = inference.compiled_network(network, jit_compile=True)
  assert xla is not inference.compiled_network(network) and xla is inference.compiled_network(network, True)
  assert "HloModule" in xla.experimental_get_compiler_ir(tf.constant(images))(stage="hlo")
  plain_logits = inference.compiled_network(network)(images).numpy()
  xla_logits = xla(images).numpy()
  assert np.ptp(plain_logits) > 0 and np.all(np.isfinite(plain_logits))
  # XLA fuses and reorders float32 sums: measured 3e-6 of the largest logit, where the eager network
  # (BN not folded, another order again) differs from the plain graph by 9e-6; 2e-5 bounds both.
  np.testing.assert_allclose(xla_logits, plain_logits, atol=2e-5 * np.abs(plain_logits).max())
  options = EvalOptions(eval_scales=(0.75, 1.0), add_flipped_images=True)
  plain = inference.predict_probabilities(model, images, options).numpy()
  compiled = inference.predict_probabilities(model, images, options.replace(jit_compile=True)).numpy()
  np.testing.assert_allclose(compiled, plain, atol=1e-5)
