"""Reading and validating image/label files, and writing them as sharded TFRecords atomically.

What research/deeplab's `datasets/build_data.py` and `build_*_data.py` do, with the checks the original
leaves out: every image is fully decoded (a truncated JPEG or PNG is caught here, not in training), labels
must be single-channel index maps (a colour-coded mask is refused unless converted through a palette),
image and label sizes must agree, and every label value must be a class id or `ignore_label`. Every
problem is an `InputError` naming the file, what is wrong and the fix.

Shards are named `{split}-{i:05d}-of-{n:05d}.tfrecord` as the original's; all shards of a split are
written under temporary names and renamed only when the whole split is complete, so an interrupted run
leaves no partial shard and a re-run starts afresh. Files are read and written through `tf.io.gfile`, so
inputs and outputs may be on any filesystem TensorFlow knows (local, `gs://`, ...).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import socket
import time
import uuid
from typing import Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_tf import image_decoding
from deeplab_tf.data import features
from deeplab_tf.errors import UserError

# Image formats whose bytes are stored as they are (when the image is 8-bit RGB); anything else is
# converted to 8-bit RGB and stored as PNG, losslessly.
_KEPT_FORMATS = {"JPEG": "jpeg", "PNG": "png"}
_TMP_PREFIX = ".tmp-"
# Temporary files of another process (or of one whose liveness cannot be checked: another host, an older
# name) are removed by the next run once this old; a dead process's on this host at once.
STALE_TEMPORARY_SECONDS = 3600
# Temporary shard names: .tmp-<pid>@<host>-<token>-<shard name>.
_TMP_NAME = re.compile(r"^\.tmp-(?:(?P<pid>\d+)@(?P<host>[^-]*)-)?")
# io_utils.atomic_output's temporary names: .<name>.<12 hex>.tmp
_ATOMIC_TMP_NAME = re.compile(r"^\..+\.[0-9a-f]{12}\.tmp$")


class InputError(UserError):
  """An input file (or list, or directory) that cannot be converted; the message names it and the fix."""


@dataclasses.dataclass(frozen=True)
class ImageData:
  """A decoded image.

  Attributes:
    pixels: uint8 [height, width, 3] RGB.
    encoded: the file's own bytes when they can be stored as they are (8-bit RGB JPEG or PNG), else None.
    image_format: `jpeg` or `png`, the format of `encoded`; None when `encoded` is None.
  """

  pixels: np.ndarray
  encoded: Optional[bytes] = None
  image_format: Optional[str] = None


def _read_bytes(path: str, what: str, missing_hint: str = "") -> bytes:
  """The bytes of a file on any filesystem, turning every failure into an `InputError`."""
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError as e:
    raise InputError(f"Missing {what} file {path}: it does not exist. " + (
        missing_hint or "Check the folder flags and that the file list names only files that are "
        "present.")) from e
  except tf.errors.OpError as e:
    raise InputError(f"Unreadable {what} file {path}: {e.message}. Check that it is a file you may "
                     "read.") from e


def _open(path: str, what: str) -> Tuple[Image.Image, bytes]:
  """Reads and fully decodes an image file, turning every failure into an `InputError`.

  Returns:
    The decoded Pillow image and the file's bytes.
  """
  data = _read_bytes(path, what)
  try:
    img = Image.open(io.BytesIO(data))
    img.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise InputError(f"Unreadable {what} file {path}: {e}. The file is truncated or not an image; "
                     "re-download or re-export it, or remove it from the split.") from e
  return img, data


def rescale_to_uint8(array: np.ndarray) -> np.ndarray:
  """`deeplab_tf.image_decoding.rescale_to_uint8` (the one rule, shared with prediction and export) on numpy.

  A linear min-max stretch over the whole source image: `round((x - min) * 255 / (max - min))`; a
  constant image maps to 0; uint8 input is returned unchanged.
  """
  return image_decoding.rescale_to_uint8(array).numpy()


def read_image(path: str) -> ImageData:
  """Reads an image file as 8-bit RGB, keeping its bytes when they can be stored as they are.

  Gray images are replicated to RGB, an alpha channel is dropped, palette images are expanded to their
  colours, and images of more than 8 bits per sample (e.g. Pillow modes `I;16`, `I`, `F`) are mapped to
  uint8 by `rescale_to_uint8`.

  Args:
    path: an image file Pillow can read (JPEG, PNG, TIFF, ...).

  Returns:
    `ImageData`.

  Raises:
    InputError: if the file is missing, truncated or not an image.
  """
  img, encoded = _open(path, "image")
  if img.mode == "RGB" and img.format in _KEPT_FORMATS:
    return ImageData(np.asarray(img), encoded, _KEPT_FORMATS[img.format])
  try:  # deeplab_tf.image_decoding's rule, the one prediction and the export apply too
    return ImageData(image_decoding.pillow_to_rgb(img))
  except ValueError as e:
    raise InputError(f"Image file {path} has {e} Convert it to RGB first.") from e


def _rgb_mask_error(path: str) -> InputError:
  return InputError(
      f"Label file {path} is a colour (RGB) mask; an index mask (palette or grayscale PNG whose pixel "
      "values are class ids) is expected. Convert it through the dataset palette (--convert_rgb_masks, "
      "for VOC colours) or save the class ids as a single-channel image.")


def rgb_to_index(mask: np.ndarray, palette: np.ndarray, path: str) -> np.ndarray:
  """Converts a colour-coded mask to class ids through a palette (the reverse of colouring it).

  Args:
    mask: uint8 [height, width, 3] RGB mask.
    palette: uint8 [n, 3]; row i is the colour of class id i (e.g. `colormaps.get_colormap("pascal")`,
      whose row 255 is VOC's boundary colour, so boundaries become ignore_label 255).
    path: the mask's file, for messages.

  Returns:
    uint8 [height, width] class ids.

  Raises:
    InputError: if a colour of the mask is not in the palette.
  """
  codes = (mask[..., 0].astype(np.int64) << 16) | (mask[..., 1].astype(np.int64) << 8) | mask[..., 2]
  pal = np.asarray(palette, np.int64)
  pal_codes = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
  lookup = {}
  for i, c in enumerate(pal_codes):
    lookup.setdefault(int(c), i)
  uniq, inverse = np.unique(codes, return_inverse=True)
  unknown = [int(c) for c in uniq if int(c) not in lookup]
  if unknown:
    colours = [((c >> 16) & 255, (c >> 8) & 255, c & 255) for c in unknown[:5]]
    raise InputError(f"Label file {path} has colour(s) {colours} that are not in the dataset palette; "
                     "it is not a mask of this dataset's colours. Save class ids as an index mask.")
  ids = np.array([lookup[int(c)] for c in uniq], np.int64)
  return ids[inverse].reshape(codes.shape).astype(np.uint8)


def read_label(path: str, *, palette: Optional[np.ndarray] = None) -> np.ndarray:
  """Reads a label file as a [height, width] map of raw values (class ids before any mapping).

  Palette PNGs give their indices, not their colours (research/deeplab `remove_gt_colormap.py`: "the
  colormap must be removed"); grayscale and 16-bit images give their values; an RGB image whose three
  channels are equal is read as gray; an SBD `.mat` file gives `GTcls.Segmentation` (read with
  `scipy.io.loadmat`). A colour RGB mask is refused unless `palette` is given.

  Args:
    path: PNG/TIFF/... index mask, or SBD `cls/*.mat`.
    palette: optional uint8 [n, 3] colours of class ids 0..n-1 to convert a colour mask with.

  Returns:
    [height, width] uint8 or uint16 (or int for `.mat`) array.

  Raises:
    InputError: if the file is missing or unreadable, or is a colour mask and no palette is given.
  """
  if path.endswith(".mat"):
    data = _read_bytes(path, "label", "Check --sbd_folder (the SBD 'dataset' folder that holds "
                       "cls/*.mat).")
    import scipy.io  # pylint: disable=g-import-not-at-top
    try:
      mat = scipy.io.loadmat(io.BytesIO(data), squeeze_me=True, struct_as_record=False)
      return np.asarray(mat["GTcls"].Segmentation)
    except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
      raise InputError(f"Unreadable SBD label file {path}: {e!r}. Expected a .mat with GTcls.Segmentation "
                       "as in SBD's benchmark_RELEASE/dataset/cls; re-download SBD.") from e
  img, _ = _open(path, "label")
  if img.mode in ("P", "L", "I;16", "I;16B", "I;16L", "I", "1"):
    array = np.asarray(img)
    return array.astype(np.uint8) if array.dtype == bool else array
  if img.mode in ("RGB", "RGBA"):
    rgb = np.asarray(img.convert("RGB"))
    if np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2]):
      return np.ascontiguousarray(rgb[..., 0])
    if palette is None:
      raise _rgb_mask_error(path)
    return rgb_to_index(rgb, palette, path)
  raise InputError(f"Label file {path} has Pillow mode {img.mode}; expected a single-channel index mask "
                   "(palette, 8-bit or 16-bit grayscale). Save class ids as a grayscale PNG.")


def check_label_values(label: np.ndarray, *, num_classes: int, ignore_label: int, path: str,
                       fix: str = "") -> None:
  """Checks every label value is a class id in [0, num_classes) or `ignore_label`.

  Raises:
    InputError: naming the file and the offending values, with `fix` (a converter flag) appended.
  """
  values = np.unique(label)
  bad = [int(v) for v in values if not (0 <= v < num_classes or v == ignore_label)]
  if bad:
    raise InputError(
        f"Label file {path} has value(s) {bad[:10]} that are neither a class id in [0, {num_classes}) nor "
        f"ignore_label {ignore_label}. {fix or 'Map them to class ids (or to ignore_label) first.'}")


def check_same_size(image: np.ndarray, label: np.ndarray, image_path: str, label_path: str) -> None:
  """Raises InputError if image and label differ in height or width."""
  if image.shape[:2] != label.shape[:2]:
    raise InputError(
        f"Image {image_path} is {image.shape[1]}x{image.shape[0]} (WxH) but its label {label_path} is "
        f"{label.shape[1]}x{label.shape[0]}: they must be the same size. Check that the label belongs to "
        "this image, or resize the label with nearest-neighbour interpolation.")


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [h, w] (gray) or [h, w, 3] (RGB) array."""
  buf = io.BytesIO()
  Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
  return buf.getvalue()


@dataclasses.dataclass(frozen=True)
class EncodedExample:
  """One serialised example and its label histogram.

  Attributes:
    name: `image/filename`.
    serialized: the serialised `tf.train.Example`.
    class_pixel_counts: int64 [256]: pixels per label value (class ids and ignore_label).
  """

  name: str
  serialized: bytes
  class_pixel_counts: np.ndarray


def make_example(name: str, image: ImageData, label: np.ndarray, *, num_classes: int, ignore_label: int,
                 image_path: str, label_path: str, label_fix: str = "") -> EncodedExample:
  """Validates an image/label pair and serialises it (`features.encode_example`).

  Args:
    name: the example's name.
    image: the image; its own bytes are stored when present, else its pixels as PNG.
    label: [height, width] class ids (after any mapping).
    num_classes: valid ids are [0, num_classes).
    ignore_label: the one other valid value (at most 255: labels are stored as 8-bit PNG).
    image_path: the image's file, for messages.
    label_path: the label's file, for messages.
    label_fix: what to do about bad label values (a converter flag), appended to that message.

  Returns:
    `EncodedExample`.

  Raises:
    InputError: if sizes differ or a label value is neither a class id nor ignore_label.
  """
  check_same_size(image.pixels, label, image_path, label_path)
  check_label_values(label, num_classes=num_classes, ignore_label=ignore_label, path=label_path,
                     fix=label_fix)
  label8 = label.astype(np.uint8)
  if image.encoded is not None:
    image_bytes, image_format = image.encoded, image.image_format
  else:
    image_bytes, image_format = encode_png(image.pixels), "png"
  height, width = label8.shape
  serialized = features.encode_example(image_bytes, encode_png(label8), filename=name, height=height,
                                       width=width, image_format=image_format)
  return EncodedExample(name, serialized, np.bincount(label8.ravel(), minlength=256).astype(np.int64))


def shard_path(output_dir: str, split: str, index: int, num_shards: int) -> str:
  """`{output_dir}/{split}-{index:05d}-of-{num_shards:05d}.tfrecord` (research/deeplab's names)."""
  return os.path.join(output_dir, f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def ensure_writable_dir(output_dir: str) -> None:
  """Creates `output_dir` if needed and checks a file can be created in it.

  Raises:
    InputError: if it cannot be created or written to.
  """
  try:
    tf.io.gfile.makedirs(output_dir)
    probe = os.path.join(output_dir, f"{_temporary_prefix()}probe-{uuid.uuid4().hex}")
    with tf.io.gfile.GFile(probe, "wb") as f:
      f.write(b"probe")  # GFile creates the file on the first write, not on open.
    tf.io.gfile.remove(probe)
  except tf.errors.OpError as e:
    raise InputError(f"Output directory {output_dir} is not writable ({e.message}). Choose another "
                     "--output_dir or fix its permissions.") from e


def _temporary_prefix() -> str:
  host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())
  return f"{_TMP_PREFIX}{os.getpid()}@{host}-"


def _process_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  except OSError:
    return True
  return True


def remove_stale_temporaries(output_dir: str, max_age_seconds: float = STALE_TEMPORARY_SECONDS,
                             now: Optional[float] = None) -> List[str]:
  """Removes the temporary files an interrupted converter (killed, or out of disk) left in `output_dir`.

  A `.tmp-*` shard (or `.<name>.<hex>.tmp` file of `io_utils.atomic_output`) is stale when the process
  named in it ran on this host and is gone, or when it was last modified more than `max_age_seconds`
  ago (a process on another host, or an older name without pid). A live process's recent files are
  kept, so two converters may share an output folder.

  Args:
    output_dir: the folder (any `tf.io.gfile` filesystem); nothing happens if it does not exist.
    max_age_seconds: the age beyond which any temporary file is stale.
    now: the current time, seconds since the epoch (default `time.time()`).

  Returns:
    The paths removed.
  """
  if not tf.io.gfile.isdir(output_dir):
    return []
  now = time.time() if now is None else now
  this_host = _temporary_prefix().split("@", 1)[1][:-1]
  removed = []
  for name in tf.io.gfile.listdir(output_dir):
    match = _TMP_NAME.match(name)
    if not match and not _ATOMIC_TMP_NAME.match(name):
      continue
    path = os.path.join(output_dir, name)
    try:
      if match and match.group("pid") and match.group("host") == this_host:
        pid = int(match.group("pid"))
        stale = not _process_alive(pid) or (pid != os.getpid() and
                                            now - tf.io.gfile.stat(path).mtime_nsec / 1e9 > 24 * 3600)
      else:
        stale = now - tf.io.gfile.stat(path).mtime_nsec / 1e9 > max_age_seconds
      if stale:
        tf.io.gfile.remove(path)
        removed.append(path)
    except tf.errors.NotFoundError:  # removed meanwhile by its own process
      continue
  return removed


def _remove_stale_shards(output_dir: str, split: str, keep: Sequence[str]) -> None:
  pattern = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord$")
  for name in tf.io.gfile.listdir(output_dir):
    path = os.path.join(output_dir, name)
    if pattern.match(name) and path not in keep:
      tf.io.gfile.remove(path)


def write_split(records: Iterable[bytes], *, output_dir: str, split: str, num_examples: int,
                num_shards: int) -> List[str]:
  """Writes serialised records into `num_shards` TFRecord shards of one split, atomically.

  Records are assigned to shards in order, `ceil(num_examples / num_shards)` per shard, as the original
  (`build_voc2012_data.py`). The number of shards is capped at `num_examples`, and when fewer records
  come than announced (skipped inputs) the shards left empty are dropped and the others renamed
  `-of-<the shards written>`, so no shard is empty. All shards are written under hidden temporary names
  (`.tmp-<pid>@<host>-...`) and renamed when the last record is written; on any exception (including
  KeyboardInterrupt, and a full disk whose `close()` fails again) the temporary files are deleted and no
  shard of this run exists; a run that was killed leaves them for the next run's
  `remove_stale_temporaries`. Shards of the same split left by an earlier run with another shard count
  are removed after a successful write, so `{split}-*` matches this run's shards only.

  Args:
    records: serialised `tf.train.Example`s; fewer than `num_examples` is allowed (skipped inputs).
    output_dir: the directory (created if needed).
    split: split name, the shards' prefix.
    num_examples: the number of records expected, for shard assignment.
    num_shards: the number of shards wanted (>= 1).

  Returns:
    The paths of the shards written.

  Raises:
    ValueError: if num_shards < 1.
    InputError: if output_dir is not writable or a write fails (e.g. the disk is full), or no record
      was given.
  """
  if num_shards < 1:
    raise ValueError(f"num_shards is {num_shards}; it must be at least 1.")
  ensure_writable_dir(output_dir)
  num_shards = max(1, min(num_shards, num_examples))
  per_shard = max(1, math.ceil(num_examples / num_shards))
  prefix = f"{_temporary_prefix()}{uuid.uuid4().hex[:8]}-"
  temps = [os.path.join(output_dir, f"{prefix}{split}-{i:05d}.tfrecord") for i in range(num_shards)]
  writers: List[Optional[tf.io.TFRecordWriter]] = [None] * num_shards
  count = 0
  try:
    for record in records:
      shard = min(count // per_shard, num_shards - 1)
      if writers[shard] is None:
        writers[shard] = tf.io.TFRecordWriter(temps[shard])
      writers[shard].write(record)
      count += 1
    if count == 0:
      raise InputError(f"No example was written for split {split!r}: every input was skipped or the "
                       "split is empty. Fix the inputs the report lists.")
    written = [i for i in range(num_shards) if writers[i] is not None]
    for i in written:
      writers[i].close()
    finals = [shard_path(output_dir, split, j, len(written)) for j in range(len(written))]
    for i, final in zip(written, finals):
      tf.io.gfile.rename(temps[i], final, overwrite=True)
  except BaseException as e:
    # Clean-up must not depend on close() succeeding: on a full disk it raises again.
    for w in writers:
      if w is not None:
        with contextlib.suppress(Exception):
          w.close()
    for temp in temps:
      with contextlib.suppress(Exception):
        if tf.io.gfile.exists(temp):
          tf.io.gfile.remove(temp)
    if isinstance(e, tf.errors.OpError):
      raise InputError(f"Writing split {split!r} to {output_dir} failed ({e.message.strip()}); no shard "
                       "of it was kept. Free space or choose another --output_dir.") from e
    raise
  _remove_stale_shards(output_dir, split, finals)
  return finals


def count_records(paths: Sequence[str]) -> int:
  """The number of records in TFRecord files (reads them through)."""
  return sum(1 for _ in tf.data.TFRecordDataset(list(paths)).as_numpy_iterator())


def histogram_to_dict(counts: np.ndarray) -> Mapping[int, int]:
  """{label value: pixel count} for the non-zero entries of a bincount."""
  return {int(i): int(c) for i, c in enumerate(counts) if c}


def parse_label_map(spec: str) -> Mapping[int, int]:
  """Parses `"0:0,255:1"` into {0: 0, 255: 1}.

  Raises:
    InputError: (a ValueError) naming the spec and the bad entry.
  """
  mapping = {}
  for entry in filter(None, (e.strip() for e in spec.split(","))):
    try:
      src, dst = (int(v) for v in entry.split(":"))
    except ValueError as e:
      raise InputError(f"Label map entry {entry!r} of {spec!r} is not 'value:class_id' with integers, "
                       "e.g. --label_map=0:0,255:1.") from e
    mapping[src] = dst
  if not mapping:
    raise InputError(f"Label map {spec!r} is empty; give 'value:class_id' pairs, e.g. 0:0,255:1.")
  return mapping


def apply_label_map(label: np.ndarray, mapping: Mapping[int, int], path: str) -> np.ndarray:
  """Maps raw label values through `mapping`.

  Raises:
    InputError: if the label has a value the mapping does not name.
  """
  values = np.unique(label)
  missing = [int(v) for v in values if int(v) not in mapping]
  if missing:
    raise InputError(f"Label file {path} has value(s) {missing[:10]} that --label_map "
                     f"{','.join(f'{k}:{v}' for k, v in mapping.items())} does not map. Add them to "
                     "--label_map (to a class id or to the ignore label).")
  lut_keys = np.array(sorted(mapping), np.int64)
  lut_vals = np.array([mapping[k] for k in sorted(mapping)], np.int64)
  return lut_vals[np.searchsorted(lut_keys, label.astype(np.int64))]


def crop(array: np.ndarray, box: Tuple[int, int, int, int]) -> np.ndarray:
  """array[y0:y1, x0:x1] for box (y0, x0, y1, x1)."""
  y0, x0, y1, x1 = box
  return np.ascontiguousarray(array[y0:y1, x0:x1])
