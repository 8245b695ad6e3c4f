"""deeplab_eval / deeplab_vis with default flags on images wider than 513: pictures, names, messages."""
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from deeplab_tf import EvalOptions, ModelOptions, build_deeplab, visualization
from deeplab_tf.bin import eval as eval_bin
from deeplab_tf.bin import eval_vis_messages
from deeplab_tf.bin import vis as vis_bin
from deeplab_tf.data.features import encode_example
from deeplab_tf.errors import UserError
from deeplab_tf.evaluation import inference
from deeplab_tf.evaluation.metrics import ConfusionMatrix
from deeplab_tf.model_io import save_model_options
from deeplab_tf.data.writer import encode_png

PHOTO = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample",
                     "JPEGImages", "2011_000006.jpg")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=3, output_stride=16, depth_multiplier=0.5)
NAMES = ["sky", "road", "car"]
# Two images named alike, 520 pixels wide (wider than the original's default crop of 513), and one small.
IMAGES = [("photos/wide.jpg", (0, 0, 21, 520)), ("other/wide.jpg", (100, 0, 21, 520)),
          ("third.jpg", (50, 60, 21, 30))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("pictures")
  photo = np.array(Image.open(PHOTO).convert("RGB").resize((520, 375)))
  rng = np.random.RandomState(1)
  examples = []
  with tf.io.TFRecordWriter(str(root / "val-00000-of-00001.tfrecord")) as writer:
    for name, (top, left, h, w) in IMAGES:
      image = photo[top:top + h, left:left + w]
      label = rng.randint(0, 3, (h, w)).astype(np.uint8)
      label[:2] = 255
      writer.write(encode_example(encode_png(image), encode_png(label), filename=name, height=h, width=w,
                                  image_format="png"))
      examples.append((image, label))
  (root / "tiny.json").write_text(json.dumps({
      "name": "tiny", "num_classes": 3, "ignore_label": 255, "splits_to_sizes": {"val": 3},
      "class_names": NAMES, "colormap": "pascal"}))
  model = build_deeplab(OPTIONS)
  save_model_options(str(root / "train"), OPTIONS)
  tf.train.Checkpoint(model=model).save(str(root / "train" / "ckpt"))
  flags.FLAGS.mark_as_parsed()
  predictions = [inference.predict_labels(model, image[None], EvalOptions())[0].numpy() for image, _ in examples]
  return root, examples, predictions


def _event_images(logdir):
  """{tag: (step, decoded uint8 image)} of the image summaries in `logdir`'s event files."""
  found = {}
  for event_file in tf.io.gfile.glob(os.path.join(logdir, "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      for value in event.summary.value:
        if value.metadata.plugin_data.plugin_name == "images":
          width, height, png = tf.make_ndarray(value.tensor)[:3]
          picture = tf.io.decode_png(png).numpy()
          assert picture.shape[:2] == (int(height), int(width))
          found[value.tag] = (event.step, picture)
  return found


def test_eval_with_default_flags_takes_wide_images_and_writes_pictures(setup):
  root, examples, predictions = setup
  logdir = root / "eval"
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), eval_logdir=str(logdir),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root), max_number_of_evaluations=1):
    eval_bin.main([])
  result = json.loads((logdir / "eval_ckpt-1.json").read_text())
  expected = ConfusionMatrix(3, 255)
  for (_, label), prediction in zip(examples, predictions):
    expected.update(label, prediction)
  np.testing.assert_array_equal(result["confusion_matrix"], expected.matrix)   # each image at its own size
  assert result["num_pixels"] == sum((h - 2) * w for _, (_, _, h, w) in IMAGES)

  # Charts beside the JSON and in TensorBoard at the checkpoint's step: the same pictures.
  events = _event_images(str(logdir))
  for tag in ("confusion_matrix", "class_iou"):
    picture = np.array(Image.open(logdir / f"{tag}_ckpt-1.png"))
    assert picture.ndim == 3 and picture.shape[0] > 200 and picture.shape[1] > 300
    assert events[tag][0] == 1
    np.testing.assert_array_equal(events[tag][1], picture)
  # They show this evaluation's matrix and IoUs (drawn from the known confusion matrix and its IoUs).
  drawn = visualization.confusion_matrix_image(expected.matrix, NAMES,
                                               title="ckpt-1 val: confusion matrix (rows sum to 100%)")
  np.testing.assert_array_equal(np.array(Image.open(logdir / "confusion_matrix_ckpt-1.png")), drawn)
  metrics = expected.result()
  drawn = visualization.class_iou_image(metrics.per_class_iou, NAMES, metrics.miou, "pascal",
                                        title="ckpt-1 val: per-class IoU")
  np.testing.assert_array_equal(np.array(Image.open(logdir / "class_iou_ckpt-1.png")), drawn)

  # Overlays of the first images (default 4, the split has 3), named after them; the second 'wide' gets
  # its index as a prefix. Each is overlay | ground truth | prediction above a legend.
  overlays = logdir / "overlays_ckpt-1"
  assert sorted(os.listdir(overlays)) == ["000001_wide.png", "third.png", "wide.png"]
  for stem, (image, label), prediction in zip(["wide", "000001_wide", "third"], examples, predictions):
    picture = np.array(Image.open(overlays / f"{stem}.png"))
    height, width = label.shape
    assert picture.shape[0] > height                                      # the legend below
    np.testing.assert_array_equal(picture[:height, :width], visualization.overlay(image, prediction, "pascal"))
    gap = visualization.PANEL_GAP
    np.testing.assert_array_equal(picture[:height, width + gap:2 * width + gap],      # ground truth
                                  visualization.label_to_color_image(label, "pascal"))
    np.testing.assert_array_equal(picture[:height, 2 * (width + gap):3 * width + 2 * gap],  # prediction
                                  visualization.label_to_color_image(prediction, "pascal"))
    assert events[f"overlays/{stem}"][0] == 1
    np.testing.assert_array_equal(events[f"overlays/{stem}"][1], picture)


def test_a_crop_smaller_than_an_image_is_one_line_naming_the_flag(setup):
  root, _, _ = setup
  common = dict(checkpoint_dir=str(root / "train"), dataset=str(root / "tiny.json"), dataset_dir=str(root))
  with flagsaver.flagsaver(eval_crop_size=["513", "513"], max_number_of_evaluations=1, **common):
    with pytest.raises(UserError, match=r"^--eval_crop_size=513,513: image photos/wide.jpg is 21x520 "
                                        r"\(height x width\), larger than the crop;") as raised:
      eval_bin.main([])
  assert "\n" not in str(raised.value)
  with flagsaver.flagsaver(vis_crop_size=["21", "513"], vis_logdir=str(root / "vis_crop"),
                           max_number_of_iterations=1, **common):
    with pytest.raises(UserError, match=r"^--vis_crop_size=21,513: image photos/wide.jpg is 21x520"):
      vis_bin.main([])
  with flagsaver.flagsaver(eval_batch_size=2, max_number_of_evaluations=1, **common):
    with pytest.raises(UserError, match=r"--eval_batch_size=2 needs --eval_crop_size=height,width"):
      eval_bin.main([])


def test_eval_and_vis_say_at_once_that_they_wait_for_checkpoints(setup, capsys):
  root, _, _ = setup
  (root / "empty").mkdir()  # no checkpoint yet: they wait (here 1 s, --eval_timeout_secs)
  common = dict(checkpoint_dir=str(root / "empty"), dataset=str(root / "tiny.json"), dataset_dir=str(root),
                eval_interval_secs=1, eval_timeout_secs=1)
  with flagsaver.flagsaver(**common):   # max_number_of_evaluations: the default, 0
    eval_bin.main([])
  err = capsys.readouterr().err
  message = next(line for line in err.splitlines() if line.startswith("deeplab_eval: waiting for checkpoints"))
  assert str(root / "empty") in message and "forever (--max_number_of_evaluations=0" in message
  assert "--max_number_of_evaluations=1" in message and "--checkpoint_path=" in message
  with flagsaver.flagsaver(vis_logdir=str(root / "vis_wait"), **common):
    vis_bin.main([])
  err = capsys.readouterr().err
  assert "deeplab_vis: waiting for checkpoints in " + str(root / "empty") in err
  assert "--max_number_of_iterations=1" in err
  with flagsaver.flagsaver(max_number_of_evaluations=1, **common):  # once: nothing to announce
    eval_vis_messages.announce_waiting("deeplab_eval", "max_number_of_evaluations", 1, "evaluate")
  with flagsaver.flagsaver(checkpoint_path=str(root / "train" / "ckpt-1"), **common):
    eval_vis_messages.announce_waiting("deeplab_eval", "max_number_of_evaluations", 0, "evaluate")
  assert capsys.readouterr().err == ""


def test_vis_with_default_flags_names_pictures_after_the_images(setup):
  root, examples, predictions = setup
  with flagsaver.flagsaver(checkpoint_path=str(root / "train" / "ckpt-1"), vis_logdir=str(root / "vis"),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root)):
    vis_bin.main([])
  results = root / "vis" / "segmentation_results"
  assert sorted(os.listdir(results)) == sorted(
      f"{stem}_{kind}.png" for stem in ("wide", "000001_wide", "third")
      for kind in ("image", "prediction", "overlay", "panel"))
  for stem, (image, label), prediction in zip(["wide", "000001_wide", "third"], examples, predictions):
    np.testing.assert_array_equal(visualization.read_label_png(str(results / f"{stem}_prediction.png")),
                                  prediction)
    panel = np.array(Image.open(results / f"{stem}_panel.png"))
    assert panel.shape[0] > label.shape[0]                               # a legend under the panels
    np.testing.assert_array_equal(panel[:label.shape[0], :label.shape[1]], image)


def test_picture_stem():
  used = set()
  assert [visualization.picture_stem(n, i, used) for i, n in enumerate(
      [b"a/b/2007_000033.jpg", "2007_000033.png", "", "we ird?.jpg"])] == [
          "2007_000033", "000001_2007_000033", "000002", "we_ird_"]
