"""Trains DeepLab: research/deeplab `train.py`'s flags -> options -> `deeplab_tf.training.train`.

Usage (the papers' first VOC stage):
  deeplab_train --flagfile=experiments/voc_trainaug_xception65_os16.flags \
      --dataset_dir=/data/voc_tfrecord --train_logdir=/tmp/train

`--dataset` and `--dataset_dir` are the flags shared with eval/vis (`deeplab_tf.bin.eval_common`), the
model flags (`--model_variant`, `--output_stride`, `--atrous_rates`, ...) those of
`deeplab_tf.bin.model_flags`; `--num_classes` defaults to the dataset descriptor's (without
`--dataset`, the descriptor JSON beside the shards: `eval_common.descriptor_from_flags`).
Re-running the same command resumes from the latest checkpoint in --train_logdir; SIGTERM checkpoints
and exits. A user's mistake or a data fault (another model's --train_logdir, a logdir in use by
another trainer, a truncated shard, labels out of range or all ignored) ends in one line.
"""

from __future__ import annotations

import os

import tensorflow as tf
from absl import app, flags, logging
from tqdm import tqdm

from deeplab_tf.bin import entry
from deeplab_tf.bin import eval_common, model_flags
from deeplab_tf.data import descriptors, pipeline
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation import validation
from deeplab_tf.options import TrainOptions
from deeplab_tf.training import strategy as strategy_lib
from deeplab_tf.training import trainer

FLAGS = flags.FLAGS

# Logging and checkpoints.
flags.DEFINE_string("train_logdir", None, "Where checkpoints, model_options.json and summaries go.")
flags.DEFINE_integer("log_steps", 10, "Log loss, learning rate, steps/s and ETA every this many steps.")
flags.DEFINE_integer("save_interval_steps", 1000, "Checkpoint every this many steps (and on SIGTERM).")
flags.DEFINE_integer("save_interval_secs", 1200, "Also checkpoint every this many seconds (research/"
                     "deeplab's interval); 0 = step-based only.")
flags.DEFINE_integer("save_summaries_steps", 100, "TensorBoard scalars every this many steps.")
flags.DEFINE_boolean("save_summaries_images", False, "Also write image, label and prediction summaries.")
flags.DEFINE_integer("max_to_keep", 5, "Checkpoints kept.")
flags.DEFINE_boolean("progress_bar", False, "A tqdm progress bar instead of a log line every log_steps.")
# Data.
flags.DEFINE_string("train_split", "train", "Split to train on ({split}-*.tfrecord in --dataset_dir).")
flags.DEFINE_list("train_crop_size", ["513", "513"], "Training crop height,width.")
# Optimisation.
flags.DEFINE_integer("train_batch_size", 8, "Global batch size, split across replicas (the papers: 16).")
flags.DEFINE_integer("training_number_of_steps", 30000, "Total optimizer steps.")
flags.DEFINE_float("base_learning_rate", 0.0001, "Initial learning rate: 0.007 on train_aug, 1e-4 "
                   "(or the paper's 1e-3) to fine-tune.")
flags.DEFINE_enum("learning_policy", "poly", ["poly", "step", "cosine"], "Learning-rate policy.")
flags.DEFINE_float("learning_power", 0.9, "Exponent of the poly policy.")
flags.DEFINE_integer("learning_rate_decay_step", 2000, "Step policy: decay every this many steps.")
flags.DEFINE_float("learning_rate_decay_factor", 0.1, "Step policy: decay factor.")
flags.DEFINE_integer("slow_start_step", 0, "Steps at the slow-start learning rate.")
flags.DEFINE_float("slow_start_learning_rate", 1e-4, "Learning rate during slow start.")
flags.DEFINE_enum("slow_start_burnin_type", "none", ["none", "linear"], "Constant or linear warm-up.")
flags.DEFINE_float("momentum", 0.9, "SGD momentum.")
flags.DEFINE_float("weight_decay", 0.00004, "L2 weight decay (4e-5 Xception/MobileNet, 1e-4 ResNet).")
flags.DEFINE_boolean("fine_tune_batch_norm", True, "Train BatchNorm (needs batch >= 12).")
flags.DEFINE_float("min_scale_factor", 0.5, "Smallest random scale.")
flags.DEFINE_float("max_scale_factor", 2.0, "Largest random scale.")
flags.DEFINE_float("scale_factor_step_size", 0.25, "Step between random scales.")
flags.DEFINE_float("top_k_percent_pixels", 1.0, "Hard pixel mining: fraction of pixels kept.")
flags.DEFINE_integer("hard_example_mining_step", 0, "Steps over which mining ramps in.")
flags.DEFINE_boolean("upsample_logits", True, "Loss on logits upsampled to the labels.")
flags.DEFINE_float("last_layer_gradient_multiplier", 1.0, "Gradient multiplier of the last layers.")
flags.DEFINE_multi_float("label_weights", None, "Per-class loss weights, one flag per class in class "
                         "order; unset weights every class 1.")
flags.DEFINE_integer("seed", None, "Random seed of initialisation and augmentation.")
# Initialisation.
flags.DEFINE_string("tf_initial_checkpoint", None, "Start from: .keras/.weights.h5, our checkpoint, or a "
                    "model-zoo TF1 checkpoint prefix (used only when --train_logdir has no checkpoint).")
# --initialize_last_layer and --last_layers_contain_logits_only are defined in model_flags.
# Distribution and precision.
flags.DEFINE_enum("strategy", "default", list(strategy_lib.STRATEGIES), "tf.distribute strategy.")
flags.DEFINE_integer("num_gpus", 0, "mirrored: GPUs to use (0 = all visible).")
flags.DEFINE_string("tpu", None, "tpu: TPU name, grpc:// address or 'local'.")
flags.DEFINE_integer("steps_per_loop", 1, "Optimizer steps per tf.function call: the host reads the "
                     "loss (logs, summaries, NaN check) only every this many steps.")
flags.DEFINE_boolean("sync_batch_norm", False, "Synchronise BN statistics across replicas.")
flags.DEFINE_string("validation_split", None, "Also compute mIoU on this split (e.g. val) after every "
                    "checkpoint, written to TensorBoard as validation/miou (not in research/deeplab, "
                    "which ran eval.py beside training).")
flags.DEFINE_integer("validation_max_images", 50, "Images of --validation_split used (a subset, so that "
                     "validation stays cheap); 0 = the whole split.")
flags.DEFINE_float("batch_norm_decay", 0.9997, "BatchNorm moving-average decay: at 0.9997 every layer "
                   "keeps the original's (ResNet's 0.95 included); another value sets every layer's, "
                   "e.g. 0.9-0.99 for runs of a few hundred steps.")


def options_from_flags():
  """`(ModelOptions, TrainOptions, descriptor)` from the flags; ValueError names a bad flag.

  Every `TrainOptions` field is set from the flag of the same name.
  """
  descriptor = eval_common.descriptor_from_flags()
  model_options = model_flags.model_options_from_flags()
  if not FLAGS["num_classes"].present:  # not given: the dataset's
    model_options = model_options.replace(num_classes=descriptor.num_classes)
  values = {name: FLAGS[name].value for name in TrainOptions.flag_names()}
  values["train_crop_size"] = eval_common.parse_crop_size(FLAGS.train_crop_size, "train_crop_size")
  values["label_weights"] = tuple(FLAGS.label_weights) if FLAGS.label_weights else None
  return model_options, TrainOptions(**values), descriptor


def main(argv):
  del argv
  if not FLAGS.train_logdir:
    raise app.UsageError("--train_logdir is required.")
  try:
    model_options, train_options, descriptor = options_from_flags()
    config = strategy_lib.StrategyConfig(FLAGS.strategy, num_gpus=FLAGS.num_gpus, tpu=FLAGS.tpu)
    pattern = eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.train_split, "train_split")
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  strategy = strategy_lib.build_strategy(config)
  logging.info("Training %s on %s/%s with %d replica(s): %s", model_options.model_variant,
               descriptor.name, FLAGS.train_split, strategy.num_replicas_in_sync,
               train_options.to_json())

  def log_line(p: trainer.Progress):
    logging.info("step %d/%d  loss %.4f (cross-entropy %.4f)  lr %.3g  %.2f steps/s  ETA %.0f s",
                 p.step, p.total_steps, p.loss, p.cross_entropy, p.learning_rate, p.steps_per_sec,
                 p.eta_seconds)

  validate = None
  if FLAGS.validation_split:
    validate = validation.validation_fn(
        model_options, eval_common.split_pattern(FLAGS.dataset_dir, FLAGS.validation_split,
                                                 "validation_split"),
        num_classes=descriptor.num_classes, ignore_label=descriptor.ignore_label,
        max_images=FLAGS.validation_max_images)

  bar = (tqdm(total=train_options.solver.training_number_of_steps, unit="step")
         if FLAGS.progress_bar else None)
  try:
    result = trainer.train(model_options, train_options, pattern, FLAGS.train_logdir,
                           strategy=strategy, ignore_label=descriptor.ignore_label, progress=bar,
                           on_log=None if bar else log_line, validation_fn=validate,
                           colormap=descriptor.colormap)
  except (trainer.CheckpointWriteError, trainer.NonFiniteLossError) as e:
    raise SystemExit(f"deeplab_train: {e}") from e  # named faults, not bugs: no traceback
  except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
    message = pipeline.input_error_message(e, pattern)
    if message is None:
      raise
    raise UserError(message) from None
  finally:
    if bar is not None:
      bar.close()
  if strategy_lib.is_chief(strategy):  # Class names travel with the checkpoints (predict, export).
    descriptors.write_descriptor(
        descriptor, os.path.join(FLAGS.train_logdir, descriptors.CHECKPOINT_DESCRIPTOR_FILENAME))
  for step, values in result.validation:
    logging.info("validation at step %d: %s", step, values)
  logging.info("%s at step %d (started at step %d), loss %.4f, %.0f s; checkpoint %s",
               "Interrupted" if result.interrupted else "Finished", result.final_step,
               result.start_step, result.last_loss, result.wall_time_seconds, result.checkpoint_path)


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
