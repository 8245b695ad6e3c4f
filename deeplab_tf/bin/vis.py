"""Writes images, coloured predictions and overlays of a split (research/deeplab `vis.py`'s flags).

  python -m deeplab_tf.bin.vis --checkpoint_dir=/train --vis_logdir=/vis --dataset=pascal_voc_seg \
      --dataset_dir=/data/tfrecord --vis_split=val --vis_crop_size=513,513 --also_save_raw_predictions

Into `<vis_logdir>/segmentation_results/`, for the i-th image as the original: `{i:06d}_image.png`,
`{i:06d}_prediction.png` (a palette PNG in the colormap's colours whose values are the class ids), and
ours: `{i:06d}_overlay.png` (image blended with the prediction) and `{i:06d}_panel.png`
(image | ground truth | prediction). With --also_save_raw_predictions, `<vis_logdir>/
raw_segmentation_results/<image name>.png` holds the class ids as a greyscale PNG, like the original.
--crf_iterations=10 (and the other --crf_* flags, as eval) refines the predictions with DeepLabv2's dense CRF.
"""

from __future__ import annotations

import os

from absl import app, flags
from tqdm import tqdm

from deeplab_tf import visualization
from deeplab_tf.bin import eval_common
from deeplab_tf.data.descriptors import get_descriptor
from deeplab_tf.data.pipeline import build_dataset
from deeplab_tf.evaluation.crf import dense_crf_labels
from deeplab_tf.evaluation.inference import model_mean_pixel, predict_labels, predict_probabilities

FLAGS = flags.FLAGS

flags.DEFINE_string("vis_logdir", None, "Where the pictures go.")
flags.DEFINE_string("vis_split", "val", "Split to visualise.")
flags.DEFINE_list("vis_crop_size", ["513", "513"], "height,width the images are padded to; empty for "
                  "each image at its own size.")
flags.DEFINE_string("colormap_type", None, "pascal, cityscapes, ade20k or custom; default: the dataset's.")
flags.DEFINE_boolean("also_save_raw_predictions", False, "Also write the class ids as greyscale PNGs.")
flags.DEFINE_integer("max_number_of_images", 0, "Stop after this many images (0 = the whole split).")
flags.DEFINE_float("overlay_alpha", 0.5, "Weight of the prediction colours in the overlays.")


def main(argv):
  del argv
  if not FLAGS.vis_logdir:
    raise ValueError("--vis_logdir is required: the folder the pictures are written to.")
  descriptor = get_descriptor(FLAGS.dataset)
  colormap = FLAGS.colormap_type or descriptor.colormap
  eval_options = eval_common.eval_options_from_flags(
      eval_common.parse_crop_size(FLAGS.vis_crop_size, "vis_crop_size"))
  crf_options = eval_common.crf_options_from_flags()
  model, _ = eval_common.load_model_from_flags(eval_common.checkpoint_from_flags())
  windowed = eval_options.sliding_window
  dataset = build_dataset(
      eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.vis_split, "vis_split"), is_training=False,
      crop_size=None if windowed else eval_options.eval_crop_size, batch_size=1,
      ignore_label=descriptor.ignore_label, mean_pixel=model_mean_pixel(model))
  results_dir = os.path.join(FLAGS.vis_logdir, "segmentation_results")
  raw_dir = os.path.join(FLAGS.vis_logdir, "raw_segmentation_results")
  total = descriptor.splits_to_sizes.get(FLAGS.vis_split)
  if FLAGS.max_number_of_images > 0:
    dataset = dataset.take(FLAGS.max_number_of_images)
    total = min(total or FLAGS.max_number_of_images, FLAGS.max_number_of_images)
  for i, batch in enumerate(tqdm(dataset, total=total, desc="vis", unit="image")):
    height, width = int(batch["height"][0]), int(batch["width"][0])
    image = batch["image"][0, :height, :width].numpy()
    label = batch["label"][0, :height, :width, 0].numpy()
    if crf_options is None:
      prediction = predict_labels(model, batch["image"], eval_options)[0, :height, :width].numpy()
    else:
      probabilities = predict_probabilities(model, batch["image"], eval_options)[0, :height, :width]
      prediction = dense_crf_labels(image[None], probabilities[None], crf_options)[0]
    visualization.save_image_png(image, os.path.join(results_dir, f"{i:06d}_image.png"))
    visualization.save_label_png(prediction, os.path.join(results_dir, f"{i:06d}_prediction.png"), colormap)
    visualization.save_image_png(
        visualization.overlay(image, prediction, colormap, FLAGS.overlay_alpha),
        os.path.join(results_dir, f"{i:06d}_overlay.png"))
    visualization.save_image_png(visualization.side_by_side(image, label, prediction, colormap),
                                 os.path.join(results_dir, f"{i:06d}_panel.png"))
    if FLAGS.also_save_raw_predictions:
      name = os.path.splitext(os.path.basename(batch["image_name"][0].numpy().decode("utf-8")))[0]
      visualization.save_label_png(prediction, os.path.join(raw_dir, f"{name}.png"), colormap=None)
  print(f"wrote {results_dir}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
