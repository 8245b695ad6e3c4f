"""SavedModel export for TF Serving and plain `tf.saved_model.load`, with preprocessing inside.

research/deeplab `export_model.py` froze a graph taking a uint8 `ImageTensor` `[1, H, W, 3]` and
returning int32 `SemanticPredictions` `[1, H, W]`, optionally averaging over `inference_scales` and
flips. We export a TF2 SavedModel with three signatures (the inference is
`deeplab_tf.evaluation.inference.predict_probabilities`, so multi-scale/flip options apply):

`serving_default` (encoded images, any sizes, one batch; a small answer):
  inputs:  `image_bytes`: string `[batch]`, each a JPEG, PNG, GIF or BMP file's bytes, decoded by
           `deeplab_tf.image_decoding.decode_image_bytes` (3 channels; grey expanded, alpha dropped;
           16-bit grey PNGs by the converters' min-max rule; EXIF orientation is not applied: send
           upright pixels). The `_bytes` suffix lets REST clients send `{"b64": ...}` values.
  outputs: `semantic_predictions_png_bytes`: string `[batch]`, image i's class ids as a grey PNG at
           its own size (8-bit; 16-bit above 256 classes), what research/deeplab vis.py writes as raw
           predictions. The `_bytes` suffix makes TF Serving's REST API return it as `{"b64": ...}`:
           a few kilobytes per image, where a JSON list of ids costs 3 bytes a pixel (1.7 MB for a
           1000x563 photo) and the probabilities about 20 bytes a pixel and class;
           `height`, `width`: int32 `[batch]`, each image's own size in pixels.

`probabilities` (the same inputs; arrays, for clients that want the scores):
  outputs: `semantic_predictions`: int32 `[batch, max_height, max_width]`, image i's class ids in
           `[:height[i], :width[i]]` and -1 elsewhere (padding to the batch's largest image);
           `probabilities`: float32 `[batch, max_height, max_width, num_classes]`, 0 in the padding;
           `height`, `width`: int32 `[batch]`.

  In both, an empty string, bytes of another format (WebP, TIFF, ...), an image of more than
  `max_image_pixels` pixels (read from the file's header, before decoding) fail the request with an
  InvalidArgumentError naming `image_bytes[i]`, as do an empty batch and a tensor of another rank; the
  model keeps serving the next request. Each image is run on its own at its own size (a tf.map_fn), so
  its prediction does not depend on the other images of the batch.

`image_tensor` (the original export's interface):
  inputs:  `image_tensor`: uint8 `[batch, height, width, 3]` RGB (batch 1 in the original).
  outputs: `semantic_predictions`: int32 `[batch, height, width]`;
           `probabilities`: float32 `[batch, height, width, num_classes]` (gRPC clients that want the
           ids only pass `output_filter`).
  Another rank, another channel count, an empty batch or an image of 0 pixels fails with an
  InvalidArgumentError saying what was expected.

The inputs are declared with an unknown shape (`saved_model_cli` shows `unknown_rank`): TF Serving
feeds a request's tensor to the graph without checking it against the declared shape, and a kernel
given a tensor of the wrong rank aborts the whole server process (a failed CHECK), so every shape is
checked inside the graph, before any op that assumes it. Non-finite probabilities (a model whose
weights hold NaN or Inf) fail the request with an InvalidArgumentError naming the image instead of
answering "class 0" everywhere.

Class names travel with the model: `assets/labels.txt`, one name per line, line i naming class i (TF
Serving's and TF Hub's convention for a label map), also reachable as `loaded.labels_file.asset_path`
after `tf.saved_model.load` (`read_exported_class_names`).

TF Serving layout: a server is given a model *base path* and serves its highest integer-named
subdirectory, `<base path>/<version>/saved_model.pb` (`versioned_export_dir` picks the next version).
Our temporary directory's name is not an integer, so a server watching the base path never loads a
half-written version.

With the original export's `min_resize_value`/`max_resize_value`/`resize_factor`/`keep_aspect_ratio`,
both signatures resize each image into that range first and return predictions at its own size.

The export directory also holds `assets.extra/model_options.json`, `assets.extra/eval_options.json`,
`assets.extra/resize.json`
(the TF Serving convention for files beside the model). It is written to a temporary directory next to
`export_dir` and renamed when complete. Every file operation goes through `tf.io.gfile`, so `gs://`
(and `ram://`) paths work.

`export_tflite` writes a TFLite flatbuffer for the LiteRT interpreter (research/deeplab's mobile path):
  input:   `image_tensor`: uint8 `[1, height, width, 3]` RGB at a fixed size (the original's
           `ImageTensor`); preprocessing is inside. An image of another size is fitted to it by
           `fit_to_tflite_input` (shrunk to fit if larger, keeping its aspect ratio; padded at the
           bottom/right with the mean pixel), and int8 calibration sees images prepared that way.
  output:  `semantic_predictions`: int32 `[1, height, width]` class ids (the original's `ArgMax`);
           the input and output tensors carry these names (`get_input_details()`/`get_output_details()`),
           and the signature `serving_default` maps them.
  quantize: `none` (float32), `float16` (weights stored as float16), `dynamic_range` (int8 weights,
  float activations), `int8` (full integer: int8 weights and activations, calibrated on
  representative images; the uint8 input is cast inside, so no input scale is involved).
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import uuid
from typing import Callable, Iterable, Optional, Sequence, Tuple

import tensorflow as tf

from deeplab_tf import image_decoding, io_utils
from deeplab_tf.data import preprocess
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation import inference
from deeplab_tf.image_ops import resize_bilinear_align_corners, resize_nearest_align_corners
from deeplab_tf.model import acceleration
from deeplab_tf.options import EvalOptions, ModelOptions

SERVING_DEFAULT = "serving_default"
PROBABILITIES_SIGNATURE = "probabilities"
IMAGE_TENSOR_SIGNATURE = "image_tensor"
LABELS_PNG_OUTPUT = "semantic_predictions_png_bytes"
# The label map asset: assets/labels.txt, one class name per line.
LABELS_FILENAME = "labels.txt"
EXTRA_DIR = "assets.extra"
MODEL_OPTIONS_FILENAME = "model_options.json"
EVAL_OPTIONS_FILENAME = "eval_options.json"
RESIZE_FILENAME = "resize.json"
# Label value of pixels outside an image in `serving_default`'s padded batch.
PADDING_LABEL = -1
# Largest image (height * width pixels) the signatures accept by default: 4096 x 4096. Larger requests
# are refused before decoding rather than exhausting the server's memory.
DEFAULT_MAX_IMAGE_PIXELS = 4096 * 4096
TFLITE_QUANTIZE_MODES = ("none", "float16", "dynamic_range", "int8")
_VERSION_RE = re.compile(r"^[0-9]+$")
# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG\r\n\x1a\n", "GIF": b"GIF8", "BMP": b"BM"}
# Header bytes read to find an image's size without decoding it (PNG IHDR ends at byte 24, BMP's
# BITMAPINFOHEADER height at byte 26).
_HEADER_BYTES = 26


def _header_size(encoded):
  """(height, width) int64 of a JPEG/PNG/GIF/BMP from its header, without decoding its pixels.

  PNG: IHDR width/height, big-endian uint32 at bytes 16/20. GIF: logical screen width/height,
  little-endian uint16 at bytes 6/8. BMP: BITMAPINFOHEADER width/height, little-endian int32 at bytes
  18/22 (a negative height marks a top-down bitmap). JPEG: `tf.io.extract_jpeg_shape` (SOF marker).
  Other bytes give (0, 0).
  """
  head = tf.io.decode_raw(tf.strings.substr(encoded + b"\0" * _HEADER_BYTES, 0, _HEADER_BYTES), tf.uint8)
  b = tf.cast(head, tf.int64)

  def number(start, count, big_endian):
    order = range(count) if big_endian else reversed(range(count))
    value = tf.constant(0, tf.int64)
    for i in order:
      value = value * 256 + b[start + i]
    return value

  def bmp_height():
    raw = number(22, 4, False)
    return tf.abs(tf.where(raw >= 2 ** 31, raw - 2 ** 32, raw))

  prefix = lambda name: tf.equal(tf.strings.substr(encoded, 0, len(_MAGIC[name])), _MAGIC[name])
  return tf.case([
      (prefix("JPEG"), lambda: tf.cast(tf.io.extract_jpeg_shape(encoded)[:2], tf.int64)),
      (prefix("PNG"), lambda: tf.stack([number(20, 4, True), number(16, 4, True)])),
      (prefix("GIF"), lambda: tf.stack([number(8, 2, False), number(6, 2, False)])),
      (prefix("BMP"), lambda: tf.stack([bmp_height(), number(18, 4, False)])),
  ], default=lambda: tf.zeros([2], tf.int64))


def _checked_decode(encoded, index, max_image_pixels: int):
  """Decodes `image_bytes[index]` to uint8 `[h, w, 3]` after checks whose errors name the input.

  Raises (when run):
    tf.errors.InvalidArgumentError: empty bytes, a format decode_image does not read, or more than
      `max_image_pixels` pixels.
  """
  length = tf.strings.length(encoded)
  known = tf.reduce_any(tf.stack([tf.equal(tf.strings.substr(encoded, 0, len(m)), m)
                                  for m in _MAGIC.values()]))
  check_empty = tf.debugging.Assert(length > 0, [tf.strings.format(
      "image_bytes[{}]: empty string; expected the bytes of a JPEG, PNG, GIF or BMP file", index)])
  with tf.control_dependencies([check_empty]):
    check_format = tf.debugging.Assert(known, [tf.strings.format(
        "image_bytes[{}]: {} bytes that are not a JPEG, PNG, GIF or BMP file (the formats "
        "tf.io.decode_image reads; WebP, TIFF and others must be converted first); first bytes {}",
        (index, length, tf.io.decode_raw(tf.strings.substr(encoded + b"\0" * 8, 0, 8), tf.uint8)))])
  with tf.control_dependencies([check_format]):
    size = _header_size(encoded)
    check_size = tf.debugging.Assert(size[0] * size[1] <= max_image_pixels, [tf.strings.format(
        "image_bytes[{}]: image of {}x{} pixels exceeds the limit max_image_pixels={} of this export; "
        "downscale it first", (index, size[0], size[1], max_image_pixels))])
  with tf.control_dependencies([check_size]):
    return image_decoding.decode_image_bytes(encoded)


def _check_bytes_batch(image_bytes):
  """`image_bytes` as a string `[batch]` tensor, after an in-graph check of its shape.

  Raises (when run):
    tf.errors.InvalidArgumentError: another rank than 1, or an empty batch.
  """
  shape = tf.shape(image_bytes)
  check = tf.debugging.Assert(tf.equal(tf.size(shape), 1) & (tf.size(image_bytes) > 0), [tf.strings.format(
      "image_bytes: a string tensor of shape {}; expected a list [batch] of at least one encoded image "
      "(the bytes of one JPEG or PNG file each)", [shape])])
  with tf.control_dependencies([check]):
    return tf.ensure_shape(tf.identity(image_bytes), [None])


def _check_image_tensor(image_tensor, max_image_pixels: int):
  """`image_tensor` as uint8 `[batch, height, width, 3]`, after in-graph checks of its shape.

  TF Serving does not check a request against the signature's shape, and a kernel given a tensor of
  another rank than it assumes aborts the process; so the shape is checked by ops that take any rank
  (one Assert, then `tf.ensure_shape`, itself an InvalidArgumentError on a wrong rank), and every op
  of the prediction reads the checked tensor.

  Raises (when run):
    tf.errors.InvalidArgumentError: rank other than 4, channels other than 3, an empty batch, an image
      of 0 pixels, or more than `max_image_pixels` pixels.
  """
  shape = tf.shape(image_tensor, out_type=tf.int64)
  padded = tf.concat([shape, tf.ones([4], tf.int64)], 0)  # indexable whatever the rank
  check_shape = tf.debugging.Assert(
      tf.equal(tf.size(shape), 4) & tf.equal(padded[3], 3) & (padded[0] > 0) & (padded[1] > 0) &
      (padded[2] > 0), [tf.strings.format(
          "image_tensor: shape {}; expected uint8 [batch, height, width, 3] (a single image needs its "
          "batch dimension: [1, height, width, 3]) with batch, height and width of at least 1",
          [shape])])
  with tf.control_dependencies([check_shape]):
    check_size = tf.debugging.Assert(padded[1] * padded[2] <= max_image_pixels, [tf.strings.format(
        "image_tensor: images of {}x{} pixels exceed the limit max_image_pixels={} of this export",
        (padded[1], padded[2], max_image_pixels))])
  with tf.control_dependencies([check_size]):
    return tf.ensure_shape(tf.identity(image_tensor), [None, None, None, 3])


def _check_finite(probabilities, what):
  """`probabilities` after an in-graph check that they are finite (`what` names the input)."""
  check = tf.debugging.Assert(tf.reduce_all(tf.math.is_finite(probabilities)), [tf.strings.join([
      what, ": the probabilities of the model are not finite (NaN or Inf): its weights are broken; export "
      "a checkpoint from before training diverged"])])
  with tf.control_dependencies([check]):
    return tf.identity(probabilities)


class DeepLabServingModule(tf.Module):
  """A `tf.Module` holding the Keras model and the two serving functions (see the module docstring)."""

  def __init__(self, model, model_options: ModelOptions, eval_options: EvalOptions,
               mean_pixel: Sequence[float], max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               resize: Optional[dict] = None):
    super().__init__(name="deeplab_serving")
    self.model = model
    # Built here, not while tracing: the model without its final upsampling (same weights).
    self.network = inference.low_resolution_logits_model(model)
    self._num_classes = model_options.num_classes
    self._eval_options = eval_options
    self._mean_pixel = tuple(float(v) for v in mean_pixel)
    self._max_image_pixels = int(max_image_pixels)
    self._resize = dict(resize or {})

  def _predict(self, images):
    """(int32 labels [b, h, w], float32 probabilities [b, h, w, classes]) of uint8 images [b, h, w, 3].

    With `resize` (research/deeplab export_model.py's min/max_resize_value, resize_factor,
    keep_aspect_ratio): the image is first resized into the range (`preprocess.resize_to_range_size`,
    bilinear, align_corners), predicted there, and the labels resized back to the image's size by nearest
    neighbour with align_corners, as the original export does; the probabilities are resized back
    bilinearly (align_corners).
    """
    if not (self._resize.get("min_resize_value") or self._resize.get("max_resize_value")):
      return inference.predict_labels_and_probabilities(self.model, images, self._eval_options,
                                                        mean_pixel=self._mean_pixel)
    size = tf.shape(images)[1:3]
    new_size = preprocess.resize_to_range_size(
        size[0], size[1], self._resize["min_resize_value"], self._resize.get("max_resize_value"),
        self._resize.get("resize_factor"), self._resize.get("keep_aspect_ratio", True))
    resized = resize_bilinear_align_corners(tf.cast(images, tf.float32), new_size)
    labels, probabilities = inference.predict_labels_and_probabilities(
        self.model, resized, self._eval_options, mean_pixel=self._mean_pixel)
    labels = resize_nearest_align_corners(labels[..., tf.newaxis], size)[..., 0]
    return labels, resize_bilinear_align_corners(probabilities, size)

  @tf.function(input_signature=[tf.TensorSpec(None, tf.uint8, name="image_tensor")])
  def image_tensor(self, image_tensor):
    images = _check_image_tensor(image_tensor, self._max_image_pixels)
    labels, probabilities = self._predict(images)
    probabilities = _check_finite(probabilities, "image_tensor")
    with tf.control_dependencies([probabilities]):
      labels = tf.identity(labels)
    return {"semantic_predictions": labels, "probabilities": probabilities}

  def _predict_encoded(self, encoded, index):
    """(int32 labels [h, w], float32 probabilities [h, w, classes]) of `image_bytes[index]`."""
    image = _checked_decode(encoded, index, self._max_image_pixels)
    labels, probabilities = self._predict(image[tf.newaxis])
    probabilities = _check_finite(probabilities[0], tf.strings.join(
        ["image_bytes[", tf.strings.as_string(index), "]"]))
    with tf.control_dependencies([probabilities]):
      return tf.identity(labels[0]), probabilities

  @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])
  def serve_encoded(self, image_bytes):
    """`serving_default`: class ids as one PNG per image."""
    image_bytes = _check_bytes_batch(image_bytes)
    indices = tf.range(tf.shape(image_bytes)[0])
    label_dtype = tf.uint8 if self._num_classes <= 256 else tf.uint16

    def predict_one(element):
      labels, _ = self._predict_encoded(*element)
      size = tf.shape(labels)
      return tf.io.encode_png(tf.cast(labels, label_dtype)[..., tf.newaxis]), size[0], size[1]

    pngs, heights, widths = tf.map_fn(
        predict_one, (image_bytes, indices),
        fn_output_signature=(tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32),
                             tf.TensorSpec([], tf.int32)))
    return {LABELS_PNG_OUTPUT: pngs, "height": heights, "width": widths}

  @tf.function(input_signature=[tf.TensorSpec(None, tf.string, name="image_bytes")])
  def serve_probabilities(self, image_bytes):
    """`probabilities`: padded class-id and probability arrays."""
    image_bytes = _check_bytes_batch(image_bytes)
    indices = tf.range(tf.shape(image_bytes)[0])

    def decode(encoded, index):
      return _checked_decode(encoded, index, self._max_image_pixels)

    sizes = tf.map_fn(lambda e: tf.shape(decode(*e))[:2], (image_bytes, indices),
                      fn_output_signature=tf.TensorSpec([2], tf.int32))
    max_size = tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int32)], axis=0), axis=0)

    def predict_one(element):
      labels, probabilities = self._predict_encoded(*element)
      shape = tf.shape(labels)
      paddings = [[0, max_size[0] - shape[0]], [0, max_size[1] - shape[1]]]
      labels = tf.pad(labels, paddings, constant_values=PADDING_LABEL)
      probabilities = tf.pad(probabilities, paddings + [[0, 0]])
      return labels, probabilities

    labels, probabilities = tf.map_fn(
        predict_one, (image_bytes, indices),
        fn_output_signature=(tf.TensorSpec([None, None], tf.int32),
                             tf.TensorSpec([None, None, self._num_classes], tf.float32)))
    return {"semantic_predictions": labels, "probabilities": probabilities,
            "height": sizes[:, 0], "width": sizes[:, 1]}


def _join(*parts: str) -> str:
  return posixpath.join(*parts) if io_utils.has_scheme(parts[0]) else os.path.join(*parts)


def _move_tree(source: str, destination: str) -> None:
  """Moves directory `source` to `destination` (which must not exist).

  Local directories are renamed (atomic). Other file systems (gs://, ram://) move file by file, since
  a directory rename there does not carry its files; `saved_model.pb` goes last, so a TF Serving
  watching the base path sees a version only once the rest of it is in place.
  """
  if not io_utils.has_scheme(source):
    tf.io.gfile.rename(source, destination)
    return
  folders, files = [], []
  for folder, _, names in tf.io.gfile.walk(source):
    folders.append(folder)
    files += [_join(folder, name) for name in names]
  # ram://'s listing matches names by prefix (it reports a phantom "assets/.extra" beside
  # "assets.extra"): keep only what exists as a file.
  files = [f for f in files if tf.io.gfile.exists(f) and not tf.io.gfile.isdir(f)]
  files.sort(key=lambda f: (posixpath.basename(f) == "saved_model.pb", f))
  for folder in folders:
    tf.io.gfile.makedirs(destination + folder[len(source):])
  for path in files:
    tf.io.gfile.rename(path, destination + path[len(source):])
  for folder in sorted(folders, reverse=True):  # deepest first; now empty
    try:
      tf.io.gfile.rmtree(folder)
    except tf.errors.NotFoundError:  # ram:// may list a folder twice
      pass


def _temporary_sibling(path: str, suffix: str) -> str:
  """A hidden, non-integer name beside `path` (TF Serving ignores it as a version)."""
  return _join(io_utils.dirname(path), f".{io_utils.basename(path)}.{uuid.uuid4().hex[:12]}{suffix}")


def versioned_export_dir(base_path: str, version: Optional[int] = None) -> str:
  """`<base_path>/<version>`: TF Serving's layout of a model's versions.

  Args:
    base_path: the model base path a TF Serving `--model_base_path` points at.
    version: the version number; None takes one more than the highest existing integer-named
      subdirectory (1 for a new base path).

  Returns:
    The version directory (not created).

  Raises:
    ValueError: `version` is negative, or `base_path` exists and is not a directory.
  """
  if version is not None and version < 0:
    raise UserError(f"export_version={version}: expected a non-negative integer.")
  if tf.io.gfile.exists(base_path) and not io_utils.isdir(base_path):
    raise UserError(f"export_path={base_path} is a file; expected the model base path (a directory "
                     "that holds one subdirectory per version).")
  if version is None:
    existing = [int(name.rstrip("/")) for name in
                (tf.io.gfile.listdir(base_path) if io_utils.isdir(base_path) else [])
                if _VERSION_RE.match(name.rstrip("/"))]
    version = max(existing, default=0) + 1
  return _join(base_path, str(version))


def export_saved_model(model, export_dir: str, model_options: ModelOptions,
                       eval_options: Optional[EvalOptions] = None, *,
                       mean_pixel: Optional[Sequence[float]] = None, overwrite: bool = False,
                       max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                       resize: Optional[dict] = None,
                       class_names: Optional[Sequence[str]] = None, kernel_policy="portable") -> str:
  """Writes `model` as a SavedModel with `serving_default`, `probabilities` and `image_tensor` signatures.

  Args:
    model: a `build_deeplab` Keras model (float32 or uint8 input), weights loaded.
    export_dir: destination directory (for TF Serving, `versioned_export_dir(base_path)`); must not
      exist unless `overwrite`. Any `tf.io.gfile` path (local, gs://, ram://).
    model_options: the model's architecture, stored as `assets.extra/model_options.json`.
    eval_options: inference scales / flipping / eval padding used by both signatures (the original's
      `--inference_scales`, `--add_flipped_images`); None is single scale, no flip, no padding.
      Sliding windows need static image sizes and cannot be exported.
    mean_pixel: RGB padding value for `eval_crop_size`; None takes the model's.
    overwrite: replace an existing `export_dir` (only after the new export is complete).
    max_image_pixels: requests with a larger image (height * width) are refused with an error naming
      the input (see the module docstring).
    resize: `{"min_resize_value", "max_resize_value", "resize_factor", "keep_aspect_ratio"}` (the
      original export_model.py's flags, e.g. `bin.eval_common.resize_from_flags()`): images are resized
      into that range inside the export and the predictions resized back (`DeepLabServingModule._predict`);
      stored as `assets.extra/resize.json`. None or no min/max value: no resize.
    class_names: `num_classes` distinct names, index = class id (a dataset descriptor's
      `class_names`), written as `assets/labels.txt`; None names the classes "0", "1", ...
    kernel_policy: the kernels traced into the export (`deeplab_tf.model.acceleration.KernelPolicy`
      or its name). 'portable' (default): plain TF ops that every TensorFlow build and device runs
      (TF Serving, GPUs, ARM, macOS); 'cpu': the faster oneDNN CPU graph, which runs on oneDNN CPUs
      only (its dilated DepthwiseConv2dNative has no kernel elsewhere).

  Returns:
    `export_dir`.

  Raises:
    FileExistsError: `export_dir` exists and `overwrite` is False.
    deeplab_tf.errors.UserError (a ValueError): `eval_options.sliding_window` is set,
      `max_image_pixels` < 1, the model's class count differs from `model_options.num_classes`, bad
      `class_names`, or the model's weights or outputs are not finite (NaN or Inf; checked on a probe
      image before anything is written).
  """
  eval_options = eval_options or EvalOptions()
  class_names = check_class_names(class_names, model_options.num_classes)
  if eval_options.sliding_window:
    raise UserError("sliding_window cannot be exported (it needs static image sizes); export without "
                     "it or with an eval_crop_size covering the largest image.")
  if max_image_pixels < 1:
    raise UserError(f"max_image_pixels={max_image_pixels}: expected a positive number of pixels.")
  outputs = getattr(model, "outputs", None)
  if outputs and outputs[0].shape[-1] not in (None, model_options.num_classes):
    raise UserError(f"the model predicts {outputs[0].shape[-1]} classes but model_options.num_classes="
                     f"{model_options.num_classes}.")
  if not io_utils.has_scheme(export_dir):
    export_dir = os.path.abspath(export_dir)  # not-gfile: a local path (no scheme), made absolute
  export_dir = export_dir.rstrip("/")
  if tf.io.gfile.exists(export_dir) and not overwrite:
    raise FileExistsError(f"{export_dir} exists; choose a new --export_path or pass overwrite=True.")
  if mean_pixel is None:
    mean_pixel = inference.model_mean_pixel(model)
  if resize:
    preprocess.check_resize_values(resize.get("min_resize_value"), resize.get("max_resize_value"),
                                   resize.get("resize_factor"))
  check_finite_model(model, mean_pixel)
  # Served with every BatchNorm folded into its convolution (the same function to float32 rounding).
  module = DeepLabServingModule(acceleration.inference_model(model, kernel_policy), model_options,
                                eval_options, mean_pixel, max_image_pixels, resize)
  tf.io.gfile.makedirs(io_utils.dirname(export_dir))
  tmp = _temporary_sibling(export_dir, ".tmp")
  try:
    # The label map: written into the export's assets.extra/, and tracked as an Asset, which
    # tf.saved_model.save copies to assets/labels.txt.
    tf.io.gfile.makedirs(_join(tmp, EXTRA_DIR))
    labels_path = _join(tmp, EXTRA_DIR, LABELS_FILENAME)
    with tf.io.gfile.GFile(labels_path, "w") as f:
      f.write("".join(name + "\n" for name in class_names))
    module.labels_file = tf.saved_model.Asset(labels_path)
    signatures = {SERVING_DEFAULT: module.serve_encoded.get_concrete_function(),
                  PROBABILITIES_SIGNATURE: module.serve_probabilities.get_concrete_function(),
                  IMAGE_TENSOR_SIGNATURE: module.image_tensor.get_concrete_function()}
    # TF1-style loaders (TF Serving's C++ SavedModelBundle, `saved_model_cli run`) restore only the
    # tf.Variables tracked as such; Keras 3 wraps its tf.Variables, so track the ones the signatures
    # capture (as keras.export.ExportArchive does), else they load uninitialised.
    captured = {id(v): v for f in signatures.values() for v in f.variables}
    module.captured_variables = list(captured.values())
    tf.saved_model.save(module, tmp, signatures=signatures)
    extra = _join(tmp, EXTRA_DIR)
    tf.io.gfile.makedirs(extra)
    for name, text in ((MODEL_OPTIONS_FILENAME, model_options.to_json(indent=1)),
                       (EVAL_OPTIONS_FILENAME, eval_options.to_json(indent=1)),
                       (RESIZE_FILENAME, json.dumps(dict(resize or {}), indent=1))):
      with tf.io.gfile.GFile(_join(extra, name), "w") as f:
        f.write(text + "\n")
    if tf.io.gfile.exists(export_dir):
      old = _temporary_sibling(export_dir, ".old")
      _move_tree(export_dir, old)
      _move_tree(tmp, export_dir)
      tf.io.gfile.rmtree(old)
    else:
      _move_tree(tmp, export_dir)
  except BaseException:
    if tf.io.gfile.exists(tmp):
      tf.io.gfile.rmtree(tmp)
    raise
  return export_dir


def check_class_names(class_names: Optional[Sequence[str]], num_classes: int) -> Tuple[str, ...]:
  """`class_names` as a tuple, checked; None gives ("0", "1", ..., str(num_classes - 1)).

  Raises:
    deeplab_tf.errors.UserError: not `num_classes` names, a repeated or empty name, or a name with a
      line break (the label map holds one name per line).
  """
  if class_names is None:
    return tuple(str(i) for i in range(num_classes))
  names = tuple(str(name) for name in class_names)
  if len(names) != num_classes:
    raise UserError(f"{len(names)} class names for a model of {num_classes} classes; give one name per "
                    "class, index = class id.")
  bad = [name for name in names if not name.strip() or "\n" in name or "\r" in name]
  repeated = sorted({name for name in names if names.count(name) > 1})
  if bad or repeated:
    raise UserError(f"class names {bad or repeated}: expected distinct, non-empty names of one line each.")
  return names


def check_finite_model(model, mean_pixel: Optional[Sequence[float]] = None) -> None:
  """Refuses a model whose weights, or whose probabilities on a probe image, are not finite.

  A diverged training run can leave NaN or Inf in weights (BatchNorm moving variances first); its
  exports would answer NaN probabilities, i.e. "class 0" everywhere. The probe is a 65x65 ramp of
  grey levels.

  Raises:
    deeplab_tf.errors.UserError: naming up to three non-finite weights, or the probe's outputs.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  broken = [w.path if hasattr(w, "path") else w.name for w in model.weights
            if not np.all(np.isfinite(np.asarray(w.numpy(), np.float64)))]
  if broken:
    raise UserError(f"the model has {len(broken)} weight tensor(s) holding NaN or Inf (e.g. "
                    f"{', '.join(broken[:3])}); training diverged: use an earlier checkpoint.")
  probe = np.tile(np.linspace(0, 255, 65, dtype=np.float32)[None, :, None], (65, 1, 3))[None]
  probabilities = inference.predict_probabilities(model, probe, mean_pixel=mean_pixel).numpy()
  if not np.all(np.isfinite(probabilities)):
    raise UserError("the model's probabilities on a probe image are not finite (NaN or Inf) although "
                    "its weights are: its activations overflow; use an earlier checkpoint.")


def read_exported_class_names(export_dir: str) -> Tuple[str, ...]:
  """The class names of an export (`assets/labels.txt`); ids as strings for an export without one.

  Raises:
    FileNotFoundError: `export_dir` is not a deeplab_tf export (no model_options.json).
  """
  num_classes = read_exported_model_options(export_dir).num_classes
  path = _join(export_dir, "assets", LABELS_FILENAME)
  if not tf.io.gfile.exists(path):
    return tuple(str(i) for i in range(num_classes))
  names = tuple(line.rstrip("\r") for line in io_utils.read_text(path).split("\n")[:num_classes])
  return check_class_names(names, num_classes)


def read_exported_model_options(export_dir: str) -> ModelOptions:
  """The `ModelOptions` stored with an export (raises FileNotFoundError naming the missing file)."""
  path = _join(export_dir, EXTRA_DIR, MODEL_OPTIONS_FILENAME)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: not found; is {export_dir} a deeplab_tf export?")
  return ModelOptions.from_json(io_utils.read_text(path))


def fit_to_tflite_input(image, input_size: Tuple[int, int], mean_pixel: Sequence[float]):
  """Prepares one image for the fixed-size TFLite input: how to run `export_tflite`'s model on any image.

  An image larger than `input_size` on either side is shrunk to fit, keeping its aspect ratio
  (bilinear, align_corners, as every resize of research/deeplab); then it is padded at the bottom and
  right with `mean_pixel` (rounded to uint8), as the original's eval padding. The model's labels for the
  image are `labels[:, :height, :width]`, resized back to the image's size by nearest neighbour when
  it was shrunk. Int8 calibration (`representative_images`) prepares its images by this function.

  Args:
    image: uint8 or float `[height, width, 3]` RGB in [0, 255] (numpy or tensor).
    input_size: (height, width) of the TFLite input.
    mean_pixel: RGB padding value.

  Returns:
    `(uint8 numpy [1, input_height, input_width, 3], (height, width))`, the second being the size of
    the image inside the input.
  """
  import numpy as np  # pylint: disable=import-outside-toplevel
  image = tf.cast(tf.convert_to_tensor(image), tf.float32)
  height, width = int(image.shape[0]), int(image.shape[1])
  scale = min(1.0, input_size[0] / height, input_size[1] / width)
  if scale < 1.0:
    height = min(input_size[0], max(1, int(round(height * scale))))
    width = min(input_size[1], max(1, int(round(width * scale))))
    image = resize_bilinear_align_corners(image[tf.newaxis], (height, width))[0]
  padded = inference.pad_to_size(image[tf.newaxis], input_size, mean_pixel)
  return np.asarray(tf.cast(tf.round(tf.clip_by_value(padded, 0, 255)), tf.uint8)), (height, width)


def representative_images(file_pattern: str, input_size: Tuple[int, int], num_images: int,
                          mean_pixel: Sequence[float]) -> Callable[[], Iterable[list]]:
  """A TFLite `representative_dataset` of the first `num_images` images of TFRecord shards.

  Each whole image is prepared by `fit_to_tflite_input` (shrunk to fit the input if larger, padded
  with `mean_pixel`), so calibration sees what inference will.

  Args:
    file_pattern: glob of the shards (`<dataset_dir>/<split>-*.tfrecord`), deeplab_tf's features.
    input_size: (height, width) of the TFLite input in pixels.
    num_images: how many images to calibrate on (`deeplab_export_model --num_calibration_images`;
      100 or so is usual).
    mean_pixel: RGB padding value.

  Returns:
    A generator function yielding `[uint8 [1, height, width, 3]]` lists.

  Raises:
    deeplab_tf.errors.UserError: no file matches `file_pattern`, or `num_images` < 1.
  """
  from deeplab_tf.data.features import parse_example
  if num_images < 1:
    raise UserError(f"num_calibration_images={num_images}: expected at least one image.")
  files = sorted(tf.io.gfile.glob(file_pattern))
  if not files:
    raise UserError(f"no TFRecord file matches {file_pattern} (the calibration images of --quantize=int8).")

  def generate():
    for record in tf.data.TFRecordDataset(files).take(num_images):
      yield [fit_to_tflite_input(parse_example(record)["image"], input_size, mean_pixel)[0]]

  return generate


class _TFLiteModule(tf.Module):
  """The TFLite model's one function: uint8 image in, int32 class ids out (names as the original's)."""

  def __init__(self, model, input_size):
    super().__init__(name="deeplab_tflite")
    self.model = model
    self.serve = tf.function(self._serve, input_signature=[
        tf.TensorSpec([1, *input_size, 3], tf.uint8, name=IMAGE_TENSOR_SIGNATURE)])

  def _serve(self, image_tensor):
    logits = self.model(tf.cast(image_tensor, self.model.inputs[0].dtype), training=False)
    # tf.argmax, not keras.ops.argmax: the latter adds NaN handling (BitwiseAnd) TFLite has no kernel for.
    return {"semantic_predictions": tf.argmax(logits, axis=-1, output_type=tf.int32)}


class _QuietConversion:
  """Raises TensorFlow's and absl's Python logging to WARNING during a conversion (the INFO lines of
  the converter's temporary SavedModel), and restores them after."""

  def __enter__(self):
    import logging  # pylint: disable=import-outside-toplevel
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    self._absl_verbosity = absl_logging.get_verbosity()
    absl_logging.set_verbosity(min(self._absl_verbosity, absl_logging.WARNING))
    self._logger = logging.getLogger("tensorflow")
    self._level = self._logger.level
    self._logger.setLevel(max(self._logger.getEffectiveLevel(), logging.WARNING))
    return self

  def __exit__(self, *exc):
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.set_verbosity(self._absl_verbosity)
    self._logger.setLevel(self._level)
    return False


def _name_tflite_tensors(flatbuffer: bytes) -> bytes:
  """Names the TFLite model's input `image_tensor` and output `semantic_predictions` (the converter
  calls them after its internal graph: `serving_default_image_tensor:0`, `StatefulPartitionedCall:0`)."""
  from tensorflow.lite.tools import flatbuffer_utils  # pylint: disable=import-outside-toplevel
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
  subgraph = model.subgraphs[0]
  subgraph.tensors[subgraph.inputs[0]].name = IMAGE_TENSOR_SIGNATURE.encode()
  subgraph.tensors[subgraph.outputs[0]].name = b"semantic_predictions"
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def export_tflite(model, path: str, input_size: Tuple[int, int], *, quantize: str = "none",
                  representative_dataset: Optional[Callable[[], Iterable[list]]] = None,
                  overwrite: bool = False, kernel_policy="portable") -> str:
  """Writes `model` as a TFLite flatbuffer (see the module docstring for its input and output).

  Single scale, no flipping: the original's mobile export too ran the network once.

  Args:
    model: a `build_deeplab` Keras model (float32 or uint8 input), weights loaded.
    path: the `.tflite` file to write (any `tf.io.gfile` path); must not exist unless `overwrite`.
    input_size: (height, width) in pixels of the fixed input (e.g. 513, 513).
    quantize: one of `TFLITE_QUANTIZE_MODES`.
    representative_dataset: calibration images for `quantize="int8"` (see `representative_images`).
    overwrite: replace an existing file.
    kernel_policy: the kernels of the converted graph (see `export_saved_model`); 'portable'
      (default) is what LiteRT's builtin ops cover.

  Returns:
    `path`.

  Raises:
    deeplab_tf.errors.UserError (a ValueError): an unknown `quantize`, int8 without
      `representative_dataset`, a bad `input_size`, or a model whose weights or outputs are not finite.
    FileExistsError: `path` exists and `overwrite` is False.
  """
  if quantize not in TFLITE_QUANTIZE_MODES:
    raise UserError(f"quantize={quantize!r}: expected one of {', '.join(TFLITE_QUANTIZE_MODES)}.")
  if quantize == "int8" and representative_dataset is None:
    raise UserError("quantize='int8' needs representative images to calibrate on (--dataset_dir with "
                    "TFRecords, see --num_calibration_images).")
  if len(input_size) != 2 or min(input_size) < 1:
    raise UserError(f"input_size={input_size}: expected (height, width) in pixels, e.g. --crop_size=513,513.")
  if tf.io.gfile.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; choose a new --export_path or pass overwrite=True.")
  check_finite_model(model)
  # Unfolded (the converter folds BatchNorms for its quantisation); no channel padding at inference.
  model = acceleration.apply_kernel_policy(model, kernel_policy, training=False)
  module = _TFLiteModule(model, tuple(input_size))
  # A concrete function of our own, not from_keras_model: Keras would print every captured variable.
  function = module.serve.get_concrete_function()
  # The converter saves the module first: track Keras 3's wrapped tf.Variables as such (as
  # export_saved_model does), else they are saved uninitialised.
  module.captured_variables = list({id(v): v for v in function.variables}.values())
  converter = tf.lite.TFLiteConverter.from_concrete_functions([function], module)
  if quantize != "none":
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
  if quantize == "float16":
    converter.target_spec.supported_types = [tf.float16]
  elif quantize == "int8":
    converter.representative_dataset = representative_dataset
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  with _QuietConversion():
    flatbuffer = _name_tflite_tensors(converter.convert())
  with io_utils.atomic_open(path, "wb") as f:
    f.write(flatbuffer)
  return path
