"""Segments image files with a checkpoint or an export: label PNGs, coloured overlays, probabilities.

  # a converted model-zoo checkpoint (deeplab_convert_checkpoint), multi-scale + flipped as the papers
  deeplab_predict --checkpoint_path=/models/voc/model.keras --input='photos/*.jpg' \
      --predict_logdir=/tmp/predictions --eval_scales=0.5 --eval_scales=0.75 --eval_scales=1.0 \
      --eval_scales=1.25 --eval_scales=1.5 --eval_scales=1.75 --add_flipped_images
  # large images window by window; a SavedModel export (a version directory or a TF Serving base path)
  deeplab_predict --checkpoint_dir=/train --input=/data/tiles --predict_logdir=/tmp/out \
      --predict_crop_size=513,513 --sliding_window
  deeplab_predict --export_path=/models/serving/deeplab --input=photo.jpg --predict_logdir=/tmp/out

--input is a comma-separated list of files, folders (their image files, not recursive) and globs;
every file Pillow reads is accepted (JPEG, PNG, BMP, GIF, TIFF, WebP, ...) and converted to RGB by
`deeplab_tf.image_decoding.read_rgb`: the EXIF orientation tag is applied (a portrait photo stored
sideways is predicted upright), and grey images of more than 8 bits (16-bit PNG/TIFF) are mapped to
8 bits by the converters' min-max rule, so the model sees what its training data went through.
Outputs, for an input `<root>/<relative path>/<name>.<ext>` (`<root>` the deepest folder holding every
input, so inputs of different folders keep their folders and never overwrite each other's outputs):
  `<predict_logdir>/labels/<relative path>/<name>.png`   class ids as a palette PNG (values = ids,
                                            colours = colormap), as research/deeplab vis.py's raw predictions;
  `<predict_logdir>/overlays/<relative path>/<name>.png` the image blended with the prediction's colours
                                            (--colormap_type, default pascal; `dataset` picks
                                            cityscapes for 19 classes, ade20k for 151);
  `<predict_logdir>/probabilities/<relative path>/<name>.npy`  float32 [height, width, num_classes]
                                            (--save_probabilities);
(`<name>_<ext>` instead of `<name>` when two inputs differ only by their extension) and a summary
(images, pixels, seconds, pixel share of each predicted class by name and id) printed and written to
`<predict_logdir>/summary.json`. An output path that is one of the inputs is refused before anything
is written. Class names come from the export's label map (assets/labels.txt), else from --dataset
when given (a built-in name or a descriptor JSON), else from a dataset descriptor `dataset.json`
beside the checkpoint; else the classes are named by their ids. An unreadable file is reported and
skipped; the run then ends with an error listing them, after every other image is written. An image
whose probabilities are not finite (a model with NaN or Inf weights) stops the run with an error
naming it. Every file operation goes through tf.io.gfile.

Inference is `deeplab_tf.evaluation.inference.predict_probabilities` (research/deeplab's multi-scale and
flip averaging; sliding windows for images larger than --predict_crop_size). An export runs as exported:
its scales and flips were fixed by deeplab_export_model (assets.extra/eval_options.json).
"""

from __future__ import annotations

import json
import os
import posixpath
import time

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from tqdm import tqdm

from deeplab_tf.bin import entry
from deeplab_tf import export, image_decoding, io_utils, visualization
from deeplab_tf.bin import eval_common
from deeplab_tf.bin import export_model  # (also defines --export_path/--export_dir, --inference_scales)
from deeplab_tf.bin import vis  # noqa: F401  (defines --colormap_type and --overlay_alpha)
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation import inference

FLAGS = flags.FLAGS

flags.DEFINE_list("input", None, "Image files, folders of images and globs, comma-separated.")
flags.DEFINE_string("predict_logdir", None, "Where labels/, overlays/, probabilities/ and summary.json go "
                    "(as vis_logdir for deeplab_vis).")
flags.DEFINE_list("predict_crop_size", [], "height,width images are padded to (mean pixel); with "
                  "--sliding_window, the window larger images are cut into. Empty: each image at its own "
                  "size.")
flags.DEFINE_boolean("save_probabilities", False, "Also write the class probabilities as .npy.")
flags.DEFINE_boolean("show_progress", True, "Show a progress bar (tqdm).")

# File name endings taken from a folder (a glob or a file name is taken whatever its ending).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
# Colormap of a model-zoo model, told by its class count (VOC 21, Cityscapes 19, ADE20K 151).
COLORMAP_BY_NUM_CLASSES = {19: "cityscapes", 151: "ade20k"}
OUTPUT_FOLDERS = ("labels", "overlays", "probabilities")


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
      raise UserError(f"--input={item}: no image file there (expected files, folders of "
                       f"{'/'.join(e[1:] for e in IMAGE_EXTENSIONS[:4])}/... files, or globs).")
    files += [f for f in found if f not in files]
  if not files:
    raise UserError("--input is required: image files, folders or globs, comma-separated.")
  return files


def read_image(path):
  """uint8 `[height, width, 3]` RGB of any file Pillow reads, upright (EXIF orientation applied), by
  `deeplab_tf.image_decoding.read_rgb`'s rule (greyscale expanded, alpha dropped, 16-bit grey stretched
  min-max as the converters do)."""
  with tf.io.gfile.GFile(path, "rb") as f:
    data = f.read()
  return image_decoding.read_rgb(data)


def _split(path):
  """(scheme prefix, list of folder/file names) of a local or URL-like path."""
  scheme = ""
  if io_utils.has_scheme(path):
    scheme, path = path.split("://", 1)
    scheme += "://"
  else:
    path = os.path.abspath(path)  # not-gfile: a local path made absolute (no file access)
  return scheme, [part for part in path.split("/") if part]


def output_names(files):
  """Output path stems, relative to each output folder, one per input file, never two alike.

  Each input's path relative to the deepest folder holding every input, without its extension
  (`a/x.jpg`, `b/x.jpg` -> `a/x`, `b/x`; one folder's files -> their names). Inputs that would share a
  stem (`x.jpg`, `x.png`) are named with their extension (`x_jpg`, `x_png`), and a stem still taken
  gets `_2`, `_3`, ...

  Returns:
    A list of '/'-separated relative stems, in the order of `files`.
  """
  split = [_split(f) for f in files]
  folders = [parts[:-1] for _, parts in split]
  common = 0
  if len({scheme for scheme, _ in split}) == 1:
    while all(len(f) > common for f in folders) and len({tuple(f[:common + 1]) for f in folders}) == 1:
      common += 1
  relative = ["/".join(parts[common:]) for _, parts in split]
  stems = [posixpath.splitext(r)[0] for r in relative]
  counts = {}
  for stem in stems:
    counts[stem] = counts.get(stem, 0) + 1
  names, taken = [], set()
  for stem, rel in zip(stems, relative):
    name = stem if counts[stem] == 1 else stem + "_" + posixpath.splitext(rel)[1].lstrip(".").lower()
    candidate, n = name, 1
    while candidate in taken:
      n += 1
      candidate = f"{name}_{n}"
    taken.add(candidate)
    names.append(candidate)
  return names


def _normalised(path):
  """A path as compared for "is this output an input": absolute and case-normalised when local."""
  if io_utils.has_scheme(path):
    return path.rstrip("/")
  return os.path.normcase(os.path.abspath(path))  # not-gfile: path arithmetic (no file access)


def output_paths(predict_logdir, files, save_probabilities):
  """{input file: {"labels": path, "overlays": path[, "probabilities": path]}}.

  Raises:
    deeplab_tf.errors.UserError: an output path is one of the inputs (e.g. --predict_logdir is the
      parent of an input folder named labels/), before anything is written.
  """
  folders = OUTPUT_FOLDERS if save_probabilities else OUTPUT_FOLDERS[:2]
  result = {}
  for path, name in zip(files, output_names(files)):
    result[path] = {folder: os.path.join(predict_logdir, folder, *name.split("/")) +
                    (".npy" if folder == "probabilities" else ".png") for folder in folders}
  summary = os.path.join(predict_logdir, "summary.json")
  inputs = {_normalised(f): f for f in files}
  for outputs in [*result.values(), {"summary": summary}]:
    for output in outputs.values():
      clash = inputs.get(_normalised(output))
      if clash:
        raise UserError(f"--predict_logdir={predict_logdir}: the output {output} would overwrite the input "
                        f"{clash}; choose another --predict_logdir.")
  return result


def _export_version_dir(path):
  """`path` if it holds a saved_model.pb, else its highest integer-named subdirectory."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  versions = [int(n.rstrip("/")) for n in (tf.io.gfile.listdir(path) if tf.io.gfile.isdir(path) else [])
              if n.rstrip("/").isdigit()]
  if not versions:
    raise UserError(f"--export_path={path}: neither a SavedModel (saved_model.pb) nor a model base path "
                    "with version subdirectories.")
  return os.path.join(path, str(max(versions)))


def _predictor():
  """(function uint8 [1, h, w, 3] -> (int32 labels [1, h, w], float32 probabilities [1, h, w, classes]),
  class names, what)."""
  crop_size = eval_common.parse_crop_size(FLAGS.predict_crop_size, "predict_crop_size")
  scales = export_model.scales_flag("eval_scales", "inference_scales")
  if FLAGS.export_path:
    if FLAGS.checkpoint_path or FLAGS.checkpoint_dir:
      raise UserError("Give either --export_path (--export_dir) or a checkpoint (--checkpoint_path/"
                      "--checkpoint_dir).")
    if scales != [1.0] or FLAGS.add_flipped_images or FLAGS.sliding_window or crop_size:
      raise UserError("--export_path runs the export as exported (its scales and flips are in "
                      "assets.extra/eval_options.json); --eval_scales, --add_flipped_images, "
                      "--sliding_window and --predict_crop_size apply to checkpoints.")
    directory = _export_version_dir(FLAGS.export_path)
    try:
      class_names = export.read_exported_class_names(directory)
    except FileNotFoundError as e:
      raise UserError(str(e)) from e
    signature = tf.saved_model.load(directory).signatures[export.IMAGE_TENSOR_SIGNATURE]
    def served(image):
      outputs = signature(image_tensor=tf.constant(image))
      return outputs["semantic_predictions"], outputs["probabilities"]
    return served, class_names, f"export {directory}"
  eval_options = eval_common.eval_options_from_flags(crop_size).replace(eval_scales=tuple(scales))
  checkpoint = eval_common.checkpoint_from_flags()
  try:
    model, options = eval_common.load_model_from_flags(checkpoint)
  except FileNotFoundError as e:
    raise UserError(str(e)) from e
  class_names = export_model.class_names_for_checkpoint(checkpoint, options.num_classes)

  def predict(image):
    return inference.predict_labels_and_probabilities(model, image, eval_options)

  # Sliding windows run eagerly (they need static sizes); otherwise one compiled function for all sizes.
  function = predict if eval_options.sliding_window else tf.function(predict, reduce_retracing=True)
  return function, class_names, f"{options.model_variant} from {checkpoint}"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; give the images with --input.")
  if not FLAGS.predict_logdir:
    raise UserError("--predict_logdir is required: where labels/, overlays/ and probabilities/ go.")
  files = list_images(FLAGS.input)
  outputs = output_paths(FLAGS.predict_logdir, files, FLAGS.save_probabilities)
  predict, class_names, source = _predictor()
  num_classes = len(class_names)
  colormap = FLAGS.colormap_type
  if colormap == "dataset":  # no dataset here: the model-zoo dataset its class count tells
    colormap = COLORMAP_BY_NUM_CLASSES.get(num_classes, "pascal")
  started = time.time()
  counts = np.zeros(num_classes, np.int64)
  failed, written = [], 0
  for path in tqdm(files, desc="predict", unit="image", disable=not FLAGS.show_progress):
    try:
      image = read_image(path)
    except (OSError, ValueError, tf.errors.OpError) as e:
      logging.error("%s: not readable as an image (%s); skipped.", path, e)
      failed.append(path)
      continue
    labels, probabilities = (t.numpy()[0] for t in predict(image[np.newaxis]))
    if not np.all(np.isfinite(probabilities)):
      raise UserError(f"{path}: the model's probabilities are not finite (NaN or Inf) for this image: "
                      f"the weights of {source} are broken (training diverged?); use an earlier checkpoint.")
    labels = labels.astype(np.uint8 if num_classes <= 256 else np.int32)
    counts += np.bincount(labels.ravel(), minlength=num_classes)[:num_classes]
    out = outputs[path]
    visualization.save_label_png(labels, out["labels"], colormap)
    visualization.save_image_png(visualization.overlay(image, labels, colormap, FLAGS.overlay_alpha),
                                 out["overlays"])
    if FLAGS.save_probabilities:
      with io_utils.atomic_open(out["probabilities"]) as f:
        np.save(f, probabilities.astype(np.float32))
    written += 1
  seconds = time.time() - started
  total = max(counts.sum(), 1)
  summary = {"model": source, "images": written, "failed": failed, "pixels": int(counts.sum()),
             "seconds": round(seconds, 3), "colormap": colormap, "class_names": list(class_names),
             "class_pixel_share": {class_names[c]: float(n / total) for c, n in enumerate(counts) if n},
             "classes": [{"id": c, "name": class_names[c], "pixels": int(n), "pixel_share": float(n / total)}
                         for c, n in enumerate(counts) if n],
             "outputs": {path: out for path, out in outputs.items() if path not in failed},
             "output_dir": FLAGS.predict_logdir}
  io_utils.atomic_write_text(os.path.join(FLAGS.predict_logdir, "summary.json"), json.dumps(summary, indent=1) + "\n")
  shares = ", ".join(f"{c['name']} ({c['id']}): {100 * c['pixel_share']:.1f}%" for c in summary["classes"])
  print(f"{written} image(s), {summary['pixels']:,} pixels in {seconds:.1f} s "
        f"({seconds / max(written, 1):.2f} s per image) with {source}\npredicted pixels: {shares or 'none'}\n"
        f"wrote {FLAGS.predict_logdir}/labels, overlays{', probabilities' if FLAGS.save_probabilities else ''} "
        "and summary.json")
  if failed:
    raise UserError(f"{len(failed)} file(s) could not be read as images and were skipped: "
                    f"{', '.join(failed)}")


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
