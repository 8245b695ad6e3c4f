"""Op-type time statistics of DeepLab's inference call or training step, from tf.profiler.

  .venv/bin/python benchmarks/profile_ops.py --mode=train --precision=float32 --crop=513 --batch=2

Profiles `--steps` calls of `benchmarks/worker.py`'s model candidate (after `--warmup` calls) with
`tf.profiler.experimental`, then sums the host's TensorFlow op events by op type from the trace
(`*.xplane.pb`) and prints the types taking the most time with their counts per call: op time, and
busy wall time (each interval split among the ops running in it; see `op_type_times`). Run it
before optimising and after, as the issue 8 notes did.
"""

import collections
import glob
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import worker  # pylint: disable=g-import-not-at-top

flags.DEFINE_enum("mode", "train", ["train", "inference"], "What to profile.")
flags.DEFINE_string("candidate", "deeplab_tf", "A worker.py model candidate.")
flags.DEFINE_string("precision", "float32", "float32 or mixed_bfloat16.")
flags.DEFINE_integer("crop", 513, "Square crop.")
flags.DEFINE_integer("batch", 2, "Batch.")
flags.DEFINE_integer("steps", 2, "Profiled calls.")
flags.DEFINE_integer("warmup", 6, "Unprofiled calls first: tracing, and the first training "
                     "steps' fresh memory (page faults made single ops there 10-40x slower).")
flags.DEFINE_integer("top", 25, "Op types to print.")
FLAGS = flags.FLAGS


def op_events(logdir):
  """`[(start, end, op type)]` (picoseconds) of the TF op events in the trace under `logdir`."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  events = []
  for path in glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True):
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
      space.ParseFromString(f.read())
    for plane in space.planes:
      if not plane.name.startswith("/host:CPU"):
        continue
      for line in plane.lines:
        for event in line.events:
          name = plane.event_metadata[event.metadata_id].name
          if ":" not in name or name.startswith("__") or "::" in name:
            continue
          op_type = name.rsplit(":", 1)[1]
          if not op_type or not op_type[0].isupper() and not op_type.startswith("_"):
            continue
          start = line.timestamp_ns * 1000 + event.offset_ps
          events.append((start, start + event.duration_ps, op_type))
  return events


def op_type_times(events):
  """`({op type: [op microseconds, count, busy-wall microseconds]}, busy-wall microseconds)`.

  Op time is each op's own duration; ops running at once (two on two cores) both count in full, so
  op time exceeds wall time. Busy wall time splits each interval among the ops running in it, so
  that the op types' shares add up to the time any op was running.
  """
  totals = collections.defaultdict(lambda: [0.0, 0, 0.0])
  boundaries = []
  for i, (start, end, op_type) in enumerate(events):
    totals[op_type][0] += (end - start) / 1e6
    totals[op_type][1] += 1
    boundaries += [(start, 1, i), (end, -1, i)]
  running, last, busy = set(), None, 0.0
  for time_ps, kind, i in sorted(boundaries, key=lambda b: (b[0], b[1])):
    if running:
      share = (time_ps - last) / 1e6
      busy += share
      for j in running:
        totals[events[j][2]][2] += share / len(running)
    (running.add if kind == 1 else running.discard)(i)
    last = time_ps
  return totals, busy


def main(argv):
  del argv
  args = dict(candidate=FLAGS.candidate, precision=FLAGS.precision, crop=FLAGS.crop,
              batch=FLAGS.batch, mode=FLAGS.mode)
  run, _ = worker.model_runner(args)
  for _ in range(FLAGS.warmup):
    run()
  logdir = tempfile.mkdtemp(prefix="deeplab_profile_")
  tf.profiler.experimental.start(logdir)
  for _ in range(FLAGS.steps):
    run()
  tf.profiler.experimental.stop()
  totals, busy = op_type_times(op_events(logdir))
  everything = sum(t for t, _, _ in totals.values())
  print(f"{FLAGS.candidate} {FLAGS.mode} {FLAGS.precision} crop {FLAGS.crop} batch {FLAGS.batch}: "
        f"{everything / 1e6 / FLAGS.steps:.2f} s of op time and {busy / 1e6 / FLAGS.steps:.2f} s of "
        f"busy wall time per call (trace: {logdir})")
  print("| op type | op s per call | share of op time | share of busy wall time | ops per call |")
  print("|---|---|---|---|---|")
  for op_type, (micros, count, wall) in sorted(totals.items(), key=lambda kv: -kv[1][0])[:FLAGS.top]:
    print(f"| {op_type} | {micros / 1e6 / FLAGS.steps:.3f} | {100 * micros / everything:.1f}% | "
          f"{100 * wall / busy:.1f}% | {count // FLAGS.steps} |")


if __name__ == "__main__":
  app.run(main)
