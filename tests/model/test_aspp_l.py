"""DeepLabv2's ASPP-L (experiments/voc_trainaug_resnet101_aspp_l_os8.flags): ResNet-101 at output stride
8, four 3x3 atrous logits branches (rates 6, 12, 18, 24) summed, nothing else in the head."""

import os

import numpy as np
from absl import flags

import deeplab_tf
import reference_case as rc
from deeplab_tf.checkpoints import load_tf1_checkpoint, model_weights_by_checkpoint_name

FLAGFILE = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                        "voc_trainaug_resnet101_aspp_l_os8.flags")


def _resnet_v1_101_vars():
  """The original's resnet_v1_101 variables, from the reference resnet_v1_50 list: slim's resnet_v1_101
  is resnet_v1_50 with 23 instead of 6 units in block3, every unit of a block alike after the first."""
  encoder = [(n.replace("resnet_v1_50/", "resnet_v1_101/"), s) for n, s in rc.load_vars("resnet_v1_50")
             if n.startswith("resnet_v1_50/")]
  unit_6 = [(n, s) for n, s in encoder if "/block3/unit_6/" in n]
  for unit in range(7, 24):
    encoder += [(n.replace("/unit_6/", f"/unit_{unit}/"), s) for n, s in unit_6]
  return encoder


def test_aspp_l_flagfile_builds_deeplabv2(tmp_path):
  from deeplab_tf.bin import train as train_bin  # defines the flags
  try:
    flags.FLAGS(["deeplab_train", f"--flagfile={FLAGFILE}"])
    options, train, _ = train_bin.options_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert (options.model_variant, options.output_stride, options.atrous_rates, options.aspp_with_batch_norm,
          options.logits_kernel_size, options.decoder_output_stride) == (
              "resnet_v1_101", 8, (6, 12, 18, 24), False, 3, None)
  assert (train.augmentation.train_crop_size, train.solver.train_batch_size,
          train.solver.training_number_of_steps, train.solver.base_learning_rate,
          train.batch_norm.fine_tune_batch_norm) == ((321, 321), 10, 20000, 0.001, False)
  model = deeplab_tf.build_deeplab(options)
  head = [(f"logits/semantic{suffix}/{kind}", shape) for suffix in ("", "_1", "_2", "_3")
          for kind, shape in (("weights", (3, 3, 2048, 21)), ("biases", (21,)))]
  expected = dict(_resnet_v1_101_vars() + head)
  ours = {n: tuple(w.shape) for n, w in model_weights_by_checkpoint_name(model).items()}
  assert sorted(set(expected) - set(ours)) == [] and sorted(set(ours) - set(expected)) == []
  assert {n: (s, expected[n]) for n, s in ours.items() if expected[n] != s} == {}
  # 4 branches of 3x3x2048x21 + 21.
  assert model.count_params() == sum(int(np.prod(s)) for s in expected.values())
  assert model.count_params() - sum(int(np.prod(s)) for n, s in expected.items()
                                    if n.startswith("resnet")) == 4 * (3 * 3 * 2048 * 21 + 21)
  for i, rate in enumerate((6, 12, 18, 24)):
    assert model.get_layer("logits.semantic" + (f"_{i}" if i else "")).dilation_rate == (rate, rate)

  # A checkpoint in the original's names loads strictly, and the logits are the sum of the branches.
  prefix = rc.write_checkpoint_from_vars(str(tmp_path / "model.ckpt"), sorted(expected.items()),
                                         rc.cheap_value)
  assert load_tf1_checkpoint(model, prefix).assigned == len(expected)
  images = np.random.default_rng(0).uniform(0, 255, (1, 33, 33, 3)).astype(np.float32)
  biases = np.random.default_rng(1).standard_normal((4, 21)).astype(np.float32)
  for i in range(4):
    layer = model.get_layer("logits.semantic" + (f"_{i}" if i else ""))
    layer.bias.assign(biases[i])
  # cheap_value zeroes every kernel, so each branch outputs its bias: the sum is the biases' sum.
  np.testing.assert_allclose(model(images, training=False).numpy()[0, 5, 7], biases.sum(0), atol=1e-5)
