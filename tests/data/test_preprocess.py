"""The papers' augmentation: image and label stay aligned, labels stay valid, padding is as specified."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.data import preprocess

IGNORE = 255
MEAN = (127.5, 127.5, 127.5)


def _coded_pair(height=60, width=80):
  """An image whose every channel equals the label: class ((x // 16) + 3 * (y // 16)) % 21."""
  y, x = np.mgrid[:height, :width]
  label = ((x // 16) + 3 * (y // 16)) % 21
  image = np.repeat(label[..., None], 3, axis=-1).astype(np.uint8)
  return tf.constant(image), tf.constant(label[..., None].astype(np.int32))


def test_random_scale_takes_only_the_grid_values():
  seen = {round(float(preprocess.get_random_scale(0.5, 2.0, 0.25, tf.constant([i, 7]))), 4)
          for i in range(120)}
  assert seen == {0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0}
  assert float(preprocess.get_random_scale(1.0, 1.0, 0.25)) == 1.0
  with pytest.raises(ValueError, match="min_scale_factor=2.0"):
    preprocess.get_random_scale(2.0, 1.0, 0.25)


def test_without_scaling_image_and_label_agree_exactly_after_crop_and_flip():
  image, label = _coded_pair()
  flips = 0
  for i in range(12):
    out_image, out_label = preprocess.preprocess_for_train(
        image, label, crop_size=(48, 64), ignore_label=IGNORE, mean_pixel=MEAN, min_scale_factor=1.0,
        max_scale_factor=1.0, scale_factor_step_size=0.25, seed=tf.constant([i, 3]))
    assert out_image.shape == (48, 64, 3) and out_label.shape == (48, 64, 1)
    assert out_image.dtype == tf.float32 and out_label.dtype == tf.int32
    np.testing.assert_array_equal(out_image.numpy()[..., 0], out_label.numpy()[..., 0])
    # a flipped crop has classes decreasing left to right within a stripe row
    row = out_label.numpy()[0, :, 0]
    flips += int(np.any(np.diff(row.astype(int)) < 0) and row[0] != row[-1] and
                 np.all((np.diff(row.astype(int)) <= 0) | (np.diff(row.astype(int)) > 10)))
  assert 0 < flips < 12  # both flipped and unflipped crops occur


def test_scaled_image_and_label_stay_aligned_and_valid():
  image, label = _coded_pair()
  for i in range(10):
    out_image, out_label = preprocess.preprocess_for_train(
        image, label, crop_size=(50, 50), ignore_label=IGNORE, mean_pixel=MEAN, seed=tf.constant([i, 11]))
    out_image, out_label = out_image.numpy()[..., 0], out_label.numpy()[..., 0]
    assert set(np.unique(out_label)) <= set(range(21)) | {IGNORE}
    valid = out_label != IGNORE
    # bilinear image vs nearest label differ only along class borders
    assert np.mean(out_image[valid] == out_label[valid]) > 0.8
    np.testing.assert_array_equal(out_image[~valid], 127.5)  # padding: mean pixel where label is ignore


def test_padding_at_bottom_right_with_mean_pixel_and_ignore_label():
  image, label = _coded_pair(20, 30)
  out_image, out_label = preprocess.preprocess_for_train(
      image, label, crop_size=(25, 40), ignore_label=IGNORE, mean_pixel=(1.0, 2.0, 3.0),
      min_scale_factor=1.0, max_scale_factor=1.0, scale_factor_step_size=0, seed=tf.constant([0, 0]))
  out_image, out_label = out_image.numpy(), out_label.numpy()[..., 0]
  pad = out_label == IGNORE
  assert pad.sum() == 25 * 40 - 20 * 30
  np.testing.assert_array_equal(out_image[pad], np.tile([1.0, 2.0, 3.0], (pad.sum(), 1)))


def test_scaling_uses_align_corners():
  image = tf.constant(np.array([[0, 10], [20, 30]], np.float32)[..., None].repeat(3, -1))
  label = tf.constant(np.array([[1, 2], [3, 4]], np.int32)[..., None])
  out_image, out_label = preprocess.scale_image_and_label(image, label, tf.constant(1.5))
  # 2 -> 3 pixels with align_corners: corners kept, the middle is the mean of its neighbours
  np.testing.assert_allclose(out_image.numpy()[..., 0], [[0, 5, 10], [10, 15, 20], [20, 25, 30]])
  np.testing.assert_array_equal(out_label.numpy()[..., 0], [[1, 2, 2], [3, 4, 4], [3, 4, 4]])


def test_eval_pads_and_refuses_images_larger_than_the_crop():
  image, label = _coded_pair(20, 30)
  out_image, out_label = preprocess.preprocess_for_eval(image, label, crop_size=(33, 33), ignore_label=IGNORE)
  np.testing.assert_array_equal(out_label.numpy()[:20, :30, 0], label.numpy()[..., 0])
  assert np.all(out_label.numpy()[20:] == IGNORE) and np.all(out_image.numpy()[:, 30:] == 127.5)
  with pytest.raises(tf.errors.InvalidArgumentError, match="big_one"):
    preprocess.preprocess_for_eval(image, label, crop_size=(17, 33), ignore_label=IGNORE,
                                   image_name=tf.constant("big_one"))
