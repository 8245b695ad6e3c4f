"""TFLite export (`deeplab_export_model --format=tflite`) run with the LiteRT interpreter (ai-edge-litert).

The model is a small MobileNetV2 DeepLab (depth multiplier 0.5, 65x65 input) trained for 48 steps on
crops of the shipped VOC photos (tests/small_trained_model.py), so that its logits have the margins of
a trained network; a randomly initialised network's near-ties would make any agreement figure
meaningless. The figures on a demo-like model trained on the real nuclei tiles are
measured by benchmarks/tflite.py (benchmarks/README.md).
"""
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from absl.testing import flagsaver
from ai_edge_litert.interpreter import Interpreter

from small_trained_model import train_small_model, voc_crops

from deeplab_tf import ModelOptions
from deeplab_tf import export
from deeplab_tf.bin import export_model as export_bin
from deeplab_tf.data.features import encode_example
from deeplab_tf.model_io import save_model_options

OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=2, output_stride=16, depth_multiplier=0.5)
SIZE = (65, 65)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  root = tmp_path_factory.mktemp("tflite")
  model, images, labels = train_small_model(OPTIONS, SIZE)
  save_model_options(str(root / "train"), OPTIONS)
  tf.train.Checkpoint(model=model).save(str(root / "train" / "ckpt"))
  # Calibration images for int8, as TFRecords (the train split); held-out crops for the figures.
  with tf.io.TFRecordWriter(str(root / "train-00000-of-00001.tfrecord")) as writer:
    for i, (image, label) in enumerate(zip(images[:16], labels[:16])):
      writer.write(encode_example(tf.io.encode_png(image).numpy(),
                                  tf.io.encode_png(label[..., None].astype(np.uint8)).numpy(), filename=f"{i}.png",
                                  height=SIZE[0], width=SIZE[1], image_format="png"))
  held_out, _ = voc_crops(12, SIZE, OPTIONS.num_classes, seed=1)
  logits = model.predict(held_out.astype(np.float32), verbose=0)
  # The trained model predicts both classes (an all-one-class model would agree trivially).
  assert 0.1 < (logits.argmax(-1) == 1).mean() < 0.9
  flags.FLAGS.mark_as_parsed()
  return dict(root=root, model=model, held_out=held_out, logits=logits)


def _run_tflite(path, images):
  interpreter = Interpreter(model_path=path)
  runner = interpreter.get_signature_runner()
  details = interpreter.get_input_details()[0]
  assert details["dtype"] == np.uint8 and list(details["shape"]) == [1, *SIZE, 3]
  return np.concatenate([runner(image_tensor=image[np.newaxis])["semantic_predictions"] for image in images])


# Thresholds for this barely trained test model (its logits margins are small: 15% of its pixels have a
# top-2 logit margin under 0.5): overall agreement, and agreement where the Keras top-2 logit margin
# exceeds what each mode's rounding can move a logit by. Float32 differs from Keras by summation order
# only (~1e-5), float16 weights by ~2^-11 relative, int8 weights / activations by ~1/255 of each
# tensor's range. Measured here: 100%, 99.95%, 99.68%, 98.19% overall; 99.99% for int8 where the
# margin exceeds 0.3. The figures (float >= 99.9%, int8 >= 98%) on a demo-like model trained on
# the real nuclei tiles are benchmarks/tflite.py's (benchmarks/README.md).
AGREEMENT = {  # mode: (overall minimum, logit margin, minimum where the margin exceeds it)
    "none": (0.999, 1e-3, 1.0),
    "float16": (0.998, 0.05, 0.9995),
    "dynamic_range": (0.98, 0.3, 0.995),
    "int8": (0.95, 0.3, 0.99),
}


def _check_agreement(trained, labels, quantize):
  expected = trained["logits"].argmax(-1)
  top2 = np.sort(trained["logits"], axis=-1)[..., -2:]
  margin = top2[..., 1] - top2[..., 0]
  overall, bound, clear_minimum = AGREEMENT[quantize]
  equal = labels == expected
  print(f"TFLite {quantize}: {equal.mean():.4%} of {labels.size} held-out pixels equal the Keras labels, "
        f"{equal[margin > bound].mean():.4%} where the Keras logit margin exceeds {bound}")
  assert equal.mean() >= overall, equal.mean()
  assert equal[margin > bound].mean() >= clear_minimum, equal[margin > bound].mean()
  # Disagreements, if any, are near-ties of the float model, not systematic errors.
  if not equal.all():
    assert np.median(margin[~equal]) < np.median(margin), "flips of confident pixels"


@pytest.mark.parametrize("quantize", ["none", "float16", "dynamic_range"])
def test_float_and_weight_quantized_tflite_agree_with_keras(trained, tmp_path, quantize):
  path = export.export_tflite(trained["model"], str(tmp_path / f"{quantize}.tflite"), SIZE, quantize=quantize)
  assert sorted(os.listdir(tmp_path)) == [f"{quantize}.tflite"]  # no temporary left behind
  labels = _run_tflite(path, trained["held_out"])
  assert labels.dtype == np.int32 and labels.shape == (12, *SIZE)
  _check_agreement(trained, labels, quantize)


def test_int8_tflite_through_the_binary_calibrated_on_tfrecords(trained, tmp_path):
  root = trained["root"]
  path = str(tmp_path / "int8.tflite")
  with flagsaver.flagsaver(checkpoint_dir=str(root / "train"), format="tflite", quantize="int8",
                           crop_size=["65", "65"], dataset_dir=str(root), calibration_split="train",
                           num_calibration_images=16, export_path=path):
    export_bin.main([])
  interpreter = Interpreter(model_path=path)
  # Full integer: the only float32 tensor is the uint8 image cast to float (quantised at once to
  # int8); every weight and activation after it is int8.
  details = interpreter.get_tensor_details()
  floats = [t for t in details if t["dtype"] == np.float32]
  assert [list(t["shape"]) for t in floats] == [[1, *SIZE, 3]], [t["name"] for t in floats]
  assert sum(t["dtype"] == np.int8 and len(t["shape"]) == 4 for t in details) > 50
  labels = _run_tflite(path, trained["held_out"])
  _check_agreement(trained, labels, "int8")


def test_tflite_flag_and_argument_errors(trained, tmp_path):
  model = trained["model"]
  with pytest.raises(ValueError, match="quantize='int4': expected one of none, float16, dynamic_range, int8"):
    export.export_tflite(model, str(tmp_path / "m.tflite"), SIZE, quantize="int4")
  with pytest.raises(ValueError, match="quantize='int8' needs representative images"):
    export.export_tflite(model, str(tmp_path / "m.tflite"), SIZE, quantize="int8")
  with pytest.raises(ValueError, match="no TFRecord file matches .*val-\\*.tfrecord"):
    export.representative_images(str(tmp_path / "val-*.tfrecord"), SIZE, 4, (127.5,) * 3)
  (tmp_path / "taken.tflite").write_bytes(b"x")
  with pytest.raises(FileExistsError, match="taken.tflite exists"):
    export.export_tflite(model, str(tmp_path / "taken.tflite"), SIZE)
  with flagsaver.flagsaver(checkpoint_dir=str(trained["root"] / "train"), format="tflite",
                           add_flipped_images=True, export_path=str(tmp_path / "f.tflite")):
    with pytest.raises(ValueError, match="--format=tflite runs one scale without flipping"):
      export_bin.main([])


def test_tflite_written_to_ram_filesystem(trained):
  path = export.export_tflite(trained["model"], "ram://tflite_test/model.tflite", SIZE)
  with tf.io.gfile.GFile(path, "rb") as f:
    interpreter = Interpreter(model_content=f.read())
  runner = interpreter.get_signature_runner()
  labels = runner(image_tensor=trained["held_out"][:1])["semantic_predictions"]
  assert labels.shape == (1, *SIZE)
  assert tf.io.gfile.listdir("ram://tflite_test") == ["model.tflite"]


def test_tflite_tensors_are_named_and_the_export_is_quiet(trained, tmp_path, capfd):
  capfd.readouterr()
  path = export.export_tflite(trained["model"], str(tmp_path / "m.tflite"), SIZE)
  out, err = capfd.readouterr()
  printed = (out + err).strip().splitlines()
  # Keras' from_keras_model printed its "Saved artifact ... Captures:" dump, one line per variable.
  assert not any("Captures" in line or "tf.resource" in line for line in printed), printed[:5]
  assert len(printed) < 10, printed
  interpreter = Interpreter(model_path=path)
  assert [d["name"] for d in interpreter.get_input_details()] == ["image_tensor"]
  assert [d["name"] for d in interpreter.get_output_details()] == ["semantic_predictions"]
  assert interpreter.get_signature_list() == {
      "serving_default": {"inputs": ["image_tensor"], "outputs": ["semantic_predictions"]}}


def test_calibration_sees_whole_images_fitted_as_inference_does(tmp_path):
  """A 130x98 record for a 65x65 input: shrunk to 65x49 and padded (it was cut to its top-left 65x65)."""
  image = np.zeros((130, 98, 3), np.uint8)
  image[65:] = 255  # the bottom half white: a top-left crop would see black only
  with tf.io.TFRecordWriter(str(tmp_path / "train-00000-of-00001.tfrecord")) as writer:
    writer.write(encode_example(tf.io.encode_png(image).numpy(), tf.io.encode_png(image[..., :1] * 0).numpy(),
                                filename="x.png", height=130, width=98, image_format="png"))
  generate = export.representative_images(str(tmp_path / "train-*.tfrecord"), SIZE, 4, (127.5,) * 3)
  (calibration,), = list(generate())
  fitted, (height, width) = export.fit_to_tflite_input(image, SIZE, (127.5,) * 3)
  assert (height, width) == (65, 49) and calibration.shape == (1, *SIZE, 3) and calibration.dtype == np.uint8
  np.testing.assert_array_equal(calibration, fitted)
  assert (calibration[0, 40:, :49] == 255).all() and (calibration[0, :25, :49] == 0).all()  # the whole image
  assert (calibration[0, :, 49:] == 128).all()  # padding: the mean pixel, rounded
