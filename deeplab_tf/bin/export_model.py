"""Exports a checkpoint for serving: a TF Serving SavedModel, or a TFLite model (research/deeplab
`export_model.py`'s flags).

  # TF Serving: --export_path is the model base path; the SavedModel goes to <export_path>/<version>/
  python -m deeplab_tf.bin.export_model --checkpoint_path=/train/ckpt-30000 --export_path=/models/deeplab \
      --inference_scales=1.0
  # TFLite for the LiteRT interpreter: --export_path is the .tflite file; fixed input --crop_size
  python -m deeplab_tf.bin.export_model --checkpoint_dir=/train --format=tflite --crop_size=513,513 \
      --quantize=int8 --dataset_dir=/data/tfrecord --calibration_split=train \
      --export_path=/models/deeplab_int8.tflite

--min_resize_value, --max_resize_value, --resize_factor, --keep_aspect_ratio (the original's) resize each
image into that range inside the SavedModel; predictions come back at the image's own size.

The model's architecture comes from the `model_options.json` beside the checkpoint (or
--model_options_json); the class names written into the export (`assets/labels.txt`) from --dataset when
given (a built-in name or a descriptor JSON), else from a `dataset.json` descriptor beside the checkpoint,
else the ids. Signatures, the TFLite model's input and output: see `deeplab_tf.export`.

Flag spellings (docs/FLAGS.md): --export_path and --inference_scales are the original's; --export_dir
(deeplab_predict's former name) and --eval_scales (eval's) are accepted for them.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import app, flags, logging

from deeplab_tf.bin import entry
from deeplab_tf.bin import eval_common
from deeplab_tf import export, io_utils
from deeplab_tf.errors import UserError
from deeplab_tf.options import EvalOptions

FLAGS = flags.FLAGS

flags.DEFINE_string("export_path", None, "deeplab_export_model: saved_model: the model base path TF Serving "
                    "watches (the export goes to <export_path>/<export_version>/); tflite: the .tflite file. "
                    "deeplab_predict: an export to run (a version directory or the base path: its highest "
                    "version). Also spelled --export_dir.")
flags.DEFINE_alias("export_dir", "export_path")
flags.DEFINE_integer("export_version", None, "saved_model: version subdirectory to write; default one "
                     "more than the highest existing version (1 for a new base path).")
flags.DEFINE_enum("format", "saved_model", ["saved_model", "tflite"], "What to write.")
flags.DEFINE_multi_float("inference_scales", [1.0], "Scales whose probabilities the export averages "
                         "(saved_model only; a TFLite model runs one scale). Also spelled --eval_scales.")
flags.DEFINE_list("crop_size", [], "height,width images are padded to inside the export (mean pixel); "
                  "empty (default) runs each image at its own size. tflite: the fixed input size "
                  "(default 513,513, the original's).")
flags.DEFINE_integer("max_image_pixels", export.DEFAULT_MAX_IMAGE_PIXELS, "saved_model: requests with "
                     "a larger image (height * width) are refused with an error naming the input.")
flags.DEFINE_enum("quantize", "none", list(export.TFLITE_QUANTIZE_MODES), "tflite: none (float32), "
                  "float16 (float16 weights), dynamic_range (int8 weights), int8 (full integer, calibrated "
                  "on --num_calibration_images images of --dataset_dir's --calibration_split).")
flags.DEFINE_string("calibration_split", "train", "tflite int8: split whose TFRecords calibrate.")
flags.DEFINE_integer("num_calibration_images", 100, "tflite int8: how many images calibrate.")

# The original's default TFLite / frozen-graph input size (export_model.py --crop_size).
DEFAULT_TFLITE_SIZE = (513, 513)


def class_names_for_checkpoint(checkpoint, num_classes):
  """Class names of a checkpoint: --dataset when given explicitly, else a `dataset.json` descriptor
  beside it, else the ids as strings.

  Raises:
    deeplab_tf.errors.UserError: the descriptor's class count differs from the model's.
  """
  from deeplab_tf.data import descriptors  # pylint: disable=import-outside-toplevel
  source, path = None, None
  if not FLAGS["dataset"].using_default_value:
    source = path = FLAGS.dataset
  else:
    folder = checkpoint if io_utils.isdir(checkpoint) else io_utils.dirname(checkpoint)
    candidate = os.path.join(folder or ".", descriptors.CHECKPOINT_DESCRIPTOR_FILENAME)
    if tf.io.gfile.exists(candidate):
      source = path = candidate
  if source is None:
    return tuple(str(i) for i in range(num_classes))
  try:
    descriptor = descriptors.get_descriptor(path)
  except ValueError as e:
    raise UserError(str(e)) from e
  if descriptor.num_classes != num_classes:
    raise UserError(f"--dataset={source}: {descriptor.num_classes} classes, but the model predicts "
                    f"{num_classes}; give the dataset the model was trained on.")
  return tuple(descriptor.class_names)


def scales_flag(primary, alias):
  """The value of a multi-float flag that also has another spelling (`--eval_scales` and the
  original export_model.py's `--inference_scales` mean the same here).

  Raises:
    deeplab_tf.errors.UserError: both spellings given with different values.
  """
  if not FLAGS[alias].using_default_value:
    if not FLAGS[primary].using_default_value and list(FLAGS[primary].value) != list(FLAGS[alias].value):
      raise UserError(f"--{primary}={FLAGS[primary].value} and --{alias}={FLAGS[alias].value} are the same "
                      "flag; give one.")
    return list(FLAGS[alias].value)
  return list(FLAGS[primary].value)


def export_kernel_policy() -> str:
  """--kernel_policy if given, else 'portable': an export runs on any TensorFlow unless asked."""
  return FLAGS.kernel_policy if FLAGS["kernel_policy"].present else "portable"


def main(argv):
  try:
    _main(argv)
  except (FileExistsError, FileNotFoundError) as e:  # an output that exists, a checkpoint that does not
    raise UserError(str(e)) from e


def _main(argv):
  del argv
  if not FLAGS.export_path:
    raise UserError("--export_path is required: the model base path (saved_model) or the .tflite file.")
  crop_size = eval_common.parse_crop_size(FLAGS.crop_size, "crop_size")
  inference_scales = scales_flag("inference_scales", "eval_scales")
  checkpoint = eval_common.checkpoint_from_flags()
  # Unfolded: export_saved_model folds itself, and TFLite's converter folds for its quantisation.
  model, model_options = eval_common.load_model_from_flags(checkpoint, fold_batch_norm=False)
  if FLAGS.format == "tflite":
    size = crop_size or DEFAULT_TFLITE_SIZE
    if inference_scales != [1.0] or FLAGS.add_flipped_images:
      raise UserError("--format=tflite runs one scale without flipping; drop --inference_scales and "
                      "--add_flipped_images.")
    if FLAGS.min_resize_value or FLAGS.max_resize_value:
      raise UserError("--format=tflite has a fixed input size (--crop_size): resize images to it before "
                       "inference; drop --min_resize_value/--max_resize_value.")
    representative = None
    if FLAGS.quantize == "int8":
      pattern = eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.calibration_split, "calibration_split")
      from deeplab_tf.evaluation.inference import model_mean_pixel
      representative = export.representative_images(pattern, size, FLAGS.num_calibration_images,
                                                    model_mean_pixel(model))
    logging.info("TFLite input: uint8 [1, %d, %d, 3], quantize=%s", size[0], size[1], FLAGS.quantize)
    path = export.export_tflite(model, FLAGS.export_path, size, quantize=FLAGS.quantize,
                                representative_dataset=representative, overwrite=FLAGS.overwrite,
                                kernel_policy=export_kernel_policy())
  else:
    if FLAGS.quantize != "none":
      raise UserError(f"--quantize={FLAGS.quantize} applies to --format=tflite only.")
    eval_options = EvalOptions(eval_crop_size=crop_size, eval_scales=tuple(inference_scales),
                               add_flipped_images=FLAGS.add_flipped_images)
    export_dir = export.versioned_export_dir(FLAGS.export_path, FLAGS.export_version)
    path = export.export_saved_model(model, export_dir, model_options, eval_options,
                                     overwrite=FLAGS.overwrite, max_image_pixels=FLAGS.max_image_pixels,
                                     resize=eval_common.resize_from_flags(),
                                     class_names=class_names_for_checkpoint(checkpoint,
                                                                            model_options.num_classes),
                                     kernel_policy=export_kernel_policy())
  print(f"wrote {path}")


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
