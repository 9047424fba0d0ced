"""The one user-error type of mpt_jax.

Every mistake a user can make (a bad config value, a dataset folder in the wrong layout, a damaged
checkpoint, an unreadable input clip) raises a subclass of :class:`UserError` whose message is one
line naming the file, row or key at fault. ``main.py`` catches ``UserError`` alone and prints it
without a traceback (exit code 2); anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
  """A user mistake, reported as one clear line without a traceback."""
