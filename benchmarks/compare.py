"""Inference and training-step times of DeepLab implementations, interleaved in one run.

  .venv/bin/python benchmarks/compare.py \
      --keras_hub_path=/path/to/keras-hub-target --tf_models_path=/path/to/tf-models-target

Candidates (each in its own `benchmarks/worker.py` process; see there): this tree's deeplab_tf
(compiled, eager and BN-folded inference; float32 and mixed_bfloat16), the previous commit's
deeplab_tf (a `git worktree` of `--previous_ref`, made under `--scratch_dir` if absent), keras-hub's
DeepLabV3Plus and tf-models-official's DeepLabv3+ (when their `--*_path` is given: a
`pip install --target` directory outside the project, so that their dependencies, e.g. tf-keras, do
not change the project's pinned versions), a bare matmul (the machine's peak, in the same loop) and
the input pipeline (images/s at the crop).

On a shared machine absolute times drift with the load, so the workers of a phase all build and warm
up first, then take turns, one call each per round (the order rotated every round), and each
candidate's median over the rounds is compared with the others' from the same rounds. With more
candidates than `--max_workers` (memory), a phase runs in groups that all contain the first candidate,
so that every ratio is to it within one group. The load average is printed before and after.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

flags.DEFINE_string("previous_ref", "main", "Commit (or branch) of the 'previous' candidate.")
flags.DEFINE_string("previous_dir", None, "Existing checkout of the previous commit (else a worktree "
                    "of --previous_ref is made under --scratch_dir).")
flags.DEFINE_string("scratch_dir", "/tmp/deeplab_tf_bench", "Where the previous worktree goes.")
flags.DEFINE_string("keras_hub_path", None, "Directory holding keras_hub (pip install --target).")
flags.DEFINE_string("tf_models_path", None, "Directory holding tf-models-official and tf_keras.")
flags.DEFINE_list("phases", ["inference", "train"], "inference (batch 1) and/or train (batch 2).")
flags.DEFINE_list("only", [], "Run only these candidate names (default: all available).")
flags.DEFINE_integer("crop", 513, "Square crop in pixels.")
flags.DEFINE_integer("inference_batch", 1, "Inference batch.")
flags.DEFINE_integer("train_batch", 2, "Training batch.")
flags.DEFINE_integer("rounds", 10, "Timed inference rounds (one call per candidate per round).")
flags.DEFINE_integer("train_rounds", 5, "Timed training rounds (one step per candidate per round).")
flags.DEFINE_integer("warmup", 2, "Untimed calls per worker after tracing.")
flags.DEFINE_integer("max_workers", 6, "Most inference worker processes alive at once (memory).")
flags.DEFINE_integer("max_train_workers", 3, "Most training worker processes alive at once (one "
                     "Xception-65 training worker at 513, batch 2, holds about 5 GB).")
FLAGS = flags.FLAGS

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
# The original's published multiply-adds for Xception-65 DeepLabv3+ at 513x513, OS16, 21 classes
# (research/deeplab g3doc/model_zoo.md).
PUBLISHED_MULTIPLY_ADDS = 54.17e9


def previous_checkout():
  if FLAGS.previous_dir:
    return FLAGS.previous_dir
  path = os.path.join(FLAGS.scratch_dir, "previous")
  commit = subprocess.run(["git", "-C", ROOT, "rev-parse", FLAGS.previous_ref], check=True,
                          capture_output=True, text=True).stdout.strip()
  if os.path.isdir(path):
    head = subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    if head == commit:
      return path
    subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", path], check=True)
  os.makedirs(FLAGS.scratch_dir, exist_ok=True)
  subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", path, commit], check=True,
                 capture_output=True)
  return path


def candidates(phase):
  """[(name, pythonpath, worker args)] for a phase; the first is the reference of every group."""
  previous = previous_checkout()
  batch = FLAGS.inference_batch if phase == "inference" else FLAGS.train_batch
  base = dict(mode=phase, crop=FLAGS.crop, batch=batch, warmup=FLAGS.warmup)
  result = [("previous fp32", previous, dict(base, candidate="deeplab_tf", precision="float32")),
            ("today fp32", ROOT, dict(base, candidate="deeplab_tf", precision="float32")),
            ("previous bf16", previous, dict(base, candidate="deeplab_tf",
                                             precision="mixed_bfloat16")),
            ("today bf16", ROOT, dict(base, candidate="deeplab_tf", precision="mixed_bfloat16"))]
  # The portable kernel policy (what exports run by default; plain Keras/TF arithmetic).
  result += [("today fp32 portable", ROOT, dict(base, candidate="deeplab_tf", precision="float32",
                                                kernel_policy="portable")),
             ("today bf16 portable", ROOT, dict(base, candidate="deeplab_tf",
                                                precision="mixed_bfloat16", kernel_policy="portable"))]
  if phase == "inference":
    result += [("previous fp32 eager", previous, dict(base, candidate="deeplab_tf_eager",
                                                      precision="float32")),
               ("previous fp32 predict_labels", previous, dict(base, candidate="deeplab_tf_predict",
                                                               precision="float32")),
               ("today fp32 predict_labels", ROOT, dict(base, candidate="deeplab_tf_predict",
                                                        precision="float32")),
               ("today bf16 predict_labels", ROOT, dict(base, candidate="deeplab_tf_predict",
                                                        precision="mixed_bfloat16")),
               ("previous fp32 eval/vis/predict binaries", previous,
                dict(base, candidate="deeplab_tf_binaries", precision="float32")),
               ("previous bf16 eval/vis/predict binaries", previous,
                dict(base, candidate="deeplab_tf_binaries", precision="mixed_bfloat16")),
               ("today fp32 eval/vis/predict binaries", ROOT,
                dict(base, candidate="deeplab_tf_binaries", precision="float32")),
               ("today bf16 eval/vis/predict binaries", ROOT,
                dict(base, candidate="deeplab_tf_binaries", precision="mixed_bfloat16")),
               ("today fp32 export (portable)", ROOT,
                dict(base, candidate="deeplab_tf_binaries", precision="float32",
                     kernel_policy="portable")),
               ("today bf16 export (portable)", ROOT,
                dict(base, candidate="deeplab_tf_binaries", precision="mixed_bfloat16",
                     kernel_policy="portable")),
               ("today fp32 BN folded", ROOT, dict(base, candidate="deeplab_tf_folded",
                                                   precision="float32")),
               ("today bf16 BN folded", ROOT, dict(base, candidate="deeplab_tf_folded",
                                                   precision="mixed_bfloat16"))]
  if FLAGS.keras_hub_path:
    result.append(("keras-hub DeepLabV3Plus R50 fp32", FLAGS.keras_hub_path + os.pathsep + ROOT,
                   dict(base, candidate="keras_hub", precision="float32")))
  if FLAGS.tf_models_path:
    result.append(("tf-models DeepLabv3+ R101 fp32", FLAGS.tf_models_path + os.pathsep + ROOT,
                   dict(base, candidate="tf_models", precision="float32")))
  result.append(("matmul 2048 fp32", ROOT, dict(base, candidate="matmul", precision="float32")))
  result.append(("matmul 2048 bf16", ROOT, dict(base, candidate="matmul",
                                                precision="mixed_bfloat16")))
  if phase == "train":
    result.append(("input pipeline", ROOT, dict(base, candidate="input_pipeline",
                                                precision="float32")))
  if FLAGS.only:
    result = [c for c in result if c[0] in FLAGS.only or c is result[0]]
  return result


class Worker:
  """A `worker.py` process: started, warmed up, then timed one call per `run()`."""

  def __init__(self, name, pythonpath, args):
    self.name = name
    env = dict(os.environ, PYTHONPATH=pythonpath, TF_CPP_MIN_LOG_LEVEL="2")
    self.process = subprocess.Popen(
        [sys.executable, os.path.join(HERE, "worker.py"), json.dumps(args)], env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    self.multiply_adds = None
    self.times = []
    self.error = None

  def _read(self):
    line = self.process.stdout.readline()
    if not line:
      self.error = self.process.stderr.read()[-2000:]
      raise RuntimeError(f"{self.name}: worker ended: {self.error}")
    return json.loads(line)

  def wait_ready(self):
    self.multiply_adds = self._read()["multiply_adds"]

  def run(self):
    self.process.stdin.write("run\n")
    self.process.stdin.flush()
    self.times.append(self._read()["seconds"])

  def stop(self):
    try:
      self.process.stdin.write("quit\n")
      self.process.stdin.close()
    except (BrokenPipeError, ValueError):
      pass
    self.process.wait(timeout=120)


def run_group(group):
  workers = []
  for name, pythonpath, args in group:
    workers.append(Worker(name, pythonpath, args))
  ready = []
  for worker in workers:  # Building and tracing run in parallel; fine, nothing is timed yet.
    try:
      worker.wait_ready()
      ready.append(worker)
    except RuntimeError as e:
      print(f"  skipped: {e}", flush=True)
      worker.stop()
  rounds = FLAGS.rounds if group[0][2]["mode"] == "inference" else FLAGS.train_rounds
  for r in range(rounds):
    order = ready[r % len(ready):] + ready[:r % len(ready)]
    for worker in order:
      try:
        worker.run()
      except (RuntimeError, BrokenPipeError, ValueError) as e:  # e.g. killed when out of memory
        print(f"  {worker.name} dropped in round {r}: {e}", flush=True)
        ready.remove(worker)
  for worker in ready:
    worker.stop()
  return [w for w in ready if w.times]


def load():
  return "%.1f %.1f %.1f" % os.getloadavg()


def report(phase, groups):
  reference = groups[0][0]
  ref_median = statistics.median(reference.times)
  batch = FLAGS.inference_batch if phase == "inference" else FLAGS.train_batch
  peaks = {}
  rows = []
  for group in groups:
    if not group or group[0].name != reference.name:
      print(f"(a group lost its reference {reference.name}: {[w.name for w in group]} not reported)")
      continue
    group_ref = statistics.median(group[0].times)
    for worker in group:
      if worker is not reference and worker.name == reference.name:
        continue
      median = statistics.median(worker.times)
      # Within a group, a candidate's time relative to the reference of that group.
      scaled = median / group_ref * ref_median
      if worker.name.startswith("matmul"):
        peaks[worker.name] = 2 * worker.multiply_adds / scaled / 1e9
      rows.append((worker, median, scaled))
  rounds = FLAGS.rounds if phase == "inference" else FLAGS.train_rounds
  print(f"\n## {phase}: crop {FLAGS.crop}, batch {batch}, {rounds} interleaved rounds")
  print(f"reference: {reference.name} (median {ref_median:.3f} s); 'x faster' = reference / candidate")
  print("| candidate | median s | x faster than reference | GFLOP/s | % of fp32 matmul peak | "
        "multiply-adds (G) |")
  print("|---|---|---|---|---|---|")
  peak = peaks.get("matmul 2048 fp32")
  for worker, median, scaled in rows:
    if worker.name.startswith("matmul"):
      print(f"| {worker.name} | {median:.4f} | | {peaks[worker.name]:.0f} | | |")
      continue
    if worker.name == "input pipeline":
      from worker import PIPELINE_BATCHES  # pylint: disable=g-import-not-at-top
      step = {w.name: t for w, _, t in rows}.get("today fp32")
      consumption = f"; today's fp32 step consumes {batch / step:.2f} images/s" if step else ""
      print(f"| input pipeline | {median / PIPELINE_BATCHES:.4f} per batch | | | | "
            f"{PIPELINE_BATCHES * batch / scaled:.1f} images/s{consumption} |")
      continue
    gflops = 2 * worker.multiply_adds / scaled / 1e9 if worker.multiply_adds else 0.0
    share = f"{100 * gflops / peak:.0f}%" if peak else ""
    print(f"| {worker.name} | {median:.3f} | {ref_median / scaled:.2f} | {gflops:.0f} | {share} | "
          f"{worker.multiply_adds / 1e9:.2f} |")
  print("times (s): " + "; ".join(f"{w.name}: " + ", ".join(f"{t:.2f}" for t in w.times)
                                  for w, _, _ in rows))


def main(argv):
  del argv
  sys.path.insert(0, HERE)
  print(f"load average before: {load()}; cpus: {os.cpu_count()}; published multiply-adds of "
        f"Xception-65 DeepLabv3+ 513 OS16: {PUBLISHED_MULTIPLY_ADDS / 1e9:.2f} G", flush=True)
  for phase in FLAGS.phases:
    entries = candidates(phase)
    first, rest = entries[0], entries[1:]
    size = max(1, (FLAGS.max_workers if phase == "inference" else FLAGS.max_train_workers) - 1)
    groups = []
    for start in range(0, len(rest), size):
      group = [first] + rest[start:start + size]
      print(f"{phase}: group of {[c[0] for c in group]}; load {load()}", flush=True)
      groups.append(run_group(group))
    report(phase, groups)
  print(f"\nload average after: {load()}")


if __name__ == "__main__":
  app.run(main)
