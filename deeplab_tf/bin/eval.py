"""Evaluates a checkpoint's mIoU on a dataset split (research/deeplab `eval.py`'s flags).

  python -m deeplab_tf.bin.eval --checkpoint_dir=/train --eval_logdir=/eval --dataset=pascal_voc_seg \
      --dataset_dir=/data/tfrecord --eval_split=val --eval_crop_size=513,513 \
      --eval_scales=0.5 --eval_scales=0.75 --eval_scales=1.0 --add_flipped_images \
      --max_number_of_evaluations=1

Prints the mIoU and per-class IoU and writes them to `<eval_logdir>/eval_<checkpoint>.json`
(atomically), plus TensorBoard scalars `miou` and `class_iou/<name>` at the checkpoint's step.
With --checkpoint_dir, every new checkpoint is evaluated as it appears, --max_number_of_evaluations of them
(default 0: forever, as the original; 1: the latest once); --checkpoint_path evaluates that one once.
--min_resize_value/--max_resize_value/--resize_factor resize images and labels first, as the original
(the mIoU is then measured on the resized labels, as there). --crf_iterations=10 refines every prediction
with DeepLabv2's dense CRF (--crf_pos_w, --crf_pos_xy_std, --crf_bi_w, --crf_bi_xy_std, --crf_bi_rgb_std;
needs deeplab_tf[crf]).
"""

from __future__ import annotations

import json
import math
import os

import tensorflow as tf
from absl import app, flags
from tqdm import tqdm

from deeplab_tf.bin import entry
from deeplab_tf.bin import eval_common
from deeplab_tf.data.pipeline import build_dataset
from deeplab_tf.evaluation.evaluate import evaluate_dataset
from deeplab_tf.evaluation.inference import model_mean_pixel
from deeplab_tf.io_utils import atomic_write_text

FLAGS = flags.FLAGS

flags.DEFINE_string("eval_logdir", None, "Where the metrics JSON and TensorBoard summaries go.")
flags.DEFINE_string("eval_split", "val", "Split to evaluate.")
flags.DEFINE_list("eval_crop_size", ["513", "513"], "height,width the images are padded to; empty for "
                  "each image at its own size (batch size 1).")
flags.DEFINE_integer("eval_batch_size", 1, "Images per batch (needs --eval_crop_size above 1).")
flags.DEFINE_integer("max_number_of_evaluations", 0, "Checkpoints of --checkpoint_dir to evaluate as they "
                     "appear: 0 = wait for new ones forever (as the original); 1 = the latest once.")


def evaluate_checkpoint(checkpoint: str, descriptor, eval_options, crf_options=None) -> dict:
  """Evaluates one checkpoint, writes its JSON and summaries, returns the JSON's content."""
  model, model_options = eval_common.load_model_from_flags(checkpoint)
  if model_options.num_classes != descriptor.num_classes:
    raise ValueError(f"{checkpoint}: the model predicts {model_options.num_classes} classes but --dataset="
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
  metrics = evaluate_dataset(model, batches, eval_options, num_classes=descriptor.num_classes,
                             ignore_label=descriptor.ignore_label, class_names=descriptor.class_names,
                             crf_options=crf_options)
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
    writer.close()
  return result


def main(argv):
  del argv
  descriptor = eval_common.descriptor_from_flags()
  eval_options = eval_common.eval_options_from_flags(
      eval_common.parse_crop_size(FLAGS.eval_crop_size, "eval_crop_size"))
  crf_options = eval_common.crf_options_from_flags()
  for checkpoint in eval_common.iterate_checkpoints(FLAGS.max_number_of_evaluations):
    evaluate_checkpoint(checkpoint, descriptor, eval_options, crf_options)


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
