"""SavedModel export for TF Serving and plain `tf.saved_model.load`, with preprocessing inside.

research/deeplab `export_model.py` froze a graph taking a uint8 `ImageTensor` `[1, H, W, 3]` and
returning int32 `SemanticPredictions` `[1, H, W]`, optionally averaging over `inference_scales` and
flips. We export a TF2 SavedModel with two signatures (the inference is
`deeplab_tf.evaluation.inference.predict_probabilities`, so multi-scale/flip options apply):

`serving_default` (encoded images, any sizes, one batch):
  inputs:  `image_bytes`: string `[batch]`, each a JPEG, PNG, GIF or BMP file's bytes (decoded with
           `tf.io.decode_image` to 3 channels; greyscale is expanded, alpha dropped). The `_bytes`
           suffix lets REST clients send `{"b64": ...}` values.
  outputs: `semantic_predictions`: int32 `[batch, max_height, max_width]`, image i's class ids in
           `[:height[i], :width[i]]` and -1 elsewhere (padding to the batch's largest image);
           `probabilities`: float32 `[batch, max_height, max_width, num_classes]`, 0 in the padding;
           `height`, `width`: int32 `[batch]`, each image's own size in pixels.
  Each image is run on its own at its own size (a tf.map_fn), so its prediction does not depend on
  the other images of the batch.

`image_tensor` (the original export's interface):
  inputs:  `image_tensor`: uint8 `[batch, height, width, 3]` RGB (batch 1 in the original).
  outputs: `semantic_predictions`: int32 `[batch, height, width]`;
           `probabilities`: float32 `[batch, height, width, num_classes]`.

The export directory also holds `assets.extra/model_options.json` and `assets.extra/eval_options.json`
(the TF Serving convention for files beside the model). It is written to a temporary directory next to
`export_dir` and renamed when complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional, Sequence

import tensorflow as tf

from deeplab_tf.evaluation import inference
from deeplab_tf.model.folding import fold_batch_norm
from deeplab_tf.options import EvalOptions, ModelOptions

SERVING_DEFAULT = "serving_default"
IMAGE_TENSOR_SIGNATURE = "image_tensor"
EXTRA_DIR = "assets.extra"
MODEL_OPTIONS_FILENAME = "model_options.json"
EVAL_OPTIONS_FILENAME = "eval_options.json"
# Label value of pixels outside an image in `serving_default`'s padded batch.
PADDING_LABEL = -1


class DeepLabServingModule(tf.Module):
  """A `tf.Module` holding the Keras model and the two serving functions (see the module docstring)."""

  def __init__(self, model, model_options: ModelOptions, eval_options: EvalOptions,
               mean_pixel: Sequence[float]):
    super().__init__(name="deeplab_serving")
    self.model = model
    # Built here, not while tracing: the model without its final upsampling (same weights).
    self.network = inference.low_resolution_logits_model(model)
    self._num_classes = model_options.num_classes
    self._eval_options = eval_options
    self._mean_pixel = tuple(float(v) for v in mean_pixel)

  def _probabilities(self, images):
    return inference.predict_probabilities(self.model, images, self._eval_options,
                                           mean_pixel=self._mean_pixel)

  @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name="image_tensor")])
  def image_tensor(self, image_tensor):
    probabilities = self._probabilities(image_tensor)
    return {"semantic_predictions": tf.argmax(probabilities, axis=-1, output_type=tf.int32),
            "probabilities": probabilities}

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
  def serve_encoded(self, image_bytes):
    def decode(encoded):
      return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

    sizes = tf.map_fn(lambda e: tf.shape(decode(e))[:2], image_bytes,
                      fn_output_signature=tf.TensorSpec([2], tf.int32))
    max_size = tf.reduce_max(tf.concat([sizes, tf.zeros([1, 2], tf.int32)], axis=0), axis=0)

    def predict_one(encoded):
      image = decode(encoded)
      probabilities = self._probabilities(image[tf.newaxis])[0]
      labels = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
      shape = tf.shape(labels)
      paddings = [[0, max_size[0] - shape[0]], [0, max_size[1] - shape[1]]]
      labels = tf.pad(labels, paddings, constant_values=PADDING_LABEL)
      probabilities = tf.pad(probabilities, paddings + [[0, 0]])
      return labels, probabilities

    labels, probabilities = tf.map_fn(
        predict_one, image_bytes,
        fn_output_signature=(tf.TensorSpec([None, None], tf.int32),
                             tf.TensorSpec([None, None, self._num_classes], tf.float32)))
    return {"semantic_predictions": labels, "probabilities": probabilities,
            "height": sizes[:, 0], "width": sizes[:, 1]}


def export_saved_model(model, export_dir: str, model_options: ModelOptions,
                       eval_options: Optional[EvalOptions] = None, *,
                       mean_pixel: Optional[Sequence[float]] = None, overwrite: bool = False) -> str:
  """Writes `model` as a SavedModel with `serving_default` and `image_tensor` signatures.

  Args:
    model: a `build_deeplab` Keras model (float32 or uint8 input), weights loaded.
    export_dir: destination directory; must not exist unless `overwrite`.
    model_options: the model's architecture, stored as `assets.extra/model_options.json`.
    eval_options: inference scales / flipping / eval padding used by both signatures (the original's
      `--inference_scales`, `--add_flipped_images`); None is single scale, no flip, no padding.
      Sliding windows need static image sizes and cannot be exported.
    mean_pixel: RGB padding value for `eval_crop_size`; None takes the model's.
    overwrite: replace an existing `export_dir` (only after the new export is complete).

  Returns:
    `export_dir`.

  Raises:
    FileExistsError: `export_dir` exists and `overwrite` is False.
    ValueError: `eval_options.sliding_window` is set, or the model's class count differs from
      `model_options.num_classes`.
  """
  eval_options = eval_options or EvalOptions()
  if eval_options.sliding_window:
    raise ValueError("sliding_window cannot be exported (it needs static image sizes); export without "
                     "it or with an eval_crop_size covering the largest image.")
  outputs = getattr(model, "outputs", None)
  if outputs and outputs[0].shape[-1] not in (None, model_options.num_classes):
    raise ValueError(f"the model predicts {outputs[0].shape[-1]} classes but model_options.num_classes="
                     f"{model_options.num_classes}.")
  export_dir = os.path.abspath(export_dir)
  if os.path.exists(export_dir) and not overwrite:
    raise FileExistsError(f"{export_dir} exists; choose a new --export_path or pass overwrite=True.")
  if mean_pixel is None:
    mean_pixel = inference.model_mean_pixel(model)
  # Served with every BatchNorm folded into its convolution (the same function to float32 rounding).
  module = DeepLabServingModule(fold_batch_norm(model), model_options, eval_options, mean_pixel)
  parent = os.path.dirname(export_dir)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix="." + os.path.basename(export_dir) + ".", suffix=".tmp", dir=parent)
  try:
    tf.saved_model.save(module, tmp, signatures={
        SERVING_DEFAULT: module.serve_encoded.get_concrete_function(),
        IMAGE_TENSOR_SIGNATURE: module.image_tensor.get_concrete_function()})
    extra = os.path.join(tmp, EXTRA_DIR)
    os.makedirs(extra, exist_ok=True)
    with open(os.path.join(extra, MODEL_OPTIONS_FILENAME), "w") as f:
      f.write(model_options.to_json(indent=1) + "\n")
    with open(os.path.join(extra, EVAL_OPTIONS_FILENAME), "w") as f:
      f.write(eval_options.to_json(indent=1) + "\n")
    if os.path.exists(export_dir):
      old = tempfile.mkdtemp(prefix="." + os.path.basename(export_dir) + ".", suffix=".old", dir=parent)
      os.rename(export_dir, os.path.join(old, "export"))
      os.rename(tmp, export_dir)
      shutil.rmtree(old, ignore_errors=True)
    else:
      os.rename(tmp, export_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return export_dir


def read_exported_model_options(export_dir: str) -> ModelOptions:
  """The `ModelOptions` stored with an export (raises FileNotFoundError naming the missing file)."""
  path = os.path.join(export_dir, EXTRA_DIR, MODEL_OPTIONS_FILENAME)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: not found; is {export_dir} a deeplab_tf export?")
  with open(path) as f:
    return ModelOptions.from_json(f.read())
