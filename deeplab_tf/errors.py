"""The one exception type for a user's mistake, so that the binaries can tell it from a bug.

A `UserError` says what to change (the flag, file or value, and what was expected) in one line; the
binaries print it as one line and exit with status 2 (`deeplab_tf.bin.entry.run`). Every other
exception is a bug and keeps its traceback. It subclasses `ValueError`, so library callers that catch
`ValueError` keep working.
"""


class UserError(ValueError):
  """Bad input from the user (flag, file, value): the message names it and says what was expected."""
