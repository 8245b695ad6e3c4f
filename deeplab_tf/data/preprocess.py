"""The papers' data augmentation and eval-time padding, as research/deeplab's `input_preprocess.py`.

Both, first, when `min_resize_value` (and optionally `max_resize_value`, `resize_factor`) is given: the
image resized bilinearly and the label by nearest neighbour into a size range (`resize_to_range`, the
original's `preprocess_utils.resize_to_range`, applied by `preprocess_image_and_label` in training,
evaluation, visualisation and export alike).
Training (DeepLabv3, section 4.1; `preprocess_image_and_label` with `is_training=True`):
  1. a random scale from {min, min + step, ..., max} (uniform over [min, max) when step is 0): the image
     resized bilinearly and the label by nearest neighbour, both with align_corners=True
     (`preprocess_utils.randomly_scale_image_and_label`, TF1's `resize_bilinear` / `resize_nearest_neighbor`);
  2. padding at the bottom and right up to the crop size, the image with the mean pixel (so it becomes 0
     after the encoder's normalisation), the label with ignore_label (`pad_to_bounding_box` at offset 0, 0);
  3. one random crop taken at the same offset from image and label (`preprocess_utils.random_crop`);
  4. a left-right flip of both with probability 0.5 (`preprocess_utils.flip_dim`).
Evaluation: no augmentation, the same bottom/right padding to the crop size.

Randomness is stateless: every random choice is drawn from an explicit `seed` ([2] int tensor), so a
pipeline given a seed is reproducible and image and label always receive the same draw.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import tensorflow as tf

from deeplab_tf.image_ops import resize_bilinear_align_corners, resize_nearest_align_corners

PROB_OF_FLIP = 0.5  # research/deeplab input_preprocess._PROB_OF_FLIP


def _as_seed(seed: Optional[tf.Tensor]) -> tf.Tensor:
  if seed is None:
    return tf.random.uniform([2], maxval=2**31 - 1, dtype=tf.int32)
  return tf.cast(seed, tf.int64)


def check_scale_factors(min_scale_factor: float, max_scale_factor: float, step_size: float) -> None:
  """Raises ValueError naming the values if 0 <= min <= max and step >= 0 do not hold."""
  if min_scale_factor < 0 or min_scale_factor > max_scale_factor or step_size < 0:
    raise ValueError(f"Scale factors min_scale_factor={min_scale_factor}, max_scale_factor={max_scale_factor},"
                     f" scale_factor_step_size={step_size} must satisfy 0 <= min <= max and step >= 0.")


def get_random_scale(min_scale_factor: float, max_scale_factor: float, step_size: float,
                     seed: Optional[tf.Tensor] = None) -> tf.Tensor:
  """A random scale factor (research/deeplab `preprocess_utils.get_random_scale`).

  With step_size > 0, one of the `int((max - min) / step + 1)` values `linspace(min, max)`, equally
  likely (the original shuffles them and takes the first); with step_size 0, uniform in [min, max).

  Args:
    min_scale_factor: smallest scale, >= 0.
    max_scale_factor: largest scale, >= min_scale_factor.
    step_size: distance between the candidate scales, >= 0.
    seed: [2] int stateless seed; None draws one.

  Returns:
    float32 scalar.

  Raises:
    ValueError: if the factors are inconsistent (see `check_scale_factors`).
  """
  check_scale_factors(min_scale_factor, max_scale_factor, step_size)
  if min_scale_factor == max_scale_factor:
    return tf.constant(min_scale_factor, tf.float32)
  seed = _as_seed(seed)
  if step_size == 0:
    return tf.random.stateless_uniform([], seed, minval=min_scale_factor, maxval=max_scale_factor)
  num_steps = int((max_scale_factor - min_scale_factor) / step_size + 1)
  scales = tf.linspace(float(min_scale_factor), float(max_scale_factor), num_steps)
  index = tf.random.stateless_uniform([], seed, minval=0, maxval=num_steps, dtype=tf.int32)
  return tf.cast(scales[index], tf.float32)


def scale_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor], scale: tf.Tensor
                          ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
  """Resizes image and label by `scale` (research/deeplab `randomly_scale_image_and_label`).

  The new size is `int(float(size) * scale)` per side; the image is resized bilinearly and the label by
  nearest neighbour, both with align_corners=True (`deeplab_tf.image_ops`; TF2's resize cannot).

  Args:
    image: float32 [height, width, 3].
    label: int32 [height, width, 1] or None.
    scale: float32 scalar.

  Returns:
    (float32 [h', w', 3], int32 [h', w', 1] or None).
  """
  size = tf.cast(tf.cast(tf.shape(image)[:2], tf.float32) * scale, tf.int32)
  image = resize_bilinear_align_corners(image[None], size)[0]
  if label is not None:
    label = resize_nearest_align_corners(label[None], size)[0]
  return image, label


def check_resize_values(min_resize_value: Optional[int], max_resize_value: Optional[int],
                        resize_factor: Optional[int]) -> bool:
  """Whether the flags ask for `resize_to_range` (research/deeplab: `if min_resize_value or max_resize_value`).

  Raises:
    ValueError: naming the flag, for a negative value, a resize_factor below 1, or max_resize_value
      without min_resize_value (the original's `resize_to_range` fails on a missing min_size).
  """
  for name, value in (("min_resize_value", min_resize_value), ("max_resize_value", max_resize_value)):
    if value is not None and value < 0:
      raise ValueError(f"--{name}={value}: expected a size in pixels (or unset).")
  if resize_factor is not None and resize_factor < 1:
    raise ValueError(f"--resize_factor={resize_factor}: expected a positive integer (or unset).")
  if max_resize_value and not min_resize_value:
    raise ValueError(f"--max_resize_value={max_resize_value} needs --min_resize_value too (the size of the "
                     "smaller side; research/deeplab's resize_to_range cannot do without it).")
  return bool(min_resize_value or max_resize_value)


def resize_to_range_size(height, width, min_size: int, max_size: Optional[int] = None,
                         factor: Optional[int] = None, keep_aspect_ratio: bool = True) -> tf.Tensor:
  """The size `resize_to_range` gives an image of `height` x `width` pixels.

  research/deeplab `core/preprocess_utils.resize_to_range`, computed with the same float32 operations
  so that every rounding agrees: the smaller side becomes `min_size` (scale `min_size / min(h, w)`, sides
  floored) unless the larger side would then exceed `max_size`, in which case the larger side becomes
  `max_size` (scale `max_size / max(h, w)`, floored). With `factor`, `max_size` is first lowered to a
  multiple of `factor` plus one and each side is raised to the next multiple of `factor` plus one. Without
  `keep_aspect_ratio` both sides become the larger of the two.

  Args:
    height: int scalar (tensor or Python int), pixels.
    width: int scalar, pixels.
    min_size: size in pixels of the smaller side.
    max_size: largest allowed size of the larger side, or None.
    factor: output sides are multiples of `factor` plus one, or None.
    keep_aspect_ratio: False makes the output square.

  Returns:
    int32 `[2]` tensor (new_height, new_width).
  """
  min_size = tf.cast(min_size, tf.float32)
  if max_size is not None:
    max_size = tf.cast(max_size, tf.float32)
    if factor is not None:
      max_size = max_size - tf.math.floormod(max_size - 1, float(factor))
  orig_height = tf.cast(height, tf.float32)
  orig_width = tf.cast(width, tf.float32)
  large_scale = min_size / tf.minimum(orig_height, orig_width)
  new_size = tf.stack([tf.cast(tf.floor(orig_height * large_scale), tf.int32),
                       tf.cast(tf.floor(orig_width * large_scale), tf.int32)])
  if max_size is not None:
    small_scale = max_size / tf.maximum(orig_height, orig_width)
    small_size = tf.stack([tf.cast(tf.floor(orig_height * small_scale), tf.int32),
                           tf.cast(tf.floor(orig_width * small_scale), tf.int32)])
    new_size = tf.where(tf.cast(tf.reduce_max(new_size), tf.float32) > max_size, small_size, new_size)
  if factor is not None:
    new_size += tf.math.floormod(factor - tf.math.floormod(new_size - 1, factor), factor)
  if not keep_aspect_ratio:
    new_size = tf.fill([2], tf.reduce_max(new_size))
  return new_size


def resize_to_range(image: tf.Tensor, label: Optional[tf.Tensor], min_size: int,
                    max_size: Optional[int] = None, factor: Optional[int] = None,
                    keep_aspect_ratio: bool = True) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
  """Resizes image and label into a size range (research/deeplab `preprocess_utils.resize_to_range`).

  The size is `resize_to_range_size`'s; the image is resized bilinearly and the label by nearest
  neighbour, both with align_corners=True, as `input_preprocess.preprocess_image_and_label` calls it for
  the flags `--min_resize_value`, `--max_resize_value`, `--resize_factor` (and `--keep_aspect_ratio`).

  Args:
    image: float32 `[height, width, 3]`.
    label: int32 `[height, width, 1]` or None.
    min_size: see `resize_to_range_size`.
    max_size: see `resize_to_range_size`.
    factor: see `resize_to_range_size`.
    keep_aspect_ratio: see `resize_to_range_size`.

  Returns:
    (float32 `[new_height, new_width, 3]`, int32 `[new_height, new_width, 1]` or None).
  """
  shape = tf.shape(image)
  size = resize_to_range_size(shape[0], shape[1], min_size, max_size, factor, keep_aspect_ratio)
  image = resize_bilinear_align_corners(image[None], size)[0]
  if label is not None:
    label = resize_nearest_align_corners(label[None], size)[0]
  return image, label


def pad_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor], target_height: tf.Tensor,
                        target_width: tf.Tensor, *, mean_pixel: Sequence[float], ignore_label: int
                        ) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
  """Pads at the bottom and right to at least target_height x target_width (never crops).

  The image is padded with `mean_pixel`, the label with `ignore_label` (research/deeplab
  `preprocess_utils.pad_to_bounding_box` at offset (0, 0)).

  Args:
    image: float32 [height, width, 3].
    label: int32 [height, width, 1] or None.
    target_height: int scalar.
    target_width: int scalar.
    mean_pixel: three floats, the RGB padding value.
    ignore_label: the label padding value.

  Returns:
    (float32 [max(h, th), max(w, tw), 3], int32 [..., 1] or None).
  """
  shape = tf.shape(image)
  pad_h = tf.maximum(target_height - shape[0], 0)
  pad_w = tf.maximum(target_width - shape[1], 0)
  paddings = [[0, pad_h], [0, pad_w], [0, 0]]
  mean = tf.reshape(tf.constant(mean_pixel, tf.float32), [1, 1, 3])
  image = tf.pad(image - mean, paddings) + mean
  if label is not None:
    label = tf.pad(label, paddings, constant_values=ignore_label)
  return image, label


def random_crop(image: tf.Tensor, label: tf.Tensor, crop_height: int, crop_width: int,
                seed: Optional[tf.Tensor] = None) -> Tuple[tf.Tensor, tf.Tensor]:
  """Crops image and label at one random offset (research/deeplab `preprocess_utils.random_crop`).

  Args:
    image: [height, width, 3], height >= crop_height and width >= crop_width (pad first).
    label: [height, width, 1].
    crop_height: output height.
    crop_width: output width.
    seed: [2] int stateless seed; None draws one.

  Returns:
    (image [crop_height, crop_width, 3], label [crop_height, crop_width, 1]).

  Raises:
    tf.errors.InvalidArgumentError (when run): if the inputs are smaller than the crop.
  """
  seed = _as_seed(seed)
  shape = tf.shape(image)
  check = tf.debugging.assert_greater_equal(
      shape[:2], tf.constant([crop_height, crop_width]), message="Crop size greater than the image size.")
  with tf.control_dependencies([check]):
    max_y = shape[0] - crop_height + 1
  seeds = tf.random.experimental.stateless_split(seed, 2)
  y = tf.random.stateless_uniform([], seeds[0], minval=0, maxval=max_y, dtype=tf.int32)
  x = tf.random.stateless_uniform([], seeds[1], minval=0, maxval=shape[1] - crop_width + 1, dtype=tf.int32)
  image = image[y:y + crop_height, x:x + crop_width]
  label = label[y:y + crop_height, x:x + crop_width]
  image.set_shape([crop_height, crop_width, 3])
  label.set_shape([crop_height, crop_width, 1])
  return image, label


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: Optional[tf.Tensor] = None,
                prob: float = PROB_OF_FLIP) -> Tuple[tf.Tensor, tf.Tensor]:
  """Flips image and label left-right together with probability `prob` (`preprocess_utils.flip_dim`)."""
  flip = tf.random.stateless_uniform([], _as_seed(seed)) < prob
  image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
  label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
  return image, label


def preprocess_for_train(image: tf.Tensor, label: tf.Tensor, *, crop_size: Tuple[int, int], ignore_label: int,
                         mean_pixel: Sequence[float] = (127.5, 127.5, 127.5), min_scale_factor: float = 0.5,
                         max_scale_factor: float = 2.0, scale_factor_step_size: float = 0.25,
                         seed: Optional[tf.Tensor] = None, min_resize_value: Optional[int] = None,
                         max_resize_value: Optional[int] = None, resize_factor: Optional[int] = None,
                         keep_aspect_ratio: bool = True) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resize to range, random scale, pad, random crop, random flip (`preprocess_image_and_label`).

  Args:
    image: uint8 or float32 [height, width, 3] RGB in [0, 255].
    label: integer [height, width, 1] class ids.
    crop_size: (crop_height, crop_width), e.g. (513, 513).
    ignore_label: label value of padded pixels.
    mean_pixel: RGB value of padded image pixels (127.5 for [-1, 1] encoders, the ImageNet mean for plain
      ResNets; REFERENCE "Input normalisation").
    min_scale_factor: see `get_random_scale`.
    max_scale_factor: see `get_random_scale`.
    scale_factor_step_size: see `get_random_scale`.
    seed: [2] int stateless seed; None draws one.
    min_resize_value: see `resize_to_range` (`min_size`); None (and max_resize_value None): no resize.
    max_resize_value: see `resize_to_range` (`max_size`).
    resize_factor: see `resize_to_range` (`factor`).
    keep_aspect_ratio: see `resize_to_range`.

  Returns:
    (float32 [crop_height, crop_width, 3], int32 [crop_height, crop_width, 1]).

  Raises:
    ValueError: inconsistent resize values (`check_resize_values`).
  """
  seeds = tf.random.experimental.stateless_split(_as_seed(seed), 3)
  image = tf.cast(image, tf.float32)
  label = tf.cast(label, tf.int32)
  if check_resize_values(min_resize_value, max_resize_value, resize_factor):
    image, label = resize_to_range(image, label, min_resize_value, max_resize_value, resize_factor,
                                   keep_aspect_ratio)
  scale = get_random_scale(min_scale_factor, max_scale_factor, scale_factor_step_size, seeds[0])
  if not (min_scale_factor == max_scale_factor == 1.0):
    image, label = scale_image_and_label(image, label, scale)
  crop_height, crop_width = crop_size
  image, label = pad_image_and_label(image, label, crop_height, crop_width, mean_pixel=mean_pixel,
                                     ignore_label=ignore_label)
  image, label = random_crop(image, label, crop_height, crop_width, seeds[1])
  return random_flip(image, label, seeds[2])


def preprocess_for_eval(image: tf.Tensor, label: Optional[tf.Tensor], *, crop_size: Optional[Tuple[int, int]],
                        ignore_label: int, mean_pixel: Sequence[float] = (127.5, 127.5, 127.5),
                        image_name: Optional[tf.Tensor] = None, min_resize_value: Optional[int] = None,
                        max_resize_value: Optional[int] = None, resize_factor: Optional[int] = None,
                        keep_aspect_ratio: bool = True) -> Tuple[tf.Tensor, Optional[tf.Tensor]]:
  """Casts, resizes to range if asked, pads at the bottom/right to `crop_size` when given.

  research/deeplab eval preprocessing (`preprocess_image_and_label` with `is_training=False`).

  Args:
    image: uint8 or float32 [height, width, 3] RGB in [0, 255].
    label: integer [height, width, 1] or None.
    crop_size: (crop_height, crop_width) or None for no padding.
    ignore_label: label value of padded pixels.
    mean_pixel: RGB value of padded image pixels.
    image_name: string scalar, named in the error below.
    min_resize_value: see `preprocess_for_train`.
    max_resize_value: see `preprocess_for_train`.
    resize_factor: see `preprocess_for_train`.
    keep_aspect_ratio: see `preprocess_for_train`.

  Returns:
    (float32 [crop_height, crop_width, 3] (or the input size, resized if asked), int32 [..., 1] or None).

  Raises:
    ValueError: inconsistent resize values (`check_resize_values`).
    tf.errors.InvalidArgumentError (when run): if the image is larger than `crop_size`; the message names
      the image and its size: raise the eval crop size (REFERENCE: output_stride * k + 1, at least the
      largest image).
  """
  image = tf.cast(image, tf.float32)
  label = None if label is None else tf.cast(label, tf.int32)
  if check_resize_values(min_resize_value, max_resize_value, resize_factor):
    image, label = resize_to_range(image, label, min_resize_value, max_resize_value, resize_factor,
                                   keep_aspect_ratio)
  if crop_size is None:
    return image, label
  crop_height, crop_width = crop_size
  shape = tf.shape(image)
  fits = tf.logical_and(shape[0] <= crop_height, shape[1] <= crop_width)
  name = image_name if image_name is not None else tf.constant("<unnamed>")
  check = tf.debugging.Assert(fits, [
      "Image", name, "of height, width", shape[0], shape[1], "is larger than the eval crop_size",
      crop_height, crop_width, "- raise crop_size (output_stride * k + 1, at least the largest image)."])
  with tf.control_dependencies([check]):
    image = tf.identity(image)
  image, label = pad_image_and_label(image, label, crop_height, crop_width, mean_pixel=mean_pixel,
                                     ignore_label=ignore_label)
  image.set_shape([crop_height, crop_width, 3])
  if label is not None:
    label.set_shape([crop_height, crop_width, 1])
  return image, label
