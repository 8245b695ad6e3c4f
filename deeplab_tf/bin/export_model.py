"""Exports a checkpoint as a SavedModel for TF Serving (research/deeplab `export_model.py`'s flags).

  python -m deeplab_tf.bin.export_model --checkpoint_path=/train/ckpt-30000 --export_path=/export/1 \
      --inference_scales=1.0

The model's architecture comes from the `model_options.json` beside the checkpoint (or
--model_options_json). Signatures: see `deeplab_tf.export`.
"""

from __future__ import annotations

from absl import app, flags

from deeplab_tf.bin import eval_common
from deeplab_tf.export import export_saved_model
from deeplab_tf.options import EvalOptions

FLAGS = flags.FLAGS

flags.DEFINE_string("export_path", None, "Directory to write the SavedModel to (must not exist unless "
                    "--overwrite).")
flags.DEFINE_multi_float("inference_scales", [1.0], "Scales whose probabilities the export averages.")
flags.DEFINE_list("crop_size", [], "height,width images are padded to inside the export (mean pixel); "
                  "empty (default) runs each image at its own size.")


def main(argv):
  del argv
  if not FLAGS.export_path:
    raise ValueError("--export_path is required: the SavedModel directory to write.")
  model, model_options = eval_common.load_model_from_flags(eval_common.checkpoint_from_flags())
  eval_options = EvalOptions(eval_crop_size=eval_common.parse_crop_size(FLAGS.crop_size, "crop_size"),
                             eval_scales=tuple(FLAGS.inference_scales),
                             add_flipped_images=FLAGS.add_flipped_images)
  path = export_saved_model(model, FLAGS.export_path, model_options, eval_options, overwrite=FLAGS.overwrite)
  print(f"wrote {path}")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
