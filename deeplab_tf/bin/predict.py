"""Segments image files with a checkpoint or an export: label PNGs, coloured overlays, probabilities.

  # a converted model-zoo checkpoint (deeplab_convert_checkpoint), multi-scale + flipped as the papers
  deeplab_predict --checkpoint_path=/models/voc/model.keras --input='photos/*.jpg' \
      --predict_logdir=/tmp/predictions --eval_scales=0.5 --eval_scales=0.75 --eval_scales=1.0 \
      --eval_scales=1.25 --eval_scales=1.5 --eval_scales=1.75 --add_flipped_images
  # large images window by window; a SavedModel export (a version directory or a TF Serving base path)
  deeplab_predict --checkpoint_dir=/train --input=/data/tiles --predict_logdir=/tmp/out \
      --predict_crop_size=513,513 --sliding_window
  deeplab_predict --export_dir=/models/serving/deeplab --input=photo.jpg --predict_logdir=/tmp/out

--input is a comma-separated list of files, folders (their image files, not recursive) and globs;
every file Pillow reads is accepted (JPEG, PNG, BMP, GIF, TIFF, WebP, ...) and converted to RGB.
Outputs, for an input `<name>.<ext>`:
  `<predict_logdir>/labels/<name>.png`          class ids as a palette PNG (values = ids, colours = colormap),
                                            as research/deeplab vis.py's raw predictions;
  `<predict_logdir>/overlays/<name>.png`        the image blended with the prediction's colours
                                            (--colormap_type, default pascal; `dataset` picks
                                            cityscapes for 19 classes, ade20k for 151);
  `<predict_logdir>/probabilities/<name>.npy`   float32 [height, width, num_classes] (--save_probabilities);
and a summary (images, pixels, seconds, pixel share of each predicted class) printed and written to
`<predict_logdir>/summary.json`. An unreadable file is reported and skipped; the run then ends with an
error listing them, after every other image is written. Every file operation goes through tf.io.gfile.

Inference is `deeplab_tf.evaluation.inference.predict_probabilities` (research/deeplab's multi-scale and
flip averaging; sliding windows for images larger than --predict_crop_size). An export runs as exported:
its scales and flips were fixed by deeplab_export_model (assets.extra/eval_options.json).
"""

from __future__ import annotations

import io
import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from deeplab_tf.bin import entry
from deeplab_tf import export, io_utils, visualization
from deeplab_tf.bin import eval_common
from deeplab_tf.bin import vis  # noqa: F401  (defines --colormap_type and --overlay_alpha)
from deeplab_tf.evaluation import inference

FLAGS = flags.FLAGS

flags.DEFINE_list("input", None, "Image files, folders of images and globs, comma-separated.")
flags.DEFINE_string("predict_logdir", None, "Where labels/, overlays/, probabilities/ and summary.json go "
                    "(as vis_logdir for deeplab_vis).")
flags.DEFINE_string("export_dir", None, "A SavedModel of deeplab_export_model (a version directory, or a "
                    "TF Serving base path: its highest version) instead of a checkpoint.")
flags.DEFINE_list("predict_crop_size", [], "height,width images are padded to (mean pixel); with "
                  "--sliding_window, the window larger images are cut into. Empty: each image at its own "
                  "size.")
flags.DEFINE_boolean("save_probabilities", False, "Also write the class probabilities as .npy.")
flags.DEFINE_boolean("show_progress", True, "Show a progress bar (tqdm).")

# File name endings taken from a folder (a glob or a file name is taken whatever its ending).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Colormap of a model-zoo model, told by its class count (VOC 21, Cityscapes 19, ADE20K 151).
COLORMAP_BY_NUM_CLASSES = {19: "cityscapes", 151: "ade20k"}


def list_images(inputs):
  """Files of `inputs` (files, folders, globs) in order, without repeats.

  Raises:
    ValueError: naming an input that matches nothing, or when the list is empty.
  """
  files = []
  for item in inputs or []:
    if tf.io.gfile.isdir(item):
      found = sorted(os.path.join(item, name) for name in tf.io.gfile.listdir(item)
                     if name.lower().endswith(IMAGE_EXTENSIONS))
    elif any(c in item for c in "*?["):
      found = sorted(f for f in tf.io.gfile.glob(item) if not tf.io.gfile.isdir(f))
    else:
      found = [item] if tf.io.gfile.exists(item) else []
    if not found:
      raise ValueError(f"--input={item}: no image file there (expected files, folders of "
                       f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS[:4])}/... files, or globs).")
    files += [f for f in found if f not in files]
  if not files:
    raise ValueError("--input is required: image files, folders or globs, comma-separated.")
  return files


def read_image(path):
  """uint8 `[height, width, 3]` RGB of any file Pillow reads (greyscale expanded, alpha dropped)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as picture:
    return np.asarray(picture.convert("RGB"))


def _export_version_dir(path):
  """`path` if it holds a saved_model.pb, else its highest integer-named subdirectory."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  versions = [int(n.rstrip("/")) for n in (tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else [])
              if n.rstrip("/").isdigit()]
  if not versions:
    raise ValueError(f"--export_dir={path}: neither a SavedModel (saved_model.pb) nor a model base path "
                     "with version subdirectories.")
  return os.path.join(path, str(max(versions)))


def _predictor():
  """(function uint8 [1, h, w, 3] -> (int32 labels [1, h, w], float32 probabilities [1, h, w, classes]),
  num_classes, what)."""
  crop_size = eval_common.parse_crop_size(FLAGS.predict_crop_size, "predict_crop_size")
  if FLAGS.export_dir:
    if FLAGS.checkpoint_path or FLAGS.checkpoint_dir:
      raise ValueError("Give either --export_dir or a checkpoint (--checkpoint_path/--checkpoint_dir).")
    if FLAGS.eval_scales != [1.0] or FLAGS.add_flipped_images or FLAGS.sliding_window or crop_size:
      raise ValueError("--export_dir runs the export as exported (its scales and flips are in "
                       "assets.extra/eval_options.json); --eval_scales, --add_flipped_images, "
                       "--sliding_window and --predict_crop_size apply to checkpoints.")
    directory = _export_version_dir(FLAGS.export_dir)
    options = export.read_exported_model_options(directory)
    signature = tf.saved_model.load(directory).signatures[export.IMAGE_TENSOR_SIGNATURE]
    def served(image):
      outputs = signature(image_tensor=tf.constant(image))
      return outputs["semantic_predictions"], outputs["probabilities"]
    return served, options.num_classes, f"export {directory}"
  eval_options = eval_common.eval_options_from_flags(crop_size)
  checkpoint = eval_common.checkpoint_from_flags()
  model, options = eval_common.load_model_from_flags(checkpoint)

  def predict(image):
    return inference.predict_labels_and_probabilities(model, image, eval_options)

  # Sliding windows run eagerly (they need static sizes); otherwise one compiled function for all sizes.
  function = predict if eval_options.sliding_window else tf.function(predict, reduce_retracing=True)
  return function, options.num_classes, f"{options.model_variant} from {checkpoint}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; give the images with --input.")
  if not FLAGS.predict_logdir:
    raise ValueError("--predict_logdir is required: where labels/, overlays/ and probabilities/ go.")
  files = list_images(FLAGS.input)
  predict, num_classes, source = _predictor()
  colormap = FLAGS.colormap_type
  if colormap == "dataset":  # no dataset here: the model-zoo dataset its class count tells
    colormap = COLORMAP_BY_NUM_CLASSES.get(num_classes, "pascal")
  started = time.time()
  counts = np.zeros(num_classes, np.int64)
  failed, written = [], 0
  stems = set()
  for path in tqdm(files, desc="predict", unit="image", disable=not FLAGS.show_progress):
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in stems:  # photo.jpg and photo.png in one run: keep both
      stem = os.path.basename(path).replace(".", "_")
    stems.add(stem)
    try:
      image = read_image(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
      logging.error("%s: not readable as an image (%s); skipped.", path, e)
      failed.append(path)
      continue
    labels, probabilities = (t.numpy()[0] for t in predict(image[np.newaxis]))
    labels = labels.astype(np.uint8 if num_classes <= 256 else np.int32)
    counts += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    visualization.save_label_png(labels, os.path.join(FLAGS.predict_logdir, "labels", stem + ".png"), colormap)
    visualization.save_image_png(visualization.overlay(image, labels, colormap, FLAGS.overlay_alpha),
                                 os.path.join(FLAGS.predict_logdir, "overlays", stem + ".png"))
    if FLAGS.save_probabilities:
      with io_utils.atomic_open(os.path.join(FLAGS.predict_logdir, "probabilities", stem + ".npy")) as f:
        np.save(f, probabilities.astype(np.float32))
    written += 1
  seconds = time.time() - started
  summary = {"model": source, "images": written, "failed": failed, "pixels": int(counts.sum()),
             "seconds": round(seconds, 3), "colormap": colormap,
             "class_pixel_share": {str(c): float(n / max(counts.sum(), 1)) for c, n in enumerate(counts) if n},
             "output_dir": FLAGS.predict_logdir}
  io_utils.atomic_write_text(os.path.join(FLAGS.predict_logdir, "summary.json"), json.dumps(summary, indent=1) + "\n")
  shares = ", ".join(f"class {c}: {100 * s:.1f}%" for c, s in summary["class_pixel_share"].items())
  print(f"{written} image(s), {summary['pixels']:,} pixels in {seconds:.1f} s "
        f"({seconds / max(written, 1):.2f} s per image) with {source}\npredicted pixels: {shares or 'none'}\n"
        f"wrote {FLAGS.predict_logdir}/labels, overlays{', probabilities' if FLAGS.save_probabilities else ''} "
        "and summary.json")
  if failed:
    raise RuntimeError(f"{len(failed)} file(s) could not be read as images and were skipped: "
                       f"{', '.join(failed)}")


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
