"""Writes the variable lists of the original's models that have no reference graph run (yet).

The original (research/deeplab TF1 + slim) could not be run here, so these lists are derived by reading
its code: this script follows, step by step and independently of deeplab_tf, how the original creates
its variables (slim's names: `weights`, `biases`, `depthwise_weights`, `BatchNorm/{beta,gamma,
moving_mean,moving_variance}`; default scopes `Conv`, `Conv_1`, `expanded_conv_N`), from:
- research/deeplab core/resnet_v1_beta.py (`lite_bottleneck`, `resnet_v1_18[_beta]`,
  `root_block_fn_for_beta_variant` with `root_depth_multiplier=0.25`);
- research/deeplab core/feature_extractor.py (`mobilenet_v3_{large,small}_seg`: the last block's
  filters halved and expansions re-set; `mobilenet_edgetpu`; final end points layer_17/13/24; scopes);
- research/slim nets/mobilenet/{mobilenet_v3,mobilenet,conv_blocks}.py (V3_LARGE, V3_SMALL,
  V3_EDGETPU, `mbv3_op`, `mbv3_fused`, `expanded_conv`, `squeeze_excite`, `_make_divisible`,
  `depth_multiplier`);
- research/deeplab model.py (`extract_features` ASPP with the newest common.py head flags,
  `refine_by_decoder`, `_decoder_with_{concat,sum}_merge`, `get_branch_logits`).
It reproduces the reference lists of resnet_v1_50_beta and mobilenet_v2 (which were taken from the
original's own graph) exactly: `python make_vars.py --check ../reference/vars`.

Usage: python tests/testdata/derived_vars/make_vars.py [--check REFERENCE_VARS_DIR]
"""

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def make_divisible(v, divisor, min_value=None):
  """nets/mobilenet `_make_divisible`."""
  if min_value is None:
    min_value = divisor
  new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
  if new_v < 0.9 * v:
    new_v += divisor
  return int(new_v)


class Variables:
  """Collects `[name, shape]` as slim creates them."""

  def __init__(self):
    self.items = []

  def conv(self, scope, k, cin, cout, bn=True):
    """slim.conv2d: weights, then BatchNorm (no bias) or biases (normalizer_fn=None)."""
    self.items.append((scope + "/weights", [k, k, cin, cout]))
    if bn:
      self.bn(scope, cout)
    else:
      self.items.append((scope + "/biases", [cout]))

  def depthwise(self, scope, k, c):
    """slim.separable_conv2d(num_outputs=None) + BatchNorm."""
    self.items.append((scope + "/depthwise_weights", [k, k, c, 1]))
    self.bn(scope, c)

  def bn(self, scope, c):
    for v in ("beta", "gamma", "moving_mean", "moving_variance"):
      self.items.append((f"{scope}/BatchNorm/{v}", [c]))

  def split_separable(self, scope, cin, cout):
    """core/utils.py split_separable_conv2d: <scope>_depthwise + <scope>_pointwise."""
    self.depthwise(scope + "_depthwise", 3, cin)
    self.conv(scope + "_pointwise", 1, cin, cout)


# ---- ResNet (core/resnet_v1_beta.py) ----

def resnet(v, variant):
  """Returns (encoder output channels, {decoder stride: channels})."""
  lite = variant.startswith("resnet_v1_18")
  scope = {"resnet_v1_18": "resnet_v1_18", "resnet_v1_18_beta": "resnet_v1_18",
           "resnet_v1_50_beta": "resnet_v1_50"}[variant]
  if variant.endswith("_beta"):
    m = 0.25 if lite else 1.0   # resnet_v1_18_beta's root_depth_multiplier default.
    c = 3
    for name, d in (("conv1_1", 64), ("conv1_2", 64), ("conv1_3", 128)):
      v.conv(f"{scope}/{name}", 3, c, int(d * m))
      c = int(d * m)
  else:
    v.conv(f"{scope}/conv1", 7, 3, 64)
    c = 64
  units = (2, 2, 2, 2) if lite else (3, 4, 6, 3)
  low = {}
  for b, (n, base) in enumerate(zip(units, (64, 128, 256, 512)), 1):
    for u in range(1, n + 1):
      if lite:
        unit = f"{scope}/block{b}/unit_{u}/lite_bottleneck_v1"
        if c != base:
          v.conv(unit + "/shortcut", 1, c, base)
        v.conv(unit + "/conv1", 3, c, base)
        v.conv(unit + "/conv2", 3, base, base)
        if u == 1 and b < 4:
          low[4 * 2 ** (b - 1)] = base
        c = base
      else:
        unit = f"{scope}/block{b}/unit_{u}/bottleneck_v1"
        if c != base * 4:
          v.conv(unit + "/shortcut", 1, c, base * 4)
        v.conv(unit + "/conv1", 1, c, base)
        v.conv(unit + "/conv2", 3, base, base)
        v.conv(unit + "/conv3", 1, base, base * 4)
        c = base * 4
  if not lite:
    low = {4: 256, 8: 512, 16: 1024}
  return c, low


# ---- MobileNet (nets/mobilenet + feature_extractor) ----

def _conv_op(n, k, s=1):
  return dict(op="conv", num_outputs=n, kernel=k, stride=s)


def _mbv3(ef, n, k, s=1, se=False, fused=False, residual=True):
  return dict(op="expanded_conv", ef=ef, num_outputs=n, kernel=k, stride=s, se=se, fused=fused,
              residual=residual)


V3_LARGE = [
    _conv_op(16, 3, 2),
    _mbv3(1, 16, 3), _mbv3(4, 24, 3, 2), _mbv3(3, 24, 3),
    _mbv3(3, 40, 5, 2, se=True), _mbv3(3, 40, 5, se=True), _mbv3(3, 40, 5, se=True),
    _mbv3(6, 80, 3, 2), _mbv3(2.5, 80, 3), _mbv3(184 / 80., 80, 3), _mbv3(184 / 80., 80, 3),
    _mbv3(6, 112, 3, se=True), _mbv3(6, 112, 3, se=True),
    _mbv3(6, 160, 5, 2, se=True), _mbv3(6, 160, 5, se=True), _mbv3(6, 160, 5, se=True),
    _conv_op(960, 1),
]  # (then reduce_to_1x1 and Conv 1280: past every DeepLab final end point)

V3_SMALL = [
    _conv_op(16, 3, 2),
    _mbv3(1, 16, 3, 2, se=True), _mbv3(72. / 16, 24, 3, 2), _mbv3(88. / 24, 24, 3),
    _mbv3(4, 40, 5, 2, se=True), _mbv3(6, 40, 5, se=True), _mbv3(6, 40, 5, se=True),
    _mbv3(3, 48, 5, se=True), _mbv3(3, 48, 5, se=True),
    _mbv3(6, 96, 5, 2, se=True), _mbv3(6, 96, 5, se=True), _mbv3(6, 96, 5, se=True),
    _conv_op(576, 1),
]

V3_EDGETPU = [
    _conv_op(32, 3, 2),
    _mbv3(1, 16, 3, 1, fused=True), _mbv3(8, 32, 3, 2, fused=True),
    _mbv3(4, 32, 3, fused=True), _mbv3(4, 32, 3, fused=True), _mbv3(4, 32, 3, fused=True),
    _mbv3(8, 48, 3, 2, fused=True),
    _mbv3(4, 48, 3, fused=True), _mbv3(4, 48, 3, fused=True), _mbv3(4, 48, 3, fused=True),
    _mbv3(8, 96, 3, 2), _mbv3(4, 96, 3), _mbv3(4, 96, 3), _mbv3(4, 96, 3),
    _mbv3(8, 96, 3, residual=False), _mbv3(4, 96, 3), _mbv3(4, 96, 3), _mbv3(4, 96, 3),
    _mbv3(8, 160, 5, 2), _mbv3(4, 160, 5), _mbv3(4, 160, 5), _mbv3(4, 160, 5),
    _mbv3(8, 192, 3),
    _conv_op(1280, 1),
]

V2_DEF = ([_conv_op(32, 3, 2), _mbv3(1, 16, 3)]
          + [_mbv3(6, n, 3, s) for n, s in ((24, 2), (24, 1), (32, 2), (32, 1), (32, 1), (64, 2),
                                            (64, 1), (64, 1), (64, 1), (96, 1), (96, 1), (96, 1),
                                            (160, 2), (160, 1), (160, 1), (320, 1))])


def _seg(spec, changes):
  """feature_extractor.mobilenet_v3_{large,small}_seg: halve the last block, re-set expansions."""
  spec = [dict(d) for d in spec]
  for layer, expansion in changes:
    spec[layer]["num_outputs"] /= 2
    if expansion is not None:
      spec[layer]["ef"] = expansion / spec[layer - 1]["num_outputs"]
  return spec


def mobilenet(v, variant, depth_multiplier=1.0):
  """mobilenet_base up to DeepLab's final end point; returns (channels, {layer_N/depthwise_output: c})."""
  if variant == "mobilenet_v3_large_seg":
    spec, scope, final = _seg(V3_LARGE, [(13, 336), (14, 480), (15, 480), (16, None)]), "MobilenetV3", 17
  elif variant == "mobilenet_v3_small_seg":
    spec, scope, final = _seg(V3_SMALL, [(9, 144), (10, 288), (11, 288), (12, None)]), "MobilenetV3", 13
  elif variant == "mobilenet_edgetpu":
    spec, scope, final = V3_EDGETPU, "MobilenetEdgeTPU", 24
  else:
    spec, scope, final = V2_DEF, "MobilenetV2", 18
  v2 = variant == "mobilenet_v2"
  divisible_by = min_depth = 8 if (not v2 or depth_multiplier == 1.0) else 1
  c = 3
  counts = {"conv": 0, "expanded_conv": 0}
  depthwise_outputs = {}
  for i, d in enumerate(spec[:final]):
    n = make_divisible(d["num_outputs"] * depth_multiplier, divisible_by, min_depth)
    k = counts[d["op"]]
    counts[d["op"]] += 1
    name = f"{scope}/{'Conv' if d['op'] == 'conv' else 'expanded_conv'}" + (f"_{k}" if k else "")
    if d["op"] == "conv":
      v.conv(name, d["kernel"], c, n)
    else:
      if v2 and d["ef"] == 1:
        inner = make_divisible(c * 1, 1)   # V2_DEF's first block: expand_input(1, divisible_by=1).
      else:
        inner = make_divisible(c * d["ef"], 8)   # expand_input_by_factor(ef).
      if inner > c:
        v.conv(name + "/expand", d["kernel"] if d["fused"] else 1, c, inner)
      if not d["fused"]:   # mbv3_fused: depthwise_location=None.
        v.depthwise(name + "/depthwise", d["kernel"], inner)
        depthwise_outputs[f"layer_{i + 1}/depthwise_output"] = inner
      if d["se"]:   # squeeze_excite(squeeze_factor=4): two biased 1x1 convs, default scopes.
        squeeze = make_divisible(inner / 4, 8)
        v.conv(name + "/squeeze_excite/Conv", 1, inner, squeeze, bn=False)
        v.conv(name + "/squeeze_excite/Conv_1", 1, squeeze, inner, bn=False)
      v.conv(name + "/project", 1, inner, n)
    c = n
  return c, depthwise_outputs


# networks_to_feature_maps (decoder end points) of the MobileNets.
MOBILENET_DECODER = {
    "mobilenet_v3_large_seg": {4: "layer_4/depthwise_output", 8: "layer_7/depthwise_output",
                               16: "layer_13/depthwise_output"},
    "mobilenet_v3_small_seg": {4: "layer_2/depthwise_output", 8: "layer_4/depthwise_output",
                               16: "layer_9/depthwise_output"},
}


# ---- The head (model.py) ----

def head(v, c, low, o):
  """extract_features' ASPP, refine_by_decoder and get_branch_logits with options `o`."""
  depth = o.get("aspp_convs_filters", 256)
  se = o.get("aspp_with_squeeze_and_excitation", False)
  branches = 0
  if o.get("add_image_level_feature", True):
    v.conv("image_pooling", 1, c, depth, bn=not se)
    branches += 0 if se else 1
  v.conv("aspp0", 1, c, depth)
  branches += 1
  for i, _ in enumerate(o.get("atrous_rates") or (), 1):
    if o.get("aspp_with_separable_conv", True):
      v.split_separable(f"aspp{i}", c, depth)
    else:
      v.conv(f"aspp{i}", 3, c, depth)
    branches += 1
  if o.get("aspp_with_concat_projection", True):
    v.conv("concat_projection", 1, branches * depth, depth)
    c = depth
  else:
    c = branches * depth
  if o.get("decoder_output_stride"):
    filters = o.get("decoder_filters", 256)
    sum_merge = o.get("decoder_use_sum_merge", False)
    is_logits = o.get("decoder_output_is_logits", False)
    separable = o.get("decoder_use_separable_conv", True) and not is_logits
    projected = filters if sum_merge else 48
    v.conv("decoder/feature_projection0", 1, low[o["decoder_output_stride"]], projected,
           bn=not is_logits)
    if sum_merge:
      if separable:
        v.split_separable("decoder/decoder_split_sep_conv0", c, filters)
      else:
        v.conv("decoder/decoder_conv0", 1 if is_logits else 3, c, filters, bn=not is_logits)
    elif separable:
      v.split_separable("decoder/decoder_conv0", c + projected, filters)
      v.split_separable("decoder/decoder_conv1", filters, filters)
    else:
      v.conv("decoder/decoder_conv0/decoder_conv0_1", 3, c + projected, filters, bn=not is_logits)
      v.conv("decoder/decoder_conv0/decoder_conv0_2", 3, filters, filters, bn=not is_logits)
    c = filters
    if is_logits:
      return
  v.conv("logits/semantic", 1, c, o["num_classes"], bn=False)


def model_vars(variant, options):
  v = Variables()
  if variant.startswith("resnet"):
    c, low = resnet(v, variant)
  else:
    c, outputs = mobilenet(v, variant, options.get("depth_multiplier", 1.0))
    low = {s: outputs[name] for s, name in MOBILENET_DECODER.get(variant, {}).items()}
  head(v, c, low, options)
  return sorted(v.items)


_RESNET_PLUS = dict(num_classes=21, atrous_rates=(6, 12, 18), decoder_output_stride=4,
                    aspp_with_separable_conv=False, decoder_use_separable_conv=False)
# g3doc/model_zoo.md's flags for the MobileNetV3 Cityscapes checkpoints.
_MNV3_CITYSCAPES = dict(num_classes=19, aspp_convs_filters=128, aspp_with_concat_projection=False,
                        aspp_with_squeeze_and_excitation=True, decoder_use_sum_merge=True,
                        decoder_filters=19, decoder_output_is_logits=True, decoder_output_stride=8)

# name -> (model_variant, options)
LISTS = {
    "resnet_v1_18": ("resnet_v1_18", _RESNET_PLUS),
    "resnet_v1_18_beta": ("resnet_v1_18_beta", _RESNET_PLUS),
    "mobilenet_v3_large_seg": ("mobilenet_v3_large_seg", _MNV3_CITYSCAPES),
    "mobilenet_v3_small_seg": ("mobilenet_v3_small_seg", _MNV3_CITYSCAPES),
    # EdgeTPU-DeepLab(-slim): MobileNetV2's head (image pooling, 1x1, projection), 19 classes.
    "mobilenet_edgetpu": ("mobilenet_edgetpu", dict(num_classes=19)),
    "mobilenet_edgetpu_slim": ("mobilenet_edgetpu", dict(num_classes=19, depth_multiplier=0.75,
                                                         aspp_convs_filters=128)),
}
# Reference lists taken from the original's graph, which this script must reproduce.
CHECKS = {
    "resnet_v1_50_beta": ("resnet_v1_50_beta", _RESNET_PLUS),
    "mobilenet_v2": ("mobilenet_v2", dict(num_classes=21)),
}


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--check", help="folder of reference <name>.vars.json to compare with")
  args = parser.parse_args()
  if args.check:
    for name, (variant, options) in CHECKS.items():
      with open(os.path.join(args.check, name + ".vars.json")) as f:
        ref = [(n, list(s)) for n, s in json.load(f)]
      ours = model_vars(variant, options)
      assert ours == ref, (name, sorted(set(map(str, ours)) ^ set(map(str, ref)))[:10])
      print(f"{name}: {len(ours)} variables, identical to the reference list")
  for name, (variant, options) in LISTS.items():
    items = model_vars(variant, options)
    with open(os.path.join(HERE, name + ".vars.json"), "w") as f:
      f.write(json.dumps([[n, s] for n, s in items], indent=0) + "\n")
    count = sum(int(__import__("math").prod(s)) for _, s in items)
    print(f"{name}: {len(items)} variables, {count:,} parameters")


if __name__ == "__main__":
  main()
