"""TrainOptions grouped by concern: flag-named fields, construction either way, JSON round trip."""
import dataclasses

import pytest

from deeplab_tf.options import (TRAIN_OPTION_GROUPS, CheckpointOptions, SolverOptions,
                                TrainOptions)


def test_train_options_from_flag_names_land_in_their_groups():
  options = TrainOptions(base_learning_rate=1e-3, train_crop_size=[65, 65], log_steps=3,
                         save_interval_secs=60, steps_per_loop=20, jit_compile=True)
  assert options.solver.base_learning_rate == 1e-3
  assert options.augmentation.train_crop_size == (65, 65)
  assert options.checkpointing == CheckpointOptions(log_steps=3, save_interval_secs=60)
  assert options.execution.steps_per_loop == 20 and options.execution.jit_compile
  # Groups and flag names mix; replace takes both.
  mixed = TrainOptions(solver=SolverOptions(momentum=0.5), weight_decay=0.0)
  assert (mixed.solver.momentum, mixed.solver.weight_decay) == (0.5, 0.0)
  assert options.replace(momentum=0.5).solver.momentum == 0.5
  assert options.replace(momentum=0.5).solver.base_learning_rate == 1e-3


def test_flag_names_are_unique_across_groups_and_round_trip_through_json():
  names = [f.name for cls in TRAIN_OPTION_GROUPS.values() for f in dataclasses.fields(cls)]
  assert len(names) == len(set(names)) == len(TrainOptions.flag_names())
  options = TrainOptions(label_weights=[1.0, 2.0], seed=3, top_k_percent_pixels=0.25)
  assert TrainOptions.from_json(options.to_json()) == options
  assert TrainOptions.from_dict(options.to_flat_dict()) == options
  assert set(options.to_flat_dict()) == set(names)


def test_bad_names_and_values_are_named():
  with pytest.raises(ValueError, match="learning_rate"):
    TrainOptions(learning_rate=0.1)
  with pytest.raises(ValueError, match="save_interval_secs=-1"):
    TrainOptions(save_interval_secs=-1)
  with pytest.raises(ValueError, match="steps_per_loop=0"):
    TrainOptions(steps_per_loop=0)
