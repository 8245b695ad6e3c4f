"""deeplab_tf: DeepLabv3 / DeepLabv3+ for TensorFlow 2 and Keras 3, faithful to research/deeplab."""

from deeplab_tf import checkpoints
from deeplab_tf.model.deeplab import build_deeplab
from deeplab_tf.options import EvalOptions, ModelOptions, TrainOptions

__all__ = ["build_deeplab", "checkpoints", "ModelOptions", "TrainOptions", "EvalOptions"]
__version__ = "0.1.0"
