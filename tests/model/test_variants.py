"""Every published variant builds exactly the reference variable list and loads a checkpoint of it.

For each `testdata/reference/vars/<name>.vars.json` (the original's variables, names and shapes): our
model's weights, named by the one checkpoint rule, are that list (nothing missing, nothing extra),
count_params() is the sum of the listed shapes (and the reference README's figure), a TF1 checkpoint
written from the list loads with every variable used, and the model runs on small odd and even inputs
(33x33, 32x48).
Each variant is built once, and released before the next (the nine hold ~360M parameters).
"""

import os

import numpy as np
import pytest

import deeplab_tf
import reference_case as rc
import tie_aware
from deeplab_tf.checkpoints import load_tf1_checkpoint, model_weights_by_checkpoint_name
from deeplab_tf.model.acceleration import KernelPolicy, apply_kernel_policy, inference_model


# Kept for test_xception_65_matches_the_original; every other model is released after its test.
_KEPT = {}


def _build(name):
  if name in _KEPT:
    return _KEPT[name]
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**rc.VARIANT_CASES[name][0]))
  if name == "xception_65":
    _KEPT[name] = model
  return model


@pytest.fixture(scope="module", autouse=True)
def _release():
  yield
  _KEPT.clear()


@pytest.mark.parametrize("name", sorted(rc.VARIANT_CASES))
def test_variant(name, tmp_path):
  options = deeplab_tf.ModelOptions(**rc.VARIANT_CASES[name][0])
  model = _build(name)
  names_and_shapes = rc.load_vars(name)
  expected = dict(names_and_shapes)

  # The variables are the reference list: names and shapes, nothing missing, nothing extra.
  ours = {n: tuple(w.shape) for n, w in model_weights_by_checkpoint_name(model).items()}
  assert sorted(set(expected) - set(ours)) == [], "missing"
  assert sorted(set(ours) - set(expected)) == [], "extra"
  assert {n: (s, expected[n]) for n, s in ours.items() if expected[n] != s} == {}, "shapes"

  # Parameter count: the sum of the listed shapes and the reference README's figure.
  listed = sum(int(np.prod(s)) for s in expected.values())
  assert model.count_params() == listed
  if rc.VARIANT_CASES[name][1] is not None:
    assert listed == rc.VARIANT_CASES[name][1]
  if name == "xception_65":
    assert model.count_params() == 41_258_213
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 41_055_413

  # A TF1 checkpoint written from the list loads with every variable used and every weight assigned.
  prefix = rc.write_checkpoint_from_vars(str(tmp_path / "model.ckpt"), names_and_shapes,
                                         rc.cheap_value)
  report = load_tf1_checkpoint(model, prefix)
  assert report.assigned == len(names_and_shapes) == len(model.weights)
  assert report.skipped_model == () and report.skipped_checkpoint == ()
  variances = [w for n, w in model_weights_by_checkpoint_name(model).items()
               if n.endswith("moving_variance")]
  assert variances and all(np.all(np.asarray(w) == 0.5) for w in variances)

  # Logits at the input size for odd and even inputs.
  rng = np.random.default_rng(0)
  for height, width in [(33, 33), (32, 48)]:
    images = rng.uniform(0, 255, (1, height, width, 3)).astype(np.float32)
    out = model(images, training=False)
    assert tuple(out.shape) == (1, height, width, options.num_classes)
    assert np.all(np.isfinite(out))


# The reference case: weights from the reference recipe written as a TF1 checkpoint from the variable
# list and loaded by name; the upsampled logits of the 129x129 input must match the original's to 1e-5
# of their largest magnitude (the original's own oneDNN on/off runs differ by 4e-6; ours measure 3.8e-6
# with oneDNN off and 4.3e-6 with it on), with labels equal wherever the reference's top-2 margin
# exceeds twice that (tie_aware; 5 of 16,641 pixels are nearer ties than that).
#
# Under every kernel policy: the plain model (portable), the CPU policy's inference model (folded,
# matrix products, in-place dilations where this TensorFlow has them) and its training form (728
# channels carried as 736, fused BatchNorm) called for inference, as validation during training does.
KERNEL_POLICY_FORMS = {
    "portable": lambda model: model,
    "cpu_inference": lambda model: inference_model(model, KernelPolicy.cpu()),
    "cpu_training_form": lambda model: apply_kernel_policy(model, KernelPolicy.cpu(), training=True),
}


@pytest.mark.reference
@pytest.mark.parametrize("form", sorted(KERNEL_POLICY_FORMS))
def test_xception_65_matches_the_original(tmp_path, form):
  case = rc.XCEPTION_65_CASE_DIR
  prefix = rc.write_checkpoint_from_vars(str(tmp_path / "model.ckpt"), rc.load_vars("xception_65"))
  # DeepLabv3+, 21 classes, output_stride 16, rates 6/12/18, decoder stride 4, separable convs.
  model = _build("xception_65")
  report = load_tf1_checkpoint(model, prefix)
  assert report.assigned == 732
  ours = KERNEL_POLICY_FORMS[form](model)(np.load(os.path.join(case, "input.npy")),
                                          training=False).numpy()
  ref = np.load(os.path.join(case, "logits.npy"))
  assert ours.shape == ref.shape == (1, 129, 129, 21)
  tie_aware.assert_matches(ours, ref, 1e-5 * np.abs(ref).max(),
                           reference_labels=np.load(os.path.join(case, "predictions.npy")))
