"""The wheel as a user installs it (issue 21): built from a copy of the sources, installed (not editable)
into a fresh venv, and run from a folder outside the checkout.

The venv sees this test venv's packages (TensorFlow, ...) through a `.pth` file and the wheel is
installed with `--no-deps --no-index`, so the test is offline and fast; PYTHONPATH is cleared so that
nothing of the checkout is imported. Checked: every console script's --help (exit 0, its own flags),
a converter on a tiny folder, a packaged `--flagfile=experiments/...`, and that `import datasets` is not
ours.
"""
import concurrent.futures
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Console script -> a flag of its own that --help must list.
SCRIPTS = {
    "deeplab_train": "--train_logdir", "deeplab_eval": "--eval_logdir", "deeplab_vis": "--vis_logdir",
    "deeplab_export_model": "--export_path", "deeplab_predict": "--predict_logdir",
    "deeplab_convert_checkpoint": "--output_dir", "deeplab_build_voc_data": "--semantic_segmentation_folder",
    "deeplab_build_cityscapes_data": "--cityscapes_root", "deeplab_build_ade20k_data": "--train_image_folder",
    "deeplab_build_folder_data": "--label_folder",
}


def _run(cmd, **kwargs):
  return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600, **kwargs)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """(venv bin folder, environment, a working folder outside the checkout)."""
  tmp = tmp_path_factory.mktemp("wheel")
  src = tmp / "src"
  # A copy of what the wheel is built from (pip builds in place: build/ and *.egg-info stay out of ROOT).
  shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(
      ".git", ".venv", "tests", "samples", "benchmarks", "build", "dist", "*.egg-info", "__pycache__",
      "demo_output", "runs"))
  built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                "-w", str(tmp / "dist"), str(src)])
  assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
  wheel = next((tmp / "dist").glob("deeplab_tf-*.whl"))
  venv = tmp / "venv"
  made = _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
  assert made.returncode == 0, made.stderr
  purelib = _run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
  # This venv's packages, after the new venv's own (the wheel's deeplab_tf comes first).
  ours = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
  with open(os.path.join(purelib.stdout.strip(), "test_venv_packages.pth"), "w", encoding="utf-8") as f:
    f.write("\n".join(dict.fromkeys(ours)) + "\n")
  install = _run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                  "--no-index", str(wheel)])
  if install.returncode != 0 and "no such option: --python" in install.stderr:  # pip < 22.3
    install = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--prefix", str(venv),
                    str(wheel)])
  assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
  env.update(TF_CPP_MIN_LOG_LEVEL="3", PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
  work = tmp / "work"
  work.mkdir()
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
  return venv / "bin", env, work, names


def test_the_wheel_carries_the_converters_and_flagfiles_under_deeplab_tf(installed):
  names = installed[3]
  assert "deeplab_tf/datasets/build_voc2012_data.py" in names
  assert "deeplab_tf/experiments/demo_nuclei.flags" in names
  assert "deeplab_tf/experiments/model_zoo/xception65_coco_voc_trainaug.flags" in names
  assert not [n for n in names if n.startswith(("datasets/", "experiments/", "tests/"))]


def test_imports_come_from_the_wheel_and_datasets_is_not_ours(installed):
  bin_dir, env, work, _ = installed
  code = ("import importlib.util, deeplab_tf, deeplab_tf.datasets.build_folder_data as b; "
          "print(deeplab_tf.__file__); print(b.__file__); "
          "spec = importlib.util.find_spec('datasets'); print(spec.origin if spec else None)")
  done = _run([str(bin_dir / "python"), "-c", code], cwd=work, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  package, converter, datasets = done.stdout.split()
  venv = str(bin_dir.parent)
  assert package.startswith(venv) and converter.startswith(venv), done.stdout
  assert not package.startswith(ROOT)
  assert datasets == "None" or "deeplab" not in open(datasets, encoding="utf-8").read(), datasets


def test_every_console_script_help_lists_its_own_flags(installed):
  bin_dir, env, work, _ = installed

  def help_of(script):
    return script, _run([str(bin_dir / script), "--help"], cwd=work, env=env)

  with concurrent.futures.ThreadPoolExecutor(2) as pool:  # two cores
    results = dict(pool.map(help_of, SCRIPTS))
  for script, flag in SCRIPTS.items():
    done = results[script]
    assert done.returncode == 0, (script, done.stderr[-2000:])
    assert f"Flags of {script}:" in done.stdout and f"  {flag}:" in done.stdout, (script, done.stdout[:2000])


def test_converter_and_packaged_flagfile_from_outside_the_checkout(installed):
  bin_dir, env, work, _ = installed
  rng = np.random.default_rng(0)
  for folder in ("images", "masks"):
    (work / folder).mkdir(exist_ok=True)
  for i in range(3):
    Image.fromarray(rng.integers(0, 255, (24, 32, 3), np.uint8)).save(work / "images" / f"x{i}.png")
    Image.fromarray((rng.random((24, 32)) > 0.5).astype(np.uint8) * 255).save(work / "masks" / f"x{i}.png")
  done = _run([str(bin_dir / "deeplab_build_folder_data"), "--image_folder=images", "--label_folder=masks",
               "--binarize_labels", "--dataset_name=tiny", "--output_dir=out", "--num_workers=1"], cwd=work, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  assert sorted(os.listdir(work / "out")) == ["tiny.json", "train-00000-of-00001.tfrecord"]
  # experiments/demo_nuclei.flags is not in `work`: read from the package, every flag parses, then the
  # missing --train_logdir is refused in one line.
  done = _run([str(bin_dir / "deeplab_train"), "--flagfile=experiments/demo_nuclei.flags"], cwd=work, env=env)
  assert done.returncode == 2, done.stderr[-3000:]
  assert done.stderr.strip().splitlines()[-1] == "deeplab_train: error: --train_logdir is required."
