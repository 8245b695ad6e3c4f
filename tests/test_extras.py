"""Optional features are extras (issue 21): the core imports none of their packages, and a feature whose
extra is missing is refused in one line with its `pip install 'deeplab_tf[...]'`."""
import os
import subprocess
import sys

import pytest

from deeplab_tf.data import descriptors, pipeline
from deeplab_tf.errors import MissingExtraError, UserError
from deeplab_tf.evaluation import crf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXTRA_PACKAGES = ("cityscapesscripts", "tensorflow_datasets", "pydensecrf", "ai_edge_litert")


def test_the_binaries_and_converters_import_no_extra():
  code = ("import sys\n"
          "import deeplab_tf.bin.train, deeplab_tf.bin.eval, deeplab_tf.bin.vis, deeplab_tf.bin.predict\n"
          "import deeplab_tf.bin.export_model, deeplab_tf.bin.convert_checkpoint\n"
          "import datasets.build_voc2012_data, datasets.build_cityscapes_data, datasets.build_ade20k_data\n"
          f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({EXTRA_PACKAGES!r})))\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT), check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  assert done.stdout.strip().splitlines()[-1] == "[]"


def test_cityscapes_tables_are_the_benchmarks():
  labels = pytest.importorskip("cityscapesscripts.helpers.labels", reason="the extra deeplab_tf[cityscapes]")
  evaluated = sorted((l for l in labels.labels if 0 <= l.trainId < 255), key=lambda l: l.trainId)
  assert descriptors.CITYSCAPES_CLASSES == tuple(l.name for l in evaluated)
  assert descriptors.CITYSCAPES_TRAIN_ID_TO_LABEL_ID == tuple(l.id for l in evaluated)
  table = pipeline._cityscapes_id_to_train_id().numpy()  # pylint: disable=protected-access
  for label in labels.labels:
    if 0 <= label.id < 256:
      assert table[label.id] == (label.trainId if 0 <= label.trainId < 255 else 255), label


def _refused(raised, extra):
  message = str(raised.value)
  assert isinstance(raised.value, UserError) and isinstance(raised.value, ImportError)
  assert message.endswith(f"pip install 'deeplab_tf[{extra}]'") and "\n" not in message, message


def test_missing_extras_are_refused_with_their_pip_line(tmp_path, monkeypatch):
  for module in ("tensorflow_datasets", "pydensecrf", "pydensecrf.densecrf", "cityscapesscripts",
                 "cityscapesscripts.helpers.annotation", "cityscapesscripts.preparation.json2labelImg"):
    monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
  with pytest.raises(MissingExtraError) as raised:
    pipeline.build_dataset(None, tfds_name="scene_parse150", tfds_split="train", is_training=False,
                           crop_size=None, batch_size=1, ignore_label=255)
  _refused(raised, "tfds")
  with pytest.raises(MissingExtraError) as raised:
    crf._densecrf_module()  # pylint: disable=protected-access
  _refused(raised, "crf")
  from datasets import build_cityscapes_data  # pylint: disable=import-outside-toplevel
  polygons = tmp_path / "aachen_000000_000019_gtFine_polygons.json"
  polygons.write_text('{"imgHeight": 4, "imgWidth": 4, "objects": []}')
  with pytest.raises(MissingExtraError) as raised:
    build_cityscapes_data.read_train_ids(str(tmp_path / "aachen_000000_000019_gtFine_labelTrainIds.png"))
  _refused(raised, "cityscapes")
