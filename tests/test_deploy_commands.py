"""README's "from a model-zoo tarball to a served model": convert, predict, export, each its own process,
on a MobileNetV2 model-zoo-style tarball (the published variable names and shapes, deterministic values;
tests/testdata/reference/vars). The fourth command (TF Serving) is stood in for by a fresh process that
loads the versioned export with TensorFlow alone, as the server would."""
import os
import subprocess
import sys
import tarfile
import textwrap

import numpy as np
from PIL import Image

import reference_case as rc

VOC = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "voc2012_sample", "JPEGImages")


def _run(*args):
  done = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=900,
                        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
  assert done.returncode == 0, done.stderr[-3000:]
  return done.stdout


def test_tarball_to_served_model(tmp_path):
  folder = tmp_path / "deeplabv3_mnv2_pascal_train_aug"
  rc.write_checkpoint_from_vars(str(folder / "model.ckpt"), rc.load_vars("mobilenet_v2"), rc.det_value)
  tarball = tmp_path / "deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz"
  with tarfile.open(tarball, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  models = tmp_path / "models"
  _run("deeplab_tf.bin.convert_checkpoint", f"--checkpoint_path={tarball}", f"--output_dir={models / 'voc'}",
       "--model_variant=mobilenet_v2", "--num_classes=21", "--output_stride=16")
  out = _run("deeplab_tf.bin.predict", f"--checkpoint_path={models / 'voc' / 'model.keras'}",
             f"--input={os.path.join(VOC, '*.jpg')}", f"--predict_logdir={tmp_path / 'predictions'}",
             "--noshow_progress")
  assert "3 image(s)" in out
  assert sorted(os.listdir(tmp_path / "predictions" / "labels")) == [
      "2011_000003.png", "2011_000006.png", "2011_000025.png"]
  _run("deeplab_tf.bin.export_model", f"--checkpoint_path={models / 'voc' / 'model.keras'}",
       f"--export_path={models / 'serving' / 'deeplab'}")
  assert os.listdir(models / "serving" / "deeplab") == ["1"]
  serve = textwrap.dedent("""
      import sys
      import numpy as np
      import tensorflow as tf
      signature = tf.saved_model.load(sys.argv[1]).signatures["probabilities"]
      image = open(sys.argv[2], "rb").read()
      np.save(sys.argv[3], signature(image_bytes=tf.constant([image]))["semantic_predictions"].numpy()[0])
  """)
  # The request carries the photo as a PNG of the pixels Pillow decoded for deeplab_predict: JPEG
  # decoders (Pillow's, TF's) differ by a grey level here and there.
  png = tmp_path / "2011_000006.png"
  Image.open(os.path.join(VOC, "2011_000006.jpg")).convert("RGB").save(png)
  served = tmp_path / "served.npy"
  subprocess.run([sys.executable, "-c", serve, str(models / "serving" / "deeplab" / "1"), str(png),
                  str(served)], check=True, timeout=900)
  from deeplab_tf import visualization
  predicted = visualization.read_label_png(str(tmp_path / "predictions" / "labels" / "2011_000006.png"))
  # Same model and image; the export runs the same graph in another process. Labels may differ only on
  # near-tied pixels: allow 0.1%.
  assert np.mean(np.load(served) == predicted) > 0.999
