"""The edge of every binary: absl's `app.run`, with help that lists the tool's own flags, the packaged
flagfiles, and a user's mistake printed as one line.

`run(main)` is what each console script (and each converter) calls. Before absl parses the command line:

- `--help` (also `-h`, `-?`, `--helpshort`) prints the tool's docstring and its own flags, grouped by the
  module that defines them (the tool's first, then the model flags, the flags shared with eval/vis), and
  exits 0; `--helpfull` adds the original's refused spellings and absl's logging and flag-file flags
  (not the absltest and TPU flags TensorFlow's imports define). absl's own short help lists the flags of
  `__main__`, which for a console script is pip's shim: empty.
- `--flagfile=experiments/<name>.flags` (and `experiments/model_zoo/...`) that does not exist where the
  user stands is read from the copy shipped in the package (`deeplab_tf/experiments/`), so the commands
  of README.md and docs/MODEL_ZOO.md work from any folder after `pip install deeplab_tf`.

Then a `deeplab_tf.errors.UserError` or absl `app.UsageError` raised by `main`, or a flag that does not
parse or validate, ends the process with `<program>: error: <message>` on stderr and exit status 2, no
traceback; any other exception is a bug and keeps absl's traceback.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Sequence

from absl import app, flags

from deeplab_tf.errors import UserError

FLAGS = flags.FLAGS

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # not-gfile: own source
# The flagfiles: shipped inside the package (a wheel), or beside it (a checkout).
EXPERIMENTS_DIRS = (os.path.join(_PACKAGE_DIR, "experiments"),
                    os.path.join(os.path.dirname(_PACKAGE_DIR), "experiments"))
_EXPERIMENTS_PREFIX = "experiments/"

_SHORT_HELP = ("--help", "-help", "--helpshort", "-helpshort", "-h", "-?")
_FULL_HELP = ("--helpfull", "-helpfull")
# Modules whose flags are the project's own: shown by --help, first in --helpfull.
_PROJECT_PACKAGES = ("deeplab_tf", "datasets")
# Flags no tool of ours reads, which TensorFlow's imports define: left out of --helpfull.
_FOREIGN_PREFIXES = ("absl.testing", "tensorflow")

# Titles of the shared flag modules.
_GROUP_TITLES = {
    "deeplab_tf.bin.model_flags": "Model flags (research/deeplab common.py)",
    "deeplab_tf.bin.eval_common": "Dataset and inference flags shared by train, eval, vis, export and predict",
    "deeplab_tf.bin.original_flags": "The original's flags that this tool does not offer (refused unless at "
                                     "the original's default)",
    "deeplab_tf.datasets.build_data": "Flags of every converter",
    "datasets.build_data": "Flags of every converter",
}


def _program() -> str:
  return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "deeplab_tf"


def fail(message: str, exit_code: int = 2) -> None:
  """Prints `<program>: error: <message>` (its first line only) to stderr and exits."""
  first = str(message).strip().splitlines()[0] if str(message).strip() else "invalid input"
  print(f"{_program()}: error: {first}", file=sys.stderr, flush=True)
  sys.exit(exit_code)


def packaged_flagfile(path: str) -> Optional[str]:
  """The shipped copy of `experiments/<...>.flags` when `path` names one that does not exist locally.

  Args:
    path: a `--flagfile` value as the user typed it.

  Returns:
    The packaged file's path, or None when `path` exists, is not under `experiments/`, or no shipped
    flagfile has that name.
  """
  import tensorflow as tf  # pylint: disable=import-outside-toplevel

  normalized = path.replace(os.sep, "/")
  if normalized.startswith("./"):
    normalized = normalized[2:]
  if not normalized.startswith(_EXPERIMENTS_PREFIX) or tf.io.gfile.exists(path):
    return None
  relative = normalized[len(_EXPERIMENTS_PREFIX):]
  for folder in EXPERIMENTS_DIRS:
    candidate = os.path.join(folder, *relative.split("/"))
    if tf.io.gfile.exists(candidate):
      return candidate
  return None


def resolve_flagfiles(argv: Sequence[str]) -> List[str]:
  """`argv` with each `--flagfile=experiments/...` the user lacks pointed at the packaged copy.

  Both spellings absl accepts are handled (`--flagfile=F` and `--flagfile F`); arguments after `--`
  are left alone. A flagfile that exists neither locally nor in the package is left for absl to refuse.
  """
  out = list(argv)
  i = 1
  while i < len(out):
    arg = out[i]
    if arg == "--":
      break
    for name in ("--flagfile", "-flagfile"):
      if arg.startswith(name + "="):
        shipped = packaged_flagfile(arg[len(name) + 1:])
        if shipped:
          out[i] = f"{name}={shipped}"
      elif arg == name and i + 1 < len(out):
        shipped = packaged_flagfile(out[i + 1])
        if shipped:
          out[i + 1] = shipped
        i += 1
    i += 1
  return out


def _help_request(argv: Sequence[str]) -> Optional[str]:
  """"short", "full" or None: which help the command line asks for (before any `--`)."""
  for arg in argv[1:]:
    if arg == "--":
      return None
    name = arg.split("=", 1)[0]
    if name in _FULL_HELP:
      return "full"
    if name in _SHORT_HELP and arg.split("=", 1)[-1].lower() not in ("false", "0"):
      return "short"
  return None


def _module_key(main: Callable) -> str:
  """absl's name of the module that defines the tool's own flags (sys.argv[0] for `python -m`)."""
  name = getattr(main, "__module__", None) or "__main__"
  return sys.argv[0] if name == "__main__" else name


def _is_project(name: str) -> bool:
  if name.split(".")[0] in _PROJECT_PACKAGES:
    return True
  if name.endswith(".py"):  # `python -m <module>`: absl names __main__ by its file.
    path = os.path.abspath(name)  # not-gfile: the running program's own file
    roots = (_PACKAGE_DIR, os.path.join(os.path.dirname(_PACKAGE_DIR), "datasets"))
    return any(path.startswith(root + os.sep) for root in roots)
  return False


def _title(name: str, main_key: str) -> str:
  if name == main_key:
    return f"Flags of {_program()}"
  if name in _GROUP_TITLES:
    return f"{_GROUP_TITLES[name]}"
  doc = (getattr(sys.modules.get(name), "__doc__", None) or "").strip()
  first = doc.splitlines()[0].rstrip(".") if doc else ""
  return f"{first} ({name})" if first else name


def _render_group(name: str, title: str) -> List[str]:
  rendered = FLAGS.module_help(name).strip("\n").splitlines()
  if not rendered:
    return []
  return ["", f"{title}:"] + rendered[1:]  # absl's first line is "<module>:"


def help_text(main: Callable, full: bool = False) -> str:
  """The text of `--help` (the tool's own flags, grouped) or `--helpfull` (with absl's flags too).

  Args:
    main: the tool's `main` function; its module's flags come first.
    full: also list absl's flags (logging, flagfile, ...); TensorFlow's and absltest's stay out.

  Returns:
    The help text: the tool's module docstring, then one titled group per flag-defining module.
  """
  main_key = _module_key(main)
  module = sys.modules.get(getattr(main, "__module__", "__main__"))
  doc = (getattr(module, "__doc__", None) or f"USAGE: {_program()} [flags]").strip("\n")
  lines = [doc]
  names = [n for n in FLAGS.flags_by_module_dict() if n not in (main_key,)]
  project = [n for n in names if _is_project(n)]
  lines += _render_group(main_key, _title(main_key, main_key))
  # Shared groups in a stable order: model flags, shared inference flags, converters', then the rest;
  # the original's refused spellings last.
  order = list(_GROUP_TITLES)
  project.sort(key=lambda n: (n.endswith("original_flags"), order.index(n) if n in order else len(order), n))
  for name in project:
    if full or not name.endswith("original_flags"):
      lines += _render_group(name, _title(name, main_key))
  if full:
    for name in names:
      if name not in project and not name.startswith(_FOREIGN_PREFIXES):
        lines += _render_group(name, name)
    lines += ["", "(absl's --flagfile=F reads flags from F; a flagfile named experiments/... that is not "
              "in the current folder is read from the package's copy.)"]
  else:
    refused = any(n.endswith("original_flags") for n in project)
    lines += ["", f"{_program()} --helpfull also lists absl's flags (logging, --flagfile)"
              + (" and the original's flags this tool refuses." if refused else ".")]
  return "\n".join(lines) + "\n"


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing, with a bad flag as one `<program>: error:` line (exit 2)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    fail(f"{e} (--help lists the flags)")
  return argv  # not reached


def run(main: Callable[[List[str]], object], argv: Optional[Sequence[str]] = None) -> None:
  """`app.run(main)` with help, packaged flagfiles and one-line user errors (see the module docstring).

  Args:
    main: the tool's `main(argv)`.
    argv: the command line (default `sys.argv`).
  """
  argv = resolve_flagfiles(sys.argv if argv is None else argv)
  kind = _help_request(argv)
  if kind:
    sys.stdout.write(help_text(main, full=kind == "full"))
    sys.stdout.flush()
    sys.exit(0)

  def guarded(args):
    try:
      return main(args)
    except (UserError, app.UsageError) as e:
      fail(str(e))
  app.run(guarded, argv=argv, flags_parser=_parse_flags)
