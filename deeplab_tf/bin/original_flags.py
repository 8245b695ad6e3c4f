"""Every flag of the newest research/deeplab binaries, and what ours do with it: the one source of truth.

`ROWS` lists each flag defined by the original's `common.py`, `train.py`, `eval.py`, `vis.py` and
`export_model.py` (tensorflow/models master, the last TF1 version) with the original's default and a status:
- `same`: our binaries accept the flag under its name, with the original's default and meaning;
- `renamed`: ours is spelled otherwise (`accepted`); the original spelling is accepted at its default and
  refused otherwise with a message naming ours;
- `refused`: not offered; accepted at the original's default (so that old flagfiles parse) and refused
  otherwise with the message in `note`;
- `not applicable`: the concept does not exist in TF2 / our design; accepted at the original's default,
  refused otherwise with `note`, unless `note` says what our flag of that name does.

Importing this module defines the original's spellings that no other module of ours defines (those rows
with a `kind`), each with an absl validator, so that every binary importing it refuses them at parse time
with the row's message. `docs/FLAGS.md` is generated from `ROWS` (`python -m deeplab_tf.bin.original_flags
docs/FLAGS.md`), and `tests/bin/test_original_flags.py` checks both the binaries and the document against it.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any, Optional, Tuple

from absl import flags

SAME, RENAMED, REFUSED, NOT_APPLICABLE = "same", "renamed", "refused", "not applicable"
STATUSES = (SAME, RENAMED, REFUSED, NOT_APPLICABLE)
ORIGINAL_FILES = ("common.py", "train.py", "eval.py", "vis.py", "export_model.py")
# Our binaries (modules of deeplab_tf.bin) that stand for the original's.
BINARY_OF_FILE = {"train.py": "train", "eval.py": "eval", "vis.py": "vis", "export_model.py": "export_model"}
TRAIN_EVAL_VIS = ("train", "eval", "vis")
ALL_BINARIES = ("train", "eval", "vis", "export_model")


@dataclasses.dataclass(frozen=True)
class Row:
  """One flag of one original file.

  Attributes:
    name: the original's flag name.
    file: the original file defining it (one of ORIGINAL_FILES).
    default: the original's default, as passed to its DEFINE_* call.
    status: one of STATUSES.
    note: what ours does, or why not (the refusal message for refused / renamed / not applicable).
    binaries: our binaries that must accept the flag; default: the one standing for `file` (all four for
      common.py).
    accepted: renamed: our spelling.
    kind: DEFINE kind when this module defines the original spelling to refuse it ("integer", "boolean",
      "float", "string", "multi_float").
  """

  name: str
  file: str
  default: Any
  status: str
  note: str
  binaries: Optional[Tuple[str, ...]] = None
  accepted: Optional[str] = None
  kind: Optional[str] = None

  def __post_init__(self):
    if self.status not in STATUSES or self.file not in ORIGINAL_FILES:
      raise ValueError(f"{self}: bad status or file.")
    if self.binaries is None:
      object.__setattr__(self, "binaries", ALL_BINARIES if self.file == "common.py" else
                         (BINARY_OF_FILE[self.file],))

  @property
  def message(self) -> str:
    """The refusal message of a non-default value."""
    if self.status == RENAMED:
      return f"research/deeplab's --{self.name} is {self.accepted} here: {self.note}"
    return f"research/deeplab's --{self.name} is {self.status} here: {self.note}"


def _row(name, file, default, status, note, **kwargs):
  return Row(name, file, default, status, note, **kwargs)


_RESIZE = ("`deeplab_tf.data.preprocess.resize_to_range`, first thing of training and eval/vis preprocessing; "
           "inside a SavedModel export, predictions resized back to the image (not for --format=tflite)")
_MODEL = "model flag (see above)"
_TF1_CLUSTER = ("TF1 graph replication; tf.distribute replaces it (--strategy=mirrored|multi_worker|tpu, "
                "TF_CONFIG for multi-worker)")
_QUANTIZE = ("quantization-aware training rewrote the TF1 graph (tf.contrib.quantize), which TF2 does not "
             "have; quantize the exported model after training instead")
_ADAM = "only the papers' momentum SGD is offered (--momentum)"



def _eval_and_vis_rows(file: str) -> Tuple[Row, ...]:
  """The flags that the original's eval.py and vis.py both define, alike."""
  return (
      _row("master", file, "", NOT_APPLICABLE, "as train.py's"),
      _row("checkpoint_dir", file, None, SAME, "a training log directory (or --checkpoint_path)"),
      _row("eval_interval_secs", file, 300, SAME, "between checks for a new checkpoint"),
      _row("atrous_rates", file, None, SAME, _MODEL),
      _row("output_stride", file, 16, SAME, _MODEL),
      _row("eval_scales", file, [1.0], SAME, "multi-scale inference"),
      _row("add_flipped_images", file, False, SAME, "also at one scale"),
      _row("quantize_delay_step", file, -1, REFUSED, _QUANTIZE),
      _row("dataset_dir", file, None, SAME, "folder of the shards"))


ROWS: Tuple[Row, ...] = (
    # common.py
    _row("min_resize_value", "common.py", None, SAME, _RESIZE, binaries=ALL_BINARIES),
    _row("max_resize_value", "common.py", None, SAME, _RESIZE + "; needs --min_resize_value (the "
         "original fails without it)", binaries=ALL_BINARIES),
    _row("resize_factor", "common.py", None, SAME, _RESIZE, binaries=ALL_BINARIES),
    _row("keep_aspect_ratio", "common.py", True, SAME, _RESIZE + "; the original defines it but its "
         "input_preprocess never passes it on (always True there); ours passes it to resize_to_range",
         binaries=ALL_BINARIES),
    _row("logits_kernel_size", "common.py", 1, SAME, _MODEL),
    _row("model_variant", "common.py", "mobilenet_v2", SAME, _MODEL),
    _row("image_pyramid", "common.py", None, REFUSED, "multi-scale inputs inside the model "
         "(multi_scale_logits' image pyramid, logits merged by --merge_method) are not built; for "
         "multi-scale inference use --eval_scales", kind="multi_float"),
    _row("add_image_level_feature", "common.py", True, SAME, _MODEL),
    _row("image_pooling_crop_size", "common.py", None, SAME, _MODEL),
    _row("image_pooling_stride", "common.py", "1,1", SAME, _MODEL),
    _row("aspp_with_batch_norm", "common.py", True, SAME, _MODEL),
    _row("aspp_with_separable_conv", "common.py", True, SAME, _MODEL),
    _row("multi_grid", "common.py", None, SAME, _MODEL),
    _row("depth_multiplier", "common.py", 1.0, SAME, _MODEL),
    _row("divisible_by", "common.py", None, SAME, _MODEL),
    _row("decoder_output_stride", "common.py", None, SAME, _MODEL + "; one stage (as every published "
         "model)"),
    _row("decoder_use_separable_conv", "common.py", True, SAME, _MODEL),
    _row("merge_method", "common.py", "max", REFUSED, "it merges the logits of --image_pyramid, which is "
         "not built", kind="string"),
    _row("prediction_with_upsampled_logits", "common.py", True, SAME, _MODEL),
    _row("dense_prediction_cell_json", "common.py", "", SAME, "Dense Prediction Cell head (a JSON file, or the packaged "
         "model-zoo cell)"),
    _row("nas_stem_output_num_conv_filters", "common.py", 20, SAME, "NAS encoders"),
    _row("nas_use_classification_head", "common.py", False, SAME, "NAS encoders"),
    _row("nas_remove_os32_stride", "common.py", False, SAME, "NAS encoders"),
    _row("use_bounded_activation", "common.py", False, SAME, "head flag (MobileNetV3 configurations)"),
    _row("aspp_with_concat_projection", "common.py", True, SAME, "head flag (MobileNetV3 configurations)"),
    _row("aspp_with_squeeze_and_excitation", "common.py", False, SAME, "head flag (MobileNetV3 configurations)"),
    _row("aspp_convs_filters", "common.py", 256, SAME, "head flag (MobileNetV3 configurations)"),
    _row("decoder_use_sum_merge", "common.py", False, SAME, "head flag (MobileNetV3 configurations)"),
    _row("decoder_filters", "common.py", 256, SAME, "head flag (MobileNetV3 configurations)"),
    _row("decoder_output_is_logits", "common.py", False, SAME, "head flag (MobileNetV3 configurations)"),
    _row("image_se_uses_qsigmoid", "common.py", False, SAME, "head flag (MobileNetV3 configurations)"),
    _row("label_weights", "common.py", None, SAME, "per-class loss weights, one per class "
         "(TrainOptions.label_weights); only training reads them", binaries=("train",)),
    _row("batch_norm_decay", "common.py", 0.9997, SAME, "at 0.9997 every BatchNorm keeps the original's "
         "decay (0.9997, ResNet's 0.95); another value sets the decay of every BatchNorm "
         "(TrainOptions.batch_norm_decay); only training reads it", binaries=("train",)),
    # train.py
    _row("num_clones", "train.py", 1, RENAMED, "one replica per GPU through tf.distribute",
         accepted="--strategy=mirrored --num_gpus=N", kind="integer"),
    _row("clone_on_cpu", "train.py", False, NOT_APPLICABLE, _TF1_CLUSTER + "; to train on the CPU, hide "
         "the GPUs (CUDA_VISIBLE_DEVICES=)", kind="boolean"),
    _row("num_replicas", "train.py", 1, RENAMED, "workers come from TF_CONFIG",
         accepted="--strategy=multi_worker", kind="integer"),
    _row("startup_delay_steps", "train.py", 15, NOT_APPLICABLE, "staggered asynchronous replicas do not "
         "exist: tf.distribute replicas train synchronously", kind="integer"),
    _row("num_ps_tasks", "train.py", 0, NOT_APPLICABLE, "no parameter servers: tf.distribute reduces "
         "gradients across replicas", kind="integer"),
    _row("master", "train.py", "", NOT_APPLICABLE, "no TF1 session master; TPUs are addressed by --tpu "
         "(with --strategy=tpu)", binaries=TRAIN_EVAL_VIS, kind="string"),
    _row("task", "train.py", 0, NOT_APPLICABLE, "the task index comes from TF_CONFIG "
         "(--strategy=multi_worker)", kind="integer"),
    _row("train_logdir", "train.py", None, SAME, "checkpoints, model_options.json and summaries"),
    _row("log_steps", "train.py", 10, SAME, "log line every log_steps"),
    _row("save_interval_secs", "train.py", 1200, SAME, "time-based checkpoints beside "
         "--save_interval_steps"),
    _row("save_summaries_secs", "train.py", 600, RENAMED, "summaries are written every this many steps",
         accepted="--save_summaries_steps", kind="integer"),
    _row("save_summaries_images", "train.py", False, SAME, "image, label and prediction summaries"),
    _row("profile_logdir", "train.py", None, REFUSED, "use TensorBoard's profiler "
         "(tf.profiler.experimental.start/stop, or the profile plugin's capture) on a running training",
         kind="string"),
    _row("optimizer", "train.py", "momentum", REFUSED, _ADAM, kind="string"),
    _row("learning_policy", "train.py", "poly", SAME, "poly or step (and our cosine)"),
    _row("base_learning_rate", "train.py", 0.0001, SAME, "TrainOptions' default too; the experiments' "
         "flagfiles set the papers' 0.007"),
    _row("decay_steps", "train.py", 0.0, REFUSED, "the poly policy always decays to 0 over "
         "--training_number_of_steps (less --slow_start_step); set those instead", kind="float"),
    _row("end_learning_rate", "train.py", 0.0, REFUSED, "the poly policy always decays to 0",
         kind="float"),
    _row("learning_rate_decay_factor", "train.py", 0.1, SAME, "step policy"),
    _row("learning_rate_decay_step", "train.py", 2000, SAME, "step policy"),
    _row("learning_power", "train.py", 0.9, SAME, "poly policy"),
    _row("training_number_of_steps", "train.py", 30000, SAME, "total optimizer steps"),
    _row("momentum", "train.py", 0.9, SAME, "SGD momentum"),
    _row("adam_learning_rate", "train.py", 0.001, REFUSED, _ADAM, kind="float"),
    _row("adam_epsilon", "train.py", 1e-08, REFUSED, _ADAM, kind="float"),
    _row("train_batch_size", "train.py", 8, SAME, "global batch, split across replicas"),
    _row("weight_decay", "train.py", 0.00004, SAME, "L2 weight decay"),
    _row("train_crop_size", "train.py", "513,513", SAME, "height,width"),
    _row("last_layer_gradient_multiplier", "train.py", 1.0, SAME, "gradient multiplier of the last layers"),
    _row("upsample_logits", "train.py", True, SAME, "loss on upsampled logits"),
    _row("drop_path_keep_prob", "train.py", 1.0, REFUSED, "the NAS cells' drop path is not built (the "
         "original's default 1.0 keeps every path; see deeplab_tf/model/encoders/nas.py)", kind="float"),
    _row("tf_initial_checkpoint", "train.py", None, SAME, "also model-zoo TF1 checkpoints"),
    _row("initialize_last_layer", "train.py", True, SAME, "restore the last layers too"),
    _row("last_layers_contain_logits_only", "train.py", False, SAME, "which layers are 'last'"),
    _row("slow_start_step", "train.py", 0, SAME, "steps at --slow_start_learning_rate"),
    _row("slow_start_learning_rate", "train.py", 1e-4, SAME, "learning rate during slow start"),
    _row("fine_tune_batch_norm", "train.py", True, SAME, "train BatchNorm"),
    _row("min_scale_factor", "train.py", 0.5, SAME, "random scaling"),
    _row("max_scale_factor", "train.py", 2.0, SAME, "random scaling"),
    _row("scale_factor_step_size", "train.py", 0.25, SAME, "random scaling"),
    _row("atrous_rates", "train.py", None, SAME, "model flag"),
    _row("output_stride", "train.py", 16, SAME, "model flag"),
    _row("hard_example_mining_step", "train.py", 0, SAME, "hard pixel mining ramp"),
    _row("top_k_percent_pixels", "train.py", 1.0, SAME, "hard pixel mining"),
    _row("quantize_delay_step", "train.py", -1, REFUSED, _QUANTIZE, binaries=ALL_BINARIES,
         kind="integer"),
    _row("dataset", "train.py", "pascal_voc_seg", SAME, "also a descriptor JSON path"),
    _row("train_split", "train.py", "train", SAME, "{split}-*.tfrecord"),
    _row("dataset_dir", "train.py", None, SAME, "folder of the shards"),
    # eval.py
    *_eval_and_vis_rows("eval.py"),
    _row("eval_logdir", "eval.py", None, SAME, "metrics JSON and TensorBoard scalars"),
    _row("eval_batch_size", "eval.py", 1, SAME, "images per batch"),
    _row("eval_crop_size", "eval.py", "513,513", NOT_APPLICABLE, "ours defaults to empty: each image at its "
         "own size (the original padded to 513x513 and failed on any larger image); --eval_crop_size=513,513 "
         "pads as the original (needed for --eval_batch_size above 1)"),
    _row("dataset", "eval.py", "pascal_voc_seg", SAME, "also a descriptor JSON path"),
    _row("eval_split", "eval.py", "val", SAME, "{split}-*.tfrecord"),
    _row("max_number_of_evaluations", "eval.py", 0, SAME, "0 waits for new checkpoints forever, as the "
         "original; --checkpoint_path evaluates that one checkpoint once"),
    # vis.py
    *_eval_and_vis_rows("vis.py"),
    _row("vis_logdir", "vis.py", None, SAME, "segmentation_results/, raw_segmentation_results/"),
    _row("vis_batch_size", "vis.py", 1, SAME, "images per batch (above 1 needs --vis_crop_size)"),
    _row("vis_crop_size", "vis.py", "513,513", NOT_APPLICABLE, "ours defaults to empty: each image at its "
         "own size (the original padded to 513x513 and failed on any larger image); --vis_crop_size=513,513 "
         "pads as the original (needed for --vis_batch_size above 1)"),
    _row("dataset", "vis.py", "pascal_voc_seg", SAME, "cityscapes: raw predictions in label ids, for the "
         "benchmark server, as the original"),
    _row("vis_split", "vis.py", "val", SAME, "{split}-*.tfrecord"),
    _row("colormap_type", "vis.py", "pascal", SAME, "pascal, cityscapes, ade20k (and our custom, or "
         "dataset: the dataset descriptor's)"),
    _row("also_save_raw_predictions", "vis.py", False, SAME, "class ids as greyscale PNGs named after the "
         "images"),
    _row("max_number_of_iterations", "vis.py", 0, SAME, "0 waits for new checkpoints forever, as the "
         "original; --checkpoint_path visualises that one checkpoint once"),
    # export_model.py
    _row("checkpoint_path", "export_model.py", None, SAME, "a checkpoint prefix, log directory or .keras"),
    _row("export_path", "export_model.py", None, SAME, "TF Serving's model base path: the SavedModel goes "
         "to <export_path>/<version> (--export_version, default the next); the .tflite file with "
         "--format=tflite (not a frozen graph)"),
    _row("num_classes", "export_model.py", 21, SAME, _MODEL),
    _row("crop_size", "export_model.py", [513, 513], NOT_APPLICABLE, "ours defaults to no padding: the "
         "SavedModel takes images of any size, each at its own size (the original's export padded to "
         "513x513 and could not take a larger image); --crop_size=513,513 pads as the original, and "
         "--format=tflite needs a fixed size (513x513 unless given)"),
    _row("atrous_rates", "export_model.py", None, SAME, _MODEL),
    _row("output_stride", "export_model.py", 8, NOT_APPLICABLE, "one --output_stride serves every binary, "
         "default 16 as train/eval/vis; the export takes the trained model's from model_options.json "
         "unless --output_stride is given (the original's default 8 would have exported a model trained "
         "at 16 at 8)"),
    _row("inference_scales", "export_model.py", [1.0], SAME, "multi-scale inference inside the export"),
    _row("add_flipped_images", "export_model.py", False, SAME, "inside the export"),
    _row("quantize_delay_step", "export_model.py", -1, REFUSED, _QUANTIZE),
    _row("save_inference_graph", "export_model.py", False, REFUSED, "a SavedModel carries its graph: "
         "inspect it with `saved_model_cli show --all --dir <export>`", kind="boolean"),
)

# Our flags that research/deeplab spells in one binary and we use in another too, with the spelling each
# binary also accepts: (binary, our flag, other spelling accepted, note).
SPELLINGS: Tuple[Tuple[str, str, str, str], ...] = (
    ("export_model", "export_path", "export_dir", "the original export_model.py's name; --export_dir is an "
     "alias (the absl alias of the same flag)"),
    ("export_model", "inference_scales", "eval_scales", "the original export_model.py's name; --eval_scales "
     "(eval.py's) is accepted for it, both with different values is an error"),
    ("predict", "export_path", "export_dir", "the export to run: the path given to deeplab_export_model's "
     "--export_path (a version directory or the base path); --export_dir, predict's former name, is an alias"),
    ("predict", "eval_scales", "inference_scales", "as eval.py and vis.py; --inference_scales (export_model.py's) "
     "is accepted for it, both with different values is an error"),
)

_DEFINE = {"integer": flags.DEFINE_integer, "boolean": flags.DEFINE_boolean, "float": flags.DEFINE_float,
           "string": flags.DEFINE_string, "multi_float": flags.DEFINE_multi_float}


def _define_refusals() -> None:
  for row in ROWS:
    if row.kind is None:
      continue
    _DEFINE[row.kind](row.name, row.default, f"[research/deeplab, {row.status}] {row.message}")
    flags.register_validator(row.name, lambda value, default=row.default: value == default,
                             message=row.message)


_define_refusals()


def counts() -> dict:
  """{status: number of (file, flag) rows}; "flags": distinct names."""
  result = {status: sum(row.status == status for row in ROWS) for status in STATUSES}
  result["flags"] = len({row.name for row in ROWS})
  return result


def _cell(text: str) -> str:
  return text.replace("|", "\\|")


def render_markdown() -> str:
  """docs/FLAGS.md: every row, by original file, with the counts."""
  total = counts()
  lines = [
      "# research/deeplab's flags here",
      "",
      "Every flag that the newest research/deeplab (tensorflow/models master, its last TF1 version) defines "
      "in `common.py`, `train.py`, `eval.py`, `vis.py` and `export_model.py`, with the original's default "
      "and what our binaries (`deeplab_train`, `deeplab_eval`, `deeplab_vis`, `deeplab_export_model`) do "
      "with it. Generated from `deeplab_tf/bin/original_flags.py` (`python -m deeplab_tf.bin.original_flags "
      "docs/FLAGS.md`); `tests/bin/test_original_flags.py` checks that every binary accepts each flag as "
      "stated, with the original's default, and that refused values are refused with the message below.",
      "",
      "- **same**: accepted under the original's name, with its default and meaning.",
      "- **renamed**: ours is spelled as given; the original spelling parses at its default and is refused "
      "otherwise, naming ours.",
      "- **refused**: not offered; the flag parses at the original's default (old flagfiles keep working) "
      "and any other value stops the binary with the message given.",
      "- **not applicable**: the concept has no TF2 counterpart here (refused like the above), or, where "
      "the note says so, our flag of that name differs for the reason given.",
      "",
      "Model flags (`deeplab_tf.bin.model_flags`): train builds the model from them; eval, vis and "
      "export_model read the architecture from model_options.json beside the checkpoint, and a model flag "
      "given explicitly there overrides it (e.g. evaluating at another --output_stride or --atrous_rates, "
      "as the original's eval.py allows).",
      "",
      f"{len(ROWS)} definitions of {total['flags']} distinct flags: "
      + ", ".join(f"{total[s]} {s}" for s in STATUSES) + ".",
  ]
  for file in ORIGINAL_FILES:
    rows = [row for row in ROWS if row.file == file]
    per = {s: sum(r.status == s for r in rows) for s in STATUSES}
    lines += ["", f"## {file} ({len(rows)} flags: " + ", ".join(f"{per[s]} {s}" for s in STATUSES) + ")",
              "", "| flag | original default | status | ours | binaries |", "|---|---|---|---|---|"]
    for row in rows:
      status = f"renamed: `{row.accepted}`" if row.status == RENAMED else row.status
      note = row.note
      lines.append(f"| `{row.name}` | `{row.default!r}` | {status} | {_cell(note)} | "
                   f"{', '.join(row.binaries)} |")
  lines += ["", "## Flag names across our binaries", "",
            "The original names a flag differently in two of its files (`--eval_scales` in eval.py and vis.py, "
            "`--inference_scales` in export_model.py) or has no binary where ours needs the flag "
            "(`deeplab_predict` runs an export). Each binary keeps the original's spelling and accepts the "
            "other one too:", "", "| binary | flag | also accepted | note |", "|---|---|---|---|"]
  for binary, ours, other, note in SPELLINGS:
    lines.append(f"| {binary} | `--{ours}` | `--{other}` | {_cell(note)} |")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  if len(sys.argv) != 2:
    raise SystemExit("usage: python -m deeplab_tf.bin.original_flags docs/FLAGS.md")
  from deeplab_tf.io_utils import atomic_write_text  # pylint: disable=g-import-not-at-top
  atomic_write_text(sys.argv[1], render_markdown())
