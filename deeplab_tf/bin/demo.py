"""The main job (`make demo`): DeepLab from raw images to a reloaded SavedModel on the shipped real data.

Runs, as a user would, each of the project's own commands in its own process:
  1. `datasets.build_folder_data`: one real image of the samples (nuclei or roads) cut into tiles, a
     held-out region (the right quarter) for validation so that no validation pixel is trained on;
     `datasets.build_voc2012_data`: the three real VOC photos.
  2. `deeplab_train` with the flagfile given by --train_flagfile (model and recipe), with a progress bar.
  3. `deeplab_eval` on the held-out tiles: mIoU and per-class IoU, compared with the all-background
     baseline on the same pixels.
  4. `deeplab_vis`: overlays of the held-out tiles and of the VOC photos (panels: image | ground truth |
     prediction of the demo model, which knows only the sample's classes).
  5. `deeplab_export_model`, then a fresh Python process that imports only TensorFlow loads the
     SavedModel and segments the held-out tiles (real image crops as PNG files) in one request; its
     labels are scored and compared with the Keras model's.
Prints a summary: steps, wall time, mIoU against the baseline, and where every output is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
from absl import app, flags

from deeplab_tf.bin import entry

FLAGS = flags.FLAGS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # not-gfile: own source
SAMPLES = os.path.join(REPO, "datasets", "samples")

# The two binary tasks of the shipped samples (datasets/samples/README.md): image, mask, how the mask
# becomes class ids, tile size.
SAMPLE_TASKS = {
    "nuclei": dict(pairs="nuclei_dsb2018/img2d.tif:nuclei_dsb2018/mask2d.tif",
                   labels=["--binarize_labels"], class_names="background,nucleus", tile_size=128),
    "roads": dict(pairs="spacenet_roads/road_mask_input.tif:spacenet_roads/sample_road_raster_mask.tif",
                  labels=["--label_map=0:0,255:1"], class_names="background,road", tile_size=256),
}
# The held-out region (x0, y0, x1, y1 as fractions of the image): its right quarter.
VAL_REGION = (0.75, 0.0, 1.0, 1.0)

flags.DEFINE_enum("sample", "nuclei", sorted(SAMPLE_TASKS), "Which real sample to train and evaluate on.")
flags.DEFINE_string("train_flagfile", os.path.join(REPO, "experiments", "demo_nuclei.flags"),
                    "deeplab_train flagfile with the model and the recipe.")
flags.DEFINE_string("demo_dir", os.path.join(REPO, "demo_output"), "Where every output goes.")
flags.DEFINE_boolean("fresh", True, "Start from scratch (delete --demo_dir first); False resumes.")


def _run(step: str, args, log_lines: list) -> float:
  """Runs `python -m <args>` in its own process with live output; raises on failure."""
  started = time.time()
  print(f"\n=== {step}: python -m {' '.join(args)}", flush=True)
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env)
  if result.returncode != 0:
    raise RuntimeError(f"{step} failed (exit status {result.returncode}); its output is above.")
  elapsed = time.time() - started
  log_lines.append((step, elapsed))
  return elapsed


SERVE_SCRIPT = textwrap.dedent("""
    # A fresh process that knows nothing of deeplab_tf: TensorFlow Serving's view of the export.
    # One request with every image's encoded bytes; labels come back padded to the largest image.
    import io
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, out_path, image_paths = sys.argv[1], sys.argv[2], sys.argv[3:]
    serve = tf.saved_model.load(export_dir).signatures["probabilities"]
    out = serve(image_bytes=tf.stack([tf.io.read_file(p) for p in image_paths]))
    labels = {}
    for i, path in enumerate(image_paths):
      h, w = int(out["height"][i]), int(out["width"][i])
      labels[str(i)] = out["semantic_predictions"][i, :h, :w].numpy().astype(np.int32)
    buffer = io.BytesIO()
    np.savez(buffer, **labels)
    with tf.io.gfile.GFile(out_path, "wb") as f:
      f.write(buffer.getvalue())
    print(f"segmented {len(image_paths)} images in one request:", [v.shape for v in labels.values()])
""")


def _held_out_tiles(data_dir: str, serve_dir: str):
  """Writes the held-out (val) tiles of the converted sample as PNG files; returns (paths, labels).

  They are real image crops exactly as the converter stored them (`parse_example`), so the fresh
  process segments what `deeplab_eval` scored.
  """
  import tensorflow as tf
  from deeplab_tf import visualization
  from deeplab_tf.data.features import parse_example
  from deeplab_tf.data.pipeline import list_files
  paths, labels = [], []
  for i, record in enumerate(tf.data.TFRecordDataset(list_files(os.path.join(data_dir, "val-*")))):
    example = parse_example(record)
    path = os.path.join(serve_dir, f"held_out_{i:02d}.png")
    paths.append(visualization.save_image_png(example["image"].numpy(), path))
    labels.append(example["label"].numpy()[..., 0])
  return paths, labels


def main(argv):
  del argv
  import tensorflow as tf
  from deeplab_tf.io_utils import atomic_write_text
  started = time.time()
  task = SAMPLE_TASKS[FLAGS.sample]
  out = FLAGS.demo_dir
  if FLAGS.fresh and tf.io.gfile.isdir(out):
    tf.io.gfile.rmtree(out)
  paths = {name: os.path.join(out, name) for name in
           ("data", "voc_data", "train", "eval", "vis_val", "vis_voc", "export", "serve")}
  steps = []
  pairs = ",".join(os.path.join(SAMPLES, p) for p in task["pairs"].split(":"))
  pairs = pairs.replace(",", ":", 1)
  _run("convert sample", ["datasets.build_folder_data", f"--pairs={pairs}", *task["labels"],
                          f"--class_names={task['class_names']}", f"--tile_size={task['tile_size']}",
                          f"--val_region={','.join(map(str, VAL_REGION))}", f"--dataset_name={FLAGS.sample}",
                          f"--output_dir={paths['data']}", "--num_shards=1"], steps)
  voc = os.path.join(SAMPLES, "voc2012_sample")
  _run("convert VOC photos", ["datasets.build_voc2012_data",
                              f"--image_folder={voc}/JPEGImages",
                              f"--semantic_segmentation_folder={voc}/SegmentationClass",
                              f"--list_folder={voc}/ImageSets/Segmentation",
                              f"--output_dir={paths['voc_data']}", "--num_shards=1"], steps)
  descriptor = os.path.join(paths["data"], f"{FLAGS.sample}.json")
  common = [f"--dataset={descriptor}", f"--dataset_dir={paths['data']}"]
  train_seconds = _run("train", ["deeplab_tf.bin.train", f"--flagfile={FLAGS.train_flagfile}",
                                 f"--train_logdir={paths['train']}", *common, "--progress_bar"], steps)
  _run("eval", ["deeplab_tf.bin.eval", f"--checkpoint_dir={paths['train']}", *common,
                "--eval_split=val", "--eval_crop_size=", f"--eval_logdir={paths['eval']}",
                "--max_number_of_evaluations=1"], steps)
  _run("vis held-out tiles", ["deeplab_tf.bin.vis", f"--checkpoint_dir={paths['train']}", *common,
                              "--vis_split=val", "--vis_crop_size=", f"--vis_logdir={paths['vis_val']}",
                              "--also_save_raw_predictions", "--colormap_type=dataset",
                              "--max_number_of_iterations=1"], steps)
  _run("vis VOC photos", ["deeplab_tf.bin.vis", f"--checkpoint_dir={paths['train']}",
                          "--dataset=pascal_voc_seg", f"--dataset_dir={paths['voc_data']}",
                          "--vis_split=trainval", "--vis_crop_size=", f"--vis_logdir={paths['vis_voc']}",
                          "--max_number_of_iterations=1"],
       steps)
  _run("export", ["deeplab_tf.bin.export_model", f"--checkpoint_dir={paths['train']}",
                  f"--export_path={paths['export']}", "--export_version=1"], steps)

  photos, labels = _held_out_tiles(paths["data"], paths["serve"])
  served_path = os.path.join(paths["serve"], "served_labels.npz")
  script = atomic_write_text(os.path.join(paths["serve"], "serve_check.py"), SERVE_SCRIPT)
  print(f"\n=== reload the SavedModel in a fresh process: python {script} ...", flush=True)
  t = time.time()
  # Run from memory with -c (the same text as the file kept for the user): --demo_dir may be a gs://
  # folder, which python cannot execute a file from. TF Serving's layout: the model base path holds one
  # directory per version.
  export_version_dir = os.path.join(paths["export"], "1")
  subprocess.run([sys.executable, "-c", SERVE_SCRIPT, export_version_dir, served_path, *photos], check=True,
                 env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
  steps.append(("reload + segment in a fresh process", time.time() - t))
  _summarise(paths, photos, labels, served_path, train_seconds, steps, time.time() - started)


def _summarise(paths, photos, labels, served_path, train_seconds, steps, wall):
  """Compares the served labels with the Keras model's and prints the summary."""
  import io

  import tensorflow as tf
  from PIL import Image

  from deeplab_tf import model_io
  from deeplab_tf.io_utils import read_text
  from deeplab_tf.evaluation.inference import predict_labels
  from deeplab_tf.evaluation.metrics import ConfusionMatrix, compute_metrics

  with tf.io.gfile.GFile(served_path, "rb") as f:
    served_npz = np.load(io.BytesIO(f.read()))
  served = [served_npz[str(i)] for i in range(len(photos))]
  model, options = model_io.load_model(paths["train"])
  equal = total = 0
  served_metrics = ConfusionMatrix(options.num_classes)
  for photo, label, served_labels in zip(photos, labels, served):
    with tf.io.gfile.GFile(photo, "rb") as f:
      image = np.asarray(Image.open(f).convert("RGB"), np.float32)[None]
    keras_labels = predict_labels(model, image).numpy()[0]
    equal += int((keras_labels == served_labels).sum())
    total += keras_labels.size
    served_metrics.update(label, served_labels)
  agreement = equal / max(total, 1)

  results = sorted(f for f in tf.io.gfile.listdir(paths["eval"]) if f.endswith(".json"))
  metrics = json.loads(read_text(os.path.join(paths["eval"], results[-1])))
  confusion = np.asarray(metrics["confusion_matrix"])
  # The all-background baseline on the same pixels: every label pixel predicted as class 0.
  baseline_matrix = np.zeros_like(confusion)
  baseline_matrix[:, 0] = confusion.sum(axis=1)
  base = compute_metrics(baseline_matrix, metrics["class_names"])
  steps_done = int(os.path.basename(model_io.resolve_checkpoint(paths["train"])).split("-")[-1])

  lines = ["", "=" * 72, f"deeplab_tf demo on the real {FLAGS.sample} sample: summary", "=" * 72,
           f"model: {options.model_variant} DeepLabv3+ (output_stride {options.output_stride}), "
           f"{model.count_params():,} parameters, trained from scratch",
           f"training: {steps_done} steps in {train_seconds:.0f} s (the whole process, start-up included)",
           f"held-out region (right quarter of the image, never trained on): "
           f"{int(confusion.sum()):,} pixels",
           f"  {'class':<12}{'IoU (ours)':>12}{'IoU (all background)':>24}"]
  for name, theirs in zip(metrics["class_names"], base.per_class_iou):
    ours = metrics["per_class_iou"][name]
    lines.append(f"  {name:<12}{_pct(ours):>12}{_pct(theirs):>24}")
  lines += [f"  {'mIoU':<12}{_pct(metrics['miou']):>12}{_pct(base.miou):>24}",
            f"SavedModel reloaded in a fresh process, {len(photos)} held-out PNG tiles in one request: "
            f"mIoU {_pct(served_metrics.result().miou)}, {agreement:.4%} of pixels equal to the Keras "
            "model's labels",
            "", "time per step of the demo:"]
  lines += [f"  {name:<40}{seconds:>7.0f} s" for name, seconds in steps]
  lines += [f"  {'total':<40}{wall:>7.0f} s", "", "outputs:"]
  lines += [f"  {name:<10}{path}" for name, path in paths.items()]
  lines.append(f"  {'metrics':<10}{os.path.join(paths['eval'], results[-1])}")
  print("\n".join(lines), flush=True)
  if agreement < 0.999:
    raise RuntimeError(f"The reloaded SavedModel agrees with the Keras model on only {agreement:.2%} "
                       "of the pixels.")


def _pct(value):
  return "n/a" if value is None else f"{100 * value:.2f}%"


def run():
  entry.run(main)


if __name__ == "__main__":
  run()
