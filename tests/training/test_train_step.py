"""steps_per_loop: N single steps equal one loop of N; NaN checks and logs at loop boundaries."""
import numpy as np
import pytest

from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import trainer

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=12, base_learning_rate=0.1, save_interval_steps=100,
                     log_steps=1, seed=5, weight_decay=1e-3)


def _train(options, logdir, **kwargs):
  images, labels = helpers.examples()
  dataset_fn = kwargs.pop("dataset_fn", helpers.dataset_fn_for(4, images, labels))
  return trainer.train(MODEL, options, dataset_fn, str(logdir), model_fn=helpers.tiny_model,
                       **kwargs)


def test_one_loop_of_n_steps_equals_n_single_steps(tmp_path):
  single = _train(TRAIN, tmp_path / "single")
  looped = _train(TRAIN.replace(steps_per_loop=5), tmp_path / "looped")
  assert single.final_step == looped.final_step == 12
  # The same ops on the same data in the same order, in one process: equal up to float rounding of
  # differently fused graphs (1e-6 is ~10 float32 ulps at these weight magnitudes).
  for a, b in zip(single.model.weights, looped.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  assert looped.last_loss == pytest.approx(single.last_loss, rel=1e-5)
  # The host sees the loss only at loop ends: steps 5, 10 and the last, 12 (loops of 5, 5, 2).
  assert [s for s, _ in looped.losses] == [5, 10, 12]
  assert [s for s, _ in single.losses] == list(range(1, 13))
  moved = [float(np.max(np.abs(a.numpy() - b.numpy())))
           for a, b in zip(looped.model.weights, helpers.tiny_model(MODEL).weights)]
  assert max(moved) > 1e-3  # training changed the weights


def test_loops_end_at_checkpoints_and_a_nan_inside_a_loop_is_named(tmp_path):
  images, labels = helpers.examples()
  # Batch index 5 is step 6, inside the second loop (steps 5..8 after the checkpoint at 4).
  dataset_fn = helpers.dataset_fn_for(4, images, labels, nan_at_batch=5)
  options = TRAIN.replace(steps_per_loop=20, save_interval_steps=4)
  # TF's fused BatchNorm + ReLU graph kernels (oneDNN, as the original's fused slim BN) can map the
  # NaN batch's activations to 0: its own loss is then finite, its NaN gradients make the next
  # step's loss NaN. Either way the step is inside the loop and ckpt-4 is the latest good one.
  with pytest.raises(trainer.NonFiniteLossError, match="step [67];.*ckpt-4"):
    _train(options, tmp_path, dataset_fn=dataset_fn)


def _small_model_with_dropout():
  """conv(stride 2) + BN + ReLU -> HashDropout (as the ASPP's) -> 1x1 logits -> upsampling."""
  import keras  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model import layers  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(0)
  images = keras.Input((33, 33, 3))
  x = layers.Preprocess(layers.ZERO_MEAN_UNIT_RANGE)(images)
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
  x = keras.layers.BatchNormalization(name="conv1.BatchNorm")(x)
  x = keras.layers.ReLU()(x)
  x = layers.HashDropout(0.1, name="concat_projection_dropout")(x)
  x = keras.layers.Conv2D(5, 1, name="logits.semantic")(x)
  return keras.Model(images, layers.ResizeLike()([x, images]))


def test_xla_compiled_step_equals_the_uncompiled_step_with_hard_pixel_mining():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from deeplab_tf.training import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from deeplab_tf.training.train_step import TrainStep  # pylint: disable=import-outside-toplevel
  model = _small_model_with_dropout()
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(0, 255, (4, 33, 33, 3)).astype(np.float32))
  labels = rng.integers(0, 5, (4, 33, 33, 1)).astype(np.int32)
  labels[:, :8] = 255  # ignored pixels
  labels = tf.constant(labels)
  seeds = [(v, v.numpy()) for v in model.non_trainable_variables if "seed_generator" in v.path]
  assert seeds, "the model has no dropout seed to reset"
  results = []
  for jit_compile in (False, True):
    for variable, value in seeds:  # the same dropout seed for both
      variable.assign(value)
    options = TrainOptions(top_k_percent_pixels=0.25, hard_example_mining_step=10,
                           weight_decay=1e-4, last_layer_gradient_multiplier=2.0,
                           jit_compile=jit_compile)
    step = TrainStep(model, optimizer_lib.build_optimizer(options), tf.distribute.get_strategy(),
                     options, num_classes=5, ignore_label=255, step=tf.Variable(0, dtype=tf.int64))
    # Step 5 of a 10-step ramp: k = 62.5% of the pixels, a k that changes with the step.
    grads, total, cross_entropy, _ = tf.function(step.gradients, jit_compile=jit_compile)(
        images, labels, tf.constant(5, tf.int64))
    results.append(([g.numpy() for g in grads], float(total), float(cross_entropy)))
  (plain, plain_total, plain_xent), (xla, xla_total, xla_xent) = results
  # XLA fuses and reorders float32 sums: float noise of ~1e-7 relative on the losses. Keras' own
  # Dropout draws another mask under XLA from the same seed (0.6% apart with mining, issue 11).
  assert xla_xent == pytest.approx(plain_xent, rel=1e-5)
  assert xla_total == pytest.approx(plain_total, rel=1e-5)
  for a, b in zip(plain, xla):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(a))))


def test_jit_compile_trains_like_the_uncompiled_step(tmp_path):
  options = TRAIN.replace(top_k_percent_pixels=0.5, training_number_of_steps=4)
  plain = _train(options, tmp_path / "plain")
  compiled = _train(options.replace(jit_compile=True), tmp_path / "xla")
  # The tiny model (one conv + BN + logits): weights after 4 steps agree to float noise.
  for a, b in zip(plain.model.weights, compiled.model.weights):
    np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-4, atol=1e-5)
  assert compiled.last_loss == pytest.approx(plain.last_loss, rel=1e-5)
