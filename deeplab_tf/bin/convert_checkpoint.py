"""Converts a research/deeplab TF1 checkpoint (model zoo) into a `.keras` model and a SavedModel.

  python -m deeplab_tf.bin.convert_checkpoint \
      --checkpoint_path=deeplabv3_pascal_train_aug_2018_01_04.tar.gz --output_dir=/models/voc \
      --model_variant=xception_65 --num_classes=21 --output_stride=16 \
      --atrous_rates=6 --atrous_rates=12 --atrous_rates=18 --decoder_output_stride=4

The model flags are research/deeplab's (`common.py`) with its defaults, and must describe the model the
checkpoint was trained with: the import is strict and lists every missing, unexpected or misshapen
variable otherwise. Writes `<output_dir>/model.keras`, `<output_dir>/saved_model/` and
`<output_dir>/model_options.json` (see `deeplab_tf.checkpoints.convert_tf1_checkpoint`).
"""

from __future__ import annotations

import tarfile
import zlib

from absl import app, flags

from deeplab_tf.bin import entry
from deeplab_tf.bin import model_flags
from deeplab_tf.checkpoints import convert_tf1_checkpoint
from deeplab_tf.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", None, "Folder to write model.keras, saved_model/ and "
                    "model_options.json to.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; everything is given by flags.")
  if not FLAGS.checkpoint_path:
    raise app.UsageError("--checkpoint_path is required: the TF1 checkpoint (prefix, folder or .tar.gz).")
  if not FLAGS.output_dir:
    raise app.UsageError("--output_dir is required: where model.keras and saved_model/ go.")
  try:
    result = convert_tf1_checkpoint(
        FLAGS.checkpoint_path, model_flags.model_options_from_flags(), FLAGS.output_dir,
        initialize_last_layer=FLAGS.initialize_last_layer,
        last_layers_contain_logits_only=FLAGS.last_layers_contain_logits_only,
        overwrite=FLAGS.overwrite)
  except (tarfile.TarError, EOFError, zlib.error) as e:
    # A truncated download ends the gzip stream early (EOFError); another file is no tar at all.
    raise UserError(f"--checkpoint_path {FLAGS.checkpoint_path} is not a readable model-zoo archive "
                    f"({type(e).__name__}: {e}): it is truncated or not a .tar.gz; download it again.") from e
  except (FileNotFoundError, FileExistsError) as e:  # checkpoints.py names the path and the fix
    raise UserError(str(e)) from e
  print(f"{result.report.checkpoint}: assigned {result.report.assigned} weights, skipped "
        f"{len(result.report.skipped_model)} model weights and {len(result.report.skipped_checkpoint)} "
        "checkpoint variables")
  print(f"wrote {result.keras_path}, {result.saved_model_dir}, {result.model_options_path}")


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
