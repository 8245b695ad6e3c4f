"""The kernel policy: how this machine computes the network, chosen once at run time.

`build_deeplab` returns the network in plain Keras layers, which run on every TensorFlow build and
device. A `KernelPolicy` names the faster ways of computing the same function that were measured on
oneDNN CPUs (benchmarks/README.md, "Why it is fast"), and `apply_kernel_policy` rewrites a built model
for it (for training), `inference_model` folds the BatchNorms and rewrites it for inference, as
`deeplab_tf.training.batch_norm.configure_batch_norm` applies BatchNorm settings to a built model.
Variables, checkpoints and `.keras` files do not depend on the policy.

Three policies, by name (the binaries' `--kernel_policy`):
- `portable`: plain Keras/TF arithmetic. What artefacts (SavedModel, TFLite, `.keras`) are made with
  by default, and what GPUs and TPUs run (nothing here was measured there).
- `cpu`: every measured CPU choice; the in-place dilated depthwise kernels only where this process's
  TensorFlow has them (oneDNN). An export made with it runs on oneDNN CPUs only.
- `auto` (`for_device`): `portable` when a GPU or TPU is visible, else `cpu`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_tf.model.acceleration import channel_padding as padding_lib
from deeplab_tf.model.acceleration import dilated_depthwise
from deeplab_tf.model.acceleration import folding
from deeplab_tf.model.acceleration import rewrite as rewrite_lib
from deeplab_tf.options import KERNEL_POLICIES as POLICY_NAMES
from deeplab_tf.options import check_kernel_policy


@dataclasses.dataclass(frozen=True)
class KernelPolicy:
  """Which kernels compute the network: every field off is plain Keras/TF arithmetic.

  Attributes:
    name: 'portable', 'cpu' or a user's name (for logs).
    fused_batch_norm: BatchNorm on TF's FusedBatchNormV3 (one op and its fused gradient instead of
      ~10; `batch_norm.FusedBatchNormalization`).
    bf16_training_batch_norm_channel_multiple: bfloat16 training BatchNorm pads its channels to a
      multiple of this (16: oneDNN's AVX-512 vector; 1: never).
    bf16_inference_batch_norm_as_affine: bfloat16 inference BatchNorm as one multiply-add.
    pointwise_as_matmul_in_training: 1x1 convolutions train as matrix products.
    pointwise_as_matmul_at_inference: float32 BatchNorm-folded 1x1 convolutions as matrix products.
    bf16_strided_depthwise_input_gradient_in_float32: the input gradient of strided bfloat16
      depthwise convolutions from the float32 kernel.
    in_place_dilated_depthwise: dilated depthwise convolutions with the dilation in place
      (oneDNN only; `dilated_depthwise`).
    in_place_dilation_max_span: the longest in-place dilated span, pixels.
    channel_multiple: training carries features of `padded_channel_counts` channels zero-padded to a
      multiple of this (1: never; `channel_padding`).
    padded_channel_counts: the feature widths padded (Xception's 728, the one measured).
    bias_after_shared_add: where the BatchNorm folding would leave a convolution's bias before a sum
      that a ReLU and another layer read, add it after the sum instead (`folding`: TF's grappler
      remapper drops every fusion of a graph otherwise). Plain arithmetic, on in every policy.
  """

  name: str = "portable"
  fused_batch_norm: bool = False
  bf16_training_batch_norm_channel_multiple: int = 1
  bf16_inference_batch_norm_as_affine: bool = False
  pointwise_as_matmul_in_training: bool = False
  pointwise_as_matmul_at_inference: bool = False
  bf16_strided_depthwise_input_gradient_in_float32: bool = False
  in_place_dilated_depthwise: bool = False
  in_place_dilation_max_span: int = dilated_depthwise.DEFAULT_MAX_SPAN
  channel_multiple: int = 1
  padded_channel_counts: Tuple[int, ...] = (728,)
  bias_after_shared_add: bool = True

  def __post_init__(self):
    object.__setattr__(self, "padded_channel_counts", tuple(int(c) for c in self.padded_channel_counts))
    if self.channel_multiple < 1 or self.bf16_training_batch_norm_channel_multiple < 1:
      raise ValueError(f"KernelPolicy {self.name!r}: channel multiples must be >= 1.")
    if self.in_place_dilation_max_span < 1:
      raise ValueError(f"in_place_dilation_max_span={self.in_place_dilation_max_span}: expected "
                       "a span of at least 1 pixel.")

  @classmethod
  def portable(cls) -> "KernelPolicy":
    """Plain Keras/TF arithmetic: runs on every TensorFlow build and device."""
    return cls(name="portable")

  @classmethod
  def cpu(cls, in_place_dilated_depthwise: Optional[bool] = None) -> "KernelPolicy":
    """Every choice measured on oneDNN CPUs (benchmarks/README.md, "Why it is fast").

    Args:
      in_place_dilated_depthwise: default: whether this process's TensorFlow computes dilated
        DepthwiseConv2dNative (oneDNN does; TF's own CPU kernel does not).
    """
    if in_place_dilated_depthwise is None:
      in_place_dilated_depthwise = dilated_depthwise.native_dilated_depthwise_available()
    return cls(name="cpu", fused_batch_norm=True, bf16_training_batch_norm_channel_multiple=16,
               bf16_inference_batch_norm_as_affine=True, pointwise_as_matmul_in_training=True,
               pointwise_as_matmul_at_inference=True,
               bf16_strided_depthwise_input_gradient_in_float32=True,
               in_place_dilated_depthwise=in_place_dilated_depthwise, channel_multiple=16)

  @classmethod
  def for_device(cls, device_types: Optional[Sequence[str]] = None) -> "KernelPolicy":
    """`portable` when a GPU or TPU is among `device_types` (default: the visible logical devices),
    else `cpu()`."""
    if device_types is None:
      device_types = [d.device_type for d in tf.config.list_logical_devices()]
    if any(t in ("GPU", "TPU") for t in device_types):
      return cls.portable()
    return cls.cpu()

  @classmethod
  def from_name(cls, name: str) -> "KernelPolicy":
    """'auto' (`for_device`), 'portable' or 'cpu'.

    Raises:
      ValueError: another name.
    """
    check_kernel_policy(name)
    return {"auto": cls.for_device, "portable": cls.portable, "cpu": cls.cpu}[name]()

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict) -> "KernelPolicy":
    return cls(**values)

  @classmethod
  def from_json(cls, text: str) -> "KernelPolicy":
    return cls.from_dict(json.loads(text))


def resolve(policy) -> KernelPolicy:
  """A `KernelPolicy` from a policy, a name (`KernelPolicy.from_name`) or None ('auto')."""
  if isinstance(policy, KernelPolicy):
    return policy
  return KernelPolicy.from_name(policy or "auto")


def apply_kernel_policy(model: keras.Model, policy=None, training: bool = True) -> keras.Model:
  """`model` rewritten to compute its function with `policy`'s kernels.

  Call it on a built model before tracing the training step (or before inference), as
  `configure_batch_norm`: the copy has new variables holding the same values, under the current
  distribution strategy's scope. Whatever policy a model was rewritten for before (or a `.keras`
  file was saved with), the result is the same.

  Args:
    model: a functional Keras model (e.g. from `build_deeplab`); it is not modified. Other models
      are returned as they are.
    policy: a `KernelPolicy`, a name ('auto', 'portable', 'cpu') or None ('auto').
    training: for training (channel padding, training kernels) or for inference.

  Returns:
    The rewritten copy, or `model` itself when nothing changes.
  """
  policy = resolve(policy)
  paddings = {}
  if training and policy.channel_multiple > 1 and rewrite_lib.is_functional(model):
    paddings = padding_lib.plan_channel_padding(model, policy.channel_multiple,
                                                policy.padded_channel_counts)
  return rewrite_lib.rewrite(model, policy, paddings, training)


def portable_model(model: keras.Model) -> keras.Model:
  """`model` in plain Keras/TF arithmetic, without channel padding (for `.keras` files and exports)."""
  return apply_kernel_policy(model, KernelPolicy.portable(), training=True)


def inference_model(model: keras.Model, policy=None) -> keras.Model:
  """The model eval, vis, predict and export run: BatchNorms folded, kernels as `policy` says.

  `folding.fold_batch_norm` (weights in the compute dtype, biases after shared sums as
  `policy.bias_after_shared_add`) with the kernels `apply_kernel_policy(..., training=False)` would
  choose, in one copy. Call it with `training=False` semantics only.

  Args:
    model: a functional Keras model; it is not modified.
    policy: a `KernelPolicy`, a name, or None ('auto'). Exports pass 'portable' unless asked.

  Returns:
    A new model (or `model` itself if it is not functional and nothing applies).
  """
  policy = resolve(policy)
  folded = folding.fold_batch_norm(model, bias_after_shared_add=policy.bias_after_shared_add,
                                   kernel_policy=policy)
  if folded is model:  # Nothing to fold.
    return apply_kernel_policy(model, policy, training=False)
  return folded
