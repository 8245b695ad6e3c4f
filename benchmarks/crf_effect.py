"""The dense CRF's effect on a trained model: mIoU over all pixels and in bands around label boundaries.

  .venv/bin/python benchmarks/crf_effect.py --checkpoint=demo_output/train \
      --dataset=demo_output/data/nuclei.json --dataset_dir=demo_output/data --split=val

For every image of the split (each at its own size, one scale, no flip): the plain argmax of the model's
probabilities and the argmax after `deeplab_tf.evaluation.crf.dense_crf` with each CRF setting. Besides
the whole-image mIoU it reports DeepLab's "trimap" measure (DeepLabv1 section 5 / DeepLabv2 Fig. 14):
the mIoU of the pixels within `w` pixels of a ground-truth boundary (a pixel whose 4-neighbour has
another label), for each band width `w`. Prints a markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np
from absl import app, flags
from scipy import ndimage

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deeplab_tf import model_io  # noqa: E402
from deeplab_tf.data.descriptors import get_descriptor  # noqa: E402
from deeplab_tf.data.pipeline import build_dataset  # noqa: E402
from deeplab_tf.evaluation.crf import CrfOptions, dense_crf  # noqa: E402
from deeplab_tf.evaluation.inference import model_mean_pixel, predict_probabilities  # noqa: E402
from deeplab_tf.evaluation.metrics import ConfusionMatrix  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Training log directory, ckpt-N prefix or .keras file.")
flags.DEFINE_string("dataset", None, "Dataset name or descriptor JSON.")
flags.DEFINE_string("dataset_dir", None, "Folder of the {split}-*.tfrecord shards.")
flags.DEFINE_string("split", "val", "Split to measure on.")
flags.DEFINE_list("bands", ["1", "2", "4", "8"], "Trimap band widths in pixels.")
flags.DEFINE_multi_string("crf", ["deeplabv2"], "CRF settings to compare: 'deeplabv2' (CrfOptions "
                          "defaults) or comma-separated field=value overrides, e.g. bi_xy_std=10,bi_rgb_std=10.")


def boundary_distance(label: np.ndarray, ignore_label: int) -> np.ndarray:
  """Distance in pixels of every pixel to the nearest label boundary (inf without any boundary)."""
  edge = np.zeros(label.shape, bool)
  for axis in (0, 1):
    diff = np.diff(label, axis=axis) != 0
    valid = np.logical_and(np.delete(label, -1, axis) != ignore_label,
                           np.delete(label, 0, axis) != ignore_label)
    diff &= valid
    if axis == 0:
      edge[:-1] |= diff
      edge[1:] |= diff
    else:
      edge[:, :-1] |= diff
      edge[:, 1:] |= diff
  if not edge.any():
    return np.full(label.shape, np.inf)
  return ndimage.distance_transform_edt(~edge)


def _crf_options(spec: str) -> CrfOptions:
  if spec == "deeplabv2":
    return CrfOptions()
  values = {}
  for item in spec.split(","):
    key, value = item.split("=")
    values[key] = int(value) if key == "iterations" else float(value)
  return CrfOptions(**values)


def main(argv):
  del argv
  descriptor = get_descriptor(FLAGS.dataset)
  model, _ = model_io.load_model(FLAGS.checkpoint)
  bands = [int(b) for b in FLAGS.bands]
  settings = [("no CRF", None)] + [(spec, _crf_options(spec)) for spec in FLAGS.crf]
  matrices = {name: {w: ConfusionMatrix(descriptor.num_classes, descriptor.ignore_label)
                     for w in [None] + bands} for name, _ in settings}
  seconds = {name: 0.0 for name, _ in settings}
  dataset = build_dataset(os.path.join(FLAGS.dataset_dir, f"{FLAGS.split}-*.tfrecord"), is_training=False,
                          crop_size=None, batch_size=1, ignore_label=descriptor.ignore_label,
                          mean_pixel=model_mean_pixel(model))
  images = 0
  for batch in dataset:
    image = batch["image"][0].numpy()
    label = batch["label"][0, ..., 0].numpy()
    probabilities = predict_probabilities(model, batch["image"])[0].numpy()
    distance = boundary_distance(label, descriptor.ignore_label)
    for name, options in settings:
      started = time.time()
      prediction = (probabilities if options is None else dense_crf(image, probabilities, options)).argmax(-1)
      seconds[name] += time.time() - started
      for w, matrix in matrices[name].items():
        masked = label if w is None else np.where(distance <= w, label, descriptor.ignore_label)
        matrix.update(masked, prediction)
    images += 1
  header = "| setting | mIoU | " + " | ".join(f"trimap {w}px mIoU" for w in bands) + " | s/image |"
  print(f"{images} images of {FLAGS.split}, {int(matrices['no CRF'][None].matrix.sum())} pixels")
  print(header)
  print("|" + "---|" * (3 + len(bands)))
  for name, options in settings:
    cells = [f"{100 * matrices[name][w].result().miou:.2f}" for w in [None] + bands]
    label = name if options is None else f"{name} ({options.to_json()})"
    print(f"| {label} | " + " | ".join(cells) + f" | {seconds[name] / max(images, 1):.3f} |")
  for w in bands:
    print(f"pixels within {w}px of a boundary: {int(matrices['no CRF'][w].matrix.sum())}")


if __name__ == "__main__":
  flags.mark_flags_as_required(["checkpoint", "dataset", "dataset_dir"])
  app.run(main)
