"""Writes the variable lists `vars/nas_*.vars.json` of the NAS models, from research/deeplab's code.

Not our model: a walk over the original's construction (`core/nas_network.py` `_nas_stem`,
`_build_nas_base`, `pnasnet`, `hnasnet`; `core/nas_cell.py` `NASBaseCell`; `core/nas_genotypes.py`
`PNASCell`; `model.py` ASPP, decoder and logits scopes) that records each slim variable it would create
and its shape, in the format of the reference lists: `[[name, shape], ...]` sorted by name. Shapes only
depend on channel counts, which follow from the scopes' arithmetic: every hidden state of a cell has F
channels, a cell outputs the concatenation of its 5 unused states (5F), the head reads the encoder's
channels. The original was not runnable here (no TF1 + slim reference runner for NAS); run
`python tests/testdata/reference/make_nas_vars.py` to rewrite the lists.
"""

import json
import os

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vars")
BN = ("beta", "gamma", "moving_mean", "moving_variance")

PNAS_OPS = ["separable_5x5_2", "max_pool_3x3", "separable_7x7_2", "max_pool_3x3", "separable_5x5_2",
            "separable_3x3_2", "separable_3x3_2", "max_pool_3x3", "separable_3x3_2", "none"]
PNAS_INDICES = [1, 1, 0, 0, 0, 0, 4, 0, 1, 0]
HNAS_OPS = ["atrous_5x5", "separable_3x3_2", "separable_3x3_2", "atrous_3x3", "separable_3x3_2",
            "separable_3x3_2", "separable_5x5_2", "separable_5x5_2", "separable_5x5_2", "atrous_5x5"]
HNAS_INDICES = [1, 0, 1, 0, 3, 1, 4, 2, 3, 5]
USED = [1, 1, 0, 0, 0, 0, 0]
PNAS_BACKBONES = {8: [1] * 12, 16: [1, 1, 1, 1] + [2] * 8, 32: [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]}
HNAS_BACKBONE = [0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1]


class Vars:
  def __init__(self):
    self.items = {}

  def conv(self, scope, k, cin, cout, bias=False):
    self.items[scope + "/weights"] = [k, k, cin, cout]
    if bias:
      self.items[scope + "/biases"] = [cout]

  def bn(self, scope, c):
    for n in BN:
      self.items[f"{scope}/{n}"] = [c]

  def slim_separable(self, scope, k, cin, cout):
    self.items[scope + "/depthwise_weights"] = [k, k, cin, 1]
    self.items[scope + "/pointwise_weights"] = [1, 1, cin, cout]

  def head_separable(self, scope, cin, cout):  # model.split_separable_conv2d, BN after both
    self.items[scope + "_depthwise/depthwise_weights"] = [3, 3, cin, 1]
    self.bn(scope + "_depthwise/BatchNorm", cin)
    self.conv(scope + "_pointwise", 1, cin, cout)
    self.bn(scope + "_pointwise/BatchNorm", cout)


def operation(v, scope, op, stride, cin, f):
  """_apply_conv_operation: the variables of one op."""
  if op.startswith("separable"):
    k, n = int(op.split("x")[0][-1]), int(op.split("_")[-1])
    for i in range(1, n + 1):
      v.slim_separable(f"{scope}/separable_{k}x{k}_{i}", k, cin if i == 1 else f, f)
      v.bn(f"{scope}/bn_sep_{k}x{k}_{i}", f)
  elif op.startswith("atrous"):
    k = int(op.split("x")[0][-1])
    v.conv(f"{scope}/atrous_{k}x{k}", k, cin, f)
    v.bn(f"{scope}/bn_atr_{k}x{k}", f)
  elif op == "none":
    if stride > 1 or cin != f:
      v.conv(f"{scope}/1x1", 1, cin, f)
      v.bn(f"{scope}/bn_1", f)
  elif op.startswith("max_pool"):
    if cin != f:
      v.conv(f"{scope}/1x1", 1, cin, f)
      v.bn(f"{scope}/bn_1", f)


def nas(v, root, ops, indices, backbone, output_stride, head=False, remove_os32=False, filters=20):
  """_build_nas_base: returns {endpoint: channels} and the encoder output channels."""
  v.conv(f"{root}/conv0", 3, 3, 64)
  v.bn(f"{root}/conv0_bn", 64)
  v.conv(f"{root}/conv1", 3, 64, 64)
  v.bn(f"{root}/conv1_bn", 64)
  v.conv(f"{root}/conv2", 3, 64, 128)
  v.bn(f"{root}/conv2_bn", 128)
  channels = {"Stem": 128}
  outputs = [64, 128]
  net = 128
  scaling = 1.0
  for c, level in enumerate(backbone):
    stride = 1
    if c == 0:
      if level == 1:
        stride, scaling = 2, scaling * 2
    elif level == backbone[c - 1] + 1:
      stride = 1 if (level == 3 and remove_os32) else 2
      scaling *= 2
    elif level == backbone[c - 1] - 1:
      scaling /= 2
    f = int(filters * scaling)
    scope = f"{root}/cell_{c}"
    prev = outputs[-2]
    if prev != f:
      v.conv(scope + "/prev_1x1", 1, prev, f)
      v.bn(scope + "/prev_bn", f)
    v.conv(scope + "/1x1", 1, net, f)
    v.bn(scope + "/beginning_bn", f)
    states = [f, f]
    for i in range(5):
      for side, k in (("left", 2 * i), ("right", 2 * i + 1)):
        operation(v, f"{scope}/comb_iter_{i}/{side}", ops[k], stride if indices[k] < 2 else 1,
                  states[indices[k]], f)
      states.append(f)
    net = sum(s for s, used in zip(states, USED) if not used)
    channels[f"Cell_{c}"] = net
    outputs.append(net)
  if head:
    scale = 2 + backbone[-1]
    remaining = output_stride // 2 ** scale
    expanded = {8: 256, 16: 512, 32: 1024}
    if scale != 5:
      for i in range(5 - scale):
        target = 2 ** (scale + 1 + i)
        v.conv(f"{root}/downsample_os{target}_conv", 3, net, expanded[target])
        v.bn(f"{root}/downsample_os{target}_bn", expanded[target])
        net = expanded[target]
    v.conv(f"{root}/classification_head_conv", 1, net, 2048)
    v.bn(f"{root}/classification_head_bn", 2048)
    net = 2048
  return channels, net


def deeplab_head(v, encoder_channels, low_level_channels, rates, num_classes):
  """model.py: image pooling, aspp0, separable aspp<i>, concat_projection, decoder, logits."""
  v.conv("image_pooling", 1, encoder_channels, 256)
  v.bn("image_pooling/BatchNorm", 256)
  v.conv("aspp0", 1, encoder_channels, 256)
  v.bn("aspp0/BatchNorm", 256)
  for i, _ in enumerate(rates, 1):
    v.head_separable(f"aspp{i}", encoder_channels, 256)
  v.conv("concat_projection", 1, 256 * (2 + len(rates)), 256)
  v.bn("concat_projection/BatchNorm", 256)
  if low_level_channels:
    v.conv("decoder/feature_projection0", 1, low_level_channels, 48)
    v.bn("decoder/feature_projection0/BatchNorm", 48)
    v.head_separable("decoder/decoder_conv0", 304, 256)
    v.head_separable("decoder/decoder_conv1", 256, 256)
  v.conv("logits/semantic", 1, 256, num_classes, bias=True)


CASES = {
    # name: (root, ops, indices, backbone, output_stride, head, remove_os32, decoder end point at 4)
    "nas_pnasnet": ("pnasnet", PNAS_OPS, PNAS_INDICES, PNAS_BACKBONES[16], 16, False, False, "Stem"),
    "nas_hnasnet": ("hnasnet", HNAS_OPS, HNAS_INDICES, HNAS_BACKBONE, 8, False, False, "Cell_2"),
    "nas_hnasnet_classification_head": ("hnasnet", HNAS_OPS, HNAS_INDICES, HNAS_BACKBONE, 16, True,
                                        False, None),
    "nas_pnasnet_os32_no_stride_classification_head": (
        "pnasnet", PNAS_OPS, PNAS_INDICES, PNAS_BACKBONES[32], 32, True, True, None),
}


def main():
  for name, (root, ops, indices, backbone, os_, head, remove, low) in CASES.items():
    v = Vars()
    channels, out = nas(v, root, ops, indices, backbone, os_, head, remove)
    deeplab_head(v, out, channels[low] if low else None, (6, 12, 18), 21)
    path = os.path.join(OUT, name + ".vars.json")
    with open(path, "w") as f:
      json.dump(sorted([n, s] for n, s in v.items.items()), f)
    total = sum(int(__import__("numpy").prod(s)) for s in v.items.values())
    print(f"{path}: {len(v.items)} variables, {total:,} parameters")


if __name__ == "__main__":
  main()
