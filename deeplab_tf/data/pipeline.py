"""Input pipelines: TFRecord shards (or a prepared tensorflow-datasets dataset) -> augmented batches.

research/deeplab's `datasets/data_generator.py` (`Dataset.get_one_shot_iterator`): read the shards in
parallel, parse, preprocess (`deeplab_tf.data.preprocess`), shuffle and repeat when training, batch. In
a multi-worker run each input pipeline reads its own part of the data (`tf.distribute.InputContext`).
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple, Union

import tensorflow as tf

from deeplab_tf import io_utils
from deeplab_tf.data import features, preprocess

# research/deeplab data_generator: `dataset.shuffle(buffer_size=100)`, `num_parallel_reads`.
SHUFFLE_BUFFER_SIZE = 100
_AUTOTUNE = tf.data.AUTOTUNE

# tensorflow-datasets sources: the image and label feature keys of the datasets we know, and for
# Cityscapes the mapping of its label ids (tfds stores *_gtFine_labelIds) to the 19 train ids.
TFDS_KEYS = {
    "scene_parse150": ("image", "annotation"),
    "cityscapes": ("image_left", "segmentation_label"),
}


def _cityscapes_id_to_train_id() -> tf.Tensor:
  from deeplab_tf.data import descriptors  # pylint: disable=g-import-not-at-top
  table = [255] * 256  # every label id that is not one of the 19 evaluated classes is ignored
  for train_id, label_id in enumerate(descriptors.CITYSCAPES_TRAIN_ID_TO_LABEL_ID):
    table[label_id] = train_id
  return tf.constant(table, tf.int32)


def list_files(file_pattern: Union[str, Sequence[str]]) -> Sequence[str]:
  """Sorted files matching a glob pattern (or a list of patterns).

  Raises:
    ValueError: naming the pattern, if nothing matches.
  """
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  files = sorted({f for p in patterns for f in tf.io.gfile.glob(p)})
  if not files:
    raise ValueError(f"No file matches {file_pattern!r}. Point it at the shards a datasets/build_*_data.py "
                     "converter wrote, e.g. '/data/tfrecord/train-*.tfrecord'.")
  return files


def _per_pipeline_batch(batch_size: int, input_context: Optional[tf.distribute.InputContext]) -> int:
  if input_context is None:
    return batch_size
  return input_context.get_per_replica_batch_size(batch_size)


def _records(file_pattern, input_context, shuffle: bool, seed) -> tf.data.Dataset:
  files = list_files(file_pattern)
  num_pipelines = input_context.num_input_pipelines if input_context else 1
  index = input_context.input_pipeline_id if input_context else 0
  dataset = tf.data.Dataset.from_tensor_slices(files)
  shard_files = num_pipelines > 1 and len(files) >= num_pipelines
  if shard_files:
    dataset = dataset.shard(num_pipelines, index)
  if shuffle:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  # Shuffled: read up to 8 files at once; else in file order, so evaluation sees the split in order.
  # Each record travels with its shard's name, so that a bad record's message names the shard.
  dataset = dataset.interleave(lambda f: tf.data.TFRecordDataset(f).map(lambda r: (r, f)),
                               cycle_length=min(len(files), 8) if shuffle else 1,
                               num_parallel_calls=_AUTOTUNE, deterministic=not shuffle or seed is not None)
  if num_pipelines > 1 and not shard_files:
    dataset = dataset.shard(num_pipelines, index)
  return dataset.map(features.parse_example, num_parallel_calls=_AUTOTUNE)


def input_error_message(error: Exception, file_pattern: Union[str, Sequence[str]]) -> Optional[str]:
  """One line for a data fault that stopped a pipeline of `build_dataset`, or None if not one.

  For the edge of a binary: a truncated or corrupted shard (`DataLossError`, which names no file: the
  shards are read again to find it, `unreadable_shards`), and the pipeline's own checks (a record
  without image or label bytes, a label outside [0, num_classes)), whose assertion text is turned
  into a sentence.
  """
  if isinstance(error, tf.errors.DataLossError):
    bad = unreadable_shards(file_pattern)
    if not bad:
      return None
    shards = "; ".join(f"{path} ({problem})" for path, problem in bad[:3])
    more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
    return (f"Shard(s) truncated or corrupted: {shards}{more}. Re-run the datasets/ converter that "
            "made this split (a copy cut short or a killed converter leaves such shards).")
  text = str(getattr(error, "message", error))
  marker = "assertion failed: "
  if isinstance(error, tf.errors.InvalidArgumentError) and marker in text:
    line = text.split(marker, 1)[1].split("\n")[0].split(" [[")[0].strip()
    if not (line.startswith(f"[{features.MISSING_KEYS_MESSAGE}") or line.startswith("[Labels of")):
      return None
    return line.strip("[]").replace("] [", " ").replace("\\'", "'")
  return None


def unreadable_shards(file_pattern: Union[str, Sequence[str]]) -> Sequence[Tuple[str, str]]:
  """`(shard, problem)` for every shard of `file_pattern` that does not read to its end.

  Reads every record of every shard once (no decoding): what to call after tf.data stopped with a
  `DataLossError` ("truncated record at 0"), which names no file.
  """
  bad = []
  for path in list_files(file_pattern):
    try:
      for _ in tf.data.TFRecordDataset(path):
        pass
    except (tf.errors.DataLossError, tf.errors.OutOfRangeError, tf.errors.InvalidArgumentError) as e:
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      bad.append((path, first.split(" [[")[0][:160]))
  return bad


def _tfds_examples(tfds_name: str, tfds_split: str, tfds_data_dir: Optional[str],
                   tfds_keys: Optional[Tuple[str, str]], input_context, shuffle: bool) -> tf.data.Dataset:
  from deeplab_tf.errors import require_extra  # pylint: disable=g-import-not-at-top
  tfds = require_extra("tensorflow_datasets", "tfds", f"Reading tensorflow-datasets {tfds_name!r}")
  base_name = tfds_name.split("/")[0].split(":")[0]
  image_key, label_key = tfds_keys or TFDS_KEYS.get(base_name, ("image", "segmentation_mask"))
  read_config = tfds.ReadConfig(input_context=input_context, add_tfds_id=True,
                                shuffle_reshuffle_each_iteration=True)
  try:
    dataset = tfds.load(tfds_name, split=tfds_split, data_dir=tfds_data_dir, download=False,
                        shuffle_files=shuffle, read_config=read_config)
  except (tfds.core.registered.DatasetNotFoundError, AssertionError, FileNotFoundError) as e:
    raise ValueError(f"Cannot read tensorflow-datasets dataset {tfds_name!r} split {tfds_split!r} from "
                     f"data_dir {tfds_data_dir!r}: {e}. Prepare it first (`tfds build {tfds_name} "
                     "--data_dir=...` with the manual downloads it asks for) and pass its data_dir.") from e
  lookup = _cityscapes_id_to_train_id() if base_name == "cityscapes" else None

  def convert(example):
    for key in (image_key, label_key):
      if key not in example:
        raise ValueError(f"tensorflow-datasets {tfds_name!r} has no feature {key!r} (it has "
                         f"{sorted(example)}); pass tfds_keys=(image_key, label_key).")
    image = example[image_key]
    label = tf.cast(example[label_key], tf.int32)
    if label.shape.rank == 2:
      label = label[..., None]
    label = label[..., :1]
    if lookup is not None:
      label = tf.gather(lookup, label)
    shape = tf.shape(image)
    return {"image": image, "label": label, "image_name": example["tfds_id"],
            "height": shape[0], "width": shape[1]}

  return dataset.map(convert, num_parallel_calls=_AUTOTUNE)


def _source_description(file_pattern, tfds_name, tfds_split) -> str:
  """The split a pipeline reads, for messages: "the train split (shards /data/train-*.tfrecord)".

  No quotes: TensorFlow escapes them in an assertion's message."""
  if tfds_name is not None:
    return f"the {tfds_split} split of tensorflow-datasets {tfds_name}"
  patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
  split = io_utils.basename(patterns[0]).split("-")[0] if patterns else ""
  return f"the {split} split (shards {', '.join(patterns)})"


def check_label_range(batch: Dict[str, tf.Tensor], num_classes: int, ignore_label: int,
                      source: str = "the dataset") -> Dict[str, tf.Tensor]:
  """Passes `batch` through if every label is in [0, num_classes) or is `ignore_label`; else raises.

  One reduction per batch. Without it a label >= num_classes stops training only inside the loss with
  TensorFlow's raw error on CPU, and silently gives NaN on GPU.

  Args:
    batch: a dict with "label" int `[b, h, w, 1]` and, for the message, "image_name" string `[b]`.
    num_classes: the model's number of classes.
    ignore_label: the one label allowed outside [0, num_classes).
    source: what the batch comes from, named in the message (e.g. "the train split (shards ...)").

  Returns:
    `batch`, unchanged once the check has run.

  Raises:
    tf.errors.InvalidArgumentError (when the batch is computed): naming `source`, num_classes (flag
      --num_classes), ignore_label, the offending label values and the images holding them.
  """
  label = batch["label"]
  bad = tf.logical_or(label < 0, tf.logical_and(label >= num_classes, label != ignore_label))
  offending, _ = tf.unique(tf.reshape(tf.boolean_mask(label, bad), [-1]))
  data = [f"Labels of {source} hold values outside [0, {num_classes}) other than ignore_label="
          f"{ignore_label}; the model has num_classes={num_classes} (flag --num_classes): set it to the "
          "dataset's number of classes, or map those values to ignore_label when converting. "
          "Offending label values:", offending]
  if "image_name" in batch:
    bad_images = tf.reduce_any(tf.reshape(bad, [tf.shape(bad)[0], -1]), axis=1)
    data += ["in images:", tf.boolean_mask(batch["image_name"], bad_images)]
  check = tf.debugging.Assert(tf.logical_not(tf.reduce_any(bad)), data, summarize=10)
  with tf.control_dependencies([check]):
    return dict(batch, label=tf.identity(label))


def check_example_label_range(example: Dict[str, tf.Tensor], num_classes: int, ignore_label: int,
                              source: str = "the dataset") -> Dict[str, tf.Tensor]:
  """`check_label_range` on one unbatched example (its whole label, before any crop)."""
  batch = {"label": example["label"][tf.newaxis]}
  if "image_name" in example:
    batch["image_name"] = tf.reshape(example["image_name"], [1])
  checked = check_label_range(batch, num_classes, ignore_label, source)
  return dict(example, label=checked["label"][0])


def build_dataset(file_pattern: Union[str, Sequence[str], None], *, is_training: bool,
                  crop_size: Optional[Tuple[int, int]], batch_size: int, ignore_label: int,
                  mean_pixel: Sequence[float] = (127.5, 127.5, 127.5), min_scale_factor: float = 0.5,
                  max_scale_factor: float = 2.0, scale_factor_step_size: float = 0.25,
                  shuffle: Optional[bool] = None, repeat: Optional[bool] = None,
                  input_context: Optional[tf.distribute.InputContext] = None, seed: Optional[int] = None,
                  tfds_name: Optional[str] = None, tfds_split: Optional[str] = None,
                  tfds_data_dir: Optional[str] = None, tfds_keys: Optional[Tuple[str, str]] = None,
                  min_resize_value: Optional[int] = None, max_resize_value: Optional[int] = None,
                  resize_factor: Optional[int] = None, keep_aspect_ratio: bool = True,
                  num_classes: Optional[int] = None
                  ) -> tf.data.Dataset:
  """Batches of preprocessed examples from TFRecord shards or from a prepared tfds dataset.

  Training (`is_training=True`): random scale in {min, min+step, ..., max}, pad with mean pixel /
  ignore_label, random crop to `crop_size`, left-right flip p=0.5 (`deeplab_tf.data.preprocess`,
  DeepLabv3 section 4.1); shuffled, repeated, and the last incomplete batch dropped (static shapes).
  Evaluation: no augmentation; with `crop_size` each image is padded at the bottom/right to it (an
  image larger than crop_size is an error naming it), without it `batch_size` must be 1.

  Args:
    file_pattern: glob(s) of `{split}-*.tfrecord` shards; None when reading tfds.
    is_training: augment (True) or not.
    crop_size: (height, width); required when training.
    batch_size: the global batch size; with `input_context` each pipeline batches
      `input_context.get_per_replica_batch_size(batch_size)` (the tf.distribute convention).
    ignore_label: label of padded and "don't care" pixels.
    mean_pixel: RGB value of padded image pixels.
    min_scale_factor: smallest random scale.
    max_scale_factor: largest random scale.
    scale_factor_step_size: distance between candidate scales (0: continuous).
    shuffle: shuffle files and records; default `is_training`.
    repeat: repeat forever; default `is_training`.
    input_context: from `strategy.distribute_datasets_from_function`: each input pipeline reads every
      `num_input_pipelines`-th file (or record, when there are fewer files than pipelines).
    seed: makes shuffling and augmentation reproducible.
    tfds_name: read this tensorflow-datasets dataset (e.g. `scene_parse150`, `cityscapes`) instead of
      shards; it must already be prepared under `tfds_data_dir` (nothing is downloaded).
    tfds_split: the tfds split, e.g. `train`, `validation`.
    tfds_data_dir: the tfds data directory (default: tfds' own).
    tfds_keys: (image feature, label feature) of the tfds dataset; known for `scene_parse150` and
      `cityscapes` (whose label ids are mapped to the 19 train ids), else ("image", "segmentation_mask").
    min_resize_value: resize every image (and label) first into a size range, training and evaluation
      alike, as research/deeplab's flag of the same name (`preprocess.resize_to_range`); None: no resize.
    max_resize_value: see `preprocess.resize_to_range` (`max_size`).
    resize_factor: see `preprocess.resize_to_range` (`factor`).
    keep_aspect_ratio: see `preprocess.resize_to_range`.
    num_classes: the model's number of classes; when given, every example's whole label (once, as
      parsed, before scaling and cropping) is checked to be in [0, num_classes) or `ignore_label`
      (`check_label_range`), so that a wrong `--num_classes` stops at the first bad example with a
      message naming the split, the values and the image; a check of the crops alone found a bad
      value only in the crops that happened to hold it.

  Returns:
    A dataset of dicts: "image" float32 [b, h, w, 3] RGB in [0, 255]; "label" int32 [b, h, w, 1];
    "image_name" string [b]; "height", "width" int32 [b], the size before resizing, scaling and padding;
    "labelled_pixels" int32 [b], the pixels of each whole label (before cropping) that are not
    `ignore_label` (the trainer refuses a split whose labels are all ignored).

  Raises:
    ValueError: if no file matches, crop_size is missing when training, batch_size > 1 in evaluation
      without crop_size, both or neither of file_pattern and tfds_name are given, or scale factors or
      resize values are inconsistent.
    tf.errors.InvalidArgumentError: while iterating, a label outside [0, num_classes) other than
      ignore_label (only when `num_classes` is given), or a record without image or label bytes
      (`features.parse_example`, naming its shard).
    tf.errors.DataLossError: while iterating, a truncated or corrupted shard (`unreadable_shards`
      names it).
  """
  resize = dict(min_resize_value=min_resize_value, max_resize_value=max_resize_value,
                resize_factor=resize_factor, keep_aspect_ratio=keep_aspect_ratio)
  preprocess.check_resize_values(min_resize_value, max_resize_value, resize_factor)
  if (file_pattern is None) == (tfds_name is None):
    raise ValueError("Give exactly one of file_pattern (TFRecord shards) and tfds_name (a prepared "
                     f"tensorflow-datasets dataset); got file_pattern={file_pattern!r}, tfds_name={tfds_name!r}.")
  if tfds_name is not None and not tfds_split:
    raise ValueError(f"tfds_split is required with tfds_name={tfds_name!r}, e.g. 'train' or 'validation'.")
  if batch_size < 1:
    raise ValueError(f"batch_size is {batch_size}; it must be at least 1.")
  if crop_size is not None:
    crop_size = (int(crop_size[0]), int(crop_size[1]))
  if is_training:
    if crop_size is None:
      raise ValueError("crop_size is required when is_training=True (e.g. (513, 513)).")
    preprocess.check_scale_factors(min_scale_factor, max_scale_factor, scale_factor_step_size)
  local_batch = _per_pipeline_batch(batch_size, input_context)
  if not is_training and crop_size is None and local_batch != 1:
    raise ValueError(f"Evaluation without crop_size needs batch_size 1 (images differ in size); got "
                     f"{local_batch}. Pass crop_size to pad every image to it, or batch_size=1.")
  shuffle = is_training if shuffle is None else shuffle
  repeat = is_training if repeat is None else repeat

  if tfds_name is not None:
    dataset = _tfds_examples(tfds_name, tfds_split, tfds_data_dir, tfds_keys, input_context, shuffle)
  else:
    dataset = _records(file_pattern, input_context, shuffle, seed)
  source = _source_description(file_pattern, tfds_name, tfds_split)
  if num_classes is not None:
    dataset = dataset.map(lambda e: check_example_label_range(e, num_classes, ignore_label, source),
                          num_parallel_calls=_AUTOTUNE)
  dataset = dataset.map(lambda e: dict(e, labelled_pixels=tf.reduce_sum(
      tf.cast(tf.not_equal(e["label"], ignore_label), tf.int32))), num_parallel_calls=_AUTOTUNE)
  if repeat:
    dataset = dataset.repeat()
  if shuffle:
    dataset = dataset.shuffle(SHUFFLE_BUFFER_SIZE, seed=seed, reshuffle_each_iteration=True)

  def train_map(example: Dict[str, tf.Tensor], element_seed: tf.Tensor) -> Dict[str, tf.Tensor]:
    image, label = preprocess.preprocess_for_train(
        example["image"], example["label"], crop_size=crop_size, ignore_label=ignore_label,
        mean_pixel=mean_pixel, min_scale_factor=min_scale_factor, max_scale_factor=max_scale_factor,
        scale_factor_step_size=scale_factor_step_size, seed=element_seed, **resize)
    return dict(example, image=image, label=label)

  def eval_map(example: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    image, label = preprocess.preprocess_for_eval(
        example["image"], example["label"], crop_size=crop_size, ignore_label=ignore_label,
        mean_pixel=mean_pixel, image_name=example["image_name"], **resize)
    return dict(example, image=image, label=label)

  if is_training:
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    dataset = tf.data.Dataset.zip((dataset, seeds)).map(train_map, num_parallel_calls=_AUTOTUNE)
  else:
    dataset = dataset.map(eval_map, num_parallel_calls=_AUTOTUNE)
  dataset = dataset.batch(local_batch, drop_remainder=is_training)
  return dataset.prefetch(_AUTOTUNE)
