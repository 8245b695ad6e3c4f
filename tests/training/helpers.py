"""Shared test inputs: a tiny segmentation model and an in-memory dataset in the data contract."""
import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.model import layers

CROP = 17
NUM_CLASSES = 3


def tiny_model(options):
  """conv(stride 2)+BN+ReLU -> 1x1 logits ('logits.semantic') -> align-corners upsampling."""
  images = keras.Input((CROP, CROP, 3), name="images")
  x = layers.Preprocess(layers.ZERO_MEAN_UNIT_RANGE, name="preprocess")(images)
  x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="conv1")(x)
  x = layers.BatchNormalization(momentum=0.9, name="conv1.BatchNorm")(x)
  x = keras.layers.ReLU()(x)
  x = keras.layers.Conv2D(options.num_classes, 1, name="logits.semantic", dtype="float32")(x)
  x = layers.ResizeLike(name="upsample_logits", dtype="float32")([x, images])
  return keras.Model(images, x)


def examples(n=16, crop=CROP, num_classes=NUM_CLASSES, seed=0):
  """n images whose label is a colour threshold (learnable), no ignored pixels."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(0, 255, size=(n, crop, crop, 3)).astype(np.float32)
  labels = np.minimum(images[..., :1] // (256 / num_classes), num_classes - 1).astype(np.int32)
  return images, labels


def dataset_fn_for(global_batch, images, labels, nan_at_batch=None):
  """`dataset_fn(input_context)`: shard per input pipeline, batch per replica, repeat forever.

  nan_at_batch: index (in per-pipeline batches) of a batch whose images are NaN.
  """
  def dataset_fn(ctx):
    ds = tf.data.Dataset.from_tensor_slices({"image": images, "label": labels})
    ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
    ds = ds.repeat().batch(ctx.get_per_replica_batch_size(global_batch), drop_remainder=True)
    if nan_at_batch is not None:
      def poison(i, b):
        bad = tf.equal(i, nan_at_batch)
        return {"image": tf.where(bad, tf.fill(tf.shape(b["image"]), np.nan), b["image"]),
                "label": b["label"]}
      ds = ds.enumerate().map(poison)
    return ds
  return dataset_fn
