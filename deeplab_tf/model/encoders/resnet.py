"""DeepLab's ResNet-v1-18/50/101 and their "beta" variants (research/deeplab `core/resnet_v1_beta.py`).

As the original builds them (it branched slim's `nets/resnet_v1.py`):
- Bottleneck unit (`bottleneck`): 1x1 conv (BN+ReLU) -> 3x3 conv carrying the unit's stride and atrous
  rate (`conv2d_same`: fixed padding when strided, BN+ReLU) -> 1x1 conv x4 (BN, no activation); the
  shortcut is a 1x1 conv with the stride (BN, no activation) when the depth changes, otherwise the input
  subsampled by the stride (`resnet_utils.subsample`, a 1x1 max-pool); output `relu(shortcut + residual)`.
  Unlike slim's resnet_v1, the stride sits on the 3x3 conv, not the first 1x1.
- Blocks of [3, 4, 6, 3] (50) or [3, 4, 23, 3] (101) units with base depths 64/128/256/512; blocks 1-3
  stride 2 in their last unit, block4 stride 1 with unit rates `multi_grid`.
- Root: plain ResNet a 7x7/2 conv `conv1` (64); beta (`root_block_fn_for_beta_variant`) three 3x3 convs
  `conv1_1` (64, stride 2), `conv1_2` (64), `conv1_3` (128). Then `pool1`: 3x3 max-pool, stride 2, 'SAME'
  (`resnet_arg_scope` sets max_pool2d padding to 'SAME').
- output_stride: the root's stride 4 counts first; `resnet_utils.stack_blocks_dense` then replaces
  every stride after the target by an atrous rate (DeepLabv3, section 3.1).
- BN: decay 0.95, epsilon 1e-5, with scale (`feature_extractor.extract_features` calls
  `resnet_arg_scope(batch_norm_decay=0.95, batch_norm_epsilon=1e-5, batch_norm_scale=True)`); conv
  kernels He-initialised (`variance_scaling_initializer`).
- Variable scopes: `resnet_v1_50` or `resnet_v1_101` for both the plain and the beta variant
  (`feature_extractor.name_scope`), `<root>/block<B>/unit_<U>/bottleneck_v1/{conv1,conv2,conv3,shortcut}`.
- ResNet-v1-18 (`resnet_v1_18`, `resnet_v1_18_beta`, scope `resnet_v1_18`): two `lite_bottleneck` units
  per block (`<unit>/lite_bottleneck_v1/{conv1,conv2,shortcut}`): a 3x3 conv (BN+ReLU) then a 3x3 conv
  carrying the stride (BN, no activation), both at the unit's atrous rate, plus the shortcut as above;
  output depths 64/128/256/512, block4 has `multi_grid` of length 2 (default (1, 1)). The beta root is
  `root_block_fn_for_beta_variant` with `root_depth_multiplier=0.25`: `conv1_1`/`conv1_2`/`conv1_3` of
  16/16/32 channels (the default `feature_extractor` keeps), so block1/unit_1 has a shortcut conv. The
  decoder reads `block{1,2,3}/unit_1/lite_bottleneck_v1/conv2` (`networks_to_feature_maps`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.layers import BatchNormParams

# `resnet_arg_scope` as `feature_extractor.extract_features` configures it.
RESNET_BN = BatchNormParams(decay=0.95, epsilon=1e-5)


def _initializer():
  # slim.variance_scaling_initializer(): factor 2.0, FAN_IN, truncated normal.
  return keras.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal")


@dataclasses.dataclass(frozen=True)
class ResNetVariant:
  """One ResNet-v1 model_variant: its variable scope, units per block, root and decoder end points."""

  scope: str
  units_per_block: Tuple[int, int, int, int]
  beta: bool
  lite: bool = False  # ResNet-18's `lite_bottleneck` units (two 3x3 convs, no expansion).

  @property
  def num_multi_grid(self) -> int:
    """Units of block4, i.e. the length of `multi_grid` (`_DEFAULT_MULTI_GRID[_RESNET_18]`)."""
    return self.units_per_block[3]

  def decoder_end_points(self) -> Dict[int, str]:
    """`networks_to_feature_maps` in core/feature_extractor.py: decoder feature per output stride."""
    if self.lite:
      return {s: f"block{b}/unit_1/lite_bottleneck_v1/conv2" for s, b in ((4, 1), (8, 2), (16, 3))}
    return {
        4: "block1/unit_2/bottleneck_v1/conv3",
        8: "block2/unit_3/bottleneck_v1/conv3",
        16: f"block3/unit_{self.units_per_block[2] - 1}/bottleneck_v1/conv3",
    }


RESNET_VARIANTS = {
    "resnet_v1_18": ResNetVariant("resnet_v1_18", (2, 2, 2, 2), beta=False, lite=True),
    "resnet_v1_18_beta": ResNetVariant("resnet_v1_18", (2, 2, 2, 2), beta=True, lite=True),
    "resnet_v1_50": ResNetVariant("resnet_v1_50", (3, 4, 6, 3), beta=False),
    "resnet_v1_50_beta": ResNetVariant("resnet_v1_50", (3, 4, 6, 3), beta=True),
    "resnet_v1_101": ResNetVariant("resnet_v1_101", (3, 4, 23, 3), beta=False),
    "resnet_v1_101_beta": ResNetVariant("resnet_v1_101", (3, 4, 23, 3), beta=True),
}

_BASE_DEPTHS = (64, 128, 256, 512)
# `resnet_v1_18_beta`'s default `root_depth_multiplier`: its three root convs have 16/16/32 channels.
_RESNET_18_ROOT_DEPTH_MULTIPLIER = 0.25


def bottleneck(x, depth: int, depth_bottleneck: int, stride: int, rate: int, scope: str,
               endpoints: Dict[str, object]):
  """One bottleneck unit (`bottleneck` in core/resnet_v1_beta.py).

  Args:
    x: `[batch, height, width, channels]` input.
    depth: output channels (4 x `depth_bottleneck`).
    depth_bottleneck: channels of the 1x1 and 3x3 convs.
    stride: stride of the 3x3 conv and of the shortcut; must be 1 when `rate` > 1.
    rate: atrous rate of the 3x3 conv (block rate x unit rate).
    scope: `<root>/block<B>/unit_<U>/bottleneck_v1`.
    endpoints: receives `<scope>/conv3` (the BN output of conv3, before the sum: slim collects each
      conv's output under its scope, which is what DeepLab's decoder reads) and `<scope>`.

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), depth]`, ReLU-activated.
  """
  shortcut = _shortcut(x, depth, stride, scope)
  residual = layers.conv2d_same(x, depth_bottleneck, 1, 1, 1, scope + "/conv1", bn_params=RESNET_BN,
                                kernel_initializer=_initializer())
  residual = layers.conv2d_same(residual, depth_bottleneck, 3, stride, rate, scope + "/conv2",
                                bn_params=RESNET_BN, kernel_initializer=_initializer())
  residual = layers.conv2d_same(residual, depth, 1, 1, 1, scope + "/conv3", bn_params=RESNET_BN,
                                activation=False, kernel_initializer=_initializer())
  endpoints[scope + "/conv3"] = residual
  return _sum_and_relu(shortcut, residual, scope, endpoints)


def _shortcut(x, depth: int, stride: int, scope: str):
  """The unit's shortcut: the input subsampled when the depth is unchanged, else a 1x1 conv + BN."""
  if x.shape[-1] == depth:
    # resnet_utils.subsample: a 1x1 max-pool with the stride, i.e. every stride-th pixel from the first.
    return x if stride == 1 else keras.layers.MaxPooling2D(
        1, strides=stride, padding="same",
        name=layers.scope_to_layer_name(scope) + ".shortcut_subsample")(x)
  return layers.conv2d_same(x, depth, 1, stride, 1, scope + "/shortcut", bn_params=RESNET_BN,
                            activation=False, kernel_initializer=_initializer())


def _sum_and_relu(shortcut, residual, scope: str, endpoints: Dict[str, object]):
  """`relu(shortcut + residual)`, recorded as the unit's end point `<scope>`."""
  out = keras.layers.Add(name=layers.scope_to_layer_name(scope) + ".add")([shortcut, residual])
  out = layers.relu(out, scope + "/relu")
  endpoints[scope] = out
  return out


def lite_bottleneck(x, depth: int, stride: int, rate: int, scope: str, endpoints: Dict[str, object]):
  """One ResNet-18 unit (`lite_bottleneck` in core/resnet_v1_beta.py).

  Args:
    x: `[batch, height, width, channels]` input.
    depth: output channels of both 3x3 convs.
    stride: stride of conv2 and of the shortcut; must be 1 when `rate` > 1.
    rate: atrous rate of both 3x3 convs (block rate x unit rate).
    scope: `<root>/block<B>/unit_<U>/lite_bottleneck_v1`.
    endpoints: receives `<scope>/conv2` (conv2's BN output, before the sum: the decoder's feature)
      and `<scope>`.

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), depth]`, ReLU-activated.
  """
  shortcut = _shortcut(x, depth, stride, scope)
  residual = layers.conv2d_same(x, depth, 3, 1, rate, scope + "/conv1", bn_params=RESNET_BN,
                                kernel_initializer=_initializer())
  residual = layers.conv2d_same(residual, depth, 3, stride, rate, scope + "/conv2", bn_params=RESNET_BN,
                                activation=False, kernel_initializer=_initializer())
  endpoints[scope + "/conv2"] = residual
  return _sum_and_relu(shortcut, residual, scope, endpoints)


def build_resnet(images, model_variant: str, output_stride: int,
                 multi_grid: Optional[Sequence[int]] = None) -> Dict[str, object]:
  """Builds a ResNet-v1(-beta) encoder on preprocessed images.

  Args:
    images: `[batch, height, width, 3]` float tensor: ImageNet-mean-subtracted RGB for the plain
      variants, [-1, 1] for the beta variants (`feature_extractor._PREPROCESS_FN`).
    model_variant: a key of `RESNET_VARIANTS` ('resnet_v1_18', 'resnet_v1_50_beta', ...).
    output_stride: 8, 16 or 32 (a multiple of 4, as `resnet_v1_beta` requires).
    multi_grid: the unit rates of block4 (three, or two for ResNet-18), default all 1 (DeepLabv3,
      section 3.2.1).

  Returns:
    `{"low_level": [batch, ceil(h/4), ceil(w/4), 256 (64 for ResNet-18)], "encoder_output": [batch,
    ceil(h/os), ceil(w/os), 2048 (512)], <unit scope>/conv3 (conv2) and <unit scope> for every unit}`.

  Raises:
    ValueError: unknown variant, an output_stride that is not a multiple of 4 or cannot be reached,
      or a multi_grid of the wrong length.
  """
  if model_variant not in RESNET_VARIANTS:
    raise ValueError(f"model_variant={model_variant!r}: expected one of {sorted(RESNET_VARIANTS)}.")
  if output_stride % 4:
    raise ValueError(f"output_stride={output_stride}: {model_variant} needs a multiple of 4.")
  variant = RESNET_VARIANTS[model_variant]
  multi_grid = tuple(multi_grid) if multi_grid else (1,) * variant.num_multi_grid
  if len(multi_grid) != variant.num_multi_grid:
    raise ValueError(f"multi_grid={multi_grid}: expected {variant.num_multi_grid} unit rates for "
                     f"block4 of {model_variant}.")
  root = variant.scope
  endpoints: Dict[str, object] = {}

  if variant.beta:
    multiplier = _RESNET_18_ROOT_DEPTH_MULTIPLIER if variant.lite else 1.0
    net = images
    for name, depth, stride in (("conv1_1", 64, 2), ("conv1_2", 64, 1), ("conv1_3", 128, 1)):
      net = layers.conv2d_same(net, int(depth * multiplier), 3, stride, 1, f"{root}/{name}",
                               bn_params=RESNET_BN, kernel_initializer=_initializer())
  else:
    net = layers.conv2d_same(images, 64, 7, 2, 1, f"{root}/conv1", bn_params=RESNET_BN,
                             kernel_initializer=_initializer())
  net = keras.layers.MaxPooling2D(3, strides=2, padding="same",
                                  name=layers.scope_to_layer_name(f"{root}/pool1"))(net)

  def unit(net, base_depth, stride, rate, scope):
    if variant.lite:
      return lite_bottleneck(net, base_depth, stride, rate, scope + "/lite_bottleneck_v1", endpoints)
    return bottleneck(net, base_depth * 4, base_depth, stride, rate, scope + "/bottleneck_v1", endpoints)

  target = output_stride // 4  # The root's stride 4.
  current_stride, rate = 1, 1
  for b, (num_units, base_depth) in enumerate(zip(variant.units_per_block, _BASE_DEPTHS), 1):
    for u in range(num_units):
      if b == 4:
        unit_stride, unit_rate = 1, multi_grid[u]
      else:
        unit_stride, unit_rate = (2 if u == num_units - 1 else 1), 1
      scope = f"{root}/block{b}/unit_{u + 1}"
      if current_stride == target:
        net = unit(net, base_depth, 1, rate * unit_rate, scope)
        rate *= unit_stride
      else:
        net = unit(net, base_depth, unit_stride, unit_rate, scope)
        current_stride *= unit_stride
        if current_stride > target:
          raise ValueError(f"output_stride={output_stride} cannot be reached by {model_variant}.")
  if current_stride != target:
    raise ValueError(f"output_stride={output_stride} cannot be reached by {model_variant}.")
  for stride, name in variant.decoder_end_points().items():
    endpoints[f"decoder_end_point/{stride}"] = endpoints[f"{root}/{name}"]
  endpoints["low_level"] = endpoints["decoder_end_point/4"]
  endpoints["encoder_output"] = net
  return endpoints
