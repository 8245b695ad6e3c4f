"""The one exception type for a user's mistake, so that the binaries can tell it from a bug.

A `UserError` says what to change (the flag, file or value, and what was expected) in one line; the
binaries print it as one line and exit with status 2 (`deeplab_tf.bin.entry.run`). Every other
exception is a bug and keeps its traceback. It subclasses `ValueError`, so library callers that catch
`ValueError` keep working.
"""


class UserError(ValueError):
  """Bad input from the user (flag, file, value): the message names it and says what was expected."""


class MissingExtraError(UserError, ImportError):
  """An optional feature whose packages are not installed; the message gives the `pip install` line."""


def require_extra(module: str, extra: str, feature: str):
  """Imports `module`, or refuses `feature` in one line naming the extra that provides it.

  Args:
    module: the module to import, e.g. "tensorflow_datasets".
    extra: the deeplab_tf extra that installs it (`cityscapes`, `tfds`, `crf`, `tflite`).
    feature: what needs it, for the message.

  Returns:
    The imported module.

  Raises:
    MissingExtraError: (a `UserError` and an `ImportError`) if `module` cannot be imported.
  """
  import importlib  # pylint: disable=import-outside-toplevel
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(f"{feature} needs the optional package {module.split('.')[0]} ({e}): "
                            f"pip install 'deeplab_tf[{extra}]'") from e
