"""Evaluates a checkpoint's mIoU on a dataset split (research/deeplab `eval.py`'s flags).

  python -m deeplab_tf.bin.eval --checkpoint_dir=/train --eval_logdir=/eval --dataset=pascal_voc_seg \
      --dataset_dir=/data/tfrecord --eval_split=val \
      --eval_scales=0.5 --eval_scales=0.75 --eval_scales=1.0 --add_flipped_images \
      --max_number_of_evaluations=1

Prints the mIoU and per-class IoU and writes them to `<eval_logdir>/eval_<checkpoint>.json`
(atomically), plus TensorBoard scalars `miou` and `class_iou/<name>` at the checkpoint's step. Beside the
JSON, as PNG files and as TensorBoard images at the same step: `confusion_matrix_<checkpoint>.png`
(row-normalised, class names on the axes), `class_iou_<checkpoint>.png` (a bar per class) and, for the
first --eval_num_overlays images, `overlays_<checkpoint>/<image name>.png` (the prediction blended on
the image | ground truth | prediction, with a legend of the classes shown).
Each image is evaluated at its own size by default; --eval_crop_size=513,513 pads every image to that
size, as the original (needed for --eval_batch_size above 1), and an image larger than it is an error.
With --checkpoint_dir, every new checkpoint is evaluated as it appears, --max_number_of_evaluations of them
(default 0: forever, as the original, said on screen at start; 1: the latest once); --checkpoint_path
evaluates that one once.
--min_resize_value/--max_resize_value/--resize_factor resize images and labels first, as the original
(the mIoU is then measured on the resized labels, as there). --crf_iterations=10 refines every prediction
with DeepLabv2's dense CRF (--crf_pos_w, --crf_pos_xy_std, --crf_bi_w, --crf_bi_xy_std, --crf_bi_rgb_std;
needs deeplab_tf[crf]).
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import tensorflow as tf
from absl import app, flags
from tqdm import tqdm

from deeplab_tf import visualization
from deeplab_tf.bin import entry
from deeplab_tf.bin import eval_common
from deeplab_tf.bin.eval_vis_messages import (announce_waiting, check_batch_and_crop, crop_size_error,
                                              shown_size)
from deeplab_tf.data.pipeline import build_dataset
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation.evaluate import evaluate_dataset
from deeplab_tf.evaluation.inference import model_mean_pixel
from deeplab_tf.io_utils import atomic_write_text

FLAGS = flags.FLAGS

flags.DEFINE_string("eval_logdir", None, "Where the metrics JSON and TensorBoard summaries go.")
flags.DEFINE_string("eval_split", "val", "Split to evaluate.")
flags.DEFINE_list("eval_crop_size", [], "height,width the images are padded to (the original's 513,513); "
                  "empty (default): each image at its own size (batch size 1).")
flags.DEFINE_integer("eval_batch_size", 1, "Images per batch (needs --eval_crop_size above 1).")
flags.DEFINE_integer("max_number_of_evaluations", 0, "Checkpoints of --checkpoint_dir to evaluate as they "
                     "appear: 0 = wait for new ones forever (as the original); 1 = the latest once.")
flags.DEFINE_integer("eval_num_overlays", 4, "First images of the split whose overlay | ground truth | "
                     "prediction pictures go to TensorBoard and <eval_logdir>/overlays_<checkpoint>/ (0: none).")


def write_pictures(checkpoint: str, step: int, metrics, descriptor, samples) -> list:
  """Confusion matrix, per-class IoU chart and overlays as PNGs in --eval_logdir and as TensorBoard
  images at `step` (into the default summary writer); returns the PNG paths."""
  name = os.path.basename(checkpoint)
  names, colormap = metrics.class_names, descriptor.colormap
  charts = {
      "confusion_matrix": visualization.confusion_matrix_image(
          metrics.confusion_matrix, names,
          title=f"{name} {FLAGS.eval_split}: confusion matrix (rows sum to 100%)"),
      "class_iou": visualization.class_iou_image(
          metrics.per_class_iou, names, metrics.miou, colormap=colormap,
          title=f"{name} {FLAGS.eval_split}: per-class IoU"),
  }
  paths = []
  for tag, picture in charts.items():
    paths.append(visualization.save_image_png(picture, os.path.join(FLAGS.eval_logdir, f"{tag}_{name}.png")))
    tf.summary.image(tag, picture[None], step=step)
  for stem, image, label, prediction in samples:
    picture = visualization.side_by_side(
        visualization.overlay(image, prediction, colormap), label, prediction, colormap,
        class_names=names, ignore_label=descriptor.ignore_label)
    paths.append(visualization.save_image_png(
        picture, os.path.join(FLAGS.eval_logdir, f"overlays_{name}", f"{stem}.png")))
    tf.summary.image(f"overlays/{stem}", picture[None], step=step)
  return paths


def evaluate_checkpoint(checkpoint: str, descriptor, eval_options, crf_options=None) -> dict:
  """Evaluates one checkpoint, writes its JSON and summaries, returns the JSON's content."""
  model, model_options = eval_common.load_model_from_flags(checkpoint)
  if model_options.num_classes != descriptor.num_classes:
    raise UserError(f"{checkpoint}: the model predicts {model_options.num_classes} classes but --dataset="
                     f"{FLAGS.dataset} has {descriptor.num_classes}.")
  windowed = eval_options.sliding_window
  dataset = build_dataset(
      eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.eval_split, "eval_split"), is_training=False,
      crop_size=None if windowed else eval_options.eval_crop_size,
      batch_size=1 if windowed else FLAGS.eval_batch_size, ignore_label=descriptor.ignore_label,
      mean_pixel=model_mean_pixel(model), **eval_common.resize_from_flags())
  size = descriptor.splits_to_sizes.get(FLAGS.eval_split)
  batches = tqdm(dataset, total=math.ceil(size / FLAGS.eval_batch_size) if size else None,
                 desc=f"eval {os.path.basename(checkpoint)}", unit="batch")
  samples, used, resize = [], set(), eval_common.resize_from_flags()
  num_samples = FLAGS.eval_num_overlays if FLAGS.eval_logdir else 0

  def keep_samples(batch, predictions):
    predictions = np.asarray(predictions)
    for k in range(min(int(batch["image"].shape[0]), num_samples - len(samples))):
      height, width = shown_size(batch, k, resize)
      stem = visualization.picture_stem(batch["image_name"][k].numpy(), len(samples), used)
      samples.append((stem, batch["image"][k, :height, :width].numpy(),
                      batch["label"][k, :height, :width, 0].numpy(), predictions[k, :height, :width]))

  try:
    metrics = evaluate_dataset(model, batches, eval_options, num_classes=descriptor.num_classes,
                               ignore_label=descriptor.ignore_label, class_names=descriptor.class_names,
                               crf_options=crf_options, on_batch=keep_samples if num_samples > 0 else None)
  except tf.errors.InvalidArgumentError as e:
    user_error = crop_size_error(e, eval_options.eval_crop_size, "eval_crop_size")
    if user_error is None:
      raise
    raise user_error from None
  finally:
    batches.close()
  step = eval_common.checkpoint_step(checkpoint)
  result = {"checkpoint": checkpoint, "step": step, "dataset": descriptor.name, "eval_split": FLAGS.eval_split,
            "eval_options": eval_options.to_dict(), "resize": eval_common.resize_from_flags(),
            "crf_options": crf_options.to_dict() if crf_options else None, **metrics.to_dict()}
  print(f"{os.path.basename(checkpoint)} {FLAGS.eval_split}: mIoU {100 * metrics.miou:.2f}% "
        f"pixel accuracy {100 * metrics.pixel_accuracy:.2f}% ({metrics.num_pixels} pixels)")
  for name, iou in result["per_class_iou"].items():
    print(f"  {name:>20s}: " + ("absent" if iou is None else f"{100 * iou:.2f}%"))
  if FLAGS.eval_logdir:
    tf.io.gfile.makedirs(FLAGS.eval_logdir)
    path = os.path.join(FLAGS.eval_logdir, f"eval_{os.path.basename(checkpoint)}.json")
    atomic_write_text(path, json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
    writer = tf.summary.create_file_writer(FLAGS.eval_logdir)
    with writer.as_default():
      if result["miou"] is not None:
        tf.summary.scalar("miou", result["miou"], step=step)
      for name, iou in result["per_class_iou"].items():
        if iou is not None:
          tf.summary.scalar(f"class_iou/{name}", iou, step=step)
      paths = write_pictures(checkpoint, step, metrics, descriptor, samples)
    writer.close()
    print(f"wrote {len(paths)} pictures beside it (confusion matrix, per-class IoU, overlays); "
          f"TensorBoard: tensorboard --logdir={FLAGS.eval_logdir}")
  return result


def main(argv):
  del argv
  descriptor = eval_common.descriptor_from_flags()
  eval_options = eval_common.eval_options_from_flags(
      eval_common.parse_crop_size(FLAGS.eval_crop_size, "eval_crop_size"))
  check_batch_and_crop(FLAGS.eval_batch_size, eval_options.eval_crop_size, "eval_batch_size", "eval_crop_size")
  crf_options = eval_common.crf_options_from_flags()
  announce_waiting("deeplab_eval", "max_number_of_evaluations", FLAGS.max_number_of_evaluations, "evaluate")
  for checkpoint in eval_common.iterate_checkpoints(FLAGS.max_number_of_evaluations):
    evaluate_checkpoint(checkpoint, descriptor, eval_options, crf_options)


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
