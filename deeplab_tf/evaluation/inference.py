"""Inference as research/deeplab evaluates: eval padding, multi-scale + flip averaging, sliding windows.

research/deeplab `model.py` (`predict_labels_multi_scale`, which calls `multi_scale_logits` with one
scale at a time) and `eval.py`:
- Images are padded (bottom/right, with the mean pixel so that padding is 0 after preprocessing) to
  `eval_crop_size` (`input_preprocess.preprocess_image_and_label`); the padded image's size is the
  crop size the original's model sees. We crop the prediction back to the image so that callers get
  one value per image pixel.
- For every scale s in `eval_scales`, of a crop of `size` pixels along an axis (`scale_dimension` is
  `int((size - 1) * s + 1)`, `deeplab_tf.image_ops`):
  1. the image is resized bilinearly (align_corners=True) to `scale_dimension(size, s)` (s != 1);
     the network's crop becomes that size, and so does its image-pooling window: a fixed
     `image_pooling_crop_size` is scaled to `scale_dimension(image_pooling_crop_size, s)`, a global
     one pools over the scaled feature map;
  2. the network's logits, at its logits output stride L (`decoder_output_stride`, else
     `output_stride`), are resized (bilinear, align_corners) to
     `scale_dimension(size, max(1, s) / L)` pixels: the size of the logits at scale 1 for s < 1
     (upsampled first: NOT straight to the image size), their own size for s >= 1;
  3. only then are they resized (bilinear, align_corners) to the crop size, and their softmax taken.
  With `add_flipped_images` the same is done on the left-right flipped image; its logits are flipped
  back after step 2, before step 3. The prediction is the mean of all these probabilities. The
  original skipped flipping when only one scale was given (its eval then called `predict_labels`);
  we flip at one scale too.
- Sliding windows (not in the original, whose eval crop must cover the largest image): an image larger
  than `eval_crop_size` is cut into crop-sized windows; along each axis of size D > window size c the
  stride is `floor(c * (1 - sliding_window_overlap))` (at least 1), the windows start at
  `0, stride, 2 * stride, ...` and the last one is moved back to end exactly at D (so neighbours share
  at least the overlap fraction); probabilities of overlapping windows are averaged per pixel. An axis
  no larger than c has one window, padded to c as above.

Models are our DeepLab Keras models (or any Keras model mapping `[b, h, w, 3]` RGB in [0, 255] to
logits `[b, h', w', classes]` with `h' = (h - 1) // L + 1` for some output stride L). For a model
built by `build_deeplab`, the logits before its final `upsample_logits` layer are used so that, as in
the original, the logits at output stride are what gets resized.
"""

from __future__ import annotations

import math
import weakref
from typing import List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.image_ops import resize_bilinear_align_corners, scale_dimension
from deeplab_tf.model import layers as model_layers
from deeplab_tf.model.aspp import IMAGE_POOLING_LAYER_NAME, ImagePooling
from deeplab_tf.model.acceleration.folding import fold_batch_norm
from deeplab_tf.options import EvalOptions

# The name build_deeplab gives the layer resizing the logits to the input size.
UPSAMPLE_LAYER_NAME = "upsample_logits"
# model -> {"low_resolution": its network without upsample_logits, "stride": the logits' output
# stride, scale: the network with its image-pooling window scaled}.
_NETWORK_CACHE = weakref.WeakKeyDictionary()
_SELF = object()
# The largest output stride of the original's networks; probes are a multiple of it plus one pixel.
_MAX_OUTPUT_STRIDE = 32
_COMPILED_NETWORKS = weakref.WeakKeyDictionary()


def compiled_network(network, jit_compile: bool = False):
  """`images -> network(images, training=False)` as a `tf.function` cached per network.

  Every prediction goes through it, so eval, vis, the demo and `predict_*` run the network as one
  compiled graph instead of op by op (2.2x slower at 513x513), with each BatchNorm folded into its
  convolution from the live variables (`fold_batch_norm(live=True)`: the same function to float32
  rounding, and it follows later changes of the weights; folding at each call costs ~7% of a float32
  and ~20% of a bfloat16 Xception-65 call at 513x513, so the eval, vis and predict binaries, whose
  weights do not change, pass `fold_batch_norm(model)`'s copy instead, in which nothing is left to
  fold). Retracing is bounded: after a second input
  shape the function is traced once more with relaxed (unknown) dimensions that serve every later
  size (`reduce_retracing`). For debugging, `tf.config.run_functions_eagerly(True)` runs it eagerly.
  Inside another `tf.function` (the export) it is inlined. Objects that cannot be weakly referenced
  are called directly. With `jit_compile` the function is compiled by XLA (`tf.function(
  jit_compile=True)`, one compilation per input shape), cached beside the plain one.
  """
  try:
    cache = _COMPILED_NETWORKS.setdefault(network, {})
  except TypeError:
    return lambda images: network(images, training=False)
  if jit_compile not in cache:
    folded = fold_batch_norm(network, live=True)  # Shares the layers; does not refer to `network`.
    cache[jit_compile] = tf.function(lambda images: folded(images, training=False),
                                     reduce_retracing=True, jit_compile=jit_compile)
  return cache[jit_compile]


def model_mean_pixel(model) -> tuple:
  """The mean pixel of a `build_deeplab` model (from its `Preprocess` layer); 127.5 for other models."""
  for layer in getattr(model, "layers", ()):
    if isinstance(layer, model_layers.Preprocess):
      return model_layers.mean_pixel_for_preprocessing(layer.mode)
  return model_layers.MEAN_PIXEL[model_layers.ZERO_MEAN_UNIT_RANGE]


def _cached(network, key, build):
  """`build()`, computed once per (network, key) while `network` lives."""
  try:
    cache = _NETWORK_CACHE.setdefault(network, {})
  except TypeError:  # not weak-referenceable: no caching
    return build()
  if key not in cache:
    value = build()
    # The network itself is stored as a marker: a strong reference would keep it alive for ever.
    cache[key] = _SELF if value is network else value
  return network if cache[key] is _SELF else cache[key]


def low_resolution_logits_model(model):
  """`model` without its final `upsample_logits` layer (the same weights), or `model` itself.

  The original resizes the logits at output stride (`multi_scale_logits`, then
  `predict_labels_multi_scale`); resizing our model's already upsampled logits instead would
  interpolate from the wrong grid at scales other than 1. A functional model with a uint8 input gets a
  float32 input instead (same layers): the original resizes and pads float images, which rounding
  them back to uint8 would change.
  """
  def build():
    network = model
    if isinstance(model, keras.Model) and getattr(model, "outputs", None):  # functional models only
      try:
        upsample = model.get_layer(UPSAMPLE_LAYER_NAME)
      except ValueError:
        upsample = None
      if upsample is not None and len(model.outputs) == 1 and model.outputs[0] is upsample.output:
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        network = keras.Model(inputs, upsample.input[0], name=model.name + "_low_resolution")
      if len(network.inputs) == 1 and not tf.as_dtype(network.inputs[0].dtype).is_floating:
        float_input = keras.Input(network.inputs[0].shape[1:], dtype="float32", name=network.inputs[0].name)
        network = keras.models.clone_model(network, input_tensors=float_input, clone_function=lambda l: l)
    return network
  return _cached(model, "low_resolution", build)


def window_offsets(size: int, window: int, overlap: float) -> List[int]:
  """Start offsets of sliding windows along one axis (the rule in the module docstring).

  Args:
    size: length of the axis in pixels.
    window: window length in pixels.
    overlap: minimum fraction in [0, 1) of a window shared with the next one.

  Returns:
    Sorted offsets; `[0]` when `size <= window`, else the last is `size - window`.
  """
  if size <= window:
    return [0]
  stride = max(1, int(math.floor(window * (1.0 - overlap))))
  count = int(math.ceil((size - window) / stride)) + 1
  return sorted({min(i * stride, size - window) for i in range(count)})


def pad_to_size(images, size, mean_pixel):
  """Pads `[b, h, w, 3]` float32 images at the bottom/right to `size` with `mean_pixel`.

  Image pixels are kept bit-exact (the mean is added to the padding only). An axis already at least
  as long as `size` is left as it is.

  Returns:
    float32 `[b, max(h, size[0]), max(w, size[1]), 3]`.
  """
  images = tf.cast(images, tf.float32)
  shape = tf.shape(images)
  pad_h = tf.maximum(size[0] - shape[1], 0)
  pad_w = tf.maximum(size[1] - shape[2], 0)
  paddings = [[0, 0], [0, pad_h], [0, pad_w], [0, 0]]
  padded = tf.pad(images, paddings)
  outside = 1.0 - tf.pad(tf.ones_like(images[..., :1]), paddings)
  return padded + outside * tf.reshape(tf.constant(mean_pixel, tf.float32), [1, 1, 1, 3])


def _model_input(model, images):
  """Casts float32 images to the model's input dtype (rounded and clipped for uint8 models)."""
  inputs = getattr(model, "inputs", None)
  dtype = tf.as_dtype(inputs[0].dtype) if inputs else tf.float32
  if dtype == tf.uint8:
    return tf.cast(tf.round(tf.clip_by_value(images, 0.0, 255.0)), tf.uint8)
  return tf.cast(images, dtype)


def _image_pooling_layer(network) -> Optional[ImagePooling]:
  try:
    layer = network.get_layer(IMAGE_POOLING_LAYER_NAME)
  except (ValueError, AttributeError):
    return None
  return layer if isinstance(layer, ImagePooling) else None


def logits_output_stride(network) -> int:
  """The output stride L of `network`'s logits (`h' = (h - 1) // L + 1`), from a symbolic probe.

  The probe is `32 k + 1` pixels (at least 257, and at least a fixed image-pooling crop), which every
  output stride up to 32 divides exactly; a network with a fixed input size is probed at that size.

  Raises:
    ValueError: the output size is not `(probe - 1) / L + 1` for an integer L.
  """
  def build():
    input_shape = tuple(network.inputs[0].shape[1:3]) if getattr(network, "inputs", None) else (None,) * 2
    pool = _image_pooling_layer(network)
    probe = []
    for axis, known in enumerate(input_shape):
      if known is not None:
        probe.append(int(known))
        continue
      at_least = max(257, pool.crop_size[axis] if pool is not None else 1)
      probe.append(_MAX_OUTPUT_STRIDE * math.ceil((at_least - 1) / _MAX_OUTPUT_STRIDE) + 1)
    dtype = network.inputs[0].dtype if getattr(network, "inputs", None) else "float32"
    out = network.compute_output_spec(keras.KerasTensor((1, probe[0], probe[1], 3), dtype=dtype)).shape
    strides = set()
    for size, out_size in zip(probe, out[1:3]):
      if out_size is None or out_size < 2 or (size - 1) % (out_size - 1):
        strides.add(None)
      else:
        strides.add((size - 1) // (out_size - 1))
    if len(strides) != 1 or None in strides:
      raise ValueError(
          f"{getattr(network, 'name', network)}: a {probe[0]}x{probe[1]} input gives logits of "
          f"{out[1]}x{out[2]} pixels, not (size - 1) // L + 1 for one output stride L; multi-scale "
          "inference needs it (research/deeplab multi_scale_logits).")
    return strides.pop()
  return _cached(network, "stride", build)


def network_at_scale(network, scale: float):
  """`network` as the original runs it at `scale`: a fixed image-pooling window scaled with the crop.

  research/deeplab `multi_scale_logits` passes `image_pooling_crop_size` scaled by
  `scale_dimension(., scale)` to the network at each scale other than 1. Other layers (and all
  weights) are shared with `network`; a network with no fixed window is returned as it is.
  """
  pool = _image_pooling_layer(network)
  if scale == 1.0 or pool is None:
    return network

  def build():
    scaled = ImagePooling(tuple(scale_dimension(d, scale) for d in pool.crop_size), pool.output_stride,
                          pool.strides, name=pool.name, dtype=pool.dtype_policy)
    return keras.models.clone_model(network, clone_function=lambda layer: scaled if layer is pool else layer)
  return _cached(network, float(scale), build)


def _scale_logits(network, images, scale: float, stride: int, jit_compile: bool = False):
  """research/deeplab `multi_scale_logits(images, image_pyramid=[scale])`: float32 logits at
  `scale_dimension(size, max(1, scale) / stride)` pixels for `[b, h, w, 3]` float32 images."""
  size = tf.shape(images)[1:3]
  if scale != 1.0:
    images = resize_bilinear_align_corners(images, scale_dimension(size, scale))
  logits = compiled_network(network_at_scale(network, scale), jit_compile)(_model_input(network, images))
  return resize_bilinear_align_corners(tf.cast(logits, tf.float32),
                                       scale_dimension(size, max(1.0, scale) / stride))


def _multi_scale_probabilities(model, images, scales: Sequence[float], add_flipped_images: bool,
                               jit_compile: bool = False, scores: bool = False):
  """Mean softmax over scales (and flips) of float32 images `[b, h, w, 3]` -> `[b, h, w, classes]`.

  With `scores` and a single scale without flipping: the logits resized to the images instead, whose
  argmax research/deeplab's `predict_labels` takes (softmax, which may round two close logits to
  one probability, is then skipped).
  """
  network = low_resolution_logits_model(model)
  stride = logits_output_stride(network)
  size = tf.shape(images)[1:3]
  if scores and len(scales) == 1 and not add_flipped_images:
    return resize_bilinear_align_corners(_scale_logits(network, images, scales[0], stride, jit_compile),
                                         size)
  total = None
  count = 0
  for scale in scales:
    batch = tf.concat([images, tf.reverse(images, [2])], axis=0) if add_flipped_images else images
    logits = _scale_logits(network, batch, scale, stride, jit_compile)
    if add_flipped_images:
      plain, flipped = tf.split(logits, 2, axis=0)
      logits = tf.concat([plain, tf.reverse(flipped, [2])], axis=0)
    probabilities = tf.nn.softmax(resize_bilinear_align_corners(logits, size))
    if add_flipped_images:
      plain, flipped = tf.split(probabilities, 2, axis=0)
      probabilities = plain + flipped
      count += 2
    else:
      count += 1
    total = probabilities if total is None else total + probabilities
  return total / float(count)


def _sliding_window_probabilities(model, images, eval_options: EvalOptions, mean_pixel):
  """Window-by-window probabilities of `[b, H, W, 3]` images with static H, W (see module docstring)."""
  crop_h, crop_w = eval_options.eval_crop_size
  height, width = int(images.shape[1]), int(images.shape[2])
  total = None
  counts = np.zeros((1, height, width, 1), np.float32)
  for top in window_offsets(height, crop_h, eval_options.sliding_window_overlap):
    for left in window_offsets(width, crop_w, eval_options.sliding_window_overlap):
      window = images[:, top:top + crop_h, left:left + crop_w]
      win_h, win_w = int(window.shape[1]), int(window.shape[2])
      probabilities = _multi_scale_probabilities(
          model, pad_to_size(window, (crop_h, crop_w), mean_pixel), eval_options.eval_scales,
          eval_options.add_flipped_images, eval_options.jit_compile)[:, :win_h, :win_w].numpy()
      if total is None:
        total = np.zeros((probabilities.shape[0], height, width, probabilities.shape[-1]), np.float32)
      total[:, top:top + win_h, left:left + win_w] += probabilities
      counts[:, top:top + win_h, left:left + win_w] += 1.0
  return tf.constant(total / counts)


def predict_probabilities(model, images, eval_options: Optional[EvalOptions] = None, *,
                          mean_pixel: Optional[Sequence[float]] = None):
  """Class probabilities averaged over `eval_scales` and flips, at the images' own size.

  Works eagerly and inside `tf.function` (the export traces it); sliding windows need static
  height and width and run eagerly only.

  Args:
    model: a `build_deeplab` model (or any Keras model from `[b, h, w, 3]` images to logits).
    images: `[batch, height, width, 3]` RGB in [0, 255], float32 or uint8 (numpy or tensor).
    eval_options: scales, flipping, eval crop, sliding window and XLA (`jit_compile`); None means
      single scale, no flip, no padding, no XLA.
    mean_pixel: RGB padding value; None takes the model's (127.5, or the ImageNet mean RGB for plain
      ResNets).

  Returns:
    float32 tensor `[batch, height, width, num_classes]` of probabilities summing to 1 per pixel.

  Raises:
    ValueError: if `images` is not `[batch, height, width, 3]`, or an image is larger than
      `eval_crop_size` while `sliding_window` is off.
  """
  return _predict_scores(model, images, eval_options, mean_pixel, scores=False)[0]


def _predict_scores(model, images, eval_options: Optional[EvalOptions], mean_pixel, scores: bool):
  """(`predict_probabilities`, False); with `scores`, (logits, True) where one scale runs unflipped."""
  eval_options = eval_options or EvalOptions()
  scores = scores and len(eval_options.eval_scales) == 1 and not eval_options.add_flipped_images
  images = tf.cast(tf.convert_to_tensor(images), tf.float32)
  if images.shape.rank != 4 or images.shape[-1] not in (3, None):
    raise ValueError(f"images must be [batch, height, width, 3] RGB, got shape {images.shape}.")
  if mean_pixel is None:
    mean_pixel = model_mean_pixel(model)
  crop = eval_options.eval_crop_size
  if crop is None:
    return _multi_scale_probabilities(model, images, eval_options.eval_scales,
                                      eval_options.add_flipped_images, eval_options.jit_compile,
                                      scores), scores
  height, width = images.shape[1], images.shape[2]
  if height is not None and width is not None and (height > crop[0] or width > crop[1]):
    if not eval_options.sliding_window:
      raise ValueError(
          f"image of {height}x{width} pixels is larger than eval_crop_size={crop[0]},{crop[1]}; use an "
          "eval crop at least as large as the largest image (output_stride * k + 1, e.g. 513,513 for "
          "VOC, 1025,2049 for Cityscapes) or turn on sliding_window.")
    return _sliding_window_probabilities(model, images, eval_options, mean_pixel), False
  size = tf.shape(images)[1:3]
  probabilities = _multi_scale_probabilities(model, pad_to_size(images, crop, mean_pixel),
                                             eval_options.eval_scales, eval_options.add_flipped_images,
                                             eval_options.jit_compile, scores)
  return probabilities[:, :size[0], :size[1]], scores


def predict_labels(model, images, eval_options: Optional[EvalOptions] = None, *,
                   mean_pixel: Optional[Sequence[float]] = None):
  """Argmax of `predict_probabilities`: int32 tensor `[batch, height, width]` of class ids.

  At a single scale without flipping, the argmax of the logits resized to the images, as
  research/deeplab `predict_labels` (`tf.argmax(logits, 3)` after `_resize_bilinear`); with several
  scales or flips, of the mean probabilities, as its `predict_labels_multi_scale`. Same arguments and
  errors as `predict_probabilities`.
  """
  return tf.argmax(_predict_scores(model, images, eval_options, mean_pixel, scores=True)[0], axis=-1,
                   output_type=tf.int32)


def predict_labels_and_probabilities(model, images, eval_options: Optional[EvalOptions] = None, *,
                                     mean_pixel: Optional[Sequence[float]] = None):
  """`(predict_labels(...), predict_probabilities(...))` from one run of the network (the export's).

  Same arguments and errors as `predict_probabilities`.
  """
  scores, are_logits = _predict_scores(model, images, eval_options, mean_pixel, scores=True)
  labels = tf.argmax(scores, axis=-1, output_type=tf.int32)
  return labels, (tf.nn.softmax(scores) if are_logits else scores)
