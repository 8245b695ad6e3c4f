"""Multi-scale + flip averaging, eval padding and sliding windows against hand-computed probabilities.

The models here have logits we control, so the expected probabilities are written down by hand:
class 0 always has logit 0, class 1 a logit computed from the red channel (or, at output stride 2, a
fixed pattern), so p1 = sigmoid(logit). Real DeepLab models check the image-pooling window per scale,
uint8 inputs, and agreement with the model's own logits.
"""
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import reference_case as rc
from deeplab_tf import EvalOptions, ModelOptions, build_deeplab
from deeplab_tf.evaluation import inference
from deeplab_tf.image_ops import resize_bilinear_align_corners, scale_dimension


def sigmoid(x):
  return 1.0 / (1.0 + math.exp(-x))


def _two_class_model(class1_logit):
  images = keras.Input((None, None, 3))
  logit = keras.layers.Lambda(class1_logit)(images)
  logits = keras.layers.Lambda(lambda t: tf.concat([tf.zeros_like(t), t], axis=-1))(logit)
  return keras.Model(images, logits)


def per_pixel_model():
  """Logit of class 1 = red value of the same pixel."""
  return _two_class_model(lambda x: x[..., :1])


def cumsum_model():
  """Logit of class 1 = sum of the red values left of and at the pixel (not flip-equivariant)."""
  return _two_class_model(lambda x: tf.cumsum(x[..., :1], axis=2))


def global_mean_model():
  """Logit of class 1 = mean red value of the whole input / 100, at every pixel."""
  return _two_class_model(
      lambda x: tf.ones_like(x[..., :1]) * tf.reduce_mean(x[..., :1], axis=[1, 2], keepdims=True) / 100.0)


def _image(red_rows):
  red = np.asarray(red_rows, np.float32)
  return np.stack([red, np.zeros_like(red), np.zeros_like(red)], axis=-1)[None]


def test_flip_is_averaged_and_flipped_back_at_a_single_scale():
  model = cumsum_model()
  image = _image([[1, 1, 1]])
  plain = inference.predict_probabilities(model, image, EvalOptions())[0, 0, :, 1].numpy()
  np.testing.assert_allclose(plain, [sigmoid(1), sigmoid(2), sigmoid(3)], rtol=1e-6)
  # The flipped image's cumulative sums are [1, 2, 3] from the right: [3, 2, 1] once flipped back.
  both = inference.predict_probabilities(model, image, EvalOptions(add_flipped_images=True))
  np.testing.assert_allclose(
      both[0, 0, :, 1].numpy(),
      [(sigmoid(1) + sigmoid(3)) / 2, sigmoid(2), (sigmoid(3) + sigmoid(1)) / 2], rtol=1e-6)
  np.testing.assert_allclose(both.numpy().sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_scales_are_averaged(flip):
  # At scale 0.5 a 3x5 image becomes 2x3 (align_corners samples columns 0, 2, 4 -> red 0, 0, 0), so the
  # logits are 0 everywhere and p1 = 0.5; at scale 1 p1 = sigmoid(red). Flipping a per-pixel model
  # changes nothing.
  red = [0, 4, 0, 4, 0]
  image = _image([red] * 3)
  options = EvalOptions(eval_scales=(1.0, 0.5), add_flipped_images=flip)
  probabilities = inference.predict_probabilities(per_pixel_model(), image, options)
  assert probabilities.shape == (1, 3, 5, 2)
  expected = [(sigmoid(r) + 0.5) / 2 for r in red]
  for row in range(3):
    np.testing.assert_allclose(probabilities[0, row, :, 1].numpy(), expected, rtol=1e-6)
  labels = inference.predict_labels(per_pixel_model(), image, options)
  assert labels.dtype == tf.int32 and labels[0, 0].numpy().tolist() == [0, 1, 0, 1, 0]


def test_scale_dimension_is_the_originals_for_ints_and_tensors():
  assert scale_dimension(tf.constant([513, 5]), 0.75).numpy().tolist() == [385, 4]
  assert scale_dimension(tf.constant([513, 5]), 1.75).numpy().tolist() == [897, 8]
  assert [scale_dimension(513, 0.75), scale_dimension(513, 1 / 16), scale_dimension(129, 1.25 / 4)] == [
      385, 33, 41]


def alternating_stride2_model():
  """Logits at output stride 2 (`(size - 1) // 2 + 1` columns) whatever the image holds: class 1 has
  logit 4 at odd output columns and 0 at even ones."""
  def logit(x):
    subsampled = x[:, ::2, ::2, :1]
    pattern = 4.0 * tf.cast(tf.range(tf.shape(subsampled)[2]) % 2, tf.float32)
    return tf.zeros_like(subsampled) + pattern[None, None, :, None]
  return _two_class_model(logit)


def test_logits_are_brought_to_the_scale_1_size_before_the_image_size():
  # A 1x9 image at scale 0.75 is resized to scale_dimension(9, 0.75) = 7 columns; the stride-2 model
  # gives 4 logit columns [0, 4, 0, 4]. The original (multi_scale_logits) first resizes them to
  # scale_dimension(9, max(1, 0.75) / 2) = 5 columns, sampling at 0, 3/4, 3/2, 9/4, 3:
  # [0, 3, 2, 1, 4]; then predict_labels_multi_scale resizes those to 9 columns (at halves):
  # [0, 1.5, 3, 2.5, 2, 1.5, 1, 2.5, 4]. Resizing 4 -> 9 straight would sample at multiples of 3/8:
  # [0, 1.5, 3, 3.5, 2, 0.5, 1, 2.5, 4], which differs at columns 3 and 5.
  model = alternating_stride2_model()
  assert inference.logits_output_stride(model) == 2
  image = _image([[0] * 9])
  probabilities = inference.predict_probabilities(model, image, EvalOptions(eval_scales=(0.75,)))
  assert probabilities.shape == (1, 1, 9, 2)
  expected = [0, 1.5, 3, 2.5, 2, 1.5, 1, 2.5, 4]
  np.testing.assert_allclose(probabilities[0, 0, :, 1].numpy(), [sigmoid(v) for v in expected],
                             rtol=1e-6)
  # Flipped: the same 5 logits [0, 3, 2, 1, 4] are flipped back to [4, 1, 2, 3, 0] before the resize
  # to 9 columns; at scale 1 the 5 logits [0, 4, 0, 4, 0] need no first resize.
  options = EvalOptions(eval_scales=(1.0, 0.75), add_flipped_images=True)
  probabilities = inference.predict_probabilities(model, image, options)
  flipped = [4, 2.5, 1, 1.5, 2, 2.5, 3, 1.5, 0]
  at_1 = [0, 2, 4, 2, 0, 2, 4, 2, 0]
  np.testing.assert_allclose(
      probabilities[0, 0, :, 1].numpy(),
      [(2 * sigmoid(a) + sigmoid(b) + sigmoid(c)) / 4 for a, b, c in zip(at_1, expected, flipped)],
      rtol=1e-6)


def test_a_fixed_image_pooling_window_is_scaled_with_the_crop():
  # research/deeplab multi_scale_logits scales image_pooling_crop_size with each scale: at 0.75 a
  # 33-pixel pooling crop becomes scale_dimension(33, 0.75) = 25 pixels, a window of
  # scale_dimension(25, 1/16) = 2 feature pixels (3 at scale 1).
  base = dict(model_variant="mobilenet_v2", num_classes=3, output_stride=16)
  model = build_deeplab(ModelOptions(image_pooling_crop_size=(33, 33), **base))
  network = inference.low_resolution_logits_model(model)
  scaled = inference.network_at_scale(network, 0.75)
  assert network.get_layer("image_pooling.pool").pool_size == (3, 3)
  assert scaled.get_layer("image_pooling.pool").pool_size == (2, 2)
  assert inference.network_at_scale(network, 1.0) is network
  assert scaled.weights[0] is network.weights[0] and len(scaled.weights) == len(network.weights)
  # The same weights in a model built for the 25-pixel pooling crop, run by hand as the original does.
  twin = build_deeplab(ModelOptions(image_pooling_crop_size=(25, 25), **base))
  twin.set_weights(model.get_weights())
  image = np.random.RandomState(1).uniform(0, 255, (1, 65, 65, 3)).astype(np.float32)
  logits = inference.low_resolution_logits_model(twin)(
      resize_bilinear_align_corners(tf.constant(image), [49, 49]), training=False)
  logits = resize_bilinear_align_corners(logits, [5, 5])  # scale_dimension(65, 1 / 16)
  expected = tf.nn.softmax(resize_bilinear_align_corners(logits, [65, 65]))
  ours = inference.predict_probabilities(model, image, EvalOptions(eval_scales=(0.75,)))
  np.testing.assert_allclose(ours.numpy(), expected.numpy(), atol=1e-6)


def test_eval_padding_uses_the_mean_pixel_and_is_cropped_back():
  image = _image([[0, 0], [0, 0]])
  options = EvalOptions(eval_crop_size=(4, 4))
  # 12 of the 16 padded pixels hold the mean pixel 127.5: mean red 95.625, logit 0.95625.
  probabilities = inference.predict_probabilities(global_mean_model(), image, options)
  assert probabilities.shape == (1, 2, 2, 2)
  np.testing.assert_allclose(probabilities[..., 1].numpy(), sigmoid(0.95625), rtol=1e-6)
  probabilities = inference.predict_probabilities(global_mean_model(), image, options,
                                                  mean_pixel=(255.0, 0.0, 0.0))
  np.testing.assert_allclose(probabilities[..., 1].numpy(), sigmoid(12 * 255 / 16 / 100), rtol=1e-6)


def test_window_offsets():
  assert inference.window_offsets(10, 4, 1 / 3) == [0, 2, 4, 6]
  assert inference.window_offsets(5, 3, 0.0) == [0, 2]
  assert inference.window_offsets(3, 5, 0.5) == [0]


def test_sliding_window_averages_overlapping_windows():
  image = _image([[0, 0, 0, 300, 300]])
  options = EvalOptions(eval_crop_size=(1, 3), sliding_window=True)
  # Windows over columns 0-2 (mean red 0) and 2-4 (mean red 200): column 2 averages both.
  probabilities = inference.predict_probabilities(global_mean_model(), image, options)
  np.testing.assert_allclose(probabilities[0, 0, :, 1].numpy(),
                             [0.5, 0.5, (0.5 + sigmoid(2)) / 2, sigmoid(2), sigmoid(2)], rtol=1e-6)
  with pytest.raises(ValueError, match=r"1x5 pixels is larger than eval_crop_size=1,3"):
    inference.predict_probabilities(global_mean_model(), image, EvalOptions(eval_crop_size=(1, 3)))


def test_bad_image_shape_raises():
  with pytest.raises(ValueError, match=r"\[batch, height, width, 3\]"):
    inference.predict_probabilities(per_pixel_model(), np.zeros((4, 4, 3), np.float32))


def test_real_deeplab_matches_its_own_logits():
  model = build_deeplab(ModelOptions(model_variant="xception_65", num_classes=3, output_stride=16))
  x = np.random.RandomState(0).uniform(0, 255, (1, 33, 41, 3)).astype(np.float32)
  softmax = tf.nn.softmax(model(x, training=False))
  np.testing.assert_allclose(inference.predict_probabilities(model, x).numpy(), softmax.numpy(), atol=1e-6)
  # Flip averaging equals the full model run on the flipped image, flipped back.
  flipped = tf.reverse(tf.nn.softmax(model(x[:, :, ::-1], training=False)), [2])
  both = inference.predict_probabilities(model, x, EvalOptions(add_flipped_images=True))
  np.testing.assert_allclose(both.numpy(), ((softmax + flipped) / 2).numpy(), atol=1e-5)
  assert inference.model_mean_pixel(model) == (127.5, 127.5, 127.5)


def test_a_uint8_model_resizes_and_pads_float_images_as_the_original():
  # The original casts images to float before scaling and padding; a uint8-input model must not round
  # the resized pixels or the 127.5 padding back to integers.
  options = ModelOptions(model_variant="mobilenet_v2", num_classes=3, output_stride=16)
  float_model = rc.assign_reference_weights(build_deeplab(options))
  uint8_model = build_deeplab(options, input_dtype="uint8")
  uint8_model.set_weights(float_model.get_weights())
  image = np.random.RandomState(2).randint(0, 256, (1, 33, 35, 3)).astype(np.uint8)
  eval_options = EvalOptions(eval_scales=(0.75, 1.0), eval_crop_size=(37, 41))
  expected = inference.predict_probabilities(float_model, image, eval_options).numpy()
  ours = inference.predict_probabilities(uint8_model, image, eval_options).numpy()
  assert expected.max() - expected.min() > 0.5  # the weights make the probabilities vary
  np.testing.assert_allclose(ours, expected, atol=1e-6)
  assert inference.low_resolution_logits_model(uint8_model).inputs[0].dtype == "float32"


def test_single_scale_labels_are_the_argmax_of_the_logits_as_the_original():
  """research/deeplab `predict_labels` takes tf.argmax(logits) at one scale; softmax could tie them.

  Class 1's logit is 1e-8 above class 0's: float32 softmax rounds exp(-1e-8) to 1, so both
  probabilities are exactly 0.5 and their argmax says class 0, while the logits say class 1.
  """
  model = _two_class_model(lambda x: tf.ones_like(x[..., :1]) * 1e-8)
  image = _image([[10.0, 20.0, 30.0], [40.0, 50.0, 60.0]])
  probabilities = inference.predict_probabilities(model, image).numpy()
  np.testing.assert_array_equal(probabilities, np.full((1, 2, 3, 2), 0.5, np.float32))
  np.testing.assert_array_equal(inference.predict_labels(model, image).numpy(), np.ones((1, 2, 3)))
  labels, both = inference.predict_labels_and_probabilities(model, image)
  np.testing.assert_array_equal(labels.numpy(), np.ones((1, 2, 3)))
  np.testing.assert_array_equal(both.numpy(), probabilities)
  # Several scales or flips: the argmax of the mean probabilities, as `predict_labels_multi_scale`.
  flipped = EvalOptions(add_flipped_images=True)
  np.testing.assert_array_equal(inference.predict_labels(model, image, flipped).numpy(), np.zeros((1, 2, 3)))
  np.testing.assert_array_equal(inference.predict_labels_and_probabilities(model, image, flipped)[0].numpy(),
                                np.zeros((1, 2, 3)))
