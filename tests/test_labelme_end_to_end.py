"""A newcomer's path, end to end: a labelme export in VOC layout (JPEGImages/, SegmentationClassPNG/,
class_names.txt with 3 classes, no split lists) converts, trains, evaluates and serves with no
hand-written file and no class-count flag; the three class names travel to the served model.

Each step is the binary a user runs, in its own process, as they would type it.
"""
import io
import json
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw

from deeplab_tf.data import colormaps
from deeplab_tf.export import LABELS_PNG_OUTPUT, read_exported_class_names

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("_background_", "cat", "dog")


def _labelme_export(root, count=4, size=(40, 52)):
  """Photos of a grey background with a bright disc (cat) and a dark box (dog), their palette PNGs."""
  rng = np.random.default_rng(0)
  for folder in ("JPEGImages", "SegmentationClassPNG"):
    os.makedirs(os.path.join(root, folder))
  for i in range(count):
    image = Image.fromarray(rng.integers(90, 140, size + (3,), dtype=np.uint8))
    label = Image.new("P", (size[1], size[0]), 0)
    label.putpalette(colormaps.get_colormap("pascal").ravel().tolist())
    for target, fill, value in ((image, (240, 220, 200), None), (label, None, 1)):
      ImageDraw.Draw(target).ellipse([4 + i, 4, 24 + i, 22], fill=fill if value is None else value)
    for target, fill, value in ((image, (30, 30, 60), None), (label, None, 2)):
      ImageDraw.Draw(target).rectangle([30, 20 + i, 48, 36], fill=fill if value is None else value)
    image.save(os.path.join(root, "JPEGImages", f"photo_{i}.jpg"), quality=95)
    label.save(os.path.join(root, "SegmentationClassPNG", f"photo_{i}.png"))
  with open(os.path.join(root, "class_names.txt"), "w") as f:
    f.write("\n".join(NAMES))  # labelme writes no final newline


def _run(module, *args):
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="2")
  result = subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=900, cwd=ROOT)
  assert result.returncode == 0, f"{module}: {result.stderr[-4000:]}"
  return result


def test_a_labelme_tree_converts_trains_evaluates_and_serves_with_its_classes(tmp_path):
  export, data = str(tmp_path / "labelme"), str(tmp_path / "data")
  train_dir, eval_dir, serving = (str(tmp_path / d) for d in ("train", "eval", "serving"))
  _labelme_export(export)
  _run("datasets.build_voc2012_data", f"--image_folder={export}/JPEGImages",
       f"--semantic_segmentation_folder={export}/SegmentationClassPNG",
       f"--list_folder={export}/ImageSets/Segmentation", f"--output_dir={data}",
       "--val_fraction=0.5")
  # No --dataset, no --num_classes: the descriptor beside the shards says 3 classes.
  _run("deeplab_tf.bin.train", f"--train_logdir={train_dir}", f"--dataset_dir={data}",
       "--model_variant=mobilenet_v2", "--depth_multiplier=0.5", "--train_crop_size=33,33",
       "--train_batch_size=2", "--training_number_of_steps=2", "--seed=1")
  with open(os.path.join(train_dir, "model_options.json")) as f:
    assert json.load(f)["num_classes"] == 3
  _run("deeplab_tf.bin.eval", f"--checkpoint_dir={train_dir}", f"--dataset_dir={data}",
       "--eval_split=val", f"--eval_logdir={eval_dir}", "--max_number_of_evaluations=1")
  results = [name for name in os.listdir(eval_dir) if name.startswith("eval_") and name.endswith(".json")]
  with open(os.path.join(eval_dir, results[0])) as f:
    assert sorted(json.load(f)["per_class_iou"]) == sorted(NAMES)
  _run("deeplab_tf.bin.export_model", f"--checkpoint_dir={train_dir}", f"--export_path={serving}")
  version = os.path.join(serving, "1")
  assert read_exported_class_names(version) == NAMES
  with open(os.path.join(export, "JPEGImages", "photo_0.jpg"), "rb") as f:
    jpeg = f.read()
  answer = tf.saved_model.load(version).signatures["serving_default"](
      image_bytes=tf.constant([jpeg]))
  labels = np.array(Image.open(io.BytesIO(answer[LABELS_PNG_OUTPUT].numpy()[0])))
  assert labels.shape == (40, 52) and labels.max() < 3
