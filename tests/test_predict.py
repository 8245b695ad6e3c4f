"""deeplab_predict on the shipped VOC photos: checkpoint and export, scales + flips, sliding windows."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from small_trained_model import train_small_model

from deeplab_tf import EvalOptions, ModelOptions, export, visualization
from deeplab_tf.bin import predict as predict_bin
from deeplab_tf.evaluation import inference
from deeplab_tf.model_io import save_model_options

VOC = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "voc2012_sample", "JPEGImages")
NAMES = ("2011_000003", "2011_000006", "2011_000025")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=3, output_stride=16, depth_multiplier=0.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  root = tmp_path_factory.mktemp("predict")
  model, _, _ = train_small_model(OPTIONS)  # a random network ties every pixel
  save_model_options(str(root / "train"), OPTIONS)
  tf.train.Checkpoint(model=model).save(str(root / "train" / "ckpt"))
  export.export_saved_model(model, str(root / "models" / "deeplab" / "1"), OPTIONS)
  flags.FLAGS.mark_as_parsed()
  photos = {name: np.asarray(Image.open(os.path.join(VOC, name + ".jpg")).convert("RGB")) for name in NAMES}
  return dict(root=root, model=model, photos=photos)


def _clear(probabilities, bound=1e-4):
  top2 = np.sort(probabilities, axis=-1)[..., -2:]
  return top2[..., 1] - top2[..., 0] > bound


def _check_outputs(out, name, image, expected_probabilities, probabilities_written=True):
  labels = visualization.read_label_png(os.path.join(out, "labels", name + ".png"))
  assert labels.shape == image.shape[:2]
  clear = _clear(expected_probabilities)
  assert clear.mean() > 0.95
  np.testing.assert_array_equal(labels[clear], expected_probabilities.argmax(-1)[clear])
  overlay = np.asarray(Image.open(os.path.join(out, "overlays", name + ".png")))
  np.testing.assert_array_equal(overlay, visualization.overlay(image, labels, "pascal", 0.5))
  if probabilities_written:
    probabilities = np.load(os.path.join(out, "probabilities", name + ".npy"))
    assert probabilities.dtype == np.float32 and probabilities.shape == (*image.shape[:2], 3)
    # Same graph, compiled vs eager: float32 noise only.
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=1e-5)


def test_predict_folder_with_a_checkpoint(setup, tmp_path, capsys):
  out = str(tmp_path / "out")
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[VOC], predict_logdir=out,
                           save_probabilities=True, show_progress=False):
    predict_bin.main([])
  for name, image in setup["photos"].items():
    expected = inference.predict_probabilities(setup["model"], image[None]).numpy()[0]
    _check_outputs(out, name, image, expected)
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["images"] == 3 and summary["failed"] == []
  assert summary["pixels"] == sum(image.shape[0] * image.shape[1] for image in setup["photos"].values())
  assert abs(sum(summary["class_pixel_share"].values()) - 1.0) < 1e-9
  assert len(summary["class_pixel_share"]) >= 2  # a model that predicts more than one class
  assert "3 image(s)" in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(out, "labels"))) == [n + ".png" for n in NAMES]  # no temporaries


def test_predict_glob_with_scales_flips_and_sliding_windows(setup, tmp_path):
  out = str(tmp_path / "out")
  name = NAMES[1]
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"),
                           input=[os.path.join(VOC, "*0006.jpg")], predict_logdir=out, save_probabilities=True,
                           eval_scales=[0.75, 1.0], add_flipped_images=True, predict_crop_size=["161", "161"],
                           sliding_window=True, show_progress=False):
    predict_bin.main([])
  image = setup["photos"][name]
  eval_options = EvalOptions(eval_crop_size=(161, 161), eval_scales=(0.75, 1.0), add_flipped_images=True,
                             sliding_window=True)
  expected = inference.predict_probabilities(setup["model"], image[None], eval_options).numpy()[0]
  _check_outputs(out, name, image, expected)
  assert os.listdir(os.path.join(out, "labels")) == [name + ".png"]


def test_predict_with_an_export_base_path(setup, tmp_path):
  out = str(tmp_path / "out")
  name = NAMES[0]
  with flagsaver.flagsaver(export_dir=str(setup["root"] / "models" / "deeplab"),
                           input=[os.path.join(VOC, name + ".jpg")], predict_logdir=out, show_progress=False):
    predict_bin.main([])
  image = setup["photos"][name]
  expected = inference.predict_probabilities(setup["model"], image[None]).numpy()[0]
  _check_outputs(out, name, image, expected, probabilities_written=False)
  assert not os.path.exists(os.path.join(out, "probabilities"))
  with flagsaver.flagsaver(export_dir=str(setup["root"] / "models" / "deeplab"), input=[VOC],
                           predict_logdir=out, add_flipped_images=True):
    with pytest.raises(ValueError, match="--export_dir runs the export as exported"):
      predict_bin.main([])


def test_unreadable_files_are_reported_after_the_rest_is_written(setup, tmp_path):
  folder = tmp_path / "in"
  folder.mkdir()
  shutil.copy(os.path.join(VOC, NAMES[2] + ".jpg"), folder / "good.jpg")
  (folder / "broken.png").write_bytes(b"not a png")
  (folder / "notes.txt").write_text("not an image, not taken from a folder")
  out = str(tmp_path / "out")
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[str(folder)], predict_logdir=out,
                           show_progress=False):
    with pytest.raises(RuntimeError, match=r"1 file\(s\) could not be read as images.*broken.png"):
      predict_bin.main([])
  assert os.listdir(os.path.join(out, "labels")) == ["good.png"]
  assert json.load(open(os.path.join(out, "summary.json")))["failed"] == [str(folder / "broken.png")]
  with pytest.raises(ValueError, match="--input=.*missing: no image file there"):
    predict_bin.list_images([str(tmp_path / "missing")])
  with pytest.raises(ValueError, match="--input=.*\\*.jpg: no image file there"):
    predict_bin.list_images([str(tmp_path / "*.jpg")])
