"""One benchmark candidate in its own process, driven line by line by `compare.py`.

The candidate's code is whatever its `PYTHONPATH` imports (`deeplab_tf` of this tree or of another
commit's worktree; keras-hub or tf-models-official from a scratch `--target` directory), so one driver
can interleave the versions. Protocol on stdin/stdout, one JSON object per line:
- after building and warming up (tracing), the worker prints `{"ready": ..., "multiply_adds": N}`;
- each line `run` makes it time one call (inference) or one step (training) and print `{"seconds": s}`;
- `quit` (or end of input) ends it.

Candidates (`--candidate`):
  deeplab_tf          DeepLabv3+ Xception-65, OS16, rates 6/12/18, decoder 4, 21 classes (ours).
  deeplab_tf_eager    the same model called eagerly (`model(x)`, what eval/vis ran before issue 8).
  deeplab_tf_folded   the same with BatchNorms folded (inference only): `acceleration.inference_model`.
Every deeplab_tf candidate runs under `args["kernel_policy"]` ('auto' unless given: 'portable' is
what exports run by default).
  deeplab_tf_predict  the same through `evaluation.inference.predict_labels` (what eval, vis and the
                      demo run: eager network calls before issue 8, a cached compiled function after).
  keras_hub           keras-hub `DeepLabV3ImageSegmenter`: DeepLabv3+ on ResNet-50 (OS32 encoder,
                      the library's preset shape), 21 classes; crop 512 (its decoder needs a multiple
                      of 32).
  tf_models           tf-models-official `seg_deeplabv3plus_pascal`: DeepLabv3+ on dilated ResNet-101,
                      OS16, rates 6/12/18, ReLU (the experiment's swish replaced by the paper's ReLU),
                      unsynchronised BN.
  matmul              a [2048, 2048] x [2048, 2048] matmul (the machine's peak, measured in the loop).
  input_pipeline      `deeplab_tf.data.pipeline` on VOC-sized JPEG examples: `PIPELINE_BATCHES`
                      training batches at the crop (random scale 0.5-2, crop, flip).

The training step is the same for every model: softmax cross-entropy on logits upsampled to the crop,
SGD with momentum 0.9, in one `tf.function`.
"""

import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

NUM_CLASSES = 21
PIPELINE_BATCHES = 8  # An input_pipeline run's batches; compare.py divides its time by this.


def _emit(obj):
  sys.stdout.write(json.dumps(obj) + "\n")
  sys.stdout.flush()


def build_deeplab_tf(crop):
  import deeplab_tf  # pylint: disable=g-import-not-at-top
  options = deeplab_tf.ModelOptions(model_variant="xception_65", num_classes=NUM_CLASSES,
                                    output_stride=16, atrous_rates=(6, 12, 18),
                                    decoder_output_stride=4)
  del crop
  return deeplab_tf.build_deeplab(options)


def _with_kernel_policy(model, args):
  """The model as the trainer (train), the eval/vis/predict binaries and exports (folded) or
  compiled inference run it, under `args["kernel_policy"]` (default 'auto'); trees from before the
  kernel policy (whose builder chose the kernels) through their own `fold_batch_norm`."""
  folded = args["candidate"] in ("deeplab_tf_folded", "deeplab_tf_binaries")
  try:
    from deeplab_tf.model import acceleration  # pylint: disable=g-import-not-at-top
  except ImportError:
    if not folded:
      return model
    from deeplab_tf.model.folding import fold_batch_norm  # pylint: disable=g-import-not-at-top
    return fold_batch_norm(model)
  policy = args.get("kernel_policy", "auto")
  if folded:
    return acceleration.inference_model(model, policy)
  return acceleration.apply_kernel_policy(model, policy, training=args["mode"] == "train")


def build_keras_hub(crop):
  import keras_hub  # pylint: disable=g-import-not-at-top
  encoder = keras_hub.models.ResNetBackbone(
      input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
      stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2],
      block_type="bottleneck_block", use_pre_activation=True)
  backbone = keras_hub.models.DeepLabV3Backbone(
      image_encoder=encoder, low_level_feature_key="P2", spatial_pyramid_pooling_key="P5",
      upsampling_size=8, dilation_rates=[6, 12, 18], image_shape=(crop, crop, 3))
  return keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=NUM_CLASSES)


def build_tf_models(crop):
  import types  # pylint: disable=g-import-not-at-top
  # official.vision imports its COCO evaluators (OpenCV) on import; no segmentation code uses them.
  sys.modules.setdefault("cv2", types.ModuleType("cv2"))
  import tf_keras  # pylint: disable=g-import-not-at-top
  from official.vision.configs import semantic_segmentation  # pylint: disable=g-import-not-at-top
  from official.vision.modeling import factory  # pylint: disable=g-import-not-at-top
  config = semantic_segmentation.seg_deeplabv3plus_pascal().task.model
  config.num_classes = NUM_CLASSES
  config.norm_activation.activation = "relu"
  config.norm_activation.use_sync_bn = False
  return factory.build_segmentation_model(
      input_specs=tf_keras.layers.InputSpec(shape=[None, crop, crop, 3]), model_config=config)


def _logits(model, images, training):
  out = model(images, training=training)
  if isinstance(out, dict):  # tf-models: {"logits": [b, h / 4, w / 4, classes]}
    out = out["logits"]
  out = tf.cast(out, tf.float32)
  if out.shape[1] != images.shape[1]:
    out = tf.image.resize(out, tf.shape(images)[1:3], method="bilinear")
  return out


def multiply_adds(concrete_function):
  import flops  # pylint: disable=g-import-not-at-top
  return flops.graph_multiply_adds(concrete_function.graph)


def model_runner(args):
  """(run() -> None, multiply-adds of one run) for a model candidate."""
  if args["precision"] != "float32":
    if args["candidate"] == "tf_models":
      import tf_keras  # pylint: disable=g-import-not-at-top
      tf_keras.mixed_precision.set_global_policy(args["precision"])
    else:
      import keras  # pylint: disable=g-import-not-at-top
      keras.mixed_precision.set_global_policy(args["precision"])
  crop, batch = args["crop"], args["batch"]
  candidate = args["candidate"]
  if candidate == "keras_hub":
    crop = crop - crop % 32
  builder = {"keras_hub": build_keras_hub, "tf_models": build_tf_models}.get(candidate,
                                                                             build_deeplab_tf)
  model = builder(crop)
  if candidate.startswith("deeplab_tf"):
    model = _with_kernel_policy(model, args)
  rng = np.random.default_rng(0)
  images = tf.constant(rng.uniform(0, 255, (batch, crop, crop, 3)).astype(np.float32))
  spec = tf.TensorSpec(images.shape, tf.float32)
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import flops  # pylint: disable=g-import-not-at-top
  counted = flops.real_channels(model) if candidate.startswith("deeplab_tf") else model

  if args["mode"] == "inference":
    function = tf.function(lambda x: _logits(model, x, False))
    macs = multiply_adds(tf.function(lambda x: _logits(counted, x, False)).get_concrete_function(spec))
    if candidate == "deeplab_tf_eager":
      return (lambda: _logits(model, images, False).numpy()), macs
    if candidate in ("deeplab_tf_predict", "deeplab_tf_binaries"):
      from deeplab_tf.evaluation import inference  # pylint: disable=g-import-not-at-top
      return (lambda: inference.predict_labels(model, images).numpy()), macs
    return (lambda: function(images).numpy()), macs

  labels = tf.constant(rng.integers(0, NUM_CLASSES, (batch, crop, crop)).astype(np.int32))
  variables = model.trainable_variables
  velocity = [tf.Variable(tf.zeros_like(v), trainable=False) for v in variables]

  @tf.function
  def step(x, y):
    with tf.GradientTape() as tape:
      logits = _logits(model, x, True)
      loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
    grads = tape.gradient(loss, variables)
    for v, m, g in zip(variables, velocity, grads):
      if g is None:  # A variable the loss does not depend on (keras-hub's unused layers).
        continue
      m.assign(0.9 * m + tf.cast(g, m.dtype))
      v.assign_sub(1e-4 * m)
    return loss

  forward = tf.function(lambda x: _logits(counted, x, True))
  # Forward and backward: about 3x the forward multiply-adds (one for the activations' gradient, one
  # for the weights'); reported as that.
  macs = 3 * multiply_adds(forward.get_concrete_function(spec))
  return (lambda: step(images, labels).numpy()), macs


def matmul_runner(args):
  dtype = tf.bfloat16 if args["precision"] == "mixed_bfloat16" else tf.float32
  n = 2048
  a = tf.random.normal([n, n], dtype=tf.float32)
  a = tf.cast(a, dtype)
  function = tf.function(lambda x: tf.reduce_sum(tf.cast(tf.matmul(x, x), tf.float32)))
  return (lambda: function(a).numpy()), n ** 3


def pipeline_runner(args):
  """One batch of `deeplab_tf.data.pipeline.build_dataset` training input at the crop."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from deeplab_tf.data import features, pipeline  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  directory = tempfile.mkdtemp(prefix="deeplab_bench_")
  path = os.path.join(directory, "train-00000-of-00001.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for i in range(16):  # VOC-sized photos-like JPEGs (500x375) with PNG labels.
      image = np.clip(rng.normal(128, 60, (375, 500, 3)), 0, 255).astype(np.uint8)
      label = rng.integers(0, NUM_CLASSES, (375, 500), dtype=np.uint8)
      jpeg, png = io.BytesIO(), io.BytesIO()
      Image.fromarray(image).save(jpeg, format="JPEG", quality=90)
      Image.fromarray(label).save(png, format="PNG")
      writer.write(features.encode_example(
          jpeg.getvalue(), png.getvalue(), filename=f"{i:06d}", height=375, width=500,
          image_format="jpeg"))
  dataset = pipeline.build_dataset(path, is_training=True, crop_size=(args["crop"], args["crop"]),
                                   batch_size=args["batch"], ignore_label=255, seed=0)
  iterator = iter(dataset)

  def run():  # PIPELINE_BATCHES back to back, so that prefetching does not hide the cost.
    for _ in range(PIPELINE_BATCHES):
      next(iterator)
  return run, 0


def main():
  args = json.loads(sys.argv[1])
  if args.get("threads"):
    tf.config.threading.set_intra_op_parallelism_threads(args["threads"])
  runner = {"matmul": matmul_runner, "input_pipeline": pipeline_runner}.get(args["candidate"],
                                                                            model_runner)
  run, work = runner(args)
  for _ in range(args.get("warmup", 2)):
    run()
  _emit({"ready": True, "multiply_adds": int(work)})
  for line in sys.stdin:
    if line.strip() != "run":
      break
    start = time.perf_counter()
    run()
    _emit({"seconds": time.perf_counter() - start})


if __name__ == "__main__":
  main()
