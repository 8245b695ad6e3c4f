"""deeplab_predict on the shipped VOC photos: checkpoint and export, scales + flips, sliding windows."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from small_trained_model import train_small_model

from deeplab_tf import EvalOptions, ModelOptions, export, visualization
from deeplab_tf.bin import predict as predict_bin
from deeplab_tf.errors import UserError
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
    # predict runs the kernel policy's folded model (BatchNorms folded, 1x1 convolutions as matrix
    # products), the expectation the model itself: the same sums in another order, float32 noise of
    # about 1e-5 on probabilities near 0.5 (1.2e-5 measured), far below a label change.
    np.testing.assert_allclose(probabilities, expected_probabilities, atol=5e-5)


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
    with pytest.raises(UserError, match="--export_path runs the export as exported"):
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
    with pytest.raises(UserError, match=r"1 file\(s\) could not be read as images.*broken.png"):
      predict_bin.main([])
  assert os.listdir(os.path.join(out, "labels")) == ["good.png"]
  assert json.load(open(os.path.join(out, "summary.json")))["failed"] == [str(folder / "broken.png")]
  with pytest.raises(ValueError, match="--input=.*missing: no image file there"):
    predict_bin.list_images([str(tmp_path / "missing")])
  with pytest.raises(ValueError, match="--input=.*\\*.jpg: no image file there"):
    predict_bin.list_images([str(tmp_path / "*.jpg")])


# --- image decoding, output paths, class names, non-finite models, one-line errors ----------------------

def _jpeg_with_orientation(pixels, orientation, path):
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(pixels).save(path, "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied(setup, tmp_path):
  """A portrait photo as cameras store it: pixels sideways, EXIF orientation 6 ("rotate 90 clockwise")."""
  upright = setup["photos"][NAMES[0]]                      # 375 x 500
  folder = tmp_path / "in"
  folder.mkdir()
  _jpeg_with_orientation(np.ascontiguousarray(np.rot90(upright, 1)), 6, folder / "portrait.jpg")
  read = predict_bin.read_image(str(folder / "portrait.jpg"))
  assert read.shape == upright.shape
  assert np.abs(read.astype(np.int16) - upright).mean() < 3  # JPEG at quality 95: a grey level or two
  out = str(tmp_path / "out")
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[str(folder)], predict_logdir=out,
                           show_progress=False):
    predict_bin.main([])
  labels = visualization.read_label_png(os.path.join(out, "labels", "portrait.png"))
  assert labels.shape == upright.shape[:2]


def test_outputs_mirror_input_folders_and_never_overwrite(setup, tmp_path):
  """a/x.jpg, b/x.jpg, c/x.jpg: three outputs (the old de-duplication renamed once, then overwrote)."""
  for folder, name in zip("abc", NAMES):
    (tmp_path / folder).mkdir()
    shutil.copy(os.path.join(VOC, name + ".jpg"), tmp_path / folder / "x.jpg")
  shutil.copy(os.path.join(VOC, NAMES[0] + ".jpg"), tmp_path / "a" / "x.JPEG")  # same stem, same folder
  inputs = [str(tmp_path / f / "x.jpg") for f in "abc"] + [str(tmp_path / "a" / "x.JPEG")]
  assert predict_bin.output_names(inputs) == ["a/x_jpg", "b/x", "c/x", "a/x_jpeg"]
  out = str(tmp_path / "out")
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=inputs, predict_logdir=out,
                           show_progress=False):
    predict_bin.main([])
  for folder, name in zip("abc", NAMES):
    stem = "x_jpg" if folder == "a" else "x"
    labels = visualization.read_label_png(os.path.join(out, "labels", folder, stem + ".png"))
    assert labels.shape == setup["photos"][name].shape[:2]
    assert os.path.exists(os.path.join(out, "overlays", folder, stem + ".png"))
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["images"] == 4
  assert summary["outputs"][inputs[1]]["labels"] == os.path.join(out, "labels", "b", "x.png")


def test_an_output_that_is_an_input_is_refused(setup, tmp_path):
  """--predict_logdir the parent of an input folder named labels/: the outputs would overwrite the inputs."""
  (tmp_path / "labels").mkdir()
  Image.fromarray(setup["photos"][NAMES[1]]).save(tmp_path / "labels" / "x.png")
  before = (tmp_path / "labels" / "x.png").read_bytes()
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[str(tmp_path / "labels")],
                           predict_logdir=str(tmp_path), show_progress=False):
    with pytest.raises(UserError, match=r"the output .*labels/x.png would overwrite the input"):
      predict_bin.main([])
  assert (tmp_path / "labels" / "x.png").read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["labels"]


def test_summary_keys_by_class_name(setup, tmp_path):
  train = tmp_path / "train"
  shutil.copytree(setup["root"] / "train", train)
  (train / "dataset.json").write_text(json.dumps({"name": "bands", "num_classes": 3, "ignore_label": 255,
                                                  "class_names": ["dark", "middle", "bright"]}))
  out = str(tmp_path / "out")
  with flagsaver.flagsaver(checkpoint_dir=str(train), input=[os.path.join(VOC, NAMES[2] + ".jpg")],
                           predict_logdir=out, show_progress=False):
    predict_bin.main([])
  summary = json.load(open(os.path.join(out, "summary.json")))
  assert summary["class_names"] == ["dark", "middle", "bright"]
  assert set(summary["class_pixel_share"]) <= {"dark", "middle", "bright"} and len(summary["class_pixel_share"]) >= 2
  for entry in summary["classes"]:
    assert summary["class_names"][entry["id"]] == entry["name"]
    assert summary["class_pixel_share"][entry["name"]] == entry["pixel_share"]
  # An export carries its names (assets/labels.txt) to predict.
  named = export.export_saved_model(setup["model"], str(tmp_path / "named" / "1"), OPTIONS,
                                    class_names=["sky", "ground", "sun"])
  with flagsaver.flagsaver(export_path=named, input=[os.path.join(VOC, NAMES[2] + ".jpg")],
                           predict_logdir=str(tmp_path / "out2"), show_progress=False):
    predict_bin.main([])
  assert json.load(open(tmp_path / "out2" / "summary.json"))["class_names"] == ["sky", "ground", "sun"]


def test_non_finite_probabilities_stop_predict_naming_the_image(setup, tmp_path):
  """Finite weights whose logits overflow float32 (softmax of inf - inf: NaN), not "class 0: 100%"."""
  from deeplab_tf import build_deeplab
  broken = build_deeplab(OPTIONS)
  broken.set_weights(setup["model"].get_weights())
  kernel = broken.get_layer("logits.semantic").kernel
  kernel.assign(np.full(kernel.shape, 3e38, np.float32))
  save_model_options(str(tmp_path / "train"), OPTIONS)
  tf.train.Checkpoint(model=broken).save(str(tmp_path / "train" / "ckpt"))
  image = os.path.join(VOC, NAMES[1] + ".jpg")
  with flagsaver.flagsaver(checkpoint_dir=str(tmp_path / "train"), input=[image], predict_logdir=str(tmp_path / "out"),
                           show_progress=False):
    with pytest.raises(UserError, match=f"{NAMES[1]}.jpg: the model's probabilities are not finite"):
      predict_bin.main([])
  assert not os.path.exists(tmp_path / "out" / "labels")


def test_scales_flags_accept_both_spellings(setup, tmp_path):
  """--inference_scales (the original export_model.py's) works in predict as --eval_scales does."""
  out = str(tmp_path / "out")
  name = NAMES[1]
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[os.path.join(VOC, name + ".jpg")],
                           predict_logdir=out, save_probabilities=True, inference_scales=[0.75, 1.0],
                           show_progress=False):
    predict_bin.main([])
  expected = inference.predict_probabilities(setup["model"], setup["photos"][name][None],
                                             EvalOptions(eval_scales=(0.75, 1.0))).numpy()[0]
  np.testing.assert_allclose(np.load(os.path.join(out, "probabilities", name + ".npy")), expected, atol=1e-5)
  with flagsaver.flagsaver(checkpoint_dir=str(setup["root"] / "train"), input=[VOC], predict_logdir=out,
                           inference_scales=[0.75, 1.0], eval_scales=[0.5]):
    with pytest.raises(UserError, match="are the same flag; give one"):
      predict_bin.main([])


def test_a_user_error_is_one_line_without_traceback(tmp_path):
  for module, args, message in [
      ("deeplab_tf.bin.predict", [f"--input={tmp_path / 'missing'}", f"--predict_logdir={tmp_path}"],
       "error: --input=.*missing: no image file there"),
      ("deeplab_tf.bin.export_model", [f"--checkpoint_dir={tmp_path}"], "error: --export_path is required")]:
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert re.search(message, done.stderr), done.stderr[-2000:]
