"""The NAS encoders `nas_pnasnet` (PNASNet-5, Liu et al., ECCV 2018) and `nas_hnasnet` (Auto-DeepLab,
Liu et al., CVPR 2019), as research/deeplab builds them (`core/nas_network.py`, `core/nas_cell.py`,
`core/nas_genotypes.py`).

- Stem: `conv0` 3x3/2 64 + `conv0_bn` + ReLU, `conv1` 3x3 64 + `conv1_bn`, ReLU, `conv2` 3x3/2 128 +
  `conv2_bn` (`resnet_utils.conv2d_same`: fixed padding when strided). The stem output (`Stem`, output
  stride 4) and `conv1_bn` are the first two "previous cell outputs".
- 12 cells on a `backbone` path of levels (0..3 = output stride 4..32). A cell one level up is strided
  (its ops on the cell inputs use stride 2) and doubles the filters; one level down is preceded by a
  bilinear upsampling (align_corners, size `2 * size - 1`) of its input and halves them. Filters
  `F = nas_stem_output_num_conv_filters (20) * scaling`, scaling starting at 1 (x2 for PNASNet's first
  cell, which is strided).
- Cell (`NASBaseCell`): `prev_1x1` + `prev_bn` on the ReLU of the cell before last (resized to this
  cell's input first) when its channels are not F; `1x1` + `beginning_bn` on the ReLU of the input; then
  five `comb_iter_<i>` blocks, each the sum (`combine`) of a `left` and a `right` operation on earlier
  hidden states: `separable_KxK_2` (twice ReLU, separable conv K with depthwise and pointwise weights in
  one slim layer, `bn_sep_KxK_<n>`), `atrous_KxK` (ReLU, KxK conv at rate 2, or a half-size resize and
  rate 1 when strided, `bn_atr_KxK`), `max_pool_3x3` (SAME) or `none` (identity, or ReLU + 1x1/stride +
  `bn_1` when strided). The output (`cell_output`) concatenates the five combinations: 5F channels.
- Encoder output: ReLU of the last cell, or with `nas_use_classification_head` strided (or atrous,
  as `output_stride` asks) 3x3 convs `downsample_os<s>_conv`/`_bn` (256, 512, 1024 filters at strides
  8, 16, 32) up to output stride 32 and a 1x1 conv `classification_head_conv`/`_bn` of 2048, with ReLU.
  `nas_remove_os32_stride` keeps the level-3 cells at the resolution of level 2.
- Convolutions have no bias; BatchNorm decay 0.9997, epsilon 1e-3 (`nas_arg_scope` as
  `feature_extractor.extract_features` sets it); kernels `variance_scaling(1/3, FAN_IN, uniform)`.
  Inputs are preprocessed to [-1, 1].
- Drop path (training-time regularisation, `drop_path_keep_prob`) is not built: the original's default
  keep probability is 1.0, and it is off at inference.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_tf.image_ops import resize_bilinear_align_corners
from deeplab_tf.model import layers
from deeplab_tf.model.layers import BatchNormParams

NAS_BN = BatchNormParams(decay=0.9997, epsilon=1e-3)
FILTER_SCALING_RATE = 2.0


def _initializer():
  # nas_arg_scope: variance_scaling_initializer(factor=1/3, mode='FAN_IN', uniform=True).
  return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


@dataclasses.dataclass(frozen=True)
class NASCellSpec:
  """A cell genotype: ten operations (left, right of five combinations), the hidden state each reads
  (0 = the cell input after `1x1`, 1 = the cell before last, 2.. = earlier combinations), and which of
  the seven hidden states are used (and so left out of the output)."""

  operations: Tuple[str, ...]
  hiddenstate_indices: Tuple[int, ...]
  used_hiddenstates: Tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class NASVariant:
  """A `model_variant`: its variable scope, cell, backbone levels per output stride (None: fixed) and
  decoder end points (`feature_extractor.networks_to_feature_maps`)."""

  scope: str
  cell: NASCellSpec
  backbones: Dict[object, Tuple[int, ...]]
  decoder_end_points: Dict[int, str]


# nas_genotypes.PNASCell.
PNAS_CELL = NASCellSpec(
    operations=("separable_5x5_2", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3",
                "separable_5x5_2", "separable_3x3_2", "separable_3x3_2", "max_pool_3x3",
                "separable_3x3_2", "none"),
    hiddenstate_indices=(1, 1, 0, 0, 0, 0, 4, 0, 1, 0),
    used_hiddenstates=(1, 1, 0, 0, 0, 0, 0))
# nas_network.hnasnet: the Auto-DeepLab cell.
HNAS_CELL = NASCellSpec(
    operations=("atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3",
                "separable_3x3_2", "separable_3x3_2", "separable_5x5_2", "separable_5x5_2",
                "separable_5x5_2", "atrous_5x5"),
    hiddenstate_indices=(1, 0, 1, 0, 3, 1, 4, 2, 3, 5),
    used_hiddenstates=(1, 1, 0, 0, 0, 0, 0))

NAS_VARIANTS = {
    "nas_pnasnet": NASVariant(
        "pnasnet", PNAS_CELL,
        {8: (1,) * 12, 16: (1, 1, 1, 1) + (2,) * 8, 32: (1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)},
        {4: "Stem", 8: "Cell_3", 16: "Cell_7"}),
    # Auto-DeepLab's searched path; its features are at output stride 8 whatever output_stride says.
    "nas_hnasnet": NASVariant(
        "hnasnet", HNAS_CELL, {None: (0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1)},
        {4: "Cell_2", 8: "Cell_5", 16: "Cell_7"}),
}
CLASSIFICATION_HEAD_FILTERS = {8: 256, 16: 512, 32: 1024}


@keras.saving.register_keras_serializable(package="deeplab_tf")
class ScaleResize(keras.layers.Layer):
  """Bilinear resize (align_corners) to `scale_dimension(size, scale)` = `int((size - 1) * scale + 1)`
  per spatial dimension (research/deeplab `utils.scale_dimension`): 2 -> `2 * size - 1`, 0.5 ->
  `(size - 1) // 2 + 1`. Input and output `[batch, h, w, c]`."""

  def __init__(self, scale: float, **kwargs):
    super().__init__(**kwargs)
    self.scale = float(scale)

  def call(self, x):
    size = tf.cast(tf.cast(tf.shape(x)[1:3] - 1, tf.float32) * self.scale + 1.0, tf.int32)
    return resize_bilinear_align_corners(x, size)

  def compute_output_shape(self, input_shape):
    size = [None if d is None else int((d - 1) * self.scale + 1) for d in input_shape[1:3]]
    return (input_shape[0], *size, input_shape[3])

  def get_config(self):
    return {**super().get_config(), "scale": self.scale}


def _bn(x, scope: str):
  """slim.batch_norm under its own scope (`conv0_bn`, `beginning_bn`, ...), not `<conv>/BatchNorm`."""
  return keras.layers.BatchNormalization(momentum=NAS_BN.decay, epsilon=NAS_BN.epsilon,
                                         name=layers.scope_to_layer_name(scope))(x)


def _conv(x, filters: int, kernel_size: int, scope: str, stride: int = 1, rate: int = 1):
  """A bias-free conv with `resnet_utils.conv2d_same` padding (fixed when strided)."""
  return layers.conv2d_same(x, filters, kernel_size, stride, rate, scope, bn_params=None,
                            activation=False, use_bias=False, kernel_initializer=_initializer())


def _separable(x, filters: int, kernel_size: int, stride: int, scope: str):
  """slim.separable_conv2d with num_outputs (one layer: depthwise_weights + pointwise_weights), padded
  as `separable_conv2d_same` (fixed padding when strided)."""
  name = layers.scope_to_layer_name(scope)
  padding = "same"
  if stride > 1:
    x = layers.fixed_padding(x, kernel_size, name=name + ".pad")
    padding = "valid"
  return keras.layers.SeparableConv2D(
      filters, kernel_size, strides=stride, padding=padding, depth_multiplier=1, use_bias=False,
      depthwise_initializer=_initializer(), pointwise_initializer=_initializer(), name=name)(x)


def _operation(x, operation: str, stride: int, filters: int, scope: str):
  """One searched operation (`NASBaseCell._apply_conv_operation`) on a hidden state of `filters`
  channels."""
  channels = x.shape[-1]
  if operation.startswith("separable"):
    kernel_size = int(operation.split("x")[0][-1])
    for n in range(1, int(operation.split("_")[-1]) + 1):
      x = layers.relu(x)
      x = _separable(x, filters, kernel_size, stride, f"{scope}/separable_{kernel_size}x{kernel_size}_{n}")
      x = _bn(x, f"{scope}/bn_sep_{kernel_size}x{kernel_size}_{n}")
      stride = 1
  elif operation.startswith("atrous"):
    kernel_size = int(operation.split("x")[0][-1])
    x = layers.relu(x)
    if stride == 2:
      x = ScaleResize(0.5, name=layers.scope_to_layer_name(scope + "/downsample"))(x)
      x = _conv(x, filters, kernel_size, f"{scope}/atrous_{kernel_size}x{kernel_size}")
    else:
      x = _conv(x, filters, kernel_size, f"{scope}/atrous_{kernel_size}x{kernel_size}", rate=2)
    x = _bn(x, f"{scope}/bn_atr_{kernel_size}x{kernel_size}")
  elif operation == "none":
    if stride > 1 or channels != filters:
      x = layers.relu(x)
      x = _conv(x, filters, 1, f"{scope}/1x1", stride=stride)
      x = _bn(x, f"{scope}/bn_1")
  elif operation == "max_pool_3x3":
    x = keras.layers.MaxPooling2D(3, strides=stride, padding="same",
                                  name=layers.scope_to_layer_name(scope + "/max_pool"))(x)
    if channels != filters:
      x = _conv(x, filters, 1, f"{scope}/1x1")
      x = _bn(x, f"{scope}/bn_1")
  else:
    raise ValueError(f"NAS operation {operation!r} is not implemented.")
  return x


def nas_cell(net, prev_layer, spec: NASCellSpec, filters: int, stride: int, scope: str,
             resize_prev: bool):
  """One cell: `[batch, h, w, c]` input and the cell before last -> `[batch, h/stride, w/stride, 5F]`."""
  name = layers.scope_to_layer_name(scope)
  if resize_prev:
    prev_layer = layers.ResizeLike(name=name + ".prev_resize")([prev_layer, net])
  if prev_layer.shape[-1] != filters:
    prev_layer = _bn(_conv(layers.relu(prev_layer), filters, 1, scope + "/prev_1x1"), scope + "/prev_bn")
  net = _bn(_conv(layers.relu(net), filters, 1, scope + "/1x1"), scope + "/beginning_bn")
  states = [net, prev_layer]
  for i in range(len(spec.operations) // 2):
    combination = []
    for side, k in (("left", 2 * i), ("right", 2 * i + 1)):
      index = spec.hiddenstate_indices[k]
      combination.append(_operation(states[index], spec.operations[k], stride if index < 2 else 1,
                                    filters, f"{scope}/comb_iter_{i}/{side}"))
    states.append(keras.layers.Add(name=f"{name}.comb_iter_{i}.combine")(combination))
  unused = [s for s, used in zip(states, spec.used_hiddenstates) if not used]
  return keras.layers.Concatenate(axis=-1, name=name + ".cell_output")(unused)


def build_nas(images, model_variant: str, output_stride: int, num_conv_filters: int = 20,
              use_classification_head: bool = False, remove_os32_stride: bool = False
              ) -> Dict[str, object]:
  """Builds `nas_pnasnet` or `nas_hnasnet` on preprocessed images.

  Args:
    images: `[batch, height, width, 3]` float tensor in [-1, 1].
    model_variant: 'nas_pnasnet' or 'nas_hnasnet'.
    output_stride: PNASNet: 8, 16 or 32 chooses the backbone path. Auto-DeepLab's path is fixed at 8;
      with the classification head, the stride the head's downsampling convs stop striding at (it
      continues with atrous rates), as the original.
    num_conv_filters: filters of the first level (`nas_stem_output_num_conv_filters`, 20).
    use_classification_head: `nas_use_classification_head`.
    remove_os32_stride: `nas_remove_os32_stride`.

  Returns:
    `{"Stem", "Cell_<i>": features, "decoder_end_point/<4|8|16>": the decoder features the original
    reads (`Stem`/`Cell_3`/`Cell_7` for PNASNet, `Cell_2`/`Cell_5`/`Cell_7` for Auto-DeepLab),
    "low_level": the stride-4 one, "encoder_output": `[batch, h, w, 5F or 2048]`}`.

  Raises:
    ValueError: unknown variant or unsupported output_stride.
  """
  if model_variant not in NAS_VARIANTS:
    raise ValueError(f"model_variant={model_variant!r}: expected one of {sorted(NAS_VARIANTS)}.")
  variant = NAS_VARIANTS[model_variant]
  backbone = variant.backbones.get(None, variant.backbones.get(output_stride))
  if backbone is None:
    raise ValueError(f"output_stride={output_stride}: {model_variant} supports "
                     f"{sorted(variant.backbones)} (research/deeplab nas_network.pnasnet).")
  root = variant.scope
  endpoints: Dict[str, object] = {}
  x = _bn(_conv(images, 64, 3, f"{root}/conv0", stride=2), f"{root}/conv0_bn")
  x = _bn(_conv(layers.relu(x), 64, 3, f"{root}/conv1"), f"{root}/conv1_bn")
  # (tensor, resolution tag): a new tag wherever the resolution changes; the cell before last is resized
  # to the cell's input where their tags differ (the original compares their static widths).
  outputs: List[Tuple[object, int]] = [(x, 1)]
  x = _bn(_conv(layers.relu(x), 128, 3, f"{root}/conv2", stride=2), f"{root}/conv2_bn")
  endpoints["Stem"] = x
  tag = 2
  outputs.append((x, tag))
  scaling = 1.0
  for cell_num, level in enumerate(backbone):
    stride = 1
    previous_level = 0 if cell_num == 0 else backbone[cell_num - 1]
    if level == previous_level + 1:
      stride = 1 if (level == 3 and remove_os32_stride) else 2
      scaling *= FILTER_SCALING_RATE
    elif level == previous_level - 1:
      if not (previous_level == 3 and remove_os32_stride):
        x = ScaleResize(2.0, name=layers.scope_to_layer_name(f"{root}/cell_{cell_num}/upsample"))(x)
        tag += 1
      scaling /= FILTER_SCALING_RATE
    prev_layer, prev_tag = outputs[-2]
    x = nas_cell(x, prev_layer, variant.cell, int(num_conv_filters * scaling), stride,
                 f"{root}/cell_{cell_num}", resize_prev=prev_tag != tag)
    if stride > 1:
      tag += 1
    endpoints[f"Cell_{cell_num}"] = x
    outputs.append((x, tag))
  x = layers.relu(x)
  if use_classification_head:
    x = _classification_head(x, backbone, output_stride, root)
  for stride, name in variant.decoder_end_points.items():
    endpoints[f"decoder_end_point/{stride}"] = endpoints[name]
  endpoints["low_level"] = endpoints["decoder_end_point/4"]
  endpoints["encoder_output"] = x
  return endpoints


def _classification_head(x, backbone: Sequence[int], output_stride: int, root: str):
  scale = 2 + backbone[-1]
  current = 2 ** scale
  if output_stride % current:
    raise ValueError(f"output_stride={output_stride}: must be a multiple of the backbone's output "
                     f"stride {current} with nas_use_classification_head.")
  remaining = output_stride // current
  rate = 1
  if current != 32:
    for i in range(5 - scale):
      target = 2 ** (scale + 1 + i)
      stride = 1
      if remaining != 1:
        stride, remaining = 2, remaining // 2
      else:
        rate *= 2
      scope = f"{root}/downsample_os{target}"
      x = layers.relu(_bn(_conv(x, CLASSIFICATION_HEAD_FILTERS[target], 3, scope + "_conv", stride=stride,
                                rate=rate), scope + "_bn"))
  return layers.relu(_bn(_conv(x, 2048, 1, f"{root}/classification_head_conv"),
                         f"{root}/classification_head_bn"))
