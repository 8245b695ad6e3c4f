"""deeplab_tf.bin.entry: --help of a console script lists the tool's own flags (exit 0), a flagfile named
experiments/... is read from the package's copy when the user has none, a bad flag is one line (exit 2).

The console scripts pip writes are shims (`from deeplab_tf.bin.train import run; sys.exit(run())`), so
absl's `__main__` defines no flag: the tests run such a shim, as pip writes it, from a folder outside
the checkout. tests/test_packaging.py does the same with the installed wheel for every tool.
"""
import os
import subprocess
import sys

import pytest

from deeplab_tf.bin import entry

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHIM = """import re, sys
from {module} import run
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(run())
"""


def _shim(tmp_path, name, module):
  path = tmp_path / "bin" / name
  path.parent.mkdir(exist_ok=True)
  path.write_text(SHIM.format(module=module))
  return str(path)


def _run(tmp_path, shim, *args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT)
  work = tmp_path / "work"
  work.mkdir(exist_ok=True)
  return subprocess.run([sys.executable, shim, *args], cwd=work, capture_output=True, text=True, env=env,
                        timeout=300, check=False)


def test_console_script_help_lists_the_tools_own_flags_grouped(tmp_path):
  shim = _shim(tmp_path, "deeplab_train", "deeplab_tf.bin.train")
  done = _run(tmp_path, shim, "--help")
  assert done.returncode == 0, done.stderr[-2000:]
  out = done.stdout
  lines = out.splitlines()
  lines = lines[lines.index("Flags of deeplab_train:"):]  # after the tool's docstring
  groups = [line for line in lines if line.endswith(":") and not line.startswith(" ")]
  # The tool's own flags first, then the shared groups, each under its title.
  assert groups[:3] == ["Flags of deeplab_train:", "Model flags (research/deeplab common.py):",
                        "Dataset and inference flags shared by train, eval, vis, export and predict:"], groups
  for flag in ("--train_logdir", "--model_variant", "--dataset_dir", "--training_number_of_steps"):
    assert f"  {flag}:" in out
  # absltest's and TensorFlow's TPU flags are no flags of ours; the refused originals are in --helpfull.
  for foreign in ("--test_srcdir", "--delta_threshold", "--num_clones"):
    assert foreign not in out
  full = _run(tmp_path, shim, "--helpfull")
  assert full.returncode == 0
  assert "--num_clones" in full.stdout and "--verbosity" in full.stdout
  assert "--test_srcdir" not in full.stdout and "tensor_tracer" not in full.stdout


def test_packaged_flagfile_is_read_where_the_user_has_none_and_a_bad_flag_is_one_line(tmp_path):
  shim = _shim(tmp_path, "deeplab_train", "deeplab_tf.bin.train")
  # Parses the whole flagfile (every flag known), then refuses the missing --train_logdir in one line.
  done = _run(tmp_path, shim, "--flagfile=experiments/demo_nuclei.flags")
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines()[-1] == "deeplab_train: error: --train_logdir is required."
  missing = _run(tmp_path, shim, "--flagfile=experiments/no_such.flags")
  assert missing.returncode == 2
  last = missing.stderr.strip().splitlines()[-1]
  assert last.startswith("deeplab_train: error: ") and "experiments/no_such.flags" in last
  refused = _run(tmp_path, shim, "--num_clones=2")
  assert refused.returncode == 2 and "Traceback" not in refused.stderr
  last = refused.stderr.strip().splitlines()[-1]
  assert last.startswith("deeplab_train: error: ") and "--strategy=mirrored --num_gpus=N" in last


def test_converter_help_lists_its_flags_and_the_common_ones(tmp_path):
  shim = _shim(tmp_path, "deeplab_build_voc_data", "datasets.build_voc2012_data")
  done = _run(tmp_path, shim, "-h")
  assert done.returncode == 0, done.stderr[-2000:]
  assert "Flags of deeplab_build_voc_data:" in done.stdout and "Flags of every converter:" in done.stdout
  for flag in ("image_folder", "val_fraction", "class_names_file", "output_dir", "[no]skip_bad_inputs"):
    assert f"  --{flag}:" in done.stdout


def test_resolve_flagfiles_rewrites_only_missing_experiment_paths(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  shipped = entry.packaged_flagfile("experiments/demo_nuclei.flags")
  assert shipped and os.path.isfile(shipped) and shipped != "experiments/demo_nuclei.flags"
  zoo = entry.packaged_flagfile("./experiments/model_zoo/xception65_coco_voc_trainaug.flags")
  assert zoo and zoo.endswith(os.path.join("model_zoo", "xception65_coco_voc_trainaug.flags"))
  argv = ["prog", "--flagfile=experiments/demo_nuclei.flags", "--flagfile", "experiments/demo_nuclei.flags",
          "--flagfile=other/x.flags", "--", "--flagfile=experiments/demo_nuclei.flags"]
  assert entry.resolve_flagfiles(argv) == [
      "prog", f"--flagfile={shipped}", "--flagfile", shipped, "--flagfile=other/x.flags", "--",
      "--flagfile=experiments/demo_nuclei.flags"]
  # A flagfile of that name in the current folder wins.
  (tmp_path / "experiments").mkdir()
  (tmp_path / "experiments" / "demo_nuclei.flags").write_text("--train_split=val\n")
  assert entry.resolve_flagfiles(argv[:2]) == argv[:2]


@pytest.mark.parametrize("argv,kind", [
    (["p", "--help"], "short"), (["p", "-?"], "short"), (["p", "--helpshort"], "short"), (["p", "-h"], "short"),
    (["p", "--x=1", "--helpfull"], "full"), (["p", "--help=false"], None), (["p", "--", "--help"], None),
    (["p", "--train_logdir=--help"], None)])
def test_help_request(argv, kind):
  assert entry._help_request(argv) == kind  # pylint: disable=protected-access
