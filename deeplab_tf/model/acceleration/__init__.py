"""The speed wing: how the network is computed on a machine, kept apart from what it computes.

The only room of the project that knows a device. `build_deeplab` returns plain Keras layers; this
package rewrites a BUILT model for a kernel policy (`policy.KernelPolicy`: `apply_kernel_policy` for
training, `inference_model` for eval/vis/predict/export), and artefacts are portable unless asked
(docs/ARCHITECTURE.md, "The kernel-policy seam").

- `policy`: `KernelPolicy` (portable, cpu, `for_device`), `apply_kernel_policy`, `inference_model`.
- `rewrite`: the one model rewrite (each layer's class and config for a policy and a padding).
- `batch_norm`: the original's BatchNorm on TF's fused kernel.
- `convolutions`: padded, pointwise-as-matmul and fast depthwise convolutions.
- `dilated_depthwise`: dilated depthwise convolutions with the dilation in place (oneDNN only).
- `channel_padding`: `with_channel_padding` / `without_channel_padding`.
- `folding`: `fold_batch_norm`, BatchNorms folded into their convolutions.
"""

from deeplab_tf.model.acceleration.channel_padding import with_channel_padding, without_channel_padding
from deeplab_tf.model.acceleration.folding import fold_batch_norm
from deeplab_tf.model.acceleration.policy import (KernelPolicy, POLICY_NAMES, apply_kernel_policy,
                                                  inference_model, portable_model)
