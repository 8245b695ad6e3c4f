"""Flags and helpers shared by the eval, vis and export_model binaries (research/deeplab flag names).

Defined once here so that the binaries can be imported into one process (tests) without duplicate flags.
"""

from __future__ import annotations

import os
import re
from typing import Iterator, Optional, Sequence, Tuple

import tensorflow as tf
from absl import flags

from deeplab_tf.bin import model_flags
from deeplab_tf.evaluation.crf import CrfOptions
from deeplab_tf.options import MIXED_PRECISION_POLICIES, EvalOptions

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint_dir", None, "Training log directory; its latest checkpoint is used "
                    "(eval: every new checkpoint, see --max_number_of_evaluations).")
flags.DEFINE_string("model_options_json", None, "model_options.json of the model; default: the one beside "
                    "the checkpoint.")
flags.DEFINE_string("dataset", "pascal_voc_seg", "Dataset name (pascal_voc_seg, cityscapes, ade20k) or the "
                    "path of a dataset descriptor JSON.")
flags.DEFINE_string("dataset_dir", None, "Folder of the TFRecord shards {split}-*.tfrecord.")
flags.DEFINE_multi_float("eval_scales", [1.0], "Scales whose softmax probabilities are averaged.")
flags.DEFINE_boolean("jit_compile", False, "Compile with XLA: the training step (forward, loss, gradients) "
                     "in deeplab_train; the network in deeplab_eval, deeplab_vis and deeplab_predict.")
flags.DEFINE_enum("mixed_precision", "float32", list(MIXED_PRECISION_POLICIES),
                  "Keras dtype policy of the network: in deeplab_train the training step's, in "
                  "deeplab_eval, deeplab_vis, deeplab_predict and deeplab_export_model the prediction's "
                  "(16-bit activations, float32 weights read from the checkpoint; the export stores "
                  "them in 16 bits).")
flags.DEFINE_boolean("add_flipped_images", False, "Also average over left-right flipped images.")
flags.DEFINE_boolean("sliding_window", False, "Predict images larger than the eval crop window by window.")
flags.DEFINE_float("sliding_window_overlap", 1.0 / 3.0, "Minimum overlap fraction of sliding windows.")
flags.DEFINE_integer("eval_interval_secs", 300, "Seconds between checks for a new checkpoint in "
                     "--checkpoint_dir.")
flags.DEFINE_integer("eval_timeout_secs", None, "Stop waiting for a new checkpoint after this long.")
# DeepLabv2's dense CRF post-processing (deeplab_tf.evaluation.crf; needs deeplab_tf[crf]).
flags.DEFINE_integer("crf_iterations", 0, "Mean-field iterations of DeepLabv2's dense CRF on each "
                     "prediction; 0 (default) turns the CRF off, DeepLabv2 uses 10.")
flags.DEFINE_float("crf_pos_w", CrfOptions.pos_w, "CRF smoothness kernel weight (w2).")
flags.DEFINE_float("crf_pos_xy_std", CrfOptions.pos_xy_std, "CRF smoothness kernel width in pixels.")
flags.DEFINE_float("crf_bi_w", CrfOptions.bi_w, "CRF appearance kernel weight (w1).")
flags.DEFINE_float("crf_bi_xy_std", CrfOptions.bi_xy_std, "CRF appearance kernel width in pixels.")
flags.DEFINE_float("crf_bi_rgb_std", CrfOptions.bi_rgb_std, "CRF appearance kernel colour width "
                   "(0-255 units).")


def parse_crop_size(values: Optional[Sequence[str]], flag_name: str) -> Optional[Tuple[int, int]]:
  """`["513", "513"]` (a DEFINE_list) -> (513, 513); None or [] -> None.

  Raises:
    UserError: (a ValueError) naming the flag, if not two positive integers.
  """
  if not values:
    return None
  try:
    size = tuple(int(v) for v in values)
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) < 1:
    from deeplab_tf.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError(f"--{flag_name}={','.join(values)}: expected two positive integers 'height,width', "
                     "e.g. 513,513.")
  return size


def resize_from_flags() -> dict:
  """The resize keyword arguments of `build_dataset` from the flags (raises ValueError naming a bad one)."""
  from deeplab_tf.data.preprocess import check_resize_values  # pylint: disable=import-outside-toplevel
  check_resize_values(FLAGS.min_resize_value, FLAGS.max_resize_value, FLAGS.resize_factor)
  return dict(min_resize_value=FLAGS.min_resize_value, max_resize_value=FLAGS.max_resize_value,
              resize_factor=FLAGS.resize_factor, keep_aspect_ratio=FLAGS.keep_aspect_ratio)


def eval_options_from_flags(crop_size: Optional[Tuple[int, int]]) -> EvalOptions:
  return EvalOptions(eval_crop_size=crop_size, eval_scales=tuple(FLAGS.eval_scales),
                     add_flipped_images=FLAGS.add_flipped_images, sliding_window=FLAGS.sliding_window,
                     sliding_window_overlap=FLAGS.sliding_window_overlap, jit_compile=FLAGS.jit_compile,
                     kernel_policy=FLAGS.kernel_policy)


def crf_options_from_flags() -> Optional[CrfOptions]:
  """The dense CRF's options from the --crf_* flags, or None when --crf_iterations is 0."""
  if FLAGS.crf_iterations == 0:
    return None
  return CrfOptions(iterations=FLAGS.crf_iterations, pos_w=FLAGS.crf_pos_w,
                    pos_xy_std=FLAGS.crf_pos_xy_std, bi_w=FLAGS.crf_bi_w,
                    bi_xy_std=FLAGS.crf_bi_xy_std, bi_rgb_std=FLAGS.crf_bi_rgb_std)


def checkpoint_from_flags() -> str:
  """--checkpoint_path, else --checkpoint_dir (raises ValueError when neither is given)."""
  path = FLAGS.checkpoint_path or FLAGS.checkpoint_dir
  if not path:
    from deeplab_tf.errors import UserError  # pylint: disable=import-outside-toplevel
    raise UserError("Give --checkpoint_dir (a training log directory) or --checkpoint_path.")
  return path


def load_model_from_flags(path: str, fold_batch_norm: bool = True):
  """`(model, model_options)` of a checkpoint, for inference.

  The options are those of --model_options_json, else those beside the checkpoint, with the model flags
  given explicitly (e.g. --output_stride=8) in their place; the model is built under
  --mixed_precision, in plain Keras layers. With `fold_batch_norm` (eval, vis, predict) the model
  returned is `deeplab_tf.model.acceleration.inference_model`'s copy for --kernel_policy: the same
  predictions to float32 rounding, with no BatchNorm left and, under mixed precision, 16-bit weights,
  so that every prediction runs the folded weights instead of folding them again (Xception-65 at
  513x513: 1.07x faster in float32, 1.2x in bfloat16, benchmarks/README.md).
  """
  from deeplab_tf import io_utils, model_io  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model import acceleration  # pylint: disable=import-outside-toplevel
  if path.endswith(".keras"):
    model, options = model_io.load_model(path, model_io.load_model_options(FLAGS.model_options_json)
                                         if FLAGS.model_options_json else None)
  else:
    options = model_io.load_model_options(FLAGS.model_options_json or (
        path if io_utils.isdir(path) else model_io.resolve_checkpoint(path)))
    model, options = model_io.load_model(path, model_flags.override_model_options(options),
                                         mixed_precision=FLAGS.mixed_precision)
  if fold_batch_norm:
    model = acceleration.inference_model(model, FLAGS.kernel_policy)
  return model, options


def iterate_checkpoints(max_number: int) -> Iterator[str]:
  """The checkpoints to evaluate or visualise, as research/deeplab's eval.py and vis.py loop over them.

  --checkpoint_path: that checkpoint, once. Otherwise the checkpoints of --checkpoint_dir: with
  `max_number` 1 its latest, else each new one as it appears (the latest first, then every
  --eval_interval_secs), `max_number` of them (0 or less: forever, or until --eval_timeout_secs passes
  without a new one).

  Raises:
    ValueError: neither flag given.
  """
  from deeplab_tf.model_io import resolve_checkpoint  # pylint: disable=import-outside-toplevel
  path = checkpoint_from_flags()
  if FLAGS.checkpoint_path or max_number == 1:
    yield path if path.endswith(".keras") else resolve_checkpoint(path)  # a log directory's latest ckpt-N
    return
  done = 0
  from absl import logging  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model_io import (  # pylint: disable=import-outside-toplevel
      checkpoint_problem, latest_readable_checkpoint)
  for prefix in tf.train.checkpoints_iterator(FLAGS.checkpoint_dir, min_interval_secs=FLAGS.eval_interval_secs,
                                              timeout=FLAGS.eval_timeout_secs):
    problem = checkpoint_problem(prefix)
    if problem is not None:  # truncated or corrupted: the first time the previous readable one
      logging.warning("Checkpoint %s is unreadable (%s): truncated or corrupted; skipped.", prefix,
                      problem)
      prefix = latest_readable_checkpoint(FLAGS.checkpoint_dir) if done == 0 else None
      if prefix is None:
        continue
    yield prefix
    done += 1
    if 0 < max_number <= done:
      return


def descriptor_from_flags():
  """The dataset's descriptor: --dataset's when given, else the descriptor JSON beside the shards.

  research/deeplab defaults --dataset to pascal_voc_seg, which silently made a 3-class folder a
  21-class model. Without an explicit --dataset, the one dataset descriptor JSON of --dataset_dir
  (`datasets/build_folder_data.py` and the other converters write one there) gives the number of
  classes, their names and the ignore label; with none there, pascal_voc_seg stays the default, as in
  the original, with a warning. An explicit --num_classes that contradicts the descriptor found is
  refused.

  Raises:
    UserError: several descriptors in --dataset_dir, or --num_classes contradicting the one found.
    ValueError: an unknown --dataset.
  """
  from absl import logging  # pylint: disable=import-outside-toplevel
  from deeplab_tf.data import descriptors  # pylint: disable=import-outside-toplevel
  from deeplab_tf.errors import UserError  # pylint: disable=import-outside-toplevel
  if not FLAGS["dataset"].using_default_value or not FLAGS.dataset_dir or not tf.io.gfile.isdir(
      FLAGS.dataset_dir):
    return descriptors.get_descriptor(FLAGS.dataset)
  found = []
  for path in sorted(tf.io.gfile.glob(os.path.join(FLAGS.dataset_dir, "*.json"))):
    try:
      found.append((path, descriptors.get_descriptor(path)))
    except ValueError:  # another JSON file (not a descriptor)
      continue
  if len(found) > 1:
    raise UserError(f"--dataset_dir={FLAGS.dataset_dir} holds several dataset descriptors "
                    f"({', '.join(p for p, _ in found)}): choose one with --dataset=<its path>.")
  if not found:
    logging.warning("No dataset descriptor JSON in --dataset_dir=%s and no --dataset: using %s's "
                    "(%d classes). Pass --dataset=<descriptor.json> if that is not your dataset.",
                    FLAGS.dataset_dir, FLAGS.dataset, descriptors.get_descriptor(FLAGS.dataset).num_classes)
    return descriptors.get_descriptor(FLAGS.dataset)
  path, descriptor = found[0]
  if not FLAGS["num_classes"].using_default_value and FLAGS.num_classes != descriptor.num_classes:
    raise UserError(f"--num_classes={FLAGS.num_classes} contradicts the dataset descriptor {path} "
                    f"({descriptor.num_classes} classes: {', '.join(descriptor.class_names[:8])}"
                    f"{', ...' if descriptor.num_classes > 8 else ''}): drop --num_classes, or pass "
                    "--dataset=<another descriptor> if the folder's is wrong.")
  logging.info("Dataset %s from %s: %d classes, ignore_label %d.", descriptor.name, path,
               descriptor.num_classes, descriptor.ignore_label)
  return descriptor


def split_pattern(dataset_dir: Optional[str], split: str, flag_name: str) -> str:
  """`<dataset_dir>/<split>-*.tfrecord`.

  Raises:
    UserError: (a ValueError) naming --dataset_dir when it is missing, or --<flag_name> and the splits
      that exist when no shard of `split` is there.
  """
  from deeplab_tf.errors import UserError  # pylint: disable=import-outside-toplevel
  if not dataset_dir or not tf.io.gfile.isdir(dataset_dir):
    raise UserError(f"--dataset_dir={dataset_dir!r}: expected the folder of the {split}-*.tfrecord shards "
                    f"(--{flag_name}={split}).")
  pattern = os.path.join(dataset_dir, f"{split}-*.tfrecord")
  if not tf.io.gfile.glob(pattern):
    splits = sorted({os.path.basename(p).split("-")[0]
                     for p in tf.io.gfile.glob(os.path.join(dataset_dir, "*-*.tfrecord"))})
    raise UserError(f"--{flag_name}={split}: no shard {pattern}; the splits in --dataset_dir are "
                    f"{splits or 'none'} (made by a datasets/ converter).")
  return pattern


def checkpoint_step(path: str) -> int:
  """N of a `.../ckpt-N` prefix, else 0 (the TensorBoard step of an evaluation)."""
  match = re.search(r"-(\d+)$", path)
  return int(match.group(1)) if match else 0

