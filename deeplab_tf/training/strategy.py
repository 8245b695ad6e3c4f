"""tf.distribute strategies from a name, and the per-replica input pipeline.

research/deeplab trained several "clones" on one machine (`--num_clones`, gradients averaged) or many
workers with parameter servers. Here the same data-parallel training goes through tf.distribute:
'default' (one device), 'mirrored' (all local GPUs, or all logical CPUs), 'multi_worker'
(`MultiWorkerMirroredStrategy`, cluster from `TF_CONFIG`) and 'tpu' (`TPUStrategy`).

Synchronised BatchNorm across replicas is switched in `deeplab_tf.training.batch_norm`.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclasses.dataclass(frozen=True)
class StrategyConfig:
  """How to distribute training, from the binaries' flags.

  Attributes:
    strategy: one of `STRATEGIES` (flag `--strategy`).
    num_gpus: 'mirrored' only: the number of local GPUs to use (`/gpu:0..n-1`); 0 uses every visible
      GPU, or every logical CPU device when there is no GPU (flag `--num_gpus`).
    tpu: 'tpu' only: the TPU name or address (`grpc://...`), or 'local' on a TPU VM (flag `--tpu`).

  Raises:
    ValueError: an unknown strategy, a negative `num_gpus`, or 'tpu' without `tpu`; the message names
      the flag.
  """

  strategy: str = "default"
  num_gpus: int = 0
  tpu: Optional[str] = None

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"--strategy={self.strategy!r}: expected one of {STRATEGIES}.")
    if self.num_gpus < 0:
      raise ValueError(f"--num_gpus={self.num_gpus}: expected >= 0 (0 = all visible devices).")
    if self.strategy == "tpu" and not self.tpu:
      raise ValueError("--strategy=tpu needs --tpu (a TPU name, grpc:// address, or 'local').")
    if self.strategy != "tpu" and self.tpu:
      raise ValueError(f"--tpu={self.tpu!r} is only used with --strategy=tpu "
                       f"(got --strategy={self.strategy}).")
    if self.strategy != "mirrored" and self.num_gpus:
      raise ValueError(f"--num_gpus={self.num_gpus} is only used with --strategy=mirrored "
                       f"(got --strategy={self.strategy}).")


def mirrored_devices(num_gpus: int = 0):
  """The devices 'mirrored' replicates over (see `StrategyConfig.num_gpus`).

  Raises:
    ValueError: more GPUs asked than visible.
  """
  gpus = tf.config.list_logical_devices("GPU")
  if num_gpus:
    if num_gpus > len(gpus):
      raise ValueError(f"--num_gpus={num_gpus}: only {len(gpus)} GPU(s) visible.")
    return [d.name for d in gpus[:num_gpus]]
  if gpus:
    return [d.name for d in gpus]
  return [d.name for d in tf.config.list_logical_devices("CPU")]


def mirrored_strategy(devices) -> tf.distribute.MirroredStrategy:
  """`MirroredStrategy` over `devices`; CPU-only replicas reduce through one device.

  On CPU devices TF picks collective all-reduces, which deadlock or mismatch when the synchronised
  BN's forward/backward all-reduces and the optimizer's packed gradient all-reduce run in different
  orders on different replicas; `ReductionToOneDevice` has no such ordering constraint.
  """
  if any("GPU" in d.upper() for d in devices):
    return tf.distribute.MirroredStrategy(devices=devices)
  return tf.distribute.MirroredStrategy(
      devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())


def build_strategy(config: StrategyConfig) -> tf.distribute.Strategy:
  """Creates the strategy. Call it once, before building any model or dataset.

  Returns:
    The default strategy, a `MirroredStrategy`, a `MultiWorkerMirroredStrategy` (cluster and task
    from the `TF_CONFIG` environment variable; a single worker when unset) or a `TPUStrategy`.

  Raises:
    ValueError: see `mirrored_devices`.
    RuntimeError: 'tpu' and no TPU could be found or initialised at `config.tpu`.
  """
  if config.strategy == "default":
    return tf.distribute.get_strategy()
  if config.strategy == "mirrored":
    return mirrored_strategy(mirrored_devices(config.num_gpus))
  if config.strategy == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=config.tpu)
    # A TPU VM ('local') runs in-process; a remote TPU needs the eager context connected to it.
    if config.tpu != "local":
      tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, tf.errors.OpError) as e:
    raise RuntimeError(f"--tpu={config.tpu!r}: no TPU could be found or initialised there "
                       f"({type(e).__name__}: {str(e).splitlines()[0][:200]}).") from e
  return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the worker that writes checkpoints and summaries (always, except multi-worker task > 0)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return True
  task_type, task_id = resolver.task_type, resolver.task_id
  return task_type is None or task_type == "chief" or (
      task_type == "worker" and task_id == 0 and "chief" not in resolver.cluster_spec().as_dict())


def worker_id(strategy: tf.distribute.Strategy) -> int:
  """This worker's task index (0 outside multi-worker training)."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    return 0
  return int(resolver.task_id or 0)


def distribute_dataset(strategy: tf.distribute.Strategy,
                       dataset_fn: Callable[[tf.distribute.InputContext], tf.data.Dataset]):
  """Per-worker input pipelines whose batches feed the replicas.

  `dataset_fn(input_context)` must shard its input by `input_context.input_pipeline_id` out of
  `input_context.num_input_pipelines` and batch to
  `input_context.get_per_replica_batch_size(global_batch_size)`; the strategy hands consecutive
  batches of each pipeline to that worker's replicas. Returns a distributed dataset.
  """
  return strategy.distribute_datasets_from_function(dataset_fn)
