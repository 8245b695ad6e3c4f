"""What deeplab_eval and deeplab_vis say to their user: waiting for checkpoints, crop and batch mistakes.

Shared by the two binaries (and not defining flags of its own, so that each binary keeps its own).
"""

from __future__ import annotations

import sys
from typing import Optional

from absl import flags

from deeplab_tf.bin import eval_common  # noqa: F401  (defines the flags read here)
from deeplab_tf.data.preprocess import resize_to_range_size
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation.evaluate import oversized_image

FLAGS = flags.FLAGS


def check_batch_and_crop(batch_size: int, crop_size, batch_flag: str, crop_flag: str) -> None:
  """Raises UserError when batching without a crop (images of different sizes cannot be stacked)."""
  if batch_size > 1 and crop_size is None and not FLAGS.sliding_window:
    raise UserError(f"--{batch_flag}={batch_size} needs --{crop_flag}=height,width (at least the largest "
                    f"image) to pad the images of a batch to one size; or leave --{batch_flag}=1 to "
                    "take each image at its own size.")


def crop_size_error(error: Exception, crop_size, crop_flag: str) -> Optional[UserError]:
  """The UserError for an image larger than the given crop (`error` from the input pipeline), naming
  the flag and the image's size; None for any other error."""
  big = oversized_image(error)
  if big is None:
    return None
  return UserError(f"--{crop_flag}={crop_size[0]},{crop_size[1]}: image {big.name} is {big.height}x"
                   f"{big.width} (height x width), larger than the crop; give a crop of at least the "
                   f"largest image (output_stride * k + 1), or no --{crop_flag} to take each image at its "
                   "own size.")


def announce_waiting(program: str, count_flag: str, max_number: int, what: str) -> None:
  """Says at once, on stderr, that the binary waits for checkpoints, where, and how to run once."""
  if FLAGS.checkpoint_path or max_number == 1 or not FLAGS.checkpoint_dir:
    return
  how_long = (f"until {max_number} have been {what}d" if max_number > 1 else
              f"forever (--{count_flag}={max_number}, as research/deeplab)")
  if FLAGS.eval_timeout_secs:
    how_long += f", or until none appears for {FLAGS.eval_timeout_secs} s (--eval_timeout_secs)"
  print(f"{program}: waiting for checkpoints in {FLAGS.checkpoint_dir}: the latest one (once there is "
        f"one) and every new one is {what}d as it appears, looking every {FLAGS.eval_interval_secs} s "
        f"(--eval_interval_secs), {how_long}. To {what} once and exit: --{count_flag}=1 (the latest "
        "checkpoint) or --checkpoint_path=<checkpoint>. Ctrl-C stops.", file=sys.stderr, flush=True)


def shown_size(batch, k: int, resize: dict):
  """(height, width) of the k-th image of a batch inside its padding (after resizing, if asked)."""
  height, width = int(batch["height"][k]), int(batch["width"][k])
  if resize["min_resize_value"] or resize["max_resize_value"]:
    return tuple(int(v) for v in resize_to_range_size(
        height, width, resize["min_resize_value"], resize["max_resize_value"], resize["resize_factor"],
        resize["keep_aspect_ratio"]).numpy())
  return height, width
