"""Import of research/deeplab's TF1 checkpoints (the model zoo's `model.ckpt`) into our Keras models.

One rule maps every model weight to its checkpoint name, no table: the Keras layer name with `.` read
as `/` (`layers.layer_name_to_scope`, the inverse of how the layers were named after the original's
variable scopes) plus slim's variable name for the weight: `kernel` -> `weights` (`depthwise_weights`
for a depthwise conv; a separable conv's `depthwise_kernel`, `pointwise_kernel` -> `depthwise_weights`,
`pointwise_weights`), `bias` -> `biases`, BatchNorm's `gamma`, `beta`, `moving_mean`,
`moving_variance` unchanged. E.g. Keras `xception_65.entry_flow.conv1_1.BatchNorm` / `moving_mean` is
`xception_65/entry_flow/conv1_1/BatchNorm/moving_mean`.

Loading is strict, unlike the original's `slim.assign_from_checkpoint_fn(ignore_missing_vars=True)`,
which silently left weights uninitialised when a name did not match (tensorflow/models#5390, #7631):
every model weight must be assigned and every checkpoint variable used, apart from the training
bookkeeping the original saved beside the model (`global_step`, optimizer slots such as `*/Momentum`,
`ExponentialMovingAverage` shadows) and the last layers deliberately skipped for fine-tuning
(`initialize_last_layer=False`, research/deeplab `train_utils.get_model_init_fn`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import tarfile
from typing import Dict, Iterator, List, Tuple

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.io_utils import atomic_output, isdir, local_scratch_dir
from deeplab_tf.model import acceleration
from deeplab_tf.model.deeplab import get_extra_layer_scopes
from deeplab_tf.model.layers import layer_name_to_scope

# Keras weight name -> slim variable name (the weight's last path component).
_WEIGHT_NAMES = {
    "kernel": "weights",
    "bias": "biases",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
    # A slim separable_conv2d with num_outputs (the NAS cells): one layer, both kernels.
    "depthwise_kernel": "depthwise_weights",
    "pointwise_kernel": "pointwise_weights",
}

# Checkpoint variables that are training state, not model weights.
_BOOKKEEPING = re.compile(
    r"(^|/)(global_step|beta1_power|beta2_power|Momentum|Momentum_1|ExponentialMovingAverage|"
    r"Adam|Adam_1|RMSProp|RMSProp_1|Adagrad|Ftrl|Ftrl_1)(/|$)")

_MAX_LISTED = 25


class CheckpointMismatchError(ValueError):
  """The checkpoint and the model disagree: names missing or left over, or shapes that differ."""

  def __init__(self, message: str, missing: List[str], unexpected: List[str],
               shape_mismatches: List[Tuple[str, tuple, tuple]]):
    super().__init__(message)
    self.missing = missing
    self.unexpected = unexpected
    self.shape_mismatches = shape_mismatches


@dataclasses.dataclass(frozen=True)
class LoadReport:
  """What `load_tf1_checkpoint` did.

  Attributes:
    checkpoint: the checkpoint prefix read.
    assigned: number of model weights assigned from the checkpoint.
    skipped_model: names of model weights deliberately left as initialised (last layers).
    skipped_checkpoint: names of checkpoint variables not used: the skipped last layers and the
      training bookkeeping (global_step, optimizer slots, moving averages).
  """

  checkpoint: str
  assigned: int
  skipped_model: Tuple[str, ...]
  skipped_checkpoint: Tuple[str, ...]


def checkpoint_name(layer: keras.layers.Layer, weight) -> str:
  """The research/deeplab checkpoint name of one weight of `layer` (the one rule).

  Raises:
    ValueError: a weight kind the rule does not know (not a conv kernel/bias or a BatchNorm variable).
  """
  short = weight.path.split("/")[-1]
  if short not in _WEIGHT_NAMES:
    raise ValueError(f"Layer {layer.name!r} has weight {weight.path!r}, which has no research/deeplab "
                     f"checkpoint name; expected one of {sorted(_WEIGHT_NAMES)}.")
  slim_name = _WEIGHT_NAMES[short]
  if short == "kernel" and isinstance(layer, keras.layers.DepthwiseConv2D):
    slim_name = "depthwise_weights"
  return layer_name_to_scope(layer.name) + "/" + slim_name


def model_weights_by_checkpoint_name(model: keras.Model) -> Dict[str, object]:
  """`{checkpoint name: keras variable}` for every weight of `model` (trainable and BN statistics).

  Raises:
    ValueError: two weights map to the same name, or a weight the rule cannot name.
  """
  names: Dict[str, object] = {}
  for layer in model.layers:
    for weight in layer.weights:
      name = checkpoint_name(layer, weight)
      if name in names:
        raise ValueError(f"Two weights of model {model.name!r} map to the checkpoint name {name!r}.")
      names[name] = weight
  return names


def is_bookkeeping(name: str) -> bool:
  """True for checkpoint variables that are training state (global_step, optimizer slots, EMA)."""
  return bool(_BOOKKEEPING.search(name))


@contextlib.contextmanager
def resolve_tf1_checkpoint(path: str) -> Iterator[str]:
  """Yields the checkpoint prefix for `path`: a prefix, a folder holding one, or a .tar.gz.

  Any filesystem `tf.io.gfile` knows (local, `gs://`, ...). A model-zoo archive (`.tar.gz`, `.tgz` or
  `.tar`) is streamed through gfile and extracted into a local temporary folder that is removed when the
  context exits. In a folder, the `checkpoint` state file's latest checkpoint is used, else the
  one `*.index` file found (searching sub-folders, as the archives hold one folder).

  Raises:
    FileNotFoundError: nothing at `path`, or no checkpoint in the folder/archive.
    ValueError: several checkpoints and no `checkpoint` state file to choose among them.
  """
  if path.endswith(".index"):
    path = path[:-len(".index")]
  if path.endswith((".tar.gz", ".tgz", ".tar")) and tf.io.gfile.exists(path) \
      and not tf.io.gfile.isdir(path):
    with local_scratch_dir(prefix="deeplab_ckpt_") as tmp:
      with tf.io.gfile.GFile(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as archive:
        archive.extractall(tmp, filter="data")
      yield _prefix_in_folder(tmp, origin=path)
    return
  if isdir(path):
    yield _prefix_in_folder(path, origin=path)
    return
  if tf.io.gfile.exists(path + ".index"):
    yield path
    return
  raise FileNotFoundError(f"{path}: not a TF1 checkpoint (no {path}.index), a folder holding one, or a "
                          ".tar.gz model-zoo archive.")


def _prefix_in_folder(folder: str, origin: str) -> str:
  latest = tf.train.latest_checkpoint(folder)
  if latest is not None and tf.io.gfile.exists(latest + ".index"):
    return latest
  indexes = sorted(os.path.join(root, name) for root, _, files in tf.io.gfile.walk(folder)
                   for name in files if name.endswith(".index"))
  if not indexes:
    raise FileNotFoundError(f"{origin}: no checkpoint found (no *.index file).")
  if len(indexes) > 1:
    folders = {os.path.dirname(p) for p in indexes}
    latest = tf.train.latest_checkpoint(folders.pop()) if len(folders) == 1 else None
    if latest is not None:
      return latest
    raise ValueError(f"{origin}: several checkpoints {[p[:-6] for p in indexes]}; pass the prefix of "
                     "the one to load.")
  return indexes[0][:-len(".index")]


def _excluded(name: str, scopes: Tuple[str, ...]) -> bool:
  return any(name.startswith(scope) for scope in scopes)


def _listing(title: str, items: List[str]) -> str:
  shown = items[:_MAX_LISTED]
  more = f"\n    ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
  return f"  {title} ({len(items)}):\n" + "\n".join(f"    {s}" for s in shown) + more


def load_tf1_checkpoint(model: keras.Model, checkpoint_path: str, initialize_last_layer: bool = True,
                        last_layers_contain_logits_only: bool = True) -> LoadReport:
  """Assigns a research/deeplab TF1 checkpoint's variables to `model`'s weights, by the one name rule.

  Args:
    model: a model from `build_deeplab` (any input size; weights do not depend on it).
    checkpoint_path: a `model.ckpt` prefix, a folder holding one, or a model-zoo `.tar.gz`.
    initialize_last_layer: False leaves the last layers as initialised and ignores them in the
      checkpoint (fine-tuning to another number of classes; research/deeplab's flag of this name).
    last_layers_contain_logits_only: with `initialize_last_layer=False`, True skips only
      `logits/*`; False also skips the whole head: `aspp*`, `image_pooling`, `concat_projection`,
      `decoder` (`model.get_extra_layer_scopes`).

  Returns:
    A `LoadReport` (checkpoint prefix, assigned count, skipped names).

  Raises:
    FileNotFoundError, ValueError: see `resolve_tf1_checkpoint`.
    CheckpointMismatchError: (a ValueError) a model weight with no checkpoint variable, a checkpoint
      variable with no model weight, or a shape mismatch; the message lists all of them. Nothing is
      assigned in that case.
  """
  skipped_scopes: Tuple[str, ...] = ()
  if not initialize_last_layer:
    # Excluded by name prefix, as slim.get_variables_to_restore(exclude=...) does.
    skipped_scopes = get_extra_layer_scopes(last_layers_contain_logits_only)
  weights = model_weights_by_checkpoint_name(model)
  with resolve_tf1_checkpoint(checkpoint_path) as prefix:
    # The prefix is resolved already: read it directly (tf.train.load_checkpoint would first ask whether
    # it is a folder, which TF's ram:// filesystem answers yes for any prefix of a stored name).
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    shapes = reader.get_variable_to_shape_map()
    skipped_checkpoint = sorted(n for n in shapes if is_bookkeeping(n) or _excluded(n, skipped_scopes))
    wanted = {n: w for n, w in weights.items() if not _excluded(n, skipped_scopes)}
    skipped_model = sorted(set(weights) - set(wanted))
    available = {n: tuple(s) for n, s in shapes.items() if n not in set(skipped_checkpoint)}
    missing = sorted(set(wanted) - set(available))
    unexpected = sorted(set(available) - set(wanted))
    mismatches = [(n, tuple(wanted[n].shape), available[n])
                  for n in sorted(set(wanted) & set(available))
                  if tuple(wanted[n].shape) != available[n]]
    if missing or unexpected or mismatches:
      raise _mismatch_error(prefix, model, missing, unexpected, mismatches, initialize_last_layer)
    for name, weight in wanted.items():
      weight.assign(np.asarray(reader.get_tensor(name), dtype=weight.dtype))
  return LoadReport(prefix, len(wanted), tuple(skipped_model), tuple(skipped_checkpoint))


def _mismatch_error(prefix, model, missing, unexpected, mismatches, initialize_last_layer):
  parts = [f"{prefix}: the checkpoint does not match model {model.name!r} "
           f"({len(missing)} missing, {len(unexpected)} unexpected, {len(mismatches)} shape "
           "mismatches)."]
  if missing:
    parts.append(_listing("model weights missing from the checkpoint", missing))
  if unexpected:
    parts.append(_listing("checkpoint variables the model does not have", unexpected))
  if mismatches:
    parts.append(_listing("shape mismatches (model vs checkpoint)",
                          [f"{n}: model {list(m)} vs checkpoint {list(c)}" for n, m, c in mismatches]))
  if initialize_last_layer and any(n.startswith("logits") for n, _, _ in mismatches):
    parts.append("  The logits differ in shape: to fine-tune to another number of classes, load with "
                 "initialize_last_layer=False.")
  if missing and unexpected:
    parts.append("  Check that the model options (model_variant, decoder_output_stride, atrous_rates, "
                 "aspp_with_separable_conv, decoder_use_separable_conv, ...) are the checkpoint's.")
  return CheckpointMismatchError("\n".join(parts), missing, unexpected, mismatches)


@dataclasses.dataclass(frozen=True)
class ConversionResult:
  """Where `convert_tf1_checkpoint` wrote its outputs, and the load report."""

  keras_path: str
  saved_model_dir: str
  model_options_path: str
  report: LoadReport


KERAS_FILENAME = "model.keras"
SAVED_MODEL_DIRNAME = "saved_model"


def save_keras_atomically(model: keras.Model, path: str) -> str:
  """`model.save(path)` through a temporary `.keras` file in the same folder and a rename.

  What is saved is `model` in plain Keras layers (`acceleration.portable_model`): a `.keras` file
  loads and runs on any TensorFlow, whatever kernel policy `model` was rewritten for.

  Raises:
    ValueError: `path` does not end with `.keras`.
  """
  if not path.endswith(".keras"):
    raise ValueError(f"{path}: a Keras model file must end with .keras.")
  with atomic_output(path, suffix=".keras") as tmp:
    acceleration.portable_model(model).save(tmp)
  return path


def convert_tf1_checkpoint(checkpoint_path: str, options, output_dir: str, *,
                           initialize_last_layer: bool = True,
                           last_layers_contain_logits_only: bool = True,
                           overwrite: bool = False) -> ConversionResult:
  """Builds the model of `options`, loads a research/deeplab checkpoint into it, and writes it out.

  Writes, each atomically (temporary name, then rename): `<output_dir>/model.keras`,
  `<output_dir>/saved_model/` (`deeplab_tf.export.export_saved_model`: serving signatures on images,
  options inside) and `<output_dir>/model_options.json` (`ModelOptions.to_json()`), which
  `deeplab_tf.model_io.load_model` reads beside the `.keras` file.

  Args:
    checkpoint_path: a TF1 `model.ckpt` prefix, a folder holding one, or a model-zoo `.tar.gz`.
    options: the `ModelOptions` the checkpoint was trained with.
    output_dir: destination folder (created if needed).
    initialize_last_layer, last_layers_contain_logits_only: as `load_tf1_checkpoint`.
    overwrite: replace existing outputs; otherwise an existing output raises.

  Returns:
    A `ConversionResult`.

  Raises:
    FileExistsError: an output exists and `overwrite` is False.
    FileNotFoundError, ValueError, CheckpointMismatchError: see `load_tf1_checkpoint`.
  """
  # Imported here: these modules build on the model; checkpoints.py itself only needs the naming rule.
  from deeplab_tf.export import export_saved_model
  from deeplab_tf.model.deeplab import build_deeplab
  from deeplab_tf.model_io import save_model_options

  keras_path = os.path.join(output_dir, KERAS_FILENAME)
  saved_model_dir = os.path.join(output_dir, SAVED_MODEL_DIRNAME)
  if not overwrite:
    for path in (keras_path, saved_model_dir):
      if tf.io.gfile.exists(path):
        raise FileExistsError(f"{path} exists; choose another output directory or overwrite.")
  model = build_deeplab(options)
  report = load_tf1_checkpoint(model, checkpoint_path, initialize_last_layer,
                               last_layers_contain_logits_only)
  save_keras_atomically(model, keras_path)
  export_saved_model(model, saved_model_dir, options, overwrite=overwrite)
  options_path = save_model_options(output_dir, options)
  return ConversionResult(keras_path, saved_model_dir, options_path, report)
