"""Writes images, coloured predictions and overlays of a split (research/deeplab `vis.py`'s flags).

  python -m deeplab_tf.bin.vis --checkpoint_dir=/train --vis_logdir=/vis --dataset=pascal_voc_seg \
      --dataset_dir=/data/tfrecord --vis_split=val --vis_crop_size=513,513 --also_save_raw_predictions \
      --max_number_of_iterations=1

Into `<vis_logdir>/segmentation_results/`, for each image `<name>` (its TFRecord `image/filename` without
extension; the original numbered them `{i:06d}_*`, we prefix `{i:06d}_` only to a name already used):
`<name>_image.png`, `<name>_prediction.png` (a palette PNG in the --colormap_type colours whose values are
the class ids), as the original, and ours: `<name>_overlay.png` (image blended with the prediction) and
`<name>_panel.png` (image | ground truth | prediction), both with a legend (colour and name of each class
shown). With --also_save_raw_predictions, `<vis_logdir>/raw_segmentation_results/<image name>.png` holds
the class ids as a greyscale PNG, like the original; for --dataset=cityscapes they are converted from train
ids to the label ids the benchmark server scores. Each image is taken at its own size by default;
--vis_crop_size=513,513 pads them to that size, as the original (an image larger than it is an error).

As the original, every checkpoint of --checkpoint_dir is visualised as it appears, --max_number_of_iterations
of them (default 0: forever, said on screen at start; 1: the latest once); --checkpoint_path visualises that
one once. With
--min_resize_value (and --max_resize_value, --resize_factor) the images are resized first; image, overlay and
panel show the resized image, the prediction PNGs are resized back (nearest neighbour, align_corners) to the
image's own size, as the original does for the benchmark server.
--crf_iterations=10 (and the other --crf_* flags, as eval) refines the predictions with DeepLabv2's dense CRF.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import app, flags
from tqdm import tqdm

from deeplab_tf.bin import entry
from deeplab_tf import visualization
from deeplab_tf.bin import eval_common
from deeplab_tf.bin.eval_vis_messages import (announce_waiting, check_batch_and_crop, crop_size_error,
                                              shown_size)
from deeplab_tf.data.descriptors import cityscapes_train_ids_to_label_ids
from deeplab_tf.data.pipeline import build_dataset
from deeplab_tf.evaluation.crf import dense_crf_labels
from deeplab_tf.evaluation.inference import model_mean_pixel, predict_labels, predict_probabilities
from deeplab_tf.image_ops import resize_nearest_align_corners

FLAGS = flags.FLAGS

flags.DEFINE_string("vis_logdir", None, "Where the pictures go.")
flags.DEFINE_string("vis_split", "val", "Split to visualise.")
flags.DEFINE_list("vis_crop_size", [], "height,width the images are padded to (the original's 513,513); "
                  "empty (default): each image at its own size.")
flags.DEFINE_integer("vis_batch_size", 1, "Images per batch (above 1 needs --vis_crop_size).")
flags.DEFINE_enum("colormap_type", "pascal", ["pascal", "cityscapes", "ade20k", "custom", "dataset"],
                  "Colours of the predictions: pascal (the original's default), cityscapes, ade20k, "
                  "custom, or dataset (the dataset descriptor's).")
flags.DEFINE_boolean("also_save_raw_predictions", False, "Also write the class ids as greyscale PNGs "
                     "named after the images (Cityscapes: label ids).")
flags.DEFINE_integer("max_number_of_iterations", 0, "Checkpoints of --checkpoint_dir to visualise as they "
                     "appear: 0 = wait for new ones forever (as the original); 1 = the latest once.")
flags.DEFINE_integer("max_number_of_images", 0, "Stop after this many images (0 = the whole split).")
flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the prediction colours in the overlays.")


def visualise_checkpoint(checkpoint: str, descriptor, eval_options, colormap: str, resize: dict,
                         crf_options=None) -> str:
  """Writes the pictures of every image of --vis_split predicted by `checkpoint` (refined by the dense CRF
  with `crf_options`); returns their folder."""
  model, _ = eval_common.load_model_from_flags(checkpoint)
  windowed = eval_options.sliding_window
  dataset = build_dataset(
      eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.vis_split, "vis_split"), is_training=False,
      crop_size=None if windowed else eval_options.eval_crop_size,
      batch_size=1 if windowed else FLAGS.vis_batch_size, ignore_label=descriptor.ignore_label,
      mean_pixel=model_mean_pixel(model), **resize)
  results_dir = os.path.join(FLAGS.vis_logdir, "segmentation_results")
  raw_dir = os.path.join(FLAGS.vis_logdir, "raw_segmentation_results")
  resized = resize["min_resize_value"] or resize["max_resize_value"]
  limit = FLAGS.max_number_of_images if FLAGS.max_number_of_images > 0 else None
  total = descriptor.splits_to_sizes.get(FLAGS.vis_split)
  total = min(total or limit, limit) if limit else total
  progress = tqdm(total=total, desc=f"vis {os.path.basename(checkpoint)}", unit="image")
  index, used = 0, set()
  names = descriptor.class_names
  for batch in dataset:
    if crf_options is None:
      predictions = predict_labels(model, batch["image"], eval_options)
    else:
      probabilities = predict_probabilities(model, batch["image"], eval_options)
    for k in range(int(batch["image"].shape[0])):
      if limit is not None and index >= limit:
        break
      height, width = int(batch["height"][k]), int(batch["width"][k])
      size = shown_size(batch, k, resize)
      image = batch["image"][k, :size[0], :size[1]].numpy()
      label = batch["label"][k, :size[0], :size[1], 0].numpy()
      if crf_options is None:
        prediction = predictions[k, :size[0], :size[1]]
      else:
        prediction = tf.constant(dense_crf_labels(image[None], probabilities[k:k + 1, :size[0], :size[1]],
                                                  crf_options)[0])
      stem = visualization.picture_stem(batch["image_name"][k].numpy(), index, used)
      visualization.save_image_png(image, os.path.join(results_dir, f"{stem}_image.png"))
      visualization.save_image_png(
          visualization.overlay(image, prediction.numpy(), colormap, FLAGS.overlay_alpha, class_names=names),
          os.path.join(results_dir, f"{stem}_overlay.png"))
      visualization.save_image_png(
          visualization.side_by_side(image, label, prediction.numpy(), colormap, class_names=names,
                                     ignore_label=descriptor.ignore_label),
          os.path.join(results_dir, f"{stem}_panel.png"))
      if resized:  # back to the image's own size, as the original's vis.py
        prediction = resize_nearest_align_corners(prediction[None, ..., None], (height, width))[0, ..., 0]
      prediction = prediction.numpy()
      visualization.save_label_png(prediction, os.path.join(results_dir, f"{stem}_prediction.png"),
                                   colormap)
      if FLAGS.also_save_raw_predictions:
        if descriptor.name == "cityscapes":
          prediction = cityscapes_train_ids_to_label_ids(prediction)
        name = os.path.splitext(os.path.basename(batch["image_name"][k].numpy().decode("utf-8")))[0]
        visualization.save_label_png(prediction, os.path.join(raw_dir, f"{name}.png"), colormap=None)
      index += 1
      progress.update(1)
    if limit is not None and index >= limit:
      break
  progress.close()
  return results_dir


def main(argv):
  del argv
  if not FLAGS.vis_logdir:
    raise app.UsageError("--vis_logdir is required: the folder the pictures are written to.")
  descriptor = eval_common.descriptor_from_flags()
  colormap = descriptor.colormap if FLAGS.colormap_type == "dataset" else FLAGS.colormap_type
  try:
    eval_options = eval_common.eval_options_from_flags(
        eval_common.parse_crop_size(FLAGS.vis_crop_size, "vis_crop_size"))
    resize = eval_common.resize_from_flags()
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  check_batch_and_crop(FLAGS.vis_batch_size, eval_options.eval_crop_size, "vis_batch_size", "vis_crop_size")
  crf_options = eval_common.crf_options_from_flags()
  announce_waiting("deeplab_vis", "max_number_of_iterations", FLAGS.max_number_of_iterations, "visualise")
  for checkpoint in eval_common.iterate_checkpoints(FLAGS.max_number_of_iterations):
    try:
      written = visualise_checkpoint(checkpoint, descriptor, eval_options, colormap, resize, crf_options)
    except tf.errors.InvalidArgumentError as e:
      user_error = crop_size_error(e, eval_options.eval_crop_size, "vis_crop_size")
      if user_error is None:
        raise
      raise user_error from None
    print(f"wrote {written}")


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
