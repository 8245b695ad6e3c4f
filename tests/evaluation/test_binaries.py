"""bin/eval and bin/vis end to end, in-process, on two real photo crops written as TFRecords."""
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
from deeplab_tf.bin import eval_common
from deeplab_tf.bin import vis as vis_bin
from deeplab_tf.data import preprocess
from deeplab_tf.data.features import encode_example
from deeplab_tf.evaluation import inference
from deeplab_tf.evaluation.metrics import ConfusionMatrix
from deeplab_tf.image_ops import resize_nearest_align_corners
from deeplab_tf.model_io import save_model_options
from deeplab_tf.data.writer import encode_png
from ram_fs import copy_to_ram

PHOTO = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample",
                     "JPEGImages", "2011_000006.jpg")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=3, output_stride=16, depth_multiplier=0.5)
CROP = (33, 41)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("bin")
  photo = np.array(Image.open(PHOTO).convert("RGB"))
  rng = np.random.RandomState(0)
  examples = []
  with tf.io.TFRecordWriter(str(root / "val-00000-of-00001.tfrecord")) as writer:
    for name, (top, left, h, w) in [("first", (80, 120, 33, 41)), ("second", (10, 30, 29, 33))]:
      image = photo[top:top + h, left:left + w]
      label = rng.randint(0, 3, (h, w)).astype(np.uint8)
      label[:3] = 255
      writer.write(encode_example(encode_png(image), encode_png(label), filename=name + ".jpg", height=h, width=w,
                                  image_format="png"))
      examples.append((name, image, label))
  (root / "tiny.json").write_text(json.dumps({
      "name": "tiny", "num_classes": 3, "ignore_label": 255, "splits_to_sizes": {"val": 2},
      "class_names": ["a", "b", "c"], "colormap": "pascal"}))
  model = build_deeplab(OPTIONS)
  save_model_options(str(root / "train"), OPTIONS)
  tf.train.Checkpoint(model=model).save(str(root / "train" / "ckpt"))
  flags.FLAGS.mark_as_parsed()
  return root, model, examples


def test_eval_binary_writes_the_split_metrics(setup):
  root, model, examples = setup
  expected = ConfusionMatrix(3, 255)
  for _, image, label in examples:
    expected.update(label, inference.predict_labels(model, image[None], EvalOptions(eval_crop_size=CROP)))
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), eval_logdir=str(root / "eval"),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root), eval_split="val",
                           eval_crop_size=["33", "41"], max_number_of_evaluations=1):
    eval_bin.main([])
  result = json.loads((root / "eval" / "eval_ckpt-1.json").read_text())
  assert result["step"] == 1 and result["class_names"] == ["a", "b", "c"]
  assert result["num_pixels"] == (33 - 3) * 41 + (29 - 3) * 33   # every pixel but the ignored rows
  np.testing.assert_array_equal(result["confusion_matrix"], expected.matrix)
  assert result["miou"] == pytest.approx(expected.result().miou)


def test_eval_binary_rejects_a_bad_crop_flag(setup):
  root, _, _ = setup
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), dataset=str(root / "tiny.json"),
                           dataset_dir=str(root), eval_crop_size=["33"]):
    with pytest.raises(ValueError, match="--eval_crop_size=33: expected two positive integers"):
      eval_bin.main([])


def test_vis_binary_writes_images_predictions_and_raw_ids(setup):
  root, model, examples = setup
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), vis_logdir=str(root / "vis"),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root), vis_split="val",
                           vis_crop_size=["33", "41"], also_save_raw_predictions=True,
                           max_number_of_iterations=1):
    vis_bin.main([])
  results = root / "vis" / "segmentation_results"
  assert sorted(os.listdir(results)) == sorted(   # named after the images (first.jpg, second.jpg)
      f"{name}_{kind}.png" for name in ("first", "second") for kind in ("image", "prediction", "overlay", "panel"))
  for i, (name, image, _) in enumerate(examples):
    np.testing.assert_array_equal(np.array(Image.open(results / f"{name}_image.png")), image)
    expected = inference.predict_labels(model, image[None], EvalOptions(eval_crop_size=CROP))[0].numpy()
    np.testing.assert_array_equal(visualization.read_label_png(str(results / f"{name}_prediction.png")),
                                  expected)
    np.testing.assert_array_equal(
        visualization.read_label_png(str(root / "vis" / "raw_segmentation_results" / f"{name}.png")), expected)


def test_vis_resizes_to_range_and_writes_cityscapes_label_ids(setup):
  """--min/max_resize_value as the original's vis.py: the model sees the resized image, the predictions
  are resized back to the image's size (nearest, align_corners), and for Cityscapes the raw predictions
  are label ids (train ids 0, 1, 2 -> 7, 8, 11)."""
  root, model, examples = setup
  with flagsaver.flagsaver(checkpoint_path=str(root / "train" / "ckpt-1"), vis_logdir=str(root / "vis_cs"),
                           dataset="cityscapes", dataset_dir=str(root), vis_split="val", vis_crop_size=[],
                           also_save_raw_predictions=True, min_resize_value=20, max_resize_value=30):
    vis_bin.main([])
  results = root / "vis_cs" / "segmentation_results"
  # 33x41 -> 20x24 (41 * 20/33 = 24.8); 29x33 -> 20x22 (33 * 20/29 = 22.8)
  for i, ((name, image, _), resized) in enumerate(zip(examples, [(20, 24), (20, 22)])):
    assert np.array(Image.open(results / f"{name}_image.png")).shape == resized + (3,)
    small, _ = preprocess.resize_to_range(tf.constant(image, tf.float32), None, 20, 30)
    expected = inference.predict_labels(model, small[None], EvalOptions())
    expected = resize_nearest_align_corners(expected[..., None], image.shape[:2])[0, ..., 0].numpy()
    np.testing.assert_array_equal(visualization.read_label_png(str(results / f"{name}_prediction.png")),
                                  expected)
    raw = visualization.read_label_png(str(root / "vis_cs" / "raw_segmentation_results" / f"{name}.png"))
    np.testing.assert_array_equal(raw, np.array([7, 8, 11])[expected])


def test_eval_model_flags_given_explicitly_override_the_saved_options(setup):
  root, _, _ = setup
  with flagsaver.flagsaver():
    flags.FLAGS(["eval", "--output_stride=8"])  # given on the command line: present
    _, options = eval_common.load_model_from_flags(str(root / "train"))
  assert options == OPTIONS.replace(output_stride=8)
  assert eval_common.load_model_from_flags(str(root / "train"))[1] == OPTIONS


def test_eval_and_vis_on_the_ram_filesystem(setup, tmp_path, monkeypatch):
  # Data, checkpoint and outputs all on TF's in-memory filesystem: what a gs:// user relies on. Nothing
  # may land on the local disk (os.makedirs("ram://x") would make a local folder "ram:").
  root, model, examples = setup
  ram = copy_to_ram(root, "ram://binaries_test",
                    keep=lambda path: path.startswith("train/") or path.endswith((".tfrecord", ".json")))
  monkeypatch.chdir(tmp_path)
  common = dict(checkpoint_dir=ram + "/train", dataset=ram + "/tiny.json", dataset_dir=ram)
  with flagsaver.flagsaver(eval_logdir=ram + "/eval", eval_split="val", eval_crop_size=["33", "41"],
                           max_number_of_evaluations=1, **common):
    eval_bin.main([])
  with tf.io.gfile.GFile(ram + "/eval/eval_ckpt-1.json") as f:
    result = json.load(f)
  assert result["checkpoint"] == ram + "/train/ckpt-1"
  assert result["num_pixels"] == (33 - 3) * 41 + (29 - 3) * 33
  assert any(name.startswith("events.out.tfevents") for name in tf.io.gfile.listdir(ram + "/eval"))
  with flagsaver.flagsaver(vis_logdir=ram + "/vis", vis_split="val", vis_crop_size=["33", "41"],
                           also_save_raw_predictions=True, max_number_of_iterations=1, **common):
    vis_bin.main([])
  assert len(tf.io.gfile.listdir(ram + "/vis/segmentation_results")) == 8
  expected = inference.predict_labels(model, examples[1][1][None], EvalOptions(eval_crop_size=CROP))[0]
  np.testing.assert_array_equal(
      visualization.read_label_png(ram + "/vis/raw_segmentation_results/second.png"), expected.numpy())
  assert os.listdir(tmp_path) == []


def test_eval_and_vis_binaries_apply_the_dense_crf(setup):
  pytest.importorskip("pydensecrf.densecrf", reason="the optional extra deeplab_tf[crf] (pydensecrf2)")
  from deeplab_tf.evaluation import crf
  root, model, examples = setup
  options = crf.CrfOptions(iterations=5, bi_xy_std=20.0)
  expected = ConfusionMatrix(3, 255)
  predictions = []
  for _, image, label in examples:
    probabilities = inference.predict_probabilities(model, image[None], EvalOptions(eval_crop_size=CROP))
    predictions.append(crf.dense_crf_labels(image[None], probabilities, options)[0])
    expected.update(label, predictions[-1][None])
  crf_flags = dict(crf_iterations=5, crf_bi_xy_std=20.0, dataset=str(root / "tiny.json"),
                   dataset_dir=str(root), checkpoint_dir=str(root / "train"))
  with flagsaver.flagsaver(eval_logdir=str(root / "eval_crf"), eval_split="val",
                           eval_crop_size=["33", "41"], max_number_of_evaluations=1, **crf_flags):
    eval_bin.main([])
  result = json.loads((root / "eval_crf" / "eval_ckpt-1.json").read_text())
  assert result["crf_options"] == options.to_dict()
  np.testing.assert_array_equal(result["confusion_matrix"], expected.matrix)
  with flagsaver.flagsaver(vis_logdir=str(root / "vis_crf"), vis_split="val", vis_crop_size=["33", "41"],
                           max_number_of_iterations=1, **crf_flags):
    vis_bin.main([])
  for (name, _, _), prediction in zip(examples, predictions):
    np.testing.assert_array_equal(visualization.read_label_png(
        str(root / "vis_crf" / "segmentation_results" / f"{name}_prediction.png")), prediction)


def test_vis_in_batches_writes_the_same_pictures(setup):
  root, model, examples = setup
  with flagsaver.flagsaver(checkpoint_path=str(root / "train" / "ckpt-1"), vis_logdir=str(root / "vis_b2"),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root), vis_split="val",
                           vis_crop_size=["33", "41"], vis_batch_size=2, colormap_type="cityscapes"):
    vis_bin.main([])
  results = root / "vis_b2" / "segmentation_results"
  for name, image, _ in examples:
    expected = inference.predict_labels(model, image[None], EvalOptions(eval_crop_size=CROP))[0].numpy()
    np.testing.assert_array_equal(visualization.read_label_png(str(results / f"{name}_prediction.png")),
                                  expected)
    palette = np.array(Image.open(results / f"{name}_prediction.png").getpalette()[:6]).reshape(2, 3)
    np.testing.assert_array_equal(palette, [[128, 64, 128], [244, 35, 232]])  # Cityscapes road, sidewalk


def test_eval_binary_predicts_in_mixed_bfloat16(setup, monkeypatch):
  """--mixed_precision=mixed_bfloat16 builds the network with bfloat16 activations, float32 weights."""
  root, model, examples = setup
  from deeplab_tf import model_io  # pylint: disable=import-outside-toplevel
  loaded = []
  load_model = model_io.load_model
  monkeypatch.setattr(model_io, "load_model", lambda *a, **k: loaded.append(load_model(*a, **k)) or loaded[-1])
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), eval_logdir=str(root / "eval_bf16"),
                           dataset=str(root / "tiny.json"), dataset_dir=str(root), eval_split="val",
                           eval_crop_size=["33", "41"], max_number_of_evaluations=1,
                           mixed_precision="mixed_bfloat16"):
    eval_bin.main([])
  bf16_model = loaded[0][0]
  conv = bf16_model.get_layer("MobilenetV2.Conv")
  assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
  np.testing.assert_array_equal(conv.kernel.numpy(), model.get_layer("MobilenetV2.Conv").kernel.numpy())
  result = json.loads((root / "eval_bf16" / "eval_ckpt-1.json").read_text())
  assert result["num_pixels"] == (33 - 3) * 41 + (29 - 3) * 33
  # The predictions run in bfloat16 and come back as float32 probabilities. (Their agreement with
  # float32 needs a trained model's margins: benchmarks/bf16_agreement.py, 99.22% on the demo model.)
  image = examples[0][1][None]
  probabilities = inference.predict_probabilities(bf16_model, image, EvalOptions(eval_crop_size=CROP))
  assert probabilities.dtype == tf.float32 and tuple(probabilities.shape) == image.shape[:3] + (3,)
  network = inference.low_resolution_logits_model(bf16_model)
  graph = inference.compiled_network(network).get_concrete_function(tf.TensorSpec((1, 33, 41, 3))).graph
  assert any(op.type == "Conv2D" and op.outputs[0].dtype == tf.bfloat16 for op in graph.get_operations())
