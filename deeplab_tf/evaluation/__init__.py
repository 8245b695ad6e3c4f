"""Evaluation: streaming mIoU (`metrics`) and multi-scale, flipped, sliding-window inference (`inference`)."""

from deeplab_tf.evaluation.inference import predict_labels, predict_probabilities
from deeplab_tf.evaluation.metrics import ConfusionMatrix, SegmentationMetrics, compute_metrics

__all__ = ["ConfusionMatrix", "SegmentationMetrics", "compute_metrics", "predict_labels",
           "predict_probabilities"]
