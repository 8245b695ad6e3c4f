"""Options for building, training and evaluating DeepLab models.

Frozen dataclasses whose field names are research/deeplab's flag names (`common.py`, `train.py`,
`eval.py`), so that a command line from the original carries over. Each round-trips through JSON
(`to_json` / `from_json`), which is how checkpoints and exports record the options they were made with.
The library never reads flags: the binaries in `deeplab_tf/bin` parse flags and build these.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Optional, Tuple, TypeVar

# Keras dtype policies of training and inference (`--mixed_precision`).
MIXED_PRECISION_POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")


def check_mixed_precision(name: str) -> None:
  """Raises ValueError naming `name` unless it is one of `MIXED_PRECISION_POLICIES`."""
  if name not in MIXED_PRECISION_POLICIES:
    raise ValueError(f"mixed_precision={name!r}: expected one of {', '.join(MIXED_PRECISION_POLICIES)}.")


# `--kernel_policy` (deeplab_tf.model.acceleration.policy): how the network is computed on this
# machine. 'auto' picks the measured CPU kernels on CPUs and plain arithmetic on GPUs/TPUs.
KERNEL_POLICIES = ("auto", "portable", "cpu")


def check_kernel_policy(name: str) -> None:
  """Raises ValueError unless `name` is one of `KERNEL_POLICIES`."""
  if name not in KERNEL_POLICIES:
    raise ValueError(f"kernel_policy={name!r}: expected one of {', '.join(KERNEL_POLICIES)}.")


T = TypeVar("T", bound="_JsonOptions")

# Output strides the encoders support: research/deeplab uses 8, 16 (and 32 without atrous convolution).
VALID_OUTPUT_STRIDES = (8, 16, 32)
# research/deeplab common.py `--batch_norm_decay` default: at it, every BatchNorm keeps the original's decay.
ORIGINAL_BATCH_NORM_DECAY = 0.9997


def _as_tuple(value):
  if value is None:
    return None
  if isinstance(value, (list, tuple)):
    return tuple(_as_tuple(v) if isinstance(v, (list, tuple)) else v for v in value)
  return value


class _FrozenDict(dict):
  """A hashable, read-only dict (a dense prediction cell branch), so that options stay hashable; JSON
  writes it as a plain object."""

  def __hash__(self):
    return hash(tuple(sorted(self.items())))

  def _read_only(self, *args, **kwargs):
    raise TypeError("options are frozen; use ModelOptions.replace() to change them.")

  __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only


class _JsonOptions:
  """JSON round-trip shared by every options dataclass."""

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self, **kwargs) -> str:
    return json.dumps(self.to_dict(), sort_keys=True, **kwargs)

  @classmethod
  def from_dict(cls: type[T], values: dict) -> T:
    """Builds the options from a dict, as written by `to_dict`.

    Raises:
      ValueError: if `values` has a key that is not a field of this class.
    """
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise ValueError(f"Unknown {cls.__name__} field(s) {unknown}; expected a subset of {sorted(names)}.")
    return cls(**{k: _as_tuple(v) for k, v in values.items()})

  @classmethod
  def from_json(cls: type[T], text: str) -> T:
    return cls.from_dict(json.loads(text))

  def replace(self: T, **changes: Any) -> T:
    return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class ModelOptions(_JsonOptions):
  """The architecture of a DeepLab model, with research/deeplab's flag names and defaults.

  Attributes:
    model_variant: encoder name, a key of `deeplab_tf.model.encoders.ENCODERS` (`xception_65`,
      `resnet_v1_101_beta`, `mobilenet_v2`, ...). research/deeplab's default is `mobilenet_v2`.
    num_classes: number of output classes (21 for PASCAL VOC, 19 Cityscapes, 151 ADE20K).
    output_stride: input resolution / encoder output resolution: 8, 16 or 32 (DeepLabv3, section 3.1).
    atrous_rates: rates of the ASPP 3x3 branches, e.g. (6, 12, 18) at output_stride 16 and (12, 24, 36)
      at 8 (DeepLabv3, section 3.3). None or () builds no atrous branch (the MobileNetV2 model-zoo head:
      image pooling + 1x1 branch + projection).
    decoder_output_stride: output stride of the low-level feature the DeepLabv3+ decoder refines with
      (4 in the paper, section 3.1); None builds DeepLabv3 (no decoder).
    multi_grid: unit rates of the last block's three units (DeepLabv3, section 3.2.1), e.g. (1, 2, 4);
      None means (1, 1, 1). Two rates for resnet_v1_18[_beta], whose block4 has two units.
    aspp_with_separable_conv: depthwise-separable ASPP 3x3 branches (DeepLabv3+, section 3.2).
    decoder_use_separable_conv: depthwise-separable decoder 3x3 convolutions.
    add_image_level_feature: the ASPP image-pooling branch (DeepLabv3, section 3.3).
    aspp_with_batch_norm: build the ASPP head at all; False returns the encoder features directly to the
      logits layer, as the original does.
    depth_multiplier: MobileNet (V2, V3, EdgeTPU) width multiplier (e.g. 0.5); ignored by other
      encoders.
    divisible_by: MobileNetV2 channel rounding; None means the original's default (8 at
      depth_multiplier 1, else 1: research/deeplab feature_extractor._mobilenet_v2).
    image_pooling_crop_size: (height, width) in pixels of the training crop whose encoder output the
      image-pooling branch averages over with a fixed VALID window, as the original does during
      training; None pools globally over whatever the input is (the original at inference).
    image_pooling_stride: stride of that fixed pooling window, (1, 1) in the original.
    dense_prediction_cell_config: the Dense Prediction Cell replacing ASPP (Chen et al. 2018; the
      original's `--dense_prediction_cell_json`, read by
      `deeplab_tf.model.dense_prediction_cell.load_dense_prediction_cell_config`): a list of branch
      dicts; None builds ASPP. Needs `aspp_with_batch_norm`, as in the original.
    logits_kernel_size: kernel size of the final logits convolution (1 in every published model).
    prediction_with_upsampled_logits: upsample logits to the input size (True in the original); when
      False, the model returns logits at the decoder (or encoder) output stride.
    use_bounded_activation: ReLU6 instead of ReLU in the ASPP head and decoder, and the bounded
      Xception (ReLU6, clipped features and residual sums, 'SAME' padding of its strided separable
      convs: core/xception.py); the newest research/deeplab common.py, for quantized inference.
    aspp_with_concat_projection: project the concatenated ASPP branches (`concat_projection`, 1x1 conv
      + BN + ReLU, then dropout); False returns the concatenation itself (MobileNetV3 models).
    aspp_with_squeeze_and_excitation: the image-pooling branch becomes a gate instead of a branch:
      its 1x1 conv has a bias, no BN and a sigmoid, and multiplies the ASPP output (MobileNetV3's
      LR-ASPP, "Searching for MobileNetV3", section 6.3).
    aspp_convs_filters: channels of every ASPP conv (256; 128 in the MobileNetV3 models).
    decoder_use_sum_merge: the decoder adds the projected low-level feature (`decoder_filters`
      channels) to one conv of the upsampled ASPP output (`decoder_conv0`, or
      `decoder_split_sep_conv0` when separable) instead of concatenating and refining with two convs.
    decoder_filters: channels of the decoder convs (256; the number of classes in the MobileNetV3
      models, whose decoder output is the logits).
    decoder_output_is_logits: the decoder's convs are 1x1 with bias and no BN or activation, and its
      output is the logits (no `logits/semantic` layer); needs `decoder_output_stride` and
      `decoder_filters == num_classes`.
    image_se_uses_qsigmoid: the squeeze-and-excitation gate is `relu6(x + 3) * 0.16667`
      (`utils.q_sigmoid`) instead of a sigmoid.
  """

  model_variant: str = "mobilenet_v2"
  num_classes: int = 21
  output_stride: int = 16
  atrous_rates: Optional[Tuple[int, ...]] = None
  decoder_output_stride: Optional[int] = None
  multi_grid: Optional[Tuple[int, ...]] = None
  aspp_with_separable_conv: bool = True
  decoder_use_separable_conv: bool = True
  add_image_level_feature: bool = True
  aspp_with_batch_norm: bool = True
  depth_multiplier: float = 1.0
  divisible_by: Optional[int] = None
  image_pooling_crop_size: Optional[Tuple[int, int]] = None
  image_pooling_stride: Tuple[int, int] = (1, 1)
  dense_prediction_cell_config: Optional[Tuple[dict, ...]] = None
  nas_stem_output_num_conv_filters: int = 20
  nas_use_classification_head: bool = False
  nas_remove_os32_stride: bool = False
  logits_kernel_size: int = 1
  prediction_with_upsampled_logits: bool = True
  # The newest common.py head flags (MobileNetV3 configurations).
  use_bounded_activation: bool = False
  aspp_with_concat_projection: bool = True
  aspp_with_squeeze_and_excitation: bool = False
  aspp_convs_filters: int = 256
  decoder_use_sum_merge: bool = False
  decoder_filters: int = 256
  decoder_output_is_logits: bool = False
  image_se_uses_qsigmoid: bool = False

  def __post_init__(self):
    # Normalise lists (from JSON or flags) to tuples so that the options stay hashable and comparable.
    for name in ("atrous_rates", "multi_grid", "image_pooling_crop_size", "image_pooling_stride"):
      object.__setattr__(self, name, _as_tuple(getattr(self, name)))
    if self.dense_prediction_cell_config is not None:
      object.__setattr__(self, "dense_prediction_cell_config", tuple(
          _FrozenDict((k, _as_tuple(v)) for k, v in sorted(dict(branch).items()))
          for branch in self.dense_prediction_cell_config))
      if not self.aspp_with_batch_norm:
        raise ValueError("dense_prediction_cell_config needs aspp_with_batch_norm=True (the original "
                         "builds the cell in place of the ASPP head, which that flag turns off).")
    if self.decoder_output_stride is not None and isinstance(self.decoder_output_stride, (list, tuple)):
      if len(self.decoder_output_stride) != 1:
        raise ValueError(
            f"decoder_output_stride={self.decoder_output_stride}: only one decoder stage is supported "
            "(as in every published DeepLabv3+ model); give a single integer such as 4.")
      object.__setattr__(self, "decoder_output_stride", int(self.decoder_output_stride[0]))
    if self.output_stride not in VALID_OUTPUT_STRIDES:
      raise ValueError(f"output_stride={self.output_stride}: expected one of {VALID_OUTPUT_STRIDES}.")
    if self.num_classes < 1:
      raise ValueError(f"num_classes={self.num_classes}: expected a positive number of classes.")
    if self.decoder_output_stride is not None and not (
        0 < self.decoder_output_stride < self.output_stride):
      raise ValueError(
          f"decoder_output_stride={self.decoder_output_stride}: expected a stride smaller than "
          f"output_stride={self.output_stride} (4 in DeepLabv3+), or None for no decoder.")
    # Three unit rates in the last block; ResNet-18's block4 has two units (resnet_v1_beta.py).
    grid_length = 2 if self.model_variant.startswith("resnet_v1_18") else 3
    if self.multi_grid is not None and len(self.multi_grid) != grid_length:
      raise ValueError(f"multi_grid={self.multi_grid}: expected {grid_length} unit rates for "
                       f"{self.model_variant}, e.g. {(1, 2, 4)[:grid_length]}.")
    if self.image_pooling_crop_size is not None and len(self.image_pooling_crop_size) != 2:
      raise ValueError(
          f"image_pooling_crop_size={self.image_pooling_crop_size}: expected (height, width) in pixels.")
    if self.aspp_convs_filters < 1 or self.decoder_filters < 1:
      raise ValueError(f"aspp_convs_filters={self.aspp_convs_filters}, decoder_filters="
                       f"{self.decoder_filters}: expected positive numbers of channels.")
    if self.decoder_output_is_logits and (self.decoder_output_stride is None
                                          or self.decoder_filters != self.num_classes):
      raise ValueError(
          f"decoder_output_is_logits=True needs a decoder (decoder_output_stride="
          f"{self.decoder_output_stride}) whose output has num_classes={self.num_classes} channels "
          f"(decoder_filters={self.decoder_filters}).")


@dataclasses.dataclass(frozen=True)
class AugmentationOptions(_JsonOptions):
  """Training crops and random scaling (research/deeplab `train.py`; DeepLabv3, section 4.1).

  Attributes:
    train_crop_size: (height, width) of training crops in pixels; 513x513 in the papers.
    min_scale_factor, max_scale_factor, scale_factor_step_size: random scaling of training images.
    min_resize_value, max_resize_value, resize_factor, keep_aspect_ratio: resize every training image
      (and label) into a size range before the random scaling, as research/deeplab's common.py flags
      (`deeplab_tf.data.preprocess.resize_to_range`); None: no resize.
  """

  train_crop_size: Tuple[int, int] = (513, 513)
  min_scale_factor: float = 0.5
  max_scale_factor: float = 2.0
  scale_factor_step_size: float = 0.25
  min_resize_value: Optional[int] = None
  max_resize_value: Optional[int] = None
  resize_factor: Optional[int] = None
  keep_aspect_ratio: bool = True

  def __post_init__(self):
    object.__setattr__(self, "train_crop_size", _as_tuple(self.train_crop_size))
    if len(self.train_crop_size) != 2 or min(self.train_crop_size) < 1:
      raise ValueError(f"train_crop_size={self.train_crop_size}: expected (height, width) in pixels.")


@dataclasses.dataclass(frozen=True)
class SolverOptions(_JsonOptions):
  """Batch, steps, learning rate, momentum and weight decay (research/deeplab `train.py`).

  Attributes:
    train_batch_size: global batch size (split across replicas); 8, research/deeplab train.py's default
      (the papers train at 16, DeepLabv3 section 4.1; the experiments' flagfiles set it).
    training_number_of_steps: total optimizer steps.
    base_learning_rate: initial learning rate; 1e-4, research/deeplab train.py's default (for fine-tuning;
      the papers' 0.007 on train_aug is set by the experiments' flagfiles).
    learning_policy: 'poly', 'step' or 'cosine'.
    learning_power: exponent of the poly schedule (0.9).
    learning_rate_decay_step, learning_rate_decay_factor: for the 'step' policy.
    slow_start_step, slow_start_learning_rate: warm-up (steps, learning rate).
    slow_start_burnin_type: 'none' (constant `slow_start_learning_rate` for `slow_start_step` steps, the
      original's default) or 'linear' (ramp linearly from it to `base_learning_rate`).
    momentum: SGD momentum (0.9).
    weight_decay: L2 weight decay on convolution kernels (4e-5 for Xception/MobileNet, 1e-4 ResNet).
    last_layer_gradient_multiplier: gradient multiplier of the last layer(s)
      (`train_utils.get_model_gradient_multipliers`).
  """

  train_batch_size: int = 8
  training_number_of_steps: int = 30000
  base_learning_rate: float = 1e-4
  learning_policy: str = "poly"
  learning_power: float = 0.9
  learning_rate_decay_step: int = 2000
  learning_rate_decay_factor: float = 0.1
  slow_start_step: int = 0
  slow_start_learning_rate: float = 1e-4
  slow_start_burnin_type: str = "none"
  momentum: float = 0.9
  weight_decay: float = 4e-5
  last_layer_gradient_multiplier: float = 1.0

  def __post_init__(self):
    if self.train_batch_size < 1:
      raise ValueError(f"train_batch_size={self.train_batch_size}: expected at least 1.")
    if self.learning_policy not in ("poly", "step", "cosine"):
      raise ValueError(f"learning_policy={self.learning_policy!r}: expected 'poly', 'step' or 'cosine'.")
    if self.slow_start_burnin_type not in ("none", "linear"):
      raise ValueError(f"slow_start_burnin_type={self.slow_start_burnin_type!r}: expected 'none' or "
                       "'linear'.")
    if self.training_number_of_steps < 1:
      raise ValueError(
          f"training_number_of_steps={self.training_number_of_steps}: expected at least 1.")


@dataclasses.dataclass(frozen=True)
class LossOptions(_JsonOptions):
  """The pixel-wise loss (research/deeplab `train_utils.add_softmax_cross_entropy_loss_for_each_scale`).

  Attributes:
    top_k_percent_pixels: hard pixel mining: keep this fraction of the highest pixel losses (1.0 = all).
    hard_example_mining_step: steps over which top-k mining is ramped in from all pixels.
    upsample_logits: compute the loss on logits upsampled to the label size (True) or on labels
      downsampled to the logits (False).
    label_weights: per-class loss weights, one per class (research/deeplab common.py `--label_weights`,
      the `loss_weight` list of `train_utils.add_softmax_cross_entropy_loss_for_each_scale`); None
      weights every class 1.
  """

  top_k_percent_pixels: float = 1.0
  hard_example_mining_step: int = 0
  upsample_logits: bool = True
  label_weights: Optional[Tuple[float, ...]] = None

  def __post_init__(self):
    object.__setattr__(self, "label_weights", _as_tuple(self.label_weights))
    if not 0.0 < self.top_k_percent_pixels <= 1.0:
      raise ValueError(f"top_k_percent_pixels={self.top_k_percent_pixels}: expected a value in (0, 1].")
    if self.label_weights is not None and min(self.label_weights, default=0.0) < 0:
      raise ValueError(f"label_weights={self.label_weights}: expected non-negative weights.")


@dataclasses.dataclass(frozen=True)
class BatchNormOptions(_JsonOptions):
  """How BatchNorm trains (`deeplab_tf.training.batch_norm` applies all three).

  Attributes:
    fine_tune_batch_norm: train BatchNorm (True at batch >= 12); False freezes it in inference mode.
    batch_norm_decay: research/deeplab common.py `--batch_norm_decay` (default 0.9997). At 0.9997
      every BatchNorm keeps the original's decay (0.9997 in Xception, MobileNet and the head, DeepLabv3
      section 4.1; ResNet's own 0.95); any other value sets the decay (Keras momentum) of every
      BatchNorm moving average. At 0.9997 the moving statistics need thousands of steps to forget their
      initial values, so a run of a few hundred steps from scratch (our demo) predicts from statistics
      it never learned; 0.9 or 0.99 fits such short runs.
    sync_batch_norm: synchronise BatchNorm batch statistics across replicas.
  """

  fine_tune_batch_norm: bool = True
  batch_norm_decay: float = ORIGINAL_BATCH_NORM_DECAY
  sync_batch_norm: bool = False

  @property
  def batch_norm_decay_override(self) -> Optional[float]:
    """`batch_norm_decay` when it differs from the original's default, else None (keep every BN's own)."""
    return None if self.batch_norm_decay == ORIGINAL_BATCH_NORM_DECAY else self.batch_norm_decay

  def __post_init__(self):
    if not 0.0 <= self.batch_norm_decay < 1.0:
      raise ValueError(f"batch_norm_decay={self.batch_norm_decay}: expected a value in [0, 1), e.g. 0.9.")


@dataclasses.dataclass(frozen=True)
class InitializationOptions(_JsonOptions):
  """Where the weights start from (research/deeplab `train_utils.get_model_init_fn`).

  Attributes:
    tf_initial_checkpoint: weights to start from when the log directory has no checkpoint yet: a
      `.keras` / `.weights.h5` file, one of our TF2 checkpoints (prefix or log directory) or a
      research/deeplab model-zoo TF1 checkpoint prefix.
    initialize_last_layer: also restore the last layer(s) from `tf_initial_checkpoint` (False when
      fine-tuning on a dataset with other classes).
    last_layers_contain_logits_only: the "last layers" are only `logits`; otherwise also the ASPP
      (`image_pooling`, `aspp*`, `concat_projection`) and `decoder` (`model.get_extra_layer_scopes`);
      also decides which variables get `last_layer_gradient_multiplier`.
  """

  tf_initial_checkpoint: Optional[str] = None
  initialize_last_layer: bool = True
  last_layers_contain_logits_only: bool = False


@dataclasses.dataclass(frozen=True)
class CheckpointOptions(_JsonOptions):
  """When checkpoints, summaries and log lines are written.

  Attributes:
    save_interval_steps: checkpoint every this many steps.
    save_interval_secs: also checkpoint when this many seconds have passed since the last checkpoint
      (research/deeplab's only interval, 1200 s); 0 turns the time-based interval off.
    max_to_keep: checkpoints kept.
    save_summaries_steps: TensorBoard scalars every this many steps.
    save_summaries_images: also write image, label and prediction image summaries.
    log_steps: report progress every this many steps.
  """

  save_interval_steps: int = 1000
  save_interval_secs: float = 1200.0
  max_to_keep: int = 5
  save_summaries_steps: int = 100
  save_summaries_images: bool = False
  log_steps: int = 10

  def __post_init__(self):
    if self.save_interval_steps < 1 or self.save_summaries_steps < 1 or self.log_steps < 1:
      raise ValueError(
          f"save_interval_steps={self.save_interval_steps}, save_summaries_steps="
          f"{self.save_summaries_steps}, log_steps={self.log_steps}: expected at least 1 each.")
    if self.save_interval_secs < 0:
      raise ValueError(f"save_interval_secs={self.save_interval_secs}: expected seconds >= 0 "
                       "(0 = step-based checkpoints only).")


@dataclasses.dataclass(frozen=True)
class ExecutionOptions(_JsonOptions):
  """How the training step runs: precision, compilation, steps per host round trip, seed.

  Attributes:
    mixed_precision: Keras dtype policy: 'float32', 'mixed_bfloat16' or 'mixed_float16' (with loss
      scaling); logits and loss stay float32.
    steps_per_loop: optimizer steps run inside one `tf.function` call; the host sees the loss (NaN
      check, logs, summaries) only at the end of each loop (Orbit's `steps_per_loop`).
    jit_compile: compile the per-replica training computation (forward, loss, gradients) with XLA.
    seed: random seed of the model initialisation and of the input pipeline; None is unseeded.
    kernel_policy: how the network is computed here (`KERNEL_POLICIES`; 'auto': the measured CPU
      kernels on CPUs, plain arithmetic on GPUs and TPUs). Checkpoints do not depend on it.
  """

  mixed_precision: str = "float32"
  steps_per_loop: int = 1
  jit_compile: bool = False
  seed: Optional[int] = None
  kernel_policy: str = "auto"

  def __post_init__(self):
    check_mixed_precision(self.mixed_precision)
    check_kernel_policy(self.kernel_policy)
    if self.steps_per_loop < 1:
      raise ValueError(f"steps_per_loop={self.steps_per_loop}: expected at least 1.")


# TrainOptions' groups, by concern; each field name is a research/deeplab flag name (or ours).
TRAIN_OPTION_GROUPS = {
    "augmentation": AugmentationOptions,
    "solver": SolverOptions,
    "loss": LossOptions,
    "batch_norm": BatchNormOptions,
    "initialization": InitializationOptions,
    "checkpointing": CheckpointOptions,
    "execution": ExecutionOptions,
}


def _train_field_groups() -> dict:
  return {f.name: group for group, cls in TRAIN_OPTION_GROUPS.items()
          for f in dataclasses.fields(cls)}


@dataclasses.dataclass(frozen=True, init=False)
class TrainOptions(_JsonOptions):
  """How to train: research/deeplab `train.py`'s flags, grouped by concern.

  Every field of every group is named as the flag that sets it (`flag_names()`), so the binary builds
  the options from the flags by name. Construct either from groups or from flag names, or both:
  `TrainOptions(base_learning_rate=1e-4, train_crop_size=(65, 65))`,
  `TrainOptions(solver=SolverOptions(...))`; `replace` takes flag names as well.

  Attributes:
    augmentation: `AugmentationOptions` (crops and random scaling).
    solver: `SolverOptions` (batch, steps, learning rate, momentum, weight decay).
    loss: `LossOptions` (hard pixel mining, class weights, upsampled logits).
    batch_norm: `BatchNormOptions` (fine-tuning, decay, synchronisation).
    initialization: `InitializationOptions` (`tf_initial_checkpoint` and the last layers).
    checkpointing: `CheckpointOptions` (checkpoint, summary and log intervals).
    execution: `ExecutionOptions` (precision, XLA, steps per loop, seed).

  Raises:
    ValueError: an unknown flag name, or a value a group refuses (the message names the flag).
  """

  augmentation: AugmentationOptions
  solver: SolverOptions
  loss: LossOptions
  batch_norm: BatchNormOptions
  initialization: InitializationOptions
  checkpointing: CheckpointOptions
  execution: ExecutionOptions

  def __init__(self, augmentation: Optional[AugmentationOptions] = None,
               solver: Optional[SolverOptions] = None, loss: Optional[LossOptions] = None,
               batch_norm: Optional[BatchNormOptions] = None,
               initialization: Optional[InitializationOptions] = None,
               checkpointing: Optional[CheckpointOptions] = None,
               execution: Optional[ExecutionOptions] = None, **flags: Any):
    given = dict(augmentation=augmentation, solver=solver, loss=loss, batch_norm=batch_norm,
                 initialization=initialization, checkpointing=checkpointing, execution=execution)
    field_groups = _train_field_groups()
    unknown = sorted(set(flags) - set(field_groups))
    if unknown:
      raise ValueError(f"Unknown TrainOptions field(s) {unknown}; expected flag names among "
                       f"{sorted(field_groups)} or the groups {sorted(TRAIN_OPTION_GROUPS)}.")
    for group, cls in TRAIN_OPTION_GROUPS.items():
      value = given[group]
      if isinstance(value, dict):
        value = cls.from_dict(value)
      value = value if value is not None else cls()
      changes = {k: v for k, v in flags.items() if field_groups[k] == group}
      object.__setattr__(self, group, dataclasses.replace(value, **changes) if changes else value)

  @staticmethod
  def flag_names() -> Tuple[str, ...]:
    """The names of every field of every group: the flags that set them."""
    return tuple(_train_field_groups())

  def to_flat_dict(self) -> dict:
    """`{flag name: value}` over every group."""
    return {k: v for group in TRAIN_OPTION_GROUPS for k, v in getattr(self, group).to_dict().items()}

  @classmethod
  def from_dict(cls, values: dict) -> "TrainOptions":
    """From `to_dict()`'s nested form, from flag names (`to_flat_dict()`), or a mix of both."""
    return cls(**{k: _as_tuple(v) if k not in TRAIN_OPTION_GROUPS else v for k, v in values.items()})

  def replace(self, **changes: Any) -> "TrainOptions":
    """A copy with some groups and/or flag-named fields changed."""
    groups = {g: getattr(self, g) for g in TRAIN_OPTION_GROUPS}
    groups.update({k: changes.pop(k) for k in list(changes) if k in TRAIN_OPTION_GROUPS})
    return TrainOptions(**groups, **changes)


@dataclasses.dataclass(frozen=True)
class EvalOptions(_JsonOptions):
  """How to evaluate, with research/deeplab's `eval.py` flag names.

  Attributes:
    eval_crop_size: (height, width) in pixels the images are padded to (mean pixel) before inference;
      None runs each image at its own size. 513x513 for VOC, 1025x2049 for Cityscapes.
    eval_scales: image scales whose softmax probabilities are averaged (multi-scale inference).
    add_flipped_images: also average over the left-right flipped images at every scale (also at a
      single scale, which the original silently skipped).
    sliding_window: images larger than `eval_crop_size` are predicted window by window (crop-sized
      windows, overlapping by `sliding_window_overlap`, probabilities averaged where they overlap);
      when False such an image is an error, as the crop must cover the largest image in the original.
    sliding_window_overlap: minimum fraction in [0, 1) of a window shared with its neighbour.
    jit_compile: compile the network with XLA (one compilation per input size: for fixed-size inputs,
      e.g. with `eval_crop_size`, or on TPUs).
    kernel_policy: how the network is computed here (`KERNEL_POLICIES`, as in `ExecutionOptions`).
  """

  eval_crop_size: Optional[Tuple[int, int]] = None
  eval_scales: Tuple[float, ...] = (1.0,)
  add_flipped_images: bool = False
  sliding_window: bool = False
  sliding_window_overlap: float = 1.0 / 3.0
  jit_compile: bool = False
  kernel_policy: str = "auto"

  def __post_init__(self):
    object.__setattr__(self, "eval_crop_size", _as_tuple(self.eval_crop_size))
    object.__setattr__(self, "eval_scales", tuple(float(s) for s in _as_tuple(self.eval_scales)))
    if not self.eval_scales or min(self.eval_scales) <= 0:
      raise ValueError(f"eval_scales={self.eval_scales}: expected one or more positive scales.")
    if self.eval_crop_size is not None and (len(self.eval_crop_size) != 2 or min(self.eval_crop_size) < 1):
      raise ValueError(f"eval_crop_size={self.eval_crop_size}: expected (height, width) in pixels.")
    if self.sliding_window and self.eval_crop_size is None:
      raise ValueError("sliding_window=True needs eval_crop_size, the window size.")
    check_kernel_policy(self.kernel_policy)
    if not 0.0 <= self.sliding_window_overlap < 1.0:
      raise ValueError(f"sliding_window_overlap={self.sliding_window_overlap}: expected a value in [0, 1).")
