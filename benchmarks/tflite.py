"""TFLite (LiteRT) against Keras on held-out tiles: argmax agreement, mIoU, size and time per mode.

  python benchmarks/tflite.py --checkpoint_dir=/tmp/r9bench/train --dataset_dir=/tmp/r9bench/data \
      --dataset=/tmp/r9bench/data/nuclei.json --output_dir=/tmp/r9bench/tflite

For each --quantize mode (none, float16, dynamic_range, int8 calibrated on --num_calibration_images
images of the train split), `deeplab_tf.export.export_tflite` writes a model with the held-out tiles'
size as its fixed input; the LiteRT interpreter (ai-edge-litert, XNNPACK on CPU) segments every tile
of --eval_split, and its labels are compared pixel by pixel with the Keras model's (single scale, same
uint8 image). Times: conversion (s) and the interpreter's mean time per tile (ms, after one warm-up
run; Keras' time per tile, compiled with tf.function, with the same single-image calls beside it). Figures: benchmarks/README.md.
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from deeplab_tf import export, model_io
from deeplab_tf.data.descriptors import get_descriptor
from deeplab_tf.data.features import parse_example
from deeplab_tf.evaluation.inference import model_mean_pixel, predict_probabilities
from deeplab_tf.evaluation.metrics import ConfusionMatrix

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint_dir", None, "Training log directory (its latest checkpoint).")
flags.DEFINE_string("dataset", None, "Dataset descriptor (name or JSON path).")
flags.DEFINE_string("dataset_dir", None, "Folder of the TFRecord shards.")
flags.DEFINE_string("eval_split", "val", "Held-out split the figures are measured on.")
flags.DEFINE_string("calibration_split", "train", "Split whose images calibrate int8.")
flags.DEFINE_integer("num_calibration_images", 100, "Calibration images for int8.")
flags.DEFINE_list("modes", list(export.TFLITE_QUANTIZE_MODES), "Quantisation modes to measure.")
flags.DEFINE_string("output_dir", "/tmp/deeplab_tflite_benchmark", "Where the .tflite files and JSON go.")


def main(argv):
  del argv
  from ai_edge_litert.interpreter import Interpreter
  model, options = model_io.load_model(FLAGS.checkpoint_dir)
  descriptor = get_descriptor(FLAGS.dataset)
  records = tf.data.TFRecordDataset(tf.io.gfile.glob(os.path.join(FLAGS.dataset_dir, f"{FLAGS.eval_split}-*")))
  tiles = [(e["image"].numpy(), e["label"].numpy()[..., 0]) for e in map(parse_example, records)]
  size = tiles[0][0].shape[:2]
  assert all(image.shape[:2] == size for image, _ in tiles), "held-out tiles of different sizes"

  predict = tf.function(lambda image: predict_probabilities(model, image))  # compiled, as served
  predict(tiles[0][0][None])  # warm-up (tracing)
  started = time.perf_counter()
  probabilities = [predict(image[None]).numpy()[0] for image, _ in tiles]
  keras_ms = 1000 * (time.perf_counter() - started) / len(tiles)
  keras_labels = np.stack([p.argmax(-1) for p in probabilities])
  top2 = np.sort(np.stack(probabilities), axis=-1)[..., -2:]
  margin = top2[..., 1] - top2[..., 0]
  truth = np.stack([label for _, label in tiles])
  keras_miou = _miou(truth, keras_labels, descriptor)

  calibration = export.representative_images(
      os.path.join(FLAGS.dataset_dir, f"{FLAGS.calibration_split}-*"), size, FLAGS.num_calibration_images,
      model_mean_pixel(model))
  results = {"model": f"{options.model_variant}, output_stride {options.output_stride}, "
                      f"{model.count_params():,} parameters, {FLAGS.checkpoint_dir}",
             "tiles": len(tiles), "tile_size": list(size), "pixels": int(truth.size),
             "keras": {"miou": keras_miou, "ms_per_tile": keras_ms}, "modes": {}}
  tf.io.gfile.makedirs(FLAGS.output_dir)
  for mode in FLAGS.modes:
    path = os.path.join(FLAGS.output_dir, f"deeplab_{mode}.tflite")
    started = time.perf_counter()
    export.export_tflite(model, path, size, quantize=mode, overwrite=True,
                         representative_dataset=calibration if mode == "int8" else None)
    convert_s = time.perf_counter() - started
    runner = Interpreter(model_path=path).get_signature_runner()
    runner(image_tensor=tiles[0][0][None])  # warm-up
    started = time.perf_counter()
    labels = np.concatenate([runner(image_tensor=image[None])["semantic_predictions"] for image, _ in tiles])
    ms = 1000 * (time.perf_counter() - started) / len(tiles)
    equal = labels == keras_labels
    results["modes"][mode] = {
        "agreement": float(equal.mean()),
        "agreement_where_keras_margin_gt_0.05": float(equal[margin > 0.05].mean()),
        "miou": _miou(truth, labels, descriptor), "bytes": tf.io.gfile.stat(path).length,
        "convert_s": convert_s, "ms_per_tile": ms}
  with tf.io.gfile.GFile(os.path.join(FLAGS.output_dir, "tflite_benchmark.json"), "w") as f:
    f.write(json.dumps(results, indent=1))
  print(f"{results['model']}\n{len(tiles)} held-out tiles of {size[0]}x{size[1]} ({truth.size:,} pixels); "
        f"Keras: mIoU {100 * keras_miou:.2f}%, {keras_ms:.1f} ms/tile")
  print(f"{'mode':<15}{'agreement':>11}{'(margin>0.05)':>15}{'mIoU':>9}{'size':>10}{'convert':>9}{'ms/tile':>9}")
  for mode, r in results["modes"].items():
    print(f"{mode:<15}{100 * r['agreement']:>10.3f}%{100 * r['agreement_where_keras_margin_gt_0.05']:>14.3f}%"
          f"{100 * r['miou']:>8.2f}%{r['bytes'] / 1e6:>8.2f}MB{r['convert_s']:>8.1f}s{r['ms_per_tile']:>9.1f}")


def _miou(truth, labels, descriptor):
  matrix = ConfusionMatrix(descriptor.num_classes, descriptor.ignore_label)
  matrix.update(truth, labels)
  return float(matrix.result().miou)


if __name__ == "__main__":
  app.run(main)
