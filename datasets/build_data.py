"""What every converter shares: parallel validated encoding, atomic sharded writing, the final report.

The counterpart of research/deeplab's `datasets/build_data.py`. A converter lists, per split, `Item`s
(a name and a function that reads, validates and encodes that example, raising
`deeplab_tf.data.writer.InputError` on bad input); `convert_splits` encodes them on a thread pool (Pillow
and zlib release the GIL while decoding and compressing), shows a tqdm progress bar, writes the shards
atomically (`writer.write_split`), and returns a `ConversionReport` (examples per split, class pixel
histogram, what was skipped and why). Bad input is refused: every problem of the split is listed in
one `ConversionError` and no shard of that split is written - unless `skip_bad_inputs`, which skips and
reports them (a split with nothing left is refused). Temporary shards an interrupted run left in the
output folder are removed first (`writer.remove_stale_temporaries`). The binaries share flags through
`define_common_flags` and `run_main`, which prints a refusal as `<program>: error: ...` (exit 2), as every
binary of `deeplab_tf.bin` does.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import sys
from typing import Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from absl import flags
from tqdm import tqdm

from deeplab_tf.data import writer
from deeplab_tf.data.writer import EncodedExample, InputError
from deeplab_tf.errors import UserError

FLAGS = flags.FLAGS


class ConversionError(UserError):
  """Bad input was refused; the message lists every problem found, each naming its file and the fix."""


@dataclasses.dataclass(frozen=True)
class Item:
  """One example to convert: its name and a function returning it encoded (raising InputError)."""

  name: str
  encode: Callable[[], EncodedExample]


@dataclasses.dataclass
class SplitReport:
  """What was converted for one split.

  Attributes:
    split: split name.
    num_examples: examples written (or that would be written, with check_only).
    shards: paths of the shards written ([] with check_only).
    class_pixel_counts: {label value: pixels}, over all examples (ignore_label included).
    skipped: [(example name, reason)] of inputs skipped with skip_bad_inputs.
  """

  split: str
  num_examples: int = 0
  shards: List[str] = dataclasses.field(default_factory=list)
  class_pixel_counts: Dict[int, int] = dataclasses.field(default_factory=dict)
  skipped: List[Tuple[str, str]] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class ConversionReport:
  """The result of a conversion: one `SplitReport` per split, plus notes (e.g. labels made from polygons)."""

  splits: Dict[str, SplitReport]
  check_only: bool = False
  notes: List[str] = dataclasses.field(default_factory=list)
  descriptor_path: Optional[str] = None
  class_names: Optional[Sequence[str]] = None  # when the converter knows them (for `format`)

  def format(self, class_names: Optional[Sequence[str]] = None) -> str:
    """A human-readable summary, one block per split."""
    lines = ["Checked (nothing written):" if self.check_only else "Converted:"]
    for r in self.splits.values():
      where = f" in {len(r.shards)} shard(s) under {os.path.dirname(r.shards[0])}" if r.shards else ""
      lines.append(f"  {r.split}: {r.num_examples} example(s){where}, {len(r.skipped)} skipped")
      total = sum(r.class_pixel_counts.values()) or 1
      for value, count in sorted(r.class_pixel_counts.items()):
        name = class_names[value] if class_names and value < len(class_names) else (
            "ignore" if value == 255 else "")
        lines.append(f"    label {value:3d} {name:<20s} {count:12d} px {100.0 * count / total:6.2f}%")
      for name, reason in r.skipped:
        lines.append(f"    skipped {name}: {reason}")
    lines.extend(f"  note: {n}" for n in self.notes)
    return "\n".join(lines)


def _call(item: Item):
  try:
    return item.encode()
  except InputError as e:
    return e


def _ordered_map(items: Sequence[Item], num_workers: int) -> Iterator:
  """item.encode() for each item in order, on `num_workers` threads, at most 2 * num_workers in flight."""
  if num_workers <= 1:
    for item in items:
      yield _call(item)
    return
  pool = concurrent.futures.ThreadPoolExecutor(num_workers)
  try:
    pending = collections.deque()
    for item in items:
      pending.append(pool.submit(_call, item))
      if len(pending) >= 2 * num_workers:
        yield pending.popleft().result()
    while pending:
      yield pending.popleft().result()
  finally:
    pool.shutdown(wait=True, cancel_futures=True)


def convert_splits(splits: Mapping[str, Sequence[Item]], *, output_dir: str, num_shards: int,
                   num_workers: int = 2, check_only: bool = False, skip_bad_inputs: bool = False,
                   progress: bool = True) -> ConversionReport:
  """Encodes and writes every split (see the module docstring).

  Args:
    splits: {split name: items}, in the order they are converted.
    output_dir: where the shards go.
    num_shards: shards per split (capped at the split's size).
    num_workers: encoding threads.
    check_only: read and validate everything, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing the split.
    progress: show a tqdm progress bar (on stderr).

  Returns:
    `ConversionReport`.

  Raises:
    InputError: if a split is empty or output_dir is not writable.
    ConversionError: if an input was bad (and not skip_bad_inputs); lists every problem of the split.
  """
  for split, items in splits.items():
    if not items:
      raise InputError(f"Split {split!r} has no example to convert; check its list file or folders.")
  report = ConversionReport({}, check_only=check_only)
  if not check_only:
    writer.ensure_writable_dir(output_dir)
    removed = writer.remove_stale_temporaries(output_dir)
    if removed:
      report.notes.append(f"removed {len(removed)} temporary file(s) an interrupted run left in {output_dir}")
  for split, items in splits.items():
    split_report = SplitReport(split)
    report.splits[split] = split_report
    counts = np.zeros(256, np.int64)
    problems: List[str] = []

    def records(items=items, split_report=split_report, problems=problems, counts=counts):
      bar = tqdm(total=len(items), desc=f"{split_report.split}", unit="img", disable=not progress,
                 file=sys.stderr)
      with bar:
        for item, result in zip(items, _ordered_map(items, num_workers)):
          bar.update(1)
          if isinstance(result, InputError):
            if skip_bad_inputs:
              split_report.skipped.append((item.name, str(result)))
            elif str(result) not in problems:
              problems.append(str(result))
            continue
          counts += result.class_pixel_counts
          split_report.num_examples += 1
          yield result.serialized
      if problems:
        raise ConversionError(f"Refused {len(problems)} bad input(s) in split {split_report.split!r}; no "
                              "shard of it was written (or pass --skip_bad_inputs to skip them):\n  - "
                              + "\n  - ".join(problems))

    if check_only:
      for _ in records():
        pass
      if not split_report.num_examples:
        raise InputError(f"No example of split {split!r} is left: all {len(items)} input(s) were bad "
                         "(listed above with --skip_bad_inputs). Fix the inputs.")
    else:
      split_report.shards = writer.write_split(records(), output_dir=output_dir, split=split,
                                               num_examples=len(items), num_shards=num_shards)
    split_report.class_pixel_counts = writer.histogram_to_dict(counts)
  return report


def encode_pair(name: str, image_path: str, label_path: str, *, num_classes: int, ignore_label: int,
                label_fix: str = "", read_label: Callable[[str], np.ndarray] = writer.read_label,
                transform: Optional[Callable[[np.ndarray], np.ndarray]] = None,
                context: str = "") -> EncodedExample:
  """Reads, validates and encodes one image file and its label file.

  Args:
    name: the example's name.
    image_path: the image file (`writer.read_image`).
    label_path: the label file.
    num_classes: valid class ids are [0, num_classes).
    ignore_label: the other valid label value.
    label_fix: the fix suggested for bad label values (a converter flag).
    read_label: reads the label file as raw values (default `writer.read_label`).
    transform: maps raw values to class ids (e.g. ADE20K's reduce_zero_label).
    context: prefixed to any error message (e.g. the split list naming the example).

  Raises:
    InputError: if a file is missing or unreadable, sizes differ, or a label value is invalid.
  """
  try:
    image = writer.read_image(image_path)
    label = read_label(label_path)
    if transform is not None:
      label = transform(label)
    return writer.make_example(name, image, label, num_classes=num_classes, ignore_label=ignore_label,
                               image_path=image_path, label_path=label_path, label_fix=label_fix)
  except InputError as e:
    if not context:
      raise
    raise InputError(f"{context}{e}") from e


def pair_item(name: str, image_path: str, label_path: str, **kwargs) -> Item:
  """An `Item` encoding `image_path` and `label_path` with `encode_pair(**kwargs)`."""
  return Item(name, functools.partial(encode_pair, name, image_path, label_path, **kwargs))


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp")


def list_images(folder: str, what: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> List[str]:
  """Sorted image files (by extension, case-insensitive) directly in `folder`.

  Raises:
    InputError: if the folder does not exist or holds no image.
  """
  if not tf.io.gfile.isdir(folder):
    raise InputError(f"{what} {folder} is not a directory; check the flag that names it.")
  files = sorted(os.path.join(folder, f) for f in listdir(folder, what)
                 if os.path.splitext(f)[1].lower() in extensions)
  if not files:
    raise InputError(f"{what} {folder} holds no image ({', '.join(extensions)}); check the flag.")
  return files


def _not_utf8(error: UnicodeDecodeError, where: str) -> InputError:
  raw = error.object if isinstance(error.object, bytes) else bytes(error.object)
  name = raw.decode("utf-8", "backslashreplace")
  return InputError(f"{where} holds a file name that is not UTF-8: '{name}' (byte 0x{raw[error.start]:02x}); "
                    "TensorFlow's file system reads UTF-8 names only. Rename it (e.g. convmv -f latin1 -t "
                    "utf8 --notest) or move it out.")


def listdir(folder: str, what: str = "Folder") -> List[str]:
  """`tf.io.gfile.listdir(folder)`, with a file name that is not UTF-8 refused by name.

  Raises:
    InputError: naming the folder and the file (its bytes shown as `\\xe9`) and how to rename it.
  """
  try:
    return tf.io.gfile.listdir(folder)
  except UnicodeDecodeError as e:
    raise _not_utf8(e, f"{what} {folder}") from e


def glob(pattern: str, what: str = "The folder of") -> List[str]:
  """`tf.io.gfile.glob(pattern)`, with a file name that is not UTF-8 refused by name (see `listdir`)."""
  try:
    return tf.io.gfile.glob(pattern)
  except UnicodeDecodeError as e:
    raise _not_utf8(e, f"{what} {pattern}") from e


def stem(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def define_common_flags(default_num_shards: int) -> None:
  """Defines --output_dir, --num_shards, --num_workers, --check_only, --skip_bad_inputs (once)."""
  if "output_dir" in FLAGS:
    return
  flags.DEFINE_string("output_dir", "./tfrecord", "Where the TFRecord shards are written.")
  flags.DEFINE_integer("num_shards", default_num_shards, "Shards per split.", lower_bound=1)
  flags.DEFINE_integer("num_workers", min(8, os.cpu_count() or 1), "Threads encoding images.",
                       lower_bound=1)
  flags.DEFINE_boolean("check_only", False, "Read and validate every input; write nothing.")
  flags.DEFINE_boolean("skip_bad_inputs", False,
                       "Skip (and report) bad inputs instead of refusing the conversion.")


def common_kwargs() -> dict:
  """The common flags' values as keyword arguments of the converters' `convert` functions."""
  return dict(output_dir=FLAGS.output_dir, num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
              check_only=FLAGS.check_only, skip_bad_inputs=FLAGS.skip_bad_inputs)


def run_main(convert: Callable[[], ConversionReport],
             class_names: Optional[Sequence[str]] = None) -> int:
  """Runs a converter for a binary's `main` (under `deeplab_tf.bin.entry.run`): prints the report.

  A refusal (`UserError`: `InputError`, `ConversionError`) ends the program as every binary's does: the
  list of bad inputs, if several, on stderr, then one line `<program>: error: <what and the fix>`, exit
  status 2 (`entry.run`).

  Returns:
    0 (the process exit status) on success.

  Raises:
    UserError: the one-line refusal, for `entry.run` to print.
  """
  try:
    report = convert()
  except ConversionError as e:
    first, *rest = str(e).splitlines()
    if rest:
      print("\n".join(rest), file=sys.stderr, flush=True)
    raise UserError(first.rstrip(":") + (" (listed above)." if rest else "")) from e
  print(report.format(report.class_names or class_names))
  return 0
