"""Argmax agreement of mixed_bfloat16 inference with float32 on a trained model's held-out images.

  .venv/bin/python benchmarks/bf16_agreement.py --train_logdir=demo_output/train \
      --dataset_dir=demo_output/data --split=val

Restores the latest checkpoint of `--train_logdir` (written by `deeplab_train`, e.g. by `make demo`)
twice: once under the float32 policy and once under mixed_bfloat16 (bf16 activations, float32
weights and logits), both with BatchNorm folded as at export. Predicts every image of the split
through `predict_labels` and prints the share of pixels whose labels agree, and both mIoUs against
the ground truth.
"""

import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

from deeplab_tf import model_io  # pylint: disable=g-import-not-at-top
from deeplab_tf.data import pipeline  # pylint: disable=g-import-not-at-top
from deeplab_tf.evaluation.inference import predict_labels  # pylint: disable=g-import-not-at-top
from deeplab_tf.model.deeplab import build_deeplab  # pylint: disable=g-import-not-at-top
from deeplab_tf.model.acceleration import inference_model  # pylint: disable=g-import-not-at-top
from deeplab_tf.options import ModelOptions  # pylint: disable=g-import-not-at-top

flags.DEFINE_string("train_logdir", None, "Training log directory (model_options.json, ckpt-N).")
flags.DEFINE_string("dataset_dir", None, "Folder of the split's TFRecord shards.")
flags.DEFINE_string("split", "val", "Split to predict.")
flags.DEFINE_integer("num_classes", None, "Classes (default: the model's).")
FLAGS = flags.FLAGS


def _options(logdir):
  """The model options, ignoring keys this version does not know (options of a newer branch)."""
  with tf.io.gfile.GFile(os.path.join(logdir, model_io.MODEL_OPTIONS_FILENAME)) as f:
    values = json.load(f)
  known = {f.name for f in dataclasses.fields(ModelOptions)}
  return ModelOptions.from_json(json.dumps({k: v for k, v in values.items() if k in known}))


def _model(options, policy):
  keras.mixed_precision.set_global_policy(policy)
  model = build_deeplab(options)
  keras.mixed_precision.set_global_policy("float32")
  tf.train.Checkpoint(model=model).restore(
      tf.train.latest_checkpoint(FLAGS.train_logdir)).expect_partial()
  return inference_model(model)


def _miou(labels, predictions, num_classes, ignore=255):
  valid = labels != ignore
  matrix = np.bincount(num_classes * labels[valid] + predictions[valid],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)
  union = matrix.sum(0) + matrix.sum(1) - np.diag(matrix)
  return float(np.mean(np.diag(matrix)[union > 0] / union[union > 0]))


def main(argv):
  del argv
  options = _options(FLAGS.train_logdir)
  models = {p: _model(options, p) for p in ("float32", "mixed_bfloat16")}
  dataset = pipeline.build_dataset(
      os.path.join(FLAGS.dataset_dir, f"{FLAGS.split}-*.tfrecord"), is_training=False,
      crop_size=None, batch_size=1, ignore_label=255)
  agree = total = 0
  labels, predictions = [], {p: [] for p in models}
  for batch in dataset:
    image = batch["image"]
    out = {p: predict_labels(m, image).numpy() for p, m in models.items()}
    agree += int(np.sum(out["float32"] == out["mixed_bfloat16"]))
    total += out["float32"].size
    labels.append(batch["label"].numpy().reshape(-1))
    for p in models:
      predictions[p].append(out[p].reshape(-1))
  labels = np.concatenate(labels).astype(np.int64)
  num_classes = FLAGS.num_classes or options.num_classes
  print(f"{total} pixels of {len(predictions['float32'])} images: bf16 argmax equals float32 on "
        f"{100 * agree / total:.3f}%")
  for p in models:
    print(f"  {p}: mIoU {100 * _miou(labels, np.concatenate(predictions[p]).astype(np.int64), num_classes):.2f}%")


if __name__ == "__main__":
  flags.mark_flags_as_required(["train_logdir", "dataset_dir"])
  app.run(main)
