"""Measures how close our DeepLabv3+ Xception-65 is to the original implementation's own outputs.

Writes a TF1 checkpoint from the published variable list (weights from the reference recipe
`det_value`), loads it with `deeplab_tf.checkpoints.load_tf1_checkpoint`, runs the original's input and
prints max|ours - ref| / max|ref| on the upsampled logits and the label agreement by the tests' rule
(`tests/tie_aware.py`: labels equal wherever the reference's top-2 margin exceeds twice the allowed
error of 1e-5 * max|ref|, near ties counted), with oneDNN off (as the reference was made) unless
--onednn is given.

  .venv/bin/python benchmarks/reference_equivalence.py [--onednn]
"""
import os
import sys
import tempfile

if "--onednn" not in sys.argv:
  os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))

import numpy as np  # noqa: E402

import deeplab_tf  # noqa: E402
import reference_case as rc  # noqa: E402
import tie_aware  # noqa: E402
from deeplab_tf.checkpoints import load_tf1_checkpoint  # noqa: E402


def main():
  options = deeplab_tf.ModelOptions(model_variant="xception_65", num_classes=21, output_stride=16,
                                    atrous_rates=(6, 12, 18), decoder_output_stride=4)
  model = deeplab_tf.build_deeplab(options)
  with tempfile.TemporaryDirectory() as tmp:
    prefix = rc.write_checkpoint_from_vars(os.path.join(tmp, "model.ckpt"), rc.load_vars("xception_65"))
    report = load_tf1_checkpoint(model, prefix)
  case = rc.XCEPTION_65_CASE_DIR
  ours = model(np.load(os.path.join(case, "input.npy")), training=False).numpy()
  ref = np.load(os.path.join(case, "logits.npy"))
  scale = float(np.abs(ref).max())
  result = tie_aware.compare(ours, ref, 1e-5 * scale,
                             reference_labels=np.load(os.path.join(case, "predictions.npy")))
  print(f"xception_65 DeepLabv3+ OS16 129x129: {report.assigned} variables loaded, "
        f"max rel err {result.max_error / scale:.3g}; {result} "
        f"(oneDNN {'on' if '--onednn' in sys.argv else 'off'})")


if __name__ == "__main__":
  main()
