"""DeepLabv2's dense CRF: it snaps a blurred boundary to the colour edge, keeps what it should, names bad
input, and runs inside evaluate_dataset on the unpadded image only."""

import keras
import numpy as np
import pytest
import tensorflow as tf

pytest.importorskip("pydensecrf.densecrf", reason="the optional extra deeplab_tf[crf] (pydensecrf2)")

from deeplab_tf.evaluation import crf  # noqa: E402
from deeplab_tf.evaluation.evaluate import evaluate_dataset  # noqa: E402
from deeplab_tf.options import EvalOptions  # noqa: E402


def _two_regions(height=40, width=60, edge=30, blur_edge=37.5):
  """A red | blue image split at column `edge`, and probabilities whose boundary is at `blur_edge`."""
  image = np.zeros((height, width, 3), np.uint8)
  image[:, :edge] = (200, 30, 30)
  image[:, edge:] = (30, 30, 200)
  rng = np.random.default_rng(0)
  image = np.clip(image + rng.integers(-5, 6, image.shape), 0, 255).astype(np.uint8)
  columns = np.arange(width)[None, :, None]
  p1 = 1.0 / (1.0 + np.exp(-(columns - blur_edge) / 3.0))  # class 1 beyond the (wrong) soft edge
  probabilities = np.concatenate([1.0 - p1, p1], -1) * np.ones((height, 1, 1))
  truth = (np.arange(width) >= edge).astype(np.int32)[None, :] * np.ones((height, 1), np.int32)
  return image, probabilities.astype(np.float32), truth


def test_crf_moves_a_misplaced_boundary_to_the_colour_edge():
  image, probabilities, truth = _two_regions()
  before = (probabilities.argmax(-1) == truth).mean()
  refined = crf.dense_crf(image, probabilities, crf.CrfOptions())
  assert refined.shape == probabilities.shape and refined.dtype == np.float32
  np.testing.assert_allclose(refined.sum(-1), 1.0, atol=1e-4)
  after = (refined.argmax(-1) == truth).mean()
  # 8 of 60 columns are wrong before (13%); the appearance kernel pulls them to the red region.
  assert before == pytest.approx(52 / 60)
  assert after > 0.98


def test_zero_iterations_return_the_input_probabilities():
  image, probabilities, _ = _two_regions()
  refined = crf.dense_crf(image, probabilities, crf.CrfOptions(iterations=0))
  np.testing.assert_allclose(refined, probabilities, atol=1e-5)


def test_without_pairwise_weights_the_argmax_is_unchanged():
  image, probabilities, _ = _two_regions()
  refined = crf.dense_crf(image, probabilities, crf.CrfOptions(pos_w=0.0, bi_w=0.0))
  np.testing.assert_array_equal(refined.argmax(-1), probabilities.argmax(-1))


def test_bad_input_is_named():
  image, probabilities, _ = _two_regions()
  with pytest.raises(ValueError, match="image must be"):
    crf.dense_crf(image[..., :2], probabilities)
  with pytest.raises(ValueError, match="probabilities must be"):
    crf.dense_crf(image, probabilities[:-1])
  with pytest.raises(ValueError, match=r"\[0, 255\]"):
    crf.dense_crf(image.astype(np.float32) * 2, probabilities)
  with pytest.raises(ValueError, match="bi_xy_std"):
    crf.CrfOptions(bi_xy_std=0)
  with pytest.raises(ValueError, match="iterations"):
    crf.CrfOptions(iterations=-1)
  assert crf.CrfOptions.from_json(crf.CrfOptions(bi_w=5.0).to_json()) == crf.CrfOptions(bi_w=5.0)


def _column_logits_model(blur_edge=37.5):
  """A Keras model (output stride 1) whose logits depend only on the pixel's column, so that their
  softmax is `_two_regions`' probabilities at every column of the image and its padding."""
  def logits(images):
    columns = tf.cast(tf.range(tf.shape(images)[2]), tf.float32)
    class_1 = tf.broadcast_to(((columns - blur_edge) / 3.0)[None, None, :, None],
                              tf.concat([tf.shape(images)[:3], [1]], 0))
    return tf.concat([tf.zeros_like(class_1), class_1], -1)
  images = keras.Input((None, None, 3))
  return keras.Model(images, keras.layers.Lambda(logits)(images))


def test_evaluate_dataset_refines_the_image_inside_its_padding():
  image, probabilities, truth = _two_regions()
  # Padded to 48x64 as the eval pipeline pads: labels ignore_label (255) outside the image.
  padded_image = np.full((1, 48, 64, 3), 127.5, np.float32)
  padded_image[0, :40, :60] = image
  logits = np.zeros((1, 48, 64, 2), np.float32)
  logits[0, :40, :60] = np.log(probabilities)
  label = np.full((1, 48, 64, 1), 255, np.int32)
  label[0, :40, :60, 0] = truth
  batch = {"image": padded_image, "label": label, "height": np.array([40]), "width": np.array([60])}
  model = _column_logits_model()
  plain = evaluate_dataset(model, [batch], EvalOptions(), num_classes=2, ignore_label=255,
                           mean_pixel=(127.5,) * 3)
  refined = evaluate_dataset(model, [batch], EvalOptions(), num_classes=2, ignore_label=255,
                             mean_pixel=(127.5,) * 3, crf_options=crf.CrfOptions())
  assert plain.num_pixels == refined.num_pixels == 40 * 60
  assert plain.pixel_accuracy == pytest.approx(52 / 60)
  assert refined.pixel_accuracy > 0.98
  expected = crf.dense_crf(image, probabilities).argmax(-1)
  np.testing.assert_array_equal(
      crf.dense_crf_labels(padded_image, logits_to_probabilities(logits), heights=[40], widths=[60])[0, :40, :60],
      expected)


def logits_to_probabilities(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)
