"""The training loop: NaN stop, mixed precision, stop/resume, multipliers, initialisation, real DeepLab."""
import os
import threading

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import initialization, trainer
from deeplab_tf.training import optimizer as optimizer_lib

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=12, base_learning_rate=0.1, save_interval_steps=4,
                     log_steps=1, seed=5)
SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample")


def _train(options, logdir, **kwargs):
  images, labels = helpers.examples()
  dataset_fn = kwargs.pop("dataset_fn", helpers.dataset_fn_for(4, images, labels))
  return trainer.train(MODEL, options, dataset_fn, str(logdir), model_fn=helpers.tiny_model,
                       **kwargs)


def _ckpt_steps(logdir):
  state = tf.train.get_checkpoint_state(str(logdir))
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] if state else []


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
  images, labels = helpers.examples()
  # Batch index 5 is step 6: checkpoints at 4 exist, none at 6 or later.
  dataset_fn = helpers.dataset_fn_for(4, images, labels, nan_at_batch=5)
  # Step 6, or 7 when TF's fused BatchNorm + ReLU graph kernels map the NaN activations to 0 (its
  # NaN gradients then make step 7's loss NaN; see test_train_step.py).
  with pytest.raises(trainer.NonFiniteLossError, match="step [67];.*ckpt-4"):
    _train(TRAIN, tmp_path, dataset_fn=dataset_fn)
  assert _ckpt_steps(tmp_path) == [4]
  reader = tf.train.load_checkpoint(str(tmp_path / "ckpt-4"))
  assert reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE") == 4
  model = helpers.tiny_model(MODEL)
  tf.train.Checkpoint(model=model).restore(str(tmp_path / "ckpt-4")).expect_partial()
  assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_stop_event_checkpoints_at_the_current_step_and_resume_finishes(tmp_path):
  stop = threading.Event()
  logged = []

  def on_log(progress):
    logged.append(progress)
    if progress.step == 6:
      stop.set()
  result = _train(TRAIN, tmp_path, on_log=on_log, stop_event=stop)
  assert result.interrupted and result.final_step == 6
  # The progress reports split the total loss: cross-entropy plus a non-negative weight decay.
  assert logged and all(np.isfinite(p.cross_entropy) and p.loss >= p.cross_entropy for p in logged)
  assert _ckpt_steps(tmp_path)[-1] == 6
  resumed = _train(TRAIN, tmp_path)
  assert resumed.start_step == 6 and resumed.final_step == 12 and not resumed.interrupted
  assert [s for s, _ in resumed.losses] == list(range(7, 13))
  # Same weights as an uninterrupted run: optimizer state and data position were restored.
  straight = _train(TRAIN, tmp_path / "straight")
  for a, b in zip(resumed.model.weights, straight.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6)
  assert resumed.last_loss == pytest.approx(straight.last_loss, rel=1e-6)


def test_bfloat16_loss_falls_and_float16_uses_loss_scaling(tmp_path):
  options = TRAIN.replace(training_number_of_steps=30, save_interval_steps=100,
                          mixed_precision="mixed_bfloat16", base_learning_rate=0.5)
  result = _train(options, tmp_path / "bf16")
  assert result.model.layers[2].compute_dtype == "bfloat16"  # conv1
  assert keras.mixed_precision.global_policy().name == "float32"  # global policy restored
  first = np.mean([l for _, l in result.losses[:3]])
  last = np.mean([l for _, l in result.losses[-3:]])
  assert last < 0.9 * first, result.losses
  fp16 = _train(options.replace(mixed_precision="mixed_float16", training_number_of_steps=4),
                tmp_path / "fp16")
  assert np.isfinite(fp16.last_loss)
  reader = tf.train.load_checkpoint(str(tmp_path / "fp16" / "ckpt-4"))
  assert any("loss_scale" in k or "dynamic_scale" in k for k in reader.get_variable_to_shape_map())


def test_gradient_multipliers_follow_the_original():
  model = helpers.tiny_model(MODEL)
  names = [v.path for v in model.trainable_variables]
  multipliers = dict(zip(names, optimizer_lib.gradient_multipliers(
      model, TRAIN.replace(last_layer_gradient_multiplier=10.0))))
  assert multipliers["logits.semantic/kernel"] == 10.0
  assert multipliers["logits.semantic/bias"] == 20.0
  assert multipliers["conv1/kernel"] == 1.0
  assert multipliers["conv1.BatchNorm/gamma"] == 1.0


def test_momentum_matches_tf1_momentum_optimizer():
  # accumulation = 0.9 * accumulation + g; w -= lr * accumulation, with lr changing between steps.
  w = keras.Variable([1.0])
  schedule = keras.optimizers.schedules.PiecewiseConstantDecay([0], [0.1, 0.01])
  optimizer = optimizer_lib.MomentumOptimizer(learning_rate=schedule, momentum=0.9)
  optimizer.apply_gradients([(tf.constant([1.0]), w)])  # acc 1, w = 1 - 0.1
  optimizer.apply_gradients([(tf.constant([2.0]), w)])  # acc 2.9, w = 0.9 - 0.029 (Keras SGD: 0.79)
  assert float(w.numpy()[0]) == pytest.approx(0.871, abs=1e-7)


def test_initial_checkpoint_without_last_layer(tmp_path):
  source = helpers.tiny_model(MODEL)
  for v in source.weights:
    v.assign(tf.fill(v.shape, 0.5))
  path = str(tmp_path / "init.weights.h5")
  source.save_weights(path)
  options = TRAIN.replace(tf_initial_checkpoint=path, initialize_last_layer=False,
                          last_layers_contain_logits_only=True)
  keras.utils.set_random_seed(1)
  model = helpers.tiny_model(MODEL)
  fresh_logits = model.get_layer("logits.semantic").kernel.numpy()
  assert initialization.initialize_from_checkpoint(model, options.initialization) == "keras"
  assert np.all(model.get_layer("conv1").kernel.numpy() == 0.5)
  np.testing.assert_array_equal(model.get_layer("logits.semantic").kernel.numpy(), fresh_logits)
  with pytest.raises(FileNotFoundError, match="tf_initial_checkpoint"):
    initialization.initialize_from_checkpoint(
        model, options.replace(tf_initial_checkpoint="/nope").initialization)


def _voc_crop(name, size=65):
  """A real VOC photo and its class-id label (palette indices), resized to size x size."""
  image = Image.open(os.path.join(SAMPLES, "JPEGImages", name + ".jpg")).convert("RGB")
  label = Image.open(os.path.join(SAMPLES, "SegmentationClass", name + ".png"))
  assert label.mode == "P"
  image = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32)
  label = np.asarray(label.resize((size, size), Image.NEAREST), np.int32)[..., None]
  return image, label


def test_real_deeplab_xception65_v3plus_loss_falls(tmp_path):
  pairs = [_voc_crop("2011_000003"), _voc_crop("2011_000025")]
  images = np.stack([p[0] for p in pairs])
  labels = np.stack([p[1] for p in pairs])
  assert len(set(np.unique(labels)) - {0, 255}) >= 1  # real object classes, and boundaries (255)
  model_options = ModelOptions(model_variant="xception_65", num_classes=21, output_stride=16,
                               atrous_rates=(6, 12, 18), decoder_output_stride=4)
  # No weight decay so that the total loss is the cross-entropy (the decay of 41M glorot-initialised
  # weights would dominate it); frozen BN as at batch 2 in the original's advice.
  options = TrainOptions(train_crop_size=(65, 65), train_batch_size=2, training_number_of_steps=6,
                         base_learning_rate=0.1, save_interval_steps=100, log_steps=1, seed=0,
                         fine_tune_batch_norm=False, weight_decay=0.0)

  def dataset_fn(ctx):
    return tf.data.Dataset.from_tensors({"image": images, "label": labels}).repeat()
  result = trainer.train(model_options, options, dataset_fn, str(tmp_path))
  losses = [l for _, l in result.losses]
  assert result.final_step == 6 and len(losses) == 6
  # Starts near ln(21) = 3.04 (logits initialised with stddev 0.01), then falls.
  assert losses[0] == pytest.approx(np.log(21), abs=0.1)
  assert losses[-1] < losses[0] - 0.3, losses
  assert os.path.isfile(tmp_path / "model_options.json")
  assert _ckpt_steps(tmp_path) == [6]
