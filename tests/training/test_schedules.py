"""Learning-rate values by hand (research/deeplab get_model_learning_rate)."""
import math

import keras
import pytest

from deeplab_tf.options import SolverOptions
from deeplab_tf.training.schedules import SlowStart, learning_rate_schedule


def _lr(options, step):
  return float(learning_rate_schedule(options)(step))


def test_poly():
  o = SolverOptions(base_learning_rate=0.007, training_number_of_steps=30000, learning_power=0.9)
  assert _lr(o, 0) == pytest.approx(0.007)
  assert _lr(o, 15000) == pytest.approx(0.007 * 0.5 ** 0.9, rel=1e-5)
  assert _lr(o, 29999) == pytest.approx(0.007 * (1 / 30000) ** 0.9, rel=1e-3)
  assert _lr(o, 30000) == 0.0
  assert _lr(o, 40000) == 0.0


def test_step():
  o = SolverOptions(learning_policy="step", base_learning_rate=0.1, learning_rate_decay_step=100,
                   learning_rate_decay_factor=0.1)
  assert _lr(o, 99) == pytest.approx(0.1)
  assert _lr(o, 100) == pytest.approx(0.01)
  assert _lr(o, 250) == pytest.approx(0.001)


def test_cosine():
  o = SolverOptions(learning_policy="cosine", base_learning_rate=0.01, training_number_of_steps=1000)
  assert _lr(o, 0) == pytest.approx(0.01)
  assert _lr(o, 250) == pytest.approx(0.01 * 0.5 * (1 + math.cos(math.pi * 0.25)), rel=1e-5)
  assert _lr(o, 1000) == pytest.approx(0.0, abs=1e-9)


def test_slow_start_constant_then_poly_on_the_shifted_step():
  o = SolverOptions(base_learning_rate=0.01, training_number_of_steps=110, slow_start_step=10,
                   slow_start_learning_rate=1e-4)
  assert _lr(o, 0) == pytest.approx(1e-4)
  assert _lr(o, 9) == pytest.approx(1e-4)
  assert _lr(o, 10) == pytest.approx(0.01)
  # Decay over 100 steps from step 10: at step 60, half way.
  assert _lr(o, 60) == pytest.approx(0.01 * 0.5 ** 0.9, rel=1e-5)


def test_slow_start_linear_burnin():
  o = SolverOptions(base_learning_rate=0.01, training_number_of_steps=110, slow_start_step=10,
                   slow_start_learning_rate=0.0, slow_start_burnin_type="linear")
  assert _lr(o, 5) == pytest.approx(0.005)
  assert _lr(o, 10) == pytest.approx(0.01)


def test_serialisable_round_trip():
  o = SolverOptions(base_learning_rate=0.01, training_number_of_steps=110, slow_start_step=10)
  schedule = learning_rate_schedule(o)
  copy = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
  assert isinstance(copy, SlowStart)
  for step in (0, 9, 10, 50, 110):
    assert float(copy(step)) == pytest.approx(float(schedule(step)))


def test_bad_values_name_the_flag():
  with pytest.raises(ValueError, match="slow_start_step"):
    learning_rate_schedule(SolverOptions(training_number_of_steps=10, slow_start_step=10))
  with pytest.raises(ValueError, match="learning_policy"):
    SolverOptions(learning_policy="exp")
