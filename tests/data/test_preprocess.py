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


@pytest.mark.parametrize("size, min_size, max_size, factor, keep_aspect_ratio, expected", [
    # VOC 375x500 into [513, 513]: 513/375 would make the width 684 > 513, so the larger side becomes 513:
    # scale 513/500 = 1.026, height floor(375 * 1.026) = floor(384.75) = 384.
    ((375, 500), 513, 513, None, True, (384, 513)),
    # the same with factor 16: 384 is raised to 385 = 16 * 24 + 1; 513 = 16 * 32 + 1 stays.
    ((375, 500), 513, 513, 16, True, (385, 513)),
    # max_size 600 with factor 16 is first lowered to 593 = 16 * 37 + 1; 1024x2048 -> 296.5 floored
    # to 296, 593; then raised to 305 = 16 * 19 + 1 and 593.
    ((1024, 2048), 513, 600, 16, True, (305, 593)),
    # min only: the smaller side becomes 513, the other 2048 * 513 / 1024 = 1026.
    ((1024, 2048), 513, None, None, True, (513, 1026)),
    # keep_aspect_ratio False: both sides the larger one.
    ((375, 500), 513, 513, 16, False, (513, 513)),
    # float32 rounding, as the original: 27 / 49 * 49 is 26.999998 in float32, floored to 26 (not 27);
    # 60 * 27 / 49 = 33.06 -> 33.
    ((49, 60), 27, None, None, True, (26, 33)),
    # an upscale with a factor: 3x4 -> min 5: 5x6 (4 * 5/3 = 6.67), factor 4: 5 = 4 + 1 stays, 6 -> 9.
    ((3, 4), 5, None, 4, True, (5, 9)),
])
def test_resize_to_range_sizes_as_the_original(size, min_size, max_size, factor, keep_aspect_ratio, expected):
  out = preprocess.resize_to_range_size(size[0], size[1], min_size, max_size, factor, keep_aspect_ratio)
  assert tuple(out.numpy()) == expected
  image = tf.zeros(size + (3,), tf.float32)
  label = tf.zeros(size + (1,), tf.int32)
  out_image, out_label = preprocess.resize_to_range(image, label, min_size, max_size, factor,
                                                    keep_aspect_ratio)
  assert out_image.shape == expected + (3,) and out_label.shape == expected + (1,)


def test_resize_to_range_is_bilinear_and_nearest_with_align_corners():
  image = tf.constant(np.array([[0, 10], [20, 30]], np.float32)[..., None].repeat(3, -1))
  label = tf.constant(np.array([[1, 2], [3, 4]], np.int32)[..., None])
  out_image, out_label = preprocess.resize_to_range(image, label, min_size=3)
  np.testing.assert_allclose(out_image.numpy()[..., 0], [[0, 5, 10], [10, 15, 20], [20, 25, 30]])
  np.testing.assert_array_equal(out_label.numpy()[..., 0], [[1, 2, 2], [3, 4, 4], [3, 4, 4]])


def test_resize_values_are_checked_naming_the_flag():
  assert not preprocess.check_resize_values(None, None, 16)  # a factor alone resizes nothing
  assert preprocess.check_resize_values(513, None, None)
  with pytest.raises(ValueError, match="--max_resize_value=513 needs --min_resize_value"):
    preprocess.check_resize_values(None, 513, None)
  with pytest.raises(ValueError, match="--resize_factor=0"):
    preprocess.check_resize_values(513, 513, 0)


def test_eval_and_train_resize_before_padding_and_cropping():
  image, label = _coded_pair(20, 30)
  out_image, out_label = preprocess.preprocess_for_eval(image, label, crop_size=(33, 49), ignore_label=IGNORE,
                                                        min_resize_value=30, max_resize_value=49)
  # 20x30 -> smaller side 30 would make the larger 45 <= 49: 30x45, then padded to 33x49
  assert out_image.shape == (33, 49, 3)
  assert np.all(out_label.numpy()[30:] == IGNORE) and np.all(out_label.numpy()[:30, :45] != IGNORE)
  out_image, out_label = preprocess.preprocess_for_train(
      image, label, crop_size=(30, 45), ignore_label=IGNORE, min_scale_factor=1.0, max_scale_factor=1.0,
      min_resize_value=30, seed=tf.constant([1, 2]))
  assert np.all(out_label.numpy() != IGNORE)  # exactly the resized 30x45: no padding inside the crop
