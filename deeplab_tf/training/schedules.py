"""Learning-rate schedules of research/deeplab as Keras `LearningRateSchedule` objects.

research/deeplab `utils/train_utils.py` (`get_model_learning_rate`): the decay runs on
`max(step - slow_start_step, 0)` over `training_number_of_steps - slow_start_step` steps, and during
the first `slow_start_step` steps the rate is `slow_start_learning_rate` (burn-in 'none') or a linear
ramp from it to `base_learning_rate` (burn-in 'linear'). The decays themselves are Keras' own:
'poly' = `PolynomialDecay` with end rate 0 (`tf.train.polynomial_decay`; DeepLabv3, section 4.1),
'step' = `ExponentialDecay` with staircase (`tf.train.exponential_decay`), 'cosine' = `CosineDecay`
(`tf.train.cosine_decay`).
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.options import SolverOptions


@keras.saving.register_keras_serializable(package="deeplab_tf")
class SlowStart(keras.optimizers.schedules.LearningRateSchedule):
  """Wraps a decay schedule with the original's slow start (warm-up).

  `rate(step) = decay(max(step - slow_start_step, 0))` for `step >= slow_start_step`; before that
  `slow_start_learning_rate` (burn-in 'none') or `slow_start_learning_rate + (base_learning_rate -
  slow_start_learning_rate) * step / slow_start_step` (burn-in 'linear').

  Args:
    decay: the schedule after the slow start, a `LearningRateSchedule` of the shifted step.
    slow_start_step: warm-up length in steps (0: none).
    slow_start_learning_rate: learning rate at the start of the warm-up.
    base_learning_rate: the rate a linear burn-in reaches.
    burnin_type: 'none' or 'linear'.

  Raises:
    ValueError: unknown `burnin_type` or negative `slow_start_step`.
  """

  def __init__(self, decay, slow_start_step: int = 0, slow_start_learning_rate: float = 1e-4,
               base_learning_rate: float = 0.0, burnin_type: str = "none"):
    if isinstance(decay, dict):
      decay = keras.optimizers.schedules.deserialize(decay)
    if burnin_type not in ("none", "linear"):
      raise ValueError(f"slow_start_burnin_type={burnin_type!r}: expected 'none' or 'linear'.")
    if slow_start_step < 0:
      raise ValueError(f"slow_start_step={slow_start_step}: expected >= 0.")
    self.decay = decay
    self.slow_start_step = int(slow_start_step)
    self.slow_start_learning_rate = float(slow_start_learning_rate)
    self.base_learning_rate = float(base_learning_rate)
    self.burnin_type = burnin_type

  def __call__(self, step):
    step = tf.cast(step, tf.float32)
    start = float(self.slow_start_step)
    rate = tf.cast(self.decay(tf.maximum(step - start, 0.0)), tf.float32)
    if self.slow_start_step == 0:
      return rate
    slow = tf.constant(self.slow_start_learning_rate, tf.float32)
    if self.burnin_type == "linear":
      slow = slow + (self.base_learning_rate - self.slow_start_learning_rate) * step / start
    return tf.where(step < start, slow, rate)

  def get_config(self):
    return {"decay": keras.optimizers.schedules.serialize(self.decay),
            "slow_start_step": self.slow_start_step,
            "slow_start_learning_rate": self.slow_start_learning_rate,
            "base_learning_rate": self.base_learning_rate,
            "burnin_type": self.burnin_type}


def learning_rate_schedule(options: SolverOptions) -> SlowStart:
  """The learning rate of `options.learning_policy` with slow start, as `get_model_learning_rate`.

  Args:
    options: uses `learning_policy`, `base_learning_rate`, `training_number_of_steps`,
      `learning_power`, `learning_rate_decay_step`, `learning_rate_decay_factor`, `slow_start_step`,
      `slow_start_learning_rate`, `slow_start_burnin_type`.

  Returns:
    A serialisable schedule mapping the optimizer step (int) to a float32 learning rate.

  Raises:
    ValueError: `slow_start_step >= training_number_of_steps` (nothing left to decay over) or an
      unknown `learning_policy`.
  """
  decay_steps = options.training_number_of_steps - options.slow_start_step
  if decay_steps < 1:
    raise ValueError(f"slow_start_step={options.slow_start_step}: expected fewer than "
                     f"training_number_of_steps={options.training_number_of_steps}.")
  schedules = keras.optimizers.schedules
  if options.learning_policy == "poly":
    decay = schedules.PolynomialDecay(options.base_learning_rate, decay_steps,
                                      end_learning_rate=0.0, power=options.learning_power)
  elif options.learning_policy == "step":
    decay = schedules.ExponentialDecay(options.base_learning_rate, options.learning_rate_decay_step,
                                       options.learning_rate_decay_factor, staircase=True)
  elif options.learning_policy == "cosine":
    decay = schedules.CosineDecay(options.base_learning_rate, decay_steps)
  else:
    raise ValueError(f"learning_policy={options.learning_policy!r}: expected 'poly', 'step' or "
                     "'cosine'.")
  return SlowStart(decay, options.slow_start_step, options.slow_start_learning_rate,
                   options.base_learning_rate, options.slow_start_burnin_type)
