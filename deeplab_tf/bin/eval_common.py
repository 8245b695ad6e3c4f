"""Flags and helpers shared by the eval, vis and export_model binaries (research/deeplab flag names).

Defined once here so that the binaries can be imported into one process (tests) without duplicate flags.
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Tuple

import tensorflow as tf
from absl import flags

from deeplab_tf.bin import model_flags  # noqa: F401  (defines --checkpoint_path)
from deeplab_tf.options import EvalOptions

FLAGS = flags.FLAGS

flags.DEFINE_string("checkpoint_dir", None, "Training log directory; its latest checkpoint is used "
                    "(eval: every new checkpoint, see --max_number_of_evaluations).")
flags.DEFINE_string("model_options_json", None, "model_options.json of the model; default: the one beside "
                    "the checkpoint.")
flags.DEFINE_string("dataset", "pascal_voc_seg", "Dataset name (pascal_voc_seg, cityscapes, ade20k) or the "
                    "path of a dataset descriptor JSON.")
flags.DEFINE_string("dataset_dir", None, "Folder of the TFRecord shards {split}-*.tfrecord.")
flags.DEFINE_multi_float("eval_scales", [1.0], "Scales whose softmax probabilities are averaged.")
flags.DEFINE_boolean("add_flipped_images", False, "Also average over left-right flipped images.")
flags.DEFINE_boolean("sliding_window", False, "Predict images larger than the eval crop window by window.")
flags.DEFINE_float("sliding_window_overlap", 1.0 / 3.0, "Minimum overlap fraction of sliding windows.")


def parse_crop_size(values: Optional[Sequence[str]], flag_name: str) -> Optional[Tuple[int, int]]:
  """`["513", "513"]` (a DEFINE_list) -> (513, 513); None or [] -> None.

  Raises:
    ValueError: naming the flag, if not two positive integers.
  """
  if not values:
    return None
  try:
    size = tuple(int(v) for v in values)
  except ValueError:
    size = ()
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f"--{flag_name}={','.join(values)}: expected two positive integers 'height,width', "
                     "e.g. 513,513.")
  return size


def eval_options_from_flags(crop_size: Optional[Tuple[int, int]]) -> EvalOptions:
  return EvalOptions(eval_crop_size=crop_size, eval_scales=tuple(FLAGS.eval_scales),
                     add_flipped_images=FLAGS.add_flipped_images, sliding_window=FLAGS.sliding_window,
                     sliding_window_overlap=FLAGS.sliding_window_overlap)


def checkpoint_from_flags() -> str:
  """--checkpoint_path, else --checkpoint_dir (raises ValueError when neither is given)."""
  path = FLAGS.checkpoint_path or FLAGS.checkpoint_dir
  if not path:
    raise ValueError("Give --checkpoint_dir (a training log directory) or --checkpoint_path.")
  return path


def load_model_from_flags(path: str):
  """`(model, model_options)` of a checkpoint, with --model_options_json if given."""
  # Imported here: model_io pulls in Keras and the models, which parsing the flags does not need.
  from deeplab_tf import model_io  # pylint: disable=import-outside-toplevel
  options = None
  if FLAGS.model_options_json:
    options = model_io.load_model_options(FLAGS.model_options_json)
  return model_io.load_model(path, options)


def split_pattern(dataset_dir: Optional[str], split: str, flag_name: str) -> str:
  """`<dataset_dir>/<split>-*.tfrecord` (raises ValueError naming --dataset_dir when missing)."""
  if not dataset_dir or not tf.io.gfile.isdir(dataset_dir):
    raise ValueError(f"--dataset_dir={dataset_dir!r}: expected the folder of the {split}-*.tfrecord shards "
                     f"(--{flag_name}={split}).")
  return os.path.join(dataset_dir, f"{split}-*.tfrecord")


def checkpoint_step(path: str) -> int:
  """N of a `.../ckpt-N` prefix, else 0 (the TensorBoard step of an evaluation)."""
  match = re.search(r"-(\d+)$", path)
  return int(match.group(1)) if match else 0

