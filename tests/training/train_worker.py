"""A training process for the subprocess tests: `python train_worker.py '<json>'`.

JSON keys: logdir, strategy ('default' or 'multi_worker'), options (TrainOptions fields),
sleep_per_step (seconds, to leave time for a signal), result (path of an .npz with the final weights,
final_step and interrupted). Uses the tiny model and in-memory data of helpers.py.
"""
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top

import helpers  # pylint: disable=g-import-not-at-top
from deeplab_tf.options import ModelOptions, TrainOptions  # pylint: disable=g-import-not-at-top
from deeplab_tf.training import strategy as strategy_lib  # pylint: disable=g-import-not-at-top
from deeplab_tf.training import trainer  # pylint: disable=g-import-not-at-top

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)


def main(args):
  options = TrainOptions.from_dict(args["options"])
  strategy = strategy_lib.build_strategy(strategy_lib.StrategyConfig(args.get("strategy", "default")))
  images, labels = helpers.examples()
  sleep = args.get("sleep_per_step", 0.0)
  result = trainer.train(
      MODEL, options, helpers.dataset_fn_for(options.solver.train_batch_size, images, labels),
      args["logdir"], strategy=strategy, model_fn=helpers.tiny_model,
      on_log=(lambda progress: time.sleep(sleep)) if sleep else None)
  np.savez(args["result"], final_step=result.final_step, interrupted=result.interrupted,
           *[v.numpy() for v in result.model.weights])


if __name__ == "__main__":
  main(json.loads(sys.argv[1]))
