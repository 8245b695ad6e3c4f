"""docs/MODEL_ZOO.md and its flagfiles (experiments/model_zoo/): every flagfile parses into the options of
its checkpoint and is in the document, and the rows whose variables are known build exactly them.
"""

import glob
import os
import re

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

import deeplab_tf
import reference_case as rc
from deeplab_tf.bin import model_flags
from deeplab_tf.checkpoints import model_weights_by_checkpoint_name

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ZOO_DIR = os.path.join(ROOT, "experiments", "model_zoo")
DOC = os.path.join(ROOT, "docs", "MODEL_ZOO.md")

# flagfile -> variable list of the same architecture (testdata/reference/vars or derived_vars); the
# Xception-65 rows are the architectures of test_variants' xception_65 and xception_65_19classes.
KNOWN_VARS = {
    "mobilenetv2_coco_voc_trainaug": "mobilenet_v2",
    "mobilenetv3_large_cityscapes_trainfine": "mobilenet_v3_large_seg",
    "mobilenetv3_small_cityscapes_trainfine": "mobilenet_v3_small_seg",
    "edgetpu_deeplab": "mobilenet_edgetpu",
    "edgetpu_deeplab_slim": "mobilenet_edgetpu_slim",
}


def _options(name):
  with flagsaver.flagsaver():
    flags.FLAGS(["prog", f"--flagfile={os.path.join(ZOO_DIR, name + '.flags')}"])
    return model_flags.model_options_from_flags()


def _flagfiles():
  return sorted(os.path.basename(p)[:-len(".flags")] for p in glob.glob(os.path.join(ZOO_DIR, "*.flags")))


def test_every_flagfile_is_documented_and_every_documented_one_exists():
  with open(DOC) as f:
    doc = f.read()
  mentioned = set(re.findall(r"model_zoo/(\w+)\.flags", doc)) | set(re.findall(r"`(\w+)\.flags`", doc))
  assert mentioned == set(_flagfiles())
  for path in re.findall(r"(experiments/[\w/]+\.flags)", doc):
    assert os.path.exists(os.path.join(ROOT, path)), path
  # Every model-zoo tarball of g3doc/model_zoo.md (22) and quantize.md (2) has its row.
  assert len(set(re.findall(r"download\.tensorflow\.org/models/([\w.-]+\.tar\.gz)", doc))) == 24


def test_flagfiles_parse_into_the_checkpoints_options():
  options = {name: _options(name) for name in _flagfiles()}
  assert options["mobilenetv3_large_cityscapes_trainfine"] == deeplab_tf.ModelOptions(
      model_variant="mobilenet_v3_large_seg", num_classes=19, output_stride=32,
      image_pooling_crop_size=(769, 769), image_pooling_stride=(4, 5), aspp_convs_filters=128,
      aspp_with_concat_projection=False, aspp_with_squeeze_and_excitation=True,
      decoder_use_sum_merge=True, decoder_filters=19, decoder_output_is_logits=True,
      image_se_uses_qsigmoid=True, decoder_output_stride=8)
  assert options["xception65_coco_voc_trainval"].atrous_rates == (12, 24, 36)
  assert options["imagenet_resnet_v1_101_beta"].multi_grid == (1, 2, 4)
  assert options["edgetpu_deeplab_slim"].depth_multiplier == 0.75
  assert {o.num_classes for n, o in options.items() if "cityscapes" in n or "edgetpu" in n} == {19}
  assert {o.num_classes for n, o in options.items() if "ade20k" in n} == {151}


@pytest.mark.parametrize("name", sorted(KNOWN_VARS))
def test_flagfile_builds_the_checkpoints_variables(name):
  model = deeplab_tf.build_deeplab(_options(name))
  ours = {n: tuple(w.shape) for n, w in model_weights_by_checkpoint_name(model).items()}
  expected = dict(rc.load_vars(KNOWN_VARS[name]))
  assert ours == expected
  assert model.count_params() == sum(int(np.prod(s)) for s in expected.values())
